//! Restarting istiod after its `cacerts` appeared or changed: istiod reads `cacerts` only at
//! start, so one that ran before keeps signing with its old root. Only with `--restart`;
//! otherwise meshup says what to do.

use super::{Action, ClusterCtx, Component, ScriptCx};
use crate::components::handoff::Handoff;
use crate::tools::kubectl;
use crate::tools::runner::StepError;

/// istiod's restart, when an earlier component of its cluster asked for one.
pub struct IstiodRestart {
    pub deployment: String,
    pub namespace: String,
    /// `--restart`.
    pub enabled: bool,
}

impl Component for IstiodRestart {
    fn handoff(&self) -> Vec<Handoff> {
        vec![Handoff::Kept {
            what: format!(
                "restarting `{}` after its `cacerts` changed",
                self.deployment
            ),
            by: "meshup install --only trust --restart",
        }]
    }

    fn label(&self, _: Action) -> &'static str {
        "istiod restart"
    }

    fn acts_on(&self, action: Action) -> bool {
        action == Action::Install
    }

    fn converge(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        if !cx.memo.istiod_needs_restart {
            return Ok("not needed".into());
        }
        let (deployment, ns) = (&self.deployment, &self.namespace);
        if !self.enabled {
            cx.reporter.warn(&format!(
                "istiod in `{}` was running before its `cacerts` was created or changed and still uses its old root; run `meshup install --restart` (or `kubectl --context {} rollout restart deployment/{deployment} -n {ns}`), then restart the workloads",
                cx.cluster.name, cx.cluster.context
            ));
            return Ok("needed (pass --restart)".into());
        }
        cx.live.run(&kubectl::rollout_restart(
            cx.target(),
            deployment,
            ns,
            cx.timeout(),
        ))?;
        cx.live.run(&kubectl::rollout_status(
            cx.target(),
            deployment,
            ns,
            cx.timeout(),
        ))?;
        cx.memo.istiod_needs_restart = false;
        Ok("restarted".into())
    }

    fn script(&self, cx: &ScriptCx, action: Action) -> String {
        if action == Action::Remove {
            return String::new();
        }
        format!(
            "# Only if istiod ran before cacerts existed: {}\n",
            kubectl::rollout_restart(&cx.target, &self.deployment, &self.namespace, cx.timeout)
                .command_line()
        )
    }
}
