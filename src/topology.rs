//! The topology: from the validated mesh, which components each cluster gets, in install order,
//! and which clusters hold whose remote secrets. Decided once, here; nothing downstream
//! re-derives it. Today every cluster is a primary on the mesh's network(s) and watches every
//! other cluster (multi-primary); roles and east-west gateways plug in here.

use std::collections::BTreeMap;

use crate::components::Component;
use crate::components::cacerts::CacertsSecret;
use crate::components::crds::Crds;
use crate::components::namespace::Namespace;
use crate::components::peers::{self, Peers, Source};
use crate::components::reader::Reader;
use crate::components::release::{Istiod, Release};
use crate::components::restart::IstiodRestart;
use crate::mesh::{Cluster, Mesh};
use crate::trust::{Trust, TrustMode};
use crate::values;

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
}

/// One cluster's part of the mesh.
pub struct Node {
    pub cluster: String,
    /// Its components in install order (removal runs them backwards).
    pub components: Vec<Box<dyn Component>>,
}

/// Every cluster's components, and who watches whom.
pub struct Topology {
    pub nodes: Vec<Node>,
    /// For each cluster, the clusters whose remote secrets it holds (whose API servers its
    /// istiod watches).
    pub watches: BTreeMap<String, Vec<String>>,
}

impl Topology {
    /// The mesh as meshup builds it.
    pub fn of(mesh: &Mesh, choices: &Choices) -> Topology {
        let watches: BTreeMap<String, Vec<String>> = mesh
            .clusters
            .iter()
            .map(|c| {
                let peers = mesh
                    .clusters
                    .iter()
                    .filter(|p| p.name != c.name)
                    .map(|p| p.name.clone())
                    .collect();
                (c.name.clone(), peers)
            })
            .collect();
        let nodes = mesh
            .clusters
            .iter()
            .map(|cluster| Node {
                cluster: cluster.name.clone(),
                components: components(mesh, cluster, &watches, choices),
            })
            .collect();
        Topology { nodes, watches }
    }

    pub fn node(&self, cluster: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.cluster == cluster)
    }
}

fn components(
    mesh: &Mesh,
    cluster: &Cluster,
    watches: &BTreeMap<String, Vec<String>>,
    choices: &Choices,
) -> Vec<Box<dyn Component>> {
    let ns = &mesh.namespace;
    let istiod_deployment = mesh.istiod_deployment();
    let trust = mesh.trust.mode != TrustMode::None;
    let mut parts: Vec<Box<dyn Component>> = vec![
        // First, so that removal (which runs backwards) deletes them last.
        Box::new(Crds {
            purge: choices.purge_crds,
        }),
        Box::new(Namespace {
            name: ns.clone(),
            network: cluster.network.clone(),
        }),
    ];
    if trust {
        parts.push(Box::new(CacertsSecret {
            namespace: ns.clone(),
            istiod_deployment: istiod_deployment.clone(),
            ca: choices
                .trust
                .and_then(|t| t.clusters.get(&cluster.name))
                .cloned(),
            files_dir: mesh.trust.dir.join(&cluster.name),
            rotate: choices.rotate_ca,
        }));
    }
    parts.push(Box::new(Release {
        name: "istio-base".into(),
        label: "istio-base",
        chart: mesh.chart("base"),
        namespace: ns.clone(),
        values: values::base(mesh),
        istiod: None,
    }));
    parts.push(Box::new(Release {
        name: mesh.istiod_release(),
        label: "istiod",
        chart: mesh.chart("istiod"),
        namespace: ns.clone(),
        values: values::istiod(mesh, cluster),
        istiod: Some(Istiod {
            deployment: istiod_deployment.clone(),
            mesh_configmap: mesh.mesh_configmap(),
            mesh_id: mesh.mesh_id.clone(),
            cluster_id: cluster.name.clone(),
            revision: mesh.revision.clone().unwrap_or_else(|| "default".into()),
            watches: watches.get(&cluster.name).cloned().unwrap_or_default(),
        }),
    }));
    if trust {
        parts.push(Box::new(IstiodRestart {
            deployment: istiod_deployment,
            namespace: ns.clone(),
            enabled: choices.restart,
        }));
    }
    let watched = watches.values().any(|w| w.contains(&cluster.name));
    if watched {
        parts.push(Box::new(Reader {
            namespace: ns.clone(),
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
        namespace: ns.clone(),
        sources,
        reloads_changed_secrets: peers::reloads_changed_secrets(
            mesh.chart("istiod").version.as_deref(),
        ),
    }));
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::Action;
    use crate::testing::mesh;

    fn labels(node: &Node) -> Vec<&'static str> {
        node.components
            .iter()
            .filter(|c| c.does(Action::Install))
            .map(|c| c.label(Action::Install))
            .collect()
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

    #[test]
    fn a_single_cluster_builds_no_remote_secret_and_trust_none_no_cacerts() {
        let t = Topology::of(&mesh(1, TrustMode::None), &Choices::default());
        assert_eq!(
            labels(&t.nodes[0]),
            ["namespace", "istio-base", "istiod", "link"]
        );
    }
}
