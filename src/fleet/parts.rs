//! The hand-off's parts: what each cluster hands over, the options, the ownership rows,
//! and the YAML helpers both engines' writers share.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::components::Stage;
use crate::components::handoff::Handoff;
use crate::engine::topology::{Choices, Topology};
use crate::model::chart::{Chart, Location};
use crate::model::input::InputError;
use crate::model::mesh::{Mesh, Role};
use crate::observe::revisions::DEFAULT_TAG;

/// The engine that runs the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Flux,
    ArgoCd,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Flux => "Flux",
            Engine::ArgoCd => "Argo CD",
        }
    }
}

/// Where the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// In every cluster, each reconciling its own folder.
    Every,
    /// In one hub cluster, reaching every cluster through a kubeconfig Secret meshup creates
    /// in the hub (never in Git).
    Hub,
}

/// How the export is written.
#[derive(Debug, Clone)]
pub struct Options {
    pub engine: Engine,
    pub layout: Layout,
    /// The engine's namespace: where its objects live (`flux-system`, `argocd`).
    pub namespace: String,
    /// Where the export's folder is in the Git repository the engine reads (`./mesh`).
    pub path: String,
    /// Flux: the source the per-cluster Kustomizations read the folder from (`KIND/NAME`).
    pub source: String,
    /// Argo CD: the Git repository the per-cluster parent Applications read the folder from.
    pub repo_url: Option<String>,
    /// Argo CD: the revision of that repository.
    pub revision: String,
    /// How often the engine reconciles.
    pub interval: String,
}

/// One Helm release of a cluster, in install order.
#[derive(Debug, Clone)]
pub struct ReleasePart {
    pub name: String,
    pub chart: Chart,
    pub namespace: String,
    pub values: Value,
    /// A primary's istiod: it waits for the cluster's `cacerts`.
    pub istiod: bool,
    pub stage: Stage,
}

/// What one cluster hands over, and what meshup keeps.
#[derive(Debug, Clone)]
pub struct ClusterHandoff {
    pub cluster: String,
    /// The releases, in meshup's install order.
    pub releases: Vec<ReleasePart>,
    /// Plain manifests, by file stem.
    pub manifests: Vec<(&'static str, Vec<Value>)>,
    /// What meshup keeps: (what, the command).
    pub kept: Vec<(String, &'static str)>,
}

/// One row of the ownership table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Row {
    pub cluster: String,
    pub object: String,
    /// `Flux`, `Argo CD`, or `meshup`.
    pub owner: String,
    /// The engine's file, or the meshup command that does it.
    pub how: String,
}

/// The files to write (relative to the output folder) and the ownership table.
#[derive(Debug, Clone, Default)]
pub struct Export {
    pub files: BTreeMap<PathBuf, String>,
    pub rows: Vec<Row>,
}

/// The name of the ConfigMap meshup writes into the engine's namespace once a cluster's
/// `cacerts` is in place: its istiod's release reads it (`valuesFrom`, not optional), so the
/// engine cannot start that istiod before.
pub fn trust_gate(cluster: &str) -> String {
    format!("meshup-trust-{cluster}")
}

/// The name of the Secret (in the hub, never in Git) holding the kubeconfig the hub's engine
/// reaches `cluster` with.
pub fn kubeconfig_secret(cluster: &str) -> String {
    format!("meshup-kubeconfig-{cluster}")
}

/// What every cluster hands over, from the mesh's topology.
pub fn handoffs(mesh: &Mesh) -> Vec<ClusterHandoff> {
    let topology = Topology::of(mesh, &Choices::default());
    topology
        .nodes
        .iter()
        .map(|node| {
            let mut out = ClusterHandoff {
                cluster: node.cluster.clone(),
                releases: Vec::new(),
                manifests: Vec::new(),
                kept: Vec::new(),
            };
            for component in &node.components {
                for handoff in component.handoff() {
                    match handoff {
                        Handoff::Release {
                            name,
                            chart,
                            namespace,
                            values,
                            istiod,
                        } => out.releases.push(ReleasePart {
                            name,
                            chart,
                            namespace,
                            values: serde_json::to_value(&values)
                                .expect("Helm values are plain data"),
                            istiod,
                            stage: component.stage(),
                        }),
                        Handoff::Manifests { name, objects } => {
                            out.manifests.push((name, objects));
                        }
                        Handoff::Kept { what, by } => out.kept.push((what, by)),
                    }
                }
            }
            // A named revision holds the `default` tag (the istiod chart's `revisionTags`), as
            // after an upgrade through the engine: `istio-injection=enabled` namespaces are
            // injected by it, as by a revision-less istiod.
            if mesh.revision.is_some() {
                for release in out.releases.iter_mut().filter(|r| r.istiod) {
                    release.values["revisionTags"] = serde_json::json!([DEFAULT_TAG]);
                }
            }
            out
        })
        .collect()
}

/// What an engine cannot run, as bad input naming the field (nothing is written).
pub fn check(mesh: &Mesh, options: &Options) -> Result<(), InputError> {
    let mut problems = Vec::new();
    if mesh.charts.is_local() {
        problems.push(
            "`istio.charts`: a local chart directory cannot be fetched by a fleet engine; name a chart repository (https://…) or an OCI registry (oci://…) that every engine reaches, with `istio.charts` or --charts".to_string(),
        );
    }
    if mesh.version.is_none() {
        problems.push(
            "`istio.version` is not set: an engine would take the newest chart on every reconcile; pin it (or pass --istio-version)".to_string(),
        );
    }
    for cluster in &mesh.clusters {
        if let Role::Remote { primary } = &cluster.role
            && mesh
                .cluster(primary)
                .is_none_or(|p| p.gateway.address.is_none())
        {
            problems.push(format!(
                "`clusters[{}]`: the remote `{}` needs its primary's east-west gateway address in the exported values (meshup reads it from the live gateway, an engine cannot): set `eastWestGateway.address` on `{primary}`",
                mesh.clusters.iter().position(|c| c.name == cluster.name).unwrap_or_default(),
                cluster.name
            ));
        }
    }
    if options.engine == Engine::ArgoCd && options.repo_url.is_none() {
        problems.push(
            "--repo-url is required for Argo CD: each cluster's parent Application reads its folder from that Git repository".to_string(),
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(InputError {
            source: mesh.source.clone(),
            problems,
        })
    }
}

/// The first line of the README an export writes (how a later export knows the folder is
/// its own).
pub const README_TITLE: &str = "# The mesh, handed to";

/// The table as `export --list` prints it.
pub fn render_rows(rows: &[Row]) -> String {
    let width = |f: fn(&Row) -> &str, head: &str| {
        rows.iter()
            .map(|r| f(r).len())
            .chain([head.len()])
            .max()
            .unwrap_or_default()
    };
    let (c, o, w) = (
        width(|r| &r.cluster, "CLUSTER"),
        width(|r| &r.object, "OBJECT"),
        width(|r| &r.owner, "OWNER"),
    );
    let mut text = format!("{:c$}  {:o$}  {:w$}  HOW\n", "CLUSTER", "OBJECT", "OWNER");
    for row in rows {
        text.push_str(&format!(
            "{:c$}  {:o$}  {:w$}  {}\n",
            row.cluster, row.object, row.owner, row.how
        ));
    }
    text
}

/// Where a chart comes from, for an engine's source: (kind, url).
pub fn chart_source(chart: &Chart) -> (&'static str, String) {
    match &chart.location {
        Location::Repo(url) => ("helm", url.clone()),
        Location::Oci(url) => ("oci", url.clone()),
        Location::Local(path) => ("local", path.display().to_string()),
    }
}

/// Writes a cluster's plain manifests into `CLUSTER/objects/`, one file per group, each object
/// a row owned by `owner`; returns the files written, in order.
pub fn write_manifests(export: &mut Export, part: &ClusterHandoff, owner: &str) -> Vec<String> {
    let objects_dir = PathBuf::from(&part.cluster).join("objects");
    let mut files = Vec::new();
    for (stem, objects) in &part.manifests {
        let file = format!("{stem}.yaml");
        export
            .files
            .insert(objects_dir.join(&file), yaml_all(objects));
        for object in objects {
            export.rows.push(Row {
                cluster: part.cluster.clone(),
                object: format!(
                    "{} `{}`",
                    object["kind"].as_str().unwrap_or_default(),
                    object["metadata"]["name"].as_str().unwrap_or_default()
                ),
                owner: owner.into(),
                how: format!("plain manifest: {}", objects_dir.join(&file).display()),
            });
        }
        files.push(file);
    }
    files
}

/// One YAML document from plain data (keys sorted: serde_json's maps are ordered by key).
pub fn yaml(value: &Value) -> String {
    serde_yaml::to_string(value).expect("plain JSON is valid YAML")
}

/// Several YAML documents in one file.
pub fn yaml_all(values: &[Value]) -> String {
    values.iter().map(yaml).collect::<Vec<_>>().join("---\n")
}

/// A kustomize `kustomization.yaml` listing `resources`.
pub fn kustomization(resources: &[String]) -> String {
    yaml(&serde_json::json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
    }))
}
