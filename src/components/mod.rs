//! The parts of a mesh, one file each. A component owns its whole life in a cluster: what it
//! reads (`observe`, typed, through [`Live`]), how it converges, how it is removed, how it
//! appears in the `plan` script, what `status` and `preflight` say about it, and its label.
//! `install`, `link`, `uninstall`, `plan` and `status` walk components (see `plan.rs`,
//! `exec.rs`, `status.rs`); which components a cluster gets is decided by `topology.rs`.

pub mod ambient;
pub mod cacerts;
pub mod crds;
pub mod eastwest;
pub mod handoff;
pub mod hub_access;
pub mod namespace;
pub mod peers;
pub mod reader;
pub mod release;
pub mod restart;
pub mod tags;
pub mod trust_gate;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::components::handoff::Handoff;
use crate::model::mesh::{Cluster, Mesh};
use crate::observe::drift::ObjectDiff;
use crate::observe::facts::ClusterStatus;
use crate::observe::finding::Finding;
use crate::tools::live::{HelmRecord, HelmRelease, Live};
use crate::tools::remote_secret::RemoteSecret;
use crate::tools::reporter::Reporter;
use crate::tools::runner::StepError;
use crate::tools::step::Target;

/// What a plan asks of a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Bring it to what the mesh file says (`install`, `link`).
    Install,
    /// Take it away (`uninstall`).
    Remove,
}

/// When a component's install runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// With the rest of its cluster; clusters in parallel.
    Cluster,
    /// Once the primaries are up: a remote cluster's istiod points at its primary's gateway.
    Remote,
    /// Once every cluster has finished its own stages: it needs what the others built.
    Mesh,
}

/// One part of the mesh in one cluster.
pub trait Component: Send + Sync {
    /// What progress lines and summaries call this part when doing `action`.
    fn label(&self, action: Action) -> &'static str;

    /// When its install runs.
    fn stage(&self) -> Stage {
        Stage::Cluster
    }

    /// Whether `action` does anything for this part (a plan leaves it out otherwise).
    fn acts_on(&self, action: Action) -> bool {
        let _ = action;
        true
    }

    /// Whether `meshup link` runs it (the remote-secret exchange).
    fn part_of_link(&self) -> bool {
        false
    }

    /// Brings this part to what the mesh file says; returns the outcome (`created`,
    /// `unchanged`, ...).
    fn converge(&self, cx: &mut ClusterCtx) -> Result<String, StepError>;

    /// Takes this part away; returns the outcome (`removed`, `absent`, ...).
    fn remove(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let _ = cx;
        Ok("nothing to do".into())
    }

    /// Its lines in the `plan` script for `action` (empty when it has none).
    fn script(&self, cx: &ScriptCx, action: Action) -> String;

    /// What `status` shows about it: facts into `status`, problems as findings.
    fn inspect(&self, cx: &mut ClusterCtx, status: &mut ClusterStatus) {
        let _ = (cx, status);
    }

    /// What would stop an install before it changes anything (an Istio of another mesh).
    fn preflight(&self, cx: &mut ClusterCtx) -> Result<Vec<Finding>, StepError> {
        let _ = cx;
        Ok(Vec::new())
    }

    /// The istiod this part runs, if any: what it reports of the peers it must watch.
    fn sync(&self, cx: &mut ClusterCtx) -> Option<crate::observe::sync::Row> {
        let _ = cx;
        None
    }

    /// Who runs it once a fleet engine takes the mesh (`meshup export`). No default: every
    /// part names its owner.
    fn handoff(&self) -> Vec<Handoff>;
    /// What `install` would change in this part, and what drifted from it (see
    /// `observe::drift`), without changing anything. Parts that read other clusters' state
    /// (remote secrets) find it on the run board.
    fn diff(&self, cx: &mut ClusterCtx) -> Result<Vec<ObjectDiff>, StepError> {
        let _ = cx;
        Ok(Vec::new())
    }

    /// The Helm values file this part renders for `meshup render`: (file name, values).
    fn values_file(&self) -> Option<(String, &serde_yaml::Mapping)> {
        None
    }
}

/// What one cluster's components learn during a run and pass on to each other.
#[derive(Debug, Default)]
pub struct ClusterNotes {
    /// `helm list` of the mesh namespace, read once per run.
    pub releases: Option<Vec<HelmRelease>>,
    /// istiod ran before its `cacerts` appeared or changed, so it still signs with the old
    /// root until it restarts.
    pub istiod_needs_restart: bool,
    /// Releases this run asked helm to install or upgrade: if one is left pending, this run
    /// left it so.
    pub attempted: std::collections::BTreeSet<String>,
    /// istiod's pods (`app=istiod` in the mesh namespace, every revision), when a read-only
    /// command read them already (doctor): its sync read takes them from here.
    pub istiod_pods: Option<Vec<crate::tools::live::Pod>>,
    /// Helm's records of the releases in the mesh namespace (`diff`, `--repair`), read once.
    pub records: Option<Vec<HelmRecord>>,
}

/// What one cluster's components make during a run for other clusters' components. Lives in
/// memory only.
#[derive(Debug, Default)]
pub struct RunBoard {
    /// Remote secrets, by the cluster they give access to.
    pub secrets: Mutex<BTreeMap<String, RemoteSecret>>,
    /// East-west gateway addresses, by cluster.
    pub addresses: Mutex<BTreeMap<String, String>>,
    /// Clusters no longer in the mesh file whose remote secrets this run removed: they may
    /// still hold their peers' reader tokens.
    pub departed: Mutex<std::collections::BTreeSet<String>>,
    /// Reader-token rotations under way, by source cluster.
    pub rotations: Mutex<BTreeMap<String, Rotation>>,
    /// `diff`: clusters whose remote secret `install` would build from a new reader token
    /// (none is filled yet), so every copy of it changes.
    pub new_tokens: Mutex<std::collections::BTreeSet<String>>,
}

impl RunBoard {
    /// The rotations under way (a poisoned lock is taken over: what it holds stays valid).
    pub fn rotations(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Rotation>> {
        self.rotations.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One cluster's reader-token rotation, as its waves pass it on.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    pub cluster: String,
    /// The token secrets it replaces (deleted at the end).
    pub old: Vec<String>,
    pub new: String,
    /// The peers that were given the new token.
    pub peers: Vec<String>,
    /// When the first peer was given it (istiod's log is read from then on).
    #[serde(skip)]
    pub handed: Option<std::time::Instant>,
    /// For each (peer, istiod pod) there before the hand-over: the time stamp of its last log
    /// line building this cluster, if any. Only a later one shows it acted on the new secret.
    #[serde(skip)]
    pub baselines: BTreeMap<(String, String), Option<String>>,
    /// Every watcher's istiod was seen using the new token.
    #[serde(skip)]
    pub acted: bool,
    /// The old tokens are revoked.
    #[serde(skip)]
    pub revoked: bool,
}

/// What a component works with in one cluster.
pub struct ClusterCtx<'a> {
    pub mesh: &'a Mesh,
    pub cluster: &'a Cluster,
    pub live: Live<'a>,
    pub reporter: &'a Reporter,
    pub memo: &'a mut ClusterNotes,
    pub board: &'a RunBoard,
    /// This run took the cluster's lock over from a dead run: what that run left pending may
    /// be recovered.
    pub took_over: bool,
}

impl ClusterCtx<'_> {
    /// Helm's record of release `name` (read once per cluster with every release's).
    pub fn record(&mut self, name: &str) -> Result<Option<HelmRecord>, StepError> {
        if self.memo.records.is_none() {
            self.memo.records = Some(self.live.helm_records(&self.mesh.namespace)?);
        }
        Ok(self
            .memo
            .records
            .iter()
            .flatten()
            .find(|r| r.name == name)
            .cloned())
    }

    pub fn target(&self) -> &Target {
        self.live.target
    }

    pub fn timeout(&self) -> Duration {
        self.live.timeout
    }

    /// The release `name` from `helm list` (read once per cluster and kept).
    pub fn release(&mut self, name: &str) -> Result<Option<HelmRelease>, StepError> {
        if self.memo.releases.is_none() {
            self.memo.releases = Some(self.live.helm_releases(&self.mesh.namespace)?);
        }
        Ok(self
            .memo
            .releases
            .iter()
            .flatten()
            .find(|r| r.name == name)
            .cloned())
    }
}

/// What a component's `script` works with.
pub struct ScriptCx<'a> {
    pub mesh: &'a Mesh,
    pub cluster: &'a Cluster,
    /// The cluster as the script's commands address it (with `--kubeconfig` when given).
    pub target: Target,
    /// Where the script's `meshup render` writes values files.
    pub values_dir: &'a Path,
    pub kubeconfig: Option<&'a Path>,
    pub timeout: Duration,
}

impl ScriptCx<'_> {
    /// ` --kubeconfig PATH` when one was given.
    pub fn kubeconfig_flag(&self) -> String {
        crate::tools::step::kubeconfig_flag(self.kubeconfig)
    }
}
