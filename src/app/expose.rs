//! `meshup expose SERVICE -n NS` / `meshup unexpose`: in an ambient mesh, a service is
//! reachable from other clusters only when marked global (`istio.io/global=true`, which the
//! ambient profile's `serviceScopeConfigs` turn into GLOBAL scope). A one-wave plan: the label
//! set (or removed) in every cluster that has the service.

use super::prelude::*;
use super::session::*;
use crate::checks::traffic::GLOBAL_LABEL;
use crate::components::{ClusterCtx, ScriptCx};
use crate::engine::plan::{Chain, Plan, Task, Wave, Work};
use crate::model::cli::ExposeArgs;
use crate::tools::kubectl;
use crate::tools::runner::StepError;

pub(super) fn expose(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &ExposeArgs,
    on: bool,
) -> Result<(), Error> {
    let session = Session::open(global, mesh_args, reporter)?;
    if !session.mesh.ambient() {
        return Err(InputError::new(
            &session.mesh.source,
            "`meshup expose` is for ambient meshes (`dataplane: ambient`): with sidecars every service is already reachable from every cluster",
        )
        .into());
    }
    session.require_tools()?;
    let work: Arc<dyn Work> = Arc::new(Mark {
        service: args.service.clone(),
        namespace: args.namespace.clone(),
        on,
    });
    let plan = Plan {
        waves: vec![Wave::new(
            format!(
                "{} `{}/{}` in every cluster that has it",
                if on { "mark global" } else { "unmark" },
                args.namespace,
                args.service
            ),
            session
                .mesh
                .clusters
                .iter()
                .map(|c| Chain {
                    cluster: c.name.clone(),
                    tasks: vec![Task::Work(work.clone())],
                })
                .collect(),
        )],
    };
    let command = if on { "expose" } else { "unexpose" };
    let summary = session.locked(command, |run| exec::execute(run, &plan))?;
    finish(reporter, command, &summary)?;
    let nowhere = summary
        .clusters
        .iter()
        .flat_map(|c| &c.tasks)
        .all(|t| t.outcome == NOT_HERE);
    if nowhere {
        reporter.line(&format!(
            "error: no cluster of the mesh has service `{}/{}`; check its name and namespace",
            args.namespace, args.service
        ));
        return Err(Error::Reported);
    }
    Ok(())
}

/// The outcome in a cluster without the service.
const NOT_HERE: &str = "not here";

/// The global label on one Service, where it exists.
struct Mark {
    service: String,
    namespace: String,
    on: bool,
}

impl Mark {
    fn label(&self) -> String {
        if self.on {
            format!("{GLOBAL_LABEL}=true")
        } else {
            format!("{GLOBAL_LABEL}-")
        }
    }
}

impl Work for Mark {
    fn label(&self) -> &'static str {
        "service"
    }

    fn run(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let found: Option<crate::tools::live::Object> =
            cx.live
                .get("service", &self.service, Some(&self.namespace))?;
        let Some(service) = found else {
            return Ok(NOT_HERE.into());
        };
        let now = service
            .metadata
            .labels
            .get(GLOBAL_LABEL)
            .map(String::as_str)
            == Some("true");
        if now == self.on {
            return Ok("unchanged".into());
        }
        cx.live.run(&kubectl::label(
            cx.target(),
            "service",
            &self.service,
            &self.namespace,
            &self.label(),
            cx.timeout(),
        ))?;
        Ok(if self.on { "global" } else { "local" }.into())
    }

    fn script(&self, cx: &ScriptCx) -> String {
        format!(
            "{}\n",
            kubectl::label(
                &cx.target,
                "service",
                &self.service,
                &self.namespace,
                &self.label(),
                cx.timeout
            )
            .command_line()
        )
    }
}
