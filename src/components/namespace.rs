//! The mesh namespace, labelled `topology.istio.io/network` with the cluster's network before
//! istiod starts (istiod reads the label at start). Removing it removes what is left in it:
//! `cacerts`, the reader token secret.

use serde_json::json;

use super::{Action, ClusterCtx, Component, ScriptCx};
use crate::components::handoff::{Handoff, TRUST_COMMAND};
use crate::observe::drift::{self, FieldDiff, ObjectDiff, Seg};
use crate::tools::kubectl;
use crate::tools::live;
use crate::tools::runner::StepError;
use crate::trust::sensitive::Sensitive;

/// The label istiod reads a cluster's network from.
pub const NETWORK_LABEL: &str = "topology.istio.io/network";

/// The annotation that tells a remote cluster's proxies which cluster runs their istiod.
pub const CONTROL_PLANE_ANNOTATION: &str = "topology.istio.io/controlPlaneClusters";

/// The namespace istiod runs in.
pub struct Namespace {
    pub name: String,
    /// The cluster's network, when it has one.
    pub network: Option<String>,
    /// Annotations it must carry (a remote's `topology.istio.io/controlPlaneClusters`).
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl Namespace {
    /// The namespace as YAML for `kubectl apply`.
    pub fn manifest(&self) -> String {
        let mut namespace = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": self.name },
        });
        if let Some(network) = &self.network {
            namespace["metadata"]["labels"] = json!({ NETWORK_LABEL: network });
        }
        if !self.annotations.is_empty() {
            namespace["metadata"]["annotations"] = json!(self.annotations);
        }
        serde_yaml::to_string(&namespace).expect("plain JSON is valid YAML")
    }

    /// Whether the live namespace is as wanted.
    fn is_right(&self, live: &live::Namespace) -> bool {
        self.network
            .as_ref()
            .is_none_or(|network| live.metadata.labels.get(NETWORK_LABEL) == Some(network))
            && self
                .annotations
                .iter()
                .all(|(k, v)| live.metadata.annotations.get(k) == Some(v))
    }
}

impl Component for Namespace {
    fn handoff(&self) -> Vec<Handoff> {
        vec![Handoff::Kept {
            what: format!("namespace `{}` with its network label", self.name),
            by: TRUST_COMMAND,
        }]
    }

    fn label(&self, _: Action) -> &'static str {
        "namespace"
    }

    fn converge(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let mut found: Option<live::Namespace> = cx.live.get("namespace", &self.name, None)?;
        if found
            .as_ref()
            .is_some_and(|ns| !ns.metadata.deletion_timestamp.is_empty())
        {
            // A namespace being deleted refuses new content until it is gone (kube-apiserver's
            // NamespaceLifecycle admission): wait for it, then create it anew.
            cx.reporter.info(&format!(
                "[{}] namespace `{}` is still terminating (a recent uninstall); waiting for it to go",
                cx.cluster.name, self.name
            ));
            cx.live.run(&kubectl::wait(
                cx.target(),
                "delete",
                &format!("namespace/{}", self.name),
                &self.name,
                cx.timeout(),
            ))?;
            found = None;
        }
        if found.as_ref().is_some_and(|ns| self.is_right(ns)) {
            return Ok("unchanged".into());
        }
        // Goes out with `cacerts`, in one apply before the next call.
        cx.live.apply_later(Sensitive::new(self.manifest()))?;
        Ok(if found.is_none() {
            "created"
        } else {
            "labelled"
        }
        .into())
    }

    fn diff(&self, cx: &mut ClusterCtx) -> Result<Vec<ObjectDiff>, StepError> {
        let wanted: serde_json::Value =
            serde_yaml::from_str(&self.manifest()).expect("the manifest is YAML");
        let found: Option<serde_json::Value> = cx.live.get("namespace", &self.name, None)?;
        let Some(live) = found else {
            return Ok(vec![ObjectDiff::create("namespace", &wanted, false)]);
        };
        let mut fields = Vec::new();
        for (map, key, value) in self
            .network
            .iter()
            .map(|n| ("labels", NETWORK_LABEL, n))
            .chain(
                self.annotations
                    .iter()
                    .map(|(k, v)| ("annotations", k.as_str(), v)),
            )
        {
            let have = live["metadata"][map].get(key).cloned();
            if have.as_ref().and_then(|v| v.as_str()) != Some(value.as_str()) {
                let at = vec![
                    Seg::Field("metadata".into()),
                    Seg::Field(map.into()),
                    Seg::Field(key.into()),
                ];
                fields.push(FieldDiff {
                    path: drift::path_text(&at),
                    at,
                    live: have,
                    wanted: Some(json!(value)),
                    managers: Vec::new(),
                    drift: false,
                });
            }
        }
        let mut out = Vec::new();
        if !fields.is_empty() {
            out.push(ObjectDiff::update("namespace", &live, fields));
        }
        if live
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null())
        {
            let mut gone = ObjectDiff::create("namespace", &wanted, false);
            gone.note = Some(
                "it is terminating (a recent uninstall): install waits for it to go, then creates it anew"
                    .into(),
            );
            out = vec![gone];
        }
        Ok(out)
    }

    fn remove(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let step = kubectl::delete(
            cx.target(),
            "namespace",
            std::slice::from_ref(&self.name),
            None,
            cx.timeout(),
        );
        let output = cx.live.run(&step)?;
        Ok(if output.stdout.trim().is_empty() {
            "absent"
        } else {
            "deleted"
        }
        .into())
    }

    fn script(&self, cx: &ScriptCx, action: Action) -> String {
        match action {
            Action::Install => format!(
                "{} <<'EOF'\n{}EOF\n",
                kubectl::apply(&cx.target, Sensitive::default(), cx.timeout).command_line(),
                self.manifest()
            ),
            Action::Remove => format!(
                "{}\n",
                kubectl::delete(
                    &cx.target,
                    "namespace",
                    std::slice::from_ref(&self.name),
                    None,
                    cx.timeout
                )
                .command_line()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{answer, ok, run_component};

    fn namespace() -> Namespace {
        Namespace {
            name: "istio-system".into(),
            network: Some("network1".into()),
            annotations: Default::default(),
        }
    }

    #[test]
    fn a_namespace_with_the_right_label_is_left_alone() {
        let live = r#"{"kind":"Namespace","metadata":{"name":"istio-system","labels":{"topology.istio.io/network":"network1"}}}"#;
        let (outcome, calls) = run_component(&namespace(), Action::Install, answer(ok(live)));
        assert_eq!(outcome.unwrap(), "unchanged");
        assert_eq!(calls.len(), 1, "{calls:?}");
    }

    #[test]
    fn a_namespace_on_another_network_is_relabelled() {
        let live = r#"{"kind":"Namespace","metadata":{"name":"istio-system","labels":{"topology.istio.io/network":"other"}}}"#;
        let (outcome, calls) = run_component(&namespace(), Action::Install, answer(ok(live)));
        assert_eq!(outcome.unwrap(), "labelled");
        assert!(
            calls[1].starts_with("kubectl apply --server-side"),
            "{calls:?}"
        );
    }

    #[test]
    fn a_terminating_namespace_is_waited_out_then_created_anew() {
        let live = r#"{"kind":"Namespace","metadata":{"name":"istio-system","deletionTimestamp":"2026-11-30T04:00:00Z","labels":{"topology.istio.io/network":"network1"}},"status":{"phase":"Terminating"}}"#;
        let (outcome, calls) = run_component(&namespace(), Action::Install, answer(ok(live)));
        assert_eq!(outcome.unwrap(), "created");
        assert!(
            calls[1].starts_with("kubectl wait --for=delete namespace/istio-system"),
            "{calls:?}"
        );
        assert!(calls[2].starts_with("kubectl apply"), "{calls:?}");
    }

    #[test]
    fn a_missing_namespace_is_created_with_its_network_label() {
        let (outcome, calls) = run_component(&namespace(), Action::Install, answer(ok("")));
        assert_eq!(outcome.unwrap(), "created");
        assert_eq!(calls.len(), 2);
        assert!(
            namespace()
                .manifest()
                .contains("topology.istio.io/network: network1")
        );
    }

    #[test]
    fn an_unreadable_answer_is_an_error_not_a_missing_namespace() {
        let (outcome, calls) = run_component(
            &namespace(),
            Action::Install,
            answer(ok("Error from proxy")),
        );
        assert!(matches!(outcome, Err(StepError::Malformed { .. })));
        assert_eq!(calls.len(), 1, "nothing was applied: {calls:?}");
    }
}
