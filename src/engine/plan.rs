//! A plan is data, and every operation is one: install, link, uninstall, a cluster leaving, a
//! token rotation. Waves run in order; inside a wave each cluster's chain of tasks runs on its
//! own (clusters in parallel up to `--jobs`); after a wave, an optional gate waits on state
//! observed across clusters (every watcher's istiod acted on a new secret, ...). A task is a
//! component's install or removal, or a step of a cross-cluster workflow (`Work`). `meshup
//! plan` prints a plan as a bash script; the commands execute the same plans (`exec.rs`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::components::{Action, ClusterCtx, Component, RunBoard, ScriptCx, Stage};
use crate::engine::run::Run;
use crate::engine::topology::Topology;
use crate::model::mesh::Mesh;
use crate::tools::runner::StepError;
use crate::tools::step::{Target, shell_quote};
use crate::trust::TrustMode;

/// A step of a cross-cluster workflow in one cluster: what a component is to install and
/// uninstall, for rotations and clusters leaving.
pub trait Work: Send + Sync {
    /// The short name progress lines use.
    fn label(&self) -> &'static str;
    /// Does it; returns the outcome. Run again after a transient failure, so it must converge.
    fn run(&self, cx: &mut ClusterCtx) -> Result<String, StepError>;
    /// Its lines in the `plan` script.
    fn script(&self, cx: &ScriptCx) -> String;
}

/// A wait between waves on state observed across clusters.
pub trait Gate: Send + Sync {
    /// What it waits for, as progress lines and the script say it.
    fn title(&self) -> String;
    /// Reads once: `None` when passed, else what it still waits for. An error that is not
    /// transient ends the wait.
    fn check(&self, run: &Run, board: &RunBoard) -> Result<Option<String>, StepError>;
    /// The wait as a commented loop for the `plan` script.
    fn script(&self, mesh: &Mesh, options: &ScriptOptions) -> String;
}

/// Several gates waited on together: passed once every one passed.
pub struct AllOf<'t>(pub Vec<Arc<dyn Gate + 't>>);

impl Gate for AllOf<'_> {
    fn title(&self) -> String {
        self.0
            .iter()
            .map(|g| g.title())
            .collect::<Vec<_>>()
            .join(", and ")
    }

    fn check(&self, run: &Run, board: &RunBoard) -> Result<Option<String>, StepError> {
        let mut waiting = Vec::new();
        for gate in &self.0 {
            waiting.extend(gate.check(run, board)?);
        }
        Ok((!waiting.is_empty()).then(|| waiting.join("; ")))
    }

    fn script(&self, mesh: &Mesh, options: &ScriptOptions) -> String {
        self.0.iter().map(|g| g.script(mesh, options)).collect()
    }
}

/// One task in one cluster.
#[derive(Clone)]
pub enum Task<'t> {
    /// A component's install or removal.
    Part {
        component: &'t dyn Component,
        action: Action,
    },
    /// A step of a workflow.
    Work(Arc<dyn Work + 't>),
}

impl Task<'_> {
    /// The short name progress lines use.
    pub fn label(&self) -> &'static str {
        match self {
            Task::Part { component, action } => component.label(*action),
            Task::Work(work) => work.label(),
        }
    }

    pub fn run(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        match self {
            Task::Part {
                component,
                action: Action::Install,
            } => component.converge(cx),
            Task::Part {
                component,
                action: Action::Remove,
            } => component.remove(cx),
            Task::Work(work) => work.run(cx),
        }
    }

    pub fn script(&self, cx: &ScriptCx) -> String {
        match self {
            Task::Part { component, action } => component.script(cx, *action),
            Task::Work(work) => work.script(cx),
        }
    }
}

/// One cluster's tasks within a wave, run in order.
#[derive(Clone)]
pub struct Chain<'t> {
    pub cluster: String,
    pub tasks: Vec<Task<'t>>,
}

impl Chain<'_> {
    pub fn labels(&self) -> Vec<&'static str> {
        self.tasks.iter().map(Task::label).collect()
    }
}

/// Chains that may run at the same time, then a gate.
#[derive(Clone)]
pub struct Wave<'t> {
    pub title: String,
    pub chains: Vec<Chain<'t>>,
    /// Waited on once every chain succeeded.
    pub gate: Option<Arc<dyn Gate + 't>>,
    /// Runs also after an earlier wave failed (not after Ctrl-C): revoking what a cluster
    /// that could not be cleaned still holds.
    pub after_failure: bool,
}

impl<'t> Wave<'t> {
    /// A wave of chains, no gate.
    pub fn new(title: impl Into<String>, chains: Vec<Chain<'t>>) -> Self {
        Wave {
            title: title.into(),
            chains,
            gate: None,
            after_failure: false,
        }
    }
}

#[derive(Clone, Default)]
pub struct Plan<'t> {
    pub waves: Vec<Wave<'t>>,
}

impl<'t> Plan<'t> {
    /// This plan, then `other`'s waves.
    pub fn then(mut self, other: Plan<'t>) -> Plan<'t> {
        self.waves.extend(other.waves);
        self
    }

    /// Every wave split into one wave per cluster, the wave's gate after the last
    /// (`install --in-place`: a minor version upgraded one cluster at a time).
    pub fn one_cluster_at_a_time(self) -> Plan<'t> {
        let mut waves = Vec::new();
        for wave in self.waves {
            let count = wave.chains.len();
            for (i, chain) in wave.chains.into_iter().enumerate() {
                waves.push(Wave {
                    title: format!("{} ({})", wave.title, chain.cluster),
                    chains: vec![chain],
                    gate: if i + 1 == count {
                        wave.gate.clone()
                    } else {
                        None
                    },
                    after_failure: wave.after_failure,
                });
            }
        }
        Plan { waves }
    }

    /// Keeps only the chains of `clusters` (and the waves left with any).
    pub fn only(mut self, clusters: &[String]) -> Plan<'t> {
        for wave in &mut self.waves {
            wave.chains.retain(|c| clusters.contains(&c.cluster));
        }
        self.waves.retain(|w| !w.chains.is_empty());
        self
    }
}

/// A wave of the components `pick` selects, each cluster's in `order`; none when empty.
fn batch<'t>(
    topology: &'t Topology,
    title: &str,
    action: Action,
    order: Order,
    pick: impl Fn(&dyn Component) -> bool,
) -> Option<Wave<'t>> {
    let chains: Vec<Chain> = topology
        .nodes
        .iter()
        .map(|node| {
            let mut tasks: Vec<Task> = node
                .components
                .iter()
                .map(|c| c.as_ref())
                .filter(|c| c.acts_on(action) && pick(*c))
                .map(|component| Task::Part { component, action })
                .collect();
            if order == Order::Backwards {
                tasks.reverse();
            }
            Chain {
                cluster: node.cluster.clone(),
                tasks,
            }
        })
        .filter(|chain| !chain.tasks.is_empty())
        .collect();
    (!chains.is_empty()).then(|| Wave::new(title, chains))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Forwards,
    Backwards,
}

const LINK_TITLE: &str = "give every cluster the remote secrets of all the others";

/// Each cluster's own components (namespace → cacerts → istio-base → istiod → restart →
/// east-west gateway → its remote secret); then the remote clusters' istiod, pointed at their
/// primary's gateway; then every cluster takes its peers' remote secrets.
pub fn install(topology: &Topology) -> Plan<'_> {
    let waves = [
        batch(
            topology,
            "install istio-base and istiod in every cluster",
            Action::Install,
            Order::Forwards,
            |c| c.stage() == Stage::Cluster,
        ),
        batch(
            topology,
            "install the remote clusters' istiod, pointed at their primary's east-west gateway",
            Action::Install,
            Order::Forwards,
            |c| c.stage() == Stage::Remote,
        ),
        batch(
            topology,
            LINK_TITLE,
            Action::Install,
            Order::Forwards,
            |c| c.stage() == Stage::Mesh,
        ),
    ];
    Plan {
        waves: waves.into_iter().flatten().collect(),
    }
}

/// Build each cluster's remote secret, then apply them where they belong.
pub fn link(topology: &Topology) -> Plan<'_> {
    let waves = [
        batch(
            topology,
            "build each cluster's remote secret from its own context",
            Action::Install,
            Order::Forwards,
            |c| c.part_of_link() && c.stage() == Stage::Cluster,
        ),
        batch(
            topology,
            LINK_TITLE,
            Action::Install,
            Order::Forwards,
            |c| c.part_of_link() && c.stage() == Stage::Mesh,
        ),
    ];
    Plan {
        waves: waves.into_iter().flatten().collect(),
    }
}

/// The install backwards, per cluster: remote secrets, the gateway's objects and release,
/// istiod, istio-base, the namespace (and the CRDs with `--purge-crds`); remote clusters
/// before the primaries that control them.
pub fn uninstall(topology: &Topology) -> Plan<'_> {
    let remotes: Vec<&str> = topology
        .nodes
        .iter()
        .filter(|n| n.remote())
        .map(|n| n.cluster.as_str())
        .collect();
    if remotes.is_empty() {
        return Plan {
            waves: batch(
                topology,
                "remove the mesh from every cluster",
                Action::Remove,
                Order::Backwards,
                |_| true,
            )
            .into_iter()
            .collect(),
        };
    }
    let mut waves = Vec::new();
    for (title, of_remotes) in [
        ("remove the mesh from the remote clusters", true),
        ("remove the mesh from the primary clusters", false),
    ] {
        if let Some(mut b) = batch(topology, title, Action::Remove, Order::Backwards, |_| true) {
            b.chains
                .retain(|chain| remotes.contains(&chain.cluster.as_str()) == of_remotes);
            if !b.chains.is_empty() {
                waves.push(b);
            }
        }
    }
    Plan { waves }
}

/// What `script` needs besides the mesh and the plan.
pub struct ScriptOptions<'a> {
    /// The mesh flags meshup was given (`--mesh-id`, `--cluster`, ...), repeated for the
    /// commands the script runs.
    pub mesh_flags: &'a [String],
    pub values_dir: &'a Path,
    pub kubeconfig: Option<&'a Path>,
    pub timeout: Duration,
    /// The chart pulls that come first (`pull::planned`); the mesh's charts then name the
    /// pulled archives.
    pub pulls: &'a [crate::tools::step::Step],
}

/// The plan as a bash script a person could run. No key material or token appears: the
/// cacerts step reads the files, the remote secrets come through a pipe.
pub fn script(mesh: &Mesh, plan: &Plan, options: &ScriptOptions) -> String {
    let mut out = String::new();
    let mut source_flag = if mesh.source == "flags" {
        String::new()
    } else {
        format!(" -f {}", shell_quote(&mesh.source))
    };
    for flag in options.mesh_flags {
        source_flag.push(' ');
        source_flag.push_str(&shell_quote(flag));
    }
    out.push_str("#!/usr/bin/env bash\n");
    out.push_str(&format!(
        "# meshup plan for mesh `{}`: {} cluster(s), namespace `{}`.\n",
        mesh.mesh_id,
        mesh.clusters.len(),
        mesh.namespace
    ));
    out.push_str("# `meshup install` runs these steps itself, clusters in parallel, skipping what is already\n# in place. Nothing here contains a token or a key.\nset -euo pipefail\n\n");
    out.push_str("# Values files (deterministic; commit and diff them).\n");
    out.push_str(&format!(
        "meshup render{source_flag} --out {}\n",
        shell_quote(&options.values_dir.display().to_string())
    ));
    if !options.pulls.is_empty() {
        out.push_str(
            "# Charts, pulled once into meshup's cache; every cluster installs those archives.
",
        );
        for step in options.pulls {
            out.push_str(&format!(
                "{}
",
                step.command_line()
            ));
        }
    }
    if mesh.trust.mode == TrustMode::Generate {
        out.push_str(&format!(
            "# Shared root of trust: a root CA and one intermediate per cluster under {}.\nmeshup certs{source_flag}\n",
            shell_quote(&mesh.trust.dir.display().to_string())
        ));
    }
    for (i, wave) in plan.waves.iter().enumerate() {
        out.push_str(&format!("\n# Phase {}: {}.\n", i + 1, wave.title));
        for chain in &wave.chains {
            let Some(cluster) = mesh.cluster(&chain.cluster) else {
                continue;
            };
            let cx = ScriptCx {
                mesh,
                cluster,
                target: Target {
                    cluster: cluster.name.clone(),
                    context: cluster.context.clone(),
                    kubeconfig: options.kubeconfig.map(Path::to_path_buf),
                },
                values_dir: options.values_dir,
                kubeconfig: options.kubeconfig,
                timeout: options.timeout,
            };
            out.push_str(&format!(
                "\n## {} (context {})\n",
                cluster.name, cluster.context
            ));
            for task in &chain.tasks {
                out.push_str(&task.script(&cx));
            }
        }
        if let Some(gate) = &wave.gate {
            out.push_str(&format!("\n## Wait: {}.\n", gate.title()));
            out.push_str(&gate.script(mesh, options));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::topology::Choices;
    use crate::testing::mesh;

    fn topology(m: &Mesh) -> Topology {
        Topology::of(m, &Choices::default())
    }

    #[test]
    fn install_runs_each_cluster_chain_before_linking() {
        let t = topology(&mesh(2, TrustMode::Generate));
        let plan = install(&t);
        assert_eq!(plan.waves.len(), 2);
        assert_eq!(
            plan.waves[0].chains[0].labels(),
            [
                "namespace",
                "cacerts",
                "istio-base",
                "istiod",
                "istiod restart",
                "remote secret"
            ]
        );
        assert_eq!(plan.waves[1].chains.len(), 2);
        assert_eq!(plan.waves[1].chains[1].labels(), ["link"]);
    }

    #[test]
    fn a_single_cluster_builds_no_remote_secret_and_trust_none_no_cacerts() {
        let t = topology(&mesh(1, TrustMode::None));
        let plan = install(&t);
        assert_eq!(
            plan.waves[0].chains[0].labels(),
            ["namespace", "istio-base", "istiod"]
        );
        // A single cluster still prunes remote secrets of clusters that left the mesh.
        assert_eq!(plan.waves[1].chains[0].labels(), ["link"]);
    }

    #[test]
    fn uninstall_reverses_the_install() {
        let m = mesh(2, TrustMode::Generate);
        let t = Topology::of(
            &m,
            &Choices {
                purge_crds: true,
                ..Choices::default()
            },
        );
        let plan = uninstall(&t);
        assert_eq!(
            plan.waves[0].chains[0].labels(),
            [
                "remote secrets",
                "revision tags",
                "istiod",
                "istio-base",
                "namespace",
                "CRDs"
            ]
        );
        let without = topology(&m);
        assert!(
            !uninstall(&without).waves[0].chains[0]
                .labels()
                .contains(&"CRDs")
        );
    }

    #[test]
    fn link_builds_then_applies() {
        let t = topology(&mesh(2, TrustMode::Generate));
        let plan = link(&t);
        assert_eq!(plan.waves.len(), 2);
        assert_eq!(plan.waves[0].chains[0].labels(), ["remote secret"]);
        assert_eq!(plan.waves[1].chains[0].labels(), ["link"]);
        let single = topology(&mesh(1, TrustMode::None));
        assert_eq!(link(&single).waves.len(), 1);
    }

    #[test]
    fn the_script_pipes_every_ordered_pair() {
        let m = mesh(3, TrustMode::Generate);
        let t = topology(&m);
        let text = script(
            &m,
            &install(&t),
            &ScriptOptions {
                values_dir: Path::new("meshup-values"),
                mesh_flags: &[],
                kubeconfig: None,
                timeout: Duration::from_secs(300),
                pulls: &[],
            },
        );
        let pipes: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("meshup remote-secret"))
            .collect();
        assert_eq!(pipes.len(), 6, "{text}");
        assert!(text.contains("meshup remote-secret --context kind-cluster1 --name cluster1 --namespace istio-system --server https://172.18.0.2:6443 \\\n  | kubectl apply --server-side --force-conflicts --field-manager meshup --filename - --context kind-cluster2"), "{text}");
        // Base before istiod in each cluster.
        let base = text.find("upgrade --install istio-base base").unwrap();
        let istiod = text.find("upgrade --install istiod istiod").unwrap();
        assert!(base < istiod);
        assert!(text.starts_with("#!/usr/bin/env bash\n"));
        assert!(text.contains("set -euo pipefail"));
    }

    #[test]
    fn a_mesh_from_flags_is_repeated_as_flags_in_the_script() {
        let mut m = mesh(2, TrustMode::None);
        m.source = "flags".into();
        let flags: Vec<String> = [
            "--mesh-id",
            "mesh1",
            "--cluster",
            "cluster1=kind-cluster1",
            "--cluster",
            "cluster2=kind-cluster2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let t = topology(&m);
        let text = script(
            &m,
            &install(&t),
            &ScriptOptions {
                values_dir: Path::new("v"),
                mesh_flags: &flags,
                kubeconfig: None,
                timeout: Duration::from_secs(60),
                pulls: &[],
            },
        );
        assert!(text.contains(
            "meshup render --mesh-id mesh1 --cluster cluster1=kind-cluster1 --cluster cluster2=kind-cluster2 --out v\n"
        ), "{text}");
    }

    #[test]
    fn install_script_snapshot() {
        let m = mesh(2, TrustMode::Generate);
        let t = topology(&m);
        insta::assert_snapshot!(script(
            &m,
            &install(&t),
            &ScriptOptions {
                values_dir: Path::new("meshup-values"),
                mesh_flags: &[],
                kubeconfig: Some(Path::new("/home/op/kubeconfig")),
                timeout: Duration::from_secs(300),
                pulls: &[],
            }
        ));
    }

    #[test]
    fn uninstall_script_snapshot() {
        let m = mesh(2, TrustMode::None);
        let t = Topology::of(
            &m,
            &Choices {
                purge_crds: true,
                ..Choices::default()
            },
        );
        insta::assert_snapshot!(script(
            &m,
            &uninstall(&t),
            &ScriptOptions {
                values_dir: Path::new("meshup-values"),
                mesh_flags: &[],
                kubeconfig: None,
                timeout: Duration::from_secs(60),
                pulls: &[],
            }
        ));
    }
}
