//! What `status` shows of one cluster, as data its components fill in (`Component::inspect`)
//! and the table renders. Kept apart from `status.rs`, which walks the components, so that a
//! component can say what it found without depending on the walk.

use serde::Serialize;

use crate::finding::Finding;
use crate::sync::State;

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
    /// What this cluster's istiod reports of the peers it must watch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<Sync>,
    #[serde(serialize_with = "crate::finding::sentences")]
    pub problems: Vec<Finding>,
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
    /// Records something that differs from the mesh file.
    pub fn problem(&mut self, finding: Finding) {
        self.problems.push(finding);
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

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cacerts {
    pub present: bool,
    /// SHA-256 of the root certificate; never key material.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_fingerprint: Option<String>,
}
