//! `meshup verify`: proof that the mesh works. Control plane: every istiod reports every peer
//! the topology gives it as `synced` (a matrix: rows are the clusters whose istiod looks,
//! columns the peers), and every credential in the remote secrets still works where it was
//! issued (`credentials.rs`: `synced` stays `synced` after a token is revoked). With
//! `--traffic`, requests from every cluster reach every cluster.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::checks::credentials;
use crate::checks::traffic;
use crate::engine::run::{Run, walk};
use crate::engine::topology::Topology;
use crate::observe::finding::{Finding, Level};
use crate::observe::revisions;
use crate::observe::sync::{self, Row};
use crate::tools::runner::{self, StepError};

/// How often `--wait` reads istiod's view again.
const POLL: Duration = Duration::from_secs(2);

/// What verify found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    /// One row per cluster that runs istiod.
    pub sync: Vec<Row>,
    /// What is wrong: each pair istiod does not sync, each remote secret whose token the
    /// source refuses or whose CA is not the source's.
    #[serde(serialize_with = "crate::observe::finding::sentences")]
    pub problems: Vec<Finding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<traffic::Report>,
}

/// Every istiod's view of its peers, read once: the mesh's revision, and during an upgrade
/// every other revision that runs beside it, which must sync with every peer too.
pub fn read_sync(run: &Run, topology: &Topology) -> Vec<Row> {
    walk(run, topology, |node, cx| sync_of(run, topology, node, cx))
        .into_iter()
        .flatten()
        .collect()
}

/// [`read_sync`] of one cluster (its node of the topology, in its context): istiod's pods
/// come from `cx.memo` when the command read them already.
pub fn sync_of(
    run: &Run,
    topology: &Topology,
    node: &crate::engine::topology::ClusterParts,
    cx: &mut crate::components::ClusterCtx,
) -> Vec<Row> {
    // istiod's pods of every revision, read once for all of them.
    if cx.memo.istiod_pods.is_none() {
        cx.memo.istiod_pods = cx
            .live
            .list("pods", Some(&run.mesh.namespace), Some(sync::ISTIOD_PODS))
            .ok();
    }
    let rows: Vec<Row> = node.components.iter().filter_map(|c| c.sync(cx)).collect();
    let Some(first) = rows.first().cloned() else {
        return rows;
    };
    let others: Vec<String> = revisions::running(&cx.live, &run.mesh.namespace)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .filter(|r| *r != topology.revision)
        .collect();
    let mut all = rows;
    if !others.is_empty() {
        all[0].revision = Some(topology.revision.clone());
    }
    for revision in others {
        let watcher = sync::Watcher {
            namespace: run.mesh.namespace.clone(),
            revision: revision.clone(),
            peers: first.peers.keys().cloned().collect(),
        };
        let mut row = sync::read_among(
            &cx.live,
            cx.reporter,
            &watcher,
            cx.memo.istiod_pods.as_deref(),
        );
        row.revision = Some(revision);
        all.push(row);
    }
    all
}

/// Ambient: ztunnel and istio-cni ready on every node, the east-west Gateway programmed with
/// an address — what status says of them, as verify's problems.
pub fn dataplane(run: &Run, topology: &Topology) -> Vec<Finding> {
    if !run.mesh.ambient() {
        return Vec::new();
    }
    walk(run, topology, |node, cx| {
        let mut status = crate::observe::facts::ClusterStatus::default();
        for part in node.components.iter().filter(|c| {
            matches!(
                c.label(crate::components::Action::Install),
                "node agents" | "east-west gateway"
            )
        }) {
            part.inspect(cx, &mut status);
        }
        status.problems
    })
    .into_iter()
    .flatten()
    .collect()
}

/// The credentials that do not work; a check that could not be made is warned about.
pub fn credentials(run: &Run, topology: &Topology) -> Vec<Finding> {
    let (failed, unknown): (Vec<Finding>, Vec<Finding>) = credentials::check(run, topology)
        .into_iter()
        .partition(|f| f.level == Level::Fail);
    for f in unknown {
        run.reporter.warn(&format!(
            "[{}] {}",
            f.cluster.as_deref().unwrap_or_default(),
            f.sentence()
        ));
    }
    failed
}

/// Reads until every row is ok or `wait` has passed (read once without `wait`).
pub fn sync_until(
    run: &Run,
    topology: &Topology,
    wait: Option<Duration>,
) -> Result<Vec<Row>, StepError> {
    let deadline = Instant::now() + wait.unwrap_or_default();
    loop {
        let rows = read_sync(run, topology);
        if rows.iter().all(Row::ok) || Instant::now() + POLL > deadline {
            return Ok(rows);
        }
        let (synced, expected) = rows.iter().fold((0, 0), |(s, e), row| {
            let (rs, re) = row.synced();
            (s + rs, e + re)
        });
        run.reporter.info(&format!(
            "{synced}/{expected} peers synced; reading again in {}s",
            POLL.as_secs()
        ));
        runner::sleep(POLL)?;
    }
}

/// The matrix as text, then one line per failing pair with its hint.
pub fn render_sync(run: &Run, rows: &[Row]) -> String {
    let clusters: Vec<&str> = run.mesh.clusters.iter().map(|c| c.name.as_str()).collect();
    let label = |row: &Row| match &row.revision {
        Some(rev) => format!("{} ({rev})", row.cluster),
        None => row.cluster.clone(),
    };
    let width = clusters
        .iter()
        .map(|c| c.len())
        .chain(rows.iter().map(|r| label(r).len()))
        .max()
        .unwrap_or(0)
        .max(10)
        + 2;
    let mut out =
        String::from("istiod's view of its peers (rows: the cluster whose istiod looks)\n");
    out.push_str(&format!("{:<width$}", ""));
    for peer in &clusters {
        out.push_str(&format!("{peer:<width$}"));
    }
    out.push('\n');
    for row in rows {
        out.push_str(&format!("{:<width$}", label(row)));
        for peer in &clusters {
            let word = match (row.peers.get(*peer), row.unexpected.get(*peer)) {
                (Some(cell), _) => cell.state.word(),
                (None, Some(_)) => "unexpected",
                (None, None) => "-",
            };
            out.push_str(&format!("{word:<width$}"));
        }
        out.push('\n');
    }

    out
}

/// A problem as a line under the matrix: a pair names itself, anything else its cluster.
pub fn line(finding: &Finding) -> String {
    match &finding.cluster {
        Some(cluster) if !finding.why.starts_with(cluster.as_str()) => {
            format!("{cluster}: {}", finding.sentence())
        }
        _ => finding.sentence(),
    }
}

/// Each failing pair or unreadable row, with what to do (as `status` says it).
pub fn problems(run: &Run, rows: &[Row]) -> Vec<Finding> {
    rows.iter()
        .flat_map(|row| sync::findings(run.mesh, row, &[]))
        .collect()
}
