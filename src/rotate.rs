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

use std::time::{Duration, Instant};

use serde::Serialize;
use time::OffsetDateTime;

use crate::components::reader::{self, token_secrets};
use crate::components::{Board, Memo};
use crate::exec::Run;
use crate::kubectl;
use crate::live::Live;
use crate::mesh::Cluster;
use crate::remote_secret::{RemoteSecret, TOKEN_SECRET};
use crate::runner::{self, StepError};
use crate::sensitive::Sensitive;
use crate::sync::{self, ISTIOD_CONTAINER, State};
use crate::topology::Topology;

/// What one cluster's rotation did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotated {
    pub cluster: String,
    /// The token secrets it replaced, now deleted (their tokens revoked).
    pub old: Vec<String>,
    pub new: String,
    /// The peers whose istiod now uses the new token.
    pub peers: Vec<String>,
}

/// The clusters among `names` (all when `None`) whose reader token some istiod holds, in
/// mesh-file order.
pub fn sources<'a>(
    run: &Run<'a>,
    topology: &Topology,
    names: Option<&[String]>,
) -> Vec<&'a Cluster> {
    run.mesh
        .clusters
        .iter()
        .filter(|c| names.is_none_or(|n| n.contains(&c.name)))
        .filter(|c| topology.watches.values().any(|w| w.contains(&c.name)))
        .collect()
}

/// One line per rotated cluster, for the terminal.
pub fn render(rotated: &[Result<Rotated, StepError>]) -> Vec<String> {
    rotated
        .iter()
        .map(|r| match r {
            Ok(r) => {
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
            }
            Err(e) => format!("error: {e}"),
        })
        .collect()
}

/// Rotates the reader token of each of `clusters`, one cluster after another (each peer's
/// istiod rebuilds one remote cluster at a time).
pub fn rotate(
    run: &Run,
    topology: &Topology,
    clusters: &[&Cluster],
) -> Vec<Result<Rotated, StepError>> {
    clusters
        .iter()
        .map(|cluster| rotate_one(run, topology, cluster))
        .collect()
}

fn rotate_one(run: &Run, topology: &Topology, source: &Cluster) -> Result<Rotated, StepError> {
    let ns = &run.mesh.namespace;
    let watchers: Vec<&Cluster> = topology
        .watches
        .iter()
        .filter(|(_, sources)| sources.contains(&source.name))
        .filter_map(|(watcher, _)| run.mesh.cluster(watcher))
        .collect();
    for name in std::iter::once(source).chain(watchers.iter().copied()) {
        if let Some(Err(e)) = run.locks.map(|l| l.check(&name.name)) {
            return Err(e);
        }
    }
    let target = run.target(source);
    let live = Live::new(run.runner, &target, run.timeout);
    let old: Vec<String> = token_secrets(&live, ns)?
        .into_iter()
        .map(|s| s.metadata.name)
        .collect();
    let mut new = format!("{TOKEN_SECRET}-{}", stamp(OffsetDateTime::now_utc()));
    while old.contains(&new) {
        new.push('x');
    }
    reader::ensure_account(&live, ns)?;
    reader::create_token_secret(&live, ns, &new)?;
    let (ca, token) = reader::wait_for_token(&live, ns, &new)?;
    let secret = RemoteSecret::new(&source.name, &source.server, &ca, &token);
    let names: Vec<&str> = watchers.iter().map(|w| w.name.as_str()).collect();
    run.reporter.info(&format!(
        "[{}] reader token: new token secret `{new}`; giving it to {}",
        source.name,
        if names.is_empty() {
            "no peer".to_string()
        } else {
            names.join(", ")
        }
    ));
    let applied = Instant::now();
    for peer in &watchers {
        let peer_target = run.target(peer);
        Live::new(run.runner, &peer_target, run.timeout).run(&kubectl::apply(
            &peer_target,
            Sensitive::new(secret.manifest(ns).expose().clone().into_bytes()),
            run.timeout,
        ))?;
    }
    for peer in &watchers {
        wait_acted(run, peer, &source.name, applied)?;
    }
    let peers: Vec<String> = watchers.iter().map(|p| p.name.clone()).collect();
    if !old.is_empty() {
        live.run(&kubectl::delete(
            &target,
            "secrets",
            &old,
            Some(ns),
            run.timeout,
        ))?;
    }
    Ok(Rotated {
        cluster: source.name.clone(),
        old,
        new,
        peers,
    })
}

/// Waits until every ready istiod pod in `peer` has acted on `source`'s remote secret applied
/// at `applied`: its log since then shows the cluster built anew, and a clusterz read after
/// that shows it `synced`. Fails, naming the peer, when that cannot be read or does not
/// happen within `--timeout`.
fn wait_acted(run: &Run, peer: &Cluster, source: &str, applied: Instant) -> Result<(), StepError> {
    let deadline = Instant::now() + run.timeout;
    let ns = run.mesh.namespace.clone();
    let watcher = sync::Watcher {
        namespace: ns.clone(),
        revision: run
            .mesh
            .revision
            .clone()
            .unwrap_or_else(|| "default".into()),
        peers: vec![source.to_string()],
    };
    let kept = "; the old token is kept";
    // Pods seen building the new cluster; they need only a `synced` read from now on.
    let mut acted: Vec<String> = Vec::new();
    loop {
        let (mut memo, board) = (Memo::default(), Board::default());
        let waiting = run.in_cluster(peer, &mut memo, &board, |cx| {
            let pods = sync::ready_pods(cx, &watcher)
                .map_err(|e| StepError::other(&peer.name, format!("{e}{kept}"), None))?;
            let mut waiting = Vec::new();
            for pod in &pods {
                if !acted.contains(pod) {
                    let log = cx.live.run(&kubectl::logs(
                        cx.target(),
                        &format!("pod/{pod}"),
                        ISTIOD_CONTAINER,
                        &ns,
                        Some(applied.elapsed() + LOG_SLACK),
                        cx.timeout(),
                    ));
                    let log = log.map_err(|e| StepError::other(
                        &peer.name,
                        format!("istiod's log in pod `{pod}` could not be read, so meshup cannot tell it uses `{source}`'s new token{kept}: {}", first_line(&e.to_string())),
                        Some(format!("reading it needs `get` on `pods/log` in namespace `{ns}`")),
                    ))?;
                    if sync::logged_build(&log.stdout, source) {
                        acted.push(pod.clone());
                    } else {
                        waiting.push(format!("{pod}: not yet rebuilt `{source}`"));
                        continue;
                    }
                }
                let view = sync::read_pod(cx, &ns, pod);
                if let Some(error) = view.error {
                    return Err(StepError::other(
                        &peer.name,
                        format!("istiod's view in pod `{pod}` could not be read{kept}: {error}"),
                        None,
                    ));
                }
                let state = view
                    .entries
                    .iter()
                    .skip(1)
                    .find(|e| e.id == source)
                    .map_or(State::Missing, |e| State::from_clusterz(&e.sync_status));
                if state != State::Synced {
                    waiting.push(format!("{pod}: `{source}` {}", state.word()));
                }
            }
            Ok::<_, StepError>(waiting)
        })?;
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StepError::other(
                &peer.name,
                format!(
                    "istiod has not taken `{source}`'s new remote secret within {}s ({}){kept}",
                    run.timeout.as_secs(),
                    waiting.join(", ")
                ),
                Some(format!(
                    "check istiod's log in `{}` (`kubectl logs -n {ns} deploy/{} -c discovery`), then run `meshup link --rotate {source}` again",
                    peer.name,
                    run.mesh.istiod_deployment()
                )),
            ));
        }
        runner::sleep(Duration::from_millis(500))?;
    }
}

/// Added to the time since the apply when reading istiod's log, for clocks that differ
/// between this machine and the node by a little.
const LOG_SLACK: Duration = Duration::from_secs(5);

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

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
    use super::*;

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
