//! `meshup plan`: any operation as the bash script an operator could review and run.

use super::prelude::*;

/// `meshup plan [OPERATION] ...`: the operation's plan as a bash script; contacts no cluster.
pub(super) fn plan(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &PlanArgs,
) -> Result<(), Error> {
    let mut mesh = mesh::load(mesh_args, None)?;
    warn_about_mesh(reporter, &mesh);
    if let Some(names) = &args.rotate {
        check_cluster_names(&mesh, "--rotate", names)?;
    }
    check_cluster_names(&mesh, "CLUSTER", &args.leaving)?;
    let pulls = match pull::planned(
        &mesh.charts,
        mesh.version.as_deref(),
        &mesh.charts_needed(),
        &pull::cache_dir(),
    ) {
        Some((pulls, charts)) if args.operation == Operation::Install => {
            mesh.charts = charts;
            pulls
        }
        _ => Vec::new(),
    };
    let choices = Choices {
        purge_crds: args.purge_crds,
        ..Choices::default()
    };
    let topology = Topology::of(&mesh, &choices);
    let everyone = mesh.clusters.iter().all(|c| args.leaving.contains(&c.name));
    let rest = leave::rest(&mesh, &args.leaving);
    let plan = match args.operation {
        Operation::Install => {
            plan::install(&topology).then(rotation_plan(&mesh, &topology, args.rotate.as_deref()))
        }
        Operation::Link => {
            plan::link(&topology).then(rotation_plan(&mesh, &topology, args.rotate.as_deref()))
        }
        Operation::Uninstall if args.leaving.is_empty() || everyone => plan::uninstall(&topology),
        Operation::Uninstall => {
            check_primaries_leave_with_remotes(&mesh, &args.leaving)?;
            leave::plan(&topology, &rest, &args.leaving, &choices)
        }
    };
    let script = plan::script(
        &mesh,
        &plan,
        &plan::ScriptOptions {
            values_dir: &args.values_dir,
            mesh_flags: &mesh_args.override_flags(),
            kubeconfig: global.kubeconfig.as_deref(),
            timeout: global.timeout,
            pulls: &pulls,
        },
    );
    print_stdout(&script)
}
