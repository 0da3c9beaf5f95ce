//! `meshup link [--rotate ...]`: the link plan, then the rotations asked for.

use super::prelude::*;
use super::session::*;

pub(super) fn link(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &LinkArgs,
) -> Result<(), Error> {
    let mut session = Session::open(global, mesh_args, reporter)?;
    if let Some(names) = &args.rotate {
        check_cluster_names(&session.mesh, "--rotate", names)?;
    }
    session.require_tools()?;
    session.settle_revision();
    let topology = Topology::of(&session.mesh, &Choices::default());
    let plan = plan::link(&topology).then(rotation_plan(
        &session.mesh,
        &topology,
        args.rotate.as_deref(),
    ));
    let summary = session.locked("link", |run| {
        let summary = exec::execute(run, &plan);
        after_link(run, &topology, summary, args.prune)
    })?;
    finish(reporter, "link", &summary)
}
