//! Fixtures shared by unit tests.

use serde_yaml::Mapping;

use crate::mesh::{Charts, Cluster, Mesh, Trust};
use crate::trust::TrustMode;

/// A mesh of `n` clusters `clusterI` on contexts `kind-clusterI`; cluster1 has an `apiServer`.
pub fn mesh(n: usize, trust: TrustMode) -> Mesh {
    Mesh {
        source: "mesh.yaml".into(),
        mesh_id: "mesh1".into(),
        namespace: "istio-system".into(),
        version: Some("1.28.1".into()),
        charts: Charts::Repo("https://istio-release.storage.googleapis.com/charts".into()),
        revision: None,
        values: Mapping::new(),
        clusters: (1..=n)
            .map(|i| Cluster {
                name: format!("cluster{i}"),
                context: format!("kind-cluster{i}"),
                server: format!("https://172.18.0.{}:6443", i + 1),
                server_overridden: i == 1,
                network: Some("network1".into()),
                values: Mapping::new(),
            })
            .collect(),
        trust: Trust {
            mode: trust,
            dir: "meshup-certs".into(),
        },
    }
}
