//! The DaemonSet controller (Kubernetes v1.34 pkg/controller/daemon): one pod per node that
//! should run it, rolled out on a new template as the `RollingUpdate` strategy allows, and the
//! status `helm --wait` and `kubectl rollout status` read.
//!
//! - Defaults (pkg/apis/apps/v1/defaults.go `SetDefaults_DaemonSet`): `updateStrategy.type`
//!   RollingUpdate with `maxUnavailable: 1`, `maxSurge: 0`; `revisionHistoryLimit: 10`. The
//!   registry strategy (pkg/registry/apps/daemonset/strategy.go) keeps the template generation
//!   in the annotation `deprecated.daemonset.template.generation`, raised with each new
//!   template.
//! - A node runs the DaemonSet when the pod template's `nodeSelector` matches its labels
//!   (`NodeShouldRunDaemonPod`; the node has no taints here). A node without a pod gets one,
//!   `<name>-<5 chars>`, labelled `controller-revision-hash` and `pod-template-generation`
//!   (`podsShouldBeOnNode`, `syncNodes`); a node whose only pod is terminating waits for it to
//!   go before it gets a new one.
//! - Rolling update (update.go `rollingUpdate`): with `maxSurge: 0` an old pod is deleted while
//!   no more than `maxUnavailable` nodes lack an available pod (old pods that are not available
//!   go first), and its node gets the new pod once the old one is gone; with `maxSurge > 0` the
//!   new pod starts next to the old one, which is deleted once the new one is available.
//!   `OnDelete` replaces nothing until a pod is deleted.
//! - Status (daemon_controller.go `updateDaemonSetStatus`): per node that should run and has
//!   pods (terminating ones too), the oldest pod counts: `currentNumberScheduled`, `numberReady`,
//!   `numberAvailable` (`minReadySeconds` 0), `updatedNumberScheduled` (its
//!   `controller-revision-hash` is the current template's); `desiredNumberScheduled` the nodes
//!   that should run it, `numberMisscheduled` pods on other nodes, `numberUnavailable`,
//!   `observedGeneration`. The optional counts are left out when zero, as the API omits them.

use serde_json::{Value, json};

use crate::controllers::{CREATE_RETRY, owned_by, pod_from_template, set_default, template_hash};
use crate::store::{Key, State, meta_str};

/// The annotation the DaemonSet registry keeps the template generation in.
const TEMPLATE_GENERATION: &str = "deprecated.daemonset.template.generation";

/// `maxUnavailable` / `maxSurge` resolved against the number of nodes (`intstr`
/// percentages round up for surge, down for unavailable, as `util.UnavailableCount` /
/// `SurgeCount` do).
fn bound(ds: &Value, field: &str, desired: i64, up: bool) -> i64 {
    match ds.pointer(&format!("/spec/updateStrategy/rollingUpdate/{field}")) {
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
        None => 0,
    }
}

/// The pods of one node, oldest first.
struct NodePods {
    live: Vec<(Key, Value)>,
    terminating: Vec<(Key, Value)>,
}

impl State {
    /// Defaults, template generation and status of a DaemonSet being written.
    pub(crate) fn admit_daemonset(
        &mut self,
        old: Option<&Value>,
        obj: &mut Value,
        generation: &Value,
    ) {
        set_default(obj, "/spec/updateStrategy/type", json!("RollingUpdate"));
        if obj
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            == Some("RollingUpdate")
        {
            set_default(
                obj,
                "/spec/updateStrategy/rollingUpdate/maxUnavailable",
                json!(1),
            );
            set_default(obj, "/spec/updateStrategy/rollingUpdate/maxSurge", json!(0));
        }
        set_default(obj, "/spec/revisionHistoryLimit", json!(10));
        set_default(obj, "/spec/minReadySeconds", json!(0));
        let old_gen = old
            .and_then(|o| {
                o.pointer(&format!(
                    "/metadata/annotations/{}",
                    TEMPLATE_GENERATION.replace('/', "~1")
                ))
            })
            .and_then(Value::as_str)
            .and_then(|g| g.parse::<i64>().ok());
        let same_template =
            old.and_then(|o| o.pointer("/spec/template")) == obj.pointer("/spec/template");
        let template_generation = match old_gen {
            Some(g) if same_template => g,
            Some(g) => g + 1,
            None => 1,
        };
        set_default(obj, "/metadata/annotations", json!({}));
        obj["metadata"]["annotations"][TEMPLATE_GENERATION] =
            json!(template_generation.to_string());
        obj["status"] = self.daemonset_status(obj, generation);
    }

    /// The nodes a DaemonSet's pods should run on (its template's `nodeSelector` matches).
    fn daemon_nodes(&self, ds: &Value) -> Vec<String> {
        let selector = ds.pointer("/spec/template/spec/nodeSelector");
        self.objects
            .iter()
            .filter(|(k, _)| k.group.is_empty() && k.plural == "nodes")
            .filter(|(_, n)| {
                selector.and_then(Value::as_object).is_none_or(|sel| {
                    sel.iter().all(|(k, v)| {
                        n.pointer(&format!(
                            "/metadata/labels/{}",
                            k.replace('~', "~0").replace('/', "~1")
                        )) == Some(v)
                    })
                })
            })
            .map(|(k, _)| k.name.clone())
            .collect()
    }

    /// A DaemonSet's pods on `node`, oldest first.
    fn node_pods(&self, ns: &str, uid: &str, node: &str) -> NodePods {
        let mut pods: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(k, p)| {
                k.group.is_empty()
                    && k.plural == "pods"
                    && k.namespace == ns
                    && owned_by(p, uid)
                    && p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
            })
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        pods.sort_by_key(|(k, _)| self.born.get(k).map(|b| b.0).unwrap_or(0));
        let (terminating, live) = pods
            .into_iter()
            .partition(|(_, p)| !meta_str(p, "deletionTimestamp").is_empty());
        NodePods { live, terminating }
    }

    fn daemonset_status(&self, ds: &Value, generation: &Value) -> Value {
        let uid = meta_str(ds, "uid");
        let ns = meta_str(ds, "namespace");
        let hash = template_hash(ds.pointer("/spec/template").unwrap_or(&json!({})));
        let nodes = self.daemon_nodes(ds);
        let (mut current, mut ready, mut available, mut updated) = (0, 0, 0, 0);
        for node in &nodes {
            let pods = self.node_pods(ns, uid, node);
            let mut all: Vec<&(Key, Value)> =
                pods.live.iter().chain(pods.terminating.iter()).collect();
            all.sort_by_key(|(k, _)| self.born.get(k).map(|b| b.0).unwrap_or(0));
            let Some((_, oldest)) = all.first() else {
                continue;
            };
            current += 1;
            if crate::proxy::pod_ready(oldest) {
                ready += 1;
                available += 1;
            }
            if oldest
                .pointer("/metadata/labels/controller-revision-hash")
                .and_then(Value::as_str)
                == Some(hash.as_str())
            {
                updated += 1;
            }
        }
        let misscheduled = self
            .objects
            .iter()
            .filter(|(k, p)| {
                k.group.is_empty()
                    && k.plural == "pods"
                    && k.namespace == ns
                    && owned_by(p, uid)
                    && !nodes.iter().any(|n| {
                        p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(n.as_str())
                    })
            })
            .count();
        let desired = nodes.len();
        let mut status = json!({
            "currentNumberScheduled": current,
            "desiredNumberScheduled": desired,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "observedGeneration": generation,
        });
        for (field, n) in [
            ("updatedNumberScheduled", updated),
            ("numberAvailable", available),
            ("numberUnavailable", desired.saturating_sub(available)),
        ] {
            if n > 0 {
                status[field] = json!(n);
            }
        }
        status
    }

    /// The DaemonSet controller's sync: pods for the nodes that lack one, a rolling update
    /// within its bounds, no pods on nodes that should not run it.
    pub(crate) fn reconcile_daemon_pods(&mut self, key: &Key, ds: &Value) {
        let Some(pod_res) = self.resource("", "v1", "pods") else {
            return;
        };
        let uid = meta_str(ds, "uid").to_string();
        let template = ds.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let hash = template_hash(&template);
        let generation = ds
            .pointer(&format!(
                "/metadata/annotations/{}",
                TEMPLATE_GENERATION.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            .unwrap_or("1")
            .to_string();
        let nodes = self.daemon_nodes(ds);
        let desired = nodes.len() as i64;
        let rolling = ds
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            != Some("OnDelete");
        let max_surge = bound(ds, "maxSurge", desired, true);
        let max_unavailable = match bound(ds, "maxUnavailable", desired, false) {
            0 if max_surge == 0 => 1,
            n => n,
        };
        let is_new = |p: &Value| {
            p.pointer("/metadata/labels/controller-revision-hash")
                .and_then(Value::as_str)
                == Some(hash.as_str())
        };
        // Pods on nodes that should not run it go.
        let stray: Vec<Key> = self
            .objects
            .iter()
            .filter(|(k, p)| {
                k.group.is_empty()
                    && k.plural == "pods"
                    && k.namespace == key.namespace
                    && owned_by(p, &uid)
                    && meta_str(p, "deletionTimestamp").is_empty()
                    && !nodes.iter().any(|n| {
                        p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(n.as_str())
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stray {
            self.delete(&k);
        }
        let per_node: Vec<(String, NodePods)> = nodes
            .iter()
            .map(|n| (n.clone(), self.node_pods(&key.namespace, &uid, n)))
            .collect();
        // Nodes without an available pod count against maxUnavailable.
        let mut unavailable = per_node
            .iter()
            .filter(|(_, p)| !p.live.iter().any(|(_, p)| crate::proxy::pod_ready(p)))
            .count() as i64;
        let mut surging = per_node
            .iter()
            .filter(|(_, p)| {
                p.live.iter().any(|(_, p)| is_new(p)) && p.live.iter().any(|(_, p)| !is_new(p))
            })
            .count() as i64;
        let mut create_on: Vec<String> = Vec::new();
        let mut delete: Vec<Key> = Vec::new();
        for (node, pods) in &per_node {
            if pods.live.is_empty() {
                if pods.terminating.is_empty() {
                    create_on.push(node.clone());
                }
                continue;
            }
            let (new, old): (Vec<_>, Vec<_>) = pods.live.iter().partition(|(_, p)| is_new(p));
            // More than one pod of the current template: keep the oldest.
            delete.extend(new.iter().skip(1).map(|(k, _)| k.clone()));
            if !rolling || old.is_empty() {
                continue;
            }
            if max_surge > 0 {
                match new.first() {
                    None if surging < max_surge => {
                        surging += 1;
                        create_on.push(node.clone());
                    }
                    Some((_, p)) if crate::proxy::pod_ready(p) => {
                        delete.extend(old.iter().map(|(k, _)| k.clone()));
                    }
                    _ => {}
                }
                continue;
            }
            let old_available = old.iter().any(|(_, p)| crate::proxy::pod_ready(p));
            if !old_available {
                // Not available anyway: replacing it costs nothing.
                delete.extend(old.iter().map(|(k, _)| k.clone()));
            } else if unavailable < max_unavailable {
                unavailable += 1;
                delete.extend(old.iter().map(|(k, _)| k.clone()));
            }
        }
        for k in delete {
            self.delete(&k);
        }
        let owner = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "name": key.name,
                           "uid": uid, "controller": true, "blockOwnerDeletion": true});
        for node in create_on {
            let mut pod = pod_from_template(&key.name, &template, owner.clone());
            set_default(&mut pod, "/metadata/labels", json!({}));
            pod["metadata"]["labels"]["controller-revision-hash"] = json!(hash);
            pod["metadata"]["labels"]["pod-template-generation"] = json!(generation);
            pod["spec"]["nodeName"] = json!(node);
            if self.create(&pod_res, &key.namespace, pod, false).is_err() {
                // Refused (a mutating webhook that cannot be called): tried again later.
                self.schedule(CREATE_RETRY, crate::timers::Timer::Resync(key.clone()));
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn cluster() -> State {
        let mut st = State::new("c", String::new());
        st.timing.pod_ready = Duration::from_millis(50);
        st.timing.pod_termination = Duration::from_millis(50);
        st.add_node();
        let ns = st.resource("", "v1", "namespaces").unwrap();
        st.create(
            &ns,
            "",
            json!({"metadata": {"name": "istio-system"}}),
            false,
        )
        .unwrap();
        st
    }

    fn daemonset(image: &str, strategy: Value) -> Value {
        json!({"metadata": {"name": "ztunnel", "namespace": "istio-system"}, "spec": {
            "updateStrategy": strategy,
            "selector": {"matchLabels": {"app": "ztunnel"}},
            "template": {"metadata": {"labels": {"app": "ztunnel"}}, "spec": {
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "containers": [{"name": "istio-proxy", "image": image}]}}}})
    }

    fn key() -> Key {
        Key {
            group: "apps".into(),
            plural: "daemonsets".into(),
            namespace: "istio-system".into(),
            name: "ztunnel".into(),
        }
    }

    fn write(st: &mut State, ds: Value) {
        let res = st.resource("apps", "v1", "daemonsets").unwrap();
        if st.objects.contains_key(&key()) {
            let mut ds = ds;
            ds["metadata"]["uid"] = st.objects[&key()]["metadata"]["uid"].clone();
            st.update(&res, &key(), ds, crate::store::WriteMode::Main, false)
                .unwrap();
        } else {
            st.create(&res, "istio-system", ds, false).unwrap();
        }
    }

    fn status(st: &State, field: &str) -> i64 {
        st.objects[&key()]["status"][field].as_i64().unwrap_or(0)
    }

    fn pods(st: &State) -> Vec<Value> {
        st.objects
            .iter()
            .filter(|(k, _)| k.plural == "pods")
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Runs the timers until nothing is due for a while.
    fn settle(st: &mut State) {
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(15));
            st.tick(Instant::now());
        }
    }

    #[test]
    fn one_pod_per_node_ready_after_the_probe_with_the_status_helm_and_kubectl_read() {
        let mut st = cluster();
        write(&mut st, daemonset("ztunnel:1.28.1", json!(null)));
        let ds = &st.objects[&key()];
        assert_eq!(
            ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
            1
        );
        assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"], 0);
        let ps = pods(&st);
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0]["spec"]["nodeName"], "c-control-plane");
        assert!(meta_str(&ps[0], "name").starts_with("ztunnel-"));
        assert!(ps[0]["metadata"]["labels"]["controller-revision-hash"].is_string());
        assert_eq!(ps[0]["metadata"]["labels"]["pod-template-generation"], "1");
        assert_eq!(status(&st, "desiredNumberScheduled"), 1);
        assert_eq!(status(&st, "currentNumberScheduled"), 1);
        assert_eq!(status(&st, "updatedNumberScheduled"), 1);
        assert_eq!(status(&st, "numberReady"), 0);
        assert_eq!(status(&st, "numberUnavailable"), 1);
        settle(&mut st);
        assert_eq!(status(&st, "numberReady"), 1);
        assert_eq!(status(&st, "numberAvailable"), 1);
        assert!(
            st.objects[&key()]["status"]
                .get("numberUnavailable")
                .is_none()
        );
        assert_eq!(status(&st, "observedGeneration"), 1);
    }

    #[test]
    fn a_node_selector_no_node_matches_schedules_nothing() {
        let mut st = cluster();
        let mut ds = daemonset("ztunnel:1.28.1", json!(null));
        ds["spec"]["template"]["spec"]["nodeSelector"] = json!({"kubernetes.io/os": "windows"});
        write(&mut st, ds);
        assert!(pods(&st).is_empty());
        assert_eq!(status(&st, "desiredNumberScheduled"), 0);
    }

    #[test]
    fn max_unavailable_replaces_the_old_pod_after_it_is_gone() {
        let mut st = cluster();
        write(&mut st, daemonset("a:1", json!(null)));
        settle(&mut st);
        write(&mut st, daemonset("a:2", json!(null)));
        // The old pod terminates first; no new pod while it is there.
        let ps = pods(&st);
        assert_eq!(ps.len(), 1);
        assert!(!meta_str(&ps[0], "deletionTimestamp").is_empty());
        assert_eq!(status(&st, "updatedNumberScheduled"), 0);
        assert_eq!(
            st.objects[&key()]["metadata"]["annotations"][TEMPLATE_GENERATION],
            "2"
        );
        settle(&mut st);
        let ps = pods(&st);
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0]["spec"]["containers"][0]["image"], "a:2");
        assert_eq!(ps[0]["metadata"]["labels"]["pod-template-generation"], "2");
        assert_eq!(status(&st, "updatedNumberScheduled"), 1);
        assert_eq!(status(&st, "numberReady"), 1);
        assert_eq!(status(&st, "observedGeneration"), 2);
    }

    #[test]
    fn max_surge_starts_the_new_pod_next_to_the_old_one() {
        let mut st = cluster();
        let surge =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
        write(&mut st, daemonset("a:1", surge.clone()));
        settle(&mut st);
        write(&mut st, daemonset("a:2", surge));
        let ps = pods(&st);
        assert_eq!(ps.len(), 2, "old and new side by side");
        assert!(
            ps.iter()
                .all(|p| meta_str(p, "deletionTimestamp").is_empty())
        );
        // The oldest pod is what the status counts: not updated yet, still ready.
        assert_eq!(status(&st, "updatedNumberScheduled"), 0);
        assert_eq!(status(&st, "numberReady"), 1);
        settle(&mut st);
        let ps = pods(&st);
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0]["spec"]["containers"][0]["image"], "a:2");
        assert_eq!(status(&st, "updatedNumberScheduled"), 1);
        assert_eq!(status(&st, "numberAvailable"), 1);
    }

    #[test]
    fn on_delete_keeps_the_old_pod_until_it_is_deleted() {
        let mut st = cluster();
        let on_delete = json!({"type": "OnDelete"});
        write(&mut st, daemonset("a:1", on_delete.clone()));
        settle(&mut st);
        write(&mut st, daemonset("a:2", on_delete));
        settle(&mut st);
        let ps = pods(&st);
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0]["spec"]["containers"][0]["image"], "a:1");
        let pod_key = Key {
            group: String::new(),
            plural: "pods".into(),
            namespace: "istio-system".into(),
            name: meta_str(&ps[0], "name").into(),
        };
        st.delete(&pod_key);
        settle(&mut st);
        let ps = pods(&st);
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0]["spec"]["containers"][0]["image"], "a:2");
    }

    #[test]
    fn deleting_the_daemonset_deletes_its_pods() {
        let mut st = cluster();
        write(&mut st, daemonset("a:1", json!(null)));
        st.delete(&key());
        settle(&mut st);
        assert!(pods(&st).is_empty());
    }
}
