//! `meshup uninstall [CLUSTER...]`: the whole mesh, or clusters taken out of a live mesh.

use super::prelude::*;
use super::session::*;

pub(super) fn uninstall(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &UninstallArgs,
) -> Result<(), Error> {
    let mut session = Session::open(global, mesh_args, reporter)?;
    let mesh = &session.mesh;
    check_cluster_names(mesh, "CLUSTER", &args.leaving)?;
    let everyone = mesh.clusters.iter().all(|c| args.leaving.contains(&c.name));
    let leaving: Vec<String> = if everyone {
        Vec::new()
    } else {
        args.leaving.clone()
    };
    check_primaries_leave_with_remotes(mesh, &leaving)?;
    if !args.yes && std::io::stdin().is_terminal() && !confirm(mesh, &leaving, args.purge_crds)? {
        reporter.line("nothing was changed");
        return Ok(());
    }
    session.require_tools()?;
    session.settle_revision();
    let mesh = &session.mesh;
    let choices = Choices {
        purge_crds: args.purge_crds,
        ..Choices::default()
    };
    if leaving.is_empty() {
        let topology = Topology::of(mesh, &choices);
        let summary = session.locked("uninstall", |run| {
            exec::execute(run, &plan::uninstall(&topology))
        })?;
        return finish(reporter, "uninstall", &summary);
    }
    let full = Topology::of(mesh, &choices);
    let rest = leave::rest(mesh, &leaving);
    let plan = leave::plan(&full, &rest, &leaving, &choices);
    let summary = session.locked("uninstall", |run| exec::execute(run, &plan))?;
    let (gone, it) = if leaving.len() == 1 {
        (format!("`{}` is out of the mesh", leaving[0]), "it")
    } else {
        (
            format!("{} are out of the mesh", leaving.join(", ")),
            "them",
        )
    };
    let command = format!("uninstall {}", leaving.join(" "));
    finish(reporter, &command, &summary).inspect(|()| {
        reporter.line(&format!(
            "{gone}; remove {it} from {} so the next install does not bring {it} back",
            mesh.source
        ));
    })
}
