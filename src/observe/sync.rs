//! istiod's own view of its peers: `/debug/clusterz` on its monitoring port, read in every
//! ready istiod pod with `kubectl exec POD -c discovery -- pilot-discovery request GET
//! /debug/clusterz`. That is the path a real istiod answers: its `/debug/*` handlers accept
//! only loopback callers or callers it authenticates (pilot/pkg/xds/debug.go
//! `allowAuthenticatedOrLocalhost`), and the API server's pod proxy reaches it from outside
//! without the caller's token, so a proxied read gets 401. `pilot-discovery request` calls
//! 127.0.0.1:15014 from inside the pod (pilot/cmd/pilot-discovery/app/request.go).
//!
//! What clusterz proves (pkg/kube/multicluster/cluster.go `SyncStatus`): a peer is `syncing`
//! until istiod's informers for it first synced, then `synced` for good; `timeout` when no
//! first sync came within `PILOT_REMOTE_CLUSTER_TIMEOUT`; `closed` once stopped. So it shows
//! that a remote secret worked when istiod loaded it, not that its token works now; see
//! `credentials.rs` for that.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::mesh::Mesh;
use crate::observe::finding::Finding;
use crate::tools::kubectl;
use crate::tools::live::Live;
use crate::tools::live::Pod;
use crate::tools::reporter::Reporter;
use crate::tools::runner::StepError;

/// istiod's container in its pods.
pub const ISTIOD_CONTAINER: &str = "discovery";
/// What reads `/debug/clusterz` from inside an istiod pod (it calls 127.0.0.1:15014).
const CLUSTERZ: [&str; 4] = ["pilot-discovery", "request", "GET", "/debug/clusterz"];

/// One entry of `/debug/clusterz`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Entry {
    pub id: String,
    #[serde(rename = "secretName", default)]
    pub secret_name: String,
    #[serde(rename = "syncStatus", default)]
    pub sync_status: String,
}

/// How one peer looks from one cluster's istiod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Synced,
    Syncing,
    Closed,
    Timeout,
    /// istiod has no remote secret for a peer it should watch.
    Missing,
    /// istiod watches a cluster the mesh file does not give it.
    Unexpected,
    /// istiod's view could not be read.
    Unknown,
}

impl State {
    pub fn from_clusterz(status: &str) -> State {
        match status {
            "synced" => State::Synced,
            "syncing" => State::Syncing,
            "closed" => State::Closed,
            "timeout" => State::Timeout,
            _ => State::Unknown,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            State::Synced => "synced",
            State::Syncing => "syncing",
            State::Closed => "closed",
            State::Timeout => "timeout",
            State::Missing => "missing",
            State::Unexpected => "unexpected",
            State::Unknown => "unknown",
        }
    }
}

/// One istiod pod's answer.
#[derive(Debug, Clone, Serialize)]
pub struct PodView {
    pub pod: String,
    /// Why its view could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub entries: Vec<Entry>,
}

/// One peer as the row's istiod sees it (the worst of its pods).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cell {
    pub state: State,
    /// The remote secret istiod reads it from (`NAMESPACE/NAME`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// What one cluster's istiod reports about its peers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub cluster: String,
    /// The istiod revision read, when the cluster runs more than one (during an upgrade).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Every peer the topology says this istiod watches.
    pub peers: BTreeMap<String, Cell>,
    /// Clusters it watches that the mesh file does not give it.
    pub unexpected: BTreeMap<String, Cell>,
    pub pods: Vec<PodView>,
    /// Why nothing could be read (no ready istiod, an API server that does not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Row {
    /// (synced, expected) peers.
    pub fn synced(&self) -> (usize, usize) {
        let synced = self
            .peers
            .values()
            .filter(|c| c.state == State::Synced)
            .count();
        (synced, self.peers.len())
    }

    /// Every expected peer synced, nothing unexpected, every pod read.
    pub fn ok(&self) -> bool {
        self.error.is_none()
            && self.unexpected.is_empty()
            && self.peers.values().all(|c| c.state == State::Synced)
    }
}

/// Where istiod runs and which peers it must watch.
#[derive(Debug, Clone)]
pub struct Watcher {
    pub namespace: String,
    /// `istio.io/rev` of its pods (`default` without a revision).
    pub revision: String,
    pub peers: Vec<String>,
}

/// The selector of istiod's pods, every revision.
pub const ISTIOD_PODS: &str = "app=istiod";

/// Reads the view of every ready istiod pod of `watcher` in `cx`'s cluster.
pub fn read(live: &Live, reporter: &Reporter, watcher: &Watcher) -> Row {
    read_among(live, reporter, watcher, None)
}

/// [`read`], with istiod's pods (`app=istiod` in the watcher's namespace, every revision)
/// already read by the command when `istiod_pods` is given: they are not read again.
pub fn read_among(
    live: &Live,
    reporter: &Reporter,
    watcher: &Watcher,
    istiod_pods: Option<&[Pod]>,
) -> Row {
    let mut row = Row {
        cluster: live.target.cluster.clone(),
        revision: None,
        peers: BTreeMap::new(),
        unexpected: BTreeMap::new(),
        pods: Vec::new(),
        error: None,
    };
    let unknown = |peers: &[String]| {
        peers
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    Cell {
                        state: State::Unknown,
                        secret: None,
                    },
                )
            })
            .collect()
    };
    let ready = match istiod_pods {
        Some(pods) => ready_of(
            pods.iter().filter(|p| {
                let label = |k: &str| p.metadata.labels.get(k).map(String::as_str);
                label("app") == Some("istiod") && label("istio.io/rev") == Some(&watcher.revision)
            }),
            watcher,
        ),
        None => ready_pods(live, watcher),
    };
    let ready = match ready {
        Ok(ready) => ready,
        Err(error) => {
            row.error = Some(error);
            row.peers = unknown(&watcher.peers);
            return row;
        }
    };
    for pod in ready {
        row.pods
            .push(read_pod(live, reporter, &watcher.namespace, &pod));
    }
    merge(&mut row, watcher);
    row
}

/// The names of `watcher`'s ready istiod pods; an error says why there are none to read.
pub fn ready_pods(live: &Live, watcher: &Watcher) -> Result<Vec<String>, String> {
    let selector = format!("app=istiod,istio.io/rev={}", watcher.revision);
    let pods: Vec<Pod> = live
        .list("pods", Some(&watcher.namespace), Some(&selector))
        .map_err(|e| e.to_string())?;
    ready_of(pods.iter(), watcher)
}

/// The names of the ready ones among `pods`, istiod's of `watcher`'s revision.
fn ready_of<'p>(
    pods: impl Iterator<Item = &'p Pod>,
    watcher: &Watcher,
) -> Result<Vec<String>, String> {
    let selector = format!("app=istiod,istio.io/rev={}", watcher.revision);
    let ready: Vec<String> = pods
        .filter(|p| p.is_ready())
        .map(|p| p.metadata.name.clone())
        .collect();
    if ready.is_empty() {
        return Err(format!(
            "no ready istiod pod (`{selector}`) in namespace `{}`",
            watcher.namespace
        ));
    }
    Ok(ready)
}

/// The time stamp of the last line in istiod's log that says its secret controller built
/// remote cluster `cluster` from a new or changed kubeconfig: message `Add cluster` or `Update
/// cluster`, then a tab and the labels `cluster=ID secret=NS/NAME` (`config=` from 1.30)
/// (pkg/kube/multicluster/secretcontroller.go, `logger.Infof("%s cluster", action)`; the
/// line layout is pkg/log `emitWithTime`: time, level, message, tab, labels). Istio writes
/// its times as RFC 3339 in UTC with microseconds, so later lines compare greater.
pub fn last_build(log: &str, cluster: &str) -> Option<String> {
    let label = format!("cluster={cluster}");
    log.lines()
        .filter(|line| {
            let mut fields = line.split('\t');
            let built = fields
                .clone()
                .any(|f| f == "Add cluster" || f == "Update cluster");
            built && fields.any(|f| f.split(' ').any(|l| l == label))
        })
        .filter_map(|line| line.split('\t').next())
        .map(str::to_string)
        .next_back()
}

/// The worst state of each peer across the pods that answered.
fn merge(row: &mut Row, watcher: &Watcher) {
    let own = &row.cluster;
    let answered: Vec<&PodView> = row.pods.iter().filter(|p| p.error.is_none()).collect();
    if answered.is_empty() {
        row.error = Some(format!(
            "no istiod pod answered: {}",
            row.pods
                .iter()
                .filter_map(|p| p.error.as_deref())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    for peer in &watcher.peers {
        let mut worst = Cell {
            state: if answered.is_empty() {
                State::Unknown
            } else {
                State::Synced
            },
            secret: None,
        };
        for view in &answered {
            let cell = match view.entries.iter().skip(1).find(|e| e.id == *peer) {
                Some(entry) => Cell {
                    state: State::from_clusterz(&entry.sync_status),
                    secret: Some(entry.secret_name.clone()),
                },
                None => Cell {
                    state: State::Missing,
                    secret: None,
                },
            };
            if cell.state > worst.state || worst.secret.is_none() {
                worst = Cell {
                    state: cell.state.max(worst.state),
                    secret: cell.secret.or(worst.secret),
                };
            }
        }
        row.peers.insert(peer.clone(), worst);
    }
    for view in &answered {
        // The first entry is istiod's own cluster.
        for entry in view.entries.iter().skip(1) {
            if entry.id != *own && !watcher.peers.contains(&entry.id) {
                row.unexpected.insert(
                    entry.id.clone(),
                    Cell {
                        state: State::Unexpected,
                        secret: Some(entry.secret_name.clone()),
                    },
                );
            }
        }
    }
}

/// One pod's `/debug/clusterz`, read inside the pod.
pub fn read_pod(live: &Live, reporter: &Reporter, namespace: &str, pod: &str) -> PodView {
    let step = kubectl::exec(
        live.target,
        pod,
        ISTIOD_CONTAINER,
        namespace,
        &CLUSTERZ,
        live.timeout,
    );
    let read = live.run(&step).and_then(|output| {
        serde_json::from_str::<Vec<Entry>>(output.stdout.trim())
            .map_err(|e| StepError::malformed(&step, format!("not clusterz JSON: {e}")))
    });
    match read {
        Ok(entries) => PodView {
            pod: pod.to_string(),
            error: None,
            entries,
        },
        Err(e) => {
            let mut error = first_line(&e.to_string()).to_string();
            if refused(&e) {
                error = format!(
                    "{error}; reading istiod's view needs `create` on `pods/exec` in namespace `{namespace}` (`kubectl auth can-i create pods/exec -n {namespace}`)"
                );
                reporter.warn(&format!("[{}] {error}", live.target.cluster));
            }
            PodView {
                pod: pod.to_string(),
                error: Some(error),
                entries: Vec::new(),
            }
        }
    }
}

/// Whether the API server refused the exec (RBAC), as opposed to istiod not answering.
fn refused(e: &StepError) -> bool {
    match e {
        StepError::Failed(f) => {
            f.stderr_tail.contains("forbidden") && f.stderr_tail.contains("pods/exec")
        }
        _ => false,
    }
}

/// The first line of `text` (an error's headline).
pub fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// What is wrong in `row` as findings of its cluster (the same for `status` and `verify`):
/// a view that could not be read, each peer not `synced` (but those in `said`, a missing
/// secret already reported), each cluster watched that the mesh file does not give it.
pub fn findings(mesh: &Mesh, row: &Row, said: &[String]) -> Vec<Finding> {
    let cluster = Some(row.cluster.as_str());
    let what = "istiod sync";
    if let Some(error) = &row.error {
        return vec![Finding::fail(
            cluster,
            what,
            format!(
                "{}: istiod's view could not be read: {}",
                row.cluster,
                error.lines().next().unwrap_or_default()
            ),
        )];
    }
    let secret = |cell: &Cell| {
        cell.secret
            .as_ref()
            .map(|s| format!(" (secret {s})"))
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (peer, cell) in &row.peers {
        if cell.state == State::Synced || (cell.state == State::Missing && said.contains(peer)) {
            continue;
        }
        let server = mesh
            .cluster(peer)
            .map(|c| c.server.as_str())
            .unwrap_or_default();
        out.push(
            Finding::fail(
                cluster,
                what,
                format!(
                    "{} → {peer}: {}{}",
                    row.cluster,
                    cell.state.word(),
                    secret(cell)
                ),
            )
            .fix(hint(&row.cluster, peer, cell.state, server)),
        );
    }
    for (id, cell) in &row.unexpected {
        out.push(
            Finding::fail(
                cluster,
                what,
                format!("{} → {id}: unexpected{}", row.cluster, secret(cell)),
            )
            .fix(hint(&row.cluster, id, State::Unexpected, "")),
        );
    }
    out
}

/// What to do about a peer in `state` as seen from `cluster` (`server`: the peer's address).
pub fn hint(cluster: &str, peer: &str, state: State, server: &str) -> String {
    match state {
        State::Synced => String::new(),
        State::Syncing => format!(
            "istiod in `{cluster}` is still syncing `{peer}`; wait a little (`meshup verify --wait 2m`)"
        ),
        State::Timeout => format!(
            "istiod in `{cluster}` cannot use `{peer}`'s API server at {server}: it is not reachable from inside `{cluster}`, or `{peer}`'s token is refused; check `apiServer` of `{peer}` in the mesh file, then run `meshup install` (or `meshup link`)"
        ),
        State::Closed => format!(
            "istiod in `{cluster}` closed its watch of `{peer}` (its remote secret changed or went away); run `meshup link`, or restart istiod if it stays closed"
        ),
        State::Missing => format!(
            "istiod in `{cluster}` has no remote secret for `{peer}`: it is absent or ignored (another namespace, no label `istio/multiCluster=true`, or a second secret for the same cluster id); run `meshup link`"
        ),
        State::Unexpected => format!(
            "istiod in `{cluster}` watches `{peer}`, which the mesh file does not give it; delete that secret (`meshup link` removes the ones meshup made) or add the cluster to the mesh file"
        ),
        State::Unknown => format!(
            "istiod's view in `{cluster}` could not be read; check that istiod runs (`meshup status`)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::components::{ClusterNotes, RunBoard};
    use crate::engine::run::Run;
    use crate::testing::{mesh, ok};
    use crate::tools::reporter::{Mode, Reporter};
    use crate::tools::runner::{Output, RecordingRunner};
    use crate::tools::step::Step;
    use crate::trust::TrustMode;

    fn pods(names: &[&str]) -> String {
        let items: Vec<serde_json::Value> = names
            .iter()
            .map(|n| {
                serde_json::json!({"metadata": {"name": n}, "status": {"phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}]}})
            })
            .collect();
        serde_json::json!({"kind": "PodList", "items": items}).to_string()
    }

    fn clusterz(entries: &[(&str, &str, &str)]) -> String {
        let entries: Vec<serde_json::Value> = entries
            .iter()
            .map(|(id, secret, status)| {
                serde_json::json!({"id": id, "secretName": secret, "syncStatus": status})
            })
            .collect();
        serde_json::Value::Array(entries).to_string()
    }

    fn read_with(respond: impl Fn(&Step) -> Output + Send + Sync) -> (Row, Vec<String>) {
        let m = mesh(3, TrustMode::None);
        let runner = RecordingRunner::new(respond);
        let reporter = Reporter::new(Mode::Json, true, false);
        let run = Run {
            jobs: 1,
            timeout: Duration::from_secs(5),
            retry: crate::engine::run::Retry::DEFAULT,
            ..crate::testing::run(&m, &runner, &reporter)
        };
        let watcher = Watcher {
            namespace: "istio-system".into(),
            revision: "default".into(),
            peers: vec!["cluster2".into(), "cluster3".into()],
        };
        let (mut memo, board) = (ClusterNotes::default(), RunBoard::default());
        let row = run.in_cluster(&m.clusters[0], &mut memo, &board, |cx| {
            read(&cx.live, cx.reporter, &watcher)
        });
        (row, runner.command_lines())
    }

    #[test]
    fn every_ready_pod_is_read_inside_the_pod_and_the_worst_state_wins() {
        let (row, calls) = read_with(|step| {
            let args = step.args.join(" ");
            if args.starts_with("get pods") {
                ok(&pods(&["istiod-a", "istiod-b"]))
            } else if args.starts_with("exec istiod-a --container discovery") {
                ok(&clusterz(&[
                    ("cluster1", "", "synced"),
                    (
                        "cluster2",
                        "istio-system/istio-remote-secret-cluster2",
                        "synced",
                    ),
                    (
                        "cluster3",
                        "istio-system/istio-remote-secret-cluster3",
                        "synced",
                    ),
                ]))
            } else {
                ok(&clusterz(&[
                    ("cluster1", "", "synced"),
                    (
                        "cluster2",
                        "istio-system/istio-remote-secret-cluster2",
                        "timeout",
                    ),
                    ("gone", "istio-system/istio-remote-secret-gone", "synced"),
                ]))
            }
        });
        assert!(
            calls[0].contains("--selector app=istiod,istio.io/rev=default"),
            "{calls:?}"
        );
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(
            calls[1],
            "kubectl exec istiod-a --container discovery --namespace istio-system --context kind-cluster1 --request-timeout=5s -- pilot-discovery request GET /debug/clusterz"
        );
        assert_eq!(row.peers["cluster2"].state, State::Timeout);
        assert_eq!(row.peers["cluster3"].state, State::Missing);
        assert_eq!(row.unexpected["gone"].state, State::Unexpected);
        assert_eq!(row.synced(), (0, 2));
        assert!(!row.ok());
    }

    #[test]
    fn a_refused_exec_names_the_rbac_verb_it_needs() {
        let (row, _) = read_with(|step| {
            if step.args[0] == "get" {
                ok(&pods(&["istiod-a"]))
            } else {
                Output {
                    code: Some(1),
                    stdout: String::new(),
                    stderr: "Error from server (Forbidden): pods \"istiod-a\" is forbidden: User \"ci\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"istio-system\"".into(),
                }
            }
        });
        let error = row.error.as_deref().unwrap();
        assert!(
            error.contains("needs `create` on `pods/exec` in namespace `istio-system`"),
            "{error}"
        );
        assert_eq!(row.peers["cluster2"].state, State::Unknown);
        assert!(!row.ok());
    }

    #[test]
    fn output_that_is_not_clusterz_is_an_error_not_an_empty_view() {
        let (row, _) = read_with(|step| {
            if step.args[0] == "get" {
                ok(&pods(&["istiod-a"]))
            } else {
                ok("Error: received unsuccessful status code 401")
            }
        });
        assert!(
            row.error.as_deref().unwrap().contains("not clusterz JSON"),
            "{row:?}"
        );
        assert_eq!(row.peers["cluster3"].state, State::Unknown);
    }

    #[test]
    fn istiods_log_shows_when_it_built_a_cluster_anew() {
        // Istio 1.28 labels the secret, 1.30 on the config; both name the cluster.
        let before_1_30 = "2026-11-30T04:00:00.123456Z\tinfo\tmulticluster\tUpdate cluster\tcluster=cluster2 secret=istio-system/istio-remote-secret-cluster2";
        let from_1_30 = "2026-11-30T04:00:00.123456Z\tinfo\tmulticluster\tAdd cluster\tcluster=cluster2 config=istio-system/istio-remote-secret-cluster2";
        assert_eq!(
            last_build(before_1_30, "cluster2").as_deref(),
            Some("2026-11-30T04:00:00.123456Z")
        );
        assert!(last_build(from_1_30, "cluster2").is_some());
        assert!(last_build(before_1_30, "cluster20").is_none());
        assert!(last_build(before_1_30, "cluster").is_none());
        let both = format!(
            "{before_1_30}\n{}",
            from_1_30.replace("04:00:00", "04:00:07")
        );
        assert_eq!(
            last_build(&both, "cluster2").as_deref(),
            Some("2026-11-30T04:00:07.123456Z")
        );
        let skipped = "2026-11-30T04:00:00.123456Z\tinfo\tmulticluster\tskipping update (kubeconfig are identical)\tcluster=cluster2 secret=istio-system/istio-remote-secret-cluster2";
        assert!(last_build(skipped, "cluster2").is_none());
        assert!(last_build("", "cluster2").is_none());
    }

    #[test]
    fn no_ready_istiod_is_an_error_for_the_row() {
        let (row, _) = read_with(|step| {
            if step.args[0] == "get" && step.args[1] == "pods" {
                ok(
                    r#"{"kind":"PodList","items":[{"metadata":{"name":"istiod-x"},"status":{"phase":"Pending"}}]}"#,
                )
            } else {
                ok("")
            }
        });
        assert!(
            row.error
                .as_deref()
                .unwrap()
                .contains("no ready istiod pod")
        );
        assert_eq!(row.synced(), (0, 2));
    }
}
