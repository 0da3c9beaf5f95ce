//! Per-cluster Helm values: meshup's defaults, then the mesh's identity, then the mesh file's
//! `values`, then the cluster's own `values`. The result is deterministic (keys sorted) so
//! operators can commit and diff it.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::mesh::{Cluster, Mesh};

/// meshup's defaults for the istio/base chart (charts-values/base.yaml).
pub const BASE_DEFAULTS: &str = include_str!("../charts-values/base.yaml");
/// meshup's defaults for the istio/istiod chart (charts-values/istiod.yaml).
pub const ISTIOD_DEFAULTS: &str = include_str!("../charts-values/istiod.yaml");

/// The two values files of one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterValues {
    pub cluster: String,
    pub base: Mapping,
    pub istiod: Mapping,
}

impl ClusterValues {
    /// `base-values.yaml` as written to disk.
    pub fn base_yaml(&self, mesh: &Mesh) -> String {
        to_yaml(&self.base, &header(mesh, &self.cluster, "istio/base"))
    }

    /// `istiod-values.yaml` as written to disk.
    pub fn istiod_yaml(&self, mesh: &Mesh) -> String {
        to_yaml(&self.istiod, &header(mesh, &self.cluster, "istio/istiod"))
    }
}

/// The values of every cluster, in mesh order.
pub fn render(mesh: &Mesh) -> Vec<ClusterValues> {
    mesh.clusters.iter().map(|c| for_cluster(mesh, c)).collect()
}

/// One cluster's values, layered.
pub fn for_cluster(mesh: &Mesh, cluster: &Cluster) -> ClusterValues {
    let mut base = defaults(BASE_DEFAULTS);
    set(&mut base, &["global", "istioNamespace"], &mesh.namespace);

    let mut istiod = defaults(ISTIOD_DEFAULTS);
    set(&mut istiod, &["global", "meshID"], &mesh.mesh_id);
    set(
        &mut istiod,
        &["global", "multiCluster", "clusterName"],
        &cluster.name,
    );
    if let Some(network) = &cluster.network {
        set(&mut istiod, &["global", "network"], network);
    }
    set(&mut istiod, &["global", "istioNamespace"], &mesh.namespace);
    if let Some(revision) = &mesh.revision {
        set(&mut istiod, &["revision"], revision);
    }
    deep_merge(&mut istiod, &mesh.values);
    deep_merge(&mut istiod, &cluster.values);

    sort(&mut base);
    sort(&mut istiod);
    ClusterValues {
        cluster: cluster.name.clone(),
        base,
        istiod,
    }
}

/// Writes `DIR/<cluster>/base-values.yaml` and `DIR/<cluster>/istiod-values.yaml` for every
/// cluster and returns the paths written. Unchanged files are rewritten with the same bytes.
pub fn write(mesh: &Mesh, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for values in render(mesh) {
        let cluster_dir = dir.join(&values.cluster);
        std::fs::create_dir_all(&cluster_dir)?;
        for (file, text) in [
            ("base-values.yaml", values.base_yaml(mesh)),
            ("istiod-values.yaml", values.istiod_yaml(mesh)),
        ] {
            let path = cluster_dir.join(file);
            std::fs::write(&path, text)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// The values file paths of one cluster below `dir`: (base, istiod).
pub fn paths(dir: &Path, cluster: &str) -> (PathBuf, PathBuf) {
    let cluster_dir = dir.join(cluster);
    (
        cluster_dir.join("base-values.yaml"),
        cluster_dir.join("istiod-values.yaml"),
    )
}

/// Merges `from` into `into`: mappings merge key by key, anything else is replaced.
pub fn deep_merge(into: &mut Mapping, from: &Mapping) {
    for (key, value) in from {
        match (into.get_mut(key), value) {
            (Some(Value::Mapping(existing)), Value::Mapping(incoming)) => {
                deep_merge(existing, incoming)
            }
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Whether the values a release was installed with (`helm get values -o json`) are the ones
/// meshup would install now.
pub fn same_as_deployed(wanted: &Mapping, deployed: &serde_json::Value) -> bool {
    match serde_json::to_value(wanted) {
        Ok(wanted) => same_value(&wanted, deployed),
        Err(_) => false,
    }
}

/// Equality as helm sees values: numbers by value, because helm keeps them as Go floats and
/// prints `1.0` back as `1`.
fn same_value(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (a, b) {
        (J::Number(x), J::Number(y)) => x.as_f64() == y.as_f64(),
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (J::Object(x), J::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

fn defaults(text: &str) -> Mapping {
    match serde_yaml::from_str(text) {
        Ok(Value::Mapping(map)) => map,
        // The files are embedded and covered by a test; an empty one means no defaults.
        _ => Mapping::new(),
    }
}

fn set(map: &mut Mapping, path: &[&str], value: &str) {
    let (last, parents) = path.split_last().expect("a non-empty path");
    let mut node = map;
    for key in parents {
        let entry = node
            .entry(Value::from(*key))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if !entry.is_mapping() {
            *entry = Value::Mapping(Mapping::new());
        }
        node = entry.as_mapping_mut().expect("just made a mapping");
    }
    node.insert(Value::from(*last), Value::from(value));
}

fn sort(map: &mut Mapping) {
    let mut entries: Vec<(Value, Value)> = std::mem::take(map).into_iter().collect();
    entries.sort_by_key(|(a, _)| key_text(a));
    for (key, mut value) in entries {
        if let Value::Mapping(inner) = &mut value {
            sort(inner);
        }
        map.insert(key, value);
    }
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other).unwrap_or_default(),
    }
}

fn header(mesh: &Mesh, cluster: &str, chart: &str) -> String {
    format!(
        "# {chart} values for cluster `{cluster}` of mesh `{}`.\n# Generated by meshup from {}; change that, not this file.\n",
        mesh.mesh_id, mesh.source
    )
}

fn to_yaml(map: &Mapping, header: &str) -> String {
    let body = serde_yaml::to_string(map).expect("values are plain YAML");
    format!("{header}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::TrustMode;

    fn yaml(text: &str) -> Mapping {
        serde_yaml::from_str(text).unwrap()
    }

    /// Two clusters on two networks, mesh-wide values, and cluster2's own override.
    fn mesh() -> Mesh {
        let mut mesh = crate::testing::mesh(2, TrustMode::None);
        mesh.values =
            yaml("pilot: {env: {A: '1', B: '2'}}\nmeshConfig: {accessLogFile: /dev/stdout}");
        mesh.clusters[1].network = Some("network2".into());
        mesh.clusters[1].values = yaml("pilot: {env: {B: override}}");
        mesh
    }

    #[test]
    fn embedded_defaults_parse_as_mappings() {
        assert!(!defaults(BASE_DEFAULTS).is_empty());
        assert!(!defaults(ISTIOD_DEFAULTS).is_empty());
    }

    #[test]
    fn each_cluster_gets_its_own_identity_and_the_shared_mesh_id() {
        let all = render(&mesh());
        let global = |v: &ClusterValues| v.istiod["global"].clone();
        assert_eq!(global(&all[0])["meshID"], "mesh1");
        assert_eq!(global(&all[1])["meshID"], "mesh1");
        assert_eq!(global(&all[0])["multiCluster"]["clusterName"], "cluster1");
        assert_eq!(global(&all[1])["multiCluster"]["clusterName"], "cluster2");
        assert_eq!(global(&all[0])["network"], "network1");
        assert_eq!(global(&all[1])["network"], "network2");
    }

    #[test]
    fn cluster_values_override_mesh_values_which_override_defaults() {
        let all = render(&mesh());
        assert_eq!(all[0].istiod["pilot"]["env"]["B"], "2");
        assert_eq!(all[1].istiod["pilot"]["env"]["B"], "override");
        // Deep merge keeps siblings of an overridden key.
        assert_eq!(all[1].istiod["pilot"]["env"]["A"], "1");
        // The defaults' meshConfig survives the mesh's meshConfig.
        assert_eq!(all[1].istiod["meshConfig"]["trustDomain"], "cluster.local");
        assert_eq!(all[1].istiod["meshConfig"]["accessLogFile"], "/dev/stdout");
    }

    #[test]
    fn revision_and_namespace_reach_the_charts() {
        let mut m = mesh();
        m.revision = Some("canary".into());
        m.namespace = "mesh-system".into();
        let v = for_cluster(&m, &m.clusters[0]);
        assert_eq!(v.istiod["revision"], "canary");
        assert_eq!(v.istiod["global"]["istioNamespace"], "mesh-system");
        assert_eq!(v.base["global"]["istioNamespace"], "mesh-system");
    }

    #[test]
    fn rendering_is_deterministic_and_sorted() {
        let m = mesh();
        let first = render(&m)[1].istiod_yaml(&m);
        let again = render(&m)[1].istiod_yaml(&m);
        assert_eq!(first, again);
        insta::assert_snapshot!(first);
    }

    #[test]
    fn base_values_snapshot() {
        let m = mesh();
        insta::assert_snapshot!(render(&m)[0].base_yaml(&m));
    }

    #[test]
    fn deployed_values_compare_by_content() {
        let m = mesh();
        let v = for_cluster(&m, &m.clusters[0]);
        let deployed = serde_json::to_value(&v.istiod).unwrap();
        assert!(same_as_deployed(&v.istiod, &deployed));
        let mut changed = deployed.clone();
        changed["global"]["meshID"] = "other".into();
        assert!(!same_as_deployed(&v.istiod, &changed));
    }

    #[test]
    fn numbers_compare_by_value_as_helm_prints_them() {
        let wanted = yaml("pilot: {traceSampling: 1.0, replicas: 2}");
        let deployed = serde_json::json!({"pilot": {"traceSampling": 1, "replicas": 2.0}});
        assert!(same_as_deployed(&wanted, &deployed));
        let other = serde_json::json!({"pilot": {"traceSampling": 1.5, "replicas": 2}});
        assert!(!same_as_deployed(&wanted, &other));
    }

    #[test]
    fn write_puts_two_files_per_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let written = write(&mesh(), dir.path()).unwrap();
        assert_eq!(written.len(), 4);
        let text = std::fs::read_to_string(dir.path().join("cluster2/istiod-values.yaml")).unwrap();
        assert!(text.contains("clusterName: cluster2"), "{text}");
    }
}
