//! Credentials over time. Every remote secret carries a long-lived token of its source
//! cluster's `istio-reader-service-account`, which can read that cluster's Secrets, Pods and
//! Services; meshup replaces it without a moment in which a peer holds no working token:
//!
//! 1. a new token secret in the source cluster (`…-token-YYYYMMDDHHMMSS`), filled by the token
//!    controller;
//! 2. the source's remote secret, with the new token, applied in place to every peer that
//!    watches it: istiod compares the kubeconfig's SHA-256 and rebuilds that cluster, with no
//!    restart (pkg/kube/multicluster/secretcontroller.go, every release from 1.26);
//! 3. a wait until every ready istiod pod of each such peer has acted on it: its log shows
//!    the `Add cluster`/`Update cluster` line for the source since the apply, and after that
//!    its `/debug/clusterz` reports the source `synced` (bounded by `--timeout`). A `synced`
//!    read alone proves nothing: clusterz keeps the old cluster `synced` until istiod
//!    processes the update, which its informer delivers a moment later;
//! 4. only then the old token secrets are deleted, which revokes their tokens. Where that
//!    cannot be shown (istiod's log or view cannot be read, or it did not act in time) the old
//!    token is kept and the run fails, naming the peer.
//!
//! These are three waves and a gate of a plan per rotated cluster, run by the engine like any
//! other plan (retries, locks, Ctrl-C, progress, `meshup plan --rotate`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::components::peers::{self, Source};
use crate::components::reader::{self, token_secrets};
use crate::components::{ClusterCtx, ClusterNotes, Rotation, RunBoard, ScriptCx};
use crate::engine::plan::{Chain, Gate, Plan, ScriptOptions, Task, Wave, Work};
use crate::engine::run::Run;
use crate::engine::topology::Topology;
use crate::model::mesh::{Cluster, Mesh};
use crate::observe::sync::{self, ISTIOD_CONTAINER, State};
use crate::tools::kubectl;
use crate::tools::remote_secret::{
    READER_TOKEN_LABEL, RemoteSecret, TOKEN_SECRET, token_secret_manifest,
};
use crate::tools::runner::StepError;
use crate::tools::step::shell_quote;
use crate::trust::sensitive::Sensitive;

/// The clusters among `names` (all when `None`) whose reader token some istiod holds, in
/// mesh-file order.
pub fn sources<'a>(
    mesh: &'a Mesh,
    topology: &Topology,
    names: Option<&[String]>,
) -> Vec<&'a Cluster> {
    mesh.clusters
        .iter()
        .filter(|c| names.is_none_or(|n| n.contains(&c.name)))
        .filter(|c| topology.watches.values().any(|w| w.contains(&c.name)))
        .collect()
}

/// One line per rotated cluster, for the terminal.
pub fn render(rotated: &[Rotation]) -> Vec<String> {
    rotated
        .iter()
        .map(|r| {
            let old = if r.old.is_empty() {
                "none".to_string()
            } else {
                r.old.join(", ")
            };
            format!(
                "{:<12} reader token rotated: {} now in {}; old ({old}) revoked",
                r.cluster,
                r.new,
                if r.peers.is_empty() {
                    "no peer".to_string()
                } else {
                    r.peers.join(", ")
                }
            )
        })
        .collect()
}

/// The rotation of each of `clusters`' reader token, one cluster after another (each peer's
/// istiod rebuilds one remote cluster at a time): for each, a new token, the new remote
/// secret to every watcher and the wait for their istiod, then the old tokens revoked.
pub fn plan<'t>(mesh: &Mesh, topology: &Topology, clusters: &[&Cluster]) -> Plan<'t> {
    let mut waves = Vec::new();
    for source in clusters {
        let watchers: Vec<String> = topology
            .watches
            .iter()
            .filter(|(_, sources)| sources.contains(&source.name))
            .map(|(watcher, _)| watcher.clone())
            .collect();
        let name = &source.name;
        let chain = |cluster: &str, work: Arc<dyn Work + 't>| Chain {
            cluster: cluster.to_string(),
            tasks: vec![Task::Work(work)],
        };
        waves.push(Wave::new(
            format!("a new reader token in {name}"),
            vec![chain(
                name,
                Arc::new(NewToken {
                    source: Source {
                        name: name.clone(),
                        context: source.context.clone(),
                        server: source.server.clone(),
                        server_overridden: source.server_overridden,
                    },
                    namespace: mesh.namespace.clone(),
                    watchers: watchers.clone(),
                }),
            )],
        ));
        let hand = Arc::new(Hand {
            source: Source {
                name: name.clone(),
                context: source.context.clone(),
                server: source.server.clone(),
                server_overridden: source.server_overridden,
            },
            namespace: mesh.namespace.clone(),
            revision: topology.revision.clone(),
        });
        let mut wave = Wave::new(
            format!("{name}'s new remote secret to {}", watchers.join(", ")),
            watchers.iter().map(|w| chain(w, hand.clone())).collect(),
        );
        wave.gate = Some(Arc::new(Acted {
            source: name.clone(),
            watchers: watchers.clone(),
            namespace: mesh.namespace.clone(),
            revision: topology.revision.clone(),
            acted: Mutex::new(BTreeSet::new()),
        }));
        waves.push(wave);
        waves.push(Wave::new(
            format!("revoke {name}'s old reader tokens"),
            vec![chain(
                name,
                Arc::new(Revoke {
                    namespace: mesh.namespace.clone(),
                }),
            )],
        ));
    }
    Plan { waves }
}

/// A new token secret for the source's reader account, filled; the remote secret built from
/// it goes on the board. Run again (a retry, a re-run after a failure of this run), it reuses
/// the token secret it made.
struct NewToken {
    source: Source,
    namespace: String,
    watchers: Vec<String>,
}

impl Work for NewToken {
    fn label(&self) -> &'static str {
        "new reader token"
    }

    fn run(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let ns = &self.namespace;
        let name = &self.source.name;
        let known = cx.board.rotations().get(name).cloned();
        let rotation = match known {
            Some(rotation) => rotation,
            None => {
                let old: Vec<String> = token_secrets(&cx.live, ns)?
                    .into_iter()
                    .map(|s| s.metadata.name)
                    .collect();
                let mut new = format!("{TOKEN_SECRET}-{}", stamp(OffsetDateTime::now_utc()));
                while old.contains(&new) {
                    new.push('x');
                }
                let rotation = Rotation {
                    cluster: name.clone(),
                    old,
                    new,
                    peers: self.watchers.clone(),
                    handed: None,
                    baselines: BTreeMap::new(),
                    acted: false,
                    revoked: false,
                };
                cx.board.rotations().insert(name.clone(), rotation.clone());
                rotation
            }
        };
        reader::ensure_account(&cx.live, ns)?;
        reader::create_token_secret(&cx.live, ns, &rotation.new)?;
        let (ca, token) = reader::wait_for_token(&cx.live, ns, &rotation.new)?;
        let secret = RemoteSecret::new(name, &self.source.server, &ca, &token);
        cx.board
            .secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), secret);
        Ok(format!("`{}`", rotation.new))
    }

    fn script(&self, cx: &ScriptCx) -> String {
        let manifest = token_secret_manifest(&self.namespace, &format!("{TOKEN_SECRET}-$STAMP"));
        format!(
            "# A new token secret for the reader account; the older ones stay valid until the last phase.\nSTAMP=$(date -u +%Y%m%d%H%M%S) SINCE=$(date -u +%Y-%m-%dT%H:%M:%SZ)\n{} <<EOF\n{manifest}EOF\n",
            kubectl::apply(&cx.target, Sensitive::default(), cx.timeout).command_line()
        )
    }
}

/// The source's new remote secret (from the board), applied in place in a watcher.
struct Hand {
    source: Source,
    namespace: String,
    /// `istio.io/rev` of the watchers' istiod pods.
    revision: String,
}

impl Work for Hand {
    fn label(&self) -> &'static str {
        "new remote secret"
    }

    fn run(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let name = &self.source.name;
        let secret = cx
            .board
            .secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| {
                StepError::other(
                    &cx.cluster.name,
                    format!("no new remote secret of `{name}` was built"),
                    None,
                )
            })?;
        // What istiod logged of this cluster so far: only a later build line counts.
        let known: BTreeSet<(String, String)> = cx
            .board
            .rotations()
            .get(name)
            .map(|r| r.baselines.keys().cloned().collect())
            .unwrap_or_default();
        let watcher = cx.cluster.name.clone();
        let pods: Vec<crate::tools::live::Pod> = cx.live.list(
            "pods",
            Some(&self.namespace),
            Some(&format!("app=istiod,istio.io/rev={}", self.revision)),
        )?;
        // Only a build line inside the gate's read window (from LOG_SLACK before the hand-over
        // on) can be mistaken for the rebuild, so the baseline reads no more than that window
        // back: BASELINE_WINDOW, as long as the hand-over follows within LOG_SLACK (else the
        // baselines are read again). A long-running istiod's whole log is never read.
        let (baselines, before) = loop {
            let started = Instant::now();
            let mut baselines = Vec::new();
            for pod in &pods {
                let key = (watcher.clone(), pod.metadata.name.clone());
                if known.contains(&key) {
                    continue;
                }
                let log = cx.live.run(&kubectl::logs(
                    cx.target(),
                    &format!("pod/{}", pod.metadata.name),
                    ISTIOD_CONTAINER,
                    &self.namespace,
                    Some(BASELINE_WINDOW),
                    cx.timeout(),
                ))?;
                baselines.push((key, sync::last_build(&log.stdout, name)));
            }
            let before = Instant::now();
            if before.duration_since(started) < BASELINE_WINDOW - LOG_SLACK {
                break (baselines, before);
            }
        };
        cx.live.run(&kubectl::apply(
            cx.target(),
            Sensitive::new(
                secret
                    .manifest(&self.namespace)
                    .expose()
                    .clone()
                    .into_bytes(),
            ),
            cx.timeout(),
        ))?;
        if let Some(rotation) = cx.board.rotations().get_mut(name) {
            rotation.handed = Some(rotation.handed.map_or(before, |h| h.min(before)));
            rotation.baselines.extend(baselines);
        }
        Ok(format!("{name}'s applied"))
    }

    fn script(&self, cx: &ScriptCx) -> String {
        peers::pipe(cx, &self.namespace, &self.source)
    }
}

/// Every ready istiod pod of every watcher has acted on the source's new remote secret: its
/// log since the secret was handed over shows the cluster built anew, and a clusterz read
/// after that shows it `synced`.
struct Acted {
    source: String,
    watchers: Vec<String>,
    namespace: String,
    revision: String,
    /// (watcher, pod) seen building the new cluster: they need only a `synced` read.
    acted: Mutex<BTreeSet<(String, String)>>,
}

impl Gate for Acted {
    fn title(&self) -> String {
        format!(
            "istiod in {} acted on {}'s new remote secret",
            self.watchers.join(", "),
            self.source
        )
    }

    fn check(&self, run: &Run, board: &RunBoard) -> Result<Option<String>, StepError> {
        let (handed, baselines) = board
            .rotations()
            .get(&self.source)
            .map(|r| (r.handed.unwrap_or_else(Instant::now), r.baselines.clone()))
            .unwrap_or_else(|| (Instant::now(), BTreeMap::new()));
        let watcher = sync::Watcher {
            namespace: self.namespace.clone(),
            revision: self.revision.clone(),
            peers: vec![self.source.clone()],
        };
        let source = &self.source;
        let ns = &self.namespace;
        let kept = "; the old token is kept";
        let mut waiting = Vec::new();
        for name in &self.watchers {
            let Some(cluster) = run.mesh.cluster(name) else {
                continue;
            };
            let (mut memo, scratch) = (ClusterNotes::default(), RunBoard::default());
            run.in_cluster(cluster, &mut memo, &scratch, |cx| {
                let pods = sync::ready_pods(&cx.live, &watcher)
                    .map_err(|e| StepError::other(name, format!("{e}{kept}"), None))?;
                for pod in &pods {
                    let key = (name.clone(), pod.clone());
                    let seen = self.acted.lock().unwrap_or_else(|e| e.into_inner()).contains(&key);
                    if !seen {
                        let log = cx.live.run(&kubectl::logs(
                            cx.target(),
                            &format!("pod/{pod}"),
                            ISTIOD_CONTAINER,
                            ns,
                            Some(handed.elapsed() + LOG_SLACK),
                            cx.timeout(),
                        ));
                        let log = log.map_err(|e| match e.transient_cause() {
                            Some(_) => e,
                            None => StepError::other(
                                name,
                                format!("istiod's log in pod `{pod}` could not be read, so meshup cannot tell it uses `{source}`'s new token{kept}: {}", sync::first_line(&e.to_string())),
                                Some(format!("reading it needs `get` on `pods/log` in namespace `{ns}`")),
                            ),
                        })?;
                        // A pod there before the hand-over must log a build later than its
                        // last one before; a pod that came since loaded the secret anew.
                        let rebuilt = match (sync::last_build(&log.stdout, source), baselines.get(&key)) {
                            (None, _) => false,
                            (Some(now), Some(Some(before))) => now > *before,
                            (Some(_), _) => true,
                        };
                        if !rebuilt {
                            waiting.push(format!("{name}/{pod}: `{source}` not rebuilt yet"));
                            continue;
                        }
                        self.acted.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
                    }
                    let view = sync::read_pod(&cx.live, cx.reporter, ns, pod);
                    if let Some(error) = view.error {
                        // Refused by RBAC: no later read will do. Anything else (a blinking API
                        // server) is read again until the gate's time is up.
                        if error.contains("pods/exec") {
                            return Err(StepError::other(
                                name,
                                format!("istiod's view in pod `{pod}` could not be read{kept}: {error}"),
                                None,
                            ));
                        }
                        waiting.push(format!("{name}/{pod}: view not read ({})", sync::first_line(&error)));
                        continue;
                    }
                    let state = view
                        .entries
                        .iter()
                        .skip(1)
                        .find(|e| e.id == *source)
                        .map_or(State::Missing, |e| State::from_clusterz(&e.sync_status));
                    if state != State::Synced {
                        waiting.push(format!("{name}/{pod}: `{source}` {}", state.word()));
                    }
                }
                Ok(())
            })?;
        }
        if !waiting.is_empty() {
            return Ok(Some(waiting.join(", ")));
        }
        if let Some(rotation) = board.rotations().get_mut(source) {
            rotation.acted = true;
        }
        Ok(None)
    }

    fn script(&self, mesh: &Mesh, options: &ScriptOptions) -> String {
        let source = &self.source;
        let mut out = format!(
            "# Each istiod pod must log that it built `{source}` anew since the new token (`Add cluster` or\n# `Update cluster`, then its labels), then report it synced, before the old token is revoked.\n"
        );
        let kubeconfig = crate::tools::step::kubeconfig_flag(options.kubeconfig);
        for name in &self.watchers {
            let Some(cluster) = mesh.cluster(name) else {
                continue;
            };
            let kubectl = |args: &str| {
                format!(
                    "kubectl {args} --namespace {} --context {}{kubeconfig}",
                    self.namespace,
                    shell_quote(&cluster.context)
                )
            };
            let pods = kubectl(&format!(
                "get pods --selector app=istiod,istio.io/rev={} --output name",
                self.revision
            ));
            let logs = kubectl("logs \"$pod\" --container discovery --since-time=\"$SINCE\"");
            let exec = kubectl("exec \"${pod#pod/}\" --container discovery");
            out.push_str(&format!(
                "for pod in $({pods}); do\n  until {logs} | grep -q $'cluster\\tcluster={source} '; do sleep 1; done\n  until {exec} -- pilot-discovery request GET /debug/clusterz \\\n    | grep -q '\"id\":\"{source}\"[^}}]*\"syncStatus\":\"synced\"'; do sleep 1; done\ndone\n"
            ));
        }
        out
    }
}

/// The token secrets the rotation replaces, deleted: their tokens stop working.
struct Revoke {
    namespace: String,
}

impl Work for Revoke {
    fn label(&self) -> &'static str {
        "old reader tokens"
    }

    fn run(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let name = cx.cluster.name.clone();
        let rotation = cx.board.rotations().get(&name).cloned();
        let Some(Rotation {
            old, acted: true, ..
        }) = rotation
        else {
            // Reached only after an earlier failure (a wave that runs anyway).
            return Err(StepError::other(
                &name,
                "the old reader tokens are kept: not every watcher was seen using the new one",
                Some(format!("run `meshup link --rotate {name}`")),
            ));
        };
        if !old.is_empty() {
            cx.live.run(&kubectl::delete(
                cx.target(),
                "secrets",
                &old,
                Some(&self.namespace),
                cx.timeout(),
            ))?;
        }
        if let Some(rotation) = cx.board.rotations().get_mut(&name) {
            rotation.revoked = true;
        }
        Ok(format!("{} revoked", old.len()))
    }

    fn script(&self, cx: &ScriptCx) -> String {
        let flags = format!(
            "--namespace {} --context {}{}",
            self.namespace,
            shell_quote(&cx.target.context),
            cx.kubeconfig_flag()
        );
        format!(
            "# Every reader token secret but the newest (the names sort by age).\nkubectl get secrets --selector {READER_TOKEN_LABEL}=true --output name {flags} | sort | head -n -1 \\\n  | xargs --no-run-if-empty kubectl delete {flags}\n"
        )
    }
}

/// Added to the time since the hand-over when reading istiod's log, for clocks that differ
/// between this machine and the node by a little.
const LOG_SLACK: Duration = Duration::from_secs(5);

/// How far back the baseline (an istiod pod's last build of the source before the hand-over)
/// reads the log: the gate's window starts LOG_SLACK before the hand-over, and the hand-over
/// follows the baseline reads within the rest of this window.
const BASELINE_WINDOW: Duration = Duration::from_secs(15);

/// `YYYYMMDDHHMMSS` in UTC: sorts as it ages.
fn stamp(t: OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    use serde_json::json;

    use super::*;
    use crate::engine::exec::{Summary, execute};
    use crate::engine::run::Retry;
    use crate::engine::topology::Choices;
    use crate::testing::{mesh, ok};
    use crate::tools::reporter::{Mode, Reporter};
    use crate::tools::runner::{Output, RecordingRunner};
    use crate::tools::step::Step;
    use crate::trust::TrustMode;

    const OLD: &str = "istio-reader-service-account-istio-remote-secret-token";

    /// A cluster with one reader token secret (`OLD`), whose token controller fills new ones,
    /// and whose istiod pod logs `logged` and reports every peer synced.
    fn answer(step: &Step, logged: &str) -> Output {
        let args = step.args.join(" ");
        if args.starts_with("get secrets") && args.contains("meshup.io/reader-token") {
            ok(&json!({"kind": "SecretList", "items": [{"metadata": {"name": OLD}}]}).to_string())
        } else if args.starts_with("get secret ") {
            ok(r#"{"kind":"Secret","data":{"token":"dG9r","ca.crt":"Q0E="}}"#)
        } else if args.starts_with("get pods") {
            ok(&json!({"kind": "PodList", "items": [{"metadata": {"name": "istiod-a"},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}]})
            .to_string())
        } else if args.starts_with("logs") {
            ok(logged)
        } else if args.starts_with("exec") {
            ok(&json!([{"id": step.cluster, "secretName": "", "syncStatus": "synced"},
                {"id": "cluster1", "secretName": "istio-system/istio-remote-secret-cluster1", "syncStatus": "synced"}])
            .to_string())
        } else {
            ok("")
        }
    }

    /// Answers like `answer`, but istiod's log shows `logged` only once something was applied
    /// in its cluster (before: an older build of cluster1, from the install).
    fn after_apply(logged: &'static str) -> impl Fn(&Step) -> Output + Send + Sync {
        let applied = Mutex::new(BTreeSet::new());
        move |step: &Step| {
            if step.args[0] == "apply" {
                applied.lock().unwrap().insert(step.cluster.clone());
            }
            if step.args[0] == "logs" && !applied.lock().unwrap().contains(&step.cluster) {
                return ok(INSTALLED);
            }
            answer(step, logged)
        }
    }

    /// Rotates cluster1 of a three-cluster mesh; after the new secret, istiod logs `logged`.
    fn rotate_cluster1(logged: &'static str, timeout: Duration) -> (Summary, Vec<Step>) {
        let m = mesh(3, TrustMode::None);
        let topology = Topology::of(&m, &Choices::default());
        let sources = sources(&m, &topology, Some(&["cluster1".to_string()]));
        let plan = plan(&m, &topology, &sources);
        let runner = RecordingRunner::new(after_apply(logged));
        let reporter = Reporter::new(Mode::Json, true, false);
        let run = Run {
            mesh: &m,
            runner: &runner,
            reporter: &reporter,
            jobs: 3,
            timeout,
            kubeconfig: None,
            retry: Retry::DEFAULT,
            locks: None,
            caches: Default::default(),
        };
        let summary = execute(&run, &plan);
        let calls = runner.calls.lock().unwrap().clone();
        (summary, calls)
    }

    const INSTALLED: &str = "2026-11-30T03:00:00.000000Z\tinfo\tAdd cluster\tcluster=cluster1 secret=istio-system/istio-remote-secret-cluster1\n";
    const REBUILT: &str = "2026-11-30T03:00:00.000000Z\tinfo\tAdd cluster\tcluster=cluster1 secret=istio-system/istio-remote-secret-cluster1\n2026-11-30T04:00:00.000000Z\tinfo\tUpdate cluster\tcluster=cluster1 secret=istio-system/istio-remote-secret-cluster1\n";

    fn position(calls: &[Step], cluster: &str, start: &str) -> Option<usize> {
        calls
            .iter()
            .position(|s| s.cluster == cluster && s.args.join(" ").starts_with(start))
    }

    #[test]
    fn a_rotation_is_three_waves_and_a_gate() {
        let m = mesh(3, TrustMode::None);
        let topology = Topology::of(&m, &Choices::default());
        let sources = sources(&m, &topology, Some(&["cluster1".to_string()]));
        let plan = plan(&m, &topology, &sources);
        let shape: Vec<(Vec<String>, bool)> = plan
            .waves
            .iter()
            .map(|w| {
                (
                    w.chains
                        .iter()
                        .map(|c| format!("{} {}", c.cluster, c.labels().join(",")))
                        .collect(),
                    w.gate.is_some(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (vec!["cluster1 new reader token".to_string()], false),
                (
                    vec![
                        "cluster2 new remote secret".to_string(),
                        "cluster3 new remote secret".to_string()
                    ],
                    true
                ),
                (vec!["cluster1 old reader tokens".to_string()], false),
            ]
        );
    }

    #[test]
    fn the_old_token_goes_only_after_every_watcher_logged_the_rebuild_and_is_synced() {
        let (summary, calls) = rotate_cluster1(REBUILT, Duration::from_secs(5));
        assert!(summary.ok, "{summary:?}");
        let revoked =
            position(&calls, "cluster1", &format!("delete secrets {OLD}")).expect("revoked");
        for watcher in ["cluster2", "cluster3"] {
            let applied = position(&calls, watcher, "apply").unwrap();
            // istiod's log is read before (what it built lately, a bounded read: never the
            // whole log) and after the apply.
            let baseline =
                position(&calls, watcher, "logs pod/istiod-a --container discovery").unwrap();
            assert!(
                calls[baseline].args.iter().any(|a| a == "--since=15s"),
                "{:?}",
                calls[baseline].args
            );
            let logs = calls
                .iter()
                .rposition(|s| s.cluster == watcher && s.args[0] == "logs")
                .unwrap();
            let exec = position(&calls, watcher, "exec istiod-a").unwrap();
            assert!(baseline < applied, "{watcher}");
            assert!(applied < logs && logs < exec && exec < revoked, "{watcher}");
        }
        assert_eq!(summary.rotated.len(), 1);
        assert_eq!(summary.rotated[0].old, [OLD]);
        assert!(summary.rotated[0].new.starts_with(&format!("{OLD}-")));
    }

    #[test]
    fn without_a_rebuild_after_the_hand_over_the_old_token_is_kept() {
        // clusterz says synced all along, and the log holds only the install's build: that
        // proves nothing.
        let (summary, calls) = rotate_cluster1(INSTALLED, Duration::from_secs(1));
        assert!(!summary.ok);
        assert!(
            position(&calls, "cluster1", "delete").is_none(),
            "revoked anyway"
        );
        assert!(position(&calls, "cluster2", "exec").is_none());
        assert!(
            summary.gates[0].error.contains("gave up after 1s"),
            "{:?}",
            summary.gates
        );
        assert!(summary.rotated.is_empty());
    }

    #[test]
    fn a_retried_new_token_reuses_the_token_secret_it_made() {
        let failed_once = AtomicBool::new(false);
        let m = mesh(2, TrustMode::None);
        let topology = Topology::of(&m, &Choices::default());
        let sources = sources(&m, &topology, Some(&["cluster1".to_string()]));
        let plan = plan(&m, &topology, &sources);
        let answer = after_apply(REBUILT);
        let runner = RecordingRunner::new(|step: &Step| {
            if step.args[0] == "get"
                && step.args[1] == "secret"
                && !failed_once.swap(true, Ordering::SeqCst)
            {
                return Output {
                    code: Some(1),
                    stdout: String::new(),
                    stderr: "read: connection reset by peer".into(),
                };
            }
            answer(step)
        });
        let reporter = Reporter::new(Mode::Json, true, false);
        let run = Run {
            jobs: 2,
            timeout: Duration::from_secs(5),
            retry: Retry {
                times: 2,
                first: Duration::from_millis(1),
                most: Duration::from_millis(1),
            },
            ..crate::testing::run(&m, &runner, &reporter)
        };
        let summary = execute(&run, &plan);
        assert!(summary.ok, "{summary:?}");
        let names: BTreeSet<String> = runner
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.args[0] == "apply" && s.cluster == "cluster1")
            .map(|s| {
                let manifest =
                    String::from_utf8(s.stdin.as_ref().unwrap().expose().clone()).unwrap();
                manifest
                    .lines()
                    .find(|l| l.trim_start().starts_with("name:"))
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn rotation_script_snapshot() {
        let m = mesh(2, TrustMode::None);
        let topology = Topology::of(&m, &Choices::default());
        let sources = sources(&m, &topology, None);
        insta::assert_snapshot!(crate::engine::plan::script(
            &m,
            &plan(&m, &topology, &sources),
            &ScriptOptions {
                values_dir: Path::new("meshup-values"),
                mesh_flags: &[],
                kubeconfig: None,
                timeout: Duration::from_secs(60),
                pulls: &[],
            }
        ));
    }

    #[test]
    fn token_secret_names_sort_by_age() {
        let first = TOKEN_SECRET.to_string();
        let a = format!(
            "{TOKEN_SECRET}-{}",
            stamp(OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap())
        );
        let b = format!(
            "{TOKEN_SECRET}-{}",
            stamp(OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap())
        );
        let mut names = vec![b.clone(), first.clone(), a.clone()];
        names.sort();
        assert_eq!(names, [first, a, b]);
    }
}
