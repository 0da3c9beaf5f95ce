//! `meshup diff`: what `install` would change in each cluster, and what drifted, without
//! changing anything (no lock either: taking one is a write). Install's guards first: what
//! install would refuse, diff refuses with install's message and exit code.

use super::install::guard;
use super::output::{print_json, print_stdout};
use super::prelude::*;
use super::session::*;
use crate::checks::diff;
use crate::flows::upgrade;

pub(super) fn diff(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &DiffArgs,
) -> Result<(), Error> {
    let mut session = Session::open(global, mesh_args, reporter)?;
    check_cluster_names(&session.mesh, "CLUSTER", &args.clusters)?;
    session.tools_and_charts()?;
    let trust = trust_on_disk(&session.mesh)?;
    let report = compare(&session, trust.as_ref(), &args.clusters)?;
    if reporter.mode() == Mode::Json {
        print_json(&report)?;
    } else {
        print_stdout(&diff::render_text(&report))?;
    }
    for cluster in report.clusters.iter().filter(|c| c.error.is_some()) {
        reporter.line(&format!(
            "error: `{}` could not be compared: {}",
            cluster.cluster,
            cluster.error.as_deref().unwrap_or_default()
        ));
    }
    if report.failed {
        Err(Error::Reported)
    } else if report.changes {
        Err(Error::Changes)
    } else {
        Ok(())
    }
}

/// Install's guards, then the comparison, for the clusters named in `only` (all when empty).
pub(super) fn compare(
    session: &Session,
    trust: Option<&Trust>,
    only: &[String],
) -> Result<diff::Report, Error> {
    let found = upgrade::running_everywhere(&session.read());
    let (_, settled) = guard(&session.mesh, &found, false)?;
    let mut mesh = session.mesh.clone();
    if mesh.revision.is_none() {
        mesh.revision = settled;
    }
    let run = Run {
        mesh: &mesh,
        ..session.read()
    };
    let choices = Choices {
        trust,
        ..Choices::default()
    };
    let topology = Topology::of(&mesh, &choices);
    Ok(diff::collect(&run, &topology, only))
}

/// The mesh's CA material as it is in `trust.dir`, read without writing anything: `None`
/// when trust is off or some cluster's files are not there yet (install makes them).
pub(super) fn trust_on_disk(mesh: &Mesh) -> Result<Option<Trust>, Error> {
    if mesh.trust.mode == TrustMode::None {
        return Ok(None);
    }
    let dir = &mesh.trust.dir;
    let complete = mesh.clusters.iter().all(|c| {
        crate::trust::CLUSTER_FILES
            .iter()
            .all(|f| dir.join(&c.name).join(f).is_file())
    });
    if !complete {
        return Ok(None);
    }
    let clusters: Vec<(&str, &str)> = mesh
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), mesh.namespace.as_str()))
        .collect();
    Ok(Some(trust::load_provided(dir, &clusters)?))
}
