//! Executing a plan: batches in order, each cluster's chain in parallel (up to `--jobs`). A
//! failing chain stops only itself; the batch finishes, then the run stops and reports.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::helm::{self, Chart};
use crate::kubectl;
use crate::mesh::{Cluster, Mesh};
use crate::plan::{self, Plan, Task};
use crate::remote_secret::{self, RemoteSecret};
use crate::reporter::Reporter;
use crate::runner::{Runner, StepError, run_ok};
use crate::sensitive::Sensitive;
use crate::step::Target;
use crate::trust::{self, Trust};
use crate::values;

/// Everything a run needs.
pub struct Ctx<'a> {
    pub mesh: &'a Mesh,
    pub runner: &'a dyn Runner,
    pub reporter: &'a Reporter,
    /// Clusters worked on at once.
    pub jobs: usize,
    pub timeout: Duration,
    pub kubeconfig: Option<PathBuf>,
    /// Where this run's values files were rendered.
    pub values_dir: PathBuf,
    /// The CA material for `cacerts` (install with trust enabled).
    pub trust: Option<&'a Trust>,
    pub rotate_ca: bool,
    pub restart: bool,
}

impl Ctx<'_> {
    pub fn target(&self, cluster: &Cluster) -> Target {
        Target {
            cluster: cluster.name.clone(),
            context: cluster.context.clone(),
            kubeconfig: self.kubeconfig.clone(),
        }
    }
}

/// Runs `f` on every item, at most `jobs` at a time, and returns the results in item order.
pub fn parallel<T: Sync, R: Send>(jobs: usize, items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else { break };
                    let result = f(item);
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item ran")
        })
        .collect()
}

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
}

/// State one cluster's chain carries from task to task.
#[derive(Default)]
struct ClusterState {
    /// `helm list` of the namespace, read once.
    releases: Option<Vec<Value>>,
    /// istiod ran before its cacerts appeared or changed.
    needs_restart: bool,
}

/// Runs the plan and reports as it goes. Remote secrets stay in memory only.
pub fn execute(ctx: &Ctx, plan: &Plan) -> Summary {
    let mut results: BTreeMap<String, ClusterResult> = ctx
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
    let secrets: Mutex<BTreeMap<String, RemoteSecret>> = Mutex::new(BTreeMap::new());
    let states: Mutex<BTreeMap<String, ClusterState>> = Mutex::new(BTreeMap::new());
    let mut failed = false;
    let mut interrupted = false;

    for (index, batch) in plan.batches.iter().enumerate() {
        if failed || interrupted {
            for chain in &batch.chains {
                if let Some(result) = results.get_mut(&chain.cluster) {
                    result.not_run.extend(chain.tasks.iter().map(|t| t.label()));
                }
            }
            continue;
        }
        ctx.reporter.info(&format!(
            "phase {}/{}: {}",
            index + 1,
            plan.batches.len(),
            batch.title
        ));
        let outcomes = parallel(ctx.jobs, &batch.chains, |chain| {
            let Some(cluster) = ctx.mesh.cluster(&chain.cluster) else {
                return (Vec::new(), None, Vec::new());
            };
            let mut state = states
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&cluster.name)
                .unwrap_or_default();
            let chain_start = Instant::now();
            let mut done = Vec::new();
            let mut error = None;
            let mut not_run = Vec::new();
            for task in &chain.tasks {
                if error.is_some() {
                    not_run.push(task.label());
                    continue;
                }
                ctx.reporter.started(&cluster.name, task.label());
                let start = Instant::now();
                match run_task(ctx, cluster, *task, &mut state, &secrets) {
                    Ok(outcome) => {
                        ctx.reporter.finished(
                            &cluster.name,
                            task.label(),
                            &outcome,
                            start.elapsed(),
                        );
                        done.push(TaskResult {
                            task: task.label(),
                            outcome,
                            seconds: round(start.elapsed()),
                        });
                    }
                    Err(e) => {
                        ctx.reporter.finished(
                            &cluster.name,
                            task.label(),
                            "failed",
                            start.elapsed(),
                        );
                        done.push(TaskResult {
                            task: task.label(),
                            outcome: "failed".into(),
                            seconds: round(start.elapsed()),
                        });
                        error = Some(e);
                    }
                }
            }
            let summary = format!(
                "{} ({:.1}s)",
                if error.is_some() { "failed" } else { "done" },
                chain_start.elapsed().as_secs_f64()
            );
            ctx.reporter.cluster_done(&cluster.name, &summary);
            states
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(cluster.name.clone(), state);
            (done, error, not_run)
        });
        for (chain, (done, error, not_run)) in batch.chains.iter().zip(outcomes) {
            let result = results
                .get_mut(&chain.cluster)
                .expect("every chain is a cluster");
            result.tasks.extend(done);
            result.not_run.extend(not_run);
            if let Some(error) = error {
                result.ok = false;
                if error.is_interrupted() {
                    interrupted = true;
                } else {
                    failed = true;
                    ctx.reporter.line(&format!("error: {error}"));
                }
                result.error = Some(error.to_string());
            }
        }
    }
    Summary {
        ok: !failed && !interrupted,
        interrupted,
        clusters: results.into_values().collect(),
    }
}

fn round(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

fn run_task(
    ctx: &Ctx,
    cluster: &Cluster,
    task: Task,
    state: &mut ClusterState,
    secrets: &Mutex<BTreeMap<String, RemoteSecret>>,
) -> Result<String, StepError> {
    let target = ctx.target(cluster);
    let mesh = ctx.mesh;
    let ns = mesh.namespace.as_str();
    let timeout = ctx.timeout;
    match task {
        Task::Namespace => {
            let output = run_ok(
                ctx.runner,
                &kubectl::get(&target, "namespace", ns, None, timeout),
            )?;
            let live: Value = serde_json::from_str(&output.stdout).unwrap_or(Value::Null);
            let label = &live["metadata"]["labels"]["topology.istio.io/network"];
            let right = !live.is_null()
                && cluster
                    .network
                    .as_deref()
                    .is_none_or(|network| label == network);
            if right {
                return Ok("unchanged".into());
            }
            run_ok(
                ctx.runner,
                &plan::namespace_step(mesh, cluster, &target, timeout),
            )?;
            Ok(if live.is_null() {
                "created"
            } else {
                "labelled"
            }
            .into())
        }
        Task::Cacerts => cacerts(ctx, cluster, &target, state),
        Task::Release(chart) => release(ctx, cluster, &target, chart, state),
        Task::Restart => restart(ctx, cluster, &target, state),
        Task::BuildRemoteSecret => {
            let secret = remote_secret::build(
                ctx.runner,
                &target,
                &cluster.name,
                ns,
                &cluster.server,
                timeout,
            )?;
            secrets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(cluster.name.clone(), secret);
            Ok("built".into())
        }
        Task::Link => link(ctx, cluster, &target, secrets),
        Task::Unlink => {
            let step = kubectl::delete_selected(
                &target,
                "secrets",
                &remote_secret::managed_selector(),
                ns,
                timeout,
            );
            let output = run_ok(ctx.runner, &step)?;
            Ok(count_deleted(&output.stdout, "removed"))
        }
        Task::Uninstall(chart) => {
            let name = plan::release_name(mesh, chart);
            if find_release(ctx, &target, state, &name)?.is_none() {
                return Ok("absent".into());
            }
            run_ok(ctx.runner, &helm::uninstall(&target, &name, ns, timeout))?;
            Ok("removed".into())
        }
        Task::DeleteNamespace => {
            let step = kubectl::delete(
                &target,
                "namespace",
                std::slice::from_ref(&mesh.namespace),
                None,
                timeout,
            );
            let output = run_ok(ctx.runner, &step)?;
            Ok(if output.stdout.trim().is_empty() {
                "absent"
            } else {
                "deleted"
            }
            .into())
        }
        Task::PurgeCrds => {
            let output = run_ok(
                ctx.runner,
                &kubectl::list(&target, "customresourcedefinitions", None, None, timeout),
            )?;
            let names =
                istio_crds(&output.stdout).map_err(|e| StepError::other(&cluster.name, e, None))?;
            if names.is_empty() {
                return Ok("none left".into());
            }
            run_ok(
                ctx.runner,
                &kubectl::delete(&target, "customresourcedefinitions", &names, None, timeout),
            )?;
            Ok(format!("{} deleted", names.len()))
        }
    }
}

/// `kubectl delete` prints one line per object it deleted.
fn count_deleted(stdout: &str, verb: &str) -> String {
    let n = stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("deleted"))
        .count();
    if n == 0 {
        "none".into()
    } else {
        format!("{n} {verb}")
    }
}

/// The names of Istio's CRDs in a `kubectl get crd -o json` list.
pub fn istio_crds(list_json: &str) -> Result<Vec<String>, String> {
    let list: Value = serde_json::from_str(list_json)
        .map_err(|e| format!("kubectl printed no JSON list: {e}"))?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|crd| crd["metadata"]["name"].as_str())
        .filter(|name| name.ends_with(".istio.io"))
        .map(str::to_string)
        .collect())
}

/// The release `name` from `helm list` (read once per cluster and kept).
fn find_release(
    ctx: &Ctx,
    target: &Target,
    state: &mut ClusterState,
    name: &str,
) -> Result<Option<Value>, StepError> {
    if state.releases.is_none() {
        let output = run_ok(ctx.runner, &helm::list(target, &ctx.mesh.namespace))?;
        let list: Value =
            serde_json::from_str(output.stdout.trim()).unwrap_or(Value::Array(Vec::new()));
        state.releases = Some(list.as_array().cloned().unwrap_or_default());
    }
    Ok(state
        .releases
        .as_ref()
        .and_then(|all| all.iter().find(|r| r["name"] == name).cloned()))
}

fn release(
    ctx: &Ctx,
    cluster: &Cluster,
    target: &Target,
    chart: Chart,
    state: &mut ClusterState,
) -> Result<String, StepError> {
    let mesh = ctx.mesh;
    let name = plan::release_name(mesh, chart);
    let wanted = values::for_cluster(mesh, cluster);
    let wanted = match chart {
        Chart::Base => wanted.base,
        Chart::Istiod => wanted.istiod,
    };
    let existing = find_release(ctx, target, state, &name)?;
    if let Some(existing) = &existing {
        let chart_ok = mesh.chart_version().is_none_or(|version| {
            helm::chart_is_version(
                existing["chart"].as_str().unwrap_or_default(),
                chart,
                version,
            )
        });
        if existing["status"] == "deployed" && chart_ok {
            let output = run_ok(
                ctx.runner,
                &helm::get_values(target, &name, &mesh.namespace),
            )?;
            let deployed: Value = serde_json::from_str(output.stdout.trim()).unwrap_or(Value::Null);
            if values::same_as_deployed(&wanted, &deployed) {
                return Ok("unchanged".into());
            }
        }
    }
    let step = plan::release_step(mesh, chart, target, &ctx.values_dir, ctx.timeout);
    run_ok(ctx.runner, &step)?;
    Ok(if existing.is_some() {
        "upgraded"
    } else {
        "installed"
    }
    .into())
}

fn cacerts(
    ctx: &Ctx,
    cluster: &Cluster,
    target: &Target,
    state: &mut ClusterState,
) -> Result<String, StepError> {
    let mesh = ctx.mesh;
    let ns = &mesh.namespace;
    let Some(ca) = ctx.trust.and_then(|t| t.clusters.get(&cluster.name)) else {
        return Err(StepError::other(
            &cluster.name,
            "no CA material was prepared for this cluster",
            None,
        ));
    };
    let output = run_ok(
        ctx.runner,
        &kubectl::get(target, "secret", "cacerts", Some(ns), ctx.timeout),
    )?;
    let live: Option<Value> = if output.stdout.trim().is_empty() {
        None
    } else {
        Some(serde_json::from_str(&output.stdout).map_err(|e| {
            StepError::other(
                &cluster.name,
                format!("kubectl printed no JSON for secret `cacerts`: {e}"),
                None,
            )
        })?)
    };
    // istiod prefers `tls.crt` & co. over the four files: keys meshup does not write change
    // which CA istiod uses, and server-side apply cannot remove another manager's keys.
    let extra: Vec<String> = live
        .as_ref()
        .and_then(|l| l["data"].as_object())
        .map(|data| {
            data.keys()
                .filter(|k| !trust::CLUSTER_FILES.contains(&k.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if !extra.is_empty() && !ctx.rotate_ca {
        return Err(StepError::other(
            &cluster.name,
            format!(
                "secret `cacerts` in namespace `{ns}` holds keys meshup does not manage ({}), which istiod may prefer over the mesh's CA",
                extra.join(", ")
            ),
            Some(format!(
                "delete it (`kubectl --context {} -n {ns} delete secret cacerts`) or pass --rotate-ca to replace it",
                cluster.context
            )),
        ));
    }
    let outcome = match &live {
        Some(live) if trust::live_matches(live, ca) => return Ok("unchanged".into()),
        Some(live) => {
            let live_root = trust::live_root_fingerprint(live).ok().flatten();
            let mesh_root = trust::fingerprint(&ca.root_cert_pem).ok();
            if live_root != mesh_root && !ctx.rotate_ca {
                return Err(StepError::other(
                    &cluster.name,
                    format!(
                        "secret `cacerts` in namespace `{ns}` has a different root CA ({}) than the mesh ({})",
                        live_root.as_deref().unwrap_or("none"),
                        mesh_root.as_deref().unwrap_or("unknown")
                    ),
                    Some("changing the root of a live mesh breaks cross-cluster traffic until every workload restarts; pass --rotate-ca (with --restart) to replace it, or use this cluster's root via `trust.mode: provided`".into()),
                ));
            }
            if live_root != mesh_root {
                "rotated"
            } else {
                "updated"
            }
        }
        None => "created",
    };
    // istiod reads cacerts only at start: if it is already running, it needs a restart.
    let deployment = run_ok(
        ctx.runner,
        &kubectl::get(
            target,
            "deployment",
            &mesh.istiod_deployment(),
            Some(ns),
            ctx.timeout,
        ),
    )?;
    state.needs_restart = !deployment.stdout.trim().is_empty();
    if !extra.is_empty() {
        // --rotate-ca: start from an empty secret so no foreign key survives.
        run_ok(
            ctx.runner,
            &kubectl::delete(
                target,
                "secret",
                &["cacerts".to_string()],
                Some(ns),
                ctx.timeout,
            ),
        )?;
    }
    let manifest = trust::cacerts_manifest(ns, ca);
    run_ok(
        ctx.runner,
        &kubectl::apply(
            target,
            Sensitive::new(manifest.expose().clone().into_bytes()),
            ctx.timeout,
        ),
    )?;
    Ok(outcome.into())
}

fn restart(
    ctx: &Ctx,
    cluster: &Cluster,
    target: &Target,
    state: &mut ClusterState,
) -> Result<String, StepError> {
    if !state.needs_restart {
        return Ok("not needed".into());
    }
    let mesh = ctx.mesh;
    let deployment = mesh.istiod_deployment();
    if !ctx.restart {
        ctx.reporter.warn(&format!(
            "istiod in `{}` was running before its `cacerts` was created or changed and still uses its old root; run `meshup install --restart` (or `kubectl --context {} rollout restart deployment/{deployment} -n {}`), then restart the workloads",
            cluster.name, cluster.context, mesh.namespace
        ));
        return Ok("needed (pass --restart)".into());
    }
    run_ok(
        ctx.runner,
        &kubectl::rollout_restart(target, &deployment, &mesh.namespace, ctx.timeout),
    )?;
    run_ok(
        ctx.runner,
        &kubectl::rollout_status(target, &deployment, &mesh.namespace, ctx.timeout),
    )?;
    state.needs_restart = false;
    Ok("restarted".into())
}

fn link(
    ctx: &Ctx,
    cluster: &Cluster,
    target: &Target,
    secrets: &Mutex<BTreeMap<String, RemoteSecret>>,
) -> Result<String, StepError> {
    let ns = &ctx.mesh.namespace;
    let selector = remote_secret::multicluster_selector();
    let output = run_ok(
        ctx.runner,
        &kubectl::list(target, "secrets", Some(ns), Some(&selector), ctx.timeout),
    )?;
    let found = remote_secret::found(&output.stdout)
        .map_err(|e| StepError::other(&cluster.name, e, None))?;

    let wanted: Vec<RemoteSecret> = {
        let all = secrets.lock().unwrap_or_else(|e| e.into_inner());
        ctx.mesh
            .clusters
            .iter()
            .filter(|peer| peer.name != cluster.name)
            .filter_map(|peer| all.get(&peer.name).cloned())
            .collect()
    };
    let changed: Vec<&RemoteSecret> = wanted
        .iter()
        .filter(|secret| {
            let name = remote_secret::secret_name(&secret.cluster);
            let in_place: Vec<&remote_secret::Found> =
                found.iter().filter(|f| f.secret == name).collect();
            !(in_place.len() == 1
                && in_place[0].managed
                && in_place[0].cluster == secret.cluster
                && in_place[0].data == secret.data)
        })
        .collect();
    if !changed.is_empty() {
        // All of this cluster's new secrets go through one apply, on stdin.
        let mut documents = String::new();
        for secret in &changed {
            documents.push_str("---\n");
            documents.push_str(secret.manifest(ns).expose());
        }
        run_ok(
            ctx.runner,
            &kubectl::apply(target, Sensitive::new(documents.into_bytes()), ctx.timeout),
        )?;
    }

    let wanted_names: Vec<String> = wanted
        .iter()
        .map(|s| remote_secret::secret_name(&s.cluster))
        .collect();
    let mut stale: Vec<String> = found
        .iter()
        .filter(|f| f.managed && !wanted_names.contains(&f.secret))
        .map(|f| f.secret.clone())
        .collect();
    stale.dedup();
    if !stale.is_empty() {
        run_ok(
            ctx.runner,
            &kubectl::delete(target, "secrets", &stale, Some(ns), ctx.timeout),
        )?;
    }
    Ok(match (changed.len(), stale.len()) {
        (0, 0) => format!("unchanged ({} peers)", wanted.len()),
        (a, 0) => format!("{a} applied"),
        (0, r) => format!("{r} stale removed"),
        (a, r) => format!("{a} applied, {r} stale removed"),
    })
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
    use super::*;
    use crate::reporter::Mode;
    use crate::runner::{Output, RecordingRunner};
    use crate::step::Step;
    use crate::testing::mesh;
    use crate::trust::TrustMode;

    fn ok(stdout: &str) -> Output {
        Output {
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

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
        } else if args.starts_with("get secret istio-reader") {
            ok(r#"{"data":{"token":"dG9r","ca.crt":"Q0E="}}"#)
        } else if args.starts_with("get secrets") {
            ok(r#"{"items":[]}"#)
        } else {
            ok("")
        }
    }

    fn run(m: &Mesh, fail_in: &'static str) -> (Summary, Vec<Step>) {
        let runner = RecordingRunner::new(move |step: &Step| cluster(step, fail_in));
        let reporter = Reporter::new(Mode::Json, true, false);
        let ctx = Ctx {
            mesh: m,
            runner: &runner,
            reporter: &reporter,
            jobs: 3,
            timeout: Duration::from_secs(5),
            kubeconfig: None,
            values_dir: PathBuf::from("/values"),
            trust: None,
            rotate_ca: false,
            restart: false,
        };
        let summary = execute(&ctx, &plan::install(m));
        let calls = runner.calls.lock().unwrap().clone();
        (summary, calls)
    }

    fn verbs_in(calls: &[Step], cluster: &str) -> Vec<String> {
        calls
            .iter()
            .filter(|s| s.cluster == cluster && s.mutates)
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
                    "create serviceaccount istio-reader-service-account",
                    // the token secret, then the peers' remote secrets
                    "apply --server-side --force-conflicts",
                    "apply --server-side --force-conflicts"
                ],
                "{c}"
            );
            // The last apply carries both peers' secrets and not this cluster's own.
            let last = calls.iter().rfind(|s| s.cluster == c && s.mutates).unwrap();
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
        assert!(!calls.iter().any(|s| {
            s.args
                .starts_with(&["get".to_string(), "secrets".to_string()])
        }));
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

    #[test]
    fn istio_crds_are_picked_by_group_suffix() {
        let list = r#"{"items":[{"metadata":{"name":"gateways.networking.istio.io"}},{"metadata":{"name":"certificates.cert-manager.io"}},{"metadata":{"name":"telemetries.telemetry.istio.io"}}]}"#;
        assert_eq!(
            istio_crds(list).unwrap(),
            [
                "gateways.networking.istio.io",
                "telemetries.telemetry.istio.io"
            ]
        );
    }
}
