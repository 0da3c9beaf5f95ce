//! Fixtures shared by unit tests.

use std::time::Duration;

use serde_yaml::Mapping;

use crate::components::{Action, ClusterNotes, Component, RunBoard};
use crate::engine::run::Run;
use crate::model::chart::Charts;
use crate::model::mesh::{Cluster, Mesh, Trust};
use crate::tools::reporter::{Mode, Reporter};
use crate::tools::runner::{Output, RecordingRunner, StepError};
use crate::tools::step::Step;
use crate::trust::TrustMode;

/// A mesh of `n` clusters `clusterI` on contexts `kind-clusterI`; cluster1 has an `apiServer`.
pub fn mesh(n: usize, trust: TrustMode) -> Mesh {
    Mesh {
        source: "mesh.yaml".into(),
        mesh_id: "mesh1".into(),
        namespace: "istio-system".into(),
        version: Some("1.28.1".into()),
        charts: Charts::Repo("https://istio-release.storage.googleapis.com/charts".into()),
        revision: None,
        values: Mapping::new(),
        clusters: (1..=n)
            .map(|i| Cluster {
                name: format!("cluster{i}"),
                context: format!("kind-cluster{i}"),
                server: format!("https://172.18.0.{}:6443", i + 1),
                server_overridden: i == 1,
                network: Some("network1".into()),
                values: Mapping::new(),
                role: Default::default(),
                gateway: Default::default(),
            })
            .collect(),
        trust: Trust {
            mode: trust,
            dir: "meshup-certs".into(),
        },
        dataplane: Default::default(),
        gateway_api_crds: None,
    }
}

/// How a unit test reaches its clusters: `runner` answers, `reporter` prints, two at a time,
/// 5 s per call, the default retries, no locks and no snapshots (override with `..`).
pub fn run<'a>(
    mesh: &'a Mesh,
    runner: &'a dyn crate::tools::runner::Runner,
    reporter: &'a Reporter,
) -> Run<'a> {
    Run {
        mesh,
        runner,
        reporter,
        jobs: 2,
        timeout: Duration::from_secs(5),
        kubeconfig: None,
        retry: crate::engine::run::Retry::DEFAULT,
        locks: None,
        caches: None,
    }
}

/// A successful call that printed `stdout`.
pub fn ok(stdout: &str) -> Output {
    Output {
        code: Some(0),
        stdout: stdout.into(),
        stderr: String::new(),
    }
}

/// The same answer to every call.
pub fn answer(output: Output) -> impl Fn(&Step) -> Output + Send + Sync {
    move |_: &Step| output.clone()
}

/// Runs one component's `action` in cluster1 of a two-cluster mesh against a recording
/// runner answering with `respond`; returns the outcome and the command lines run.
pub fn run_component(
    component: &dyn Component,
    action: Action,
    respond: impl Fn(&Step) -> Output + Send + Sync,
) -> (Result<String, StepError>, Vec<String>) {
    let m = mesh(2, TrustMode::None);
    let runner = RecordingRunner::new(respond);
    let reporter = Reporter::new(Mode::Json, true, false);
    let run = Run {
        mesh: &m,
        runner: &runner,
        reporter: &reporter,
        jobs: 1,
        timeout: Duration::from_secs(5),
        kubeconfig: None,
        retry: crate::engine::run::Retry::DEFAULT,
        locks: None,
        caches: Default::default(),
    };
    let board = RunBoard::default();
    let mut memo = ClusterNotes::default();
    let outcome = run.in_cluster(&m.clusters[0], &mut memo, &board, |cx| match action {
        Action::Install => component.converge(cx),
        Action::Remove => component.remove(cx),
    });
    (outcome, runner.command_lines())
}

/// Whether a step changes a cluster (by its verb).
pub fn writes(step: &Step) -> bool {
    let word = |i: usize| step.args.get(i).map(String::as_str).unwrap_or_default();
    match (word(0), word(1)) {
        ("rollout", sub) => sub == "restart",
        (verb, _) => [
            "apply",
            "create",
            "delete",
            "upgrade",
            "uninstall",
            "install",
        ]
        .contains(&verb),
    }
}
