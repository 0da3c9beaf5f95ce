//! How a command reaches its clusters: the runner, the reporter, the limits, the locks it
//! holds and the snapshots it reads, and the helpers that run work per cluster in parallel.
//! Everything that talks to clusters takes a [`Run`]; this module depends on no engine, plan
//! or check, so any of them may.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::components::{ClusterCtx, ClusterNotes, RunBoard};
use crate::engine::topology::{ClusterParts, Topology};
use crate::model::mesh::{Cluster, Mesh};
use crate::tools::cache::Cache;
use crate::tools::live::Live;
use crate::tools::reporter::Reporter;
use crate::tools::runner::{Runner, StepError};
use crate::tools::step::Target;

/// How a command reaches its clusters.
#[derive(Clone)]
pub struct Run<'a> {
    pub mesh: &'a Mesh,
    pub runner: &'a dyn Runner,
    pub reporter: &'a Reporter,
    /// Clusters worked on at once.
    pub jobs: usize,
    /// The limit of each helm or kubectl call.
    pub timeout: Duration,
    pub kubeconfig: Option<PathBuf>,
    /// How a task that failed for a transient reason is tried again.
    pub retry: Retry,
    /// The per-cluster locks a changing run holds.
    pub locks: Option<&'a Locks>,
    /// Each cluster's snapshot for this command (`cache.rs`), shared by its plans and checks;
    /// without, every read asks the cluster.
    pub caches: Option<Arc<Caches>>,
}

/// The snapshots of a command, by cluster.
#[derive(Debug, Default)]
pub struct Caches(Mutex<BTreeMap<String, Arc<Cache>>>);

impl Caches {
    /// `cluster`'s snapshot.
    pub fn of(&self, cluster: &str) -> Arc<Cache> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(cluster.to_string())
            .or_default()
            .clone()
    }
}

/// Retries of a task that failed for a transient reason (`StepError::transient_cause`):
/// capped exponential backoff.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// How many times a task is tried again (`--retries`).
    pub times: u32,
    /// The first pause; each next one doubles, up to `most`.
    pub first: Duration,
    pub most: Duration,
}

impl Retry {
    /// meshup's default: 5 retries after 1 s, 2 s, 4 s, 8 s, 16 s.
    pub const DEFAULT: Retry = Retry {
        times: 5,
        first: Duration::from_secs(1),
        most: Duration::from_secs(30),
    };

    /// The pause before retry `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.first
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.most)
    }
}

impl Run<'_> {
    pub fn target(&self, cluster: &Cluster) -> Target {
        Target {
            cluster: cluster.name.clone(),
            context: cluster.context.clone(),
            kubeconfig: self.kubeconfig.clone(),
        }
    }

    /// Calls `f` with a component context for `cluster`.
    pub fn in_cluster<R>(
        &self,
        cluster: &Cluster,
        memo: &mut ClusterNotes,
        board: &RunBoard,
        f: impl FnOnce(&mut ClusterCtx) -> R,
    ) -> R {
        let target = self.target(cluster);
        let cache = self.caches.as_ref().map(|c| c.of(&cluster.name));
        let mut live = Live::new(self.runner, &target, self.timeout);
        if let Some(cache) = &cache {
            live = live.cached(cache, &self.mesh.namespace);
        }
        let mut cx = ClusterCtx {
            mesh: self.mesh,
            cluster,
            live,
            reporter: self.reporter,
            memo,
            board,
            took_over: self
                .locks
                .is_some_and(|l| l.taken_over.contains_key(&cluster.name)),
        };
        f(&mut cx)
    }
}

/// The read-only walk `status`, `verify` and `preflight` share: `f` with each cluster's node
/// of the topology and a context for that cluster, clusters in parallel (up to `--jobs`),
/// results in topology order. What one cluster's reads learn stays with that cluster.
pub fn walk<R: Send>(
    run: &Run,
    topology: &Topology,
    f: impl Fn(&ClusterParts, &mut ClusterCtx) -> R + Sync,
) -> Vec<R> {
    parallel(run.jobs, &topology.nodes, |node| {
        let cluster = run
            .mesh
            .cluster(&node.cluster)
            .expect("the topology's clusters are the mesh's");
        let (mut memo, board) = (ClusterNotes::default(), RunBoard::default());
        run.in_cluster(cluster, &mut memo, &board, |cx| f(node, cx))
    })
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

/// The locks a run holds, one per cluster.
#[derive(Debug, Default)]
pub struct Locks {
    /// For each cluster whose lock was taken over from a dead run: who that was and why it
    /// counts as dead. Only there may meshup recover what a run left pending.
    pub taken_over: BTreeMap<String, String>,
    /// Clusters whose lock another run took while this one held it.
    pub(crate) lost: Mutex<Vec<String>>,
}

impl Locks {
    /// Whether this run may go on changing `cluster`.
    pub fn check(&self, cluster: &str) -> Result<(), StepError> {
        if self
            .lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|c| c == cluster)
        {
            return Err(StepError::other(
                cluster,
                "another run took over meshup's lock on this cluster while this one held it",
                Some("stop the other run or wait for it, then re-run".into()),
            ));
        }
        Ok(())
    }
}
