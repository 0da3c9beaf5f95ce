//! `meshup doctor`: what breaks a multicluster mesh, found across all its clusters at once —
//! also in meshes meshup did not install. Read-only.
//!
//! Two ways in: the mesh file (the mesh as meshup knows it), or only kube contexts, from which
//! the mesh is discovered as the clusters hold it (istiod's `CLUSTER_ID` or a remote's
//! injector path, the system namespace's network label or the injector's `global.network`,
//! the mesh ID in istiod's mesh config): what Istio's charts render, so that a mesh made with
//! them reads as healthy. Either way the result is a `Mesh`, walked like `status` and
//! `verify` walk it: every cluster is read once (`View`), the cross-cluster checks below run
//! on the views, and istiod's own view (`verify::read_sync`) and the credentials
//! (`credentials::check`) are the ones `verify` uses. Every finding is the one `Finding` type
//! (level, cluster, what, why it breaks traffic with the Istio issue that shows users hit it,
//! the fix).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::checks::credentials;
use crate::checks::verify;
use crate::components::cacerts;
use crate::components::namespace::CONTROL_PLANE_ANNOTATION;
use crate::components::release::mesh_id_of;
use crate::engine::run::{Run, walk};
use crate::engine::topology::{Choices, Topology};
use crate::error::Error;
use crate::model::chart::{Charts, DEFAULT_CHARTS};
use crate::model::input::InputError;
use crate::model::kubeconfig::Kubeconfig;
use crate::model::mesh::{Cluster, GatewayExposure, Mesh, Role, Trust};
use crate::model::version::IstioVersion;
use crate::observe::finding::{Finding, Level};
use crate::observe::sync::{self, State};
use crate::tools::live::{ConfigMap, Deployment, HelmRelease, Live, Pod, Secret};
use crate::tools::remote_secret::{self, MULTICLUSTER_LABEL, is_loopback};
use crate::tools::runner::StepError;
use crate::trust::TrustMode;

/// What doctor found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// True when nothing was found.
    pub ok: bool,
    /// Where the mesh came from: the mesh file, or `discovered from contexts`.
    pub source: String,
    pub mesh_id: String,
    /// Each cluster as doctor knows it.
    pub clusters: Vec<Known>,
    pub findings: Vec<Finding>,
}

/// A cluster as doctor saw it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Known {
    pub name: String,
    pub context: String,
    /// istiod's `CLUSTER_ID` (none for a remote cluster or one without istiod).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// One istiod Deployment as doctor reads it.
#[derive(Debug, Clone, Default)]
struct Istiod {
    namespace: String,
    name: String,
    cluster_id: Option<String>,
    /// `global.network` in its injector's values (`istio-sidecar-injector[-REV]`, key
    /// `values`): the network the sidecars it injects claim. `None`: no such ConfigMap (not
    /// read, or omitted); `Some(None)`: the values set no network.
    injector_network: Option<Option<String>>,
    /// Its ambient controllers run (`PILOT_ENABLE_AMBIENT=true`, the ambient profile's).
    ambient: bool,
    version: Option<String>,
    /// Installed by helm (`meta.helm.sh/release-name`), else by another tool.
    helm_release: Option<String>,
}

/// A remote secret (or what looks like one) with only what may be shown.
#[derive(Debug, Clone)]
struct Held {
    namespace: String,
    name: String,
    /// The value of its `istio/multiCluster` label, if any.
    label: Option<String>,
    /// (data key, server in its kubeconfig).
    keys: Vec<(String, Option<String>)>,
}

/// Everything doctor reads of one cluster, once.
#[derive(Debug, Default)]
struct View {
    cluster: String,
    /// Why the cluster could not be read, if it could not.
    unreachable: Option<String>,
    istiods: Vec<Istiod>,
    secrets: Vec<Held>,
    namespace_labels: BTreeMap<String, String>,
    /// The system namespace's `topology.istio.io/controlPlaneClusters`: the clusters whose
    /// istiod leads this (remote) cluster.
    control_planes: Option<String>,
    /// `cacerts`: which keys it has, its root's fingerprint, when it was created.
    cacerts: Option<(BTreeSet<String>, Option<String>, String)>,
    /// When the oldest ready istiod pod started.
    istiod_started: Option<String>,
    /// The mesh config: (mesh ID, trust domain, DNS capture on).
    mesh_config: Option<(Option<String>, String, bool)>,
    /// (namespace, name) → (type, ports), in namespaces that take sidecars.
    services: BTreeMap<(String, String), Shape>,
    gateway_service: Option<Value>,
    cross_network_gateway: bool,
    /// Ambient: the Gateway API `Gateway` of class `istio-east-west` in the system namespace.
    east_west: Option<Value>,
    /// The system namespace's Services named `istiod*` (a remote's stands for its primary's
    /// istiod), by name.
    istiod_services: BTreeMap<String, Value>,
    /// The addresses of the system namespace's EndpointSlices, by the Service they belong to
    /// (`kubernetes.io/service-name`), for the `istiod*` Services.
    istiod_endpoints: BTreeMap<String, Vec<String>>,
    mutating: Vec<Value>,
    validating: Vec<Value>,
    service_names: BTreeSet<(String, String)>,
    reader_grants_configmaps: bool,
    /// The cluster id and network a remote's injector path names (`/inject/cluster/ID/net/NET`).
    injected: (Option<String>, Option<String>),
    has_reader_role: bool,
    releases: Vec<HelmRelease>,
    /// Ambient: ztunnel's `ISTIO_META_CLUSTER_ID` and `NETWORK`, when it runs here.
    ztunnel: Option<(String, Option<String>)>,
}

/// A Service's type and ports (`PORT/PROTOCOL`).
type Shape = (String, BTreeSet<String>);

const NETWORK_LABEL: &str = "topology.istio.io/network";
const CACERTS_KEYS: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
    "root-cert.pem",
];

/// The mesh as the clusters behind `contexts` hold it: one cluster per context, named by its
/// istiod's `CLUSTER_ID`, or for a remote by the cluster id its injector sends (the context
/// when it has none, or shares it with another).
pub fn discover(run: &Run, kubeconfig: &Kubeconfig, contexts: &[String]) -> Result<Mesh, Error> {
    let mut problems = Vec::new();
    for context in contexts {
        if !kubeconfig.servers.contains_key(context) {
            problems.push(format!(
                "`--context {context}`: no such context in {}",
                kubeconfig.describe()
            ));
        }
    }
    if !problems.is_empty() {
        return Err(InputError {
            source: "flags".into(),
            problems,
        }
        .into());
    }
    let provisional = placeholder(kubeconfig, contexts);
    let probe = Run {
        mesh: &provisional,
        ..run.clone()
    };
    let found = crate::engine::run::parallel(probe.jobs, &provisional.clusters, |c| {
        let (mut memo, board) = (
            crate::components::ClusterNotes::default(),
            crate::components::RunBoard::default(),
        );
        probe.in_cluster(c, &mut memo, &board, |cx| {
            let deployments: Vec<Deployment> = cx
                .live
                .list_everywhere("deployments", Some("app=istiod"))
                .unwrap_or_default();
            let istiod = deployments
                .iter()
                .filter(|d| d.metadata.labels.get("app").map(String::as_str) == Some("istiod"))
                .map(|d| istiod_of(&cx.live, d))
                .next();
            let namespace = cx
                .live
                .get::<crate::tools::live::Namespace>(
                    "namespace",
                    istiod
                        .as_ref()
                        .map_or("istio-system", |i| i.namespace.as_str()),
                    None,
                )
                .ok()
                .flatten()
                .unwrap_or_default();
            let primary = namespace
                .metadata
                .annotations
                .get(CONTROL_PLANE_ANNOTATION)
                .cloned();
            // A remote runs no istiod: its injector's path names it (and its network).
            let injected = match &istiod {
                Some(_) => (None, None),
                None => injected_identity(
                    &cx.live
                        .list::<Value>("mutatingwebhookconfigurations", None, None)
                        .unwrap_or_default(),
                ),
            };
            let network = namespace
                .metadata
                .labels
                .get(NETWORK_LABEL)
                .filter(|n| !n.is_empty())
                .cloned()
                .or_else(|| istiod.as_ref().and_then(|i| i.injector_network.clone()?))
                .or_else(|| injected.1.clone());
            let id = istiod
                .as_ref()
                .and_then(|i| i.cluster_id.clone())
                .or_else(|| injected.0.clone());
            let mesh_id = istiod.as_ref().and_then(|i| {
                let name = match i.name.strip_prefix("istiod-") {
                    Some(rev) => format!("istio-{rev}"),
                    None => "istio".into(),
                };
                cx.live
                    .get::<ConfigMap>("configmap", &name, Some(&i.namespace))
                    .ok()
                    .flatten()
                    .and_then(|cm| mesh_id_of(&cm))
            });
            Probe {
                istiod,
                id,
                primary,
                mesh_id,
                network,
            }
        })
    });
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for probe in &found {
        if let Some(id) = &probe.id {
            *ids.entry(id.clone()).or_default() += 1;
        }
    }
    let mut namespace = None;
    let mut mesh_id = None;
    let mut clusters = Vec::new();
    for (context, probe) in contexts.iter().zip(found) {
        let Probe {
            istiod,
            id,
            primary,
            mesh_id: found_mesh_id,
            network,
        } = probe;
        let name = id
            .filter(|id| ids.get(id) == Some(&1) && id != "Kubernetes")
            .unwrap_or_else(|| context.clone());
        if namespace.is_none() {
            namespace = istiod.as_ref().map(|i| i.namespace.clone());
        }
        if mesh_id.is_none() {
            mesh_id = found_mesh_id;
        }
        let role = match (&istiod, primary) {
            (None, Some(primary)) => Role::Remote { primary },
            _ => Role::Primary,
        };
        clusters.push(cluster(&name, context, kubeconfig, network, role));
    }
    // A remote names its primary by CLUSTER_ID; keep only primaries that are among these.
    let names: BTreeSet<String> = clusters.iter().map(|c| c.name.clone()).collect();
    for c in &mut clusters {
        if let Role::Remote { primary } = &c.role
            && !names.contains(primary)
        {
            c.role = Role::Primary;
        }
    }
    Ok(Mesh {
        source: format!("contexts {}", contexts.join(", ")),
        mesh_id: mesh_id.unwrap_or_else(|| "cluster.local".into()),
        namespace: namespace.unwrap_or_else(|| "istio-system".into()),
        clusters,
        ..provisional
    })
}

/// What discovery reads of one context.
struct Probe {
    istiod: Option<Istiod>,
    /// istiod's `CLUSTER_ID`, or the id a remote's injector sends.
    id: Option<String>,
    /// The primary a remote's namespace names (`topology.istio.io/controlPlaneClusters`).
    primary: Option<String>,
    mesh_id: Option<String>,
    /// The system namespace's network label, else istiod's injector values, else the
    /// remote's injector path.
    network: Option<String>,
}

/// A mesh of one primary per context, named after it: how the contexts are reached before
/// discovery knows more.
pub fn placeholder(kubeconfig: &Kubeconfig, contexts: &[String]) -> Mesh {
    Mesh {
        source: "contexts".into(),
        mesh_id: String::new(),
        namespace: "istio-system".into(),
        version: None,
        charts: Charts::Repo(DEFAULT_CHARTS.into()),
        revision: None,
        values: Default::default(),
        clusters: contexts
            .iter()
            .map(|c| cluster(c, c, kubeconfig, None, Role::Primary))
            .collect(),
        trust: Trust {
            mode: TrustMode::None,
            dir: ".".into(),
        },
        dataplane: Default::default(),
        gateway_api_crds: None,
    }
}

fn cluster(
    name: &str,
    context: &str,
    kubeconfig: &Kubeconfig,
    network: Option<String>,
    role: Role,
) -> Cluster {
    Cluster {
        name: name.to_string(),
        context: context.to_string(),
        server: kubeconfig.servers.get(context).cloned().unwrap_or_default(),
        server_overridden: false,
        network,
        values: Default::default(),
        role,
        gateway: GatewayExposure::default(),
    }
}

/// One istiod as its Deployment and its injector's values say. Istio's istiod chart puts
/// `global.network` in neither the Deployment nor its env: it renders it into the injector's
/// values, and the system namespace's `topology.istio.io/network` label is what istiod itself
/// reads for its cluster's network.
fn istiod_of(live: &Live, d: &Deployment) -> Istiod {
    let injector = live
        .get::<ConfigMap>(
            "configmap",
            &injector_config_name(&d.metadata.name),
            Some(&d.metadata.namespace),
        )
        .ok()
        .flatten();
    Istiod {
        namespace: d.metadata.namespace.clone(),
        name: d.metadata.name.clone(),
        cluster_id: d.env("CLUSTER_ID").map(str::to_string),
        injector_network: injector.map(|cm| {
            cm.data
                .get("values")
                .and_then(|values| network_in_values(values))
        }),
        ambient: d.env("PILOT_ENABLE_AMBIENT") == Some("true"),
        version: crate::observe::revisions::version_of(d, &[])
            .version
            .map(|v| v.to_string()),
        helm_release: d
            .metadata
            .annotations
            .get("meta.helm.sh/release-name")
            .cloned(),
    }
}

/// The injector ConfigMap of istiod Deployment `istiod[-REV]`: `istio-sidecar-injector[-REV]`
/// (istio-discovery templates/istiod-injector-configmap.yaml).
fn injector_config_name(istiod: &str) -> String {
    match istiod.strip_prefix("istiod-") {
        Some(rev) => format!("istio-sidecar-injector-{rev}"),
        None => "istio-sidecar-injector".into(),
    }
}

/// `global.network` of the injector's `values` (JSON), when set and not empty.
fn network_in_values(values: &str) -> Option<String> {
    let values: Value = serde_json::from_str(values).ok()?;
    values["global"]["network"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// Whether a reader ClusterRole, as rendered, lets istiod list and watch ConfigMaps: by
/// whichever rule grants it, not by the chart's version (Istio's 1.28 remote profile grants
/// them in its `istiodRemote` rule; 1.29 added them to the core rule for every profile).
fn grants_configmaps(role: &Value) -> bool {
    let rules: Vec<&Value> = role["rules"].as_array().into_iter().flatten().collect();
    let granted = |verb: &str| {
        rules.iter().any(|rule| {
            let listed = |field: &str, v: &str| {
                rule[field]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|x| x == v || x == "*"))
            };
            listed("apiGroups", "") && listed("resources", "configmaps") && listed("verbs", verb)
        })
    };
    granted("list") && granted("watch")
}

/// Where an injector webhook sends pods: a URL, or a Service (`clientConfig.service`, which
/// Istio's istiod chart renders, also for `profile: remote`, unless
/// `istiodRemote.injectionURL` is set).
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Url(String),
    Service {
        namespace: String,
        name: String,
        path: String,
    },
}

impl Target {
    fn of(webhook: &Value) -> Option<Target> {
        let config = &webhook["clientConfig"];
        if let Some(url) = config["url"].as_str() {
            return Some(Target::Url(url.to_string()));
        }
        let service = &config["service"];
        Some(Target::Service {
            namespace: service["namespace"].as_str()?.to_string(),
            name: service["name"].as_str()?.to_string(),
            path: service["path"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// The path it calls (`/inject/cluster/ID/net/NETWORK` on a remote).
    fn path(&self) -> &str {
        match self {
            Target::Url(url) => {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                rest.find('/').map_or("", |i| &rest[i..])
            }
            Target::Service { path, .. } => path,
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Url(url) => url.clone(),
            Target::Service {
                namespace, name, ..
            } => format!("service `{namespace}/{name}`"),
        }
    }
}

/// The cluster id and network a remote's injector path names (`/inject/cluster/ID/net/NET`,
/// as meshup and Istio's remote pages set `istiodRemote.injectionPath`).
fn identity_in_path(path: &str) -> (Option<String>, Option<String>) {
    let Some((_, rest)) = path.split_once("/inject/") else {
        return (None, None);
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let after = |key: &str| {
        parts
            .iter()
            .position(|p| *p == key)
            .and_then(|i| parts.get(i + 1))
            .filter(|v| !v.is_empty())
            .map(|v| v.to_string())
    };
    (after("cluster"), after("net"))
}

/// The injector webhooks of a cluster (`istio-sidecar-injector*`, `istio-revision-tag*`):
/// (configuration name, webhook).
fn injector_webhooks(mutating: &[Value]) -> impl Iterator<Item = (&str, &Value)> {
    mutating
        .iter()
        .filter_map(|hook| {
            let name = hook["metadata"]["name"].as_str()?;
            (name.starts_with("istio-sidecar-injector") || name.starts_with("istio-revision-tag"))
                .then_some((name, hook))
        })
        .flat_map(|(name, hook)| {
            hook["webhooks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |wh| (name, wh))
        })
}

/// The cluster id and network a remote's injector sends to its primary's istiod, from the
/// first injector webhook whose path names them.
fn injected_identity(mutating: &[Value]) -> (Option<String>, Option<String>) {
    let mut found = (None, None);
    for (_, wh) in injector_webhooks(mutating) {
        let Some(target) = Target::of(wh) else {
            continue;
        };
        let (id, net) = identity_in_path(target.path());
        found.0 = found.0.or(id);
        found.1 = found.1.or(net);
    }
    found
}

/// Reads every cluster once, runs every check, and says what it found.
pub fn examine(run: &Run) -> Report {
    let mesh = run.mesh;
    let topology = Topology::of(mesh, &Choices::default());
    // One walk reads each cluster's view and istiod's own view of its peers, sharing what
    // both need (istiod's pods).
    let (views, rows): (Vec<View>, Vec<Vec<sync::Row>>) = walk(run, &topology, |node, cx| {
        let view = read(&cx.live, &mesh.namespace, &mut cx.memo.istiod_pods);
        (view, verify::sync_of(run, &topology, node, cx))
    })
    .into_iter()
    .unzip();
    let rows: Vec<sync::Row> = rows.into_iter().flatten().collect();
    let mut findings = Vec::new();
    for view in views.iter().filter(|v| v.unreachable.is_some()) {
        findings.push(
            Finding::fail(
                Some(&view.cluster),
                "api server",
                format!(
                    "does not answer: {}",
                    sync::first_line(view.unreachable.as_deref().unwrap_or_default())
                ),
            )
            .fix("check the context and that the API server is up; nothing else was checked there"),
        );
    }
    let views: Vec<&View> = views.iter().filter(|v| v.unreachable.is_none()).collect();
    // The pairs istiod itself reports synced: whatever a secret looks like, it works there.
    // A cluster istiod watches that the mesh does not give it keeps no sync state in the
    // view (`unexpected`); it is counted here, so that a guess does not blame its address.
    let synced: BTreeSet<(String, String)> = rows
        .iter()
        .flat_map(|row| {
            row.peers
                .iter()
                .filter(|(_, cell)| cell.state == State::Synced)
                .chain(&row.unexpected)
                .map(|(peer, _)| (row.cluster.clone(), peer.clone()))
        })
        .collect();
    let fix = Fixes { mesh };
    findings.extend(remote_secrets(mesh, &views, &fix, &synced));
    findings.extend(identity(mesh, &views, &fix));
    findings.extend(networks(mesh, &views, &fix));
    findings.extend(trust(mesh, &views, &fix));
    findings.extend(reader_rbac(mesh, &views));
    findings.extend(services(&views));
    findings.extend(remotes(mesh, &views));
    findings.extend(leftovers(mesh, &views));
    findings.extend(ztunnels(mesh, &views));
    findings.extend(credentials::check(run, &topology));
    let said: Vec<Finding> = findings.clone();
    for row in &rows {
        // istiod's view, one peer at a time, with the cause among the above where one explains
        // it: a finding of this cluster that names the peer, or the peer's reader role that
        // names this cluster.
        let mut one_by_one: Vec<(Option<&str>, sync::Row)> = Vec::new();
        if row.error.is_some() {
            one_by_one.push((None, row.clone()));
        }
        for (peer, cell) in &row.peers {
            one_by_one.push((
                Some(peer),
                sync::Row {
                    peers: BTreeMap::from([(peer.clone(), cell.clone())]),
                    unexpected: BTreeMap::new(),
                    error: None,
                    ..row.clone()
                },
            ));
        }
        for (id, cell) in &row.unexpected {
            one_by_one.push((
                Some(id),
                sync::Row {
                    peers: BTreeMap::new(),
                    unexpected: BTreeMap::from([(id.clone(), cell.clone())]),
                    error: None,
                    ..row.clone()
                },
            ));
        }
        for (peer, single) in one_by_one {
            for mut finding in sync::findings(mesh, &single, &[]) {
                let cause = peer.and_then(|peer| {
                    let names = |f: &Finding, who: &str, whom: &str| {
                        f.cluster.as_deref() == Some(who) && f.why.contains(&format!("`{whom}`"))
                    };
                    said.iter()
                        .find(|f| names(f, &row.cluster, peer))
                        .or_else(|| {
                            said.iter()
                                .find(|f| f.what == "reader RBAC" && names(f, peer, &row.cluster))
                        })
                });
                if let Some(cause) = cause {
                    finding.why = format!("{} (cause: {})", finding.why, cause.why);
                }
                finding.what = "istiod's view".into();
                findings.push(finding);
            }
        }
    }
    findings.sort_by(|a, b| (b.level, &a.cluster).cmp(&(a.level, &b.cluster)));
    findings.dedup_by(|a, b| a.cluster == b.cluster && a.why == b.why);
    Report {
        ok: !findings.iter().any(|f| f.level != Level::Ok),
        source: mesh.source.clone(),
        mesh_id: mesh.mesh_id.clone(),
        clusters: mesh
            .clusters
            .iter()
            .map(|c| Known {
                name: c.name.clone(),
                context: c.context.clone(),
                cluster_id: views
                    .iter()
                    .find(|v| v.cluster == c.name)
                    .and_then(|v| v.istiods.first())
                    .and_then(|i| i.cluster_id.clone()),
                network: c.network.clone(),
            })
            .collect(),
        findings,
    }
}

/// The text report: one line per finding, with its fix.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "mesh `{}` ({}): {} cluster(s)\n",
        report.mesh_id,
        report.source,
        report.clusters.len()
    );
    for f in &report.findings {
        out.push_str(&format!(
            "{} [{}] {}: {}\n",
            f.level.mark(),
            f.cluster.as_deref().unwrap_or("mesh"),
            f.what,
            f.why
        ));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("    fix: {fix}\n"));
        }
    }
    out.push_str(&if report.ok {
        "no problem found\n".to_string()
    } else {
        format!("{} problem(s) found\n", report.findings.len())
    });
    out
}

/// Reads what the checks need of one cluster; a cluster that does not answer is marked so.
fn read(live: &Live, namespace: &str, istiod_pods: &mut Option<Vec<Pod>>) -> View {
    let mut view = View {
        cluster: live.target.cluster.clone(),
        ..View::default()
    };
    if let Err(e) = live.server_version() {
        view.unreachable = Some(e.to_string());
        return view;
    }
    let _ = fill(live, namespace, &mut view, istiod_pods);
    view
}

/// Reads one cluster into `view`, each kind once. A read that must succeed (the istiod
/// Deployments, the namespace, the mesh config, namespaces, Services) ends it early.
fn fill(
    live: &Live,
    ns: &str,
    view: &mut View,
    istiod_pods: &mut Option<Vec<Pod>>,
) -> Result<(), StepError> {
    let deployments: Vec<Deployment> = live.list_everywhere("deployments", Some("app=istiod"))?;
    view.istiods = deployments
        .iter()
        .filter(|d| d.metadata.labels.get("app").map(String::as_str) == Some("istiod"))
        .map(|d| istiod_of(live, d))
        .collect();
    let in_ns: Vec<Secret> = live.list("secrets", Some(ns), None).unwrap_or_default();
    view.secrets = remote_secrets_held(live, &in_ns);
    if let Some(namespace) = live.get::<crate::tools::live::Namespace>("namespace", ns, None)? {
        view.namespace_labels = namespace.metadata.labels;
        view.control_planes = namespace
            .metadata
            .annotations
            .get(CONTROL_PLANE_ANNOTATION)
            .cloned();
    }
    if let Some(secret) = in_ns.iter().find(|s| s.metadata.name == "cacerts") {
        view.cacerts = Some((
            secret.data.keys().cloned().collect(),
            cacerts::root_fingerprint(secret).ok().flatten(),
            secret.metadata.creation_timestamp.clone(),
        ));
    }
    *istiod_pods = live.list("pods", Some(ns), Some(sync::ISTIOD_PODS)).ok();
    view.istiod_started = istiod_pods
        .iter()
        .flatten()
        .filter_map(|p| p.status.start_time.clone())
        .min();
    read_mesh_config(live, ns, view)?;
    read_services(live, ns, view)?;
    read_gateways(live, ns, view);
    read_webhooks_and_agents(live, ns, view);
    Ok(())
}

/// The remote secrets a cluster holds: by istiod's label anywhere, and in the mesh namespace
/// by name or annotation (what a hand-made or half-applied one may still carry).
fn remote_secrets_held(live: &Live, in_ns: &[Secret]) -> Vec<Held> {
    let mut held = Vec::new();
    let labelled: Vec<Secret> = live
        .list_everywhere::<Secret>("secrets", Some(MULTICLUSTER_LABEL))
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    for s in labelled.iter().chain(in_ns.iter().filter(|s| {
        s.metadata.name.starts_with("istio-remote-secret-")
            || s.metadata
                .annotations
                .contains_key(remote_secret::CLUSTER_ANNOTATION)
    })) {
        if !seen.insert((s.metadata.namespace.clone(), s.metadata.name.clone())) {
            continue;
        }
        let found = remote_secret::found(std::slice::from_ref(s));
        held.push(Held {
            namespace: s.metadata.namespace.clone(),
            name: s.metadata.name.clone(),
            label: s.metadata.labels.get(MULTICLUSTER_LABEL).cloned(),
            keys: found.into_iter().map(|f| (f.cluster, f.server)).collect(),
        });
    }
    held
}

/// The mesh config of the istiod in the mesh namespace (`istio`, or `istio-REV`): its mesh
/// ID, trust domain and whether DNS capture is on.
fn read_mesh_config(live: &Live, ns: &str, view: &mut View) -> Result<(), StepError> {
    let config_name = view
        .istiods
        .iter()
        .find(|i| i.namespace == ns)
        .and_then(|i| {
            i.name
                .strip_prefix("istiod-")
                .map(|rev| format!("istio-{rev}"))
        })
        .unwrap_or_else(|| "istio".into());
    if let Some(cm) = live.get::<ConfigMap>("configmap", &config_name, Some(ns))? {
        let config: serde_yaml::Value = cm
            .data
            .get("mesh")
            .and_then(|m| serde_yaml::from_str(m).ok())
            .unwrap_or_default();
        let trust_domain = config
            .get("trustDomain")
            .and_then(|t| t.as_str())
            .unwrap_or("cluster.local")
            .to_string();
        let dns = config
            .get("defaultConfig")
            .and_then(|d| d.get("proxyMetadata"))
            .and_then(|p| p.get("ISTIO_META_DNS_CAPTURE"))
            .and_then(|v| v.as_str())
            == Some("true");
        view.mesh_config = Some((mesh_id_of(&cm), trust_domain, dns));
    }
    Ok(())
}

/// Every Service's name; istiod's and the east-west gateway's whole; in meshed namespaces,
/// their type and ports.
fn read_services(live: &Live, ns: &str, view: &mut View) -> Result<(), StepError> {
    let namespaces: Vec<crate::tools::live::Namespace> = live.list("namespaces", None, None)?;
    let meshed: BTreeSet<String> = namespaces
        .iter()
        .filter(|n| {
            let l = &n.metadata.labels;
            l.get("istio-injection").map(String::as_str) == Some("enabled")
                || l.contains_key("istio.io/rev")
                || l.get("istio.io/dataplane-mode").map(String::as_str) == Some("ambient")
        })
        .map(|n| n.metadata.name.clone())
        .collect();
    let services: Vec<Value> = live.list_everywhere("services", None)?;
    for s in &services {
        let (sns, name) = (
            s["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            s["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        view.service_names.insert((sns.clone(), name.clone()));
        if sns == ns && name.starts_with("istiod") {
            view.istiod_services.insert(name.clone(), s.clone());
        }
        if sns == ns
            && (name == crate::model::values::EAST_WEST_GATEWAY
                || s["metadata"]["labels"]["istio"] == "eastwestgateway")
        {
            view.gateway_service = Some(s.clone());
        }
        if meshed.contains(&sns) {
            let ports: BTreeSet<String> = s["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
                .collect();
            let kind = s["spec"]["type"]
                .as_str()
                .unwrap_or("ClusterIP")
                .to_string();
            view.services.insert((sns, name), (kind, ports));
        }
    }
    Ok(())
}

/// The Istio and Gateway API east-west gateways, and istiod's endpoints.
fn read_gateways(live: &Live, ns: &str, view: &mut View) {
    let gateways: Vec<Value> = live
        .list("gateways.networking.istio.io", Some(ns), None)
        .unwrap_or_default();
    view.cross_network_gateway = gateways
        .iter()
        .any(|g| g["metadata"]["name"] == "cross-network-gateway");
    let api_gateways: Vec<Value> = live
        .list("gateways.gateway.networking.k8s.io", Some(ns), None)
        .unwrap_or_default();
    view.east_west = api_gateways
        .into_iter()
        .find(|g| g["spec"]["gatewayClassName"] == "istio-east-west");
    let slices: Vec<Value> = live
        .list("endpointslices.discovery.k8s.io", Some(ns), None)
        .unwrap_or_default();
    for slice in &slices {
        let Some(service) = slice["metadata"]["labels"]["kubernetes.io/service-name"].as_str()
        else {
            continue;
        };
        if !service.starts_with("istiod") {
            continue;
        }
        let addresses = slice["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .map(str::to_string);
        view.istiod_endpoints
            .entry(service.to_string())
            .or_default()
            .extend(addresses);
    }
}

/// The webhook configurations, istio-reader's role, meshup's Helm releases and ztunnel.
fn read_webhooks_and_agents(live: &Live, ns: &str, view: &mut View) {
    view.mutating = live
        .list("mutatingwebhookconfigurations", None, None)
        .unwrap_or_default();
    view.injected = injected_identity(&view.mutating);
    view.validating = live
        .list("validatingwebhookconfigurations", None, None)
        .unwrap_or_default();
    let roles: Vec<Value> = live
        .list("clusterroles", None, Some("app=istio-reader"))
        .unwrap_or_default();
    view.has_reader_role = !roles.is_empty();
    view.reader_grants_configmaps = roles.iter().any(grants_configmaps);
    view.releases = live.helm_releases(ns).unwrap_or_default();
    let ztunnel: Option<Deployment> = live
        .get("daemonset", "ztunnel", Some(ns))
        .unwrap_or_default();
    view.ztunnel = ztunnel.map(|z| {
        (
            z.env("ISTIO_META_CLUSTER_ID")
                .unwrap_or("Kubernetes")
                .to_string(),
            z.env("NETWORK")
                .filter(|n| !n.is_empty())
                .map(str::to_string),
        )
    });
}

/// The fixes doctor names: a meshup command when the mesh came from a file, else the
/// command Istio's pages would have one type.
struct Fixes<'a> {
    mesh: &'a Mesh,
}

impl Fixes<'_> {
    fn has_file(&self) -> bool {
        !self.mesh.source.starts_with("contexts")
    }

    fn link(&self, watcher: &str, source: &str) -> String {
        if self.has_file() {
            format!("run `meshup link -f {}`", self.mesh.source)
        } else {
            let (w, s) = (self.context(watcher), self.context(source));
            format!(
                "recreate it: `istioctl create-remote-secret --context {s} --name {source} --server https://ADDRESS-REACHABLE-FROM-{watcher}:6443 | kubectl apply --context {w} -f -` (or `meshup remote-secret`)"
            )
        }
    }

    fn context(&self, cluster: &str) -> String {
        self.mesh
            .cluster(cluster)
            .map(|c| c.context.clone())
            .unwrap_or_else(|| cluster.to_string())
    }
}

/// 1, 2, 4: where remote secrets sit, how they are labelled, which clusters they name, where
/// they point.
fn remote_secrets(
    mesh: &Mesh,
    views: &[&View],
    fix: &Fixes,
    synced: &BTreeSet<(String, String)>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    // The cluster ids remote secrets may name: each istiod's CLUSTER_ID, and for a cluster
    // without istiod (a remote) the id its injector sends (`/inject/cluster/ID/...`), else
    // its name.
    let ids: BTreeMap<String, &str> = views
        .iter()
        .filter_map(|v| match v.istiods.first() {
            Some(istiod) => Some((istiod.cluster_id.clone()?, v.cluster.as_str())),
            None => Some((
                v.injected.0.clone().unwrap_or_else(|| v.cluster.clone()),
                v.cluster.as_str(),
            )),
        })
        .collect();
    // The servers some istiod synced with through a secret it reads: reachable from inside
    // istiod's pods, loopback or not (istiod on the host network, or the test servers).
    let reached: BTreeSet<&str> = views
        .iter()
        .flat_map(|view| {
            let ns: BTreeSet<&str> = view.istiods.iter().map(|i| i.namespace.as_str()).collect();
            view.secrets
                .iter()
                .filter(move |h| {
                    ns.contains(h.namespace.as_str()) && h.label.as_deref() == Some("true")
                })
                .flat_map(|h| h.keys.iter())
                .filter(|(key, _)| {
                    let source = ids.get(key).copied().unwrap_or(key.as_str());
                    synced.contains(&(view.cluster.clone(), source.to_string()))
                })
                .filter_map(|(_, server)| server.as_deref())
        })
        .collect();
    for view in views {
        let here = Some(view.cluster.as_str());
        let own = view.istiods.first().and_then(|i| i.cluster_id.clone());
        let istiod_ns: BTreeSet<&str> = view.istiods.iter().map(|i| i.namespace.as_str()).collect();
        let mut by_key: BTreeMap<&str, Vec<&Held>> = BTreeMap::new();
        for held in &view.secrets {
            let name = format!("{}/{}", held.namespace, held.name);
            let for_keys = held
                .keys
                .iter()
                .map(|(k, _)| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let outside = !istiod_ns.is_empty() && !istiod_ns.contains(held.namespace.as_str());
            // What istiod does not read is reported as such; its content is not the problem.
            let read = !outside && held.label.as_deref() == Some("true");
            if outside {
                out.push(
                    Finding::fail(here, "remote secrets", format!(
                        "remote secret `{name}` (for {for_keys}) is outside istiod's namespace ({}): istiod only reads remote secrets of its own namespace, so it never watches that cluster and its endpoints are missing (istio/istio#49780)",
                        istiod_ns.iter().copied().collect::<Vec<_>>().join(", ")
                    ))
                    .fix(format!("move it: `kubectl get secret {} -n {} --context {} -o yaml | sed 's/namespace: .*/namespace: {}/' | kubectl apply --context {} -f -`, then delete the old one", held.name, held.namespace, fix.context(&view.cluster), mesh.namespace, fix.context(&view.cluster))),
                );
            }
            if held.label.as_deref() != Some("true") {
                out.push(
                    Finding::fail(here, "remote secrets", format!(
                        "secret `{name}` holds a kubeconfig for {for_keys} but its `{MULTICLUSTER_LABEL}` label is {}: istiod selects remote secrets by `{MULTICLUSTER_LABEL}=true` and ignores this one (istio/istio#47433)",
                        held.label.as_deref().map(|l| format!("`{l}`")).unwrap_or_else(|| "missing".into())
                    ))
                    .fix(format!("`kubectl label secret {} -n {} --context {} {MULTICLUSTER_LABEL}=true --overwrite`", held.name, held.namespace, fix.context(&view.cluster))),
                );
            }
            for (key, server) in &held.keys {
                if own.as_deref() == Some(key.as_str()) {
                    out.push(
                        Finding::fail(here, "remote secrets", format!(
                            "remote secret `{name}` names `{key}`, this cluster's own CLUSTER_ID: istiod skips it, and the cluster it was meant for is not watched (istio/istio#42516)"
                        ))
                        .fix(format!("delete it and apply the intended cluster's remote secret under that cluster's CLUSTER_ID: `kubectl delete secret {} -n {} --context {}`", held.name, held.namespace, fix.context(&view.cluster))),
                    );
                    continue;
                }
                if !ids.is_empty() && !ids.contains_key(key) {
                    out.push(
                        Finding::fail(here, "remote secrets", format!(
                            "remote secret `{name}` names cluster `{key}`, but no cluster's istiod has CLUSTER_ID `{key}` (theirs: {}): the data key must be the peer's `global.multiCluster.clusterName`, or its endpoints are attributed to a cluster that does not exist and cross-cluster load balancing breaks (istio/istio#42516)",
                            // Unquoted: istiod's view takes a cluster quoted here for a cause.
                            ids.keys().cloned().collect::<Vec<_>>().join(", ")
                        ))
                        .fix("recreate it with `--name` equal to the peer's clusterName (`istioctl create-remote-secret --name CLUSTER_ID`, or `meshup link`)"),
                    );
                }
                if !read {
                    continue;
                }
                by_key.entry(key.as_str()).or_default().push(held);
                if let Some(server) = server {
                    let source = ids.get(key).copied().unwrap_or(key.as_str());
                    // A loopback server works only where istiod shares the API server's
                    // network (host network, or test servers): istiod's own view decides,
                    // here or in another cluster whose secret has the same server.
                    let works = synced.contains(&(view.cluster.clone(), source.to_string()))
                        || reached.contains(server.as_str());
                    if is_loopback(server) && !works {
                        out.push(
                            Finding::fail(here, "remote secrets", format!(
                                "remote secret `{name}` for `{source}` points at {server}, a loopback address: from inside istiod's pod that is istiod itself, so `{source}` is never synced (istio/istio#58047)"
                            ))
                            .fix(fix.link(&view.cluster, source)),
                        );
                    } else if let Some(expected) = mesh
                        .cluster(source)
                        .filter(|c| c.server_overridden)
                        .map(|c| &c.server)
                        && expected != server
                    {
                        out.push(
                            Finding::warn(here, "remote secrets", format!(
                                "remote secret `{name}` for `{source}` points at {server}, but the mesh file gives `{source}` the API server {expected}"
                            ))
                            .fix(fix.link(&view.cluster, source)),
                        );
                    }
                }
            }
        }
        for (key, held) in by_key {
            let names: BTreeSet<String> = held
                .iter()
                .map(|h| format!("{}/{}", h.namespace, h.name))
                .collect();
            if names.len() > 1 {
                out.push(
                    Finding::fail(here, "remote secrets", format!(
                        "{} secrets hold a kubeconfig for `{key}` ({}): istiod keeps the one it read first and ignores the others (`cluster has already been registered`), so which one works depends on the order istiod happened to read them in, and may change when it restarts",
                        names.len(),
                        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                    ))
                    .fix(format!("delete all but one (`kubectl delete secret NAME -n NS --context {}`)", fix.context(&view.cluster))),
                );
            }
        }
    }
    out
}

/// 5: cluster names and mesh IDs.
fn identity(mesh: &Mesh, views: &[&View], _: &Fixes) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut by_id: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for view in views {
        for istiod in view
            .istiods
            .iter()
            .filter(|i| i.namespace == mesh.namespace)
        {
            let id = istiod.cluster_id.as_deref().unwrap_or("Kubernetes");
            let clusters = by_id.entry(id).or_default();
            // Two istiods of one cluster (revisions) are one cluster here.
            if !clusters.contains(&view.cluster.as_str()) {
                clusters.push(&view.cluster);
            }
            if id == "Kubernetes" {
                out.push(
                    Finding::fail(Some(&view.cluster), "cluster name", "istiod's CLUSTER_ID is `Kubernetes`, the chart's default: every cluster left at the default has the same name, so their endpoints collide and remote secrets cannot tell them apart (istio/istio#42516)")
                        .fix("set `global.multiCluster.clusterName` per cluster (the mesh file's `clusters[].name` does) and re-install istiod"),
                );
            }
        }
    }
    for (id, clusters) in by_id
        .iter()
        .filter(|(id, c)| c.len() > 1 && **id != "Kubernetes")
    {
        out.push(
            Finding::fail(None, "cluster name", format!(
                "{} run istiod with the same CLUSTER_ID `{id}`: a remote secret for one shadows the other, and endpoints of both are merged as one cluster (istio/istio#42516)",
                clusters.join(", ")
            ))
            .fix("give each cluster its own `global.multiCluster.clusterName` and re-install istiod"),
        );
    }
    let ids: BTreeMap<&str, Option<&str>> = views
        .iter()
        .filter_map(|v| Some((v.cluster.as_str(), v.mesh_config.as_ref()?.0.as_deref())))
        .collect();
    let distinct: BTreeSet<&str> = ids.values().map(|m| m.unwrap_or("(none)")).collect();
    if distinct.len() > 1 {
        out.push(
            Finding::fail(None, "mesh ID", format!(
                "the clusters do not share one mesh ID ({}): istiod merges services across clusters only within one mesh (istio/istio#42516)",
                ids.iter().map(|(c, m)| format!("{c}: {}", m.unwrap_or("none"))).collect::<Vec<_>>().join(", ")
            ))
            .fix(format!("set one `global.meshID` everywhere (the mesh file's `meshID`: {}) and re-install istiod", mesh.mesh_id)),
        );
    }
    out
}

/// The network the sidecars of a cluster claim: istiod's injector values (`global.network`),
/// or on a remote the network its injector's path names. `None`: not known (no injector
/// values read, no path naming one); `Some(None)`: istiod's values set none.
fn claimed_network<'a>(mesh: &Mesh, view: &'a View) -> Option<Option<&'a str>> {
    match view.istiods.iter().find(|i| i.namespace == mesh.namespace) {
        Some(istiod) => istiod.injector_network.as_ref().map(|n| n.as_deref()),
        None => view.injected.1.as_deref().map(Some),
    }
}

/// A cluster's network as its system namespace's label says, else as its injector claims.
fn network_of<'a>(mesh: &Mesh, view: &'a View) -> Option<&'a str> {
    view.namespace_labels
        .get(NETWORK_LABEL)
        .map(String::as_str)
        .or_else(|| claimed_network(mesh, view).flatten())
}

/// Whether a cluster runs the ambient data plane: the mesh file says so, or istiod runs its
/// ambient controllers, or ztunnel runs there.
fn ambient(mesh: &Mesh, view: &View) -> bool {
    mesh.ambient() || view.ztunnel.is_some() || view.istiods.iter().any(|i| i.ambient)
}

/// 6: networks and east-west gateways.
fn networks(mesh: &Mesh, views: &[&View], fix: &Fixes) -> Vec<Finding> {
    let mut out = Vec::new();
    let networks: BTreeSet<&str> = views.iter().filter_map(|v| network_of(mesh, v)).collect();
    if networks.len() <= 1 && !mesh.multi_network() {
        return out;
    }
    for view in views {
        let here = Some(view.cluster.as_str());
        let is_remote = view.istiods.iter().all(|i| i.namespace != mesh.namespace);
        if is_remote && view.injected.0.is_none() {
            // Neither istiod nor a remote's injector: nothing of the mesh runs here.
            continue;
        }
        let who = if is_remote {
            "this remote's injector path"
        } else {
            "istiod's `global.network`"
        };
        let label = view.namespace_labels.get(NETWORK_LABEL).map(String::as_str);
        let claimed = claimed_network(mesh, view);
        let ns = &mesh.namespace;
        let ctx = context(mesh, &view.cluster);
        match (claimed, label) {
            (Some(None), _) => out.push(
                Finding::fail(here, "network", "the mesh spans several networks, but this istiod has no `global.network` (its injector's values name none): the sidecars it injects claim no network, so they are taken to be reachable directly from every network, and requests to them from other networks fail (istio/istio#42516)")
                    .fix("set `global.network` (the mesh file's `network`) and re-install istiod"),
            ),
            (claimed, None) => out.push(
                Finding::fail(here, "network", format!(
                    "namespace `{ns}` has no `{NETWORK_LABEL}` label{}: istiod reads this cluster's network from it, so its endpoints and gateway land on no network (istio/istio#49412)",
                    claimed.flatten().map(|n| format!(" ({who} is `{n}`)")).unwrap_or_default()
                ))
                .fix(match claimed.flatten() {
                    Some(net) => format!("`kubectl label namespace {ns} {NETWORK_LABEL}={net} --context {ctx}`"),
                    None => format!("`kubectl label namespace {ns} {NETWORK_LABEL}=NETWORK --context {ctx}` with the cluster's network"),
                }),
            ),
            (Some(Some(net)), Some(label)) if label != net => out.push(
                Finding::fail(here, "network", format!("namespace `{ns}` is labelled network `{label}`, {who} is `{net}`: istiod puts this cluster's endpoints and gateway on `{label}` and its sidecars claim `{net}`, so cross-network traffic goes nowhere (istio/istio#49412)"))
                    .fix(format!("make them one: `kubectl label namespace {ns} {NETWORK_LABEL}={net} --overwrite --context {ctx}`")),
            ),
            _ => {
                // The namespace and the injector agree (or the injector says nothing): the
                // mesh file may still put the cluster elsewhere.
                let expected = mesh
                    .cluster(&view.cluster)
                    .and_then(|c| c.network.as_deref())
                    .filter(|_| fix.has_file());
                if let (Some(expected), Some(label)) = (expected, label)
                    && label != expected
                {
                    out.push(
                        Finding::fail(here, "network", format!("namespace `{ns}` is labelled network `{label}`, but the mesh file puts this cluster on `{expected}`: the other clusters route to it as `{expected}` through gateways it does not have (istio/istio#49412)"))
                            .fix(format!("`meshup install -f {}` (it labels the namespace and sets `global.network`), or fix `network` in the mesh file", mesh.source)),
                    );
                }
            }
        }
        if is_remote {
            continue;
        }
        if ambient(mesh, view) {
            out.extend(east_west_gateway_api(mesh, view, network_of(mesh, view)));
            continue;
        }
        match &view.gateway_service {
            None => out.push(
                Finding::fail(here, "east-west gateway", "no east-west gateway: other networks reach this cluster's endpoints only through it (istio/istio#42516)")
                    .fix("install it (`meshup install` does; Istio's pages: `samples/multicluster/gen-eastwest-gateway.sh`)"),
            ),
            Some(service) => {
                let ingress = &service["status"]["loadBalancer"]["ingress"][0];
                let external = service["spec"]["externalIPs"][0].as_str();
                if let Some(host) = ingress["hostname"].as_str()
                    && ingress["ip"].as_str().is_none()
                {
                    out.push(Finding::warn(here, "east-west gateway", format!(
                        "the gateway's address is the host name {host}: istiod resolves it to IPs itself (once, via DNS from inside its pod); if that fails or the addresses change, other networks lose this one (istio/istio#29359)"
                    )).fix("give the gateway a stable IP (`clusters[].eastWestGateway.address`), or check that istiod can resolve the name"));
                } else if ingress.is_null() && external.is_none() {
                    out.push(Finding::fail(here, "east-west gateway", "the gateway has no address yet (no load balancer IP or host name, no external IP): other networks cannot reach this one (istio/istio#29359)")
                        .fix("give it a load balancer, or set `clusters[].eastWestGateway.address` (an external IP)"));
                }
            }
        }
        if !view.cross_network_gateway {
            out.push(
                Finding::fail(here, "east-west gateway", "no `cross-network-gateway` Gateway: the east-west gateway does not pass traffic from other networks through on 15443 (istio/istio#42516)")
                    .fix(format!("apply it (`meshup install` does; Istio's pages: `kubectl apply --context {} -n {} -f samples/multicluster/expose-services.yaml`)", context(mesh, &view.cluster), mesh.namespace)),
            );
        }
    }
    out
}

/// Ambient's east-west gateway: a Gateway API `Gateway` of class `istio-east-west` that istiod
/// programmed, with an HBONE listener on 15008 and the cluster's network label (Istio's
/// `gen-eastwest-gateway.sh --ambient`); the sidecar-mode Service and `cross-network-gateway`
/// play no part in ambient.
fn east_west_gateway_api(mesh: &Mesh, view: &View, network: Option<&str>) -> Vec<Finding> {
    let here = Some(view.cluster.as_str());
    let ctx = context(mesh, &view.cluster);
    let ns = &mesh.namespace;
    let Some(gateway) = &view.east_west else {
        return vec![
            Finding::fail(here, "east-west gateway", "no Gateway of class `istio-east-west`: in an ambient mesh other networks reach this cluster's workloads only through it, over HBONE on 15008 (istio/istio#42516)")
                .fix(format!("install it (`meshup install` does; Istio's pages: `samples/multicluster/gen-eastwest-gateway.sh --network NETWORK --ambient | kubectl apply --context {ctx} -f -`)")),
        ];
    };
    let mut out = Vec::new();
    let name = gateway["metadata"]["name"].as_str().unwrap_or_default();
    let hbone = gateway["spec"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|l| l["port"] == 15008 && l["protocol"] == "HBONE");
    if !hbone {
        out.push(
            Finding::fail(here, "east-west gateway", format!("Gateway `{ns}/{name}` has no HBONE listener on 15008: ztunnels of other networks tunnel to this cluster on that port (istio/istio#42516)"))
                .fix("add the listener `{name: mesh, port: 15008, protocol: HBONE, tls: {mode: Terminate, options: {gateway.istio.io/tls-terminate-mode: ISTIO_MUTUAL}}}`, or re-create it (`meshup install`)"),
        );
    }
    let programmed = gateway["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Programmed");
    if programmed.is_none_or(|c| c["status"] != "True") {
        let said = programmed
            .map(|c| {
                format!(
                    " ({}: {})",
                    c["reason"].as_str().unwrap_or_default(),
                    c["message"].as_str().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        out.push(
            Finding::fail(here, "east-west gateway", format!("Gateway `{ns}/{name}` is not Programmed{said}: istiod has not deployed it or it has no address, so other networks cannot reach this one (istio/istio#29359)"))
                .fix(format!("`kubectl describe gateway {name} -n {ns} --context {ctx}`; check that the cluster gives load balancers an address")),
        );
    }
    let label = gateway["metadata"]["labels"][NETWORK_LABEL].as_str();
    if let Some(network) = network
        && label != Some(network)
    {
        out.push(
            Finding::fail(here, "east-west gateway", format!(
                "Gateway `{ns}/{name}` is {} while this cluster is on `{network}`: istiod takes it as the gateway of the network it is labelled with, so requests to `{network}` find no gateway (istio/istio#49412)",
                label.map(|l| format!("labelled network `{l}`")).unwrap_or_else(|| format!("not labelled `{NETWORK_LABEL}`"))
            ))
            .fix(format!("`kubectl label gateway.gateway.networking.k8s.io {name} -n {ns} {NETWORK_LABEL}={network} --overwrite --context {ctx}`")),
        );
    }
    out
}

fn context(mesh: &Mesh, cluster: &str) -> String {
    mesh.cluster(cluster)
        .map(|c| c.context.clone())
        .unwrap_or_else(|| cluster.to_string())
}

/// 7: the shared root of trust.
fn trust(mesh: &Mesh, views: &[&View], _: &Fixes) -> Vec<Finding> {
    let mut out = Vec::new();
    let primaries: Vec<&&View> = views.iter().filter(|v| !v.istiods.is_empty()).collect();
    let mut roots: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for view in &primaries {
        let here = Some(view.cluster.as_str());
        match &view.cacerts {
            None => out.push(
                Finding::fail(here, "cacerts", format!("no `cacerts` in `{}`: istiod signs with a self-signed root of its own, which no other cluster trusts, so mTLS across clusters fails (istio/istio#32501)", mesh.namespace))
                    .fix("plug in certificates from one shared root (`meshup certs` and `meshup install`, or Istio's \"Plug in CA certificates\")"),
            ),
            Some((keys, root, created)) => {
                let missing: Vec<&str> = CACERTS_KEYS.iter().copied().filter(|k| !keys.contains(*k)).collect();
                if !missing.is_empty() {
                    out.push(
                        Finding::fail(here, "cacerts", format!("`cacerts` lacks {}: istiod does not start with a partial one, or falls back to a self-signed root (istio/istio#52356)", missing.join(", ")))
                            .fix("recreate it with all four keys (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem)"),
                    );
                }
                if let Some(root) = root {
                    roots.entry(root.clone()).or_default().push(&view.cluster);
                }
                if let Some(started) = &view.istiod_started
                    && created > started
                {
                    out.push(
                        Finding::fail(here, "cacerts", format!("`cacerts` was created at {created}, after istiod started ({started}): istiod read its CA at start and still signs with the old root (istio/istio#39204)"))
                            .fix(format!("restart istiod: `kubectl rollout restart deployment -n {} --context {} -l app=istiod` (or `meshup install --restart`)", mesh.namespace, context(mesh, &view.cluster))),
                    );
                }
            }
        }
    }
    if roots.len() > 1 {
        out.push(
            Finding::fail(None, "cacerts", format!(
                "the clusters' `cacerts` have different roots ({}): workloads of one do not trust the other's certificates and mTLS between them fails (istio/istio#32501)",
                roots.iter().map(|(r, c)| format!("{} in {}", &r[..r.len().min(16)], c.join(", "))).collect::<Vec<_>>().join("; ")
            ))
            .fix("issue every cluster's intermediate from one root (`meshup certs`), apply them, restart istiod and the workloads"),
        );
    }
    let domains: BTreeMap<&str, &str> = views
        .iter()
        .filter_map(|v| Some((v.cluster.as_str(), v.mesh_config.as_ref()?.1.as_str())))
        .collect();
    if domains.values().collect::<BTreeSet<_>>().len() > 1 {
        out.push(
            Finding::fail(None, "trust domain", format!(
                "the clusters use different trust domains ({}): identities from one are not accepted by authorization policies of the other (istio/istio#52356)",
                domains.iter().map(|(c, d)| format!("{c}: {d}")).collect::<Vec<_>>().join(", ")
            ))
            .fix("set one `meshConfig.trustDomain` everywhere (or list the others in `trustDomainAliases`)"),
        );
    }
    out
}

/// 8: reader RBAC a watcher's istiod version needs in each peer.
fn reader_rbac(mesh: &Mesh, views: &[&View]) -> Vec<Finding> {
    let mut out = Vec::new();
    let newest: Vec<(&str, &str)> = views
        .iter()
        .flat_map(|v| {
            v.istiods
                .iter()
                .filter(|i| i.namespace == mesh.namespace)
                .filter_map(move |i| Some((v.cluster.as_str(), i.version.as_deref()?)))
        })
        .filter(|(_, version)| IstioVersion::parse(version).is_some_and(|v| v.minor() >= (1, 29)))
        .collect();
    for peer in views {
        if !peer.has_reader_role || peer.reader_grants_configmaps {
            continue;
        }
        let watchers: Vec<String> = newest
            .iter()
            .filter(|(c, _)| *c != peer.cluster)
            .map(|(c, v)| format!("`{c}` ({v})"))
            .collect();
        if watchers.is_empty() {
            continue;
        }
        out.push(
            Finding::fail(Some(&peer.cluster), "reader RBAC", format!(
                "the reader role here does not let istiod list ConfigMaps, which istiod 1.29 and later reads in every peer before it counts it synced; {} stay without this cluster (istio/istio#59474)",
                watchers.join(", ")
            ))
            .fix("upgrade this cluster's istiod chart (its `istio-reader-clusterrole` gained configmaps in 1.29), or start that upgrade here first (`meshup upgrade start` renders the new reader role in every cluster)"),
        );
    }
    out
}

/// 9: services that differ across clusters (IST0170), or exist in only some while DNS
/// proxying is off.
fn services(views: &[&View]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut all: BTreeMap<&(String, String), Vec<(&str, &Shape)>> = BTreeMap::new();
    for view in views {
        for (key, shape) in &view.services {
            all.entry(key).or_default().push((&view.cluster, shape));
        }
    }
    let dns_everywhere = views
        .iter()
        .filter_map(|v| v.mesh_config.as_ref())
        .all(|(_, _, dns)| *dns);
    for ((ns, name), seen) in all {
        let shapes: BTreeSet<&Shape> = seen.iter().map(|(_, s)| *s).collect();
        if shapes.len() > 1 {
            out.push(
                Finding::warn(None, "services", format!(
                    "service `{ns}/{name}` differs across clusters ({}): istiod merges it into one, and clients get the ports and type of whichever cluster it read last (istioctl analyze IST0170)",
                    seen.iter().map(|(c, (t, p))| format!("{c}: {t} {}", p.iter().cloned().collect::<Vec<_>>().join(","))).collect::<Vec<_>>().join("; ")
                ))
                .fix("give the service the same type and ports in every cluster"),
            );
        }
        let present: BTreeSet<&str> = seen.iter().map(|(c, _)| *c).collect();
        let missing: Vec<&str> = views
            .iter()
            .filter(|v| !v.istiods.is_empty() && !present.contains(v.cluster.as_str()))
            .map(|v| v.cluster.as_str())
            .collect();
        if !missing.is_empty() && !dns_everywhere {
            out.push(
                Finding::warn(None, "services", format!(
                    "service `{ns}/{name}` exists only in {}: in {} its name does not resolve (no Service, so no DNS entry) while DNS proxying is off, so clients there cannot reach it although the mesh could (istio/istio#39843, #58340)",
                    present.iter().copied().collect::<Vec<_>>().join(", "),
                    missing.join(", ")
                ))
                .fix("create the Service (without pods) in those clusters too, or turn on DNS proxying (`meshConfig.defaultConfig.proxyMetadata.ISTIO_META_DNS_CAPTURE: \"true\"`)"),
            );
        }
    }
    out
}

/// 10: a remote cluster's injector and istiod address. The injector calls the primary's
/// istiod at a URL (`istiodRemote.injectionURL`), or, as Istio's istiod chart renders the
/// remote profile by default, through the remote's own `istiod[-REV]` Service, whose
/// EndpointSlice `istiod[-REV]` holds `global.remotePilotAddress` (an ExternalName Service for a
/// host name; templates/remote-istiod-service.yaml, remote-istiod-endpointslices.yaml).
fn remotes(mesh: &Mesh, views: &[&View]) -> Vec<Finding> {
    let mut out = Vec::new();
    for view in views {
        let here = Some(view.cluster.as_str());
        let primary = match mesh.cluster(&view.cluster).map(|c| &c.role) {
            Some(Role::Remote { primary }) => Some(primary.as_str()),
            _ => None,
        };
        // istiod patches a remote's webhooks only where it leads (istio 1.30 multicluster.go
        // `checkShouldLead`): the namespace names its cluster id, or `*`.
        let unled = primary.filter(|p| {
            !view
                .control_planes
                .as_deref()
                .is_some_and(|named| named.split(',').any(|c| c == "*" || c == *p))
        });
        if let Some(primary) = unled {
            out.push(
                Finding::warn(here, "injector", format!(
                    "namespace `{}` names {} in `{CONTROL_PLANE_ANNOTATION}`, not primary `{primary}`: its istiod does not lead this cluster, so it never patches the injector's caBundle here (after a CA rotation the webhooks fail closed)",
                    mesh.namespace,
                    view.control_planes.as_deref().map_or_else(|| "no cluster".to_string(), |n| format!("`{n}`"))
                ))
                .fix(format!("`kubectl annotate namespace {} {CONTROL_PLANE_ANNOTATION}={primary} --overwrite --context {}` (`meshup install` sets it)", mesh.namespace, context(mesh, &view.cluster))),
            );
        }
        for (name, wh) in injector_webhooks(&view.mutating) {
            let Some(target) = Target::of(wh) else {
                continue;
            };
            let hosts: Vec<String> = match &target {
                Target::Url(url) => {
                    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                    vec![
                        rest.split([':', '/'])
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    ]
                }
                Target::Service {
                    namespace,
                    name: service,
                    ..
                } => {
                    // A Service of a local istiod: not a remote's injector.
                    if view.istiods.iter().any(|i| &i.namespace == namespace) {
                        continue;
                    }
                    let found = (namespace == &mesh.namespace)
                        .then(|| view.istiod_services.get(service))
                        .flatten();
                    let Some(found) = found else {
                        out.push(
                            Finding::fail(here, "injector", format!(
                                "webhook `{}` of `{name}` calls service `{namespace}/{service}`, which does not exist: no istiod runs here, so every pod create in injected namespaces fails (istio/istio#42327)",
                                wh["name"].as_str().unwrap_or_default()
                            ))
                            .fix("re-install this cluster's istiod chart with `profile: remote` and `global.remotePilotAddress` (`meshup install` does): it renders the Service and its EndpointSlice"),
                        );
                        continue;
                    };
                    match found["spec"]["externalName"].as_str() {
                        Some(host) => vec![host.to_string()],
                        None => view
                            .istiod_endpoints
                            .get(service)
                            .cloned()
                            .unwrap_or_default(),
                    }
                }
            };
            if wh["clientConfig"]["caBundle"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
            {
                out.push(
                    Finding::fail(here, "injector", format!(
                        "webhook `{}` of `{name}` calls {} with an empty caBundle: the API server cannot verify the remote istiod's certificate and every pod create in injected namespaces fails (istio/istio#42327)",
                        wh["name"].as_str().unwrap_or_default(),
                        target.describe()
                    ))
                    .fix(match unled {
                        Some(primary) => format!("let primary `{primary}`'s istiod patch it: name it in the namespace's `{CONTROL_PLANE_ANNOTATION}` (above); or set `istiodRemote.injectionCABundle`"),
                        None => "set `istiodRemote.injectionCABundle`, or let the primary's istiod patch it (it does once it reaches this cluster through its remote secret)".to_string(),
                    }),
                );
            }
            if let Some(primary) = primary
                && let Some(gateway) = views
                    .iter()
                    .find(|v| v.cluster == primary)
                    .and_then(|v| v.gateway_service.as_ref())
            {
                let addresses: Vec<&str> = [
                    gateway["status"]["loadBalancer"]["ingress"][0]["ip"].as_str(),
                    gateway["status"]["loadBalancer"]["ingress"][0]["hostname"].as_str(),
                    gateway["spec"]["externalIPs"][0].as_str(),
                ]
                .into_iter()
                .flatten()
                .collect();
                if !addresses.is_empty()
                    && !hosts.is_empty()
                    && !hosts.iter().any(|h| addresses.contains(&h.as_str()))
                {
                    out.push(
                        Finding::fail(here, "injector", format!(
                            "the injector calls {}, but primary `{primary}`'s east-west gateway is at {}: pods created here are refused or not injected, and proxies cannot reach istiod (remotePilotAddress) (istio/istio#42327)",
                            hosts.join(", "),
                            addresses.join(", ")
                        ))
                        .fix(format!("set `global.remotePilotAddress` to {} and re-install this cluster's istiod (`meshup install` sets it from the gateway)", addresses[0])),
                    );
                }
            }
        }
    }
    out
}

/// 11: what other tools or interrupted runs left behind.
fn leftovers(mesh: &Mesh, views: &[&View]) -> Vec<Finding> {
    let mut out = Vec::new();
    for view in views {
        let here = Some(view.cluster.as_str());
        let by_helm = view.istiods.iter().any(|i| i.helm_release.is_some());
        for istiod in view.istiods.iter().filter(|i| i.helm_release.is_none()) {
            if by_helm {
                out.push(
                    Finding::fail(here, "leftovers", format!(
                        "istiod `{}/{}` was not installed by helm (istioctl install or the operator left it) and runs beside the helm one: both patch the same webhooks and fight over injection and validation",
                        istiod.namespace, istiod.name
                    ))
                    .fix(format!("remove it: `istioctl uninstall --revision {}` or `kubectl delete deployment {} -n {} --context {}`", istiod.name.strip_prefix("istiod-").unwrap_or("default"), istiod.name, istiod.namespace, context(mesh, &view.cluster))),
                );
            }
        }
        for hook in &view.validating {
            let name = hook["metadata"]["name"].as_str().unwrap_or_default();
            for wh in hook["webhooks"].as_array().into_iter().flatten() {
                let service = &wh["clientConfig"]["service"];
                let (Some(sns), Some(sname)) =
                    (service["namespace"].as_str(), service["name"].as_str())
                else {
                    continue;
                };
                if !sname.starts_with("istiod") {
                    continue;
                }
                if !view
                    .service_names
                    .contains(&(sns.to_string(), sname.to_string()))
                {
                    out.push(
                        Finding::fail(here, "leftovers", format!(
                            "validating webhook `{name}` calls service `{sns}/{sname}`, which does not exist: with failurePolicy Fail every Istio config write is refused"
                        ))
                        .fix(format!("delete it: `kubectl delete validatingwebhookconfiguration {name} --context {}`", context(mesh, &view.cluster))),
                    );
                    break;
                }
            }
        }
        for release in view.releases.iter().filter(|r| r.is_pending()) {
            out.push(
                Finding::fail(here, "leftovers", format!(
                    "helm release `{}` is stuck `{}` (since {}): helm refuses the next upgrade of it",
                    release.name, release.status, release.updated
                ))
                .fix(format!("`meshup install` recovers it once no helm run works on it; by hand: `helm rollback {} -n {} --kube-context {}` (or `helm uninstall` for a pending install)", release.name, mesh.namespace, context(mesh, &view.cluster))),
            );
        }
    }
    out
}

/// Ambient: ztunnel must claim istiod's cluster id and network. Its chart takes its own
/// `multiCluster.clusterName` (default `Kubernetes`) and `network`
/// (manifests/charts/ztunnel/templates/daemonset.yaml), which Istio's Helm steps leave unset.
fn ztunnels(mesh: &Mesh, views: &[&View]) -> Vec<Finding> {
    let mut out = Vec::new();
    for view in views {
        let (Some((id, network)), Some(istiod)) = (
            &view.ztunnel,
            view.istiods.iter().find(|i| i.namespace == mesh.namespace),
        ) else {
            continue;
        };
        let istiod_id = istiod.cluster_id.as_deref().unwrap_or("Kubernetes");
        let mut wrong = Vec::new();
        if id != istiod_id {
            wrong.push(format!("cluster id `{id}` (istiod's is `{istiod_id}`)"));
        }
        // ztunnel's chart sets NETWORK only when a network is given (its `network`, or
        // `global.network`); istiod's is its namespace's label (else its injector's values).
        let cluster_network = network_of(mesh, view);
        if network.as_deref() != cluster_network {
            wrong.push(format!(
                "network `{}` (istiod's is `{}`)",
                network.as_deref().unwrap_or("none"),
                cluster_network.unwrap_or("none")
            ));
        }
        if wrong.is_empty() {
            continue;
        }
        out.push(
            Finding::fail(Some(&view.cluster), "ztunnel", format!(
                "ztunnel claims {}: istiod refuses a ztunnel of another cluster, and east-west routing picks gateways by (network, cluster), so requests to other networks fail (the ztunnel chart's own `multiCluster.clusterName` and `network`, which Istio's Helm steps leave unset)",
                wrong.join(" and ")
            ))
            .fix(format!(
                "`helm upgrade ztunnel istio/ztunnel -n {} --kube-context {} --reuse-values --set multiCluster.clusterName={istiod_id}{}` (`meshup install` sets both)",
                mesh.namespace,
                context(mesh, &view.cluster),
                cluster_network
                    .map(|n| format!(" --set network={n}"))
                    .unwrap_or_default()
            )),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_network_comes_from_the_injector_values() {
        let values = r#"{"global": {"meshID": "mesh1", "network": "network2"}, "revision": ""}"#;
        assert_eq!(network_in_values(values).as_deref(), Some("network2"));
        assert_eq!(network_in_values(r#"{"global": {"network": ""}}"#), None);
        assert_eq!(network_in_values(r#"{"global": {}}"#), None);
        assert_eq!(network_in_values("not json"), None);
    }

    #[test]
    fn the_injector_config_follows_istiods_revision() {
        assert_eq!(injector_config_name("istiod"), "istio-sidecar-injector");
        assert_eq!(
            injector_config_name("istiod-1-30-0"),
            "istio-sidecar-injector-1-30-0"
        );
    }

    #[test]
    fn a_remote_injector_path_names_its_cluster_and_network() {
        assert_eq!(
            identity_in_path("/inject/cluster/cluster2/net/network1"),
            (Some("cluster2".into()), Some("network1".into()))
        );
        assert_eq!(
            identity_in_path("/inject/cluster/cluster2"),
            (Some("cluster2".into()), None)
        );
        assert_eq!(identity_in_path("/inject"), (None, None));
    }

    #[test]
    fn a_webhook_target_is_a_url_or_a_service() {
        let url =
            json!({"clientConfig": {"url": "https://10.0.0.9:15017/inject/cluster/c2/net/n1"}});
        let target = Target::of(&url).unwrap();
        assert_eq!(target.path(), "/inject/cluster/c2/net/n1");
        let service = json!({"clientConfig": {"service": {
            "name": "istiod", "namespace": "istio-system",
            "path": "/inject/cluster/c2/net/n1", "port": 443}}});
        let target = Target::of(&service).unwrap();
        assert_eq!(
            target,
            Target::Service {
                namespace: "istio-system".into(),
                name: "istiod".into(),
                path: "/inject/cluster/c2/net/n1".into()
            }
        );
        assert_eq!(target.describe(), "service `istio-system/istiod`");
        assert_eq!(Target::of(&json!({"clientConfig": {}})), None);
    }

    #[test]
    fn a_remote_is_known_by_its_injectors_service_path() {
        // As Istio's istiod chart renders `profile: remote` without `injectionURL`.
        let hooks = vec![
            json!({"metadata": {"name": "istio-validator-istio-system"}, "webhooks": [
                {"name": "v", "clientConfig": {"service": {"name": "istiod", "namespace": "istio-system", "path": "/validate"}}}]}),
            json!({"metadata": {"name": "istio-sidecar-injector"}, "webhooks": [
                {"name": "rev.namespace.sidecar-injector.istio.io", "clientConfig": {"service": {
                    "name": "istiod", "namespace": "istio-system",
                    "path": "/inject/cluster/cluster2/net/network2", "port": 443}}}]}),
        ];
        assert_eq!(
            injected_identity(&hooks),
            (Some("cluster2".into()), Some("network2".into()))
        );
    }

    #[test]
    fn a_reader_role_grants_configmaps_by_any_of_its_rules() {
        let core = json!({"rules": [
            {"apiGroups": [""], "resources": ["endpoints", "pods", "configmaps"], "verbs": ["get", "list", "watch"]}]});
        assert!(grants_configmaps(&core));
        // Istio 1.28's reader role without configmaps in its core rule, but with the remote
        // profile's `istiodRemote` rule.
        let remote_1_28 = json!({"rules": [
            {"apiGroups": [""], "resources": ["endpoints", "pods", "services"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get", "list", "watch", "update"]}]});
        assert!(grants_configmaps(&remote_1_28));
        let plain_1_28 = json!({"rules": [
            {"apiGroups": [""], "resources": ["endpoints", "pods", "services"], "verbs": ["get", "list", "watch"]}]});
        assert!(!grants_configmaps(&plain_1_28));
        let get_only = json!({"rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]});
        assert!(!grants_configmaps(&get_only));
    }

    /// A two-network mesh file: cluster1 on network1, cluster2 on network2.
    fn two_networks(dataplane: crate::model::mesh::Dataplane) -> Mesh {
        let mut mesh = crate::testing::mesh(2, TrustMode::None);
        mesh.clusters[1].network = Some("network2".into());
        mesh.dataplane = dataplane;
        mesh
    }

    /// A primary as Istio's charts leave it: istiod, its injector's `global.network`, the
    /// namespace label, a sidecar east-west gateway with an IP and `cross-network-gateway`.
    fn primary(cluster: &str, label: Option<&str>, injector: Option<Option<&str>>) -> View {
        View {
            cluster: cluster.into(),
            istiods: vec![Istiod {
                namespace: "istio-system".into(),
                name: "istiod".into(),
                cluster_id: Some(cluster.into()),
                injector_network: injector.map(|n| n.map(str::to_string)),
                ..Istiod::default()
            }],
            namespace_labels: label
                .map(|l| BTreeMap::from([(NETWORK_LABEL.to_string(), l.to_string())]))
                .unwrap_or_default(),
            gateway_service: Some(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}}),
            ),
            cross_network_gateway: true,
            ..View::default()
        }
    }

    fn whys(findings: &[Finding]) -> Vec<String> {
        findings
            .iter()
            .map(|f| format!("[{}] {}", f.cluster.as_deref().unwrap_or("mesh"), f.why))
            .collect()
    }

    #[test]
    fn networks_agree_when_label_and_injector_values_do() {
        let mesh = two_networks(Default::default());
        let (a, b) = (
            primary("cluster1", Some("network1"), Some(Some("network1"))),
            primary("cluster2", Some("network2"), Some(Some("network2"))),
        );
        let found = networks(&mesh, &[&a, &b], &Fixes { mesh: &mesh });
        assert!(found.is_empty(), "{:?}", whys(&found));
    }

    #[test]
    fn a_namespace_relabelled_away_from_the_injectors_network_is_named() {
        let mesh = two_networks(Default::default());
        let (a, b) = (
            primary("cluster1", Some("network1"), Some(Some("network1"))),
            primary("cluster2", Some("other"), Some(Some("network2"))),
        );
        let found = whys(&networks(&mesh, &[&a, &b], &Fixes { mesh: &mesh }));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("[cluster2]"), "{found:?}");
        assert!(found[0].contains("labelled network `other`"), "{found:?}");
        assert!(found[0].contains("`network2`"), "{found:?}");
    }

    #[test]
    fn a_cluster_on_another_network_than_the_mesh_file_says_is_named() {
        let mesh = two_networks(Default::default());
        let (a, b) = (
            primary("cluster1", Some("network1"), Some(Some("network1"))),
            primary("cluster2", Some("network9"), Some(Some("network9"))),
        );
        let found = whys(&networks(&mesh, &[&a, &b], &Fixes { mesh: &mesh }));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("the mesh file puts this cluster on `network2`"),
            "{found:?}"
        );
    }

    #[test]
    fn injector_values_without_a_network_are_named() {
        let mesh = two_networks(Default::default());
        let (a, b) = (
            primary("cluster1", Some("network1"), Some(Some("network1"))),
            primary("cluster2", Some("network2"), Some(None)),
        );
        let found = whys(&networks(&mesh, &[&a, &b], &Fixes { mesh: &mesh }));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("has no `global.network`"), "{found:?}");
    }

    #[test]
    fn ambient_clusters_need_the_istio_east_west_gateway_not_the_sidecar_one() {
        let mesh = two_networks(crate::model::mesh::Dataplane::Ambient);
        let gateway = |network: &str| {
            json!({
                "metadata": {"name": "istio-eastwestgateway", "labels": {NETWORK_LABEL: network}},
                "spec": {"gatewayClassName": "istio-east-west",
                         "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
                "status": {"conditions": [{"type": "Programmed", "status": "True"}]}
            })
        };
        let ambient = |cluster: &str, network: &str| View {
            gateway_service: None,
            cross_network_gateway: false,
            east_west: Some(gateway(network)),
            ztunnel: Some((cluster.into(), Some(network.into()))),
            ..primary(cluster, Some(network), Some(Some(network)))
        };
        let (a, b) = (
            ambient("cluster1", "network1"),
            ambient("cluster2", "network2"),
        );
        let found = networks(&mesh, &[&a, &b], &Fixes { mesh: &mesh });
        assert!(found.is_empty(), "{:?}", whys(&found));
        assert!(ztunnels(&mesh, &[&a, &b]).is_empty());

        let mut unprogrammed = gateway("network1");
        unprogrammed["status"]["conditions"][0] = json!({"type": "Programmed", "status": "False", "reason": "AddressNotAssigned", "message": "no address"});
        unprogrammed["spec"]["listeners"][0]["port"] = json!(15443);
        let a = View {
            east_west: Some(unprogrammed),
            ..ambient("cluster1", "network1")
        };
        let b = View {
            east_west: None,
            ..ambient("cluster2", "network2")
        };
        let found = whys(&networks(&mesh, &[&a, &b], &Fixes { mesh: &mesh }));
        for expected in [
            "[cluster1] Gateway `istio-system/istio-eastwestgateway` has no HBONE listener on 15008",
            "[cluster1] Gateway `istio-system/istio-eastwestgateway` is not Programmed (AddressNotAssigned: no address)",
            "[cluster2] no Gateway of class `istio-east-west`",
        ] {
            assert!(
                found.iter().any(|f| f.starts_with(expected)),
                "{expected}: {found:?}"
            );
        }
        assert_eq!(found.len(), 3, "{found:?}");
    }

    #[test]
    fn an_east_west_gateway_labelled_with_another_network_is_named() {
        let mesh = two_networks(crate::model::mesh::Dataplane::Ambient);
        let a = View {
            gateway_service: None,
            east_west: Some(json!({
                "metadata": {"name": "ew", "labels": {NETWORK_LABEL: "network2"}},
                "spec": {"gatewayClassName": "istio-east-west",
                         "listeners": [{"port": 15008, "protocol": "HBONE"}]},
                "status": {"conditions": [{"type": "Programmed", "status": "True"}]}
            })),
            ..primary("cluster1", Some("network1"), Some(Some("network1")))
        };
        let found = whys(&east_west_gateway_api(&mesh, &a, Some("network1")));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("labelled network `network2` while this cluster is on `network1`"),
            "{found:?}"
        );
    }

    #[test]
    fn a_remotes_injector_service_is_followed_to_its_address() {
        let mut mesh = crate::testing::mesh(2, TrustMode::None);
        mesh.clusters[1].role = Role::Remote {
            primary: "cluster1".into(),
        };
        let primary_view = primary;
        let primary = primary_view("cluster1", Some("network1"), Some(Some("network1")));
        let hook = |ca: &str| {
            json!({"metadata": {"name": "istio-sidecar-injector"}, "webhooks": [
                {"name": "rev.namespace.sidecar-injector.istio.io", "clientConfig": {
                    "service": {"name": "istiod", "namespace": "istio-system",
                                "path": "/inject/cluster/cluster2/net/network1", "port": 443},
                    "caBundle": ca}}]})
        };
        let remote = |ca: &str, address: &str| View {
            cluster: "cluster2".into(),
            mutating: vec![hook(ca)],
            istiod_services: BTreeMap::from([("istiod".into(), json!({"spec": {"ports": []}}))]),
            istiod_endpoints: BTreeMap::from([("istiod".into(), vec![address.to_string()])]),
            control_planes: Some("cluster1".into()),
            ..View::default()
        };
        let healthy = remote("Q0E=", "10.0.0.1");
        let found = remotes(&mesh, &[&primary, &healthy]);
        assert!(found.is_empty(), "{:?}", whys(&found));

        let moved = remote("", "10.9.9.9");
        let found = whys(&remotes(&mesh, &[&primary, &moved]));
        assert!(
            found.iter().any(|f| f.starts_with("[cluster2] webhook `rev.namespace.sidecar-injector.istio.io` of `istio-sidecar-injector` calls service `istio-system/istiod` with an empty caBundle")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|f| f.starts_with("[cluster2] the injector calls 10.9.9.9, but primary `cluster1`'s east-west gateway is at 10.0.0.1")),
            "{found:?}"
        );

        let gone = View {
            istiod_services: BTreeMap::new(),
            ..remote("Q0E=", "10.0.0.1")
        };
        let found = whys(&remotes(&mesh, &[&primary, &gone]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("which does not exist"), "{found:?}");
        // A namespace that does not name the primary: nothing patches the bundle.
        for named in [None, Some("cluster9")] {
            let unled = View {
                control_planes: named.map(str::to_string),
                ..remote("", "10.0.0.1")
            };
            let found = whys(&remotes(&mesh, &[&primary, &unled]));
            assert_eq!(found.len(), 2, "{found:?}");
            assert!(found[0].contains("not primary `cluster1`"), "{found:?}");
            assert!(found[1].contains("empty caBundle"), "{found:?}");
        }
        // The primary's own injector calls its local istiod's Service: nothing to follow.
        let local = View {
            mutating: vec![hook("")],
            ..primary_view("cluster1", Some("network1"), Some(Some("network1")))
        };
        assert!(remotes(&mesh, &[&local]).is_empty());
    }
}
