//! The mesh: the mesh file merged with its overriding flags, validated. Every later stage
//! trusts a [`Mesh`]; nothing touches a cluster before one exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::model::chart::{self, Charts, DEFAULT_CHARTS};
use crate::model::cli::MeshArgs;
use crate::model::input::InputError;
use crate::model::kubeconfig::Kubeconfig;
use crate::trust::TrustMode;

/// The namespace istiod runs in unless the mesh file says otherwise.
pub const DEFAULT_NAMESPACE: &str = "istio-system";
/// Where `generate` keeps the CA files unless `trust.dir` says otherwise.
pub const DEFAULT_TRUST_DIR: &str = "meshup-certs";
/// The charts every mesh installs (a local `istio.charts` directory must hold them).
pub const CHARTS: &[&str] = &["base", "istiod"];

/// The charts a mesh of `clusters` installs: `base` and `istiod`, and `gateway` when a cluster
/// gets an east-west gateway (several networks, or a primary with remote clusters).
pub fn charts_needed(clusters: &[Cluster], dataplane: Dataplane) -> Vec<&'static str> {
    let networks: BTreeSet<Option<&str>> = clusters.iter().map(|c| c.network.as_deref()).collect();
    let remotes = clusters
        .iter()
        .any(|c| matches!(c.role, Role::Remote { .. }));
    let mut names = CHARTS.to_vec();
    match dataplane {
        // The ambient east-west gateway is a Gateway API object istiod deploys itself.
        Dataplane::Ambient => names.extend(["cni", "ztunnel"]),
        Dataplane::Sidecar if networks.len() > 1 || remotes => names.push("gateway"),
        Dataplane::Sidecar => {}
    }
    names
}

/// How workloads join the mesh (`dataplane`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dataplane {
    /// A sidecar proxy injected into each pod (the default).
    #[default]
    Sidecar,
    /// Ambient: ztunnel on every node (with istio-cni), no sidecars.
    Ambient,
}

impl Dataplane {
    pub fn name(self) -> &'static str {
        match self {
            Dataplane::Sidecar => "sidecar",
            Dataplane::Ambient => "ambient",
        }
    }
}

/// A validated mesh.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// Where the mesh came from, for messages: the file's path, or `flags`.
    pub source: String,
    pub mesh_id: String,
    /// istiod's namespace.
    pub namespace: String,
    /// The chart version, or `None` for whatever is newest (warned about).
    pub version: Option<String>,
    pub charts: Charts,
    pub revision: Option<String>,
    /// Extra istiod values for every cluster.
    pub values: Mapping,
    pub clusters: Vec<Cluster>,
    pub trust: Trust,
    /// `dataplane`: sidecars, or ambient (ztunnel and istio-cni).
    pub dataplane: Dataplane,
    /// `gatewayApiCrds`: a file or https:// URL of the Gateway API CRDs to apply where they
    /// are missing (ambient); without it meshup only checks them.
    pub gateway_api_crds: Option<String>,
}

/// One cluster of the mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// DNS-1123 label; istiod's `global.multiCluster.clusterName`.
    pub name: String,
    /// The kube context meshup uses to reach it.
    pub context: String,
    /// The API server address written into this cluster's remote secret: `apiServer` when
    /// given, else the context's server in the kubeconfig (empty when no kubeconfig was read).
    pub server: String,
    /// Whether `server` came from `apiServer` (so it is meant to be reachable by peers).
    pub server_overridden: bool,
    /// This cluster's network (its own or the mesh default).
    pub network: Option<String>,
    /// Extra istiod values for this cluster only.
    pub values: Mapping,
    /// Whether it runs istiod, or is controlled by a primary's.
    pub role: Role,
    /// How its east-west gateway is exposed, when it gets one.
    pub gateway: GatewayExposure,
}

/// A cluster's part in the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Role {
    /// Runs istiod (the default).
    #[default]
    Primary,
    /// Runs no istiod: the named primary's istiod controls it.
    Remote { primary: String },
}

/// How an east-west gateway's Service is exposed (`clusters[].eastWestGateway`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayExposure {
    /// `LoadBalancer` (the default) or `NodePort`.
    pub service_type: ServiceType,
    /// The address peers reach the gateway at, for clusters without load balancers (then it
    /// is also the Service's external IP); else the load balancer's address is waited for.
    pub address: Option<String>,
}

/// The Service type of an east-west gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    LoadBalancer,
    NodePort,
}

impl ServiceType {
    pub fn name(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
        }
    }
}

/// The shared root of trust.
#[derive(Debug, Clone, PartialEq)]
pub struct Trust {
    pub mode: TrustMode,
    pub dir: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMesh {
    #[serde(rename = "meshID")]
    mesh_id: Option<String>,
    dataplane: Option<String>,
    gateway_api_crds: Option<String>,
    network: Option<String>,
    namespace: Option<String>,
    istio: Option<RawIstio>,
    values: Option<Value>,
    clusters: Option<Vec<RawCluster>>,
    trust: Option<RawTrust>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIstio {
    version: Option<String>,
    charts: Option<String>,
    revision: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCluster {
    name: Option<String>,
    dataplane: Option<String>,
    context: Option<String>,
    api_server: Option<String>,
    network: Option<String>,
    values: Option<Value>,
    role: Option<String>,
    primary: Option<String>,
    east_west_gateway: Option<RawGateway>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGateway {
    service: Option<RawService>,
    address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTrust {
    mode: Option<String>,
    dir: Option<String>,
}

/// Collects problems so that one run reports all of them.
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }
}

/// Reads the mesh file and applies the flags. Precedence, decided here and nowhere else:
/// a flag beats the mesh file, which beats meshup's default. Without `-f`, `./mesh.yaml` is
/// read when it exists. With `kubeconfig`, every context must exist in it and each cluster's
/// server is resolved; `render` and `plan` pass `None` and contact nothing.
pub fn load(args: &MeshArgs, kubeconfig: Option<&Kubeconfig>) -> Result<Mesh, InputError> {
    let default_file = Path::new("mesh.yaml");
    let file = match &args.file {
        Some(path) => Some(path.clone()),
        None if default_file.exists() => Some(default_file.to_path_buf()),
        None => None,
    };
    let (source, raw, base_dir) = match &file {
        Some(path) => {
            let source = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| {
                InputError::new(
                    &source,
                    format!("cannot read the mesh file: {e}; pass an existing file with -f"),
                )
            })?;
            let raw = parse(&text).map_err(|problem| InputError::new(&source, problem))?;
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (source, raw, dir)
        }
        None if args.mesh_id.is_some() || !args.clusters.is_empty() => {
            ("flags".to_string(), RawMesh::default(), PathBuf::new())
        }
        None => {
            return Err(InputError::new(
                "meshup",
                "no mesh file: pass -f mesh.yaml (or set MESHUP_FILE), or give --mesh-id and --cluster NAME=CONTEXT",
            ));
        }
    };
    validate(source, raw, &base_dir, args, kubeconfig)
}

/// Parses mesh file text; errors carry serde's field path and line/column.
fn parse(text: &str) -> Result<RawMesh, String> {
    if text.trim().is_empty() {
        return Ok(RawMesh::default());
    }
    serde_yaml::from_str::<RawMesh>(text).map_err(|e| match e.location() {
        Some(at) if !e.to_string().contains("line ") => {
            format!("{e} (line {}, column {})", at.line(), at.column())
        }
        _ => e.to_string(),
    })
}

fn validate(
    source: String,
    raw: RawMesh,
    base_dir: &Path,
    args: &MeshArgs,
    kubeconfig: Option<&Kubeconfig>,
) -> Result<Mesh, InputError> {
    let mut problems = Problems(Vec::new());
    let istio = raw.istio.unwrap_or_default();

    let mesh_id = args.mesh_id.clone().or(raw.mesh_id).unwrap_or_default();
    if mesh_id.is_empty() {
        problems.add("`meshID` is required (or pass --mesh-id)");
    } else if !is_label_value(&mesh_id) {
        problems.add(format!(
            "`meshID`: `{mesh_id}` must be letters, digits, `-`, `_` or `.` (at most 63)"
        ));
    }

    let network = args.network.clone().or(raw.network);
    if let Some(net) = &network {
        check_label_value(&mut problems, "network", net);
    }

    let namespace = raw
        .namespace
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    if !is_dns_label(&namespace) {
        problems.add(format!(
            "`namespace`: `{namespace}` is not a DNS-1123 label (lowercase letters, digits, `-`)"
        ));
    }

    let revision = istio.revision.filter(|r| !r.is_empty());
    if let Some(rev) = &revision
        && !is_dns_label(rev)
    {
        problems.add(format!(
            "`istio.revision`: `{rev}` is not a DNS-1123 label (lowercase letters, digits, `-`)"
        ));
    }

    let version = args
        .istio_version
        .clone()
        .or(istio.version)
        .filter(|v| !v.is_empty());
    if let Some(v) = &version
        && v.chars().any(char::is_whitespace)
    {
        problems.add(format!("`istio.version`: `{v}` contains white space"));
    }

    let values = mapping_or_problem(&mut problems, "values", raw.values);
    check_reserved_values(&mut problems, "values", &values);

    let dataplane = dataplane(&mut problems, args, raw.dataplane);
    let gateway_api_crds = gateway_api_crds(&mut problems, raw.gateway_api_crds, base_dir);

    let raw_clusters = raw_clusters(args, raw.clusters);
    if raw_clusters.is_empty() {
        problems
            .add("`clusters` is empty; list at least one cluster (or pass --cluster NAME=CONTEXT)");
    }
    let mut clusters = Vec::new();
    // Each cluster's field in the input (`clusters[1]`, `--cluster a=b`), for later problems.
    let mut fields = Vec::new();
    let mut taken = Taken::default();
    let shared = Shared {
        dataplane,
        network: network.as_ref(),
        kubeconfig,
    };
    for (field, raw) in raw_clusters {
        clusters.push(cluster(&mut problems, &field, raw, &shared, &mut taken));
        fields.push(field);
    }
    check_topology(&mut problems, &fields, &clusters);
    if dataplane == Dataplane::Ambient {
        check_ambient(
            &mut problems,
            &clusters,
            version.as_deref(),
            args.allow_untested,
        );
    }
    let charts = charts(
        &mut problems,
        (args.charts.as_ref(), istio.charts),
        base_dir,
        version.as_deref(),
        &charts_needed(&clusters, dataplane),
    );
    let trust = trust(&mut problems, raw.trust.unwrap_or_default(), base_dir);

    if !problems.0.is_empty() {
        return Err(InputError {
            source,
            problems: problems.0,
        });
    }
    Ok(Mesh {
        source,
        mesh_id,
        namespace,
        version,
        charts: charts.expect("no problems means the charts resolved"),
        revision,
        values,
        clusters,
        trust,
        dataplane,
        gateway_api_crds,
    })
}

/// `dataplane` (or `--dataplane`): sidecar unless ambient is asked for.
fn dataplane(problems: &mut Problems, args: &MeshArgs, raw: Option<String>) -> Dataplane {
    let field = if args.dataplane.is_some() {
        "--dataplane"
    } else {
        "dataplane"
    };
    match args.dataplane.clone().or(raw).as_deref() {
        None | Some("sidecar") => Dataplane::Sidecar,
        Some("ambient") => Dataplane::Ambient,
        Some(other) => {
            problems.add(format!(
                "`{field}`: `{other}` is not one of sidecar, ambient"
            ));
            Dataplane::Sidecar
        }
    }
}

/// `gatewayApiCrds`: a URL as written, or a file relative to the mesh file, which must exist.
fn gateway_api_crds(
    problems: &mut Problems,
    raw: Option<String>,
    base_dir: &Path,
) -> Option<String> {
    let gateway_api_crds = raw.filter(|c| !c.is_empty()).map(|c| {
        if c.starts_with("https://") || c.starts_with("http://") {
            c
        } else {
            base_dir.join(c).display().to_string()
        }
    });
    if let Some(crds) = &gateway_api_crds
        && !crds.contains("://")
        && !Path::new(crds).is_file()
    {
        problems.add(format!(
            "`gatewayApiCrds`: `{crds}` is not a file; give the path of the Gateway API CRDs (standard-install.yaml) or an https:// URL"
        ));
    }
    gateway_api_crds
}

/// The clusters as written, each with the field a problem names: the mesh file's list, or
/// the `--cluster NAME=CONTEXT` flags, which replace it.
fn raw_clusters(args: &MeshArgs, listed: Option<Vec<RawCluster>>) -> Vec<(String, RawCluster)> {
    if args.clusters.is_empty() {
        listed
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, c)| (format!("clusters[{i}]"), c))
            .collect()
    } else {
        args.clusters
            .iter()
            .map(|flag| {
                let field = format!("--cluster {flag}");
                let (name, context) = flag.split_once('=').unwrap_or((flag, ""));
                let cluster = RawCluster {
                    name: Some(name.to_string()),
                    context: Some(context.to_string()),
                    ..RawCluster::default()
                };
                (field, cluster)
            })
            .collect()
    }
}

/// What every cluster's entry is checked against.
struct Shared<'a> {
    dataplane: Dataplane,
    /// The mesh's network, which a cluster's own `network` overrides.
    network: Option<&'a String>,
    kubeconfig: Option<&'a Kubeconfig>,
}

/// Names and contexts the clusters before took: each must be unique.
#[derive(Default)]
struct Taken {
    names: BTreeSet<String>,
    contexts: BTreeSet<String>,
}

/// One cluster's entry, checked; every problem names `field`.
fn cluster(
    problems: &mut Problems,
    field: &str,
    raw: RawCluster,
    shared: &Shared<'_>,
    taken: &mut Taken,
) -> Cluster {
    let dataplane = shared.dataplane;
    if let Some(own) = &raw.dataplane
        && own != dataplane.name()
    {
        problems.add(format!(
            "`{field}.dataplane`: `{own}` differs from the mesh's `{}`: Istio's ambient multicluster pages (1.29) cover meshes whose clusters all run ambient, not a mix of sidecar and ambient clusters; set `dataplane` once, for the whole mesh",
            dataplane.name()
        ));
    }
    let name = raw.name.unwrap_or_default();
    if name.is_empty() {
        problems.add(format!("`{field}.name` is required"));
    } else if !is_dns_label(&name) {
        problems.add(format!(
            "`{field}.name`: `{name}` is not a DNS-1123 label (lowercase letters, digits and `-`, at most 63, starting and ending alphanumeric)"
        ));
    } else if !taken.names.insert(name.clone()) {
        problems.add(format!(
            "`{field}.name`: `{name}` is used by another cluster; names must be unique"
        ));
    }
    let context = raw.context.unwrap_or_default();
    let mut context_server = String::new();
    if context.is_empty() {
        problems.add(format!(
            "`{field}.context` is required (NAME=CONTEXT for --cluster)"
        ));
    } else if !taken.contexts.insert(context.clone()) {
        problems.add(format!(
            "`{field}.context`: `{context}` is used by another cluster; each cluster needs its own context"
        ));
    } else if let Some(kubeconfig) = shared.kubeconfig {
        match kubeconfig.servers.get(&context) {
            Some(server) => context_server = server.clone(),
            None => problems.add(format!(
                "`{field}.context`: `{context}` is not in the kubeconfig ({}; known: {}); fix the context name or pass --kubeconfig",
                kubeconfig.describe(),
                known_list(kubeconfig.servers.keys()),
            )),
        }
    }
    if let Some(server) = &raw.api_server
        && !(server.starts_with("https://") || server.starts_with("http://"))
    {
        problems.add(format!(
            "`{field}.apiServer`: `{server}` must be a URL such as https://172.18.0.2:6443"
        ));
    }
    let cluster_network = raw.network.or_else(|| shared.network.cloned());
    if let Some(net) = &cluster_network {
        check_label_value(problems, &format!("{field}.network"), net);
    }
    let cluster_values = mapping_or_problem(problems, &format!("{field}.values"), raw.values);
    check_reserved_values(problems, &format!("{field}.values"), &cluster_values);
    let role = role(problems, field, raw.role.as_deref(), raw.primary);
    let gateway = gateway_exposure(problems, field, raw.east_west_gateway);
    Cluster {
        name,
        context,
        server_overridden: raw.api_server.is_some(),
        server: raw.api_server.unwrap_or(context_server),
        network: cluster_network,
        values: cluster_values,
        role,
        gateway,
    }
}

/// A cluster's `role` and `primary`: a remote names its primary, and only a remote does.
fn role(problems: &mut Problems, field: &str, role: Option<&str>, primary: Option<String>) -> Role {
    match (role, primary) {
        (None | Some("primary"), None) => Role::Primary,
        (None | Some("primary"), Some(primary)) => {
            problems.add(format!(
                "`{field}.primary`: `{primary}` is set, but only a remote names its primary; add `role: remote` or remove it"
            ));
            Role::Primary
        }
        (Some("remote"), Some(primary)) => Role::Remote { primary },
        (Some("remote"), None) => {
            problems.add(format!(
                "`{field}.primary` is required for `role: remote`: name the primary cluster whose istiod controls this one"
            ));
            Role::Primary
        }
        (Some(other), _) => {
            problems.add(format!(
                "`{field}.role`: `{other}` is not one of primary, remote"
            ));
            Role::Primary
        }
    }
}

/// `istio.charts` (or `--charts`): where every chart the mesh needs comes from. A path in the
/// mesh file is relative to it; one given as a flag, to the working directory.
fn charts(
    problems: &mut Problems,
    (flag, file): (Option<&String>, Option<String>),
    base_dir: &Path,
    version: Option<&str>,
    needed: &[&str],
) -> Option<Charts> {
    let (charts_text, charts_dir) = match (flag, file) {
        (Some(flag), _) => (flag.clone(), PathBuf::new()),
        (None, Some(file)) => (file, base_dir.to_path_buf()),
        (None, None) => (DEFAULT_CHARTS.to_string(), PathBuf::new()),
    };
    match chart::resolve(&charts_text, &charts_dir, version, needed) {
        Ok(charts) => Some(charts),
        Err(problem) => {
            problems.add(format!("`istio.charts`: {problem}"));
            None
        }
    }
}

/// `trust`: where the `cacerts` material comes from, and the directory it lives in.
fn trust(problems: &mut Problems, raw: RawTrust, base_dir: &Path) -> Trust {
    let mode = match raw.mode.as_deref() {
        None | Some("generate") => TrustMode::Generate,
        Some("provided") => TrustMode::Provided,
        Some("none") => TrustMode::None,
        Some(other) => {
            problems.add(format!(
                "`trust.mode`: `{other}` is not one of generate, provided, none"
            ));
            TrustMode::None
        }
    };
    let trust_dir = raw
        .dir
        .filter(|d| !d.is_empty())
        .map(|d| base_dir.join(d))
        .unwrap_or_else(|| base_dir.join(DEFAULT_TRUST_DIR));
    Trust {
        mode,
        dir: trust_dir,
    }
}

/// What upstream supports of ambient across clusters: multi-network multi-primary, Beta from
/// Istio 1.29 (istio.io "Install ambient multicluster"; blog "ambient multi-network
/// multicluster beta"). One network is untested upstream; primary-remote is not supported.
fn check_ambient(
    problems: &mut Problems,
    clusters: &[Cluster],
    version: Option<&str>,
    allow_untested: bool,
) {
    if let Some(remote) = clusters
        .iter()
        .find(|c| matches!(c.role, Role::Remote { .. }))
    {
        problems.add(format!(
            "`dataplane: ambient` with remote cluster `{}`: Istio does not support ambient primary-remote (istio.io ambient multicluster install page; istio/istio#60343); make every cluster a primary",
            remote.name
        ));
    }
    let networks: BTreeSet<Option<&str>> = clusters.iter().map(|c| c.network.as_deref()).collect();
    if networks.len() < 2 && clusters.len() > 1 && !allow_untested {
        problems.add(
            "`dataplane: ambient` on one network: Istio supports ambient multicluster across networks (multi-network multi-primary, Beta from 1.29); one network is untested upstream. Give each cluster its own `network`, or pass --allow-untested",
        );
    }
    if let Some(v) = version
        && let Some(parsed) = crate::model::version::IstioVersion::parse(v)
        && parsed.major == 1
        && parsed.minor < 29
        && !allow_untested
    {
        problems.add(format!(
            "`dataplane: ambient` with Istio {v}: ambient multi-network multicluster is Beta from 1.29 (alpha before, without `AMBIENT_ENABLE_MULTI_NETWORK` in earlier charts); use 1.29 or later, or pass --allow-untested"
        ));
    }
}

impl Mesh {
    /// The istiod Deployment's name (`istiod`, or `istiod-REV`).
    pub fn istiod_deployment(&self) -> String {
        match &self.revision {
            Some(rev) => format!("istiod-{rev}"),
            None => "istiod".to_string(),
        }
    }

    /// The ConfigMap holding the mesh config (`istio`, or `istio-REV`).
    pub fn mesh_configmap(&self) -> String {
        match &self.revision {
            Some(rev) => format!("istio-{rev}"),
            None => "istio".to_string(),
        }
    }

    /// The istiod Helm release's name (`istiod`, or `istiod-REV`).
    pub fn istiod_release(&self) -> String {
        self.istiod_deployment()
    }

    /// Chart `name` from the mesh's chart source at `istio.version`.
    pub fn chart(&self, name: &str) -> chart::Chart {
        self.charts.chart(name, self.version.as_deref())
    }

    /// The charts this mesh installs.
    pub fn charts_needed(&self) -> Vec<&'static str> {
        charts_needed(&self.clusters, self.dataplane)
    }

    pub fn ambient(&self) -> bool {
        self.dataplane == Dataplane::Ambient
    }

    /// Whether the clusters sit on more than one network (east-west gateways needed).
    pub fn multi_network(&self) -> bool {
        let networks: BTreeSet<Option<&str>> =
            self.clusters.iter().map(|c| c.network.as_deref()).collect();
        networks.len() > 1
    }

    /// The remote clusters `primary` controls.
    pub fn remotes_of<'a>(&'a self, primary: &'a str) -> impl Iterator<Item = &'a Cluster> + 'a {
        self.clusters
            .iter()
            .filter(move |c| matches!(&c.role, Role::Remote { primary: p } if p == primary))
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

fn gateway_exposure(
    problems: &mut Problems,
    field: &str,
    raw: Option<RawGateway>,
) -> GatewayExposure {
    let raw = raw.unwrap_or_default();
    let service_type = match raw.service.and_then(|s| s.kind).as_deref() {
        None | Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("NodePort") => ServiceType::NodePort,
        Some(other) => {
            problems.add(format!(
                "`{field}.eastWestGateway.service.type`: `{other}` is not one of LoadBalancer, NodePort"
            ));
            ServiceType::LoadBalancer
        }
    };
    if let Some(address) = &raw.address
        && address.parse::<std::net::IpAddr>().is_err()
    {
        problems.add(format!(
            "`{field}.eastWestGateway.address`: `{address}` is not an IP address; give the address peers reach the gateway at (it becomes the Service's external IP)"
        ));
    }
    GatewayExposure {
        service_type,
        address: raw.address,
    }
}

/// Roles and gateways across clusters: a remote's primary is another primary of this mesh,
/// and a gateway without a load balancer has an address.
fn check_topology(problems: &mut Problems, fields: &[String], clusters: &[Cluster]) {
    let networks: BTreeSet<Option<&str>> = clusters.iter().map(|c| c.network.as_deref()).collect();
    for (field, cluster) in fields.iter().zip(clusters) {
        if let Role::Remote { primary } = &cluster.role {
            match clusters.iter().find(|c| c.name == *primary) {
                None => problems.add(format!(
                    "`{field}.primary`: `{primary}` is not a cluster of this mesh (known: {})",
                    known_list(clusters.iter().map(|c| &c.name))
                )),
                Some(p) if p.name == cluster.name => problems.add(format!(
                    "`{field}.primary`: a cluster cannot be its own primary"
                )),
                Some(p) if p.role != Role::Primary => problems.add(format!(
                    "`{field}.primary`: `{primary}` is a remote cluster itself; a remote's primary must run istiod (`role: primary`)"
                )),
                Some(_) => {}
            }
        }
        let serves_remotes = clusters.iter().any(|c| {
            c.role
                == (Role::Remote {
                    primary: cluster.name.clone(),
                })
        });
        let gets_gateway = networks.len() > 1 || serves_remotes;
        if gets_gateway
            && cluster.gateway.service_type == ServiceType::NodePort
            && cluster.gateway.address.is_none()
        {
            problems.add(format!(
                "`{field}.eastWestGateway.address` is required with `service: {{type: NodePort}}`: a NodePort Service has no external address, so give the address peers reach the gateway at"
            ));
        }
    }
}

fn mapping_or_problem(problems: &mut Problems, field: &str, value: Option<Value>) -> Mapping {
    match value {
        None | Some(Value::Null) => Mapping::new(),
        Some(Value::Mapping(map)) => map,
        Some(other) => {
            problems.add(format!(
                "`{field}` must be a mapping of Helm values, not `{}`",
                serde_yaml::to_string(&other).unwrap_or_default().trim()
            ));
            Mapping::new()
        }
    }
}

/// Values that meshup sets from the mesh's own fields. Setting them through `values` is the
/// classic one-cluster typo, so it is refused and the right field is named.
const RESERVED: &[(&[&str], &str)] = &[
    (&["global", "meshID"], "meshID"),
    (
        &["global", "multiCluster", "clusterName"],
        "clusters[].name",
    ),
    (&["global", "network"], "network (or clusters[].network)"),
    (&["global", "istioNamespace"], "namespace"),
    (&["revision"], "istio.revision"),
    (&["profile"], "clusters[].role"),
    (&["global", "remotePilotAddress"], "clusters[].primary"),
    (&["global", "externalIstiod"], "clusters[].role"),
    (&["istiodRemote"], "clusters[].role"),
];

fn check_reserved_values(problems: &mut Problems, field: &str, values: &Mapping) {
    for (path, instead) in RESERVED {
        let mut node = Some(values);
        for (i, key) in path.iter().enumerate() {
            let Some(map) = node else { break };
            match map.get(*key) {
                Some(Value::Mapping(inner)) if i + 1 < path.len() => node = Some(inner),
                Some(value) if i + 1 == path.len() => {
                    problems.add(format!(
                        "`{field}.{}` is set to `{}`; meshup sets it for every cluster from `{instead}`, so remove it there",
                        path.join("."),
                        serde_yaml::to_string(value).unwrap_or_default().trim()
                    ));
                    node = None;
                }
                _ => node = None,
            }
        }
    }
}

fn check_label_value(problems: &mut Problems, field: &str, value: &str) {
    if !is_label_value(value) {
        problems.add(format!(
            "`{field}`: `{value}` must be letters, digits, `-`, `_` or `.` (at most 63), as a Kubernetes label value"
        ));
    }
}

/// A DNS-1123 label: 1–63 lowercase alphanumerics or `-`, starting and ending alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A Kubernetes label value (non-empty here).
fn is_label_value(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

fn known_list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(contexts: &[(&str, &str)]) -> Kubeconfig {
        Kubeconfig {
            files: vec![PathBuf::from("/home/op/.kube/config")],
            servers: contexts
                .iter()
                .map(|(c, s)| (c.to_string(), s.to_string()))
                .collect(),
        }
    }

    fn two_contexts() -> Kubeconfig {
        kubeconfig(&[
            ("kind-cluster1", "https://127.0.0.1:6443"),
            ("kind-cluster2", "https://127.0.0.1:7443"),
        ])
    }

    const GOOD: &str = r#"
meshID: mesh1
network: network1
istio:
  version: 1.28.1
clusters:
  - name: cluster1
    context: kind-cluster1
    apiServer: https://172.18.0.2:6443
  - name: cluster2
    context: kind-cluster2
    network: network2
    values:
      pilot:
        resources: {requests: {cpu: 100m}}
"#;

    fn check(text: &str, args: &MeshArgs) -> Result<Mesh, InputError> {
        let raw = parse(text).map_err(|p| InputError::new("mesh.yaml", p))?;
        validate(
            "mesh.yaml".into(),
            raw,
            Path::new(""),
            args,
            Some(&two_contexts()),
        )
    }

    fn problems(text: &str) -> String {
        check(text, &MeshArgs::default()).unwrap_err().to_string()
    }

    #[test]
    fn a_good_file_validates_with_defaults_filled_in() {
        let mesh = check(GOOD, &MeshArgs::default()).unwrap();
        assert_eq!(mesh.mesh_id, "mesh1");
        assert_eq!(mesh.namespace, "istio-system");
        assert_eq!(mesh.charts, Charts::Repo(DEFAULT_CHARTS.to_string()));
        assert_eq!(mesh.version.as_deref(), Some("1.28.1"));
        assert_eq!(mesh.trust.mode, TrustMode::Generate);
        assert_eq!(mesh.trust.dir, PathBuf::from("meshup-certs"));
        let c1 = &mesh.clusters[0];
        assert_eq!(
            (c1.server.as_str(), c1.server_overridden),
            ("https://172.18.0.2:6443", true)
        );
        assert_eq!(c1.network.as_deref(), Some("network1"));
        let c2 = &mesh.clusters[1];
        assert_eq!(
            (c2.server.as_str(), c2.server_overridden),
            ("https://127.0.0.1:7443", false)
        );
        assert_eq!(c2.network.as_deref(), Some("network2"));
        assert!(c2.values.contains_key("pilot"));
    }

    #[test]
    fn ambient_shapes_upstream_does_not_support_are_refused_with_the_reason() {
        let two_networks = "meshID: m\ndataplane: ambient\nistio: {version: 1.29.0}\nclusters:\n  - {name: a, context: kind-cluster1, network: n1}\n  - {name: b, context: kind-cluster2, network: n2}\n";
        let mesh = check(two_networks, &MeshArgs::default()).unwrap();
        assert_eq!(mesh.dataplane, Dataplane::Ambient);
        let one_network = two_networks.replace("network: n2", "network: n1");
        let err = problems(&one_network);
        assert!(
            err.contains("ambient` on one network") && err.contains("--allow-untested"),
            "{err}"
        );
        let allowed = MeshArgs {
            allow_untested: true,
            ..MeshArgs::default()
        };
        assert!(check(&one_network, &allowed).is_ok());
        let remote = two_networks.replace("network: n2}", "network: n2, role: remote, primary: a}");
        assert!(
            problems(&remote).contains("ambient primary-remote"),
            "{}",
            problems(&remote)
        );
        let mixed = two_networks.replace("network: n2}", "network: n2, dataplane: sidecar}");
        let err = problems(&mixed);
        assert!(
            err.contains("`clusters[1].dataplane`: `sidecar` differs"),
            "{err}"
        );
        let old = two_networks.replace("1.29.0", "1.28.1");
        assert!(
            problems(&old).contains("Beta from 1.29"),
            "{}",
            problems(&old)
        );
        let typo = two_networks.replace("dataplane: ambient", "dataplane: ambiant");
        assert!(problems(&typo).contains("`dataplane`: `ambiant` is not one of sidecar, ambient"));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_place() {
        let err = problems("meshID: m\nclusters:\n  - name: a\n    contxt: kind-cluster1\n");
        assert!(err.contains("unknown field `contxt`"), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.starts_with("mesh.yaml: "), "{err}");
    }

    #[test]
    fn malformed_yaml_reports_line_and_column() {
        let err = problems("meshID: m\nclusters: [\n");
        assert!(err.contains("line"), "{err}");
        assert!(err.contains("column"), "{err}");
    }

    #[test]
    fn missing_mesh_id_is_reported() {
        let err = problems("clusters:\n  - {name: a, context: kind-cluster1}\n");
        assert!(err.contains("`meshID` is required"), "{err}");
    }

    #[test]
    fn an_empty_cluster_list_is_reported() {
        let err = problems("meshID: m\nclusters: []\n");
        assert!(err.contains("`clusters` is empty"), "{err}");
    }

    #[test]
    fn duplicate_cluster_names_are_reported() {
        let err = problems(
            "meshID: m\nclusters:\n  - {name: a, context: kind-cluster1}\n  - {name: a, context: kind-cluster2}\n",
        );
        assert!(
            err.contains("`clusters[1].name`: `a` is used by another cluster"),
            "{err}"
        );
    }

    #[test]
    fn non_dns_names_are_reported_with_their_value() {
        let err = problems("meshID: m\nclusters:\n  - {name: Cluster_1, context: kind-cluster1}\n");
        assert!(
            err.contains("`clusters[0].name`: `Cluster_1` is not a DNS-1123 label"),
            "{err}"
        );
    }

    #[test]
    fn unknown_contexts_name_the_known_ones() {
        let err = problems("meshID: m\nclusters:\n  - {name: east, context: kind-east}\n");
        assert!(
            err.contains("`clusters[0].context`: `kind-east` is not in the kubeconfig"),
            "{err}"
        );
        assert!(err.contains("known: kind-cluster1, kind-cluster2"), "{err}");
    }

    #[test]
    fn one_context_for_two_clusters_is_reported() {
        let err = problems(
            "meshID: m\nclusters:\n  - {name: a, context: kind-cluster1}\n  - {name: b, context: kind-cluster1}\n",
        );
        assert!(
            err.contains("`clusters[1].context`: `kind-cluster1` is used by another cluster"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = problems("clusters:\n  - {name: A, context: nope}\n");
        assert!(err.contains("has 3 problems"), "{err}");
    }

    #[test]
    fn reserved_values_point_at_the_right_field() {
        let err = problems(
            "meshID: m\nclusters:\n  - name: a\n    context: kind-cluster1\n    values: {global: {meshID: typo}}\n",
        );
        assert!(
            err.contains("`clusters[0].values.global.meshID` is set to `typo`; meshup sets it for every cluster from `meshID`"),
            "{err}"
        );
    }

    #[test]
    fn values_must_be_a_mapping() {
        let err =
            problems("meshID: m\nvalues: [1]\nclusters:\n  - {name: a, context: kind-cluster1}\n");
        assert!(err.contains("`values` must be a mapping"), "{err}");
    }

    #[test]
    fn bad_trust_mode_and_api_server_are_reported() {
        let err = problems(
            "meshID: m\ntrust: {mode: gen}\nclusters:\n  - {name: a, context: kind-cluster1, apiServer: 172.18.0.2:6443}\n",
        );
        assert!(err.contains("`trust.mode`: `gen` is not one of"), "{err}");
        assert!(
            err.contains("`clusters[0].apiServer`: `172.18.0.2:6443` must be a URL"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let args = MeshArgs {
            mesh_id: Some("from-flag".into()),
            clusters: vec!["only=kind-cluster2".into()],
            istio_version: Some("1.27.0".into()),
            charts: Some("oci://gcr.io/istio-release/charts".into()),
            ..MeshArgs::default()
        };
        let mesh = check(GOOD, &args).unwrap();
        assert_eq!(mesh.mesh_id, "from-flag");
        assert_eq!(mesh.version.as_deref(), Some("1.27.0"));
        assert_eq!(
            mesh.charts,
            Charts::Oci("oci://gcr.io/istio-release/charts".into())
        );
        assert_eq!(mesh.clusters.len(), 1);
        assert_eq!(mesh.clusters[0].name, "only");
        assert_eq!(mesh.clusters[0].context, "kind-cluster2");
    }

    #[test]
    fn cluster_flags_without_a_context_are_reported() {
        let args = MeshArgs {
            mesh_id: Some("m".into()),
            clusters: vec!["east".into()],
            ..MeshArgs::default()
        };
        let err = check("", &args).unwrap_err().to_string();
        assert!(
            err.contains("`--cluster east.context` is required"),
            "{err}"
        );
    }

    #[test]
    fn without_a_kubeconfig_contexts_are_not_checked() {
        let raw = parse("meshID: m\nclusters:\n  - {name: a, context: anything}\n").unwrap();
        let mesh = validate(
            "m.yaml".into(),
            raw,
            Path::new(""),
            &MeshArgs::default(),
            None,
        )
        .unwrap();
        assert_eq!(mesh.clusters[0].server, "");
    }

    #[test]
    fn a_remote_needs_a_primary_that_runs_istiod() {
        let err = problems(
            "meshID: m\nclusters:\n  - {name: a, context: kind-cluster1, role: remote}\n  - {name: b, context: kind-cluster2, role: remote, primary: a}\n",
        );
        assert!(
            err.contains("`clusters[0].primary` is required for `role: remote`"),
            "{err}"
        );
        let err = problems(
            "meshID: m\nclusters:\n  - {name: a, context: kind-cluster1}\n  - {name: b, context: kind-cluster2, role: remote, primary: nowhere}\n",
        );
        assert!(
            err.contains("`clusters[1].primary`: `nowhere` is not a cluster of this mesh"),
            "{err}"
        );
        let err = problems(
            "meshID: m\nclusters:\n  - {name: a, context: kind-cluster1, role: remote, primary: b}\n  - {name: b, context: kind-cluster2, role: remote, primary: a}\n",
        );
        assert!(err.contains("`b` is a remote cluster itself"), "{err}");
        let err = problems(
            "meshID: m\nclusters:\n  - {name: a, context: kind-cluster1, primary: b}\n  - {name: b, context: kind-cluster2, role: secondary}\n",
        );
        assert!(err.contains("only a remote names its primary"), "{err}");
        assert!(
            err.contains("`clusters[1].role`: `secondary` is not one of primary, remote"),
            "{err}"
        );
    }

    #[test]
    fn a_node_port_gateway_needs_an_address_and_an_address_is_an_ip() {
        let err = problems(
            "meshID: m\nclusters:\n  - {name: a, context: kind-cluster1, network: n1, eastWestGateway: {service: {type: NodePort}}}\n  - {name: b, context: kind-cluster2, network: n2, eastWestGateway: {address: gw.example.test}}\n",
        );
        assert!(
            err.contains(
                "`clusters[0].eastWestGateway.address` is required with `service: {type: NodePort}`"
            ),
            "{err}"
        );
        assert!(
            err.contains(
                "`clusters[1].eastWestGateway.address`: `gw.example.test` is not an IP address"
            ),
            "{err}"
        );
        // On one network without remotes there is no gateway, so nothing to expose.
        let mesh = check(
            "meshID: m\nclusters:\n  - {name: a, context: kind-cluster1, eastWestGateway: {service: {type: NodePort}}}\n",
            &MeshArgs::default(),
        )
        .unwrap();
        assert_eq!(mesh.charts_needed(), ["base", "istiod"]);
    }

    #[test]
    fn values_meshup_sets_for_roles_are_refused() {
        let err = problems(
            "meshID: m\nclusters:\n  - name: a\n    context: kind-cluster1\n    values: {profile: remote, global: {remotePilotAddress: 1.2.3.4}}\n",
        );
        assert!(err.contains("`clusters[0].values.profile`"), "{err}");
        assert!(
            err.contains("`clusters[0].values.global.remotePilotAddress`"),
            "{err}"
        );
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("cluster-1"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }

    mod fuzz {
        //! The loader takes whatever YAML it is given: it never panics, and every rejection is
        //! an `InputError` (exit 2) with at least one problem. Documents are generated from a
        //! seeded generator (the same cases on every run): known keys and junk keys, every kind
        //! of value, nested.
        use super::*;
        use serde_yaml::Value as Y;

        /// xorshift64*: small, seeded, good enough to pick cases.
        struct Rng(u64);

        impl Rng {
            fn next(&mut self) -> u64 {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
            }

            fn below(&mut self, n: usize) -> usize {
                (self.next() % n as u64) as usize
            }

            fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
                items[self.below(items.len())]
            }
        }

        const KEYS: &[&str] = &[
            "meshID",
            "network",
            "namespace",
            "istio",
            "values",
            "clusters",
            "trust",
            "version",
            "charts",
            "revision",
            "name",
            "context",
            "apiServer",
            "mode",
            "dir",
            "global",
            "meshId",
            "role",
            "primary",
            "eastWestGateway",
            "service",
            "type",
            "address",
            "profile",
            "junk",
            "",
        ];
        const STRINGS: &[&str] = &[
            "kind-cluster1",
            "kind-cluster2",
            "https://10.0.0.1:6443",
            "generate",
            "provided",
            "none",
            "oci://r/charts",
            "./charts",
            "1.28.1",
            "",
            "remote",
            "primary",
            "NodePort",
            "LoadBalancer",
            "10.0.0.9",
            "cluster1",
            "a",
            "Ä∂ƒ",
            "-x-",
            "0",
            "true",
            "null",
            "~",
            "{",
            "[]",
        ];

        fn value(rng: &mut Rng, depth: usize) -> Y {
            match rng.below(if depth > 3 { 6 } else { 9 }) {
                0 => Y::Null,
                1 => Y::Bool(rng.below(2) == 0),
                2 => Y::Number((rng.next() as i64).into()),
                3 => Y::Number((rng.next() as f64 / 7.0).into()),
                4 | 5 => Y::String(rng.pick(STRINGS).to_string()),
                6 => Y::Sequence((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
                _ => Y::Mapping(
                    (0..rng.below(6))
                        .map(|_| (Y::String(rng.pick(KEYS).to_string()), value(rng, depth + 1)))
                        .collect(),
                ),
            }
        }

        fn check_text(text: &str) {
            let result = parse(text)
                .map_err(|p| InputError::new("mesh.yaml", p))
                .and_then(|raw| {
                    validate(
                        "mesh.yaml".into(),
                        raw,
                        Path::new(""),
                        &MeshArgs::default(),
                        Some(&two_contexts()),
                    )
                });
            if let Err(error) = result {
                assert!(!error.problems.is_empty());
                assert_eq!(crate::error::Error::from(error).exit_code(), 2);
            }
        }

        #[test]
        fn generated_mesh_files_never_panic() {
            let mut rng = Rng(0x6d65_7368_7570);
            for _ in 0..2000 {
                // A mapping at the top most of the time: that is where the fields are.
                let doc = match value(&mut rng, 0) {
                    Y::Mapping(m) => Y::Mapping(m),
                    other => Y::Mapping(
                        [(Y::String(rng.pick(KEYS).into()), other)]
                            .into_iter()
                            .collect(),
                    ),
                };
                check_text(&serde_yaml::to_string(&doc).unwrap());
            }
        }

        #[test]
        fn arbitrary_text_never_panics() {
            let mut rng = Rng(0x7965_616d_6c21);
            let alphabet: Vec<char> = "ab:- \n\t{}[],'\"#&*!|>%@`é0123456789".chars().collect();
            for _ in 0..2000 {
                let text: String = (0..rng.below(80))
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect();
                check_text(&text);
            }
        }
    }
}
