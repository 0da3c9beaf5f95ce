//! The pod `proxy` subresource (`GET /api/v1/namespaces/NS/pods/NAME[:PORT]/proxy/PATH`), and
//! what answers behind it: istiod's monitoring port, whose debug handlers refuse the API
//! server (401, as `allowAuthenticatedOrLocalhost` does); nothing else listens in an emulated
//! pod: every other port refuses the connection. Also the kubeconfig parsing and the probe that
//! the istiod emulation (`istiod` module) uses for its remote clusters.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::auth::{self, Who};
use crate::server::Shared;
use crate::store::{ApiError, Key};

/// istiod's monitoring port, where `/debug/clusterz` is served.
pub const MONITORING_PORT: u16 = 15014;

/// How long istiod's probe of a peer API server may take before the peer counts as `timeout`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A parsed pod proxy path.
#[derive(Debug, PartialEq)]
pub struct ProxyTarget {
    pub namespace: String,
    pub pod: String,
    pub port: Option<String>,
    pub path: String,
}

/// Recognises `/api/v1/namespaces/NS/pods/NAME[:PORT]/proxy[/PATH]`.
pub fn pod_proxy_target(path: &str) -> Option<ProxyTarget> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let mut parts = rest.splitn(5, '/');
    let namespace = parts.next()?;
    if parts.next()? != "pods" {
        return None;
    }
    let name_port = parts.next()?;
    if parts.next()? != "proxy" {
        return None;
    }
    let path = parts.next().unwrap_or("").to_string();
    let (pod, port) = match name_port.split_once(':') {
        Some((p, port)) => (p, Some(port.to_string())),
        None => (name_port, None),
    };
    Some(ProxyTarget {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        port,
        path,
    })
}

fn status_response(e: &ApiError) -> Response {
    let mut r = Response::new(Body::from(serde_json::to_vec(&e.status()).unwrap()));
    *r.status_mut() = StatusCode::from_u16(e.code).unwrap();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn unreachable(ip: &str, port: &str, why: &str) -> Response {
    status_response(&ApiError::new(
        503,
        "ServiceUnavailable",
        format!("error trying to reach service: dial tcp {ip}:{port}: {why}"),
    ))
}

/// The store key of a pod.
pub fn pod_key(ns: &str, name: &str) -> Key {
    Key {
        group: String::new(),
        plural: "pods".into(),
        namespace: ns.into(),
        name: name.into(),
    }
}

/// Whether a pod is Running with a Ready condition.
pub fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// The value of an environment variable of the pod's containers (first container that sets it).
pub fn container_env<'a>(pod: &'a Value, name: &str) -> Option<&'a str> {
    containers(pod)
        .filter_map(|c| c.get("env").and_then(Value::as_array))
        .flatten()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|e| e.get("value").and_then(Value::as_str))
}

/// Whether a pod is one of istiod's (label `app=istiod`).
pub fn is_istiod(pod: &Value) -> bool {
    pod.pointer("/metadata/labels/app").and_then(Value::as_str) == Some("istiod")
}

/// Resolves the proxy's port: a number, a container port's name, or (none given) the first
/// declared container port.
fn resolve_port(pod: &Value, port: Option<&str>) -> Result<u16, String> {
    let declared = || {
        containers(pod)
            .filter_map(|c| c.get("ports").and_then(Value::as_array))
            .flatten()
    };
    match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) => Ok(n),
            Err(_) => declared()
                .find(|d| d.get("name").and_then(Value::as_str) == Some(p))
                .and_then(|d| d.get("containerPort").and_then(Value::as_u64))
                .map(|n| n as u16)
                .ok_or_else(|| format!("lookup tcp/{p}: unknown port")),
        },
        None => Ok(declared()
            .find_map(|d| d.get("containerPort").and_then(Value::as_u64))
            .map(|n| n as u16)
            .unwrap_or(80)),
    }
}

/// Answers a GET on a pod's proxy subresource.
pub async fn pod_proxy(shared: &Arc<Shared>, who: &Who, t: ProxyTarget) -> Response {
    let key = pod_key(&t.namespace, &t.pod);
    let (pod, port) = {
        let st = shared.state.lock().unwrap();
        let ask = auth::Attributes {
            verb: "get",
            group: "",
            resource: "pods/proxy",
            namespace: Some(&t.namespace),
            name: Some(&t.pod),
        };
        if !auth::allowed(&st, who, &ask) {
            let message = auth::forbidden_message(
                who,
                "get",
                "",
                "pods/proxy",
                Some(&t.namespace),
                Some(&t.pod),
            );
            return status_response(&ApiError::new(403, "Forbidden", message));
        }
        let Some(pod) = st.objects.get(&key).cloned() else {
            return status_response(&ApiError::not_found("", "pods", &t.pod));
        };
        let port = resolve_port(&pod, t.port.as_deref());
        (pod, port)
    };
    let ip = pod
        .pointer("/status/podIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let port = match port {
        Ok(p) => p,
        Err(why) => {
            return status_response(&ApiError::new(
                503,
                "ServiceUnavailable",
                format!("error trying to reach service: dial tcp: {why}"),
            ));
        }
    };
    if !shared.pod_proxy.load(Ordering::Relaxed) {
        // A private control plane: the API server cannot open connections into the pod network.
        return unreachable(&ip, &port.to_string(), "i/o timeout");
    }
    if !pod_ready(&pod) || !is_istiod(&pod) || port != MONITORING_PORT {
        return unreachable(&ip, &port.to_string(), "connect: connection refused");
    }
    let path = t.path.split('?').next().unwrap_or("");
    if is_debug_handler(path) {
        // allowAuthenticatedOrLocalhost: the API server's pod proxy calls from its own address
        // and drops the caller's Authorization header, so istiod refuses it, with no body.
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    let mut r = Response::new(Body::from("404 page not found\n"));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The debug handlers istiod 1.28 registers on its monitoring port (pilot/pkg/xds/debug.go
/// `InitDebug`), each behind `allowAuthenticatedOrLocalhost`; `debug/pprof/` is a prefix.
const DEBUG_HANDLERS: [&str; 28] = [
    "force_disconnect",
    "ecdsz",
    "edsz",
    "ndsz",
    "adsz",
    "syncz",
    "registryz",
    "endpointz",
    "endpointShardz",
    "cachez",
    "configz",
    "sidecarz",
    "resourcesz",
    "instancesz",
    "ambientz",
    "krtz",
    "authorizationz",
    "telemetryz",
    "config_dump",
    "push_status",
    "pushcontext",
    "connections",
    "inject",
    "mesh",
    "clusterz",
    "networkz",
    "mcsz",
    "list",
];

/// Whether `path` (no leading slash, no query) is one of istiod's debug handlers.
pub fn is_debug_handler(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("debug/") else {
        return false;
    };
    rest.starts_with("pprof/") || DEBUG_HANDLERS.contains(&rest)
}

/// What a kubeconfig in a remote secret says: server, CA and bearer token of its current
/// context (or of its first cluster and user).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Peer {
    pub server: String,
    pub ca: Vec<u8>,
    pub token: Option<String>,
}

/// Reads the kubeconfig of a remote secret's data value (base64).
pub fn parse_kubeconfig(b64: &str) -> Option<Peer> {
    let text = STANDARD.decode(b64).ok()?;
    let kc: serde_yaml::Value = serde_yaml::from_slice(&text).ok()?;
    let named = |list: &str, name: Option<&str>| -> Option<serde_yaml::Value> {
        let items = kc.get(list)?.as_sequence()?;
        match name {
            Some(n) => items
                .iter()
                .find(|i| i.get("name").and_then(|v| v.as_str()) == Some(n))
                .cloned(),
            None => items.first().cloned(),
        }
    };
    let current = kc.get("current-context").and_then(|v| v.as_str());
    let context = current.and_then(|c| named("contexts", Some(c)));
    let ctx_field = |f: &str| {
        context
            .as_ref()
            .and_then(|c| c.get("context"))
            .and_then(|c| c.get(f))
            .and_then(|v| v.as_str())
            .map(String::from)
    };
    let cluster = match ctx_field("cluster") {
        Some(n) => named("clusters", Some(&n)),
        None => named("clusters", None),
    }?;
    let user = match ctx_field("user") {
        Some(n) => named("users", Some(&n)),
        None => named("users", None),
    };
    let cluster = cluster.get("cluster")?;
    let server = cluster.get("server")?.as_str()?.to_string();
    let ca = cluster
        .get("certificate-authority-data")
        .and_then(|v| v.as_str())
        .and_then(|v| STANDARD.decode(v).ok())
        .unwrap_or_default();
    let token = user
        .as_ref()
        .and_then(|u| u.get("user"))
        .and_then(|u| u.get("token"))
        .and_then(|v| v.as_str())
        .map(String::from);
    Some(Peer { server, ca, token })
}

/// `https://127.0.0.1:PORT` or `https://localhost:PORT`: the loopback servers a probe may
/// contact. Anything else is never contacted.
pub fn loopback_port(server: &str) -> Option<(String, u16)> {
    let rest = server.strip_prefix("https://")?;
    let hostport = rest.split('/').next()?;
    let (host, port) = hostport.rsplit_once(':')?;
    if host != "127.0.0.1" && host != "localhost" {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// Whether istiod could sync with this peer: the server is a loopback test cluster, its
/// certificate verifies against the kubeconfig's CA, and the token may list namespaces and
/// each of `lists` (API paths).
pub async fn probe(peer: &Peer, lists: &[String]) -> bool {
    let Some((host, port)) = loopback_port(&peer.server) else {
        return false;
    };
    for path in
        std::iter::once("/api/v1/namespaces?limit=1").chain(lists.iter().map(String::as_str))
    {
        let ok = matches!(
            crate::tls::request(
                port,
                &host,
                &peer.ca,
                crate::tls::Call {
                    method: "GET",
                    path,
                    token: peer.token.as_deref(),
                    body: None,
                },
                PROBE_TIMEOUT,
            )
            .await,
            Ok(r) if r.status == 200
        );
        if !ok {
            return false;
        }
    }
    true
}

/// istiod's own cluster id: the `CLUSTER_ID` env of its container, `Kubernetes` when unset.
pub fn own_cluster_id(pod: &Value) -> String {
    container_env(pod, "CLUSTER_ID")
        .unwrap_or("Kubernetes")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_paths_name_pod_port_and_path() {
        assert_eq!(
            pod_proxy_target(
                "/api/v1/namespaces/istio-system/pods/istiod-abc:15014/proxy/debug/clusterz"
            ),
            Some(ProxyTarget {
                namespace: "istio-system".into(),
                pod: "istiod-abc".into(),
                port: Some("15014".into()),
                path: "debug/clusterz".into(),
            })
        );
        assert_eq!(
            pod_proxy_target("/api/v1/namespaces/a/pods/p/proxy").map(|t| (t.port, t.path)),
            Some((None, String::new()))
        );
        assert_eq!(pod_proxy_target("/api/v1/namespaces/a/pods/p/log"), None);
    }

    #[test]
    fn only_loopback_https_servers_may_be_probed() {
        assert_eq!(
            loopback_port("https://127.0.0.1:6443"),
            Some(("127.0.0.1".into(), 6443))
        );
        assert_eq!(
            loopback_port("https://localhost:1/"),
            Some(("localhost".into(), 1))
        );
        assert_eq!(loopback_port("https://10.0.0.1:6443"), None);
        assert_eq!(loopback_port("http://127.0.0.1:6443"), None);
        assert_eq!(loopback_port("https://cluster2.example.test:6443"), None);
    }

    #[test]
    fn kubeconfig_of_a_remote_secret_gives_server_ca_and_token() {
        let kc = "apiVersion: v1\nkind: Config\nclusters:\n- name: c2\n  cluster:\n    server: https://127.0.0.1:1234\n    certificate-authority-data: UEVN\ncontexts:\n- name: c2\n  context: {cluster: c2, user: c2}\ncurrent-context: c2\nusers:\n- name: c2\n  user:\n    token: tok\n";
        let peer = parse_kubeconfig(&STANDARD.encode(kc)).unwrap();
        assert_eq!(
            peer,
            Peer {
                server: "https://127.0.0.1:1234".into(),
                ca: b"PEM".to_vec(),
                token: Some("tok".into()),
            }
        );
    }

    #[test]
    fn debug_handlers_are_known_paths_under_debug() {
        assert!(is_debug_handler("debug/clusterz"));
        assert!(is_debug_handler("debug/pprof/heap"));
        assert!(!is_debug_handler("debug/nothing"));
        assert!(!is_debug_handler("metrics"));
    }
}
