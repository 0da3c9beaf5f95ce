//! `meshup uninstall CLUSTER...`: taking clusters out of a live mesh, as one plan. In order:
//! their remote secrets go from every remaining cluster; Istio is uninstalled from them (as
//! `uninstall` does for the whole mesh, their own remote secrets first); then the reader tokens
//! of every remaining cluster they held are rotated (`rotate.rs`), so their copies stop
//! working. The rotation waves run also when a leaving cluster could not be cleaned (it may be
//! gone for good); a rotation still revokes only what its watchers were seen to replace.

use std::sync::Arc;

use crate::components::{ClusterCtx, ScriptCx};
use crate::engine::plan::{self, Chain, Plan, Task, Wave, Work};
use crate::engine::topology::{Choices, Topology};
use crate::flows::rotate;
use crate::model::mesh::Mesh;
use crate::tools::kubectl;
use crate::tools::remote_secret;
use crate::tools::runner::StepError;

/// The plan that takes `leaving` (names of `mesh`'s clusters) out of the live mesh; `full` is
/// the whole mesh's topology, `rest` the mesh without them.
pub fn plan<'t>(
    full: &'t Topology,
    rest: &Mesh,
    leaving: &[String],
    choices: &Choices,
) -> Plan<'t> {
    let unlink: Arc<dyn Work> = Arc::new(Unlink {
        leaving: leaving.to_vec(),
    });
    let unlinking = Wave::new(
        format!(
            "take {}'s remote secrets out of the other clusters",
            leaving.join(", ")
        ),
        rest.clusters
            .iter()
            .map(|c| Chain {
                cluster: c.name.clone(),
                tasks: vec![Task::Work(unlink.clone())],
            })
            .collect(),
    );
    let mut removal = plan::uninstall(full).only(leaving);
    for wave in &mut removal.waves {
        let names: Vec<&str> = wave.chains.iter().map(|c| c.cluster.as_str()).collect();
        wave.title = format!("remove the mesh from {}", names.join(", "));
    }
    // What the leaving clusters held: the tokens of the clusters they watched.
    let held: Vec<&String> = leaving
        .iter()
        .flat_map(|l| full.watches.get(l).into_iter().flatten())
        .collect();
    let rest_topology = Topology::of(rest, choices);
    let sources: Vec<_> = rest
        .clusters
        .iter()
        .filter(|c| held.contains(&&c.name))
        .collect();
    let mut rotation = rotate::plan(rest, &rest_topology, &sources);
    for wave in &mut rotation.waves {
        wave.after_failure = true;
    }
    Plan {
        waves: vec![unlinking],
    }
    .then(removal)
    .then(rotation)
}

/// The mesh without `leaving`.
pub fn rest(mesh: &Mesh, leaving: &[String]) -> Mesh {
    Mesh {
        clusters: mesh
            .clusters
            .iter()
            .filter(|c| !leaving.contains(&c.name))
            .cloned()
            .collect(),
        ..mesh.clone()
    }
}

/// The leaving clusters' remote secrets, deleted from a remaining cluster.
struct Unlink {
    leaving: Vec<String>,
}

impl Unlink {
    fn names(&self) -> Vec<String> {
        self.leaving
            .iter()
            .map(|l| remote_secret::secret_name(l))
            .collect()
    }
}

impl Work for Unlink {
    fn label(&self) -> &'static str {
        "remote secrets of leaving clusters"
    }

    fn run(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let output = cx.live.run(&kubectl::delete(
            cx.target(),
            "secrets",
            &self.names(),
            Some(&cx.mesh.namespace),
            cx.timeout(),
        ))?;
        Ok(format!(
            "{} removed",
            kubectl::deleted_count(&output.stdout)
        ))
    }

    fn script(&self, cx: &ScriptCx) -> String {
        format!(
            "{}\n",
            kubectl::delete(
                &cx.target,
                "secrets",
                &self.names(),
                Some(&cx.mesh.namespace),
                cx.timeout
            )
            .command_line()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::mesh;
    use crate::trust::TrustMode;

    #[test]
    fn leaving_unlinks_removes_then_rotates_what_it_held_even_after_a_failure() {
        let m = mesh(3, TrustMode::None);
        let choices = Choices::default();
        let full = Topology::of(&m, &choices);
        let leaving = vec!["cluster3".to_string()];
        let rest = rest(&m, &leaving);
        let plan = plan(&full, &rest, &leaving, &choices);
        let chains = |i: usize| -> Vec<String> {
            plan.waves[i]
                .chains
                .iter()
                .map(|c| format!("{} {}", c.cluster, c.labels().join(",")))
                .collect()
        };
        assert_eq!(
            chains(0),
            [
                "cluster1 remote secrets of leaving clusters",
                "cluster2 remote secrets of leaving clusters"
            ]
        );
        assert_eq!(
            chains(1),
            ["cluster3 remote secrets,revision tags,istiod,istio-base,namespace"]
        );
        // cluster3 held cluster1's and cluster2's tokens: two rotations of three waves.
        assert_eq!(plan.waves.len(), 2 + 6);
        assert_eq!(chains(2), ["cluster1 new reader token"]);
        assert_eq!(chains(3), ["cluster2 new remote secret"]);
        assert!(plan.waves[3].gate.is_some());
        assert!(!plan.waves[1].after_failure);
        assert!(plan.waves[2..].iter().all(|w| w.after_failure));
    }
}
