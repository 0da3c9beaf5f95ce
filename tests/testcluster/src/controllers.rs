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

/// The `pod-template-hash` of a pod template.
fn template_hash(template: &Value) -> String {
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

fn set_default(obj: &mut Value, pointer: &str, value: Value) {
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

fn owned_by(obj: &Value, uid: &str) -> bool {
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
                obj["status"] = json!({"phase": "Active"});
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
                if let Some(Value::Array(ports)) = obj.pointer_mut("/spec/ports") {
                    for p in ports {
                        set_default(p, "/protocol", json!("TCP"));
                        let port = p.get("port").cloned().unwrap_or(Value::Null);
                        set_default(p, "/targetPort", port);
                    }
                }
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
                    if !self.load_balancer {
                        if obj.pointer("/status/loadBalancer/ingress/0").is_none() {
                            obj["status"] = json!({"loadBalancer": {}});
                        }
                    } else if obj.pointer("/status/loadBalancer/ingress/0/ip").is_none() {
                        let ip = self.allocate_ip("172.18.255");
                        obj["status"] =
                            json!({"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}});
                    }
                } else {
                    obj["status"] = json!({"loadBalancer": {}});
                }
            }
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
                let replicas = obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1));
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
                let rs_name = format!("{}-{hash}", key.name);
                let now = meta_str(obj, "creationTimestamp").to_string();
                obj["status"] = json!({
                    "observedGeneration": generation,
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                    "conditions": [
                        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                         "message": "Deployment has minimum availability.", "lastUpdateTime": now, "lastTransitionTime": now},
                        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                         "message": format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                         "lastUpdateTime": now, "lastTransitionTime": now},
                    ],
                });
            }
            ("apps", "replicasets") | ("apps", "statefulsets") => {
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
            ("apps", "daemonsets") => {
                obj["status"] = json!({
                    "observedGeneration": generation, "currentNumberScheduled": 1, "desiredNumberScheduled": 1,
                    "numberAvailable": 1, "numberMisscheduled": 0, "numberReady": 1, "updatedNumberScheduled": 1,
                });
            }
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
            ("apiextensions.k8s.io", "customresourcedefinitions") => self.registry.add_crd(obj),
            ("", "secrets") if State::is_token_secret_unfilled(obj) => {
                self.pending_tokens.push(key.clone())
            }
            _ => {}
        }
    }

    /// One ReplicaSet per pod template, owned by the Deployment; older ones scaled to zero.
    fn reconcile_replicasets(&mut self, key: &Key, dep: &Value) {
        let Some(rs_res) = self.resource("apps", "v1", "replicasets") else {
            return;
        };
        let uid = meta_str(dep, "uid").to_string();
        let template = dep.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let hash = template_hash(&template);
        let rs_name = format!("{}-{hash}", key.name);
        let replicas = dep.pointer("/spec/replicas").cloned().unwrap_or(json!(1));
        let revision = dep
            .pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
            .cloned()
            .unwrap_or(json!("1"));
        let owned: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(k, rs)| {
                k.group == "apps"
                    && k.plural == "replicasets"
                    && k.namespace == key.namespace
                    && owned_by(rs, &uid)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, mut rs) in owned {
            let want = if k.name == rs_name {
                replicas.clone()
            } else {
                json!(0)
            };
            if rs.pointer("/spec/replicas") != Some(&want) {
                rs["spec"]["replicas"] = want;
                let _ = self.update(&rs_res, &k, rs, WriteMode::Internal, false);
            }
        }
        let rs_key = Key::new(&rs_res, &key.namespace, &rs_name);
        if self.objects.contains_key(&rs_key) {
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
            let ip = self.allocate_ip("172.18.255");
            o["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}});
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
        let t = token(&self.cluster, ns, sa, Some(exp));
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
            },
        );
        body["status"] = json!({
            "token": t,
            "expirationTimestamp": crate::util::rfc3339(exp),
        });
        body
    }
}
