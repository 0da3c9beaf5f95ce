//! `meshup upgrade start|promote|finish|rollback`: a canary upgrade across clusters
//! (`upgrade.rs` builds the plans). Every guard is checked, under the locks, before anything
//! changes; a refused phase exits 2.

use std::collections::BTreeMap;

use super::prelude::*;
use super::session::*;
use crate::fleet;
use crate::flows::upgrade::{self, Canary};
use crate::model::cli::{UpgradeArgs, UpgradePhase};
use crate::model::version::IstioVersion;
use crate::observe::revisions::{self, Installed, Phase, Revision, Stand};

pub(super) fn upgrade(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &UpgradeArgs,
) -> Result<(), Error> {
    let phase = &args.phase;
    let mut session = Session::open(global, mesh_args, reporter)?;
    refuse_remotes(&session.mesh)?;
    check_cluster_names(&session.mesh, "--clusters", &phase.waves().only)?;
    if let UpgradePhase::Start { to: Some(to), .. } = phase {
        if let Some(local) = session
            .mesh
            .chart("istiod")
            .version
            .filter(|_| session.mesh.charts.is_local())
            && local != *to
        {
            return Err(Error::Refused(format!(
                "--to {to}: the local istiod chart in `istio.charts` is {local}"
            )));
        }
        session.mesh.version = Some(to.clone());
    }
    if args.wait_only {
        return wait_only(&session, reporter, phase);
    }
    let tools = session.tools_and_charts()?;
    let force_conflicts = tools.helm_major == Some(4);
    let command = format!("upgrade {}", phase.name());
    let outcome = session.locked(&command, |run| -> Result<(Summary, String), Error> {
        let installed = observe(run)?;
        let mut canary = decide(run.mesh, &installed, phase)?;
        canary.force_conflicts = force_conflicts;
        if canary.waves.is_empty() {
            return Ok((Summary::nothing(), nothing_left(phase, &canary)));
        }
        let plan = match phase {
            UpgradePhase::Start { .. } => canary.start(),
            UpgradePhase::Promote { .. } => canary.promote(),
            UpgradePhase::Finish { force, .. } => {
                if !force {
                    refuse_while_proxies(run, &canary, &canary.old)?;
                    canary.proxies_checked = true;
                }
                canary.finish()
            }
            UpgradePhase::Rollback { .. } => canary.rollback(),
        };
        Ok((exec::execute(run, &plan), next_step(phase, &canary)))
    })?;
    let (summary, next) = outcome?;
    finish(reporter, &command, &summary)?;
    reporter.line(&next);
    Ok(())
}

/// Every cluster's revisions and tags; a cluster that cannot be read fails the command.
fn observe(run: &Run) -> Result<BTreeMap<String, Installed>, Error> {
    let mut installed = BTreeMap::new();
    for (cluster, found) in upgrade::observe(run) {
        installed.insert(cluster, found?);
    }
    Ok(installed)
}

/// `--wait-only`: the phase's guards, then its gates, without the locks (nothing changes).
fn wait_only(session: &Session, reporter: &Reporter, phase: &UpgradePhase) -> Result<(), Error> {
    session.require_tools()?;
    let run = session.read();
    let canary = decide(run.mesh, &observe(&run)?, phase)?;
    if canary.waves.is_empty() {
        reporter.line(&nothing_left(phase, &canary));
        return Ok(());
    }
    let command = format!("upgrade {} --wait-only", phase.name());
    // What the engine changes is read fresh on every look: no snapshot.
    let fresh = Run {
        caches: None,
        ..run.clone()
    };
    finish(
        reporter,
        &command,
        &exec::execute(&fresh, &canary.waiting(stand_after(phase))),
    )?;
    reporter
        .line(&next_step(phase, &canary).replace("`meshup upgrade ", "`meshup export --upgrade "));
    Ok(())
}

/// Where `phase` leaves the clusters it changes.
fn stand_after(phase: &UpgradePhase) -> Stand {
    match phase {
        UpgradePhase::Start { .. } => Stand::Started,
        UpgradePhase::Promote { .. } => Stand::Promoted,
        UpgradePhase::Finish { .. } => Stand::New,
        UpgradePhase::Rollback { .. } => Stand::Old,
    }
}

/// `meshup export --upgrade PHASE`: the phase's guards on what the clusters run (read-only),
/// and where each cluster stands once the engine applied it. `None`: nothing to do (every
/// cluster rolled back already).
pub(super) fn for_export(
    session: &Session,
    phase: &UpgradePhase,
) -> Result<Option<fleet::upgrade::Upgrade>, Error> {
    refuse_remotes(&session.mesh)?;
    check_cluster_names(&session.mesh, "--clusters", &phase.waves().only)?;
    session.require_tools()?;
    let run = session.read();
    let installed = observe(&run)?;
    let canary = decide(run.mesh, &installed, phase)?;
    let todo: Vec<&String> = canary.waves.iter().flatten().collect();
    let after = stand_after(phase);
    let mut stands = BTreeMap::new();
    for (cluster, found) in &installed {
        let stand = match found.phase() {
            _ if todo.contains(&cluster) => after,
            Phase::Steady(r) if r.name == canary.new => Stand::New,
            Phase::Started { .. } => Stand::Started,
            Phase::Promoted { .. } => Stand::Promoted,
            _ if todo.is_empty() => {
                // Done already where chosen; a cluster elsewhere has its own phase to run.
                return Err(Error::Refused(format!(
                    "nothing to {} in the chosen clusters, and `{cluster}` does not run {} only: export the phase for it (`--clusters {cluster}`)",
                    phase.name(),
                    canary.new
                )));
            }
            _ => Stand::Old,
        };
        stands.insert(cluster.clone(), stand);
    }
    if todo.is_empty() && matches!(phase, UpgradePhase::Rollback { .. }) {
        return Ok(None);
    }
    let mut old = canary.from.clone();
    old.version = canary.old_version.map(|v| v.to_string());
    Ok(Some(fleet::upgrade::Upgrade {
        phase: phase.name(),
        old,
        from: canary.from.clone(),
        to: canary.to.clone(),
        stands,
        tags: canary.tags.clone(),
    }))
}

/// A remote cluster's injector and `istiod-remote` are not per revision in Istio's charts
/// (istio/istio#34867, #47552): refused.
fn refuse_remotes(mesh: &Mesh) -> Result<(), Error> {
    let remotes: Vec<&str> = mesh
        .clusters
        .iter()
        .filter(|c| matches!(c.role, mesh::Role::Remote { .. }))
        .map(|c| c.name.as_str())
        .collect();
    if remotes.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "{} {} remote: a remote cluster's injector and its `istiod` Service lead to one istiod of its primary, not to a revision (istio/istio#34867, #47552), so meshup does not canary-upgrade primary-remote meshes; upgrade them in place with `meshup install --in-place`, one minor version at a time",
        remotes.join(", "),
        if remotes.len() == 1 { "is" } else { "are" }
    )))
}

/// The clusters a phase changes, in waves, from what they run; every guard of the phase.
pub(super) fn decide(
    mesh: &Mesh,
    installed: &BTreeMap<String, Installed>,
    phase: &UpgradePhase,
) -> Result<Canary, Error> {
    let waves = phase.waves();
    let chosen: Vec<String> = if waves.only.is_empty() {
        mesh.clusters.iter().map(|c| c.name.clone()).collect()
    } else {
        mesh.clusters
            .iter()
            .filter(|c| waves.only.contains(&c.name))
            .map(|c| c.name.clone())
            .collect()
    };
    let phases: BTreeMap<&str, Phase> = installed
        .iter()
        .map(|(c, i)| (c.as_str(), i.phase()))
        .collect();
    refuse_unupgradable(mesh, &phases)?;
    check_skew(mesh, installed)?;
    let file = mesh.chart("istiod").version;
    let (old, new, version) = match ends(phase, &chosen, &phases, file.as_deref())? {
        Ends::Done { revision, version } => {
            return Ok(Canary::new(mesh, &revision, &version, Vec::new()));
        }
        Ends::Move { old, new, version } => (*old, *new, version),
    };
    let Some(from_version) = old.version else {
        return Err(unknown(&old));
    };
    one_minor_step(from_version, version)?;
    if old.name == new.name {
        return Err(Error::Refused(format!(
            "the running revision is already named `{}`",
            new.name
        )));
    }
    let file_version = file.as_deref().and_then(IstioVersion::stamped);
    if !matches!(phase, UpgradePhase::Start { .. })
        && let Some(file) = &file
        && file_version != Some(version)
    {
        return Err(Error::Refused(format!(
            "the upgrade under way is to {version}, but the mesh file's istiod chart is {file}: set `istio.version: {version}` (or put the {version} charts in `istio.charts`)"
        )));
    }
    let todo = clusters_to_change(&chosen, &phases, (&old, &new), phase)?;
    let size = waves.wave_size.max(1) as usize;
    let mut canary = Canary::new(
        mesh,
        &old.name,
        &version.to_string(),
        todo.chunks(size).map(<[String]>::to_vec).collect(),
    );
    canary.new = new.name.clone();
    canary.old_version = old.version;
    canary.to.revision = Some(new.name.clone());
    with_phase_options(&mut canary, installed, (&old, &new), phase);
    Ok(canary)
}

/// A cluster with no istiod, or with more than two revisions, cannot be upgraded.
fn refuse_unupgradable(mesh: &Mesh, phases: &BTreeMap<&str, Phase>) -> Result<(), Error> {
    for (cluster, p) in phases {
        match p {
            Phase::Empty => {
                return Err(Error::Refused(format!(
                    "`{cluster}` runs no istiod in namespace `{}`: install the mesh first (`meshup install`)",
                    mesh.namespace
                )));
            }
            Phase::Tangled(revisions) => {
                return Err(Error::Refused(format!(
                    "`{cluster}` runs {} istiod revisions ({}); meshup upgrades from one to the next: remove the ones not in use first",
                    revisions.len(),
                    list(revisions)
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where an upgrade goes: from one revision to the next at a version, or nowhere because the
/// phase is done already (its plan is empty).
enum Ends {
    Move {
        old: Box<Revision>,
        new: Box<Revision>,
        version: IstioVersion,
    },
    /// Done already: the revision every cluster runs, and its version.
    Done { revision: String, version: String },
}

/// The two revisions of the upgrade, from the clusters that have both, else (for `start`)
/// from the running one and the mesh file's chart version (`file`).
fn ends(
    phase: &UpgradePhase,
    chosen: &[String],
    phases: &BTreeMap<&str, Phase>,
    file: Option<&str>,
) -> Result<Ends, Error> {
    let pair = phases.values().find_map(|p| match p {
        Phase::Started { old, new } | Phase::Promoted { old, new } => {
            Some((old.clone(), new.clone()))
        }
        _ => None,
    });
    // The version the mesh file's istiod chart is (`None`: not set, or no Istio release).
    let file_version = file.and_then(IstioVersion::stamped);
    Ok(match (phase, pair) {
        (_, Some((old, new))) => {
            let Some(version) = new.version.or(file_version) else {
                return Err(unknown(&new));
            };
            Ends::Move {
                old: Box::new(old),
                new: Box::new(new),
                version,
            }
        }
        (UpgradePhase::Start { .. }, None) => {
            let Some(file) = file else {
                return Err(Error::Refused(
                    "the version to upgrade to is not known: set `istio.version` in the mesh file, or pass --to".into(),
                ));
            };
            let Some(version) = file_version else {
                return Err(Error::Refused(format!(
                    "the istiod chart in `istio.charts` is version {file}, which names no Istio release (Istio's charts say 1.0.0 until a release build stamps them): meshup upgrades one minor version at a time and cannot tell what this one is; use a released chart"
                )));
            };
            let Some(Phase::Steady(old)) = chosen.first().and_then(|c| phases.get(c.as_str()))
            else {
                return Err(Error::Refused("no cluster to upgrade".into()));
            };
            let target = version.revision();
            let finished = chosen.iter().all(
                |c| matches!(phases.get(c.as_str()), Some(Phase::Steady(r)) if r.name == target),
            );
            if finished {
                return Ok(Ends::Done {
                    revision: target,
                    version: version.to_string(),
                });
            }
            Ends::Move {
                old: Box::new(old.clone()),
                new: Box::new(Revision::at(&target, version)),
                version,
            }
        }
        (_, None) => {
            // Every cluster runs one revision: done already (finish, or a rollback), or not
            // started (promote, finish).
            let target = file_version.map(IstioVersion::revision);
            let on_target = |p: &Phase| matches!(p, Phase::Steady(r) if target.as_deref() == Some(r.name.as_str()));
            let all = chosen.iter().filter_map(|c| phases.get(c.as_str()));
            let done = match phase {
                UpgradePhase::Rollback { .. } => all.clone().all(|p| !on_target(p)),
                _ => all.clone().all(on_target),
            };
            if done {
                let version = file_version
                    .map(|v| v.to_string())
                    .or(file.map(str::to_string))
                    .unwrap_or_default();
                return Ok(Ends::Done {
                    revision: revisions::revision_of(&version),
                    version,
                });
            }
            return Err(Error::Refused(format!(
                "no upgrade is under way: every cluster runs one istiod revision ({}); start one with `meshup upgrade start`",
                running_list(phases)
            )));
        }
    })
}

/// Istio upgrades one minor version at a time; a patch release is an in-place install.
fn one_minor_step(from_version: IstioVersion, version: IstioVersion) -> Result<(), Error> {
    match from_version.minors_to(version) {
        Some(1) => Ok(()),
        Some(0) => Err(Error::Refused(format!(
            "{version} is a patch release of the running {from_version}: patch upgrades are in place, with `meshup install`"
        ))),
        Some(n) if n > 1 => Err(Error::Refused(format!(
            "{from_version} → {version} skips {} minor version{}: Istio upgrades one minor version at a time; upgrade to the next minor version first",
            n - 1,
            if n == 2 { "" } else { "s" }
        ))),
        _ => Err(Error::Refused(format!(
            "cannot upgrade from {from_version} to {version}: not a newer minor version"
        ))),
    }
}

/// The chosen clusters this phase still changes; one that stands elsewhere is refused, one
/// done already is left out.
fn clusters_to_change(
    chosen: &[String],
    phases: &BTreeMap<&str, Phase>,
    (old, new): (&Revision, &Revision),
    phase: &UpgradePhase,
) -> Result<Vec<String>, Error> {
    let mut todo = Vec::new();
    for cluster in chosen {
        let here = &phases[cluster.as_str()];
        let steady = |r: &Revision| matches!(here, Phase::Steady(s) if s.name == r.name);
        let pair_here = matches!(here, Phase::Started { old: o, new: n } | Phase::Promoted { old: o, new: n } if o.name == old.name && n.name == new.name);
        let started = matches!(here, Phase::Started { .. }) && pair_here;
        let (wanted, done) = match phase {
            UpgradePhase::Start { .. } => (steady(old) || started, false),
            UpgradePhase::Promote { .. } => (pair_here, false),
            UpgradePhase::Finish { .. } => (
                matches!(here, Phase::Promoted { .. }) && pair_here,
                steady(new),
            ),
            UpgradePhase::Rollback { .. } => (pair_here, steady(old)),
        };
        if done {
            continue;
        }
        if !wanted {
            return Err(Error::Refused(format!(
                "`{cluster}` cannot {}: {}",
                phase.name(),
                where_it_stands(here, old, new, phase)
            )));
        }
        todo.push(cluster.clone());
    }
    Ok(todo)
}

/// The tags that move (every tag of the revision left, `default` first) and the phase's
/// flags.
fn with_phase_options(
    canary: &mut Canary,
    installed: &BTreeMap<String, Installed>,
    (old, new): (&Revision, &Revision),
    phase: &UpgradePhase,
) {
    let moving = match phase {
        UpgradePhase::Rollback { .. } => &new.name,
        _ => &old.name,
    };
    for (cluster, found) in installed {
        let mut tags = found.tags_of(moving);
        if !tags.iter().any(|t| t == revisions::DEFAULT_TAG) {
            tags.insert(0, revisions::DEFAULT_TAG.to_string());
        }
        canary.tags.insert(cluster.clone(), tags);
    }
    match phase {
        UpgradePhase::Promote {
            restart_workloads, ..
        } => canary.restart_workloads = *restart_workloads,
        UpgradePhase::Rollback {
            restart_workloads,
            force,
            ..
        } => {
            canary.restart_workloads = *restart_workloads;
            canary.force = *force;
        }
        UpgradePhase::Finish { force, .. } => canary.force = *force,
        UpgradePhase::Start { .. } => {}
    }
}

/// Clusters never more than one minor version apart, counting the version being installed.
fn check_skew(mesh: &Mesh, installed: &BTreeMap<String, Installed>) -> Result<(), Error> {
    let mut versions: Vec<(String, IstioVersion)> = installed
        .iter()
        .flat_map(|(c, i)| {
            i.revisions
                .iter()
                .filter_map(move |r| Some((c.clone(), r.version?)))
        })
        .collect();
    if let Some(v) = mesh
        .chart("istiod")
        .version
        .as_deref()
        .and_then(IstioVersion::stamped)
    {
        versions.push((format!("the mesh file ({})", mesh.source), v));
    }
    let lowest = versions.iter().min_by_key(|(_, v)| v.minor());
    let highest = versions.iter().max_by_key(|(_, v)| v.minor());
    if let (Some((lc, lv)), Some((hc, hv))) = (lowest, highest)
        && lv.minors_to(*hv).is_some_and(|n| n > 1)
    {
        return Err(Error::Refused(format!(
            "{lc} runs Istio {lv} and {hc} {hv}: more than one minor version apart, which Istio does not support between the clusters of a mesh; bring every cluster to within one minor version first"
        )));
    }
    Ok(())
}

/// A revision of unknown version cannot be upgraded one minor version at a time.
fn unknown(revision: &Revision) -> Error {
    Error::Refused(format!(
        "istiod `{}` runs an unknown Istio version (found: {}): meshup upgrades one minor version at a time and cannot tell from which; upgrade it in place with `meshup install --in-place`, one cluster at a time",
        revision.name, revision.found
    ))
}

fn list(revisions: &[Revision]) -> String {
    revisions
        .iter()
        .map(|r| format!("{} ({})", r.name, r.version_text()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn running_list(phases: &BTreeMap<&str, Phase>) -> String {
    phases
        .iter()
        .map(|(c, p)| match p {
            Phase::Steady(r) => format!("{c}: {}", list(std::slice::from_ref(r))),
            _ => format!("{c}: ?"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn where_it_stands(here: &Phase, old: &Revision, new: &Revision, phase: &UpgradePhase) -> String {
    match (here, phase) {
        (Phase::Started { .. }, UpgradePhase::Finish { .. }) => format!(
            "the default revision is still {}; run `meshup upgrade promote` first",
            old.name
        ),
        (Phase::Promoted { .. }, UpgradePhase::Start { .. }) => format!(
            "it is already promoted to {}; run `meshup upgrade finish` (or `rollback`)",
            new.name
        ),
        (Phase::Steady(r), _) if r.name == new.name => {
            format!("it already runs only {}", new.name)
        }
        (Phase::Steady(r), UpgradePhase::Promote { .. } | UpgradePhase::Rollback { .. })
            if r.name == old.name =>
        {
            format!(
                "it runs only {}; run `meshup upgrade start` first",
                old.name
            )
        }
        (p, _) => format!("it runs {}", describe_phase(p)),
    }
}

fn describe_phase(p: &Phase) -> String {
    match p {
        Phase::Empty => "no istiod".into(),
        Phase::Steady(r) => list(std::slice::from_ref(r)),
        Phase::Started { old, new } | Phase::Promoted { old, new } => {
            list(&[old.clone(), new.clone()])
        }
        Phase::Tangled(r) => list(r),
    }
}

/// `finish` is refused while pods still run proxies of the revision it removes.
fn refuse_while_proxies(run: &Run, canary: &Canary, revision: &str) -> Result<(), Error> {
    let clusters: Vec<&mesh::Cluster> = canary
        .waves
        .iter()
        .flatten()
        .filter_map(|c| run.mesh.cluster(c))
        .collect();
    let found = crate::engine::run::parallel(run.jobs, &clusters, |cluster| {
        let (mut memo, board) = (
            crate::components::ClusterNotes::default(),
            crate::components::RunBoard::default(),
        );
        run.in_cluster(cluster, &mut memo, &board, |cx| {
            revisions::proxies(&cx.live)
        })
    });
    let mut left = Vec::new();
    for (cluster, proxies) in clusters.iter().zip(found) {
        if let Some(namespaces) = proxies?.remove(revision) {
            left.push(format!(
                "{}: {}",
                cluster.name,
                revisions::describe(&namespaces)
            ));
        }
    }
    if left.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "pods still run proxies of istiod {revision}, which finish would remove: {}. Restart them (`meshup upgrade promote --restart-workloads`, or `kubectl rollout restart deployment -n NAMESPACE`), or pass --force",
        left.join("; ")
    )))
}

fn nothing_left(phase: &UpgradePhase, canary: &Canary) -> String {
    match phase {
        UpgradePhase::Rollback { .. } => "nothing to roll back: no upgrade is under way".into(),
        _ => format!(
            "nothing to {}: every chosen cluster runs {} only",
            phase.name(),
            canary.new
        ),
    }
}

fn next_step(phase: &UpgradePhase, canary: &Canary) -> String {
    match phase {
        UpgradePhase::Start { .. } => format!(
            "next: check it (`meshup verify`, `meshup status`), then `meshup upgrade promote` moves workloads to {} (or `meshup upgrade rollback`)",
            canary.new
        ),
        UpgradePhase::Promote { .. } => format!(
            "next: once every injected workload was restarted onto {}, `meshup upgrade finish` removes {} (or `meshup upgrade rollback`)",
            canary.new, canary.old
        ),
        UpgradePhase::Finish { .. } => format!(
            "the mesh runs {} ({}) where it was finished",
            canary.new, canary.version
        ),
        UpgradePhase::Rollback { .. } => format!(
            "the mesh runs {} again where it was rolled back; set `istio.version` back in the mesh file",
            canary.old
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cli::WaveArgs;
    use crate::testing;
    use crate::trust::TrustMode;

    fn waves() -> WaveArgs {
        WaveArgs {
            wave_size: 1,
            only: Vec::new(),
        }
    }

    fn mesh_at(version: &str) -> Mesh {
        let mut mesh = testing::mesh(2, TrustMode::Generate);
        mesh.version = Some(version.into());
        mesh
    }

    fn rev(name: &str, tag: &str) -> Revision {
        Revision {
            name: name.into(),
            version: IstioVersion::parse(tag),
            chart: None,
            found: format!("image `pilot:{tag}`"),
            ..Default::default()
        }
    }

    /// Every cluster runs `revisions`; `default` tagged onto `promoted` when given.
    fn everywhere(revisions: &[Revision], promoted: Option<&str>) -> BTreeMap<String, Installed> {
        let installed = Installed {
            revisions: revisions.to_vec(),
            tags: promoted
                .map(|r| BTreeMap::from([(revisions::DEFAULT_TAG.into(), r.into())]))
                .unwrap_or_default(),
        };
        ["cluster1", "cluster2"]
            .iter()
            .map(|c| (c.to_string(), installed.clone()))
            .collect()
    }

    #[test]
    fn an_upgrade_between_distroless_images_goes_on_with_the_mesh_files_version() {
        let started = everywhere(
            &[
                rev("default", "1.30.0-distroless"),
                rev("1-31-0", "1.31.0-distroless"),
            ],
            None,
        );
        let promote = UpgradePhase::Promote {
            restart_workloads: false,
            waves: waves(),
        };
        let canary = decide(&mesh_at("1.31.0"), &started, &promote).unwrap();
        assert_eq!(canary.new, "1-31-0");
        assert_eq!(canary.version, "1.31.0");
        assert_eq!(canary.old_version, IstioVersion::parse("1.30.0"));
        assert_eq!(canary.waves, [["cluster1"], ["cluster2"]]);
        let promoted = everywhere(
            &[
                rev("default", "1.30.0-distroless"),
                rev("1-31-0", "1.31.0-distroless"),
            ],
            Some("1-31-0"),
        );
        let rollback = UpgradePhase::Rollback {
            restart_workloads: false,
            force: false,
            waves: waves(),
        };
        assert!(decide(&mesh_at("1.31.0"), &promoted, &rollback).is_ok());
    }

    #[test]
    fn a_start_from_a_distroless_image_names_the_new_revision_for_the_version() {
        let steady = everywhere(&[rev("default", "1.30.0-distroless")], None);
        let start = UpgradePhase::Start {
            to: None,
            waves: waves(),
        };
        let canary = decide(&mesh_at("1.31.0"), &steady, &start).unwrap();
        assert_eq!(canary.new, "1-31-0");
        let finished = everywhere(&[rev("1-31-0", "1.31.0-distroless")], None);
        assert!(
            decide(&mesh_at("1.31.0"), &finished, &start)
                .unwrap()
                .waves
                .is_empty()
        );
    }

    #[test]
    fn a_start_from_an_unknown_version_is_refused_naming_what_was_found() {
        let steady = everywhere(&[rev("default", "latest")], None);
        let start = UpgradePhase::Start {
            to: None,
            waves: waves(),
        };
        let Err(refused) = decide(&mesh_at("1.31.0"), &steady, &start) else {
            panic!("a start from an unknown version goes on");
        };
        let text = refused.to_string();
        assert!(
            text.contains("unknown Istio version") && text.contains("pilot:latest"),
            "{text}"
        );
    }
}
