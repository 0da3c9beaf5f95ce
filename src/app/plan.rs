//! `meshup plan`: any operation as the bash script an operator could review and run.

use super::output::{print_stdout, warn_about_mesh};
use super::prelude::*;
use super::session::*;

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
    if args.operation == Operation::Upgrade {
        if let Some(to) = &args.to {
            mesh.version = Some(to.clone());
        }
        let plan = upgrade_plan(&mesh, args)?;
        return print_script(global, mesh_args, args, &mesh, &plan, &[]);
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
        Operation::Upgrade => unreachable!("handled above"),
    };
    print_script(global, mesh_args, args, &mesh, &plan, &pulls)
}

fn print_script(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    args: &PlanArgs,
    mesh: &Mesh,
    plan: &plan::Plan,
    pulls: &[crate::tools::step::Step],
) -> Result<(), Error> {
    let script = plan::script(
        mesh,
        plan,
        &plan::ScriptOptions {
            values_dir: &args.values_dir,
            mesh_flags: &mesh_args.override_flags(),
            kubeconfig: global.kubeconfig.as_deref(),
            timeout: global.timeout,
            pulls,
        },
    );
    print_stdout(&script)
}

/// `meshup plan upgrade PHASE [CLUSTER...]`: the phase's waves and gates, from the revision
/// the mesh file (or `--from`) says the clusters run; contacts no cluster.
fn upgrade_plan(mesh: &Mesh, args: &PlanArgs) -> Result<plan::Plan<'static>, Error> {
    let source = "flags";
    let Some((phase, clusters)) = args.leaving.split_first() else {
        return Err(InputError::new(
            source,
            "`meshup plan upgrade` needs a phase: start, promote, finish or rollback",
        )
        .into());
    };
    check_cluster_names(mesh, "CLUSTER", clusters)?;
    let Some(version) = args.to.clone().or(mesh.chart("istiod").version) else {
        return Err(InputError::new(
            source,
            "the version to upgrade to is not known: set `istio.version` or pass --to",
        )
        .into());
    };
    let old = args
        .from
        .clone()
        .or_else(|| mesh.revision.clone())
        .unwrap_or_else(|| crate::observe::revisions::DEFAULT_TAG.to_string());
    let chosen: Vec<String> = mesh
        .clusters
        .iter()
        .filter(|c| clusters.is_empty() || clusters.contains(&c.name))
        .map(|c| c.name.clone())
        .collect();
    let waves = chosen
        .chunks(args.wave_size.max(1) as usize)
        .map(<[String]>::to_vec)
        .collect();
    let mut canary = crate::flows::upgrade::Canary::new(mesh, &old, &version, waves);
    canary.restart_workloads = args.restart_workloads;
    Ok(match phase.as_str() {
        "start" => canary.start(),
        "promote" => canary.promote(),
        "finish" => canary.finish(),
        "rollback" => canary.rollback(),
        other => {
            return Err(InputError::new(
                source,
                format!("`{other}` is not an upgrade phase: start, promote, finish or rollback"),
            )
            .into());
        }
    })
}
