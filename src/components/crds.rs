//! Istio's CustomResourceDefinitions (`*.istio.io`). istio-base installs them and
//! `helm uninstall` keeps them on purpose (`helm.sh/resource-policy: keep`): deleting them
//! deletes all Istio configuration. `uninstall --purge-crds` removes them.

use super::{Action, ClusterCtx, Component, ScriptCx};
use crate::components::handoff::Handoff;
use crate::tools::kubectl;
use crate::tools::live::Object;
use crate::tools::runner::StepError;
use crate::tools::step::shell_quote;

/// Istio's CRDs, removed only on request.
pub struct Crds {
    /// `--purge-crds`.
    pub purge: bool,
}

/// Whether a CRD is Istio's.
pub fn is_istio(name: &str) -> bool {
    name.ends_with(".istio.io")
}

impl Component for Crds {
    fn handoff(&self) -> Vec<Handoff> {
        // Istio's CRDs are istio-base's templates (the engine's); they carry
        // `helm.sh/resource-policy: keep`, so only an explicit purge deletes them.
        vec![Handoff::Kept {
            what: "deleting Istio's CRDs (they outlive istio-base)".into(),
            by: "meshup uninstall --purge-crds",
        }]
    }

    fn label(&self, _: Action) -> &'static str {
        "CRDs"
    }

    fn acts_on(&self, action: Action) -> bool {
        action == Action::Remove && self.purge
    }

    fn converge(&self, _: &mut ClusterCtx) -> Result<String, StepError> {
        // istio-base installs them.
        Ok("nothing to do".into())
    }

    fn remove(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let crds: Vec<Object> = cx.live.list("customresourcedefinitions", None, None)?;
        let names: Vec<String> = crds
            .into_iter()
            .map(|crd| crd.metadata.name)
            .filter(|name| is_istio(name))
            .collect();
        if names.is_empty() {
            return Ok("none left".into());
        }
        cx.live.run(&kubectl::delete(
            cx.target(),
            "customresourcedefinitions",
            &names,
            None,
            cx.timeout(),
        ))?;
        Ok(format!("{} deleted", names.len()))
    }

    fn script(&self, cx: &ScriptCx, action: Action) -> String {
        if action == Action::Install {
            return String::new();
        }
        let context = shell_quote(&cx.cluster.context);
        let kubeconfig = cx.kubeconfig_flag();
        format!(
            "# Delete every CustomResourceDefinition named *.istio.io:\nkubectl get crd --context {context}{kubeconfig} -o name | grep '\\.istio\\.io$' | xargs -r kubectl delete --context {context}{kubeconfig}\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ok, run_component};
    use crate::tools::step::Step;

    #[test]
    fn only_istio_crds_are_deleted() {
        let list = r#"{"kind":"List","items":[{"metadata":{"name":"gateways.networking.istio.io"}},{"metadata":{"name":"certificates.cert-manager.io"}},{"metadata":{"name":"telemetries.telemetry.istio.io"}}]}"#;
        let (outcome, calls) =
            run_component(&Crds { purge: true }, Action::Remove, move |_: &Step| {
                ok(list)
            });
        assert_eq!(outcome.unwrap(), "2 deleted");
        let delete = calls.last().unwrap();
        assert!(
            delete.contains("gateways.networking.istio.io telemetries.telemetry.istio.io")
                && !delete.contains("cert-manager"),
            "{delete}"
        );
    }

    #[test]
    fn without_purge_nothing_is_planned() {
        let crds = Crds { purge: false };
        assert!(!crds.acts_on(Action::Remove) && !crds.acts_on(Action::Install));
    }
}
