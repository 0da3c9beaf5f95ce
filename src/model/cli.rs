//! The raw command line, as clap parses it. Nothing here is validated beyond its type: the
//! mesh file and these flags are merged and checked in `mesh.rs`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::trust::KeyType;

/// Install, link, inspect and remove an Istio multi-primary mesh across Kubernetes clusters.
///
/// meshup reads one mesh file (or flags), renders per-cluster Helm values, runs `helm` and
/// `kubectl` in the right order (clusters in parallel), exchanges remote secrets between
/// every pair of clusters, and undoes it all cleanly.
///
/// Exit codes: 0 success, 1 a step or check failed, 2 bad input (no cluster was touched),
/// 3 `diff` found changes, 130 interrupted.
#[derive(Debug, Parser)]
#[command(
    name = "meshup",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten, next_help_heading = "Global options")]
    pub global: GlobalArgs,

    #[command(flatten, next_help_heading = "Mesh file and overrides")]
    pub mesh: MeshArgs,
}

/// Flags that every command accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Kubeconfig to use [default: $KUBECONFIG, else ~/.kube/config]
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// How many clusters to change at once, or `all` [default: 16; reads: 32]
    #[arg(long, short = 'j', global = true, value_name = "N|all", value_parser = parse_jobs)]
    pub jobs: Option<Jobs>,

    /// Time limit for each helm or kubectl call, e.g. 90s, 5m, 1h
    #[arg(long, global = true, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// How often a step that failed for a transient reason (connection reset, HTTP 503, ...)
    /// is tried again, after 1s, 2s, 4s ... up to 30s
    #[arg(long, global = true, value_name = "N", default_value_t = 5)]
    pub retries: u32,

    /// When another meshup holds a cluster's lock, wait this long for it (e.g. 5m) instead
    /// of stopping
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub wait_for_lock: Option<Duration>,

    /// How to report progress and results [default: human on a terminal, plain otherwise]
    #[arg(long, short = 'o', global = true, value_enum)]
    pub output: Option<OutputFormat>,

    /// Print only warnings, errors and the final summary
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Print every helm and kubectl command line as it runs (secrets never appear)
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,

    /// The helm binary to run [default: `helm` on PATH]
    #[arg(long, global = true, env = "MESHUP_HELM", value_name = "PATH")]
    pub helm: Option<PathBuf>,

    /// The kubectl binary to run [default: `kubectl` on PATH]
    #[arg(long, global = true, env = "MESHUP_KUBECTL", value_name = "PATH")]
    pub kubectl: Option<PathBuf>,
}

/// The mesh file and the flags that override it.
#[derive(Debug, Args, Default, Clone)]
pub struct MeshArgs {
    /// The mesh file [default: ./mesh.yaml when it exists]
    #[arg(
        long = "file",
        short = 'f',
        global = true,
        env = "MESHUP_FILE",
        value_name = "PATH"
    )]
    pub file: Option<PathBuf>,

    /// Mesh ID shared by every cluster (overrides `meshID`)
    #[arg(long, global = true, value_name = "ID")]
    pub mesh_id: Option<String>,

    /// Default network of every cluster (overrides `network`)
    #[arg(long, global = true, value_name = "NETWORK")]
    pub network: Option<String>,

    /// A cluster as NAME=CONTEXT; repeat for each cluster (replaces the file's `clusters`)
    #[arg(long = "cluster", global = true, value_name = "NAME=CONTEXT")]
    pub clusters: Vec<String>,

    /// Istio chart version to install (overrides `istio.version`)
    #[arg(long, global = true, value_name = "VERSION")]
    pub istio_version: Option<String>,

    /// Where the charts come from: https:// repo, oci:// prefix or local directory
    /// (overrides `istio.charts`)
    #[arg(long, global = true, value_name = "SOURCE")]
    pub charts: Option<String>,

    /// `sidecar` or `ambient` (overrides `dataplane`)
    #[arg(long, global = true, value_name = "DATAPLANE")]
    pub dataplane: Option<String>,

    /// Allow shapes upstream Istio does not test (ambient on one network, ambient before 1.29)
    #[arg(long, global = true)]
    pub allow_untested: bool,
}

impl MeshArgs {
    /// The overriding flags as given (not `-f`), to repeat them in a generated script.
    pub fn override_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        let mut push = |name: &str, value: &str| {
            flags.push(name.to_string());
            flags.push(value.to_string());
        };
        if let Some(v) = &self.mesh_id {
            push("--mesh-id", v);
        }
        if let Some(v) = &self.network {
            push("--network", v);
        }
        for c in &self.clusters {
            push("--cluster", c);
        }
        if let Some(v) = &self.istio_version {
            push("--istio-version", v);
        }
        if let Some(v) = &self.charts {
            push("--charts", v);
        }
        if let Some(v) = &self.dataplane {
            push("--dataplane", v);
        }
        if self.allow_untested {
            flags.push("--allow-untested".to_string());
        }
        flags
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write what a fleet engine (Flux, Argo CD) needs to run the mesh, and who owns each
    /// part; contacts no cluster
    Export(ExportArgs),
    /// Write each cluster's Helm values files; contacts no cluster
    Render {
        /// Directory to write `<cluster>/base-values.yaml` and `<cluster>/istiod-values.yaml` into
        #[arg(long, default_value = "meshup-values", value_name = "DIR")]
        out: PathBuf,
    },
    /// Print an operation (the install by default) as a bash script a person could review
    /// and run; contacts no cluster
    Plan(PlanArgs),
    /// Check tools, contexts, API servers and existing Istio installs; changes nothing
    Preflight,
    /// Preflight, then install istio-base and istiod in every cluster, then link them
    Install(InstallArgs),
    /// Exchange remote secrets so every istiod watches the clusters it should
    Link(LinkArgs),
    /// Report each cluster's releases, istiod, remote secrets and cacerts; exit 1 on drift
    Status(StatusArgs),
    /// Show what `install` would change in each cluster, and what changed behind meshup's
    /// back (drift); changes nothing. Exit 0 no changes, 3 changes found, 1 a cluster could not
    /// be read, 2 bad input
    Diff(DiffArgs),
    /// Ambient: make a service reachable from every cluster (label it `istio.io/global=true`
    /// in each cluster that has it)
    Expose(ExposeArgs),
    /// Ambient: make a service local to each cluster again (remove `istio.io/global`)
    Unexpose(ExposeArgs),
    /// Find what breaks the mesh across all its clusters, also meshes meshup did not install;
    /// exit 1 when something is found
    Doctor(DoctorArgs),
    /// Upgrade a live mesh to the next Istio minor version: a canary revision beside the
    /// running one, cluster wave by cluster wave (start, promote, finish; or rollback)
    Upgrade(UpgradeArgs),
    /// Prove the mesh works: every istiod synced with every peer (and traffic, with --traffic)
    Verify(VerifyArgs),
    /// Remove the mesh (or the named clusters from a live mesh): remote secrets, istiod,
    /// istio-base and the namespace
    Uninstall(UninstallArgs),
    /// Print one cluster's remote secret (a Secret holding a kubeconfig) to stdout
    #[command(name = "remote-secret")]
    RemoteSecret {
        /// Kube context of the cluster the secret gives access to
        #[arg(long, value_name = "CONTEXT")]
        context: String,
        /// Cluster name that other istiods will know this cluster by
        #[arg(long, value_name = "NAME")]
        name: String,
        /// API server address reachable from the other clusters [default: the context's server]
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Namespace of istiod
        #[arg(long, default_value = "istio-system", value_name = "NS")]
        namespace: String,
    },
    /// Create (or check) the shared root CA and each cluster's intermediate CA; contacts no cluster
    Certs {
        /// Key algorithm for newly created keys
        #[arg(long, value_enum, default_value = "ecdsa-p256")]
        key_type: KeyTypeArg,
    },
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The operation to print
    #[arg(value_enum, default_value = "install")]
    pub operation: Operation,
    /// With `uninstall`: the clusters to take out of the live mesh [default: the whole
    /// mesh]. With `upgrade`: the phase (`start`, `promote`, `finish`, `rollback`), then
    /// the clusters [default: every cluster]
    #[arg(value_name = "CLUSTER")]
    pub leaving: Vec<String>,
    /// With `upgrade`: the revision the clusters run [default: the mesh file's
    /// `istio.revision`, else `default`]
    #[arg(long, value_name = "REVISION")]
    pub from: Option<String>,
    /// With `upgrade`: the Istio version to upgrade to [default: `istio.version`]
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,
    /// With `upgrade`: clusters per wave
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub wave_size: u32,
    /// With `upgrade promote` or `rollback`: restart the workloads too
    #[arg(long)]
    pub restart_workloads: bool,
    /// With `install` or `link`: then rotate the reader tokens of the named clusters (all when
    /// none is named)
    #[arg(long, value_name = "CLUSTER", num_args = 0..)]
    pub rotate: Option<Vec<String>>,
    /// With `uninstall`: also delete Istio's CRDs
    #[arg(long)]
    pub purge_crds: bool,
    /// Where the script expects the values files (it renders them there first)
    #[arg(long, default_value = "meshup-values", value_name = "DIR")]
    pub values_dir: PathBuf,
}

/// What `meshup plan` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Operation {
    Install,
    Link,
    Uninstall,
    Upgrade,
}

#[derive(Debug, Args)]
pub struct ExposeArgs {
    /// The Service's name
    #[arg(value_name = "SERVICE")]
    pub service: String,
    /// Its namespace
    #[arg(long, short = 'n', value_name = "NS", default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The engine to write for
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Directory to write into (one folder per cluster, and a README with the ownership table)
    #[arg(long, default_value = "meshup-export", value_name = "DIR")]
    pub out: PathBuf,
    /// Where the engine runs: in every cluster, or in a hub reaching the others through
    /// kubeconfig Secrets meshup creates there
    #[arg(long, value_enum, default_value_t = ExportLayout::Every)]
    pub layout: ExportLayout,
    /// The engine's namespace [default: flux-system for Flux, argocd for Argo CD]
    #[arg(long, value_name = "NAMESPACE")]
    pub engine_namespace: Option<String>,
    /// The path of DIR in the Git repository the engine reads
    #[arg(long, default_value = "./meshup-export", value_name = "PATH")]
    pub path: String,
    /// Flux: the source its Kustomizations read the repository from
    #[arg(
        long,
        default_value = "GitRepository/flux-system",
        value_name = "KIND/NAME"
    )]
    pub source: String,
    /// Argo CD: the Git repository its parent Applications read DIR from
    #[arg(long, value_name = "URL")]
    pub repo_url: Option<String>,
    /// Argo CD: the revision of that repository
    #[arg(long, default_value = "HEAD", value_name = "REVISION")]
    pub revision: String,
    /// How often the engine reconciles
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub interval: String,
    /// Print who owns each object (the engine, or meshup) and write nothing
    #[arg(long)]
    pub list: bool,
    /// Write the state a phase of a canary upgrade leaves the clusters in, for the engine to
    /// apply (reads the clusters, read-only, for the guards of `meshup upgrade PHASE`); then
    /// `meshup upgrade PHASE --wait-only`
    #[arg(long, value_enum, value_name = "PHASE")]
    pub upgrade: Option<ExportPhase>,
    /// With --upgrade: only these clusters take the phase; the others stay where they stand
    #[arg(
        long = "clusters",
        id = "export_clusters",
        value_name = "CLUSTER",
        value_delimiter = ',',
        requires = "upgrade"
    )]
    pub clusters: Vec<String>,
}

/// `export --upgrade`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportPhase {
    Start,
    Promote,
    Finish,
    Rollback,
}

impl ExportPhase {
    /// The phase as `meshup upgrade` decides it, for `clusters`.
    pub fn phase(self, clusters: &[String]) -> UpgradePhase {
        let waves = WaveArgs {
            wave_size: 1,
            only: clusters.to_vec(),
        };
        match self {
            ExportPhase::Start => UpgradePhase::Start { to: None, waves },
            ExportPhase::Promote => UpgradePhase::Promote {
                restart_workloads: false,
                waves,
            },
            ExportPhase::Finish => UpgradePhase::Finish {
                force: false,
                waves,
            },
            ExportPhase::Rollback => UpgradePhase::Rollback {
                restart_workloads: false,
                force: false,
                waves,
            },
        }
    }
}

/// `install --only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnlyPart {
    Trust,
}

/// `export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Flux,
    Argocd,
}

/// `export --layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportLayout {
    Every,
    Hub,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Check the clusters behind these contexts (repeat) instead of a mesh file: the mesh is
    /// discovered from what they hold (istiod's CLUSTER_ID, network, mesh ID)
    #[arg(long = "context", id = "doctor_contexts", value_name = "CONTEXT")]
    pub contexts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[command(subcommand)]
    pub phase: UpgradePhase,
    /// Change nothing: wait until the clusters stand where the phase leaves them and on its
    /// gates (new istiod synced, proxies moved), while a fleet engine applies the phase that
    /// `meshup export --upgrade PHASE` wrote; bounded by --timeout
    #[arg(long, global = true)]
    pub wait_only: bool,
}

/// The phases of an upgrade, in order (`rollback` instead of `finish`).
#[derive(Debug, Subcommand)]
pub enum UpgradePhase {
    /// istio-base to the new chart in every cluster, then the new revision's istiod beside
    /// the running one, wave by wave, each wave waiting until it synced with every peer
    Start {
        /// The Istio version to upgrade to [default: the mesh file's `istio.version`]
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        #[command(flatten)]
        waves: WaveArgs,
    },
    /// Move the default revision, every revision tag and the east-west gateway to the new
    /// revision, wave by wave
    Promote {
        /// Also restart the Deployments whose pods run proxies of the old revision
        #[arg(long)]
        restart_workloads: bool,
        #[command(flatten)]
        waves: WaveArgs,
    },
    /// Remove the old revision's istiod; refused while pods still run its proxies
    Finish {
        /// Remove it even while proxies of it run (they lose their control plane)
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        waves: WaveArgs,
    },
    /// Before `finish`: tags, istio-base's default revision and the gateway back to the old
    /// revision, then the new revision's istiod removed
    Rollback {
        /// Also restart the Deployments whose pods run proxies of the new revision
        #[arg(long)]
        restart_workloads: bool,
        /// Remove the new istiod even while proxies of it run
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        waves: WaveArgs,
    },
}

impl UpgradePhase {
    pub fn name(&self) -> &'static str {
        match self {
            UpgradePhase::Start { .. } => "start",
            UpgradePhase::Promote { .. } => "promote",
            UpgradePhase::Finish { .. } => "finish",
            UpgradePhase::Rollback { .. } => "rollback",
        }
    }

    pub fn waves(&self) -> &WaveArgs {
        match self {
            UpgradePhase::Start { waves, .. }
            | UpgradePhase::Promote { waves, .. }
            | UpgradePhase::Finish { waves, .. }
            | UpgradePhase::Rollback { waves, .. } => waves,
        }
    }
}

/// Which clusters an upgrade phase changes, and how many at a time.
#[derive(Debug, Clone, Args)]
pub struct WaveArgs {
    /// Clusters changed per wave; the next wave starts once this one passed its gate
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub wave_size: u32,
    /// Only these clusters, in this order [default: every cluster, in mesh-file order]
    #[arg(
        long = "clusters",
        id = "wave_clusters",
        value_name = "CLUSTER",
        value_delimiter = ','
    )]
    pub only: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Replace an existing `cacerts` whose root differs from the mesh's root (breaks live traffic
    /// until every workload restarts)
    #[arg(long)]
    pub rotate_ca: bool,
    /// Restart istiod where it was running before its `cacerts` was created or changed
    #[arg(long)]
    pub restart: bool,
    /// Key algorithm for newly created CA keys
    #[arg(long, value_enum, default_value = "ecdsa-p256")]
    pub key_type: KeyTypeArg,
    /// When remote secrets of clusters no longer in the mesh file are removed, also rotate
    /// every reader token those clusters may still hold
    #[arg(long)]
    pub prune: bool,
    /// Allow an in-place upgrade of istiod to another minor version (one cluster at a time);
    /// without it such an install is refused in favour of `meshup upgrade`
    #[arg(long)]
    pub in_place: bool,
    /// Take over releases a fleet engine (Flux, Argo CD) runs; without it install refuses
    /// them (exit 2), naming the engine and the object
    #[arg(long)]
    pub take_over: bool,
    /// Install only this part: `trust` puts the namespace (with its network label),
    /// `cacerts` (and for ambient the Gateway API CRDs) in place, then the trust gate a fleet
    /// engine's istiod waits for (see `meshup export`)
    #[arg(long, value_enum, value_name = "PART")]
    pub only: Option<OnlyPart>,
    /// With `--only trust`: the fleet engine's namespace, where the trust gate goes
    #[arg(
        long,
        default_value = "flux-system",
        value_name = "NAMESPACE",
        requires = "only"
    )]
    pub engine_namespace: String,
    /// With `--only trust`: the context of the hub a fleet engine runs every cluster's
    /// releases from (`meshup export --layout hub`): each cluster's kubeconfig Secret and its
    /// trust gate go there
    #[arg(long, value_name = "CONTEXT", requires = "only")]
    pub hub: Option<String>,
    /// Also converge what drifted from the releases' charts (fields another manager changed
    /// or added, objects deleted by hand; see `meshup diff`), with a targeted patch per object;
    /// never istiod's webhook patches or what the cluster allocated
    #[arg(long)]
    pub repair: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Also compare every release's objects with what its chart renders (as `meshup diff`
    /// does) and show a DRIFT column; drift fails the status
    #[arg(long)]
    pub drift: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Only these clusters of the mesh file [default: every cluster]
    #[arg(value_name = "CLUSTER", id = "diff_clusters")]
    pub clusters: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Clusters of the mesh file to take out of the live mesh; the others keep running,
    /// and the reader tokens these clusters held are rotated [default: the whole mesh]
    #[arg(value_name = "CLUSTER")]
    pub leaving: Vec<String>,
    /// Also delete Istio's CRDs (helm keeps them), and with them all Istio config
    #[arg(long)]
    pub purge_crds: bool,
    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct LinkArgs {
    /// Replace the reader token of the named clusters (all when none is named): a new token
    /// in every peer, each istiod seen rebuilding that cluster and synced, then the old
    /// token revoked
    #[arg(long, value_name = "CLUSTER", num_args = 0..)]
    pub rotate: Option<Vec<String>>,
    /// When remote secrets of clusters no longer in the mesh file are removed, also rotate
    /// every reader token those clusters may still hold
    #[arg(long)]
    pub prune: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Read istiod's view again until every peer is synced or this much time has passed
    /// (right after an install istiod may still be syncing), e.g. 2m
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub wait: Option<Duration>,
    /// Also send requests from every cluster and require an answer from every cluster
    #[arg(long)]
    pub traffic: bool,
    /// Requests each cluster's client sends
    #[arg(long, value_name = "K", default_value_t = 20, requires = "traffic",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub requests: u32,
    /// The namespace the traffic check creates in every cluster
    #[arg(
        long,
        value_name = "NS",
        default_value = "meshup-verify",
        requires = "traffic"
    )]
    pub namespace: String,
    /// Leave the traffic check's namespace in place afterwards
    #[arg(long, requires = "traffic")]
    pub keep: bool,
    /// Registry to pull the check's images from instead of docker.io (air-gapped clusters)
    #[arg(long, value_name = "HOST[/PATH]", requires = "traffic")]
    pub registry: Option<String>,
    /// The helloworld image [default: docker.io/istio/examples-helloworld-v1:1.0]
    #[arg(long, value_name = "IMAGE", requires = "traffic")]
    pub helloworld_image: Option<String>,
    /// The curl client image [default: docker.io/curlimages/curl:8.16.0]
    #[arg(long, value_name = "IMAGE", requires = "traffic")]
    pub curl_image: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Progress bars per cluster
    Human,
    /// One line per event, for logs and CI
    Plain,
    /// One JSON document on stdout
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyTypeArg {
    /// ECDSA on the P-256 curve
    EcdsaP256,
    /// RSA with 4096-bit keys, as Istio's reference Makefiles make
    Rsa4096,
}

impl From<KeyTypeArg> for KeyType {
    fn from(arg: KeyTypeArg) -> Self {
        match arg {
            KeyTypeArg::EcdsaP256 => KeyType::EcdsaP256,
            KeyTypeArg::Rsa4096 => KeyType::Rsa4096,
        }
    }
}

/// How many clusters meshup works on at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jobs {
    Count(usize),
    All,
}

/// Clusters changed at once by default: each helm process takes about 65 MB, so a hundred
/// clusters at once would need gigabytes.
pub const DEFAULT_JOBS: usize = 16;
/// Clusters read at once by default (`status`, `verify`, `preflight`): kubectl reads are light.
pub const DEFAULT_READ_JOBS: usize = 32;

impl Jobs {
    /// The number of workers for `clusters` clusters; `default` when no flag was given.
    pub fn resolve(jobs: Option<Jobs>, clusters: usize, default: usize) -> usize {
        match jobs {
            Some(Jobs::Count(n)) => n,
            Some(Jobs::All) => clusters,
            None => default,
        }
        .clamp(1, clusters.max(1))
    }
}

/// Parses `--jobs`: a positive number or `all`.
pub fn parse_jobs(text: &str) -> Result<Jobs, String> {
    if text == "all" {
        return Ok(Jobs::All);
    }
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(Jobs::Count(n)),
        _ => Err(format!("`{text}` is neither a positive number nor `all`")),
    }
}

/// Parses `90s`, `5m`, `1h`, `1h30m`, `250ms` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration; use e.g. 90s, 5m or 1h");
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number * 60),
            "h" => Duration::from_secs(number * 3600),
            _ => return Err(bad()),
        };
        total += unit;
        rest = &rest[unit_len..];
    }
    if total.is_zero() {
        return Err(format!("`{text}` is zero; a time limit must be positive"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn jobs_are_bounded_unless_all() {
        assert_eq!(parse_jobs("all"), Ok(Jobs::All));
        assert_eq!(parse_jobs("4"), Ok(Jobs::Count(4)));
        assert!(parse_jobs("0").is_err() && parse_jobs("many").is_err());
        assert_eq!(Jobs::resolve(None, 100, DEFAULT_JOBS), 16);
        assert_eq!(Jobs::resolve(None, 3, DEFAULT_JOBS), 3);
        assert_eq!(Jobs::resolve(Some(Jobs::All), 100, DEFAULT_JOBS), 100);
        assert_eq!(
            Jobs::resolve(Some(Jobs::Count(2)), 100, DEFAULT_READ_JOBS),
            2
        );
    }

    #[test]
    fn durations_reject_garbage_and_zero() {
        for bad in ["", "m", "5x", "five", "0s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }
}
