//! `meshup uninstall CLUSTER...`: taking clusters out of a live mesh. In order: their remote
//! secrets go from every remaining cluster; every remote secret in them goes; Istio is
//! uninstalled from them (as `uninstall` does for the whole mesh); then the reader tokens of
//! every remaining cluster they held are rotated, so their copies stop working (also when a
//! leaving cluster could not be cleaned: it may be gone for good).

use crate::exec::{self, Run, Summary, parallel};
use crate::kubectl;
use crate::mesh::{Cluster, Mesh};
use crate::plan;
use crate::remote_secret;
use crate::rotate::{self, Rotated};
use crate::runner::{StepError, run_ok};
use crate::topology::{Choices, Topology};

/// What taking clusters out did.
pub struct Left {
    /// Remote secrets of the leaving clusters removed from the remaining ones, per cluster.
    pub unlinked: Vec<(String, Result<usize, StepError>)>,
    /// The leaving clusters' uninstall.
    pub removed: Summary,
    /// The remaining clusters' rotated reader tokens.
    pub rotated: Vec<Result<Rotated, StepError>>,
}

/// Takes `leaving` (names of `mesh`'s clusters) out of the live mesh.
pub fn leave(run: &Run, leaving: &[String], choices: &Choices) -> Left {
    let mesh = run.mesh;
    let full = Topology::of(mesh, choices);
    let remaining: Vec<&Cluster> = mesh
        .clusters
        .iter()
        .filter(|c| !leaving.contains(&c.name))
        .collect();
    let names: Vec<String> = leaving
        .iter()
        .map(|l| remote_secret::secret_name(l))
        .collect();
    let unlinked: Vec<(String, Result<usize, StepError>)> = parallel(run.jobs, &remaining, |c| {
        let step = kubectl::delete(
            &run.target(c),
            "secrets",
            &names,
            Some(&mesh.namespace),
            run.timeout,
        );
        let result = run_ok(run.runner, &step).map(|out| kubectl::deleted_count(&out.stdout));
        match &result {
            Ok(n) => run.reporter.info(&format!(
                "[{}] removed {n} remote secret(s) of {}",
                c.name,
                leaving.join(", ")
            )),
            Err(e) => run.reporter.line(&format!("error: {e}")),
        }
        (c.name.clone(), result)
    });
    if unlinked.iter().any(|(_, r)| r.is_err()) {
        return Left {
            unlinked,
            removed: Summary {
                ok: false,
                interrupted: false,
                departed: Vec::new(),
                clusters: Vec::new(),
            },
            rotated: Vec::new(),
        };
    }

    let mut removal = plan::uninstall(&full);
    for batch in &mut removal.batches {
        batch
            .chains
            .retain(|chain| leaving.contains(&chain.cluster));
    }
    removal.batches.retain(|b| !b.chains.is_empty());
    let removed = exec::execute(run, &removal);
    let removed = Summary {
        clusters: removed
            .clusters
            .into_iter()
            .filter(|c| leaving.contains(&c.cluster))
            .collect(),
        ..removed
    };
    // A leaving cluster that could not be cleaned (it may be gone for good) still must not
    // keep working tokens: the rotation runs all the same, unless the user stopped the run.
    if removed.interrupted {
        return Left {
            unlinked,
            removed,
            rotated: Vec::new(),
        };
    }

    // What the leaving clusters held: the tokens of the clusters they watched.
    let held: Vec<&String> = leaving
        .iter()
        .flat_map(|l| full.watches.get(l).into_iter().flatten())
        .collect();
    let rest = Mesh {
        clusters: remaining.iter().map(|c| (*c).clone()).collect(),
        ..mesh.clone()
    };
    let rest_topology = Topology::of(&rest, choices);
    let sources: Vec<&Cluster> = rest
        .clusters
        .iter()
        .filter(|c| held.contains(&&c.name))
        .collect();
    let rest_run = Run {
        mesh: &rest,
        ..run.clone()
    };
    let rotated = rotate::rotate(&rest_run, &rest_topology, &sources);
    Left {
        unlinked,
        removed,
        rotated,
    }
}
