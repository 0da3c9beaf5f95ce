//! The topology: from the validated mesh, which components each cluster gets, in install order,
//! and which clusters hold whose remote secrets. Decided once, here; nothing downstream
//! re-derives it.
//!
//! - Every primary runs istiod and watches every other primary and every remote cluster (it
//!   holds their remote secrets). A remote runs no istiod and watches nothing.
//! - When the clusters sit on more than one network, every cluster gets an east-west gateway
//!   (Istio's `gateway` chart) and the `cross-network-gateway`.
//! - A primary that controls remote clusters gets `global.externalIstiod`, an east-west
//!   gateway, and istiod exposed through it; its remotes get the `remote` profile pointing at
//!   that gateway, installed once the primary is up.

use std::collections::BTreeMap;

use serde_yaml::Mapping;

use crate::components::ambient::{GatewayApiCrds, HboneGateway, NodeAgents};
use crate::components::cacerts::CacertsSecret;
use crate::components::crds::Crds;
use crate::components::eastwest::EastWest;
use crate::components::namespace::CONTROL_PLANE_ANNOTATION;
use crate::components::namespace::Namespace;
use crate::components::peers::{Peers, Source};
use crate::components::reader::Reader;
use crate::components::release::{Istiod, Release};
use crate::components::restart::IstiodRestart;
use crate::components::tags::RevisionTags;
use crate::components::{Component, Stage};
use crate::model::mesh::{Cluster, Mesh, Role};
use crate::model::values;
use crate::trust::{Trust, TrustMode};

/// The user's choices that shape the components of a run. Commands that only read take the
/// default.
#[derive(Debug, Default, Clone, Copy)]
pub struct Choices<'a> {
    /// The CA material `install` puts into `cacerts`.
    pub trust: Option<&'a Trust>,
    /// `install --rotate-ca`.
    pub rotate_ca: bool,
    /// `install --restart`.
    pub restart: bool,
    /// `uninstall --purge-crds`.
    pub purge_crds: bool,
    /// Helm 4 runs the releases: pass `--force-conflicts` (see `helm::Install`).
    pub force_conflicts: bool,
    /// `install --repair`: converge drifted objects of the releases too (`observe::drift`).
    pub repair: bool,
}

/// One cluster's part of the mesh.
pub struct ClusterParts {
    pub cluster: String,
    /// For a remote cluster (no istiod of its own), the primary whose istiod controls it.
    pub primary: Option<String>,
    /// Its components in install order (removal runs them backwards).
    pub components: Vec<Box<dyn Component>>,
}

/// Every cluster's components, and who watches whom.
pub struct Topology {
    pub nodes: Vec<ClusterParts>,
    /// For each cluster, the clusters whose remote secrets it holds (whose API servers its
    /// istiod watches).
    pub watches: BTreeMap<String, Vec<String>>,
    /// The `istio.io/rev` label of every istiod pod: the mesh's revision, or `default`.
    pub revision: String,
}

impl ClusterParts {
    /// A remote cluster: no istiod of its own.
    pub fn remote(&self) -> bool {
        self.primary.is_some()
    }
}

impl Topology {
    /// The mesh as meshup builds it.
    pub fn of(mesh: &Mesh, choices: &Choices) -> Topology {
        let watches = watches(mesh);
        let nodes = mesh
            .clusters
            .iter()
            .map(|cluster| ClusterParts {
                cluster: cluster.name.clone(),
                primary: match &cluster.role {
                    Role::Remote { primary } => Some(primary.clone()),
                    Role::Primary => None,
                },
                components: components(mesh, cluster, &watches, choices),
            })
            .collect();
        Topology {
            nodes,
            watches,
            revision: revision(mesh),
        }
    }

    pub fn node(&self, cluster: &str) -> Option<&ClusterParts> {
        self.nodes.iter().find(|n| n.cluster == cluster)
    }
}

/// For each cluster, the clusters whose remote secrets it holds: a primary watches every
/// other cluster, a remote none.
pub fn watches(mesh: &Mesh) -> BTreeMap<String, Vec<String>> {
    mesh.clusters
        .iter()
        .map(|c| {
            let peers = match c.role {
                Role::Primary => mesh
                    .clusters
                    .iter()
                    .filter(|p| p.name != c.name)
                    .map(|p| p.name.clone())
                    .collect(),
                Role::Remote { .. } => Vec::new(),
            };
            (c.name.clone(), peers)
        })
        .collect()
}

/// One cluster's components, as [`Topology::of`] gives them, without building the others'.
pub fn parts_of(mesh: &Mesh, cluster: &str, choices: &Choices) -> Vec<Box<dyn Component>> {
    mesh.cluster(cluster)
        .map(|c| components(mesh, c, &watches(mesh), choices))
        .unwrap_or_default()
}

/// The `istio.io/rev` label istiod's pods carry (the chart's `istiod.rev`).
fn revision(mesh: &Mesh) -> String {
    mesh.revision.clone().unwrap_or_else(|| "default".into())
}

fn components(
    mesh: &Mesh,
    cluster: &Cluster,
    watches: &BTreeMap<String, Vec<String>>,
    choices: &Choices,
) -> Vec<Box<dyn Component>> {
    let site = Site::of(mesh, cluster, choices);
    let mut parts = foundation(&site, choices);
    parts.extend(control_plane(&site, watches, choices));
    if mesh.ambient() {
        parts.extend(node_agents(&site));
    } else if mesh.multi_network() || site.serves_remotes {
        parts.extend(east_west(&site));
    }
    parts.extend(remote_secrets(&site, watches));
    parts
}

/// What decides the shape of one cluster's parts.
struct Site<'a> {
    mesh: &'a Mesh,
    cluster: &'a Cluster,
    ns: &'a String,
    /// For a remote cluster, its primary.
    remote: Option<String>,
    /// When its own releases install: a remote's istiod and what depends on it wait for the
    /// primaries.
    own_stage: Stage,
    /// Whether it gets `cacerts` (a remote's istiod does not sign).
    trust: bool,
    /// Whether remotes are controlled from here (its istiod is exposed to them).
    serves_remotes: bool,
    force_conflicts: bool,
    /// `install --repair`: its releases converge drifted objects too.
    repair: bool,
}

impl<'a> Site<'a> {
    fn of(mesh: &'a Mesh, cluster: &'a Cluster, choices: &Choices) -> Self {
        let remote = match &cluster.role {
            Role::Remote { primary } => Some(primary.clone()),
            Role::Primary => None,
        };
        Site {
            mesh,
            cluster,
            ns: &mesh.namespace,
            own_stage: if remote.is_some() {
                Stage::Remote
            } else {
                Stage::Cluster
            },
            trust: mesh.trust.mode != TrustMode::None && remote.is_none(),
            remote,
            serves_remotes: mesh.remotes_of(&cluster.name).next().is_some(),
            force_conflicts: choices.force_conflicts,
            repair: choices.repair,
        }
    }

    /// A release of `chart` that runs no istiod, at this cluster's own stage.
    fn release(&self, name: &str, label: &'static str, chart: &str, values: Mapping) -> Release {
        Release {
            name: name.into(),
            label,
            chart: self.mesh.chart(chart),
            namespace: self.ns.clone(),
            values,
            istiod: None,
            stage: self.own_stage,
            pilot_from: None,
            force_conflicts: self.force_conflicts,
            repair: self.repair,
        }
    }
}

/// The CRDs (first, so that removal deletes them last), the namespace with its network
/// label, and `cacerts`.
fn foundation(site: &Site, choices: &Choices) -> Vec<Box<dyn Component>> {
    let (mesh, cluster) = (site.mesh, site.cluster);
    let mut parts: Vec<Box<dyn Component>> = vec![
        Box::new(Crds {
            purge: choices.purge_crds,
        }),
        Box::new(Namespace {
            name: site.ns.clone(),
            network: cluster.network.clone(),
            annotations: site
                .remote
                .iter()
                .map(|p| (CONTROL_PLANE_ANNOTATION.to_string(), p.clone()))
                .collect(),
        }),
    ];
    if site.trust {
        parts.push(Box::new(CacertsSecret {
            namespace: site.ns.clone(),
            istiod_deployment: mesh.istiod_deployment(),
            ca: choices
                .trust
                .and_then(|t| t.clusters.get(&cluster.name))
                .cloned(),
            files_dir: mesh.trust.dir.join(&cluster.name),
            rotate: choices.rotate_ca,
        }));
    }
    parts
}

/// istio-base, the Gateway API CRDs for ambient, istiod, the revision tags, and istiod's
/// restart after a new `cacerts`.
fn control_plane(
    site: &Site,
    watches: &BTreeMap<String, Vec<String>>,
    choices: &Choices,
) -> Vec<Box<dyn Component>> {
    let (mesh, cluster, ns) = (site.mesh, site.cluster, site.ns);
    let istiod_deployment = mesh.istiod_deployment();
    let mut parts: Vec<Box<dyn Component>> = vec![Box::new(Release {
        stage: Stage::Cluster,
        ..site.release(
            "istio-base",
            "istio-base",
            "base",
            values::base(mesh, cluster),
        )
    })];
    if mesh.ambient() {
        parts.push(Box::new(GatewayApiCrds {
            source: mesh.gateway_api_crds.clone(),
            istio_version: mesh.chart("istiod").version,
        }));
    }
    let primary_has_address = site
        .remote
        .as_ref()
        .and_then(|p| mesh.cluster(p))
        .is_some_and(|p| p.gateway.address.is_some());
    parts.push(Box::new(Release {
        name: mesh.istiod_release(),
        istiod: site.remote.is_none().then(|| Istiod {
            deployment: istiod_deployment.clone(),
            mesh_configmap: mesh.mesh_configmap(),
            mesh_id: mesh.mesh_id.clone(),
            cluster_id: cluster.name.clone(),
            revision: revision(mesh),
            watches: watches.get(&cluster.name).cloned().unwrap_or_default(),
        }),
        pilot_from: site.remote.clone().filter(|_| !primary_has_address),
        ..site.release("istiod", "istiod", "istiod", values::istiod(mesh, cluster))
    }));
    if site.remote.is_none() {
        // After istiod in install order, so that removal takes the tags away first.
        parts.push(Box::new(RevisionTags {
            namespace: ns.clone(),
        }));
    }
    if site.trust {
        parts.push(Box::new(IstiodRestart {
            deployment: istiod_deployment,
            namespace: ns.clone(),
            enabled: choices.restart,
        }));
    }
    parts
}

/// Ambient's node agents after the control plane (and removed before it); then the HBONE
/// east-west gateway, which istiod deploys (removed first).
fn node_agents(site: &Site) -> Vec<Box<dyn Component>> {
    let (mesh, cluster) = (site.mesh, site.cluster);
    vec![
        Box::new(site.release("istio-cni", "istio-cni", "cni", values::cni(mesh))),
        Box::new(site.release(
            "ztunnel",
            "ztunnel",
            "ztunnel",
            values::ztunnel(mesh, cluster),
        )),
        Box::new(NodeAgents {
            namespace: site.ns.clone(),
        }),
        Box::new(HboneGateway {
            namespace: site.ns.clone(),
            network: cluster.network.clone(),
            stage: site.own_stage,
        }),
    ]
}

/// A sidecar mesh's east-west gateway, where traffic crosses networks or remotes reach their
/// primary's istiod.
fn east_west(site: &Site) -> Vec<Box<dyn Component>> {
    let (mesh, cluster, ns) = (site.mesh, site.cluster, site.ns);
    vec![
        Box::new(site.release(
            values::EAST_WEST_GATEWAY,
            "east-west gateway release",
            "gateway",
            values::east_west_gateway(mesh, cluster),
        )),
        Box::new(EastWest {
            namespace: ns.clone(),
            stage: site.own_stage,
            address: cluster.gateway.address.clone(),
            cross_network: mesh.multi_network(),
            expose_istiod: site
                .serves_remotes
                .then(|| format!("{}.{ns}.svc.cluster.local", mesh.istiod_deployment())),
        }),
    ]
}

/// The reader other clusters' istiods use here (when some istiod watches this cluster), and
/// the remote secrets of the clusters this one watches.
fn remote_secrets(site: &Site, watches: &BTreeMap<String, Vec<String>>) -> Vec<Box<dyn Component>> {
    let (mesh, cluster) = (site.mesh, site.cluster);
    let mut parts: Vec<Box<dyn Component>> = Vec::new();
    if watches.values().any(|w| w.contains(&cluster.name)) {
        parts.push(Box::new(Reader {
            namespace: site.ns.clone(),
            server: cluster.server.clone(),
        }));
    }
    let sources = watches
        .get(&cluster.name)
        .into_iter()
        .flatten()
        .filter_map(|name| mesh.cluster(name))
        .map(|peer| Source {
            name: peer.name.clone(),
            context: peer.context.clone(),
            server: peer.server.clone(),
            server_overridden: peer.server_overridden,
        })
        .collect();
    parts.push(Box::new(Peers {
        namespace: site.ns.clone(),
        sources,
    }));
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::Action;
    use crate::model::mesh::Role;
    use crate::testing::mesh;

    fn labels(node: &ClusterParts) -> Vec<&'static str> {
        node.components
            .iter()
            .filter(|c| c.acts_on(Action::Install))
            .map(|c| c.label(Action::Install))
            .collect()
    }

    /// Two ambient clusters on two networks.
    fn ambient() -> Mesh {
        let mut m = mesh(2, TrustMode::Generate);
        m.dataplane = crate::model::mesh::Dataplane::Ambient;
        m.clusters[1].network = Some("network2".into());
        m
    }

    #[test]
    fn an_ambient_cluster_installs_node_agents_after_istiod_and_its_gateway_last() {
        let t = Topology::of(&ambient(), &Choices::default());
        assert_eq!(
            labels(&t.nodes[0]),
            [
                "namespace",
                "cacerts",
                "istio-base",
                "Gateway API CRDs",
                "istiod",
                "istiod restart",
                "istio-cni",
                "ztunnel",
                "node agents",
                "east-west gateway",
                "remote secret",
                "link"
            ]
        );
        let removal: Vec<&str> = t.nodes[0]
            .components
            .iter()
            .rev()
            .filter(|c| c.acts_on(Action::Remove))
            .map(|c| c.label(Action::Remove))
            .collect();
        // The Gateway first; ztunnel and istio-cni before istiod; the CRDs stay.
        assert_eq!(
            removal,
            [
                "remote secrets",
                "east-west gateway",
                "ztunnel",
                "istio-cni",
                "revision tags",
                "istiod",
                "istio-base",
                "namespace"
            ]
        );
    }

    #[test]
    fn ztunnel_gets_istiods_cluster_name_and_network() {
        let m = ambient();
        let istiod = values::istiod(&m, &m.clusters[1]);
        let ztunnel = values::ztunnel(&m, &m.clusters[1]);
        assert_eq!(
            ztunnel["multiCluster"]["clusterName"],
            istiod["global"]["multiCluster"]["clusterName"]
        );
        assert_eq!(ztunnel["network"], istiod["global"]["network"]);
        assert_eq!(ztunnel["network"], "network2");
        assert_eq!(istiod["profile"], "ambient");
        assert_eq!(
            istiod["pilot"]["env"]["AMBIENT_ENABLE_MULTI_NETWORK"],
            "true"
        );
        assert_eq!(m.charts_needed(), ["base", "istiod", "cni", "ztunnel"]);
    }

    #[test]
    fn every_cluster_watches_every_other() {
        let t = Topology::of(&mesh(3, TrustMode::None), &Choices::default());
        assert_eq!(t.watches["cluster1"], ["cluster2", "cluster3"]);
        assert_eq!(t.watches["cluster3"], ["cluster1", "cluster2"]);
    }

    #[test]
    fn a_cluster_installs_namespace_trust_charts_then_its_secret_and_link() {
        let t = Topology::of(&mesh(2, TrustMode::Generate), &Choices::default());
        assert_eq!(
            labels(&t.nodes[0]),
            [
                "namespace",
                "cacerts",
                "istio-base",
                "istiod",
                "istiod restart",
                "remote secret",
                "link"
            ]
        );
    }

    /// cluster1 and cluster2 primaries, cluster3 a remote of cluster1; cluster3 on `networks[2]`.
    fn mixed(networks: [&str; 3]) -> Mesh {
        let mut m = mesh(3, TrustMode::Generate);
        for (c, n) in m.clusters.iter_mut().zip(networks) {
            c.network = Some(n.into());
        }
        m.clusters[2].role = Role::Remote {
            primary: "cluster1".into(),
        };
        m
    }

    fn stage_labels(node: &ClusterParts, stage: Stage) -> Vec<&'static str> {
        node.components
            .iter()
            .filter(|c| c.acts_on(Action::Install) && c.stage() == stage)
            .map(|c| c.label(Action::Install))
            .collect()
    }

    #[test]
    fn primaries_watch_every_other_cluster_and_remotes_watch_none() {
        let t = Topology::of(&mixed(["n1", "n1", "n1"]), &Choices::default());
        assert_eq!(t.watches["cluster1"], ["cluster2", "cluster3"]);
        assert_eq!(t.watches["cluster2"], ["cluster1", "cluster3"]);
        assert!(t.watches["cluster3"].is_empty());
    }

    #[test]
    fn a_primary_with_remotes_gets_a_gateway_and_its_remote_waits_for_it() {
        let t = Topology::of(&mixed(["n1", "n1", "n1"]), &Choices::default());
        assert_eq!(
            labels(&t.nodes[0]),
            [
                "namespace",
                "cacerts",
                "istio-base",
                "istiod",
                "istiod restart",
                "east-west gateway release",
                "east-west gateway",
                "remote secret",
                "link"
            ]
        );
        // One network, no remotes: no gateway.
        assert!(!labels(&t.nodes[1]).contains(&"east-west gateway"));
        // The remote: no cacerts, no restart; its istiod after the primaries.
        assert_eq!(
            stage_labels(&t.nodes[2], Stage::Cluster),
            ["namespace", "istio-base", "remote secret"]
        );
        assert_eq!(stage_labels(&t.nodes[2], Stage::Remote), ["istiod"]);
        let plan = crate::engine::plan::install(&t);
        assert_eq!(plan.waves.len(), 3);
    }

    #[test]
    fn on_several_networks_every_cluster_gets_a_gateway() {
        let t = Topology::of(&mixed(["n1", "n1", "n2"]), &Choices::default());
        for node in &t.nodes {
            assert!(
                labels(node).contains(&"east-west gateway"),
                "{}",
                node.cluster
            );
        }
        // A remote's gateway comes with its istiod.
        assert_eq!(
            stage_labels(&t.nodes[2], Stage::Remote),
            ["istiod", "east-west gateway release", "east-west gateway"]
        );
    }

    #[test]
    fn uninstall_takes_remotes_first_and_gateways_before_istiod() {
        let t = Topology::of(&mixed(["n1", "n2", "n2"]), &Choices::default());
        let plan = crate::engine::plan::uninstall(&t);
        assert_eq!(plan.waves.len(), 2);
        assert_eq!(plan.waves[0].chains.len(), 1);
        assert_eq!(plan.waves[0].chains[0].cluster, "cluster3");
        assert_eq!(
            plan.waves[1].chains[0].labels(),
            [
                "remote secrets",
                "east-west gateway",
                "east-west gateway release",
                "revision tags",
                "istiod",
                "istio-base",
                "namespace"
            ]
        );
    }

    #[test]
    fn a_single_cluster_builds_no_remote_secret_and_trust_none_no_cacerts() {
        let t = Topology::of(&mesh(1, TrustMode::None), &Choices::default());
        assert_eq!(
            labels(&t.nodes[0]),
            ["namespace", "istio-base", "istiod", "link"]
        );
    }
}
