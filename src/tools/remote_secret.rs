//! Remote secrets: what `istioctl create-remote-secret` makes, built with kubectl alone. A
//! remote secret for cluster A is a Secret labelled `istio/multiCluster: "true"` whose one data
//! key, `A`, holds a kubeconfig that reaches A's API server as A's
//! `istio-reader-service-account`. Applied in cluster B, it lets B's istiod watch A. (Building
//! one from a cluster is `components/reader.rs`; holding peers' ones is `components/peers.rs`.)

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;

use crate::tools::live::Secret;
use crate::trust::sensitive::Sensitive;

/// The service account whose token goes into remote secrets (created by istio/base).
pub const READER_ACCOUNT: &str = "istio-reader-service-account";
/// The first long-lived token secret meshup asks the token controller to fill; each rotation
/// makes another, named `<this>-<YYYYMMDDHHMMSS>`.
pub const TOKEN_SECRET: &str = "istio-reader-service-account-istio-remote-secret-token";
/// The label on every reader token secret meshup makes.
pub const READER_TOKEN_LABEL: &str = "meshup.io/reader-token";
/// The label istiod selects remote secrets by.
pub const MULTICLUSTER_LABEL: &str = "istio/multiCluster";
/// The label marking what meshup created, so uninstall and pruning touch nothing else.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "meshup";
/// The annotation istioctl puts on remote secrets.
pub const CLUSTER_ANNOTATION: &str = "networking.istio.io/cluster";

/// Selects every remote secret, whoever made it.
pub fn multicluster_selector() -> String {
    format!("{MULTICLUSTER_LABEL}=true")
}

/// Selects the remote secrets meshup created.
pub fn managed_selector() -> String {
    format!("{MULTICLUSTER_LABEL}=true,{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// The Secret name of cluster `name`'s remote secret.
pub fn secret_name(cluster: &str) -> String {
    format!("istio-remote-secret-{cluster}")
}

/// One cluster's remote secret, built once and applied in every peer.
#[derive(Clone)]
pub struct RemoteSecret {
    pub cluster: String,
    pub server: String,
    /// The kubeconfig, base64-encoded as it sits under `data`.
    pub data: Sensitive<String>,
}

impl std::fmt::Debug for RemoteSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RemoteSecret({} → {}, <redacted>)",
            self.cluster, self.server
        )
    }
}

impl RemoteSecret {
    /// Assembles the secret from the pieces read from the source cluster.
    pub fn new(cluster: &str, server: &str, ca_data_b64: &str, token: &Sensitive<String>) -> Self {
        let kubeconfig = kubeconfig(cluster, server, ca_data_b64, token);
        Self {
            cluster: cluster.to_string(),
            server: server.to_string(),
            data: Sensitive::new(B64.encode(kubeconfig.expose())),
        }
    }

    /// The Secret as YAML for `kubectl apply -f -` in a peer's `namespace`.
    pub fn manifest(&self, namespace: &str) -> Sensitive<String> {
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret_name(&self.cluster),
                "namespace": namespace,
                "labels": {
                    MULTICLUSTER_LABEL: "true",
                    MANAGED_BY_LABEL: MANAGED_BY,
                },
                "annotations": { CLUSTER_ANNOTATION: self.cluster },
            },
            "type": "Opaque",
            "data": { self.cluster.clone(): self.data.expose() },
        });
        Sensitive::new(serde_yaml::to_string(&secret).expect("plain JSON is valid YAML"))
    }
}

/// A kubeconfig whose cluster, context and user are all called `name`.
pub fn kubeconfig(
    name: &str,
    server: &str,
    ca_data_b64: &str,
    token: &Sensitive<String>,
) -> Sensitive<String> {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": name, "cluster": {
            "certificate-authority-data": ca_data_b64,
            "server": server,
        }}],
        "contexts": [{ "name": name, "context": { "cluster": name, "user": name } }],
        "current-context": name,
        "preferences": {},
        "users": [{ "name": name, "user": { "token": token.expose() } }],
    });
    Sensitive::new(serde_yaml::to_string(&config).expect("plain JSON is valid YAML"))
}

/// Whether a server address only works from the machine it was written on.
pub fn is_loopback(server: &str) -> bool {
    let host = server
        .split("://")
        .nth(1)
        .unwrap_or(server)
        .split('/')
        .next()
        .unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.starts_with("127.") || host == "::1" || host == "0.0.0.0"
}

/// The token secret that asks the token controller for a long-lived token.
pub fn token_secret_manifest(namespace: &str, name: &str) -> String {
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": { "kubernetes.io/service-account.name": READER_ACCOUNT },
            "labels": { MANAGED_BY_LABEL: MANAGED_BY, READER_TOKEN_LABEL: "true" },
        },
        "type": "kubernetes.io/service-account-token",
    });
    serde_yaml::to_string(&secret).expect("plain JSON is valid YAML")
}

/// From a token secret: `ca.crt` as base64 and the decoded token, once both are filled in.
pub fn read_token(secret: &Secret) -> Option<(String, Sensitive<String>)> {
    let ca = secret
        .data
        .get("ca.crt")
        .filter(|v| !v.expose().is_empty())?;
    let token = secret
        .data
        .get("token")
        .filter(|v| !v.expose().is_empty())?;
    let token = String::from_utf8(B64.decode(token.expose()).ok()?).ok()?;
    Some((ca.expose().clone(), Sensitive::new(token)))
}

/// A remote secret found in a cluster, with only what may be shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The Secret's name.
    pub secret: String,
    /// The cluster id (the data key).
    pub cluster: String,
    /// The API server in the kubeconfig, when it parses.
    pub server: Option<String>,
    /// Whether meshup created it.
    pub managed: bool,
    /// The data value, to compare with what meshup would apply.
    pub data: Sensitive<String>,
}

/// The remote secrets among `secrets` (`kubectl get secrets -l istio/multiCluster=true`):
/// one entry per data key.
pub fn found(secrets: &[Secret]) -> Vec<Found> {
    let mut found = Vec::new();
    for secret in secrets {
        let meta = &secret.metadata;
        let managed = meta.labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY);
        for (cluster, value) in &secret.data {
            found.push(Found {
                secret: meta.name.clone(),
                cluster: cluster.clone(),
                server: server_of(value.expose()),
                managed,
                data: value.clone(),
            });
        }
    }
    found
}

/// What a remote secret's kubeconfig (base64, as under `data`) gives istiod to reach its
/// cluster: the CA it verifies the server with (base64 PEM) and the bearer token.
pub struct Credentials {
    pub ca_data: Option<String>,
    pub token: Option<Sensitive<String>>,
}

/// The first cluster's CA and the first user's token of a base64 kubeconfig.
pub fn credentials_of(data_b64: &Sensitive<String>) -> Credentials {
    let config: Option<serde_yaml::Value> = B64
        .decode(data_b64.expose())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| serde_yaml::from_str(&text).ok());
    let field = |pointer: &dyn Fn(&serde_yaml::Value) -> &serde_yaml::Value| {
        config
            .as_ref()
            .and_then(|c| pointer(c).as_str())
            .map(str::to_string)
    };
    Credentials {
        ca_data: field(&|c| &c["clusters"][0]["cluster"]["certificate-authority-data"]),
        token: field(&|c| &c["users"][0]["user"]["token"]).map(Sensitive::new),
    }
}

/// The server of the first cluster in a base64 kubeconfig.
fn server_of(data_b64: &str) -> Option<String> {
    let text = String::from_utf8(B64.decode(data_b64).ok()?).ok()?;
    let config: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    config["clusters"][0]["cluster"]["server"]
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Sensitive<String> {
        Sensitive::new("eyJhbGciOiJSUzI1NiJ9.reader".into())
    }

    #[test]
    fn remote_secret_names_the_source_cluster() {
        let secret = RemoteSecret::new("cluster1", "https://172.18.0.2:6443", "Q0E=", &token());
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(secret.manifest("istio-system").expose()).unwrap();
        assert_eq!(yaml["metadata"]["name"], "istio-remote-secret-cluster1");
        assert_eq!(yaml["metadata"]["namespace"], "istio-system");
        assert_eq!(yaml["metadata"]["labels"]["istio/multiCluster"], "true");
        assert_eq!(
            yaml["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "meshup"
        );
        assert_eq!(
            yaml["metadata"]["annotations"]["networking.istio.io/cluster"],
            "cluster1"
        );
        let data = yaml["data"].as_mapping().unwrap();
        assert_eq!(data.len(), 1);
        assert!(data.contains_key("cluster1"));
    }

    #[test]
    fn kubeconfig_names_everything_after_the_cluster() {
        let text = kubeconfig("cluster1", "https://172.18.0.2:6443", "Q0E=", &token());
        let config: serde_yaml::Value = serde_yaml::from_str(text.expose()).unwrap();
        assert_eq!(config["clusters"][0]["name"], "cluster1");
        assert_eq!(
            config["clusters"][0]["cluster"]["server"],
            "https://172.18.0.2:6443"
        );
        assert_eq!(
            config["clusters"][0]["cluster"]["certificate-authority-data"],
            "Q0E="
        );
        assert_eq!(config["contexts"][0]["name"], "cluster1");
        assert_eq!(config["contexts"][0]["context"]["user"], "cluster1");
        assert_eq!(config["current-context"], "cluster1");
        assert_eq!(
            config["users"][0]["user"]["token"],
            "eyJhbGciOiJSUzI1NiJ9.reader"
        );
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let secret = RemoteSecret::new("c1", "https://x", "Q0E=", &token());
        let debug = format!("{secret:?} {:?}", secret.manifest("ns"));
        assert!(
            !debug.contains("eyJhbGci") && !debug.contains(secret.data.expose()),
            "{debug}"
        );
    }

    #[test]
    fn found_secrets_decode_their_server_and_ownership() {
        use serde_json::Value;
        let secret = RemoteSecret::new("cluster2", "https://10.0.0.2:6443", "Q0E=", &token());
        let manifest: Value = serde_yaml::from_str(secret.manifest("ns").expose()).unwrap();
        let mut foreign = manifest.clone();
        foreign["metadata"]["name"] = "istio-remote-secret-legacy".into();
        foreign["metadata"]["labels"] = json!({"istio/multiCluster": "true"});
        let secrets: Vec<Secret> = [manifest, foreign]
            .into_iter()
            .map(|s| serde_json::from_value(s).unwrap())
            .collect();
        let found = found(&secrets);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].cluster, "cluster2");
        assert_eq!(found[0].server.as_deref(), Some("https://10.0.0.2:6443"));
        assert!(found[0].managed);
        assert!(!found[1].managed);
        assert_eq!(found[0].data, secret.data);
    }

    #[test]
    fn credentials_come_from_the_kubeconfig_inside_the_secret() {
        let secret = RemoteSecret::new("cluster2", "https://10.0.0.2:6443", "Q0E=", &token());
        let found = credentials_of(&secret.data);
        assert_eq!(found.ca_data.as_deref(), Some("Q0E="));
        assert_eq!(found.token.unwrap(), token());
        let garbage = credentials_of(&Sensitive::new("not base64!".into()));
        assert!(garbage.ca_data.is_none() && garbage.token.is_none());
    }

    #[test]
    fn loopback_servers_are_recognised() {
        for s in [
            "https://127.0.0.1:6443",
            "https://localhost:6443",
            "http://[::1]:8080",
            "https://127.0.0.53",
        ] {
            assert!(is_loopback(s), "{s}");
        }
        for s in [
            "https://172.18.0.2:6443",
            "https://api.example.com",
            "https://10.1.2.3",
        ] {
            assert!(!is_loopback(s), "{s}");
        }
    }
}
