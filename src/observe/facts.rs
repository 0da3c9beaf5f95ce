//! What `status` shows of one cluster, as data its components fill in (`Component::inspect`)
//! and the table renders. Kept apart from `status.rs`, which walks the components, so that a
//! component can say what it found without depending on the walk.

use serde::Serialize;

use crate::observe::finding::Finding;
use crate::observe::sync::State;

/// Where a column stands in the status table, and its header.
pub type Column = (u8, &'static str);

/// The columns of the status table, in order. A part that has something to show adds its
/// own here and writes its cells with [`ClusterStatus::cell`]; the table shows every column
/// some cluster has a cell in.
pub mod column {
    use super::Column;
    pub const CLUSTER: Column = (0, "CLUSTER");
    pub const CONTEXT: Column = (10, "CONTEXT");
    pub const KUBERNETES: Column = (20, "KUBERNETES");
    pub const ROLE: Column = (30, "ROLE");
    pub const RELEASES: Column = (40, "RELEASES");
    /// Shown where a fleet engine runs istiod (`observe::manager`).
    pub const MANAGED_BY: Column = (45, "MANAGED BY");
    pub const ISTIOD: Column = (50, "ISTIOD");
    pub const REVISIONS: Column = (52, "REVISIONS");
    pub const TAGS: Column = (54, "TAGS");
    pub const PROXIES: Column = (56, "PROXIES");
    pub const UPGRADE: Column = (58, "UPGRADE");
    pub const PEERS_SYNCED: Column = (60, "PEERS SYNCED");
    pub const GATEWAY: Column = (70, "GATEWAY");
    pub const ZTUNNEL: Column = (72, "ZTUNNEL");
    pub const CNI: Column = (74, "CNI");
    pub const GLOBAL_SERVICES: Column = (76, "GLOBAL SERVICES");
    pub const CACERTS_ROOT: Column = (80, "CACERTS ROOT");
    pub const DRIFT: Column = (90, "DRIFT");
}

/// One cell of a cluster's row in the status table.
#[derive(Debug, Clone)]
pub struct Cell {
    pub column: Column,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub cluster: String,
    pub context: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<String>,
    /// The primary whose istiod controls this cluster, for a remote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// The east-west gateway's address, for a cluster that has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    pub releases: Vec<ReleaseStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub istiod: Option<Readiness>,
    pub remote_secrets: RemoteSecrets,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cacerts: Option<Cacerts>,
    /// The istiod revisions it runs and where its revision tags point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revisions: Option<crate::observe::revisions::Installed>,
    /// What this cluster's istiod reports of the peers it must watch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<Sync>,
    #[serde(serialize_with = "crate::observe::finding::sentences")]
    pub problems: Vec<Finding>,
    /// The row of the status table, as this cluster's parts wrote it (JSON has the facts).
    #[serde(skip)]
    pub cells: Vec<Cell>,
}

/// istiod's view of its peers, as counted by `status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sync {
    pub synced: usize,
    pub expected: usize,
    /// Each peer's state (`synced`, `syncing`, `timeout`, `missing`, ...).
    pub peers: std::collections::BTreeMap<String, State>,
}

impl ClusterStatus {
    /// Writes `text` into `column` of this cluster's row; several parts writing one column
    /// (every release adds itself) are shown side by side.
    pub fn cell(&mut self, column: Column, text: impl Into<String>) {
        let text = text.into();
        match self.cells.iter_mut().find(|c| c.column == column) {
            Some(cell) => {
                cell.text.push(' ');
                cell.text.push_str(&text);
            }
            None => self.cells.push(Cell { column, text }),
        }
    }

    /// Records something that differs from the mesh file.
    pub fn problem(&mut self, finding: Finding) {
        self.problems.push(finding);
    }
}

impl ReleaseStatus {
    /// As the table shows it: the chart when deployed, else the release and its state.
    pub fn text(&self) -> String {
        match (&self.status, &self.chart) {
            (Some(s), Some(chart)) if s == "deployed" => chart.clone(),
            (Some(s), _) => format!("{} {s}", self.name),
            (None, _) => format!("{} absent", self.name),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseStatus {
    pub name: String,
    /// helm's status (`deployed`, `failed`, ...), or None when absent.
    pub status: Option<String>,
    pub chart: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: u64,
    pub desired: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RemoteSecrets {
    /// Peers whose secret is present and right.
    pub present: Vec<String>,
    pub missing: Vec<String>,
    /// Peers whose secret points elsewhere than the mesh file says.
    pub stale: Vec<String>,
    /// Remote secrets for clusters not in the mesh (or for this cluster itself).
    pub unexpected: Vec<String>,
}

impl Cacerts {
    /// As the table shows it: the root's short fingerprint, or what is wrong.
    pub fn text(&self) -> String {
        match self {
            Cacerts {
                root_fingerprint: Some(fp),
                ..
            } => match fp.get(..11) {
                Some(start) if fp.len() > 11 => format!("{start}…"),
                _ => fp.clone(),
            },
            Cacerts { present: true, .. } => "unreadable".into(),
            Cacerts { .. } => "missing".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cacerts {
    pub present: bool,
    /// SHA-256 of the root certificate; never key material.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_fingerprint: Option<String>,
}
