//! What the controllers of a real cluster would do, done at once on each write: defaults,
//! cluster IPs, ready Deployments with their ReplicaSets, established CRDs, and tokens.

use std::hash::{DefaultHasher, Hash, Hasher};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::registry::Resource;
use crate::store::{Key, State, WriteMode, meta_str};
use crate::util::{now_secs, random_string};

/// A JWT-shaped token naming its cluster and service account (the signature is random).
pub fn token(cluster: &str, ns: &str, sa: &str, exp: Option<i64>) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"testcluster"}"#);
    let mut claims = json!({
        "iss": "kubernetes/serviceaccount",
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "kubernetes.io/serviceaccount/namespace": ns,
        "kubernetes.io/serviceaccount/service-account.name": sa,
        "testcluster": cluster,
        "jti": random_string(16, b"abcdefghijklmnopqrstuvwxyz0123456789"),
    });
    if let Some(exp) = exp {
        claims["exp"] = json!(exp);
    }
    let sig = random_string(
        43,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    );
    format!(
        "{header}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// The revision an istiod pod serves (label `istio.io/rev`, `default` when unset).
pub fn istiod_revision(pod: &Value) -> String {
    pod.pointer("/metadata/labels/istio.io~1rev")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string()
}

/// How long the ReplicaSet and Job controllers wait before they try again to create a pod the
/// API server refused (their work queues' rate limiter backs off from 5 ms; one fixed delay
/// here).
pub(crate) const CREATE_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// A running pod whose containers crash on start: not ready, in CrashLoopBackOff.
fn crash(pod: &mut Value) {
    let name = meta_str(pod, "name").to_string();
    if let Some(Value::Array(cs)) = pod.pointer_mut("/status/conditions") {
        for c in cs {
            if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                c["status"] = json!("False");
                c["reason"] = json!("ContainersNotReady");
            }
        }
    }
    if let Some(Value::Array(cs)) = pod.pointer_mut("/status/containerStatuses") {
        for c in cs {
            let container = c["name"].as_str().unwrap_or("").to_string();
            c["ready"] = json!(false);
            c["started"] = json!(false);
            c["restartCount"] = json!(1);
            c["state"] = json!({"waiting": {"reason": "CrashLoopBackOff", "message":
                format!("back-off 10s restarting failed container={container} pod={name}")}});
            c["lastState"] = json!({"terminated": {"exitCode": 255, "reason": "Error"}});
        }
    }
}

fn is_crashing(pod: &Value) -> bool {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.pointer("/state/waiting/reason").and_then(Value::as_str)
                    == Some("CrashLoopBackOff")
            })
        })
}

/// A pod for a controller: `<prefix>-<5 random chars>`, labels, annotations and spec from the
/// template, owned by `owner`.
pub fn pod_from_template(prefix: &str, template: &Value, owner: Value) -> Value {
    let mut meta = json!({
        "name": format!("{prefix}-{}", random_string(5, b"bcdfghjklmnpqrstvwxz2456789")),
        "generateName": format!("{prefix}-"),
        "ownerReferences": [owner],
    });
    for field in ["labels", "annotations"] {
        if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
            meta[field] = v.clone();
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    })
}

/// The status of a pod that runs, every container ready (the node's address is the caller's).
pub fn running_status(pod: &Value, ip: &str, started: &str) -> Value {
    let condition = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": started});
    let containers: Vec<Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "name": c.get("name").cloned().unwrap_or(json!("")),
                "image": c.get("image").cloned().unwrap_or(json!("")),
                "imageID": "",
                "containerID": format!("containerd://{}", random_string(64, b"0123456789abcdef")),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            })
        })
        .collect();
    json!({
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": started,
        "qosClass": "BestEffort",
        "conditions": [
            condition("PodReadyToStartContainers"),
            condition("Initialized"),
            condition("Ready"),
            condition("ContainersReady"),
            condition("PodScheduled"),
        ],
        "containerStatuses": containers,
    })
}

/// Job admission: the controller-uid selector and the labels the job controller puts on its
/// pods, and the defaults of `spec`.
fn admit_job(old: Option<&Value>, obj: &mut Value) {
    if let Some(old) = old {
        // Selector and template labels are immutable; keep what admission set.
        for p in ["/spec/selector", "/spec/template/metadata/labels"] {
            if let Some(v) = old.pointer(p) {
                let (parent, field) = p.rsplit_once('/').unwrap();
                set_default(obj, parent, json!({}));
                if let Some(o) = obj.pointer_mut(parent).and_then(Value::as_object_mut) {
                    o.insert(field.into(), v.clone());
                }
            }
        }
        return;
    }
    let uid = meta_str(obj, "uid").to_string();
    let name = meta_str(obj, "name").to_string();
    set_default(obj, "/spec/selector/matchLabels", json!({}));
    obj["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"] = json!(uid);
    set_default(obj, "/spec/template/metadata/labels", json!({}));
    let labels = &mut obj["spec"]["template"]["metadata"]["labels"];
    labels["batch.kubernetes.io/controller-uid"] = json!(uid);
    labels["controller-uid"] = json!(uid);
    labels["batch.kubernetes.io/job-name"] = json!(name);
    labels["job-name"] = json!(name);
    set_default(obj, "/spec/completions", json!(1));
    set_default(obj, "/spec/parallelism", json!(1));
    set_default(obj, "/spec/backoffLimit", json!(6));
    set_default(obj, "/spec/completionMode", json!("NonIndexed"));
    set_default(obj, "/spec/suspend", json!(false));
    set_default(obj, "/spec/manualSelector", json!(false));
    set_default(
        obj,
        "/spec/podReplacementPolicy",
        json!("TerminatingOrFailed"),
    );
}

/// The `pod-template-hash` of a pod template.
pub(crate) fn template_hash(template: &Value) -> String {
    let mut h = DefaultHasher::new();
    template.to_string().hash(&mut h);
    let mut n = h.finish() as u32;
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    for _ in 0..10 {
        out.push(alphabet[(n % alphabet.len() as u32) as usize] as char);
        n /= alphabet.len() as u32;
        if n == 0 {
            break;
        }
    }
    out
}

/// `maxSurge` and `maxUnavailable` of a RollingUpdate Deployment as the controller resolves
/// them (deployment util `ResolveFenceposts`): percentages of `replicas`, surge rounded up,
/// unavailable rounded down; both zero makes unavailable 1.
fn rolling_bounds(dep: &Value, desired: i64) -> (i64, i64) {
    let resolve = |field: &str, up: bool| match dep
        .pointer(&format!("/spec/strategy/rollingUpdate/{field}"))
    {
        Some(Value::String(p)) => p
            .trim_end_matches('%')
            .parse::<i64>()
            .map(|pct| {
                if up {
                    (desired * pct + 99) / 100
                } else {
                    desired * pct / 100
                }
            })
            .unwrap_or(0),
        Some(v) => v.as_i64().unwrap_or(0),
        None if up => (desired * 25 + 99) / 100,
        None => desired * 25 / 100,
    };
    let (surge, unavailable) = (resolve("maxSurge", true), resolve("maxUnavailable", false));
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

pub(crate) fn set_default(obj: &mut Value, pointer: &str, value: Value) {
    if obj.pointer(pointer).is_some_and(|v| !v.is_null()) {
        return;
    }
    let (parent, field) = pointer.rsplit_once('/').unwrap();
    let mut cur = obj;
    for part in parent.split('/').skip(1) {
        if !cur.get(part).is_some_and(Value::is_object) {
            cur[part] = json!({});
        }
        cur = cur.get_mut(part).unwrap();
    }
    cur[field] = value;
}

pub(crate) fn owned_by(obj: &Value, uid: &str) -> bool {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter().any(|r| {
                r.get("uid").and_then(Value::as_str) == Some(uid)
                    && r.get("controller").and_then(Value::as_bool) == Some(true)
            })
        })
}

impl State {
    /// Per-kind defaults and status, applied to every write before it is stored.
    pub(crate) fn admit(
        &mut self,
        res: &Resource,
        key: &Key,
        old: Option<&Value>,
        obj: &mut Value,
    ) {
        let generation = obj
            .pointer("/metadata/generation")
            .cloned()
            .unwrap_or(json!(1));
        match (res.group.as_str(), res.plural.as_str()) {
            ("", "namespaces") => {
                set_default(obj, "/spec/finalizers", json!(["kubernetes"]));
                // Only the namespace controller changes the phase.
                obj["status"] = old
                    .and_then(|o| o.get("status").cloned())
                    .unwrap_or_else(|| json!({"phase": "Active"}));
            }
            ("", "secrets") => {
                if let Some(Value::Object(sd)) = obj.as_object_mut().unwrap().remove("stringData") {
                    let data = obj
                        .as_object_mut()
                        .unwrap()
                        .entry("data")
                        .or_insert_with(|| json!({}));
                    for (k, v) in sd {
                        data[k.as_str()] = json!(STANDARD.encode(v.as_str().unwrap_or_default()));
                    }
                }
                set_default(obj, "/type", json!("Opaque"));
            }
            ("", "services") => {
                set_default(obj, "/spec/type", json!("ClusterIP"));
                set_default(obj, "/spec/sessionAffinity", json!("None"));
                let ty = obj
                    .pointer("/spec/type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let node_ports = ty == "NodePort" || ty == "LoadBalancer";
                let old_ports: Vec<Value> = old
                    .and_then(|o| o.pointer("/spec/ports"))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let mut next = self.next_node_port;
                if let Some(Value::Array(ports)) = obj.pointer_mut("/spec/ports") {
                    for p in ports {
                        set_default(p, "/protocol", json!("TCP"));
                        let port = p.get("port").cloned().unwrap_or(Value::Null);
                        set_default(p, "/targetPort", port.clone());
                        if node_ports && p.get("nodePort").is_none_or(Value::is_null) {
                            // A port keeps the node port it had; a new one gets the next free.
                            let kept = old_ports
                                .iter()
                                .find(|o| o.get("port") == Some(&port))
                                .and_then(|o| o.get("nodePort"))
                                .cloned();
                            p["nodePort"] = kept.unwrap_or_else(|| {
                                next += 1;
                                json!(next)
                            });
                        }
                    }
                }
                self.next_node_port = next;
                if ty != "ExternalName" {
                    let ip = match old
                        .and_then(|o| o.pointer("/spec/clusterIP"))
                        .and_then(Value::as_str)
                    {
                        Some(ip) if !ip.is_empty() => ip.to_string(),
                        _ => match obj.pointer("/spec/clusterIP").and_then(Value::as_str) {
                            Some(ip) if !ip.is_empty() => ip.to_string(),
                            _ => self.allocate_ip("10.96"),
                        },
                    };
                    obj["spec"]["clusterIP"] = json!(ip);
                    obj["spec"]["clusterIPs"] = json!([ip]);
                    set_default(obj, "/spec/ipFamilies", json!(["IPv4"]));
                    set_default(obj, "/spec/ipFamilyPolicy", json!("SingleStack"));
                }
                if ty == "LoadBalancer" {
                    self.load_balancer_status(key, obj);
                } else {
                    obj["status"] = json!({"loadBalancer": {}});
                }
            }
            ("admissionregistration.k8s.io", plural)
                if plural == "validatingwebhookconfigurations"
                    || plural == "mutatingwebhookconfigurations" =>
            {
                // pkg/apis/admissionregistration/v1/defaults.go `SetDefaults_ValidatingWebhook`,
                // `SetDefaults_MutatingWebhook`, `SetDefaults_Rule`: what a client leaves out
                // is stored with the v1 defaults (a chart that omits `failurePolicy` reads
                // back `Fail`).
                let mutating = plural == "mutatingwebhookconfigurations";
                if let Some(Value::Array(hooks)) = obj.get_mut("webhooks") {
                    for hook in hooks {
                        set_default(hook, "/failurePolicy", json!("Fail"));
                        set_default(hook, "/matchPolicy", json!("Equivalent"));
                        set_default(hook, "/namespaceSelector", json!({}));
                        set_default(hook, "/objectSelector", json!({}));
                        set_default(hook, "/timeoutSeconds", json!(10));
                        if mutating {
                            set_default(hook, "/reinvocationPolicy", json!("Never"));
                        }
                        if let Some(Value::Array(rules)) = hook.get_mut("rules") {
                            for rule in rules {
                                set_default(rule, "/scope", json!("*"));
                            }
                        }
                    }
                }
            }
            ("", "pods") if old.is_none() => self.admit_pod(key, obj),
            ("batch", "jobs") => admit_job(old, obj),
            ("apps", "deployments") => {
                set_default(obj, "/spec/replicas", json!(1));
                set_default(obj, "/spec/strategy/type", json!("RollingUpdate"));
                if obj.pointer("/spec/strategy/type").and_then(Value::as_str)
                    == Some("RollingUpdate")
                {
                    set_default(
                        obj,
                        "/spec/strategy/rollingUpdate/maxUnavailable",
                        json!("25%"),
                    );
                    set_default(obj, "/spec/strategy/rollingUpdate/maxSurge", json!("25%"));
                }
                set_default(obj, "/spec/revisionHistoryLimit", json!(10));
                set_default(obj, "/spec/progressDeadlineSeconds", json!(600));
                let template = obj.pointer("/spec/template").cloned().unwrap_or(json!({}));
                let hash = template_hash(&template);
                let uid = meta_str(obj, "uid").to_string();
                // The revision is that of the ReplicaSet for this template, or the next one.
                let mut max = 0;
                let mut revision = None;
                for (k, rs) in self.objects.iter() {
                    if k.group == "apps"
                        && k.plural == "replicasets"
                        && k.namespace == key.namespace
                        && owned_by(rs, &uid)
                    {
                        let r: i64 = rs
                            .pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
                            .and_then(Value::as_str)
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        max = max.max(r);
                        if k.name == format!("{}-{hash}", key.name) {
                            revision = Some(r);
                        }
                    }
                }
                let revision = revision.unwrap_or(max + 1);
                set_default(obj, "/metadata/annotations", json!({}));
                obj["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
                    json!(revision.to_string());
                obj["status"] = self.deployment_status(key, obj, generation);
            }
            ("apps", "replicasets") => {
                set_default(obj, "/spec/replicas", json!(1));
                obj["status"] = self.replicaset_status(obj, generation);
            }
            ("apps", "statefulsets") => {
                let replicas = obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1));
                set_default(obj, "/spec/replicas", replicas.clone());
                obj["status"] = json!({
                    "observedGeneration": generation,
                    "replicas": replicas,
                    "fullyLabeledReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                    "currentReplicas": replicas,
                    "updatedReplicas": replicas,
                });
                if res.plural == "statefulsets" {
                    let rev = format!("{}-{}", key.name, template_hash(&obj["spec"]["template"]));
                    obj["status"]["currentRevision"] = json!(rev);
                    obj["status"]["updateRevision"] = json!(rev);
                    obj["status"]
                        .as_object_mut()
                        .unwrap()
                        .remove("fullyLabeledReplicas");
                }
            }
            ("apps", "daemonsets") => self.admit_daemonset(old, obj, &generation),
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
                let mut accepted = names.clone();
                set_default(
                    &mut accepted,
                    "/singular",
                    json!(
                        names
                            .get("kind")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_lowercase()
                    ),
                );
                let storage: Vec<Value> = obj
                    .pointer("/spec/versions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                    .filter_map(|v| v.get("name").cloned())
                    .collect();
                let now = meta_str(obj, "creationTimestamp").to_string();
                obj["status"] = json!({
                    "acceptedNames": accepted,
                    "storedVersions": storage,
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                         "message": "no conflicts found", "lastTransitionTime": now},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                         "message": "the initial names have been accepted", "lastTransitionTime": now},
                    ],
                });
            }
            _ => {}
        }
    }

    /// Follow-up writes once an object is stored.
    pub(crate) fn after_write(&mut self, res: &Resource, key: &Key, obj: &Value) {
        match (res.group.as_str(), res.plural.as_str()) {
            ("apps", "deployments") => self.reconcile_replicasets(key, obj),
            ("apps", "replicasets") => {
                self.reconcile_pods(key, obj);
                self.stale_status.push(key.clone());
                self.owner_status_stale(obj);
            }
            ("apps", "daemonsets") => self.reconcile_daemon_pods(key, obj),
            ("", "pods") => self.owner_status_stale(obj),
            ("batch", "jobs") => self.start_job(key, obj),
            ("apiextensions.k8s.io", "customresourcedefinitions") => self.registry.add_crd(obj),
            ("", "secrets") if State::is_token_secret_unfilled(obj) => {
                self.pending_tokens.push(key.clone())
            }
            ("", "secrets") if key.name == "cacerts" => {
                self.restart_crashing_istiods(&key.namespace)
            }
            _ => {}
        }
    }

    /// The Deployment controller (pkg/controller/deployment): one ReplicaSet per pod template,
    /// owned by the Deployment. A new template rolls out as `rolloutRolling` does: the new
    /// ReplicaSet grows while all pods stay within `replicas + maxSurge`
    /// (`NewRSNewReplicas`), old ones shrink only as far as `replicas - maxUnavailable`
    /// available pods allow (`reconcileOldReplicaSets`: unhealthy pods first, then by
    /// availability). `Recreate` scales the old ones to zero before the new one grows.
    fn reconcile_replicasets(&mut self, key: &Key, dep: &Value) {
        let Some(rs_res) = self.resource("apps", "v1", "replicasets") else {
            return;
        };
        let uid = meta_str(dep, "uid").to_string();
        let template = dep.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let hash = template_hash(&template);
        let rs_name = format!("{}-{hash}", key.name);
        let desired = dep
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let revision = dep
            .pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
            .cloned()
            .unwrap_or(json!("1"));
        let mut old: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(k, rs)| {
                k.group == "apps"
                    && k.plural == "replicasets"
                    && k.namespace == key.namespace
                    && k.name != rs_name
                    && owned_by(rs, &uid)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Oldest first, as the controller scales them down.
        old.sort_by_key(|(k, _)| self.born.get(k).map(|b| b.0).unwrap_or(0));
        let replicas_of = |rs: &Value| {
            rs.pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        let rs_key = Key::new(&rs_res, &key.namespace, &rs_name);
        let current = self.objects.get(&rs_key).map(replicas_of).unwrap_or(0);
        let old_total: i64 = old.iter().map(|(_, rs)| replicas_of(rs)).sum();
        let recreate =
            dep.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate");
        let (max_surge, max_unavailable) = rolling_bounds(dep, desired);
        let available =
            |st: &State, rs: &Value| st.pod_counts(&key.namespace, meta_str(rs, "uid")).1 as i64;
        let mut old_want: Vec<i64> = old.iter().map(|(_, rs)| replicas_of(rs)).collect();
        let new_want = if recreate {
            old_want.iter_mut().for_each(|w| *w = 0);
            let old_pods: u64 = old
                .iter()
                .map(|(_, rs)| self.pod_counts(&key.namespace, meta_str(rs, "uid")).0)
                .sum();
            if old_pods > 0 { current } else { desired }
        } else if old_total == 0 {
            desired
        } else {
            let max_total = desired + max_surge;
            let total = old_total + current;
            let new_want = if total >= max_total {
                current
            } else {
                current + (max_total - total).min(desired - current)
            };
            let new_available = self
                .objects
                .get(&rs_key)
                .map(|rs| available(self, rs))
                .unwrap_or(0);
            let min_available = desired - max_unavailable;
            let max_scaled_down = old_total + new_want - min_available - (new_want - new_available);
            if max_scaled_down > 0 {
                let mut cleaned = 0;
                for (i, (_, rs)) in old.iter().enumerate() {
                    let unhealthy = (old_want[i] - available(self, rs)).max(0);
                    let n = unhealthy.min(max_scaled_down - cleaned);
                    old_want[i] -= n;
                    cleaned += n;
                }
                let all_available: i64 =
                    old.iter().map(|(_, rs)| available(self, rs)).sum::<i64>() + new_available;
                let mut to_scale = (all_available - min_available).max(0);
                for w in old_want.iter_mut() {
                    let n = (*w).min(to_scale);
                    *w -= n;
                    to_scale -= n;
                }
            }
            new_want
        };
        for ((k, mut rs), want) in old.into_iter().zip(old_want) {
            if replicas_of(&rs) != want {
                rs["spec"]["replicas"] = json!(want);
                let _ = self.update(&rs_res, &k, rs, WriteMode::Internal, false);
            }
        }
        let replicas = json!(new_want);
        if let Some(mut rs) = self.objects.get(&rs_key).cloned() {
            if replicas_of(&rs) != new_want {
                rs["spec"]["replicas"] = replicas;
                let _ = self.update(&rs_res, &rs_key, rs, WriteMode::Internal, false);
            }
            return;
        }
        let mut tmpl = template;
        set_default(&mut tmpl, "/metadata/labels", json!({}));
        tmpl["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        let mut selector = dep.pointer("/spec/selector").cloned().unwrap_or(json!({}));
        set_default(&mut selector, "/matchLabels", json!({}));
        selector["matchLabels"]["pod-template-hash"] = json!(hash);
        let rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": rs_name,
                "namespace": key.namespace,
                "labels": tmpl["metadata"]["labels"],
                "annotations": {
                    "deployment.kubernetes.io/revision": revision,
                    "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                },
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "Deployment", "name": key.name, "uid": uid,
                    "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "spec": {"replicas": replicas, "selector": selector, "template": tmpl},
        });
        let _ = self.create(&rs_res, &key.namespace, rs, false);
    }

    /// Marks the status of an object's controlling ReplicaSet or Deployment for recomputing.
    pub(crate) fn owner_status_stale(&mut self, obj: &Value) {
        let Some(owner) = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
        else {
            return;
        };
        let plural = match owner["kind"].as_str() {
            Some("ReplicaSet") => "replicasets",
            Some("Deployment") => "deployments",
            Some("DaemonSet") => "daemonsets",
            _ => return,
        };
        let key = Key {
            group: "apps".into(),
            plural: plural.into(),
            namespace: meta_str(obj, "namespace").to_string(),
            name: owner["name"].as_str().unwrap_or("").to_string(),
        };
        if !self.stale_status.contains(&key) {
            self.stale_status.push(key);
        }
    }

    /// Recomputes the status of a ReplicaSet, Deployment or DaemonSet (a no-op write when
    /// unchanged); a DaemonSet's controller also syncs its pods again (a pod that went or
    /// became available may let its rollout go on).
    pub(crate) fn refresh_status(&mut self, key: &Key) {
        if key.plural == "daemonsets"
            && let Some(ds) = self.objects.get(key).cloned()
        {
            self.reconcile_daemon_pods(key, &ds);
        }
        let (Some(obj), Some(res)) = (
            self.objects.get(key).cloned(),
            self.resource(&key.group, "v1", &key.plural),
        ) else {
            return;
        };
        let _ = self.update(&res, key, obj, WriteMode::Internal, false);
    }

    /// Pods controlled by the object with `uid` in `ns`: (total, ready).
    fn pod_counts(&self, ns: &str, uid: &str) -> (u64, u64) {
        let mut total = 0;
        let mut ready = 0;
        for (k, p) in self.objects.iter() {
            // Terminating pods are no replicas any more (controller `FilterActivePods`).
            if k.group.is_empty()
                && k.plural == "pods"
                && k.namespace == ns
                && owned_by(p, uid)
                && meta_str(p, "deletionTimestamp").is_empty()
            {
                total += 1;
                if crate::proxy::pod_ready(p) {
                    ready += 1;
                }
            }
        }
        (total, ready)
    }

    /// A ReplicaSet's status from its pods (zero counts left out, as the API server does).
    fn replicaset_status(&self, rs: &Value, generation: Value) -> Value {
        let (total, ready) = self.pod_counts(meta_str(rs, "namespace"), meta_str(rs, "uid"));
        let mut status = json!({"observedGeneration": generation, "replicas": total});
        if total > 0 {
            status["fullyLabeledReplicas"] = json!(total);
        }
        if ready > 0 {
            status["readyReplicas"] = json!(ready);
            status["availableReplicas"] = json!(ready);
        }
        status
    }

    /// A Deployment's status from its ReplicaSets' pods: counts, and the Available and
    /// Progressing conditions (timestamps kept while a condition does not change).
    fn deployment_status(&self, key: &Key, dep: &Value, generation: Value) -> Value {
        let desired = dep
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let uid = meta_str(dep, "uid");
        let new_rs = format!(
            "{}-{}",
            key.name,
            template_hash(dep.pointer("/spec/template").unwrap_or(&json!({})))
        );
        let (mut total, mut ready, mut updated) = (0, 0, 0);
        for (k, rs) in self.objects.iter() {
            if k.group == "apps"
                && k.plural == "replicasets"
                && k.namespace == key.namespace
                && owned_by(rs, uid)
            {
                let (t, r) = self.pod_counts(&key.namespace, meta_str(rs, "uid"));
                total += t;
                ready += r;
                if k.name == new_rs {
                    updated = t;
                }
            }
        }
        let max_unavailable = match dep.pointer("/spec/strategy/rollingUpdate/maxUnavailable") {
            Some(Value::String(p)) => p
                .trim_end_matches('%')
                .parse::<u64>()
                .map(|pct| desired * pct / 100)
                .unwrap_or(0),
            Some(v) => v.as_u64().unwrap_or(0),
            None => 0,
        };
        let now = crate::util::now_rfc3339();
        let old = dep.pointer("/status/conditions").and_then(Value::as_array);
        let condition = |t: &str, ok: bool, reason: &str, message: String| {
            let status = if ok { "True" } else { "False" };
            let same = old.and_then(|cs| {
                cs.iter()
                    .find(|c| c["type"] == t && c["status"] == status && c["reason"] == reason)
            });
            let (updated_at, transition) = match same {
                Some(c) => (c["lastUpdateTime"].clone(), c["lastTransitionTime"].clone()),
                None => (json!(now), json!(now)),
            };
            json!({"type": t, "status": status, "reason": reason, "message": message,
                   "lastUpdateTime": updated_at, "lastTransitionTime": transition})
        };
        let available = ready >= desired.saturating_sub(max_unavailable);
        let complete = updated == desired && total == desired && ready == desired;
        let mut status = json!({
            "observedGeneration": generation,
            "replicas": total,
            "conditions": [
                if available {
                    condition("Available", true, "MinimumReplicasAvailable",
                              "Deployment has minimum availability.".into())
                } else {
                    condition("Available", false, "MinimumReplicasUnavailable",
                              "Deployment does not have minimum availability.".into())
                },
                if complete {
                    condition("Progressing", true, "NewReplicaSetAvailable",
                              format!("ReplicaSet \"{new_rs}\" has successfully progressed."))
                } else {
                    condition("Progressing", true, "ReplicaSetUpdated",
                              format!("ReplicaSet \"{new_rs}\" is progressing."))
                },
            ],
        });
        for (field, n) in [
            ("updatedReplicas", updated),
            ("readyReplicas", ready),
            ("availableReplicas", ready),
            (
                "unavailableReplicas",
                total.max(desired).saturating_sub(ready),
            ),
        ] {
            if n > 0 {
                status[field] = json!(n);
            }
        }
        status
    }

    /// The ReplicaSet controller: as many pods as `spec.replicas`, owned by the ReplicaSet;
    /// surplus pods are deleted, newest name last.
    pub(crate) fn reconcile_pods(&mut self, rs_key: &Key, rs: &Value) {
        let Some(pod_res) = self.resource("", "v1", "pods") else {
            return;
        };
        let uid = meta_str(rs, "uid").to_string();
        let want = rs
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize;
        let owned: Vec<Key> = self
            .objects
            .iter()
            .filter(|(k, p)| {
                k.group.is_empty()
                    && k.plural == "pods"
                    && k.namespace == rs_key.namespace
                    && owned_by(p, &uid)
                    && meta_str(p, "deletionTimestamp").is_empty()
            })
            .map(|(k, _)| k.clone())
            .collect();
        // Surplus pods go not-ready ones first (controller `ActivePodsWithRanks`).
        let mut owned = owned;
        owned.sort_by_key(|k| {
            if self.objects.get(k).is_some_and(crate::proxy::pod_ready) {
                0
            } else {
                1
            }
        });
        for k in owned.iter().skip(want) {
            self.delete(k);
        }
        let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let owner = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_key.name,
                           "uid": uid, "controller": true, "blockOwnerDeletion": true});
        for _ in owned.len()..want {
            let pod = pod_from_template(&rs_key.name, &template, owner.clone());
            if self
                .create(&pod_res, &rs_key.namespace, pod, false)
                .is_err()
            {
                // Refused (a mutating webhook that cannot be called): the controller's work
                // queue tries again later.
                self.schedule(CREATE_RETRY, crate::timers::Timer::Resync(rs_key.clone()));
                break;
            }
        }
    }

    /// The scheduler and kubelet, done at once: a new pod is bound to the node, gets an IP from
    /// the pod CIDR and runs Ready (unless it was created with a phase). Injection happened
    /// before, in the mutating webhooks (see the `injection` module).
    fn admit_pod(&mut self, key: &Key, obj: &mut Value) {
        set_default(obj, "/spec/nodeName", json!(self.node_name()));
        set_default(obj, "/spec/serviceAccountName", json!("default"));
        set_default(obj, "/spec/restartPolicy", json!("Always"));
        set_default(obj, "/spec/dnsPolicy", json!("ClusterFirst"));
        set_default(obj, "/spec/schedulerName", json!("default-scheduler"));
        set_default(obj, "/spec/terminationGracePeriodSeconds", json!(30));
        let mut crashing = None;
        if crate::proxy::is_istiod(obj) {
            let root = crate::mesh::cacerts_root(self, &key.namespace);
            self.istiod_roots.insert(key.clone(), root);
            crashing = crate::mesh::cacerts(self, &key.namespace).startup_error();
        }
        if obj.pointer("/status/phase").is_some() {
            return;
        }
        let ip = self.allocate_ip(&self.pod_prefix());
        obj["status"] = running_status(obj, &ip, meta_str(obj, "creationTimestamp"));
        obj["status"]["hostIP"] = json!(self.node_ip());
        obj["status"]["hostIPs"] = json!([{"ip": self.node_ip()}]);
        if let Some(error) = crashing {
            crash(obj);
            self.pod_logs.insert(key.clone(), error.to_string());
        } else {
            self.delay_readiness(key, obj);
        }
    }

    /// The kubelet restarts crashing istiod containers: once `cacerts` in their namespace is
    /// complete again (or gone), they start, loading it.
    pub(crate) fn restart_crashing_istiods(&mut self, ns: &str) {
        if crate::mesh::cacerts(self, ns).startup_error().is_some() {
            return;
        }
        let Some(res) = self.resource("", "v1", "pods") else {
            return;
        };
        let crashing: Vec<(Key, Value)> = self
            .istiod_pods()
            .filter(|(k, p)| k.namespace == ns && is_crashing(p))
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        for (k, mut pod) in crashing {
            let root = crate::mesh::cacerts_root(self, ns);
            self.istiod_roots.insert(k.clone(), root);
            self.pod_logs.remove(&k);
            let ip = pod["status"]["podIP"].as_str().unwrap_or("").to_string();
            let started = pod["status"]["startTime"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let host = pod["status"]["hostIP"].clone();
            pod["status"] = running_status(&pod, &ip, &started);
            pod["status"]["hostIP"] = host.clone();
            pod["status"]["hostIPs"] = json!([{"ip": host}]);
            self.delay_readiness(&k, &mut pod);
            let _ = self.update(&res, &k, pod, WriteMode::Internal, false);
        }
    }

    /// Whether a Ready istiod pod of revision `rev` runs in this cluster.
    pub(crate) fn revision_runs(&self, rev: &str) -> bool {
        self.istiod_pods()
            .any(|(_, p)| crate::proxy::pod_ready(p) && istiod_revision(p) == rev)
    }

    /// istiod's pods (label `app=istiod`).
    pub(crate) fn istiod_pods(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.objects
            .iter()
            .filter(|(k, p)| k.group.is_empty() && k.plural == "pods" && crate::proxy::is_istiod(p))
    }

    /// The job controller: one pod for a Job that has none and has not finished; the pod runs
    /// shortly after (see `finish_job`).
    pub(crate) fn start_job(&mut self, key: &Key, job: &Value) {
        let uid = meta_str(job, "uid").to_string();
        let finished = job
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty());
        let has_pod = self.objects.iter().any(|(k, p)| {
            k.group.is_empty()
                && k.plural == "pods"
                && k.namespace == key.namespace
                && owned_by(p, &uid)
        });
        if finished || has_pod || job.pointer("/status/startTime").is_some() {
            return;
        }
        let (Some(pod_res), Some(job_res)) = (
            self.resource("", "v1", "pods"),
            self.resource("batch", "v1", "jobs"),
        ) else {
            return;
        };
        let template = job.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let owner = json!({"apiVersion": "batch/v1", "kind": "Job", "name": key.name,
                           "uid": uid, "controller": true, "blockOwnerDeletion": true});
        let pod = pod_from_template(&key.name, &template, owner);
        let Ok(pod) = self.create(&pod_res, &key.namespace, pod, false) else {
            self.schedule(CREATE_RETRY, crate::timers::Timer::Resync(key.clone()));
            return;
        };
        let pod_key = Key::new(&pod_res, &key.namespace, meta_str(&pod, "name"));
        self.pending_jobs.push(pod_key);
        let mut job = job.clone();
        job["status"] = json!({"active": 1, "ready": 0, "terminating": 0, "startTime": crate::util::now_rfc3339(),
                   "uncountedTerminatedPods": {}});
        let _ = self.update(&job_res, key, job, WriteMode::Internal, false);
    }

    /// The kubelet and job controller once a Job's pod has run: the pod Succeeded with `log` as
    /// its output, the Job Complete.
    pub fn finish_job(&mut self, pod_key: &Key, log: String) {
        let Some(mut pod) = self.objects.get(pod_key).cloned() else {
            return;
        };
        let (Some(pod_res), Some(job_res)) = (
            self.resource("", "v1", "pods"),
            self.resource("batch", "v1", "jobs"),
        ) else {
            return;
        };
        let now = crate::util::now_rfc3339();
        self.pod_logs.insert(pod_key.clone(), log);
        let started = pod
            .pointer("/status/startTime")
            .cloned()
            .unwrap_or(json!(now));
        let condition = |t: &str, status: &str| {
            json!({"type": t, "status": status, "lastProbeTime": null, "lastTransitionTime": now,
                   "reason": if status == "False" { json!("PodCompleted") } else { Value::Null }})
        };
        pod["status"]["phase"] = json!("Succeeded");
        pod["status"]["conditions"] = json!([
            condition("PodReadyToStartContainers", "False"),
            condition("Initialized", "True"),
            condition("Ready", "False"),
            condition("ContainersReady", "False"),
            condition("PodScheduled", "True"),
        ]);
        if let Some(Value::Array(cs)) = pod.pointer_mut("/status/containerStatuses") {
            for c in cs {
                c["ready"] = json!(false);
                c["started"] = json!(false);
                c["state"] = json!({"terminated": {"exitCode": 0, "reason": "Completed",
                                                   "startedAt": started, "finishedAt": now}});
            }
        }
        let _ = self.update(&pod_res, pod_key, pod.clone(), WriteMode::Internal, false);
        let Some(owner) = pod
            .pointer("/metadata/ownerReferences/0/name")
            .and_then(Value::as_str)
        else {
            return;
        };
        let job_key = Key::new(&job_res, &pod_key.namespace, owner);
        let Some(mut job) = self.objects.get(&job_key).cloned() else {
            return;
        };
        let done = |t: &str, message: &str| {
            json!({"type": t, "status": "True", "reason": "CompletionsReached", "message": message,
                   "lastProbeTime": now, "lastTransitionTime": now})
        };
        job["status"] = json!({
            "startTime": job.pointer("/status/startTime").cloned().unwrap_or(json!(now)),
            "completionTime": now,
            "succeeded": 1,
            "ready": 0,
            "terminating": 0,
            "uncountedTerminatedPods": {},
            "conditions": [
                done("SuccessCriteriaMet", "Reached expected number of succeeded pods"),
                done("Complete", "Reached expected number of succeeded pods"),
            ],
        });
        let _ = self.update(&job_res, &job_key, job, WriteMode::Internal, false);
    }

    /// The load-balancer controller, switched on: every pending LoadBalancer Service gets an
    /// address.
    pub fn assign_load_balancers(&mut self) {
        let Some(svc) = self.resource("", "v1", "services") else {
            return;
        };
        let pending: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(k, o)| {
                k.group.is_empty()
                    && k.plural == "services"
                    && o.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer")
                    && o.pointer("/status/loadBalancer/ingress/0").is_none()
            })
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        for (k, mut o) in pending {
            let ingress = self.load_balancer_ingress(&o);
            o["status"] = json!({"loadBalancer": {"ingress": [ingress]}});
            let _ = self.update(&svc, &k, o, WriteMode::Internal, false);
        }
    }

    /// The answer to `POST .../serviceaccounts/NAME/token`.
    pub fn token_request(&mut self, ns: &str, sa: &str, mut body: Value) -> Value {
        let seconds = body
            .pointer("/spec/expirationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(3600);
        let exp = now_secs() + seconds;
        body["apiVersion"] = json!("authentication.k8s.io/v1");
        body["kind"] = json!("TokenRequest");
        set_default(&mut body, "/metadata/name", json!(sa));
        body["metadata"]["namespace"] = json!(ns);
        body["metadata"]["creationTimestamp"] = Value::Null;
        let audiences: Vec<String> = body
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        let audiences = if audiences.is_empty() {
            vec![crate::auth::API_AUDIENCE.to_string()]
        } else {
            audiences
        };
        body["spec"]["audiences"] = json!(audiences);
        body["spec"]["expirationSeconds"] = json!(seconds);
        let t = token(&self.cluster, ns, sa, Some(exp));
        let jti = t
            .split('.')
            .nth(1)
            .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
            .and_then(|c| serde_json::from_slice::<Value>(&c).ok())
            .and_then(|c| c["jti"].as_str().map(String::from))
            .unwrap_or_default();
        let sa_uid = self
            .objects
            .get(&Key {
                group: String::new(),
                plural: "serviceaccounts".into(),
                namespace: ns.into(),
                name: sa.into(),
            })
            .map(|o| meta_str(o, "uid").to_string())
            .unwrap_or_default();
        self.issued.insert(
            t.clone(),
            crate::auth::Issued {
                namespace: ns.into(),
                name: sa.into(),
                sa_uid,
                expires: exp,
                audiences,
                jti,
            },
        );
        body["status"] = json!({
            "token": t,
            "expirationTimestamp": crate::util::rfc3339(exp),
        });
        body
    }
}
