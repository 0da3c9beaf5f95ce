//! `meshup doctor`: what breaks a multicluster mesh, found across all its clusters at once —
//! also in meshes meshup did not install. Read-only.
//!
//! Two ways in: the mesh file (the mesh as meshup knows it), or only kube contexts, from which
//! the mesh is discovered as the clusters hold it (istiod's `CLUSTER_ID`, its network, the
//! mesh ID in its mesh config). Either way the result is a `Mesh`, walked like `status` and
//! `verify` walk it: every cluster is read once (`View`), the cross-cluster checks below run
//! on the views, and istiod's own view (`verify::read_sync`) and the credentials
//! (`credentials::check`) are the ones `verify` uses. Every finding is the one `Finding` type
//! (level, cluster, what, why it breaks traffic with the Istio issue that shows users hit it,
//! the fix).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::chart::{Charts, DEFAULT_CHARTS};
use crate::components::cacerts;
use crate::components::release::mesh_id_of;
use crate::credentials;
use crate::error::{Error, InputError};
use crate::finding::{Finding, Level};
use crate::kubeconfig::Kubeconfig;
use crate::live::{ConfigMap, Deployment, HelmRelease, Live, Secret};
use crate::mesh::{Cluster, GatewayExposure, Mesh, Role, Trust};
use crate::remote_secret::{self, MULTICLUSTER_LABEL, is_loopback};
use crate::revisions::triple;
use crate::run::{Run, walk};
use crate::runner::StepError;
use crate::sync::{self, State};
use crate::topology::{Choices, Topology};
use crate::trust::TrustMode;
use crate::verify;

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
    network: Option<String>,
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
    mutating: Vec<Value>,
    validating: Vec<Value>,
    service_names: BTreeSet<(String, String)>,
    reader_grants_configmaps: bool,
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
/// istiod's `CLUSTER_ID` (the context when it has none, or shares it with another).
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
    let found = crate::run::parallel(probe.jobs, &provisional.clusters, |c| {
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
                .map(istiod_of)
                .next();
            let primary = cx
                .live
                .get::<crate::live::Namespace>("namespace", "istio-system", None)
                .ok()
                .flatten()
                .and_then(|ns| {
                    ns.metadata
                        .annotations
                        .get("topology.istio.io/controlPlaneClusters")
                        .cloned()
                });
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
            (istiod, primary, mesh_id)
        })
    });
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for (istiod, _, _) in &found {
        if let Some(id) = istiod.as_ref().and_then(|i| i.cluster_id.clone()) {
            *ids.entry(id).or_default() += 1;
        }
    }
    let mut namespace = None;
    let mut mesh_id = None;
    let mut clusters = Vec::new();
    for (context, (istiod, primary, found_mesh_id)) in contexts.iter().zip(found) {
        let name = istiod
            .as_ref()
            .and_then(|i| i.cluster_id.clone())
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
        let network = istiod.and_then(|i| i.network);
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

fn istiod_of(d: &Deployment) -> Istiod {
    Istiod {
        namespace: d.metadata.namespace.clone(),
        name: d.metadata.name.clone(),
        cluster_id: d.env("CLUSTER_ID").map(str::to_string),
        network: d
            .env("ISTIO_META_NETWORK")
            .filter(|n| !n.is_empty())
            .map(str::to_string),
        version: crate::revisions::version_of(d, &[])
            .version
            .map(|v| v.to_string()),
        helm_release: d
            .metadata
            .annotations
            .get("meta.helm.sh/release-name")
            .cloned(),
    }
}

/// Reads every cluster once, runs every check, and says what it found.
pub fn examine(run: &Run) -> Report {
    let mesh = run.mesh;
    let topology = Topology::of(mesh, &Choices::default());
    let views: Vec<View> = walk(run, &topology, |_, cx| read(&cx.live, &mesh.namespace));
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
    let rows = verify::read_sync(run, &topology);
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
fn read(live: &Live, namespace: &str) -> View {
    let mut view = View {
        cluster: live.target.cluster.clone(),
        ..View::default()
    };
    if let Err(e) = live.server_version() {
        view.unreachable = Some(e.to_string());
        return view;
    }
    let _ = fill(live, namespace, &mut view);
    view
}

fn fill(live: &Live, ns: &str, view: &mut View) -> Result<(), StepError> {
    let deployments: Vec<Deployment> = live.list_everywhere("deployments", Some("app=istiod"))?;
    view.istiods = deployments
        .iter()
        .filter(|d| d.metadata.labels.get("app").map(String::as_str) == Some("istiod"))
        .map(istiod_of)
        .collect();
    let labelled: Vec<Secret> = live
        .list_everywhere::<Secret>("secrets", Some(MULTICLUSTER_LABEL))
        .unwrap_or_default();
    let in_ns: Vec<Secret> = live.list("secrets", Some(ns), None).unwrap_or_default();
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
        view.secrets.push(Held {
            namespace: s.metadata.namespace.clone(),
            name: s.metadata.name.clone(),
            label: s.metadata.labels.get(MULTICLUSTER_LABEL).cloned(),
            keys: found.into_iter().map(|f| (f.cluster, f.server)).collect(),
        });
    }
    if let Some(namespace) = live.get::<crate::live::Namespace>("namespace", ns, None)? {
        view.namespace_labels = namespace.metadata.labels;
    }
    if let Some(secret) = in_ns.iter().find(|s| s.metadata.name == "cacerts") {
        view.cacerts = Some((
            secret.data.keys().cloned().collect(),
            cacerts::root_fingerprint(secret).ok().flatten(),
            secret.metadata.creation_timestamp.clone(),
        ));
    }
    let pods: Vec<Value> = live
        .list("pods", Some(ns), Some("app=istiod"))
        .unwrap_or_default();
    view.istiod_started = pods
        .iter()
        .filter_map(|p| p.pointer("/status/startTime").and_then(Value::as_str))
        .min()
        .map(str::to_string);
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
    let namespaces: Vec<crate::live::Namespace> = live.list("namespaces", None, None)?;
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
        if sns == ns
            && (name == crate::values::EAST_WEST_GATEWAY
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
    let gateways: Vec<Value> = live
        .list("gateways.networking.istio.io", Some(ns), None)
        .unwrap_or_default();
    view.cross_network_gateway = gateways
        .iter()
        .any(|g| g["metadata"]["name"] == "cross-network-gateway");
    view.mutating = live
        .list("mutatingwebhookconfigurations", None, None)
        .unwrap_or_default();
    view.validating = live
        .list("validatingwebhookconfigurations", None, None)
        .unwrap_or_default();
    let roles: Vec<Value> = live
        .list("clusterroles", None, Some("app=istio-reader"))
        .unwrap_or_default();
    view.has_reader_role = !roles.is_empty();
    view.reader_grants_configmaps = roles.iter().any(|r| {
        r["rules"].as_array().into_iter().flatten().any(|rule| {
            let listed = |field: &str, v: &str| {
                rule[field]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|x| x == v || x == "*"))
            };
            listed("apiGroups", "") && listed("resources", "configmaps") && listed("verbs", "list")
        })
    });
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
    Ok(())
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
                injected_id(v).unwrap_or_else(|| v.cluster.clone()),
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

/// The cluster id a remote's injector sends to its primary's istiod
/// (`.../inject/cluster/ID/net/NETWORK`, as the remote profile renders it).
fn injected_id(view: &View) -> Option<String> {
    view.mutating
        .iter()
        .flat_map(|hook| hook["webhooks"].as_array().into_iter().flatten())
        .filter_map(|wh| wh["clientConfig"]["url"].as_str())
        .find_map(|url| {
            let (_, rest) = url.split_once("/inject/cluster/")?;
            rest.split('/')
                .next()
                .filter(|id| !id.is_empty())
                .map(str::to_string)
        })
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

/// 6: networks and east-west gateways.
fn networks(mesh: &Mesh, views: &[&View], _: &Fixes) -> Vec<Finding> {
    let mut out = Vec::new();
    let networks: BTreeSet<Option<&str>> = views
        .iter()
        .filter_map(|v| v.istiods.iter().find(|i| i.namespace == mesh.namespace))
        .map(|i| i.network.as_deref())
        .collect();
    let file_networks = mesh.multi_network();
    if networks.len() <= 1 && !file_networks {
        return out;
    }
    for view in views {
        let here = Some(view.cluster.as_str());
        let Some(istiod) = view.istiods.iter().find(|i| i.namespace == mesh.namespace) else {
            continue;
        };
        let label = view.namespace_labels.get(NETWORK_LABEL);
        match (&istiod.network, label) {
            (None, _) => out.push(
                Finding::fail(here, "network", "the mesh spans several networks, but this istiod has no `global.network`: its endpoints are taken to be reachable directly from every network, and requests to them from other networks fail (istio/istio#42516)")
                    .fix("set `global.network` (the mesh file's `network`) and re-install istiod"),
            ),
            (Some(net), None) => out.push(
                Finding::fail(here, "network", format!("namespace `{}` has no `{NETWORK_LABEL}` label: istiod puts the cluster on network `{net}` but the system namespace must say so too, or its endpoints and gateway land on no network (istio/istio#49412)", mesh.namespace))
                    .fix(format!("`kubectl label namespace {} {NETWORK_LABEL}={net} --context {}`", mesh.namespace, context(mesh, &view.cluster))),
            ),
            (Some(net), Some(label)) if label != net => out.push(
                Finding::fail(here, "network", format!("namespace `{}` is labelled network `{label}`, istiod's `global.network` is `{net}`: gateways and endpoints are put on different networks and cross-network traffic goes nowhere (istio/istio#49412)", mesh.namespace))
                    .fix(format!("make them one: `kubectl label namespace {} {NETWORK_LABEL}={net} --overwrite --context {}`", mesh.namespace, context(mesh, &view.cluster))),
            ),
            _ => {}
        }
        if view.istiods.is_empty() {
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
        .filter(|(_, version)| triple(version).is_some_and(|t| (t.0, t.1) >= (1, 29)))
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

/// 10: a remote cluster's injector and istiod address.
fn remotes(mesh: &Mesh, views: &[&View]) -> Vec<Finding> {
    let mut out = Vec::new();
    for view in views {
        let here = Some(view.cluster.as_str());
        for hook in &view.mutating {
            let name = hook["metadata"]["name"].as_str().unwrap_or_default();
            if !name.starts_with("istio-sidecar-injector")
                && !name.starts_with("istio-revision-tag")
            {
                continue;
            }
            for wh in hook["webhooks"].as_array().into_iter().flatten() {
                let config = &wh["clientConfig"];
                let Some(url) = config["url"].as_str() else {
                    continue;
                };
                if config["caBundle"].as_str().unwrap_or_default().is_empty() {
                    out.push(
                        Finding::fail(here, "injector", format!(
                            "webhook `{}` of `{name}` calls {url} with an empty caBundle: the API server cannot verify the remote istiod's certificate and every pod create in injected namespaces fails (istio/istio#42327)",
                            wh["name"].as_str().unwrap_or_default()
                        ))
                        .fix("set `istiodRemote.injectionCABundle`, or let the primary's istiod patch it (it does once it reaches this cluster through its remote secret)"),
                    );
                }
                let host = url
                    .trim_start_matches("https://")
                    .split([':', '/'])
                    .next()
                    .unwrap_or_default();
                let primary = match mesh.cluster(&view.cluster).map(|c| &c.role) {
                    Some(Role::Remote { primary }) => Some(primary.as_str()),
                    _ => None,
                };
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
                    if !addresses.is_empty() && !addresses.contains(&host) {
                        out.push(
                            Finding::fail(here, "injector", format!(
                                "the injector calls {host}, but primary `{primary}`'s east-west gateway is at {}: pods created here are refused or not injected, and proxies cannot reach istiod (remotePilotAddress) (istio/istio#42327)",
                                addresses.join(", ")
                            ))
                            .fix(format!("set `global.remotePilotAddress` to {} and re-install this cluster's istiod (`meshup install` sets it from the gateway)", addresses[0])),
                        );
                    }
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
        if network != &istiod.network {
            wrong.push(format!(
                "network `{}` (istiod's is `{}`)",
                network.as_deref().unwrap_or("none"),
                istiod.network.as_deref().unwrap_or("none")
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
                istiod
                    .network
                    .as_deref()
                    .map(|n| format!(" --set network={n}"))
                    .unwrap_or_default()
            )),
        );
    }
    out
}
