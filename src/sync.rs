//! istiod's own view of its peers: `/debug/clusterz` on its monitoring port, read from every
//! ready istiod pod through the API server's pod proxy or, where the control plane cannot
//! reach pods, through `kubectl port-forward`. It answers whether istiod can use the remote
//! secrets, not only whether they exist: a peer whose API server is unreachable from inside
//! the cluster, or whose token is refused, stays `timeout`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::components::Cx;
use crate::kubectl;
use crate::live::Pod;
use crate::runner::StepError;

/// istiod's monitoring port, which serves `/debug/clusterz`.
pub const MONITORING_PORT: u16 = 15014;
const CLUSTERZ: &str = "debug/clusterz";

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
    fn from_clusterz(status: &str) -> State {
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

/// How a pod's view was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    PodProxy,
    PortForward,
}

/// One istiod pod's answer.
#[derive(Debug, Clone, Serialize)]
pub struct PodView {
    pub pod: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
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

    /// Whether a later read may turn this row green without anyone acting.
    pub fn settling(&self) -> bool {
        self.peers.values().any(|c| c.state == State::Syncing)
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

/// Reads the view of every ready istiod pod of `watcher` in `cx`'s cluster.
pub fn read(cx: &Cx, watcher: &Watcher) -> Row {
    let mut row = Row {
        cluster: cx.cluster.name.clone(),
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
    let selector = format!("app=istiod,istio.io/rev={}", watcher.revision);
    let pods: Vec<Pod> = match cx
        .live
        .list("pods", Some(&watcher.namespace), Some(&selector))
    {
        Ok(pods) => pods,
        Err(e) => {
            row.error = Some(e.to_string());
            row.peers = unknown(&watcher.peers);
            return row;
        }
    };
    let ready: Vec<&Pod> = pods.iter().filter(|p| p.is_ready()).collect();
    if ready.is_empty() {
        row.error = Some(format!(
            "no ready istiod pod (`{selector}`) in namespace `{}`",
            watcher.namespace
        ));
        row.peers = unknown(&watcher.peers);
        return row;
    }
    for pod in ready {
        row.pods
            .push(read_pod(cx, &watcher.namespace, &pod.metadata.name));
    }
    merge(&mut row, watcher);
    row
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

/// One pod's `/debug/clusterz`: through the pod proxy, else through a port-forward.
fn read_pod(cx: &Cx, namespace: &str, pod: &str) -> PodView {
    let path =
        format!("/api/v1/namespaces/{namespace}/pods/{pod}:{MONITORING_PORT}/proxy/{CLUSTERZ}");
    let proxied = match cx.live.get_raw::<Vec<Entry>>(&path) {
        Ok(entries) => {
            return PodView {
                pod: pod.to_string(),
                via: Some(Via::PodProxy),
                error: None,
                entries,
            };
        }
        Err(e @ StepError::Interrupted) => {
            return PodView {
                pod: pod.to_string(),
                via: None,
                error: Some(e.to_string()),
                entries: Vec::new(),
            };
        }
        Err(e) => e,
    };
    cx.reporter.warn(&format!(
        "[{}] the API server's pod proxy did not reach istiod pod `{pod}` ({}); reading its view through `kubectl port-forward` instead",
        cx.cluster.name,
        first_line(&proxied.to_string())
    ));
    match forwarded(cx, namespace, pod) {
        Ok(entries) => PodView {
            pod: pod.to_string(),
            via: Some(Via::PortForward),
            error: None,
            entries,
        },
        Err(forward) => PodView {
            pod: pod.to_string(),
            via: None,
            error: Some(format!(
                "pod proxy: {}; port-forward: {}",
                first_line(&proxied.to_string()),
                first_line(&forward)
            )),
            entries: Vec::new(),
        },
    }
}

fn forwarded(cx: &Cx, namespace: &str, pod: &str) -> Result<Vec<Entry>, String> {
    let step = kubectl::port_forward(cx.target(), pod, namespace, MONITORING_PORT, cx.timeout());
    let forward = cx.live.runner.forward(&step).map_err(|e| e.to_string())?;
    let body = http_get(forward.port, &format!("/{CLUSTERZ}"), cx.timeout())?;
    serde_json::from_str(&body)
        .map_err(|e| format!("istiod's /{CLUSTERZ} is not the JSON meshup expects: {e}"))
}

/// A plain HTTP GET to 127.0.0.1:`port` (the port-forward's end); the body on 200.
fn http_get(port: u16, path: &str, timeout: Duration) -> Result<String, String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = timeout.min(Duration::from_secs(30));
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .map_err(|e| format!("cannot send to {address}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("no answer from {address}: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{address} answered no HTTP"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("{address}{path} answered `{status}`"));
    }
    Ok(body.to_string())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
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
    use super::*;
    use crate::components::{Board, Memo};
    use crate::exec::Run;
    use crate::reporter::{Mode, Reporter};
    use crate::runner::{Output, RecordingRunner};
    use crate::step::Step;
    use crate::testing::{mesh, ok};
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
            mesh: &m,
            runner: &runner,
            reporter: &reporter,
            jobs: 1,
            timeout: Duration::from_secs(5),
            kubeconfig: None,
            retry: crate::exec::Retry::DEFAULT,
            locks: None,
        };
        let watcher = Watcher {
            namespace: "istio-system".into(),
            revision: "default".into(),
            peers: vec!["cluster2".into(), "cluster3".into()],
        };
        let (mut memo, board) = (Memo::default(), Board::default());
        let row = run.in_cluster(&m.clusters[0], &mut memo, &board, |cx| read(cx, &watcher));
        (row, runner.command_lines())
    }

    #[test]
    fn every_ready_pod_is_read_through_the_pod_proxy_and_the_worst_state_wins() {
        let (row, calls) = read_with(|step| {
            let args = step.args.join(" ");
            if args.starts_with("get pods") {
                ok(&pods(&["istiod-a", "istiod-b"]))
            } else if args.contains("pods/istiod-a:15014/proxy/debug/clusterz") {
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
        assert_eq!(row.peers["cluster2"].state, State::Timeout);
        assert_eq!(row.peers["cluster3"].state, State::Missing);
        assert_eq!(row.unexpected["gone"].state, State::Unexpected);
        assert_eq!(row.synced(), (0, 2));
        assert!(!row.ok());
    }

    #[test]
    fn a_refused_pod_proxy_falls_back_to_port_forward() {
        let (row, calls) = read_with(|step| {
            let args = step.args.join(" ");
            if args.starts_with("get pods") {
                ok(&pods(&["istiod-a"]))
            } else if args.starts_with("get --raw") {
                Output {
                    code: Some(1),
                    stdout: String::new(),
                    stderr: "Error from server (Forbidden): pods \"istiod-a:15014\" is forbidden"
                        .into(),
                }
            } else {
                // The recording runner forwards nowhere: port 9 has no listener.
                ok("Forwarding from 127.0.0.1:9 -> 15014")
            }
        });
        assert_eq!(
            calls[2],
            "kubectl port-forward pod/istiod-a :15014 --address 127.0.0.1 --namespace istio-system --context kind-cluster1 --request-timeout=5s"
        );
        let error = row.pods[0].error.as_deref().unwrap();
        assert!(
            error.starts_with("pod proxy: [cluster1] `kubectl get --raw"),
            "{error}"
        );
        assert!(
            error.contains("port-forward: cannot connect to 127.0.0.1:9"),
            "{error}"
        );
        assert_eq!(row.peers["cluster2"].state, State::Unknown);
        assert!(!row.ok());
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

    #[test]
    fn http_get_reads_a_body_from_a_local_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = [0u8; 512];
            let n = socket.read(&mut request).unwrap();
            assert!(String::from_utf8_lossy(&request[..n]).starts_with("GET /debug/clusterz "));
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[]")
                .unwrap();
        });
        assert_eq!(
            http_get(port, "/debug/clusterz", Duration::from_secs(5)).unwrap(),
            "[]"
        );
        server.join().unwrap();
    }
}
