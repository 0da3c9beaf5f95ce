//! Credentials over time. Every remote secret carries a long-lived token of its source
//! cluster's `istio-reader-service-account`, which can read that cluster's Secrets, Pods and
//! Services; meshup replaces it without a moment in which a peer holds no working token:
//!
//! 1. a new token secret in the source cluster (`…-token-YYYYMMDDHHMMSS`), filled by the token
//!    controller;
//! 2. the source's remote secret, with the new token, applied to every peer that watches it;
//!    an istiod before Istio 1.31 keeps the token it loaded until it restarts, so with
//!    `--restart` meshup restarts it (without, the old token stays valid and meshup says so);
//! 3. a wait until every such peer's istiod reports the source `synced` again (bounded by
//!    `--timeout`; skipped, with a warning, where istiod's view cannot be read);
//! 4. only then the old token secrets are deleted, which revokes their tokens.

use std::time::{Duration, Instant};

use serde::Serialize;
use time::OffsetDateTime;

use crate::components::reader::{self, token_secrets};
use crate::components::{Board, Memo};
use crate::exec::Run;
use crate::kubectl;
use crate::live::{Deployment, Live};
use crate::mesh::Cluster;
use crate::remote_secret::{RemoteSecret, TOKEN_SECRET};
use crate::runner::{self, StepError};
use crate::sensitive::Sensitive;
use crate::sync::{self, State};
use crate::topology::Topology;

/// What one cluster's rotation did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotated {
    pub cluster: String,
    /// The token secrets it replaced (deleted when `complete`).
    pub old: Vec<String>,
    pub new: String,
    /// The peers that now hold the new token.
    pub peers: Vec<String>,
    /// The old tokens are revoked.
    pub complete: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
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
                let state = if r.complete { "revoked" } else { "still valid" };
                let mut line = format!(
                    "{:<12} reader token rotated: {} now in {}; old ({old}) {state}",
                    r.cluster,
                    r.new,
                    if r.peers.is_empty() {
                        "no peer".to_string()
                    } else {
                        r.peers.join(", ")
                    }
                );
                if let Some(pending) = &r.pending {
                    line.push_str(&format!("\n  {pending}"));
                }
                line
            }
            Err(e) => format!("error: {e}"),
        })
        .collect()
}

/// Rotates the reader token of each of `clusters`, one cluster after another (a peer's
/// istiod restarts at most once at a time).
pub fn rotate(
    run: &Run,
    topology: &Topology,
    clusters: &[&Cluster],
    restart: bool,
) -> Vec<Result<Rotated, StepError>> {
    clusters
        .iter()
        .map(|cluster| rotate_one(run, topology, cluster, restart))
        .collect()
}

fn rotate_one(
    run: &Run,
    topology: &Topology,
    source: &Cluster,
    restart: bool,
) -> Result<Rotated, StepError> {
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
    let mut waiting_for_restart = Vec::new();
    for peer in &watchers {
        let peer_target = run.target(peer);
        let peer_live = Live::new(run.runner, &peer_target, run.timeout);
        peer_live.run(&kubectl::apply(
            &peer_target,
            Sensitive::new(secret.manifest(ns).expose().clone().into_bytes()),
            run.timeout,
        ))?;
        if !istiod_reloads(&peer_live, &run.mesh.istiod_deployment(), ns)? {
            if restart {
                let deployment = run.mesh.istiod_deployment();
                peer_live.run(&kubectl::rollout_restart(
                    &peer_target,
                    &deployment,
                    ns,
                    run.timeout,
                ))?;
                peer_live.run(&kubectl::rollout_status(
                    &peer_target,
                    &deployment,
                    ns,
                    run.timeout,
                ))?;
            } else {
                waiting_for_restart.push(peer.name.clone());
            }
        }
    }
    for peer in watchers
        .iter()
        .filter(|p| !waiting_for_restart.contains(&p.name))
    {
        wait_synced(run, peer, &source.name)?;
    }
    let peers: Vec<String> = watchers.iter().map(|p| p.name.clone()).collect();
    if !waiting_for_restart.is_empty() {
        return Ok(Rotated {
            cluster: source.name.clone(),
            old,
            new,
            peers,
            complete: false,
            pending: Some(format!(
                "istiod in {} runs Istio before 1.31, which keeps the old token until it restarts, so the old token stays valid; run `meshup link --rotate {} --restart` to finish",
                waiting_for_restart.join(", "),
                source.name
            )),
        });
    }
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
        complete: true,
        pending: None,
    })
}

/// Whether the istiod of a cluster picks up a changed remote secret without a restart
/// (Istio 1.31 and later, by its image tag; unknown or absent counts as older).
fn istiod_reloads(live: &Live, deployment: &str, namespace: &str) -> Result<bool, StepError> {
    let found: Option<Deployment> = live.get("deployment", deployment, Some(namespace))?;
    Ok(found
        .and_then(|d| d.image_tag())
        .is_some_and(|tag| crate::components::peers::reloads_changed_secrets(Some(&tag))))
}

/// Waits until `peer`'s istiod reports `source` synced; a view that cannot be read is warned
/// about and not waited for.
fn wait_synced(run: &Run, peer: &Cluster, source: &str) -> Result<(), StepError> {
    let deadline = Instant::now() + run.timeout;
    let watcher = sync::Watcher {
        namespace: run.mesh.namespace.clone(),
        revision: run
            .mesh
            .revision
            .clone()
            .unwrap_or_else(|| "default".into()),
        peers: vec![source.to_string()],
    };
    loop {
        let (mut memo, board) = (Memo::default(), Board::default());
        let row = run.in_cluster(peer, &mut memo, &board, |cx| sync::read(cx, &watcher));
        if let Some(error) = &row.error {
            run.reporter.warn(&format!(
                "[{}] istiod's view could not be read, so meshup cannot tell it uses `{source}`'s new token ({}); the old one is revoked all the same",
                peer.name,
                error.lines().next().unwrap_or_default()
            ));
            return Ok(());
        }
        let state = row
            .peers
            .get(source)
            .map(|c| c.state)
            .unwrap_or(State::Missing);
        if state == State::Synced {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StepError::other(
                &peer.name,
                format!(
                    "istiod reports `{source}` as {} after its new token was applied; the old token is kept",
                    state.word()
                ),
                Some(sync::hint(&peer.name, source, state, "")),
            ));
        }
        runner::sleep(Duration::from_secs(1))?;
    }
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
