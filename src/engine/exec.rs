//! The engine: every operation's plan runs here. Waves in order, each cluster's chain in
//! parallel (up to `--jobs`), each task retried after a transient failure, the per-cluster
//! locks checked before each task, then the wave's gate waited on. A failing chain stops only
//! itself; the wave finishes, then the run stops (but for waves that run after a failure) and
//! reports.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::components::{ClusterNotes, Rotation, RunBoard};
use crate::engine::plan::{Chain, Gate, Plan};
pub use crate::engine::run::{Caches, Retry, Run, parallel};
use crate::tools::reporter::Reporter;
use crate::tools::runner::{self, StepError};

/// How one task ended.
#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: &'static str,
    pub outcome: String,
    pub seconds: f64,
}

/// One cluster's part of a run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ClusterResult {
    pub cluster: String,
    pub ok: bool,
    pub tasks: Vec<TaskResult>,
    /// The failure, if any (argv and stderr tail; never secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Tasks that did not run because of a failure.
    #[serde(rename = "notRun", skip_serializing_if = "Vec::is_empty")]
    pub not_run: Vec<&'static str>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub ok: bool,
    pub interrupted: bool,
    pub clusters: Vec<ClusterResult>,
    /// Clusters no longer in the mesh file whose remote secrets were removed from the peers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub departed: Vec<String>,
    /// Waits between waves that did not pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateResult>,
    /// Reader tokens replaced by this run.
    #[serde(skip)]
    pub rotated: Vec<Rotation>,
}

impl Summary {
    /// A run with nothing to do.
    pub fn nothing() -> Summary {
        Summary {
            ok: true,
            interrupted: false,
            clusters: Vec::new(),
            departed: Vec::new(),
            gates: Vec::new(),
            rotated: Vec::new(),
        }
    }

    /// This run, then `later`'s (one command that ran two plans).
    pub fn and(mut self, later: Summary) -> Summary {
        for result in later.clusters {
            match self
                .clusters
                .iter_mut()
                .find(|c| c.cluster == result.cluster)
            {
                Some(mine) => {
                    mine.ok &= result.ok;
                    mine.tasks.extend(result.tasks);
                    mine.not_run.extend(result.not_run);
                    mine.error = mine.error.take().or(result.error);
                }
                None => self.clusters.push(result),
            }
        }
        self.ok &= later.ok;
        self.interrupted |= later.interrupted;
        self.gates.extend(later.gates);
        self.rotated.extend(later.rotated);
        self
    }
}

/// A gate that did not pass.
#[derive(Debug, Clone, Serialize)]
pub struct GateResult {
    pub gate: String,
    pub error: String,
}

/// Runs the plan and reports as it goes. Remote secrets stay in memory only.
pub fn execute(run: &Run, plan: &Plan) -> Summary {
    let mut results: BTreeMap<String, ClusterResult> = run
        .mesh
        .clusters
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                ClusterResult {
                    cluster: c.name.clone(),
                    ok: true,
                    ..ClusterResult::default()
                },
            )
        })
        .collect();
    let board = RunBoard::default();
    let notes: Mutex<BTreeMap<String, ClusterNotes>> = Mutex::new(BTreeMap::new());
    let mut failed = false;
    let mut interrupted = false;

    let mut gates = Vec::new();
    for (index, wave) in plan.waves.iter().enumerate() {
        if interrupted || (failed && !wave.after_failure) {
            for chain in &wave.chains {
                if let Some(result) = results.get_mut(&chain.cluster) {
                    result.not_run.extend(chain.labels());
                }
            }
            continue;
        }
        run.reporter.info(&format!(
            "phase {}/{}: {}",
            index + 1,
            plan.waves.len(),
            wave.title
        ));
        let outcomes = parallel(run.jobs, &wave.chains, |chain| {
            run_chain(run, chain, &notes, &board)
        });
        let mut wave_ok = true;
        for (chain, outcome) in wave.chains.iter().zip(outcomes) {
            let result = results
                .get_mut(&chain.cluster)
                .expect("every chain is a cluster");
            result.tasks.extend(outcome.done);
            result.not_run.extend(outcome.not_run);
            if let Some(error) = outcome.error {
                wave_ok = false;
                result.ok = false;
                if error.is_interrupted() {
                    interrupted = true;
                } else {
                    failed = true;
                    run.reporter.line(&format!("error: {error}"));
                }
                result.error = Some(error.to_string());
            }
        }
        if let (true, Some(gate)) = (wave_ok, &wave.gate) {
            match wait_for(run, &board, gate.as_ref()) {
                Ok(()) => {}
                Err(e) if e.is_interrupted() => interrupted = true,
                Err(e) => {
                    failed = true;
                    run.reporter.line(&format!("error: {e}"));
                    gates.push(GateResult {
                        gate: gate.title(),
                        error: e.to_string(),
                    });
                }
            }
        }
    }
    Summary {
        ok: !failed && !interrupted,
        interrupted,
        clusters: results.into_values().collect(),
        departed: board
            .departed
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .collect(),
        gates,
        rotated: board
            .rotations
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_values()
            .filter(|r| r.revoked)
            .collect(),
    }
}

/// What one cluster's chain did in a wave.
#[derive(Default)]
struct ChainOutcome {
    done: Vec<TaskResult>,
    /// The failure that stopped the chain.
    error: Option<StepError>,
    /// The tasks after it.
    not_run: Vec<&'static str>,
}

/// One cluster's chain of a wave: its tasks in order (each after checking the cluster's lock,
/// with retries), then the applies still waiting. A failure skips the rest. The cluster's
/// notes carry over from the chain of the wave before and on to the next.
fn run_chain(
    run: &Run,
    chain: &Chain<'_>,
    notes: &Mutex<BTreeMap<String, ClusterNotes>>,
    board: &RunBoard,
) -> ChainOutcome {
    let Some(cluster) = run.mesh.cluster(&chain.cluster) else {
        return ChainOutcome::default();
    };
    let mut memo = notes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&cluster.name)
        .unwrap_or_default();
    let chain_start = Instant::now();
    let mut outcome = ChainOutcome::default();
    for task in &chain.tasks {
        let label = task.label();
        if outcome.error.is_some() {
            outcome.not_run.push(label);
            continue;
        }
        if let Some(Err(e)) = run.locks.map(|l| l.check(&cluster.name)) {
            outcome.error = Some(e);
            outcome.not_run.push(label);
            continue;
        }
        run.reporter.started(&cluster.name, label);
        let start = Instant::now();
        let result = with_retries(run, &cluster.name, label, &mut memo, |memo| {
            run.in_cluster(cluster, memo, board, |cx| task.run(cx))
        });
        let said = match result {
            Ok(said) => said,
            Err(e) => {
                outcome.error = Some(e);
                "failed".to_string()
            }
        };
        run.reporter
            .finished(&cluster.name, label, &said, start.elapsed());
        outcome.done.push(TaskResult {
            task: label,
            outcome: said,
            seconds: round(start.elapsed()),
        });
    }
    if outcome.error.is_none() {
        // Applies still waiting go out before the chain counts as done.
        let flushed = with_retries(run, &cluster.name, "apply", &mut memo, |memo| {
            run.in_cluster(cluster, memo, board, |cx| {
                cx.live.flush().map(|()| String::new())
            })
        });
        outcome.error = flushed.err();
    }
    let summary = format!(
        "{} ({:.1}s)",
        if outcome.error.is_some() {
            "failed"
        } else {
            "done"
        },
        chain_start.elapsed().as_secs_f64()
    );
    run.reporter.cluster_done(&cluster.name, &summary);
    notes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(cluster.name.clone(), memo);
    outcome
}

/// Runs `attempt` until it succeeds, fails for a reason that is not transient, or has been
/// retried `--retries` times (capped exponential backoff, each retry printed with its cause).
/// What failed may have changed the cluster, so what was read of it is forgotten first.
fn with_retries(
    run: &Run,
    cluster: &str,
    label: &str,
    memo: &mut ClusterNotes,
    mut attempt: impl FnMut(&mut ClusterNotes) -> Result<String, StepError>,
) -> Result<String, StepError> {
    let mut tries = 0;
    loop {
        let result = attempt(memo);
        let cause = result.as_ref().err().and_then(StepError::transient_cause);
        match cause {
            Some(cause) if tries < run.retry.times => {
                tries += 1;
                let delay = run.retry.delay(tries);
                run.reporter.line(&format!(
                    "[{cluster}] {label}: retry {tries}/{} in {}: {cause}",
                    run.retry.times,
                    human(delay)
                ));
                memo.releases = None;
                if let Some(caches) = &run.caches {
                    caches.of(cluster).forget();
                }
                runner::sleep(delay)?;
            }
            _ => return result,
        }
    }
}

/// How often a gate reads the clusters again.
const GATE_POLL: Duration = Duration::from_millis(500);

/// Waits until `gate` passes, bounded by `--timeout`; transient read failures are waited
/// through (each cause printed once), others end the wait.
fn wait_for(run: &Run, board: &RunBoard, gate: &dyn Gate) -> Result<(), StepError> {
    let title = gate.title();
    run.reporter.info(&format!("waiting: {title}"));
    let start = Instant::now();
    let mut said: Option<String> = None;
    loop {
        let waiting = match gate.check(run, board) {
            Ok(None) => {
                run.reporter.info(&format!(
                    "done waiting ({:.1}s): {title}",
                    start.elapsed().as_secs_f64()
                ));
                return Ok(());
            }
            Ok(Some(waiting)) => waiting,
            Err(e) => match e.transient_cause() {
                Some(cause) => format!("reading again after {cause}"),
                None => return Err(e),
            },
        };
        if start.elapsed() >= run.timeout {
            return Err(StepError::other(
                "",
                format!(
                    "gave up after {}s waiting for: {title} ({waiting})",
                    run.timeout.as_secs()
                ),
                None,
            ));
        }
        if said.as_deref() != Some(waiting.as_str()) {
            run.reporter.info(&format!("  {waiting}"));
            said = Some(waiting);
        }
        runner::sleep(GATE_POLL)?;
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn round(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// Prints the per-cluster summary (human and plain modes).
pub fn print_summary(reporter: &Reporter, command: &str, summary: &Summary) {
    for result in &summary.clusters {
        let done: Vec<String> = result
            .tasks
            .iter()
            .map(|t| format!("{} {}", t.task, t.outcome))
            .collect();
        let mut line = format!(
            "{:<12} {}  {}",
            result.cluster,
            if result.ok { "ok    " } else { "FAILED" },
            done.join(", ")
        );
        if !result.not_run.is_empty() {
            line.push_str(&format!("; not run: {}", result.not_run.join(", ")));
        }
        reporter.line(&line);
    }
    let verdict = if summary.interrupted {
        format!("{command} interrupted; re-run `meshup {command}` to resume")
    } else if summary.ok {
        format!("{command} finished")
    } else {
        format!(
            "{command} failed; fix the error above and re-run `meshup {command}`: finished steps are skipped"
        )
    };
    reporter.line(&verdict);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::engine::plan;
    use crate::engine::topology::{Choices, Topology};
    use crate::model::mesh::Mesh;
    use crate::testing::{mesh, ok, writes};
    use crate::tools::reporter::Mode;
    use crate::tools::runner::{Output, RecordingRunner};
    use crate::tools::step::Step;
    use crate::trust::TrustMode;

    /// Answers like an empty cluster whose token controller works; helm fails for istiod in
    /// `fail_in`.
    fn cluster(step: &Step, fail_in: &str) -> Output {
        let args = step.args.join(" ");
        if args.starts_with("upgrade --install istiod") && step.cluster == fail_in {
            return Output {
                code: Some(1),
                stdout: String::new(),
                stderr: "Error: UPGRADE FAILED: timed out waiting for the condition".into(),
            };
        }
        if args.starts_with("list") {
            ok("[]")
        } else if args.starts_with("get values") {
            ok("null")
        } else if args.starts_with("get secret istio-reader") {
            ok(r#"{"kind":"Secret","data":{"token":"dG9r","ca.crt":"Q0E="}}"#)
        } else if args.starts_with("get secrets") {
            ok(r#"{"kind":"SecretList","items":[]}"#)
        } else {
            ok("")
        }
    }

    fn run(m: &Mesh, fail_in: &'static str) -> (Summary, Vec<Step>) {
        let runner = RecordingRunner::new(move |step: &Step| cluster(step, fail_in));
        let reporter = Reporter::new(Mode::Json, true, false);
        let run = Run {
            jobs: 3,
            timeout: Duration::from_secs(5),
            retry: Retry {
                times: 2,
                first: Duration::from_millis(1),
                most: Duration::from_millis(1),
            },
            ..crate::testing::run(m, &runner, &reporter)
        };
        let topology = Topology::of(m, &Choices::default());
        let summary = execute(&run, &plan::install(&topology));
        let calls = runner.calls.lock().unwrap().clone();
        (summary, calls)
    }

    fn verbs_in(calls: &[Step], cluster: &str) -> Vec<String> {
        calls
            .iter()
            .filter(|s| s.cluster == cluster && writes(s))
            .map(|s| s.args.iter().take(3).cloned().collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[test]
    fn each_cluster_installs_in_order_then_takes_its_peers_secrets() {
        let m = mesh(3, TrustMode::None);
        let (summary, calls) = run(&m, "");
        assert!(summary.ok, "{summary:?}");
        for c in ["cluster1", "cluster2", "cluster3"] {
            assert_eq!(
                verbs_in(&calls, c),
                [
                    "apply --server-side --force-conflicts",
                    "upgrade --install istio-base",
                    "upgrade --install istiod",
                    // the token secret (istio-base made its account), then the peers' remote
                    // secrets
                    "apply --server-side --force-conflicts",
                    "apply --server-side --force-conflicts"
                ],
                "{c}"
            );
            // The last apply carries both peers' secrets and not this cluster's own.
            let last = calls.iter().rfind(|s| s.cluster == c && writes(s)).unwrap();
            let text = String::from_utf8(last.stdin.as_ref().unwrap().expose().clone()).unwrap();
            let peers: Vec<&str> = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("name: istio-remote-secret-"))
                .collect();
            let mut want: Vec<String> = ["cluster1", "cluster2", "cluster3"]
                .iter()
                .filter(|p| **p != c)
                .map(|p| p.to_string())
                .collect();
            want.sort();
            assert_eq!(peers, want, "{c}");
        }
    }

    #[test]
    fn a_failure_stops_its_cluster_only_and_skips_linking() {
        let m = mesh(3, TrustMode::None);
        let (summary, calls) = run(&m, "cluster2");
        assert!(!summary.ok && !summary.interrupted);
        let c2 = &summary.clusters[1];
        assert!(!c2.ok);
        let error = c2.error.as_deref().unwrap();
        assert!(
            error.starts_with("[cluster2] `helm upgrade --install istiod"),
            "{error}"
        );
        assert!(
            error.contains("timed out waiting for the condition"),
            "{error}"
        );
        assert!(c2.not_run.contains(&"remote secret") && c2.not_run.contains(&"link"));
        // The other clusters finished their chains but linked nothing.
        for i in [0, 2] {
            assert!(summary.clusters[i].ok);
            assert_eq!(summary.clusters[i].not_run, ["link"]);
        }
        // No cluster looked for remote secrets to link.
        assert!(!calls.iter().any(|s| {
            s.args
                .iter()
                .any(|a| a.contains(crate::tools::remote_secret::MULTICLUSTER_LABEL))
        }));
    }

    #[test]
    fn a_transient_failure_is_retried_and_a_lasting_one_is_not() {
        let m = mesh(1, TrustMode::None);
        let attempts = AtomicUsize::new(0);
        let reset = |step: &Step| {
            let args = step.args.join(" ");
            if args.starts_with("upgrade --install istiod")
                && attempts.fetch_add(1, Ordering::SeqCst) < 2
            {
                Output {
                    code: Some(1),
                    stdout: String::new(),
                    stderr: "Error: UPGRADE FAILED: read tcp: connection reset by peer".into(),
                }
            } else {
                cluster(step, "")
            }
        };
        let runner = RecordingRunner::new(reset);
        let reporter = Reporter::new(Mode::Json, true, false);
        let run = Run {
            jobs: 1,
            timeout: Duration::from_secs(5),
            retry: Retry {
                times: 2,
                first: Duration::from_millis(1),
                most: Duration::from_millis(1),
            },
            ..crate::testing::run(&m, &runner, &reporter)
        };
        let topology = Topology::of(&m, &Choices::default());
        let summary = execute(&run, &plan::install(&topology));
        assert!(summary.ok, "{summary:?}");
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        // The cluster is read again before each retry.
        let lists = runner
            .command_lines()
            .iter()
            .filter(|l| l.starts_with("helm list"))
            .count();
        assert_eq!(lists, 3);

        // A lasting failure gives up after `times` retries; a bad value is not retried at all.
        let (summary, calls) =
            run_failing(&m, "Error: UPGRADE FAILED: read: connection reset by peer");
        assert!(!summary.ok);
        assert_eq!(count_istiod_upgrades(&calls), 3);
        let (summary, calls) = run_failing(
            &m,
            "Error: UPGRADE FAILED: Deployment.apps \"istiod\" is invalid: spec.replicas: Invalid value: -1",
        );
        assert!(!summary.ok);
        assert_eq!(count_istiod_upgrades(&calls), 1);
    }

    fn count_istiod_upgrades(calls: &[Step]) -> usize {
        calls
            .iter()
            .filter(|s| s.args.join(" ").starts_with("upgrade --install istiod"))
            .count()
    }

    fn run_failing(m: &Mesh, stderr: &'static str) -> (Summary, Vec<Step>) {
        let runner = RecordingRunner::new(move |step: &Step| {
            if step.args.join(" ").starts_with("upgrade --install istiod") {
                Output {
                    code: Some(1),
                    stdout: String::new(),
                    stderr: stderr.into(),
                }
            } else {
                cluster(step, "")
            }
        });
        let reporter = Reporter::new(Mode::Json, true, false);
        let run = Run {
            jobs: 1,
            timeout: Duration::from_secs(5),
            retry: Retry {
                times: 2,
                first: Duration::from_millis(1),
                most: Duration::from_millis(1),
            },
            ..crate::testing::run(m, &runner, &reporter)
        };
        let topology = Topology::of(m, &Choices::default());
        let summary = execute(&run, &plan::install(&topology));
        let calls = runner.calls.lock().unwrap().clone();
        (summary, calls)
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let delays: Vec<u64> = (1..=7).map(|a| Retry::DEFAULT.delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn parallel_keeps_item_order_and_runs_every_item() {
        let items: Vec<u32> = (0..20).collect();
        let squares = parallel(3, &items, |i| i * i);
        assert_eq!(squares, items.iter().map(|i| i * i).collect::<Vec<_>>());
    }

    #[test]
    fn parallel_with_one_job_runs_one_at_a_time() {
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        parallel(1, &[1, 2, 3, 4], |_| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            running.fetch_sub(1, Ordering::SeqCst);
        });
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }
}
