//! Traffic emulation for a curl client Job: which endpoints of a Service a request from a pod
//! can reach, decided from the state of every test cluster of this process the way Istio's
//! multi-primary mesh would route it.
//!
//! Endpoints in the client's own cluster are always reachable. An endpoint in another cluster
//! B is reachable only when all of these hold:
//! - the client pod got a sidecar (the mutating webhooks called an istiod when the pod was
//!   created), and in B a new pod of the Service's namespace would get one from an istiod
//!   running in B;
//! - the client's istiod serves B's endpoints: B's remote cluster synced once (it stays synced
//!   when its token is revoked later: the informers keep what they listed), or, from Istio
//!   1.30, the cluster it is replacing had synced and still runs;
//! - the client's sidecar and the endpoint's sidecar trust the same root: each got it from
//!   the istiod that injected it, which took it from `cacerts` when it started (without one each
//!   istiod signs with a root of its own). A new `cacerts` reaches a workload only once both its
//!   istiod and the workload restarted;
//! - on different networks (label `topology.istio.io/network` of istiod's namespace), B has a
//!   ready east-west gateway (Service labelled `istio: eastwestgateway` and with B's network
//!   label, an external address and a ready pod) and a `cross-network-gateway` Gateway in its
//!   istiod namespace.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::controllers::istiod_revision;
use crate::proxy::{container_env, pod_ready};
use crate::selector::LabelSelector;
use crate::server::Shared;
use crate::store::{Key, State, meta_str};

/// What a client Job's container asks for: `URL` and `REQUESTS` of its env.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    pub service: String,
    pub namespace: String,
    pub port: u16,
    pub requests: usize,
}

/// Reads `URL` (`http://SVC[.NS[.svc[.cluster.local]]][:PORT]/...`) and `REQUESTS` from a
/// pod's env; `None` when it has no `URL`.
pub fn client_of(pod: &Value) -> Option<Client> {
    let url = container_env(pod, "URL")?;
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or("");
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().unwrap_or(0)),
        None => (hostport, 80),
    };
    let host = host
        .trim_end_matches(".cluster.local")
        .trim_end_matches(".svc");
    let (service, namespace) = match host.split_once('.') {
        Some((s, n)) => (s.to_string(), n.to_string()),
        None => (host.to_string(), meta_str(pod, "namespace").to_string()),
    };
    let requests = container_env(pod, "REQUESTS")
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or(1);
    Some(Client {
        service,
        namespace,
        port,
        requests,
    })
}

/// One pod behind the Service.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub pod: String,
    pub version: String,
    /// The root its sidecar trusts; `None` without a sidecar or with a self-signed root.
    pub root: Option<String>,
}

/// The client pod, as the mesh sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// Whether it has a sidecar.
    pub injected: bool,
    /// The root its sidecar trusts (see [`Endpoint::root`]).
    pub root: Option<String>,
    /// The network of its cluster's istiod namespace.
    pub network: String,
}

/// What one cluster contributes, as seen from the Service's namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Side {
    /// Ready pods behind the Service (empty when the Service or its port is missing).
    pub endpoints: Vec<Endpoint>,
    /// Whether the Service exists with the requested port.
    pub service: bool,
    /// Whether a new pod of the namespace would get a sidecar from an istiod running here.
    pub injected: bool,
    /// The istiod pod that would inject it.
    pub istiod: Option<Key>,
    /// The network of istiod's namespace (empty when unlabelled).
    pub network: String,
    /// Whether a usable east-west gateway and `cross-network-gateway` exist.
    pub gateway: bool,
}

/// Why a remote cluster's endpoints are out of reach (for tests and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    ClientNotInjected,
    RemoteNotInjected,
    NotSynced,
    NoSharedRoot,
    NoEastWestGateway,
}

/// Whether `caller` can reach `endpoint` of another cluster `remote`, whose sync status in the
/// caller's istiod is `synced`.
pub fn reachable(
    caller: &Caller,
    remote: &Side,
    endpoint: &Endpoint,
    synced: bool,
) -> Result<(), Blocked> {
    if !caller.injected {
        return Err(Blocked::ClientNotInjected);
    }
    if !remote.injected {
        return Err(Blocked::RemoteNotInjected);
    }
    if !synced {
        return Err(Blocked::NotSynced);
    }
    match (&caller.root, &endpoint.root) {
        (Some(a), Some(b)) if a == b => {}
        _ => return Err(Blocked::NoSharedRoot),
    }
    if caller.network != remote.network && !remote.gateway {
        return Err(Blocked::NoEastWestGateway);
    }
    Ok(())
}

/// What istiod finds in its namespace's `cacerts` when it starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Cacerts {
    /// No `cacerts`: istiod makes a self-signed root of its own.
    Absent,
    /// Some of the plug-in files but not all: istiod fails to start ("incomplete signing CA
    /// bundle").
    Partial,
    /// The four plug-in files, but `ca-cert.pem` is not a CA certificate: istiod fails to
    /// start ("certificate is not authorized to sign other certificates").
    NotCa,
    /// A complete set with this root: `root-cert.pem` of the four plug-in files, or `ca.crt`
    /// of the `tls.crt`/`tls.key`/`ca.crt` layout (which takes priority when `tls.crt` exists).
    Root(String),
}

/// Reads a namespace's `cacerts` the way istiod does.
pub fn cacerts(st: &State, ns: &str) -> Cacerts {
    let Some(secret) = st.objects.get(&Key {
        group: String::new(),
        plural: "secrets".into(),
        namespace: ns.into(),
        name: "cacerts".into(),
    }) else {
        return Cacerts::Absent;
    };
    let empty = serde_json::Map::new();
    let data = secret
        .get("data")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let get = |k: &str| {
        data.get(k)
            .and_then(Value::as_str)
            .and_then(|v| STANDARD.decode(v).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    if data.contains_key("tls.crt") {
        return match (get("tls.key"), get("ca.crt")) {
            (Some(_), Some(root)) => Cacerts::Root(root),
            _ => Cacerts::Partial,
        };
    }
    let files = [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ];
    let present = files.iter().filter(|k| data.contains_key(**k)).count();
    match (present, get("root-cert.pem")) {
        (0, _) => Cacerts::Absent,
        (4, Some(_)) if get("ca-cert.pem").is_some_and(|c| not_a_ca(&c)) => Cacerts::NotCa,
        (4, Some(root)) => Cacerts::Root(root),
        _ => Cacerts::Partial,
    }
}

/// Whether a signing certificate parses and is not a CA (basic constraints `CA:TRUE`), the
/// check istiod makes before it signs with plugged certificates (istio 1.30
/// security/pkg/pki/ca/ca.go `NewPluggedCertIstioCAOptions`: `!cert.IsCA`). Text that is no
/// certificate is left alone here (istiod refuses it too, with another message).
fn not_a_ca(pem: &str) -> bool {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .ok()
        .and_then(|(_, pem)| pem.parse_x509().ok().map(|cert| !cert.is_ca()))
        .unwrap_or(false)
}

impl Cacerts {
    /// What istiod prints when it cannot start with this `cacerts` (`None`: it starts).
    pub fn startup_error(&self) -> Option<&'static str> {
        match self {
            Cacerts::Partial => Some(
                "error\tfailed to create discovery service: incomplete signing CA bundle in cacerts\n",
            ),
            Cacerts::NotCa => Some(
                "error\tfailed to create discovery service: failed to create CA: failed to create an istiod CA: certificate is not authorized to sign other certificates\n",
            ),
            Cacerts::Absent | Cacerts::Root(_) => None,
        }
    }
}

/// The root of trust a starting istiod takes from its namespace's `cacerts`; `None` when it
/// uses a root of its own.
pub fn cacerts_root(st: &State, ns: &str) -> Option<String> {
    match cacerts(st, ns) {
        Cacerts::Root(root) => Some(root),
        _ => None,
    }
}

pub(crate) fn namespace_label(st: &State, ns: &str, label: &str) -> String {
    st.objects
        .get(&Key {
            group: String::new(),
            plural: "namespaces".into(),
            namespace: String::new(),
            name: ns.into(),
        })
        .and_then(|n| n.pointer(&format!("/metadata/labels/{}", label.replace('/', "~1"))))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn objects<'a>(
    st: &'a State,
    group: &'a str,
    plural: &'a str,
    ns: &'a str,
) -> impl Iterator<Item = (&'a Key, &'a Value)> {
    st.objects
        .iter()
        .filter(move |(k, _)| k.group == group && k.plural == plural && k.namespace == ns)
}

/// Ready pods in `ns` matched by a Service's selector.
pub(crate) fn ready_pods<'a>(
    st: &'a State,
    ns: &'a str,
    service: &Value,
) -> Vec<(&'a Key, &'a Value)> {
    let Some(selector) = service.pointer("/spec/selector").and_then(Value::as_object) else {
        return Vec::new();
    };
    if selector.is_empty() {
        return Vec::new();
    }
    let terms: Vec<String> = selector
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    let Ok(sel) = LabelSelector::parse(&terms.join(",")) else {
        return Vec::new();
    };
    objects(st, "", "pods", ns)
        .filter(|(_, p)| pod_ready(p) && sel.matches(p))
        .collect()
}

/// Whether the cluster has a usable east-west gateway for `network` in istiod's namespace.
fn east_west_gateway(st: &State, istiod_ns: &str, network: &str) -> bool {
    let gateway_object = st.objects.keys().any(|k| {
        k.group == "networking.istio.io"
            && k.plural == "gateways"
            && k.namespace == istiod_ns
            && k.name == "cross-network-gateway"
    });
    gateway_object
        && st
            .objects
            .iter()
            .filter(|(k, _)| k.group.is_empty() && k.plural == "services")
            .any(|(k, svc)| {
                let label = |l: &str| {
                    svc.pointer(&format!("/metadata/labels/{}", l.replace('/', "~1")))
                        .and_then(Value::as_str)
                };
                let external = svc
                    .pointer("/status/loadBalancer/ingress/0")
                    .is_some_and(|i| i.get("ip").is_some() || i.get("hostname").is_some())
                    || svc
                        .pointer("/spec/externalIPs/0")
                        .and_then(Value::as_str)
                        .is_some();
                label("istio") == Some("eastwestgateway")
                    && label("topology.istio.io/network").unwrap_or("") == network
                    && external
                    && !ready_pods(st, &k.namespace, svc).is_empty()
            })
}

/// What a cluster contributes to a request for `client`.
pub fn side(st: &State, client: &Client) -> Side {
    let mut out = Side::default();
    let svc_key = Key {
        group: String::new(),
        plural: "services".into(),
        namespace: client.namespace.clone(),
        name: client.service.clone(),
    };
    if let Some(svc) = st.objects.get(&svc_key) {
        let has_port = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .is_some_and(|ps| {
                ps.iter()
                    .any(|p| p.get("port").and_then(Value::as_u64) == Some(client.port.into()))
            });
        if has_port {
            out.service = true;
            let mut eps: Vec<Endpoint> = ready_pods(st, &client.namespace, svc)
                .into_iter()
                .map(|(k, p)| Endpoint {
                    pod: k.name.clone(),
                    version: container_env(p, "SERVICE_VERSION")
                        .unwrap_or("")
                        .to_string(),
                    root: st.sidecar_roots.get(k).cloned().flatten(),
                })
                .collect();
            eps.sort_by(|a, b| a.pod.cmp(&b.pod));
            out.endpoints = eps;
        }
    }
    // The istiod a new pod of the namespace would get its sidecar from (the mutating
    // webhooks decide, see the `injection` module).
    out.istiod = st.injector_for(&client.namespace);
    out.injected = out.istiod.is_some();
    if let Some(istiod) = &out.istiod {
        out.network = namespace_label(st, &istiod.namespace, "topology.istio.io/network");
        out.gateway = east_west_gateway(st, &istiod.namespace, &out.network);
    }
    out
}

/// Runs the client in pod `pod` of `shared`: REQUESTS lines, each what one `curl -s URL`
/// prints. `None` when the pod is gone or is not such a client.
pub async fn run(shared: &Arc<Shared>, pod: &Key) -> Option<String> {
    let ambient = {
        let st = shared.state.lock().unwrap();
        let p = st.objects.get(pod)?;
        let client = client_of(p)?;
        crate::ambient::captured(&st, pod, p)
            .then(|| (crate::ambient::plan(&st, p, &client), client))
    };
    if let Some((plan, client)) = ambient {
        return Some(run_ambient(shared, plan, &client));
    }
    let (client, local, caller, istiod) = {
        let st = shared.state.lock().unwrap();
        let p = st.objects.get(pod)?;
        let client = client_of(p)?;
        let local = side(&st, &client);
        let sidecar = st.sidecar_roots.get(pod);
        // The client's own proxy is configured by the istiod of its revision.
        let istiod = crate::injection::injected_revision(p).and_then(|rev| {
            st.istiod_pods()
                .find(|(_, p)| pod_ready(p) && istiod_revision(p) == rev)
                .map(|(k, _)| k.clone())
        });
        let network = istiod
            .as_ref()
            .map(|k| namespace_label(&st, &k.namespace, "topology.istio.io/network"))
            .unwrap_or_default();
        let caller = Caller {
            injected: sidecar.is_some(),
            root: sidecar.cloned().flatten(),
            network,
        };
        (client, local, caller, istiod)
    };
    let mut endpoints = Vec::new();
    if local.service {
        endpoints.extend(local.endpoints.iter().cloned());
        let view = match &istiod {
            Some(k) => {
                crate::istiod::clusterz(&shared.state.lock().unwrap(), k).unwrap_or_default()
            }
            None => Vec::new(),
        };
        let mut seen = vec![Arc::as_ptr(shared)];
        for entry in view.iter().skip(1) {
            let Some(peer) = crate::proxy::loopback_port(&entry.server)
                .and_then(|(_, port)| crate::cluster_by_port(port))
            else {
                continue;
            };
            if seen.contains(&Arc::as_ptr(&peer)) {
                continue;
            }
            seen.push(Arc::as_ptr(&peer));
            let remote = side(&peer.state.lock().unwrap(), &client);
            let synced = entry.serving;
            if remote.service {
                endpoints.extend(
                    remote
                        .endpoints
                        .iter()
                        .filter(|e| reachable(&caller, &remote, e, synced).is_ok())
                        .cloned(),
                );
            }
        }
    }
    let mut out = String::new();
    for i in 0..client.requests {
        if endpoints.is_empty() {
            out += "request failed\n";
        } else {
            let e = &endpoints[i % endpoints.len()];
            out += &format!("Hello version: {}, instance: {}\n", e.version, e.pod);
        }
    }
    Some(out)
}

/// A captured client's requests (see the `ambient` module): its cluster's endpoints, and those
/// of the peers its ztunnel's istiod synced that the ambient rules let through; an endpoint a
/// misconfigured ztunnel cannot reach stays in the rotation and fails.
fn run_ambient(
    shared: &Arc<Shared>,
    plan: Result<crate::ambient::Plan, ()>,
    client: &Client,
) -> String {
    let Ok(plan) = plan else {
        // No Ready ztunnel on the node: the redirected traffic goes nowhere.
        return "request failed\n".repeat(client.requests);
    };
    let mut outcomes: Vec<Option<Endpoint>> = plan.local.iter().cloned().map(Some).collect();
    let view = plan
        .istiod
        .as_ref()
        .and_then(|k| crate::istiod::clusterz(&shared.state.lock().unwrap(), k))
        .unwrap_or_default();
    let mut seen = vec![Arc::as_ptr(shared)];
    for entry in view.iter().skip(1) {
        let Some(peer) = crate::proxy::loopback_port(&entry.server)
            .and_then(|(_, port)| crate::cluster_by_port(port))
        else {
            continue;
        };
        if seen.contains(&Arc::as_ptr(&peer)) {
            continue;
        }
        seen.push(Arc::as_ptr(&peer));
        let (side, endpoints) = crate::ambient::peer(&peer.state.lock().unwrap(), &plan, client);
        match crate::ambient::reachable(&plan.caller, &side, entry.serving) {
            Ok(()) => outcomes.extend(endpoints.into_iter().map(Some)),
            Err(crate::ambient::Blocked::ZtunnelNetworkMismatch) => {
                outcomes.extend(endpoints.iter().map(|_| None))
            }
            Err(_) => {}
        }
    }
    let mut out = String::new();
    for i in 0..client.requests {
        match outcomes.get(i % outcomes.len().max(1)).cloned().flatten() {
            Some(e) => out += &format!("Hello version: {}, instance: {}\n", e.version, e.pod),
            None => out += "request failed\n",
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn joined(network: &str) -> Side {
        Side {
            endpoints: vec![endpoint(Some("root"))],
            service: true,
            injected: true,
            istiod: None,
            network: network.into(),
            gateway: false,
        }
    }

    fn endpoint(root: Option<&str>) -> Endpoint {
        Endpoint {
            pod: "helloworld-v2-abcde".into(),
            version: "v2".into(),
            root: root.map(String::from),
        }
    }

    fn caller(network: &str) -> Caller {
        Caller {
            injected: true,
            root: Some("root".into()),
            network: network.into(),
        }
    }

    fn check(caller: &Caller, remote: &Side, synced: bool) -> Result<(), Blocked> {
        reachable(caller, remote, &remote.endpoints[0], synced)
    }

    #[test]
    fn a_client_url_names_service_namespace_port_and_count() {
        let pod = json!({"metadata": {"namespace": "own"}, "spec": {"containers": [{"name": "curl", "env": [
            {"name": "URL", "value": "http://helloworld.meshup-verify:5000/hello"},
            {"name": "REQUESTS", "value": "10"}]}]}});
        assert_eq!(
            client_of(&pod),
            Some(Client {
                service: "helloworld".into(),
                namespace: "meshup-verify".into(),
                port: 5000,
                requests: 10,
            })
        );
        let short = json!({"metadata": {"namespace": "own"}, "spec": {"containers": [{"name": "c", "env": [
            {"name": "URL", "value": "http://web.own.svc.cluster.local/"}]}]}});
        assert_eq!(
            client_of(&short).map(|c| (c.service, c.namespace, c.port, c.requests)),
            Some(("web".into(), "own".into(), 80, 1))
        );
    }

    #[test]
    fn peers_on_one_network_with_a_shared_root_reach_each_other() {
        assert_eq!(check(&caller("n1"), &joined("n1"), true), Ok(()));
    }

    #[test]
    fn a_client_without_a_sidecar_reaches_only_its_own_cluster() {
        let bare = Caller {
            injected: false,
            root: None,
            ..caller("n1")
        };
        assert_eq!(
            check(&bare, &joined("n1"), true),
            Err(Blocked::ClientNotInjected)
        );
    }

    #[test]
    fn a_remote_namespace_without_injection_is_out_of_reach() {
        let remote = Side {
            injected: false,
            ..joined("n1")
        };
        assert_eq!(
            check(&caller("n1"), &remote, true),
            Err(Blocked::RemoteNotInjected)
        );
    }

    #[test]
    fn a_peer_that_is_not_synced_is_out_of_reach() {
        assert_eq!(
            check(&caller("n1"), &joined("n1"), false),
            Err(Blocked::NotSynced)
        );
    }

    #[test]
    fn different_or_missing_roots_break_mtls() {
        let remote = joined("n1");
        for root in [Some("other"), None] {
            assert_eq!(
                reachable(&caller("n1"), &remote, &endpoint(root), true),
                Err(Blocked::NoSharedRoot)
            );
        }
        let self_signed = Caller {
            root: None,
            ..caller("n1")
        };
        assert_eq!(
            reachable(&self_signed, &remote, &endpoint(None), true),
            Err(Blocked::NoSharedRoot),
            "two self-signed roots never match"
        );
    }

    #[test]
    fn another_network_needs_the_peers_east_west_gateway() {
        assert_eq!(
            check(&caller("n1"), &joined("n2"), true),
            Err(Blocked::NoEastWestGateway)
        );
        let with_gateway = Side {
            gateway: true,
            ..joined("n2")
        };
        assert_eq!(check(&caller("n1"), &with_gateway, true), Ok(()));
    }

    fn state_with(objects: &[(&str, &str, Value)]) -> State {
        let mut st = State::new("c", String::new());
        for (gv, plural, obj) in objects {
            let (g, v) = gv.split_once('/').unwrap_or(("", gv));
            let res = st.resource(g, v, plural).unwrap();
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            st.create(&res, &ns, obj.clone(), false).unwrap();
        }
        st
    }

    #[test]
    fn a_partial_cacerts_is_no_shared_root() {
        let b64 = |s: &str| STANDARD.encode(s);
        let ns = json!({"metadata": {"name": "istio-system"}});
        let full = json!({"metadata": {"name": "cacerts", "namespace": "istio-system"}, "data": {
            "ca-cert.pem": b64("ca"), "ca-key.pem": b64("key"), "root-cert.pem": b64("root"), "cert-chain.pem": b64("chain")}});
        let st = state_with(&[("v1", "namespaces", ns.clone()), ("v1", "secrets", full)]);
        assert_eq!(cacerts_root(&st, "istio-system"), Some("root".into()));
        let partial = json!({"metadata": {"name": "cacerts", "namespace": "istio-system"}, "data": {
            "ca-cert.pem": b64("ca"), "root-cert.pem": b64("root")}});
        let st = state_with(&[("v1", "namespaces", ns), ("v1", "secrets", partial)]);
        assert_eq!(cacerts_root(&st, "istio-system"), None);
    }

    #[test]
    fn an_east_west_gateway_needs_an_external_address_and_the_gateway_object() {
        let ns = json!({"metadata": {"name": "istio-system"}});
        let svc = |lb: bool| {
            let mut s = json!({"metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system",
                    "labels": {"istio": "eastwestgateway", "topology.istio.io/network": "n2"}},
                "spec": {"type": "ClusterIP", "selector": {"istio": "eastwestgateway"}, "ports": [{"port": 15443}]}});
            if lb {
                s["spec"]["externalIPs"] = json!(["192.0.2.1"]);
            }
            s
        };
        let pod = json!({"metadata": {"name": "gw", "namespace": "istio-system", "labels": {"istio": "eastwestgateway"}},
            "spec": {"containers": [{"name": "istio-proxy"}]}});
        let gateway_crd = json!({"metadata": {"name": "gateways.networking.istio.io"}, "spec": {
            "group": "networking.istio.io", "scope": "Namespaced",
            "names": {"plural": "gateways", "kind": "Gateway"},
            "versions": [{"name": "v1", "served": true, "storage": true}]}});
        let gateway =
            json!({"metadata": {"name": "cross-network-gateway", "namespace": "istio-system"}});
        let base = [
            ("v1", "namespaces", ns),
            ("v1", "pods", pod),
            (
                "apiextensions.k8s.io/v1",
                "customresourcedefinitions",
                gateway_crd,
            ),
        ];
        let with = |extra: Vec<(&'static str, &'static str, Value)>| {
            let mut all: Vec<(&str, &str, Value)> = base.to_vec();
            all.extend(extra);
            state_with(&all)
        };
        let st = with(vec![
            ("v1", "services", svc(true)),
            ("networking.istio.io/v1", "gateways", gateway.clone()),
        ]);
        assert!(east_west_gateway(&st, "istio-system", "n2"));
        assert!(
            !east_west_gateway(&st, "istio-system", "n3"),
            "the gateway of another network"
        );
        let st = with(vec![
            ("v1", "services", svc(false)),
            ("networking.istio.io/v1", "gateways", gateway),
        ]);
        assert!(
            !east_west_gateway(&st, "istio-system", "n2"),
            "no external address"
        );
        let st = with(vec![("v1", "services", svc(true))]);
        assert!(
            !east_west_gateway(&st, "istio-system", "n2"),
            "no cross-network-gateway"
        );
    }
}
