//! Observe once, write only what differs. A run reads each cluster's mesh namespace in one
//! `kubectl get` (its Secrets, ServiceAccounts, Deployments and ConfigMaps, and the
//! Namespaces; Helm's own release records left out) the first time a component asks for one
//! of those, and answers later reads from that snapshot. What this run writes is read from the
//! cluster again: an object it applied or deleted, and after a helm install, upgrade or
//! uninstall every kind but Secrets (the charts render no Secret; Helm's release records are
//! not in the snapshot). A retry forgets the snapshot, since the failed call may have changed
//! the cluster.
//!
//! Applies that need no answer may also wait here (`Live::apply_later`), to go out together
//! in one `kubectl apply` before the next call that reads or writes the cluster: the mesh
//! namespace and `cacerts` reach a fresh cluster in one process.

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde_json::Value;

use crate::tools::step::{Step, Tool};
use crate::trust::sensitive::Sensitive;

/// The kinds the snapshot holds, as `kubectl get` names them.
const KINDS: [&str; 5] = [
    "namespaces",
    "secrets",
    "serviceaccounts",
    "deployments",
    "configmaps",
];

/// Helm's release records (`owner=helm`) are large and never read through the snapshot.
pub const SELECTOR: &str = "owner!=helm";

/// One cluster's snapshot for a run.
#[derive(Debug, Default)]
pub struct Cache {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The objects read, once read.
    objects: Option<Vec<Value>>,
    /// The namespace it was read in.
    namespace: String,
    /// Objects written since, by (kind, name), with the labels they were written with: read
    /// from the cluster.
    written: BTreeSet<(String, String)>,
    /// The labels of what was written (a list by selector that none of them can match is
    /// still answered from the snapshot).
    written_labels: Vec<(String, serde_json::Map<String, Value>)>,
    /// Kinds that may have changed since (a helm write): read from the cluster.
    changed: BTreeSet<String>,
    /// Manifests waiting to be applied together.
    pending: Vec<Sensitive<String>>,
}

/// `secret`, `secrets`, `Secret` → `secret`; `None` for kinds the snapshot does not hold.
fn covered(kind: &str) -> Option<String> {
    let kind = kind.to_ascii_lowercase();
    let singular = kind.strip_suffix('s').unwrap_or(&kind).to_string();
    KINDS
        .iter()
        .any(|k| k.strip_suffix('s') == Some(singular.as_str()))
        .then_some(singular)
}

/// Equality requirements of a label selector (`a=b,c=d`); `None` for anything else.
fn equalities(selector: &str) -> Option<Vec<(&str, &str)>> {
    selector
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| {
            let (k, v) = r.split_once('=')?;
            (!k.ends_with('!') && !v.starts_with('=')).then_some((k.trim(), v.trim()))
        })
        .collect()
}

fn kind_of(object: &Value) -> String {
    object["kind"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// What a step writes: `Some(objects)` for a kubectl write whose objects are known, `None`
/// for one whose are not (everything is read again), and for helm writes the kinds.
enum Writes {
    Nothing,
    Objects(Vec<(String, String, serde_json::Map<String, Value>)>),
    HelmRelease,
    Unknown,
}

fn writes_of(step: &Step) -> Writes {
    let verb = step.args.first().map(String::as_str).unwrap_or_default();
    match step.tool {
        Tool::Helm => match verb {
            "upgrade" | "install" | "uninstall" | "rollback" => Writes::HelmRelease,
            _ => Writes::Nothing,
        },
        Tool::Kubectl => match verb {
            "apply" | "create" | "replace" => {
                let Some(stdin) = &step.stdin else {
                    return Writes::Unknown;
                };
                let text = String::from_utf8_lossy(stdin.expose());
                let mut objects = Vec::new();
                for document in serde_yaml::Deserializer::from_str(&text) {
                    let Ok(value) =
                        <serde_yaml::Value as serde::Deserialize>::deserialize(document)
                    else {
                        return Writes::Unknown;
                    };
                    let value: Value = match serde_json::to_value(value) {
                        Ok(v) => v,
                        Err(_) => return Writes::Unknown,
                    };
                    if value.is_null() {
                        continue;
                    }
                    let labels = value["metadata"]["labels"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default();
                    objects.push((kind_of(&value), name_of(&value).to_string(), labels));
                }
                Writes::Objects(objects)
            }
            "delete" => match (
                step.args.get(1),
                covered(step.args.get(1).map_or("", |s| s)),
            ) {
                (Some(_), Some(kind)) => Writes::Objects(
                    step.args[2..]
                        .iter()
                        .take_while(|a| !a.starts_with('-'))
                        .map(|name| (kind.clone(), name.clone(), Default::default()))
                        .collect(),
                ),
                (Some(kind), None) if kind != "--raw" && !kind.contains('/') => Writes::Nothing,
                _ => Writes::Unknown,
            },
            "rollout" | "label" | "annotate" | "patch" => Writes::Unknown,
            _ => Writes::Nothing,
        },
    }
}

impl Cache {
    /// The `kubectl get` that reads the snapshot of `namespace`.
    pub fn kinds() -> String {
        KINDS.join(",")
    }

    /// Whether a read of `kind` (named `name`, or those `selector` picks) in `namespace` can
    /// be answered from the snapshot (once loaded), given what this run wrote: the kind as the
    /// snapshot names it when it can. Only equality selectors (`a=b,c=d`) are answered.
    pub(crate) fn answers(
        &self,
        kind: &str,
        name: Option<&str>,
        selector: Option<&str>,
        namespace: Option<&str>,
        mesh_ns: &str,
    ) -> Option<String> {
        let selector = match selector {
            Some(s) => Some(equalities(s)?),
            None => None,
        };
        let selector = selector.as_deref();
        let kind = covered(kind)?;
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let in_scope = kind == "namespace" || namespace == Some(mesh_ns);
        let fresh = !state.changed.contains(&kind)
            && match (name, selector) {
                (Some(name), _) => !state.written.contains(&(kind.clone(), name.to_string())),
                (None, Some(selector)) => !state.written_labels.iter().any(|(k, labels)| {
                    *k == kind
                        && selector
                            .iter()
                            .all(|(l, v)| labels.get(*l).and_then(Value::as_str) == Some(*v))
                }),
                (None, None) => !state.written.iter().any(|(k, _)| *k == kind),
            };
        (in_scope && fresh).then_some(kind)
    }

    /// Whether the snapshot, read before this run changed anything with helm, holds no
    /// object of `kind` named `name`.
    pub(crate) fn absent_at_start(&self, kind: &str, name: &str) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.changed.is_empty()
            && state.objects.as_ref().is_some_and(|objects| {
                !objects
                    .iter()
                    .any(|o| kind_of(o) == kind && name_of(o) == name)
            })
    }

    /// Whether the snapshot of `namespace` was read.
    pub(crate) fn loaded(&self, namespace: &str) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.objects.is_some() && state.namespace == namespace
    }

    /// Keeps what the one `kubectl get` of `namespace` read.
    pub(crate) fn store(&self, namespace: &str, objects: Vec<Value>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.objects = Some(objects);
        state.namespace = namespace.to_string();
        state.written.clear();
        state.written_labels.clear();
        state.changed.clear();
    }

    /// The object of `kind` named `name`, from the snapshot.
    pub(crate) fn find(&self, kind: &str, name: &str) -> Option<Value> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .objects
            .iter()
            .flatten()
            .find(|o| kind_of(o) == kind && name_of(o) == name)
            .cloned()
    }

    /// The objects of `kind` that `selector` (equalities only; `None` for any other) picks,
    /// from the snapshot.
    pub(crate) fn select(&self, kind: &str, selector: Option<&str>) -> Option<Vec<Value>> {
        let selector = match selector {
            Some(s) => equalities(s)?,
            None => Vec::new(),
        };
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let picked = state
            .objects
            .iter()
            .flatten()
            .filter(|o| kind_of(o) == kind)
            .filter(|o| {
                selector
                    .iter()
                    .all(|(k, v)| o["metadata"]["labels"][*k].as_str() == Some(*v))
            })
            .cloned()
            .collect();
        Some(picked)
    }

    /// Notes what `step` wrote (or may have written, also when it failed).
    pub(crate) fn wrote(&self, step: &Step) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match writes_of(step) {
            Writes::Nothing => {}
            Writes::Objects(objects) => {
                for (kind, name, labels) in objects {
                    // What it carried before counts too: an apply keeps others' labels.
                    let before = state
                        .objects
                        .iter()
                        .flatten()
                        .find(|o| kind_of(o) == kind && name_of(o) == name)
                        .and_then(|o| o["metadata"]["labels"].as_object().cloned());
                    state
                        .written_labels
                        .extend(before.map(|b| (kind.clone(), b)));
                    state.written_labels.push((kind.clone(), labels));
                    state.written.insert((kind, name));
                }
            }
            Writes::HelmRelease => {
                let kinds = KINDS
                    .iter()
                    .filter(|k| **k != "secrets")
                    .filter_map(|k| covered(k));
                state.changed.extend(kinds);
            }
            Writes::Unknown => state.objects = None,
        }
    }

    /// Forgets the snapshot (a retry: the failed call may have changed the cluster).
    pub fn forget(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).objects = None;
    }

    pub(crate) fn take_pending(&self) -> Vec<Sensitive<String>> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).pending)
    }

    pub(crate) fn put_back(&self, mut pending: Vec<Sensitive<String>>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        pending.append(&mut state.pending);
        state.pending = pending;
    }

    pub(crate) fn defer(&self, manifest: Sensitive<String>) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .push(manifest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(tool: Tool, args: &[&str], stdin: Option<&str>) -> Step {
        Step {
            cluster: "c".into(),
            tool,
            args: args.iter().map(|s| s.to_string()).collect(),
            stdin: stdin.map(|s| Sensitive::new(s.as_bytes().to_vec())),
        }
    }

    fn loaded() -> Cache {
        let cache = Cache::default();
        cache.store(
            "istio-system",
            vec![
                serde_json::json!({"kind": "Namespace", "metadata": {"name": "istio-system"}}),
                serde_json::json!({"kind": "Secret", "metadata": {"name": "cacerts", "labels": {"a": "1"}}}),
                serde_json::json!({"kind": "Secret", "metadata": {"name": "other"}}),
            ],
        );
        cache
    }

    #[test]
    fn reads_of_the_mesh_namespace_come_from_the_snapshot() {
        let cache = loaded();
        assert_eq!(
            cache.answers(
                "secret",
                Some("cacerts"),
                None,
                Some("istio-system"),
                "istio-system"
            ),
            Some("secret".into())
        );
        assert_eq!(
            cache.answers("pods", None, None, Some("istio-system"), "istio-system"),
            None
        );
        assert_eq!(
            cache.answers(
                "secret",
                Some("x"),
                None,
                Some("kube-system"),
                "istio-system"
            ),
            None
        );
        assert_eq!(cache.select("secret", Some("a=1")).unwrap().len(), 1);
        assert!(cache.select("secret", Some("owner!=helm")).is_none());
        assert!(equalities("owner!=helm").is_none());
        assert_eq!(equalities("a=b,c=d"), Some(vec![("a", "b"), ("c", "d")]));
    }

    #[test]
    fn what_the_run_wrote_is_read_again() {
        let cache = loaded();
        cache.wrote(&step(
            Tool::Kubectl,
            &["apply", "--filename", "-"],
            Some("apiVersion: v1\nkind: Secret\nmetadata:\n  name: cacerts\n---\nkind: Namespace\nmetadata:\n  name: istio-system\n"),
        ));
        assert_eq!(
            cache.answers(
                "secret",
                Some("cacerts"),
                None,
                Some("istio-system"),
                "istio-system"
            ),
            None
        );
        assert_eq!(
            cache.answers(
                "namespace",
                Some("istio-system"),
                None,
                None,
                "istio-system"
            ),
            None
        );
        // A list of a kind with a written object is read again; other objects are not.
        assert_eq!(
            cache.answers("secrets", None, None, Some("istio-system"), "istio-system"),
            None
        );
        // ... but not by a selector none of the written objects (then or now) matches.
        assert!(
            cache
                .answers(
                    "secrets",
                    None,
                    Some("b=2"),
                    Some("istio-system"),
                    "istio-system"
                )
                .is_some()
        );
        assert!(
            cache
                .answers(
                    "secrets",
                    None,
                    Some("a=1"),
                    Some("istio-system"),
                    "istio-system"
                )
                .is_none()
        );
        assert!(
            cache
                .answers(
                    "secret",
                    Some("other"),
                    None,
                    Some("istio-system"),
                    "istio-system"
                )
                .is_some()
        );
        // A helm write changes every kind but Secrets.
        cache.wrote(&step(Tool::Helm, &["upgrade", "--install", "istiod"], None));
        assert!(
            cache
                .answers(
                    "deployment",
                    Some("istiod"),
                    None,
                    Some("istio-system"),
                    "istio-system"
                )
                .is_none()
        );
        assert!(
            cache
                .answers(
                    "secret",
                    Some("other"),
                    None,
                    Some("istio-system"),
                    "istio-system"
                )
                .is_some()
        );
        // A write meshup cannot read drops the snapshot.
        cache.wrote(&step(
            Tool::Kubectl,
            &["rollout", "restart", "deployment/istiod"],
            None,
        ));
        assert!(!cache.loaded("istio-system"));
    }

    #[test]
    fn deletes_name_their_objects() {
        let cache = loaded();
        cache.wrote(&step(
            Tool::Kubectl,
            &["delete", "secrets", "other", "--namespace", "istio-system"],
            None,
        ));
        assert!(
            cache
                .answers(
                    "secret",
                    Some("other"),
                    None,
                    Some("istio-system"),
                    "istio-system"
                )
                .is_none()
        );
        assert!(
            cache
                .answers(
                    "secret",
                    Some("cacerts"),
                    None,
                    Some("istio-system"),
                    "istio-system"
                )
                .is_some()
        );
    }
}
