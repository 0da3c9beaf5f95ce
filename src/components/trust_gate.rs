//! The trust gate: a ConfigMap `meshup install --only trust` writes into a fleet engine's
//! namespace once the cluster's `cacerts` is in place. The istiod release the engine runs
//! reads it (`valuesFrom`, not optional), so the engine cannot start an istiod that would
//! sign with a self-made root. Its `values.yaml` is `{}`: it adds no value to the release.

use serde_json::json;

use super::{Action, ClusterCtx, Component, ScriptCx};
use crate::components::handoff::{Handoff, TRUST_COMMAND};
use crate::tools::kubectl;
use crate::tools::live::Live;
use crate::tools::runner::StepError;
use crate::tools::step::Target;
use crate::trust::sensitive::Sensitive;

/// The trust gate of one cluster.
pub struct TrustGate {
    /// `meshup-trust-CLUSTER`.
    pub name: String,
    /// The engine's namespace (`flux-system`), which must exist.
    pub namespace: String,
    /// The cluster's root fingerprint, written beside the values for the operator.
    pub root: Option<String>,
    /// With `--hub`: the hub's context, where the engine runs this cluster's releases (and
    /// reads the gate); else the cluster itself.
    pub hub: Option<Target>,
}

impl TrustGate {
    fn manifest(&self) -> String {
        let mut object = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "meshup"},
            },
            "data": {"values.yaml": "{}\n"},
        });
        if let Some(root) = &self.root {
            object["metadata"]["annotations"] = json!({"meshup.io/root-fingerprint": root});
        }
        serde_yaml::to_string(&object).expect("plain JSON is valid YAML")
    }
}

impl Component for TrustGate {
    fn handoff(&self) -> Vec<Handoff> {
        vec![Handoff::Kept {
            what: format!("the trust gate ConfigMap `{}`", self.name),
            by: TRUST_COMMAND,
        }]
    }

    fn label(&self, _: Action) -> &'static str {
        "trust gate"
    }

    fn acts_on(&self, action: Action) -> bool {
        action == Action::Install
    }

    fn converge(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        // The cluster's own writes waiting in its snapshot (the namespace, `cacerts`) go out
        // first: the gate opens only after them.
        cx.live.flush()?;
        let hub = self
            .hub
            .as_ref()
            .map(|hub| Live::new(cx.live.runner, hub, cx.timeout()));
        let live = hub.as_ref().unwrap_or(&cx.live);
        let target = live.target;
        let found: Option<serde_json::Value> =
            live.get("configmap", &self.name, Some(&self.namespace))?;
        let wanted_root = self.root.as_deref();
        if let Some(found) = &found
            && found["data"]["values.yaml"] == "{}\n"
            && found["metadata"]["annotations"]["meshup.io/root-fingerprint"].as_str()
                == wanted_root
        {
            return Ok("unchanged".into());
        }
        live.run(&kubectl::apply(
            target,
            Sensitive::new(self.manifest().into_bytes()),
            cx.timeout(),
        ))?;
        Ok(if found.is_none() {
            "created"
        } else {
            "updated"
        }
        .into())
    }

    fn script(&self, cx: &ScriptCx, action: Action) -> String {
        match action {
            Action::Install => format!(
                "{} <<'EOF'\n{}EOF\n",
                kubectl::apply(
                    self.hub.as_ref().unwrap_or(&cx.target),
                    Sensitive::default(),
                    cx.timeout
                )
                .command_line(),
                self.manifest()
            ),
            Action::Remove => String::new(),
        }
    }
}
