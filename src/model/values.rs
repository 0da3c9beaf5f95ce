//! Per-cluster Helm values: meshup's defaults, then the mesh's identity, then the mesh file's
//! `values`, then the cluster's own `values`. The result is deterministic (keys sorted) so
//! operators can commit and diff it.

use serde_yaml::{Mapping, Value};

use crate::model::mesh::{Cluster, Mesh, Role};

/// meshup's defaults for the istio/base chart (charts-values/base.yaml).
pub const BASE_DEFAULTS: &str = include_str!("../../charts-values/base.yaml");
/// meshup's defaults for the istio/istiod chart (charts-values/istiod.yaml).
pub const ISTIOD_DEFAULTS: &str = include_str!("../../charts-values/istiod.yaml");

/// The istio/base values of one cluster.
pub fn base(mesh: &Mesh, cluster: &Cluster) -> Mapping {
    let mut base = defaults(BASE_DEFAULTS);
    set(&mut base, &["global", "istioNamespace"], &mesh.namespace);
    if matches!(cluster.role, Role::Remote { .. }) {
        set(&mut base, &["profile"], "remote");
    }
    // The default validator (and, in Istio's upgrade guide, "the default revision") points
    // at the mesh's revision.
    if let Some(revision) = &mesh.revision {
        set(&mut base, &["defaultRevision"], revision);
    }
    sort(&mut base);
    base
}

/// The name of the east-west gateway (release, Deployment, Service).
pub const EAST_WEST_GATEWAY: &str = "istio-eastwestgateway";

/// The istio/gateway values of one cluster's east-west gateway.
pub fn east_west_gateway(mesh: &Mesh, cluster: &Cluster) -> Mapping {
    let mut values = Mapping::new();
    set(&mut values, &["name"], EAST_WEST_GATEWAY);
    set(&mut values, &["labels", "istio"], "eastwestgateway");
    set(&mut values, &["labels", "app"], EAST_WEST_GATEWAY);
    // `networkGateway` alone labels the Service and the pods `topology.istio.io/network`:
    // the same label in `labels` too renders it twice in one mapping, which helm lets pass
    // but a strict YAML parser refuses (Flux's post-renderer: "mapping key ... already
    // defined"), so the exported release could never install.
    if let Some(network) = &cluster.network {
        set(&mut values, &["networkGateway"], network);
    }
    if let Some(revision) = &mesh.revision {
        set(&mut values, &["revision"], revision);
    }
    set(
        &mut values,
        &["service", "type"],
        cluster.gateway.service_type.name(),
    );
    if let Some(address) = &cluster.gateway.address {
        values
            .entry(Value::from("service"))
            .or_insert_with(|| Value::Mapping(Mapping::new()))
            .as_mapping_mut()
            .expect("service is a mapping")
            .insert(
                Value::from("externalIPs"),
                Value::Sequence(vec![Value::from(address.as_str())]),
            );
    }
    sort(&mut values);
    values
}

/// The istio/istiod values of one cluster, layered.
pub fn istiod(mesh: &Mesh, cluster: &Cluster) -> Mapping {
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
    if mesh.ambient() {
        // Istio's ambient profile, and east-west routing across networks, which istiod keeps
        // off by default (pilot/pkg/features/ambient.go, 1.29–1.31).
        set(&mut istiod, &["profile"], "ambient");
        set(
            &mut istiod,
            &["pilot", "env", "AMBIENT_ENABLE_MULTI_NETWORK"],
            "true",
        );
    }
    match &cluster.role {
        Role::Remote { primary } => {
            set(&mut istiod, &["profile"], "remote");
            let injection = match &cluster.network {
                Some(network) => format!("/inject/cluster/{}/net/{network}", cluster.name),
                None => format!("/inject/cluster/{}", cluster.name),
            };
            set(&mut istiod, &["istiodRemote", "injectionPath"], &injection);
            // With an address given for the primary's gateway, it is known now; else meshup
            // sets it at install, from the primary's gateway (see `Release::pilot_from`).
            if let Some(address) = mesh
                .cluster(primary)
                .and_then(|p| p.gateway.address.as_ref())
            {
                set(&mut istiod, &["global", "remotePilotAddress"], address);
            }
        }
        Role::Primary => {
            if mesh.remotes_of(&cluster.name).next().is_some() {
                set_bool(&mut istiod, &["global", "externalIstiod"], true);
            }
        }
    }
    deep_merge(&mut istiod, &mesh.values);
    deep_merge(&mut istiod, &cluster.values);
    sort(&mut istiod);
    istiod
}

/// The istio/cni values of one cluster (ambient).
pub fn cni(mesh: &Mesh) -> Mapping {
    let mut values = Mapping::new();
    set(&mut values, &["profile"], "ambient");
    set(&mut values, &["global", "istioNamespace"], &mesh.namespace);
    if let Some(revision) = &mesh.revision {
        set(&mut values, &["revision"], revision);
    }
    sort(&mut values);
    values
}

/// The istio/ztunnel values of one cluster (ambient). ztunnel's chart takes its own
/// `multiCluster.clusterName` (default `Kubernetes`) and `network`
/// (manifests/charts/ztunnel/templates/daemonset.yaml): they must be istiod's, or the
/// east-west routing that picks gateways by (network, cluster) breaks.
pub fn ztunnel(mesh: &Mesh, cluster: &Cluster) -> Mapping {
    let mut values = Mapping::new();
    set(&mut values, &["profile"], "ambient");
    set(&mut values, &["multiCluster", "clusterName"], &cluster.name);
    if let Some(network) = &cluster.network {
        set(&mut values, &["network"], network);
    }
    set(&mut values, &["istioNamespace"], &mesh.namespace);
    set(&mut values, &["global", "istioNamespace"], &mesh.namespace);
    if let Some(revision) = &mesh.revision {
        set(&mut values, &["revision"], revision);
    }
    sort(&mut values);
    values
}

/// The file a chart's values are rendered to, below the cluster's directory.
pub fn file_name(chart: &str) -> String {
    format!("{chart}-values.yaml")
}

/// A values file as written to disk: a header naming what made it, then sorted YAML.
pub fn file_text(mesh: &Mesh, cluster: &str, chart: &str, values: &Mapping) -> String {
    let header = format!(
        "# istio/{chart} values for cluster `{cluster}` of mesh `{}`.\n# Generated by meshup from {}; change that, not this file.\n",
        mesh.mesh_id, mesh.source
    );
    let body = serde_yaml::to_string(values).expect("values are plain YAML");
    format!("{header}{body}")
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

fn set_bool(map: &mut Mapping, path: &[&str], value: bool) {
    set(map, path, "");
    let (last, parents) = path.split_last().expect("a non-empty path");
    let mut node = map;
    for key in parents {
        node = node
            .get_mut(*key)
            .and_then(Value::as_mapping_mut)
            .expect("set made the parents");
    }
    node.insert(Value::from(*last), Value::Bool(value));
}

/// Sets `path` in `map` to `value`, making the mappings on the way.
pub fn set(map: &mut Mapping, path: &[&str], value: &str) {
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

    fn values(m: &Mesh) -> Vec<Mapping> {
        m.clusters.iter().map(|c| istiod(m, c)).collect()
    }

    #[test]
    fn embedded_defaults_parse_as_mappings() {
        assert!(!defaults(BASE_DEFAULTS).is_empty());
        assert!(!defaults(ISTIOD_DEFAULTS).is_empty());
    }

    #[test]
    fn each_cluster_gets_its_own_identity_and_the_shared_mesh_id() {
        let all = values(&mesh());
        let global = |v: &Mapping| v["global"].clone();
        assert_eq!(global(&all[0])["meshID"], "mesh1");
        assert_eq!(global(&all[1])["meshID"], "mesh1");
        assert_eq!(global(&all[0])["multiCluster"]["clusterName"], "cluster1");
        assert_eq!(global(&all[1])["multiCluster"]["clusterName"], "cluster2");
        assert_eq!(global(&all[0])["network"], "network1");
        assert_eq!(global(&all[1])["network"], "network2");
    }

    #[test]
    fn cluster_values_override_mesh_values_which_override_defaults() {
        let all = values(&mesh());
        assert_eq!(all[0]["pilot"]["env"]["B"], "2");
        assert_eq!(all[1]["pilot"]["env"]["B"], "override");
        // Deep merge keeps siblings of an overridden key.
        assert_eq!(all[1]["pilot"]["env"]["A"], "1");
        // The defaults' meshConfig survives the mesh's meshConfig.
        assert_eq!(all[1]["meshConfig"]["trustDomain"], "cluster.local");
        assert_eq!(all[1]["meshConfig"]["accessLogFile"], "/dev/stdout");
    }

    #[test]
    fn revision_and_namespace_reach_the_charts() {
        let mut m = mesh();
        m.revision = Some("canary".into());
        m.namespace = "mesh-system".into();
        let v = istiod(&m, &m.clusters[0]);
        assert_eq!(v["revision"], "canary");
        assert_eq!(v["global"]["istioNamespace"], "mesh-system");
        assert_eq!(
            base(&m, &m.clusters[0])["global"]["istioNamespace"],
            "mesh-system"
        );
    }

    #[test]
    fn rendering_is_deterministic_and_sorted() {
        let m = mesh();
        let first = file_text(&m, "cluster2", "istiod", &istiod(&m, &m.clusters[1]));
        let again = file_text(&m, "cluster2", "istiod", &istiod(&m, &m.clusters[1]));
        assert_eq!(first, again);
        insta::assert_snapshot!(first);
    }

    #[test]
    fn base_values_snapshot() {
        let m = mesh();
        insta::assert_snapshot!(file_text(&m, "cluster1", "base", &base(&m, &m.clusters[0])));
    }

    #[test]
    fn deployed_values_compare_by_content() {
        let m = mesh();
        let v = istiod(&m, &m.clusters[0]);
        let deployed = serde_json::to_value(&v).unwrap();
        assert!(same_as_deployed(&v, &deployed));
        let mut changed = deployed.clone();
        changed["global"]["meshID"] = "other".into();
        assert!(!same_as_deployed(&v, &changed));
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
    fn the_east_west_gateway_is_labelled_with_its_network_once() {
        let m = mesh();
        let values = east_west_gateway(&m, &m.clusters[1]);
        assert_eq!(values["networkGateway"], "network2");
        assert_eq!(
            values["labels"].as_mapping().unwrap().len(),
            2,
            "only `app` and `istio`: {values:?}"
        );
    }
}
