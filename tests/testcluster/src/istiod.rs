//! istiod's multicluster secret controller, one per ready istiod pod, as Istio's
//! `pkg/kube/multicluster` runs it: remote secrets reach each pod after an informer lag and
//! are processed in order; every data key becomes a remote cluster that is `syncing` until a
//! first successful list of its API server, `synced` for good after that, `timeout` when the
//! remote cluster timeout passed first; a changed kubeconfig rebuilds the cluster (stop, then
//! start up to Istio 1.29; swap in, with the old one serving until the new one synced, from
//! 1.30). The pod's log gets the lines the source writes at info level and above.
//!
//! The state is plain data ([`Istiod`]) changed under the cluster's state lock with an explicit
//! `now`, so the unit tests below drive it without a clock; [`run`] is the background task that
//! feeds it events, and [`run_cluster`] the emulated informers' initial list of one remote
//! cluster.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::proxy::{Peer, container_env, is_istiod, parse_kubeconfig, pod_ready, probe};
use crate::server::Shared;
use crate::store::{Key, State, meta_str};

/// How often an emulated remote cluster retries its initial list (client-go's reflector backs
/// off from 800 ms; a shorter retry keeps the tests quick).
const RETRY: Duration = Duration::from_millis(150);

/// The Istio minor version of an istiod pod: the tag of its `discovery` container's image
/// (`docker.io/istio/pilot:1.28.1` is (1, 28)); `None` when the tag names no version.
pub fn version_of(pod: &Value) -> Option<(u32, u32)> {
    let image = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["name"] == "discovery")
                .or_else(|| cs.first())
        })
        .and_then(|c| c.get("image"))
        .and_then(Value::as_str)?;
    let last = image.rsplit('/').next().unwrap_or(image);
    let tag = last.rsplit_once(':').map(|(_, t)| t)?;
    let mut parts = tag.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(Some(major)), Some(Some(minor))) => Some((major, minor)),
        _ => None,
    }
}

/// The remote cluster timeout of an istiod pod: env `PILOT_REMOTE_CLUSTER_TIMEOUT` of its
/// containers (a Go duration such as `30s`, `500ms`, `1m`), else `default`.
pub fn remote_cluster_timeout(pod: &Value, default: Duration) -> Duration {
    container_env(pod, "PILOT_REMOTE_CLUSTER_TIMEOUT")
        .and_then(parse_go_duration)
        .unwrap_or(default)
}

/// Parses a Go duration made of `h`, `m`, `s`, `ms` parts (`1m30s`, `500ms`, `0`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total))
}

/// A duration the way Go's `time.Duration.String` prints the common cases (`30s`, `2s`,
/// `1.5s`, `500ms`, `1m0s`).
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    let trim = |v: String| {
        if v.contains('.') {
            v.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            v
        }
    };
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", trim(format!("{:.3}", ns as f64 / 1e3)));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", trim(format!("{:.6}", ns as f64 / 1e6)));
    }
    let secs = d.as_secs();
    let frac = d.subsec_nanos();
    let s = |whole: u64| {
        if frac == 0 {
            format!("{whole}s")
        } else {
            trim(format!("{whole}.{frac:09}")) + "s"
        }
    };
    if secs < 60 {
        return s(secs);
    }
    let (h, m, sec) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{}", s(sec))
    } else {
        format!("{m}m{}", s(sec))
    }
}

/// One remote cluster in istiod's cluster store (`multicluster.Cluster`).
#[derive(Debug, Clone)]
pub struct Remote {
    /// Tells this cluster apart from earlier and later ones of the same id.
    pub serial: u64,
    /// The cluster id: the secret's data key.
    pub id: String,
    /// `NAMESPACE/NAME` of the secret it came from.
    pub secret: String,
    /// The kubeconfig as stored in the secret (equal bytes ⇔ equal SHA-256, which istiod
    /// compares).
    pub kubeconfig: String,
    /// Server, CA and token of the kubeconfig.
    pub peer: Peer,
    /// Its informers' first sync completed (sticky).
    pub synced: bool,
    /// The remote cluster timeout passed before the first sync.
    pub timed_out: bool,
}

impl Remote {
    /// `syncing`, `synced` or `timeout` (`SyncStatus`; a stopped cluster, `closed`, leaves
    /// the store at once, so clusterz never lists it).
    pub fn status(&self) -> &'static str {
        if self.timed_out && !self.synced {
            "timeout"
        } else if self.synced {
            "synced"
        } else {
            "syncing"
        }
    }
}

/// A remote cluster to start: the task [`run_cluster`] emulates its informers.
#[derive(Debug, Clone)]
pub struct Start {
    pub serial: u64,
    pub id: String,
    pub peer: Peer,
    pub timeout: Duration,
    /// What its informers list besides namespaces (see [`Istiod::remote_lists`]).
    pub lists: Vec<String>,
}

/// One entry of `/debug/clusterz` (`cluster.DebugInfo`) and, for the traffic emulation, where
/// its endpoints come from.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterEntry {
    pub id: String,
    /// `NAMESPACE/NAME` of the remote secret; empty for istiod's own cluster.
    pub secret_name: String,
    /// `synced`, `syncing`, `timeout` (or `closed`).
    pub sync_status: String,
    /// The API server of the cluster whose endpoints istiod serves for this id: the synced
    /// one (the previous one while a 1.30+ swap waits), else the current one.
    pub server: String,
    /// Whether istiod serves endpoints of this cluster: the current cluster synced, or (from
    /// 1.30) the previous one it replaces synced and still runs.
    pub serving: bool,
}

/// The secret controller of one istiod pod.
#[derive(Debug)]
pub struct Istiod {
    /// Istio (major, minor) from the image tag; `None`: unknown, treated as the newest.
    pub version: Option<(u32, u32)>,
    /// Its own cluster id (`CLUSTER_ID`).
    pub own: String,
    /// Its namespace, where it reads remote secrets.
    pub namespace: String,
    /// Its revision (`istio.io/rev` of its pod, `default` when unset).
    pub revision: String,
    /// `PILOT_REMOTE_CLUSTER_TIMEOUT` (zero: none).
    pub timeout: Duration,
    /// The cluster store, in the order clusters were stored.
    pub clusters: Vec<Remote>,
    /// From 1.30: clusters replaced by a swap, with the serial of their successor; they keep
    /// serving until it synced or stopped.
    pub previous: Vec<(u64, Remote)>,
    /// Serials whose informers synced, for the timeout's check (it fires on stopped ones
    /// too).
    pub synced_serials: HashSet<u64>,
    /// Secret events not processed yet: when they become visible, and the secret's name.
    pub queue: VecDeque<(Instant, String)>,
    /// The pod's log: when each line was written and the line (no newline).
    pub log: Vec<(SystemTime, String)>,
    next_serial: u64,
}

/// Log levels as zap's lowercase encoder writes them.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Istio's time stamp (`pkg/log` `formatDate`): UTC, microseconds, `Z`.
pub fn istio_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let base = crate::util::rfc3339(d.as_secs() as i64);
    format!("{}.{:06}Z", base.trim_end_matches('Z'), d.subsec_micros())
}

/// RFC 3339 with nanoseconds, trailing zeros trimmed (Go's `RFC3339Nano`), as the kubelet
/// prefixes log lines with `timestamps=true`.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let base = crate::util::rfc3339(d.as_secs() as i64);
    let frac = format!("{:09}", d.subsec_nanos());
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        base
    } else {
        format!("{}.{frac}Z", base.trim_end_matches('Z'))
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(r) = rest.strip_prefix('.') {
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        let digits = format!("{:0<9}", &r[..end.min(9)]);
        nanos = digits.parse().ok()?;
        rest = &r[end..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (o[1..3].parse::<i64>().ok()? * 3600 + o[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

impl Istiod {
    /// A starting istiod in pod `pod` (its secret controller's `Run`); `timeout` applies unless
    /// the pod sets `PILOT_REMOTE_CLUSTER_TIMEOUT`.
    pub fn new(pod: &Value, timeout: Duration) -> Istiod {
        let mut i = Istiod {
            version: version_of(pod),
            own: crate::proxy::own_cluster_id(pod),
            namespace: meta_str(pod, "namespace").to_string(),
            revision: crate::controllers::istiod_revision(pod),
            timeout: remote_cluster_timeout(pod, timeout),
            clusters: Vec::new(),
            previous: Vec::new(),
            synced_serials: HashSet::new(),
            queue: VecDeque::new(),
            log: Vec::new(),
            next_serial: 1,
        };
        i.line(
            Level::Info,
            "Starting multicluster remote secrets controller",
        );
        i
    }

    /// The API paths a remote cluster's informers must list, besides namespaces, before it
    /// counts as synced. From Istio 1.29 that includes the mesh ConfigMap of this istiod's
    /// revision (`istio`, or `istio-<rev>`) in its own namespace of the remote cluster, read
    /// by a filtered informer that the cluster's `RunAndWait` waits for
    /// (pilot/pkg/serviceregistry/kube/controller/multicluster.go `NewMulticluster`,
    /// `getMeshConfigMapName`; pkg/config/mesh/kubemesh `NewConfigMapSource`; added in
    /// istio/istio#58455). So a 1.29 istiod stays `syncing` with a peer whose reader role
    /// (1.28's `istio-reader-clusterrole`) does not grant `list` on configmaps.
    pub fn remote_lists(&self) -> Vec<String> {
        if self.version.is_some_and(|v| v < (1, 29)) {
            return Vec::new();
        }
        let name = match self.revision.as_str() {
            "" | "default" => "istio".to_string(),
            rev => format!("istio-{rev}"),
        };
        vec![format!(
            "/api/v1/namespaces/{}/configmaps?fieldSelector=metadata.name%3D{name}&limit=500",
            self.namespace
        )]
    }

    /// From Istio 1.30 a changed kubeconfig swaps the new cluster in and stops the old one once
    /// the new one synced (istio/istio#58567); before, the old one is stopped first. An
    /// unknown version behaves as the newest.
    pub fn swaps(&self) -> bool {
        self.version.is_none_or(|v| v >= (1, 30))
    }

    /// Appends a log line (`pkg/log`: time, level, message; the default scope's name is not
    /// printed).
    pub fn line(&mut self, level: Level, msg: &str) {
        let now = SystemTime::now();
        let text = format!("{}\t{}\t{msg}", istio_time(now), level.as_str());
        self.log.push((now, text));
    }

    /// A line with labels (`log.WithLabels`): the message, a TAB, then `k=v` pairs.
    fn labelled(&mut self, level: Level, msg: &str, id: &str, secret: &str) {
        let kind = if self.swaps() { "config" } else { "secret" };
        self.line(level, &format!("{msg}\tcluster={id} {kind}={secret}"));
    }

    fn count_line(&mut self) {
        let n = self.clusters.len();
        self.line(Level::Info, &format!("Number of remote clusters: {n}"));
    }

    /// Queues the event of secret `name` (processed at `due`).
    pub fn enqueue(&mut self, name: &str, due: Instant) {
        self.queue.push_back((due, name.to_string()));
    }

    /// Whether a secret event concerns this istiod: a secret with the label, or one it holds
    /// clusters of (a deleted or unlabelled one).
    pub fn concerns(&self, secret: &Value) -> bool {
        labelled(secret)
            || self
                .clusters
                .iter()
                .any(|c| c.secret == format!("{}/{}", self.namespace, meta_str(secret, "name")))
    }

    /// Processes one secret event (`processItem`): `secret` is what the informer's cache holds
    /// for that name now (`None`: gone). Returns the clusters to start.
    pub fn process(&mut self, name: &str, secret: Option<&Value>) -> Vec<Start> {
        let key = format!("{}/{name}", self.namespace);
        if self.swaps() {
            self.line(
                Level::Info,
                &format!("processing remote config event for {key}"),
            );
        } else {
            self.line(
                Level::Info,
                &format!("processing secret event for secret {key}"),
            );
        }
        match secret.filter(|s| labelled(s)) {
            Some(s) => self.add_secret(&key, s),
            None => {
                let ids: Vec<String> = self
                    .clusters
                    .iter()
                    .filter(|c| c.secret == key)
                    .map(|c| c.id.clone())
                    .collect();
                for id in ids {
                    self.delete_cluster(&key, &id);
                }
                self.count_line();
                Vec::new()
            }
        }
    }

    fn add_secret(&mut self, key: &str, secret: &Value) -> Vec<Start> {
        let empty = serde_json::Map::new();
        let data = secret
            .get("data")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let gone: Vec<String> = self
            .clusters
            .iter()
            .filter(|c| c.secret == key && !data.contains_key(&c.id))
            .map(|c| c.id.clone())
            .collect();
        for id in gone {
            self.delete_cluster(key, &id);
        }
        let mut starts = Vec::new();
        for (id, value) in data {
            let kubeconfig = value.as_str().unwrap_or("").to_string();
            if *id == self.own {
                self.labelled(
                    Level::Info,
                    "ignoring cluster as it would overwrite the config cluster",
                    id,
                    key,
                );
                continue;
            }
            let prev = self
                .clusters
                .iter()
                .position(|c| c.secret == key && c.id == *id);
            let action = match prev {
                Some(i) if self.clusters[i].kubeconfig == kubeconfig => {
                    self.labelled(
                        Level::Info,
                        "skipping update (kubeconfig are identical)",
                        id,
                        key,
                    );
                    continue;
                }
                Some(_) => "Update",
                None if self.clusters.iter().any(|c| c.id == *id) => {
                    self.labelled(Level::Warn, "cluster has already been registered", id, key);
                    continue;
                }
                None => "Add",
            };
            if let Some(i) = prev
                && !self.swaps()
            {
                // Up to 1.29: the previous cluster stops before the new one is built.
                let old = self.clusters.remove(i);
                self.stopped(&old);
            }
            self.labelled(Level::Info, &format!("{action} cluster"), id, key);
            let Some(peer) = STANDARD
                .decode(&kubeconfig)
                .ok()
                .and_then(|_| parse_kubeconfig(&kubeconfig))
            else {
                self.labelled(
                    Level::Error,
                    &format!("{action} cluster: create remote cluster failed: invalid kubeconfig"),
                    id,
                    key,
                );
                continue;
            };
            let serial = self.next_serial;
            self.next_serial += 1;
            let remote = Remote {
                serial,
                id: id.clone(),
                secret: key.to_string(),
                kubeconfig,
                peer: peer.clone(),
                synced: false,
                timed_out: false,
            };
            match self
                .clusters
                .iter()
                .position(|c| c.secret == key && c.id == *id)
            {
                // From 1.30: swapped in; the old one serves until the new one is done.
                Some(i) => {
                    let old = std::mem::replace(&mut self.clusters[i], remote);
                    self.previous.push((serial, old));
                }
                None => self.clusters.push(remote),
            }
            starts.push(Start {
                serial,
                id: id.clone(),
                peer,
                timeout: self.timeout,
                lists: self.remote_lists(),
            });
        }
        self.count_line();
        starts
    }

    /// `deleteCluster`: stops and forgets cluster `id` of secret `key`.
    fn delete_cluster(&mut self, key: &str, id: &str) {
        self.line(
            Level::Info,
            &format!("Deleting cluster_id={id} configured by secret={key}"),
        );
        if let Some(i) = self
            .clusters
            .iter()
            .position(|c| c.secret == key && c.id == id)
        {
            let old = self.clusters.remove(i);
            self.stopped(&old);
            // Its run ends, which completes a pending swap: the previous one stops too.
            self.complete_swap(old.serial);
        }
        self.count_line();
    }

    /// What a stopped cluster's run logs when its informers never synced.
    fn stopped(&mut self, remote: &Remote) {
        if !remote.synced {
            let id = remote.id.clone();
            self.line(Level::Warn, &format!("remote cluster {id} failed to sync"));
        }
    }

    /// `PendingClusterSwap.Complete`: the clusters that `serial` replaced stop.
    fn complete_swap(&mut self, serial: u64) {
        let done: Vec<(u64, Remote)> = self
            .previous
            .iter()
            .filter(|(s, _)| *s == serial)
            .cloned()
            .collect();
        self.previous.retain(|(s, _)| *s != serial);
        for (_, old) in done {
            self.line(
                Level::Info,
                &format!(
                    "stopping previous cluster {} after new cluster synced",
                    old.id
                ),
            );
            self.stopped(&old);
            self.complete_swap(old.serial);
        }
    }

    /// Whether cluster `serial` still runs (in the store, or replaced and still serving).
    pub fn running(&self, serial: u64) -> bool {
        self.clusters.iter().any(|c| c.serial == serial)
            || self.previous.iter().any(|(_, c)| c.serial == serial)
    }

    /// The first successful sync of cluster `serial`: synced for good; a swap it ends
    /// completes.
    pub fn synced(&mut self, serial: u64) {
        self.synced_serials.insert(serial);
        for c in self
            .clusters
            .iter_mut()
            .chain(self.previous.iter_mut().map(|(_, c)| c))
        {
            if c.serial == serial {
                c.synced = true;
            }
        }
        self.complete_swap(serial);
    }

    /// The remote cluster timeout of cluster `serial` passed (the timer is not cancelled when
    /// the cluster stops).
    pub fn timed_out(&mut self, serial: u64, id: &str) {
        if self.synced_serials.contains(&serial) {
            return;
        }
        let after = go_duration(self.timeout);
        self.line(
            Level::Error,
            &format!("remote cluster {id} failed to sync after {after}"),
        );
        for c in self
            .clusters
            .iter_mut()
            .chain(self.previous.iter_mut().map(|(_, c)| c))
        {
            if c.serial == serial {
                c.timed_out = true;
            }
        }
    }

    /// `ListRemoteClusters`: its own cluster (`synced`), then the stored clusters.
    pub fn clusterz(&self) -> Vec<ClusterEntry> {
        let mut out = vec![ClusterEntry {
            id: self.own.clone(),
            secret_name: String::new(),
            sync_status: "synced".into(),
            server: String::new(),
            serving: false,
        }];
        for c in &self.clusters {
            let previous = self
                .previous
                .iter()
                .filter(|(s, _)| *s == c.serial)
                .map(|(_, p)| p)
                .find(|p| p.synced);
            let (server, serving) = match (c.synced, previous) {
                (true, _) => (c.peer.server.clone(), true),
                (false, Some(p)) => (p.peer.server.clone(), true),
                (false, None) => (c.peer.server.clone(), false),
            };
            out.push(ClusterEntry {
                id: c.id.clone(),
                secret_name: c.secret.clone(),
                sync_status: c.status().into(),
                server,
                serving,
            });
        }
        out
    }

    /// The log as `kubectl logs` gets it: lines written at or after `since`, each prefixed with
    /// its RFC 3339 time stamp when `timestamps`.
    pub fn render_log(&self, since: Option<SystemTime>, timestamps: bool) -> String {
        let mut out = String::new();
        for (at, line) in &self.log {
            if since.is_some_and(|s| *at < s) {
                continue;
            }
            if timestamps {
                out += &rfc3339_nano(*at);
                out.push(' ');
            }
            out += line;
            out.push('\n');
        }
        out
    }
}

/// Whether a secret carries `istio/multiCluster=true`.
pub fn labelled(secret: &Value) -> bool {
    secret
        .pointer("/metadata/labels/istio~1multiCluster")
        .and_then(Value::as_str)
        == Some("true")
}

fn is_secret(key: &Key) -> bool {
    key.group.is_empty() && key.plural == "secrets"
}

fn is_pod(key: &Key) -> bool {
    key.group.is_empty() && key.plural == "pods"
}

/// Options of the emulation, read from the cluster's shared state when used.
fn informer_lag(shared: &Shared) -> Duration {
    Duration::from_millis(shared.informer_lag_ms.load(Ordering::Relaxed))
}

fn sync_delay(shared: &Shared) -> Duration {
    Duration::from_millis(shared.sync_delay_ms.load(Ordering::Relaxed))
}

fn default_timeout(shared: &Shared) -> Duration {
    Duration::from_millis(shared.remote_cluster_timeout_ms.load(Ordering::Relaxed))
}

/// Starts, stops and feeds the istiod of each istiod pod: pods that become ready start one
/// (which lists the remote secrets of its namespace), pods that go away or stop being ready
/// lose theirs; secret events reach each istiod of the namespace after the informer lag.
/// Returns the clusters to start.
fn on_event(
    st: &mut State,
    kind: &str,
    key: &Key,
    object: &Value,
    lag: Duration,
    timeout: Duration,
) -> Vec<(Key, Start)> {
    let now = Instant::now();
    let mut starts = Vec::new();
    if is_pod(key) && is_istiod(object) {
        let live = kind != "DELETED" && pod_ready(object);
        match (live, st.istiods.contains_key(key)) {
            (true, false) => {
                let mut istiod = Istiod::new(object, timeout);
                let mut names: Vec<(u64, String)> = st
                    .objects
                    .iter()
                    .filter(|(k, s)| is_secret(k) && k.namespace == key.namespace && labelled(s))
                    .map(|(k, _)| (st.born.get(k).map(|b| b.0).unwrap_or(0), k.name.clone()))
                    .collect();
                names.sort();
                for (_, name) in names {
                    istiod.enqueue(&name, now + lag);
                }
                st.istiods.insert(key.clone(), istiod);
            }
            (false, true) => {
                st.istiods.remove(key);
            }
            _ => {}
        }
    }
    if is_secret(key) {
        for istiod in st.istiods.values_mut() {
            if istiod.namespace == key.namespace && istiod.concerns(object) {
                istiod.enqueue(&key.name, now + lag);
            }
        }
    }
    starts.extend(process_due(st, now));
    starts
}

/// Processes the queued secret events that are due.
fn process_due(st: &mut State, now: Instant) -> Vec<(Key, Start)> {
    let mut starts = Vec::new();
    let pods: Vec<Key> = st.istiods.keys().cloned().collect();
    for pod in pods {
        while let Some(istiod) = st.istiods.get_mut(&pod) {
            let Some((due, name)) = istiod.queue.front().cloned() else {
                break;
            };
            if due > now {
                break;
            }
            istiod.queue.pop_front();
            let secret_key = Key {
                group: String::new(),
                plural: "secrets".into(),
                namespace: pod.namespace.clone(),
                name: name.clone(),
            };
            let secret = st.objects.get(&secret_key).cloned();
            let istiod = st.istiods.get_mut(&pod).unwrap();
            for s in istiod.process(&name, secret.as_ref()) {
                starts.push((pod.clone(), s));
            }
        }
    }
    starts
}

fn next_due(st: &State) -> Option<Instant> {
    st.istiods
        .values()
        .filter_map(|i| i.queue.front().map(|(d, _)| *d))
        .min()
}

/// The background task of one cluster's istiod pods. Runs until the cluster's state goes.
pub async fn run(shared: Arc<Shared>) {
    let mut rx = shared.state.lock().unwrap().tx.subscribe();
    loop {
        let due = next_due(&shared.state.lock().unwrap());
        let event = match due {
            Some(d) => tokio::select! {
                ev = rx.recv() => Some(ev),
                _ = tokio::time::sleep_until(d) => None,
            },
            None => Some(rx.recv().await),
        };
        let lag = informer_lag(&shared);
        let timeout = default_timeout(&shared);
        let starts = {
            let mut st = shared.state.lock().unwrap();
            match event {
                Some(Ok(ev)) => on_event(&mut st, ev.kind, &ev.key, &ev.object, lag, timeout),
                Some(Err(RecvError::Lagged(_))) => resync(&mut st, lag, timeout),
                Some(Err(RecvError::Closed)) => return,
                None => process_due(&mut st, Instant::now()),
            }
        };
        for (pod, start) in starts {
            tokio::spawn(run_cluster(shared.clone(), pod, start));
        }
    }
}

/// After missed events: every ready istiod pod has an istiod, and every istiod sees each
/// remote secret of its namespace again (an identical kubeconfig is skipped).
fn resync(st: &mut State, lag: Duration, timeout: Duration) -> Vec<(Key, Start)> {
    let pods: Vec<(Key, Value)> = st
        .objects
        .iter()
        .filter(|(k, p)| is_pod(k) && is_istiod(p))
        .map(|(k, p)| (k.clone(), p.clone()))
        .collect();
    st.istiods
        .retain(|k, _| pods.iter().any(|(p, v)| p == k && pod_ready(v)));
    let mut starts = Vec::new();
    for (k, p) in &pods {
        starts.extend(on_event(st, "MODIFIED", k, p, lag, timeout));
    }
    let secrets: Vec<(Key, Value)> = st
        .objects
        .iter()
        .filter(|(k, s)| is_secret(k) && labelled(s))
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    for (k, s) in &secrets {
        starts.extend(on_event(st, "MODIFIED", k, s, lag, timeout));
    }
    starts
}

/// The informers of one remote cluster (`Cluster.Run`): the initial list is retried until it
/// succeeds (the server is a loopback test cluster of this process, its certificate verifies
/// against the kubeconfig's CA, the token may list); the first success at least the sync
/// delay after the start syncs the cluster for good. The remote cluster timeout fires once.
pub async fn run_cluster(shared: Arc<Shared>, pod: Key, start: Start) {
    let begun = Instant::now();
    if !start.timeout.is_zero() {
        let shared = shared.clone();
        let pod = pod.clone();
        let (serial, id, timeout) = (start.serial, start.id.clone(), start.timeout);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(i) = shared.state.lock().unwrap().istiods.get_mut(&pod) {
                i.timed_out(serial, &id);
            }
        });
    }
    loop {
        let running = shared
            .state
            .lock()
            .unwrap()
            .istiods
            .get(&pod)
            .is_some_and(|i| i.running(start.serial));
        if !running {
            return;
        }
        if probe(&start.peer, &start.lists).await && begun.elapsed() >= sync_delay(&shared) {
            if let Some(i) = shared.state.lock().unwrap().istiods.get_mut(&pod) {
                i.synced(start.serial);
            }
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The JSON istiod writes for a clusterz view (`config.ToJSON`: compact).
pub fn clusterz_json(view: &[ClusterEntry]) -> Value {
    Value::Array(
        view.iter()
            .map(|e| serde_json::json!({"id": e.id, "secretName": e.secret_name, "syncStatus": e.sync_status}))
            .collect(),
    )
}

/// What istiod in pod `pod` lists at `/debug/clusterz`, or `None` when no istiod runs there.
pub fn clusterz(st: &State, pod: &Key) -> Option<Vec<ClusterEntry>> {
    st.istiods.get(pod).map(Istiod::clusterz)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(image: &str) -> Value {
        json!({"metadata": {"name": "istiod-1", "namespace": "istio-system"},
               "spec": {"containers": [{"name": "discovery", "image": image,
                   "env": [{"name": "CLUSTER_ID", "value": "cluster1"}]}]}})
    }

    fn kubeconfig(port: u16, token: &str) -> String {
        STANDARD.encode(format!(
            "clusters:\n- name: x\n  cluster:\n    server: https://127.0.0.1:{port}\nusers:\n- name: x\n  user:\n    token: {token}\n"
        ))
    }

    fn secret(data: Value) -> Value {
        json!({"metadata": {"name": "s", "namespace": "istio-system",
                            "labels": {"istio/multiCluster": "true"}}, "data": data})
    }

    fn lines(i: &Istiod) -> Vec<String> {
        i.log
            .iter()
            .map(|(_, l)| l.split_once('\t').unwrap().1.to_string())
            .collect()
    }

    fn statuses(i: &Istiod) -> Vec<(String, String)> {
        i.clusterz()
            .into_iter()
            .map(|e| (e.id, e.sync_status))
            .collect()
    }

    #[test]
    fn the_image_tag_names_the_version() {
        assert_eq!(
            version_of(&pod("docker.io/istio/pilot:1.28.1")),
            Some((1, 28))
        );
        assert_eq!(
            version_of(&pod("localhost:5000/pilot:1.30.0-distroless")),
            Some((1, 30))
        );
        assert_eq!(version_of(&pod("localhost:5000/pilot")), None);
        assert_eq!(version_of(&pod("pilot")), None);
    }

    #[test]
    fn go_durations_print_and_parse_like_go() {
        assert_eq!(go_duration(Duration::from_secs(30)), "30s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("x"), None);
    }

    #[test]
    fn istio_and_kubelet_time_stamps() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_700);
        assert_eq!(istio_time(t), "2023-11-14T22:13:20.123456Z");
        assert_eq!(rfc3339_nano(t), "2023-11-14T22:13:20.1234567Z");
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.1234567Z"), Some(t));
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20+01:00"),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
    }

    #[test]
    fn a_secret_adds_its_clusters_but_not_its_own_id_with_1_28_log_lines() {
        let mut i = Istiod::new(
            &pod("docker.io/istio/pilot:1.28.1"),
            Duration::from_secs(30),
        );
        let s = secret(json!({"cluster2": kubeconfig(2, "t"), "cluster1": kubeconfig(1, "t")}));
        let starts = i.process("s", Some(&s));
        assert_eq!(starts.len(), 1);
        assert_eq!(
            statuses(&i),
            [
                ("cluster1".into(), "synced".into()),
                ("cluster2".into(), "syncing".into())
            ]
        );
        assert_eq!(
            lines(&i),
            [
                "info\tStarting multicluster remote secrets controller",
                "info\tprocessing secret event for secret istio-system/s",
                "info\tignoring cluster as it would overwrite the config cluster\tcluster=cluster1 secret=istio-system/s",
                "info\tAdd cluster\tcluster=cluster2 secret=istio-system/s",
                "info\tNumber of remote clusters: 1",
            ]
        );
        i.synced(starts[0].serial);
        assert_eq!(statuses(&i)[1].1, "synced");
    }

    #[test]
    fn from_1_30_lines_name_the_config() {
        let mut i = Istiod::new(
            &pod("docker.io/istio/pilot:1.30.0"),
            Duration::from_secs(30),
        );
        i.process("s", Some(&secret(json!({"cluster2": kubeconfig(2, "t")}))));
        let l = lines(&i);
        assert_eq!(
            l[1],
            "info\tprocessing remote config event for istio-system/s"
        );
        assert_eq!(
            l[2],
            "info\tAdd cluster\tcluster=cluster2 config=istio-system/s"
        );
    }

    #[test]
    fn an_identical_kubeconfig_is_skipped_and_a_second_secret_for_an_id_ignored() {
        let mut i = Istiod::new(&pod("pilot:1.28.1"), Duration::from_secs(30));
        let s = secret(json!({"cluster2": kubeconfig(2, "t")}));
        i.process("s", Some(&s));
        assert!(i.process("s", Some(&s)).is_empty());
        let mut other = secret(json!({"cluster2": kubeconfig(3, "t")}));
        other["metadata"]["name"] = json!("other");
        assert!(i.process("other", Some(&other)).is_empty());
        let l = lines(&i);
        assert!(l.contains(
            &"info\tskipping update (kubeconfig are identical)\tcluster=cluster2 secret=istio-system/s".to_string()
        ));
        assert!(l.contains(
            &"warn\tcluster has already been registered\tcluster=cluster2 secret=istio-system/other".to_string()
        ));
        assert_eq!(i.clusterz().len(), 2);
        assert_eq!(i.clusterz()[1].secret_name, "istio-system/s");
    }

    #[test]
    fn up_to_1_29_a_changed_kubeconfig_stops_the_old_cluster_first() {
        let mut i = Istiod::new(&pod("pilot:1.28.1"), Duration::from_secs(30));
        let first = i.process("s", Some(&secret(json!({"c2": kubeconfig(2, "a")}))));
        i.synced(first[0].serial);
        let second = i.process("s", Some(&secret(json!({"c2": kubeconfig(2, "b")}))));
        assert_eq!(second.len(), 1);
        assert!(!i.running(first[0].serial), "stopped at once");
        let view = i.clusterz();
        assert_eq!(view[1].sync_status, "syncing");
        assert!(!view[1].serving, "no endpoints until the new one synced");
        assert!(
            lines(&i).contains(&"info\tUpdate cluster\tcluster=c2 secret=istio-system/s".into())
        );
        i.synced(second[0].serial);
        assert!(i.clusterz()[1].serving);
    }

    #[test]
    fn from_1_30_the_old_cluster_serves_until_the_new_one_synced() {
        let mut i = Istiod::new(&pod("pilot:1.30.0"), Duration::from_secs(30));
        let first = i.process("s", Some(&secret(json!({"c2": kubeconfig(2, "a")}))));
        i.synced(first[0].serial);
        let second = i.process("s", Some(&secret(json!({"c2": kubeconfig(3, "b")}))));
        assert!(i.running(first[0].serial));
        let view = i.clusterz();
        assert_eq!(view.len(), 2);
        assert_eq!(view[1].sync_status, "syncing", "clusterz shows the new one");
        assert!(view[1].serving, "the old one still serves");
        assert_eq!(view[1].server, "https://127.0.0.1:2");
        i.synced(second[0].serial);
        assert!(!i.running(first[0].serial));
        assert_eq!(i.clusterz()[1].server, "https://127.0.0.1:3");
        assert!(
            lines(&i).contains(
                &"info\tstopping previous cluster c2 after new cluster synced".to_string()
            )
        );
    }

    #[test]
    fn timeout_then_a_later_sync_and_synced_is_sticky() {
        let mut i = Istiod::new(&pod("pilot:1.28.1"), Duration::from_secs(2));
        let s = i.process("s", Some(&secret(json!({"c2": kubeconfig(2, "a")}))));
        i.timed_out(s[0].serial, "c2");
        assert_eq!(statuses(&i)[1].1, "timeout");
        assert!(lines(&i).contains(&"error\tremote cluster c2 failed to sync after 2s".into()));
        i.synced(s[0].serial);
        assert_eq!(statuses(&i)[1].1, "synced");
        i.timed_out(s[0].serial, "c2");
        assert_eq!(statuses(&i)[1].1, "synced", "a synced cluster stays synced");
    }

    #[test]
    fn a_removed_key_or_a_deleted_secret_removes_the_cluster() {
        let mut i = Istiod::new(&pod("pilot:1.28.1"), Duration::from_secs(30));
        i.process(
            "s",
            Some(&secret(
                json!({"c2": kubeconfig(2, "a"), "c3": kubeconfig(3, "a")}),
            )),
        );
        i.process("s", Some(&secret(json!({"c3": kubeconfig(3, "a")}))));
        assert_eq!(statuses(&i).len(), 2);
        assert!(lines(&i).contains(
            &"info\tDeleting cluster_id=c2 configured by secret=istio-system/s".to_string()
        ));
        i.process("s", None);
        assert_eq!(statuses(&i).len(), 1);
    }

    #[test]
    fn logs_since_a_time_with_kubelet_time_stamps() {
        let mut i = Istiod::new(&pod("pilot:1.28.1"), Duration::from_secs(30));
        let cut = SystemTime::now() + Duration::from_millis(5);
        std::thread::sleep(Duration::from_millis(10));
        i.line(Level::Info, "later");
        assert_eq!(i.render_log(Some(cut), false).lines().count(), 1);
        let all = i.render_log(None, true);
        let first = all.lines().next().unwrap();
        let (stamp, rest) = first.split_once(' ').unwrap();
        assert!(parse_rfc3339(stamp).is_some(), "{first}");
        assert!(rest.ends_with("info\tStarting multicluster remote secrets controller"));
    }

    #[test]
    fn a_secret_reaches_a_ready_pod_after_the_informer_lag_and_a_new_pod_lists_it() {
        let mut st = State::new("c1", String::new());
        let res = |st: &State, plural: &str| st.resource("", "v1", plural).unwrap();
        let ns = res(&st, "namespaces");
        st.create(
            &ns,
            "",
            json!({"metadata": {"name": "istio-system"}}),
            false,
        )
        .unwrap();
        let mut p = pod("docker.io/istio/pilot:1.28.1");
        p["metadata"]["labels"] = json!({"app": "istiod"});
        let pods = res(&st, "pods");
        let stored = st.create(&pods, "istio-system", p, false).unwrap();
        let pod_key = Key::new(&pods, "istio-system", meta_str(&stored, "name"));
        let lag = Duration::from_millis(100);
        let timeout = Duration::from_secs(2);
        on_event(&mut st, "ADDED", &pod_key, &stored, lag, timeout);
        assert!(
            st.istiods.contains_key(&pod_key),
            "a ready istiod pod runs istiod"
        );
        let secrets = res(&st, "secrets");
        let s = st
            .create(
                &secrets,
                "istio-system",
                secret(json!({"c2": kubeconfig(2, "t")})),
                false,
            )
            .unwrap();
        let secret_key = Key::new(&secrets, "istio-system", "s");
        assert!(on_event(&mut st, "ADDED", &secret_key, &s, lag, timeout).is_empty());
        assert_eq!(clusterz(&st, &pod_key).unwrap().len(), 1, "not yet");
        let starts = process_due(&mut st, Instant::now() + lag);
        assert_eq!(starts.len(), 1);
        assert_eq!(clusterz(&st, &pod_key).unwrap()[1].sync_status, "syncing");
        // A second pod starting now lists the secret that exists.
        let mut p2 = pod("docker.io/istio/pilot:1.28.1");
        p2["metadata"]["name"] = json!("istiod-2");
        p2["metadata"]["labels"] = json!({"app": "istiod"});
        let stored2 = st.create(&pods, "istio-system", p2, false).unwrap();
        let key2 = Key::new(&pods, "istio-system", "istiod-2");
        on_event(&mut st, "ADDED", &key2, &stored2, lag, timeout);
        assert_eq!(process_due(&mut st, Instant::now() + lag).len(), 1);
        assert_eq!(clusterz(&st, &key2).unwrap().len(), 2);
        // Deleted: each istiod drops the cluster.
        let gone = st.delete(&secret_key).unwrap();
        on_event(&mut st, "DELETED", &secret_key, &gone, lag, timeout);
        process_due(&mut st, Instant::now() + lag);
        assert_eq!(clusterz(&st, &pod_key).unwrap().len(), 1);
        assert_eq!(clusterz(&st, &key2).unwrap().len(), 1);
    }

    #[test]
    fn the_pods_env_sets_the_remote_cluster_timeout() {
        let mut p = pod("pilot:1.28.1");
        assert_eq!(
            remote_cluster_timeout(&p, Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        p["spec"]["containers"][0]["env"] =
            json!([{"name": "PILOT_REMOTE_CLUSTER_TIMEOUT", "value": "30s"}]);
        assert_eq!(
            Istiod::new(&p, Duration::from_secs(2)).timeout,
            Duration::from_secs(30)
        );
    }
}
