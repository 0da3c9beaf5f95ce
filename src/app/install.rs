//! `meshup install`: tools, charts and trust, then under the locks the preflight and the
//! install plan, then (with `--prune`) the rotations.

use super::prelude::*;

pub(super) fn install(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &InstallArgs,
) -> Result<(), Error> {
    let mut session = Session::open(global, mesh_args, reporter)?;
    let tools = session.tool_checks();
    if tools.checks.iter().any(Finding::is_failure) {
        report_checks(reporter, &tools.checks)?;
        reporter.line("error: preflight failed; nothing was changed");
        return Err(Error::Reported);
    }
    warn_checks(reporter, &tools.checks);
    session.require_tools()?;
    let fetched = pull::fetch(
        &session.runner,
        reporter,
        &session.mesh.charts,
        session.mesh.version.as_deref(),
        &session.mesh.charts_needed(),
        &pull::cache_dir(),
    )?;
    session.mesh.charts = fetched.charts;
    if let Some(version) = fetched.pinned {
        session.mesh.version = Some(version);
    }
    let trust = prepare_trust(reporter, &session.mesh, args.key_type.into())?;
    let choices = Choices {
        trust: trust.as_ref(),
        rotate_ca: args.rotate_ca,
        restart: args.restart,
        purge_crds: false,
        // Helm 4 applies server-side, and istiod owns its webhooks' `failurePolicy` once it
        // runs (istio/istio#59367): take such fields over rather than fail.
        force_conflicts: tools.helm_major == Some(4),
    };
    let topology = Topology::of(&session.mesh, &choices);
    // The clusters are checked once their locks are held, from the snapshot the install then
    // works with; a failed check releases them with nothing changed.
    let locked = session.locked("install", |run| {
        let checks = preflight::cluster_checks(run, &topology, false);
        if checks.iter().any(Finding::is_failure) {
            return Err(checks);
        }
        warn_checks(run.reporter, &checks);
        let summary = exec::execute(run, &plan::install(&topology));
        Ok(after_link(run, &topology, summary, args.prune))
    });
    // A cluster whose lock cannot be taken fails the preflight: it does not answer, or
    // refuses meshup.
    let outcome = match locked {
        Err(Error::Lock(LockError::Cluster { cluster, message })) => Err(vec![Finding::fail(
            Some(&cluster),
            "api server",
            format!(
                "meshup could not take its lock there: {}",
                message.trim_start_matches(&format!("[{cluster}] "))
            ),
        )]),
        other => other?,
    };
    match outcome {
        Ok(summary) => finish(reporter, "install", &summary),
        Err(checks) => {
            report_checks(reporter, &checks)?;
            reporter.line("error: preflight failed; nothing was changed");
            Err(Error::Reported)
        }
    }
}
