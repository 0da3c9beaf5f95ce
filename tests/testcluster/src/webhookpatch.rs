//! istiod's injection webhook cert patcher (istio 1.30 pkg/webhooks/webhookpatch.go
//! `WebhookCertPatcher`): every Ready istiod puts its CA bundle into `clientConfig.caBundle`
//! of the injector webhooks of its revision, in its own cluster (pilot/pkg/bootstrap/
//! sidecarinjector.go `initSidecarInjector`, always) and, with `EXTERNAL_ISTIOD=true`, in each
//! remote cluster that synced and whose system namespace names it in
//! `topology.istio.io/controlPlaneClusters` (pilot/pkg/serviceregistry/kube/controller/
//! multicluster.go `initializeCluster`, `checkShouldLead`).
//!
//! The patcher is a loop that looks every informer lag: a caBundle taken away is put back on
//! the next pass, as the real patcher's informer and retrying queue do.

use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::proxy::{container_env, loopback_port};
use crate::server::Shared;
use crate::store::{Key, State, WriteMode};

/// The injector webhooks' name suffix (istio 1.30 pilot/pkg/bootstrap/sidecarinjector.go
/// `webhookName`).
pub const WEBHOOK_NAME: &str = "sidecar-injector.istio.io";

/// The remote namespace annotation naming the clusters whose istiod controls it.
pub const CONTROL_PLANE_CLUSTERS: &str = "topology.istio.io/controlPlaneClusters";

/// What one Ready istiod patches with: its revision, its CA bundle (PEM) and where.
#[derive(Debug, Clone)]
pub struct Patcher {
    pub revision: String,
    pub cluster_id: String,
    pub namespace: String,
    pub bundle: String,
    /// Ports of the synced remote clusters it may lead (`EXTERNAL_ISTIOD=true` only).
    pub remotes: Vec<u16>,
}

/// `patchMutatingWebhookConfig`: the configuration with the bundle put into every webhook
/// whose name ends with [`WEBHOOK_NAME`], or `None` when it is not of this revision
/// (`istio.io/rev`) or nothing differs.
pub fn patched(config: &Value, revision: &str, bundle: &str) -> Option<Value> {
    if config
        .pointer("/metadata/labels/istio.io~1rev")
        .and_then(Value::as_str)
        != Some(revision)
    {
        return None;
    }
    let encoded = STANDARD.encode(bundle);
    let mut out = config.clone();
    let mut changed = false;
    for hook in out["webhooks"].as_array_mut().into_iter().flatten() {
        let name = hook["name"].as_str().unwrap_or_default();
        if name.ends_with(WEBHOOK_NAME) && hook["clientConfig"]["caBundle"] != json!(encoded) {
            hook["clientConfig"]["caBundle"] = json!(encoded);
            changed = true;
        }
    }
    changed.then_some(out)
}

/// `checkShouldLead`: the remote's namespace of the same name carries the annotation listing
/// `cluster_id` or `*`.
pub fn leads(namespace: Option<&Value>, cluster_id: &str) -> bool {
    namespace
        .and_then(|ns| ns.pointer("/metadata/annotations"))
        .and_then(|a| a.get(CONTROL_PLANE_CLUSTERS))
        .and_then(Value::as_str)
        .is_some_and(|v| v.split(',').any(|c| c == "*" || c == cluster_id))
}

/// The patchers of the Ready istiods of a cluster.
pub fn patchers(st: &State) -> Vec<Patcher> {
    let mut out = Vec::new();
    for (key, istiod) in &st.istiods {
        let Some(pod) = st.objects.get(key) else {
            continue;
        };
        let external = container_env(pod, "EXTERNAL_ISTIOD")
            .is_some_and(|v| matches!(v, "true" | "True" | "TRUE" | "1" | "t" | "T"));
        let remotes = if external {
            istiod
                .clusters
                .iter()
                .filter(|r| r.synced)
                .filter_map(|r| loopback_port(&r.peer.server).map(|(_, p)| p))
                .collect()
        } else {
            Vec::new()
        };
        out.push(Patcher {
            revision: container_env(pod, "REVISION")
                .map(String::from)
                .unwrap_or_else(|| istiod.revision.clone()),
            cluster_id: istiod.own.clone(),
            namespace: key.namespace.clone(),
            bundle: istiod_root(st, key),
            remotes,
        });
    }
    out
}

/// The root that signs the serving certificate of istiod pod `pod` (its webhooks' too): the
/// `cacerts` root it loaded when it started (a later `cacerts` is not read before it
/// restarts), else (istiod's own self-signed root, not emulated) the cluster's CA stands in.
pub fn istiod_root(st: &State, pod: &Key) -> String {
    st.istiod_roots
        .get(pod)
        .cloned()
        .flatten()
        .unwrap_or_else(|| st.ca_pem.clone())
}

/// Whether a webhook's `clientConfig.caBundle` holds `root`, so that the API server's
/// client verifies a server certificate `root` signed.
pub fn bundle_trusts(hook: &Value, root: &str) -> bool {
    let squash = |s: &str| s.split_whitespace().collect::<String>();
    let bundle = hook
        .pointer("/clientConfig/caBundle")
        .and_then(Value::as_str)
        .and_then(|b| STANDARD.decode(b).ok())
        .map(|b| squash(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    let root = squash(root);
    !root.is_empty() && bundle.contains(&root)
}

/// Patches the injector configurations of one cluster for `p`.
pub fn patch_cluster(st: &mut State, p: &Patcher) {
    let Some(res) = st.resource(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
    ) else {
        return;
    };
    let updates: Vec<(Key, Value)> = st
        .objects
        .iter()
        .filter(|(k, _)| k.group == res.group && k.plural == res.plural)
        .filter_map(|(k, v)| patched(v, &p.revision, &p.bundle).map(|n| (k.clone(), n)))
        .collect();
    for (key, obj) in updates {
        let _ = st.update(&res, &key, obj, WriteMode::Main, false);
    }
}

fn namespace<'a>(st: &'a State, name: &str) -> Option<&'a Value> {
    st.objects.get(&Key {
        group: String::new(),
        plural: "namespaces".into(),
        namespace: String::new(),
        name: name.into(),
    })
}

/// Runs the patchers of a cluster's istiods until it is dropped.
pub async fn run(shared: Weak<Shared>) {
    loop {
        let lag = shared
            .upgrade()
            .map(|s| s.informer_lag_ms.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap_or(100)
            .max(20);
        tokio::time::sleep(Duration::from_millis(lag)).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let list = {
            let mut st = shared.state.lock().unwrap();
            let list = patchers(&st);
            for p in &list {
                patch_cluster(&mut st, p);
            }
            st.take_pending()
        };
        crate::server::spawn_pending(&shared, list);
        let list = patchers(&shared.state.lock().unwrap());
        for p in &list {
            for port in &p.remotes {
                let Some(remote) = crate::cluster_by_port(*port) else {
                    continue;
                };
                if Arc::ptr_eq(&remote, &shared) {
                    continue;
                }
                let pending = {
                    let mut st = remote.state.lock().unwrap();
                    if !leads(namespace(&st, &p.namespace), &p.cluster_id) {
                        continue;
                    }
                    patch_cluster(&mut st, p);
                    st.take_pending()
                };
                crate::server::spawn_pending(&remote, pending);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rev: &str) -> Value {
        json!({
            "metadata": {"name": "istio-sidecar-injector", "labels": {"istio.io/rev": rev}},
            "webhooks": [
                {"name": "rev.namespace.sidecar-injector.istio.io", "clientConfig": {}},
                {"name": "other.example.com", "clientConfig": {}},
            ]
        })
    }

    #[test]
    fn the_injector_webhooks_of_the_revision_get_the_bundle_once() {
        let out = patched(&config("default"), "default", "PEM").expect("patched");
        assert_eq!(
            out["webhooks"][0]["clientConfig"]["caBundle"],
            STANDARD.encode("PEM")
        );
        assert_eq!(out["webhooks"][1]["clientConfig"].get("caBundle"), None);
        assert_eq!(patched(&out, "default", "PEM"), None);
    }

    #[test]
    fn another_revision_is_left_alone() {
        assert_eq!(patched(&config("canary"), "default", "PEM"), None);
        let mut none = config("default");
        none["metadata"]["labels"] = json!({});
        assert_eq!(patched(&none, "default", "PEM"), None);
    }

    #[test]
    fn istiod_leads_a_remote_whose_namespace_names_it_or_any() {
        let ns = |v: &str| json!({"metadata": {"annotations": {CONTROL_PLANE_CLUSTERS: v}}});
        assert!(leads(Some(&ns("c0,c1")), "c1"));
        assert!(leads(Some(&ns("*")), "c1"));
        assert!(!leads(Some(&ns("c2")), "c1"));
        assert!(!leads(Some(&json!({"metadata": {}})), "c1"));
        assert!(!leads(None, "c1"));
    }

    fn cluster(env: Value) -> (State, Key) {
        let mut st = State::new("c1", "CLUSTER-CA".into());
        let res = |st: &State, g: &str, plural: &str| st.resource(g, "v1", plural).unwrap();
        let ns = res(&st, "", "namespaces");
        st.create(
            &ns,
            "",
            json!({"metadata": {"name": "istio-system"}}),
            false,
        )
        .unwrap();
        let pod = json!({
            "metadata": {"name": "istiod-1", "labels": {"app": "istiod"}},
            "spec": {"containers": [{"name": "discovery", "image": "docker.io/istio/pilot:1.30.0", "env": env}]},
        });
        let pods = res(&st, "", "pods");
        let stored = st.create(&pods, "istio-system", pod, false).unwrap();
        let key = Key::new(&pods, "istio-system", "istiod-1");
        st.istiods.insert(
            key.clone(),
            crate::istiod::Istiod::new(&stored, Duration::from_secs(2)),
        );
        let mwc = res(
            &st,
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
        );
        let mut canary = config("canary");
        canary["metadata"]["name"] = json!("istio-sidecar-injector-canary");
        for c in [config("default"), canary] {
            st.create(&mwc, "", c, false).unwrap();
        }
        (st, key)
    }

    fn bundle(st: &State, name: &str) -> Value {
        st.objects
            .iter()
            .find(|(k, _)| k.plural == "mutatingwebhookconfigurations" && k.name == name)
            .map(|(_, v)| v["webhooks"][0]["clientConfig"]["caBundle"].clone())
            .unwrap()
    }

    #[test]
    fn istiod_patches_its_own_revisions_injector_and_puts_a_removed_bundle_back() {
        let (mut st, _) = cluster(json!([{"name": "REVISION", "value": "default"}]));
        let list = patchers(&st);
        assert_eq!(list.len(), 1);
        assert!(list[0].remotes.is_empty(), "no EXTERNAL_ISTIOD: no remotes");
        patch_cluster(&mut st, &list[0]);
        let want = json!(STANDARD.encode("CLUSTER-CA"));
        assert_eq!(bundle(&st, "istio-sidecar-injector"), want);
        assert_eq!(bundle(&st, "istio-sidecar-injector-canary"), Value::Null);
        let key = st
            .objects
            .keys()
            .find(|k| k.name == "istio-sidecar-injector")
            .unwrap()
            .clone();
        let mut removed = st.objects[&key].clone();
        removed["webhooks"][0]["clientConfig"] = json!({});
        let res = st
            .resource(
                "admissionregistration.k8s.io",
                "v1",
                "mutatingwebhookconfigurations",
            )
            .unwrap();
        st.update(&res, &key, removed, WriteMode::Main, false)
            .unwrap();
        assert_eq!(bundle(&st, "istio-sidecar-injector"), Value::Null);
        let again = patchers(&st);
        patch_cluster(&mut st, &again[0]);
        assert_eq!(bundle(&st, "istio-sidecar-injector"), want);
    }
}
