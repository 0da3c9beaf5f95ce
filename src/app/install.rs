//! `meshup install`: tools, charts and trust, then under the locks the preflight and the
//! install plan, then (with `--prune`) the rotations.

use super::prelude::*;
use super::session::*;
use crate::components::Action;
use crate::components::handoff::{Handoff, TRUST_COMMAND};
use crate::components::hub_access::HubAccess;
use crate::components::trust_gate::TrustGate;
use crate::fleet;
use crate::flows::upgrade;
use crate::model::cli::OnlyPart;
use crate::model::version::IstioVersion;
use crate::observe::revisions::{self, Revision};

pub(super) fn install(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &InstallArgs,
) -> Result<(), Error> {
    let mut session = Session::open(global, mesh_args, reporter)?;
    let tools = session.tools_and_charts()?;
    let trust = prepare_trust(reporter, &session.mesh, args.key_type.into())?;
    let choices = Choices {
        trust: trust.as_ref(),
        rotate_ca: args.rotate_ca,
        restart: args.restart,
        purge_crds: false,
        // Helm 4 applies server-side, and istiod owns its webhooks' `failurePolicy` once it
        // runs (istio/istio#59367): take such fields over rather than fail.
        force_conflicts: tools.helm_major == Some(4),
        repair: args.repair,
    };
    // The clusters are checked once their locks are held, from the snapshot the install then
    // works with; a failed check releases them with nothing changed.
    if args.only == Some(OnlyPart::Trust) {
        let hub = args
            .hub
            .as_deref()
            .map(|context| hub_target(&session, global, context))
            .transpose()?;
        return install_trust(
            &mut session,
            reporter,
            &choices,
            &args.engine_namespace,
            hub,
        );
    }
    let locked = session.locked("install", |run| -> Result<_, Error> {
        let found = upgrade::running_everywhere(run);
        if !args.take_over {
            refuse_engine_run(&found)?;
        }
        let (in_place, settled) = guard(run.mesh, &found, args.in_place)?;
        let mut mesh = run.mesh.clone();
        if mesh.revision.is_none() {
            mesh.revision = settled;
        }
        let run = &Run {
            mesh: &mesh,
            ..run.clone()
        };
        let topology = Topology::of(&mesh, &choices);
        let checks = preflight::cluster_checks(run, &topology, false);
        if checks.iter().any(Finding::is_failure) {
            return Ok(Err(checks));
        }
        warn_checks(run.reporter, &checks);
        let mut plan = plan::install(&topology);
        if in_place {
            plan = plan.one_cluster_at_a_time();
        }
        let summary = exec::execute(run, &plan);
        Ok(Ok(after_link(run, &topology, summary, args.prune)))
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
        other => other??,
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

/// A fleet engine's istiod is the engine's to change: install would take it over (and the
/// engine would then fight meshup on every reconcile).
fn refuse_engine_run(found: &[(String, Vec<Revision>)]) -> Result<(), Error> {
    for (cluster, revisions) in found {
        if let Some(run_by) = revisions.iter().find(|r| r.manager.is_engine()) {
            return Err(Error::Refused(format!(
                "`{cluster}`: istiod (revision `{}`) is managed by {}; `meshup install` would take it over: change the mesh through {} (re-run `meshup export` and commit), or pass --take-over",
                run_by.name,
                run_by.manager,
                run_by.manager.engine()
            )));
        }
    }
    Ok(())
}

/// `install --only trust`: the parts whose hand-off is meshup's `install --only trust` (the
/// namespace, `cacerts`, the Gateway API CRDs), then in every cluster with `cacerts` the trust
/// gate an engine's istiod waits for. Changes no release, so the upgrade guards do not apply.
fn install_trust(
    session: &mut Session,
    reporter: &Arc<Reporter>,
    choices: &Choices,
    engine_namespace: &str,
    hub: Option<Target>,
) -> Result<(), Error> {
    let mut topology = Topology::of(&session.mesh, choices);
    for node in &mut topology.nodes {
        let had_cacerts = node
            .components
            .iter()
            .any(|c| c.label(Action::Install) == "cacerts");
        node.components.retain(|c| {
            c.handoff()
                .iter()
                .any(|h| matches!(h, Handoff::Kept { by, .. } if by.starts_with(TRUST_COMMAND)))
        });
        if had_cacerts {
            let root = choices
                .trust
                .and_then(|t| trust::fingerprint(&t.root_cert_pem).ok());
            node.components.push(Box::new(TrustGate {
                name: fleet::trust_gate(&node.cluster),
                namespace: engine_namespace.to_string(),
                root,
                hub: hub.clone(),
            }));
        }
        if let Some(hub) = &hub {
            let server = session
                .mesh
                .cluster(&node.cluster)
                .map(|c| c.server.clone())
                .unwrap_or_default();
            // Before the gate: the engine must reach the cluster once the gate opens.
            let at = node
                .components
                .len()
                .saturating_sub(usize::from(had_cacerts));
            node.components.insert(
                at,
                Box::new(HubAccess {
                    hub: hub.clone(),
                    namespace: engine_namespace.to_string(),
                    secret: fleet::kubeconfig_secret(&node.cluster),
                    server,
                }),
            );
        }
    }
    let summary = session.locked("install", |run| -> Result<_, Error> {
        let plan = plan::install(&topology);
        Ok(exec::execute(run, &plan))
    })??;
    finish(reporter, "install --only trust", &summary)
}

/// The hub of `--hub CONTEXT`, checked against the kubeconfig before any cluster is touched.
fn hub_target(session: &Session, global: &GlobalArgs, context: &str) -> Result<Target, Error> {
    let kubeconfig = Kubeconfig::load(global.kubeconfig.as_deref())?;
    if !kubeconfig.files.is_empty() && !kubeconfig.servers.contains_key(context) {
        return Err(InputError::new(
            "--hub",
            format!(
                "context `{context}` is not in the kubeconfig ({}); name the context of the cluster the fleet engine runs in",
                kubeconfig.describe()
            ),
        )
        .into());
    }
    Ok(Target {
        cluster: format!("hub {context}"),
        context: context.to_string(),
        kubeconfig: session.global_kubeconfig.clone(),
    })
}

/// What install may do to the istiod it finds. A second revision means an upgrade is under
/// way: refused, naming the next command. Another revision than the mesh file's, or another
/// minor version, is an upgrade: refused in favour of `meshup upgrade`, unless `--in-place`
/// (one minor version, one cluster at a time). So is another istiod chart when the running
/// version or the chart's is unknown (`latest`, a digest, an unstamped `1.0.0`): meshup cannot
/// tell how far it moves. Returns whether istiod may change its minor version in place, and
/// the revision the clusters run when the mesh file names none.
pub(super) fn guard(
    mesh: &Mesh,
    found: &[(String, Vec<revisions::Revision>)],
    in_place: bool,
) -> Result<(bool, Option<String>), Error> {
    let target = mesh.chart("istiod").version;
    let mut changes_minor = false;
    for (cluster, running) in found {
        match running.as_slice() {
            [] => {}
            [old, new] => {
                return Err(Error::Refused(format!(
                    "an upgrade is under way in `{cluster}`: istiod {} ({}) runs beside {} ({}); continue it with `meshup upgrade promote` and `meshup upgrade finish`, or undo it with `meshup upgrade rollback`, before `meshup install`",
                    new.name,
                    new.version_text(),
                    old.name,
                    old.version_text(),
                )));
            }
            [one] => {
                if let Some(wanted) = &mesh.revision
                    && *wanted != one.name
                {
                    return Err(Error::Refused(format!(
                        "`{cluster}` runs istiod revision `{}`, the mesh file asks for `{wanted}`: `meshup upgrade start` installs a new revision beside the running one; or set `istio.revision: {}`",
                        one.name, one.name
                    )));
                }
                let Some(to) = &target else {
                    continue;
                };
                let wanted = IstioVersion::stamped(to);
                let (Some(from), Some(wanted)) = (one.version, wanted) else {
                    let same_chart = one
                        .chart
                        .as_deref()
                        .is_some_and(|c| c.trim_start_matches('v') == to.trim_start_matches('v'));
                    if same_chart {
                        continue;
                    }
                    if in_place {
                        changes_minor = true;
                        continue;
                    }
                    let why = match one.version {
                        None => format!(
                            "`{cluster}` runs istiod `{}` of an unknown Istio version (found: {})",
                            one.name, one.found
                        ),
                        Some(from) => format!(
                            "`{cluster}` runs Istio {from}, and the istiod chart in `istio.charts` is version {to}, which names no Istio release (Istio's charts say 1.0.0 until a release build stamps them)"
                        ),
                    };
                    return Err(Error::Refused(format!(
                        "{why}: meshup cannot tell whether installing the istiod chart {to} changes istiod's minor version, in every cluster at once. Pass --in-place to install it anyway, one cluster at a time"
                    )));
                };
                match from.minors_to(wanted) {
                    Some(0) => {}
                    Some(n) if n.abs() == 1 && in_place => changes_minor = true,
                    Some(n) if n.abs() == 1 => {
                        return Err(Error::Refused(format!(
                            "`{cluster}` runs Istio {from}; installing {to} would change istiod's minor version in place, in every cluster at once. Upgrade with a canary revision (`meshup upgrade start`), or pass --in-place to upgrade in place one cluster at a time"
                        )));
                    }
                    _ => {
                        return Err(Error::Refused(format!(
                            "`{cluster}` runs Istio {from} and the mesh file asks for {to}: Istio changes one minor version at a time"
                        )));
                    }
                }
            }
            many => {
                return Err(Error::Refused(format!(
                    "`{cluster}` runs {} istiod revisions; meshup expects one (two during `meshup upgrade`)",
                    many.len()
                )));
            }
        }
    }
    Ok((changes_minor, upgrade::settled(found)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::revisions::Revision;
    use crate::testing;
    use crate::trust::TrustMode;

    fn mesh_at(version: &str) -> Mesh {
        let mut mesh = testing::mesh(2, TrustMode::Generate);
        mesh.version = Some(version.into());
        mesh
    }

    fn running(version: Option<&str>, chart: &str) -> Vec<(String, Vec<Revision>)> {
        let revision = Revision {
            name: "default".into(),
            version: version.and_then(IstioVersion::parse),
            chart: Some(chart.into()),
            found: "image `docker.io/istio/pilot:latest`".into(),
            ..Default::default()
        };
        ["cluster1", "cluster2"]
            .iter()
            .map(|c| (c.to_string(), vec![revision.clone()]))
            .collect()
    }

    #[test]
    fn a_variant_of_the_running_version_is_no_change() {
        let found = running(Some("1.30.0-distroless"), "1.30.0");
        assert!(!guard(&mesh_at("1.30.0"), &found, false).unwrap().0);
        assert!(!guard(&mesh_at("1.30.1"), &found, false).unwrap().0);
    }

    #[test]
    fn another_chart_over_an_unknown_version_is_refused_unless_in_place() {
        let found = running(None, "1.0.0");
        let refused = guard(&mesh_at("1.31.0"), &found, false).unwrap_err();
        let text = refused.to_string();
        assert!(matches!(refused, Error::Refused(_)), "{text}");
        assert!(text.contains("unknown Istio version"), "{text}");
        assert!(text.contains("pilot:latest"), "{text}");
        assert!(text.contains("--in-place"), "{text}");
        assert!(guard(&mesh_at("1.31.0"), &found, true).unwrap().0);
        // The same chart again changes nothing that could be unknown.
        assert!(!guard(&mesh_at("1.0.0"), &found, false).unwrap().0);
    }

    #[test]
    fn an_unstamped_chart_over_a_known_version_is_refused_unless_in_place() {
        let found = running(Some("1.30.0"), "1.30.0");
        let text = guard(&mesh_at("1.0.0"), &found, false)
            .unwrap_err()
            .to_string();
        assert!(text.contains("names no Istio release"), "{text}");
        assert!(guard(&mesh_at("1.0.0"), &found, true).unwrap().0);
    }

    #[test]
    fn a_minor_bump_is_refused_unless_in_place() {
        let found = running(Some("1.30.0"), "1.30.0");
        let text = guard(&mesh_at("1.31.0"), &found, false)
            .unwrap_err()
            .to_string();
        assert!(text.contains("change istiod's minor version"), "{text}");
        assert!(guard(&mesh_at("1.31.0"), &found, true).unwrap().0);
        let text = guard(&mesh_at("1.32.0"), &found, true)
            .unwrap_err()
            .to_string();
        assert!(text.contains("one minor version at a time"), "{text}");
    }
}
