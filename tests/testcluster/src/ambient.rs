//! Ambient traffic: which endpoints a request from a pod captured by ztunnel reaches, decided
//! from the state of every test cluster of this process the way Istio's ambient multi-network
//! mode would route it (Istio 1.29.0, ztunnel 1.29.0).
//!
//! A pod is captured (istio-cni's enablement selectors, cni chart `ambient.enablementSelectors`)
//! when it has no sidecar, is labelled `istio.io/dataplane-mode=ambient` or sits in a namespace
//! so labelled without opting out (`none`), and a Ready istio-cni node agent with
//! `AMBIENT_ENABLED=true` runs on its node. Its traffic goes through the ztunnel of its node:
//! none Ready, every request fails. ztunnel only turns Ready once its istiod accepted it (see
//! [`ztunnel_accepted`]).
//!
//! Endpoints in the client's own cluster are always reachable. An endpoint of another cluster B
//! is reachable only when all of these hold ([`reachable`]):
//! - ztunnel's istiod runs with ambient multi-network (`AMBIENT_ENABLE_MULTI_NETWORK`);
//! - that istiod synced B (its clusterz, as for sidecars);
//! - B's Service is GLOBAL by the istiod's `meshConfig.serviceScopeConfigs`, and so is the
//!   client cluster's Service when it has one (a LOCAL one is not merged);
//! - on another network, B's network has an east-west Gateway (class `istio-east-west`, its
//!   `topology.istio.io/network` label, an HBONE listener terminating TLS) whose status
//!   address is its load balancer's (not the cluster IP reported while pending) and whose
//!   Service has a Ready pod;
//! - ztunnel's istiod and B's istiod trust the same root (`cacerts`);
//! - and for an endpoint on another network, ztunnel's `NETWORK` is its istiod's network:
//!   otherwise ztunnel finds the endpoint but cannot send it through the gateway, and that
//!   request fails (endpoints on the client's network still answer).

use serde_json::Value;

use crate::admission::selector_matches;
use crate::gateways::{EAST_WEST_CLASS, features};
use crate::mesh::{Client, Endpoint, namespace_label, ready_pods};
use crate::proxy::{container_env, pod_ready};
use crate::store::{Key, State, meta_str};

/// Why a remote endpoint is out of reach of a captured client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    MultiNetworkOff,
    NotSynced,
    NotGlobal,
    NoEastWestGateway,
    NoSharedRoot,
    /// In the pool, but each request to it fails.
    ZtunnelNetworkMismatch,
}

/// The captured client, as its ztunnel and istiod see it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Caller {
    /// ztunnel's istiod runs with ambient multi-network.
    pub multi_network: bool,
    /// The network of ztunnel's istiod (label of its namespace).
    pub network: String,
    /// ztunnel's `NETWORK`.
    pub ztunnel_network: String,
    /// The root ztunnel's istiod signs with; `None`: a self-signed one.
    pub root: Option<String>,
    /// Whether the client cluster's Service (if any) is GLOBAL.
    pub local_global: bool,
}

/// What a peer cluster offers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Peer {
    pub network: String,
    /// Its Service is GLOBAL by the caller's istiod's scope rules.
    pub global: bool,
    /// A usable east-west gateway for its network.
    pub gateway: bool,
    /// The root of its istiod.
    pub root: Option<String>,
}

/// Whether a captured `caller` reaches the endpoints of `peer`, whose sync status in the
/// caller's istiod is `synced`.
pub fn reachable(caller: &Caller, peer: &Peer, synced: bool) -> Result<(), Blocked> {
    if !caller.multi_network {
        return Err(Blocked::MultiNetworkOff);
    }
    if !synced {
        return Err(Blocked::NotSynced);
    }
    if !peer.global || !caller.local_global {
        return Err(Blocked::NotGlobal);
    }
    let cross_network = peer.network != caller.network;
    if cross_network && !peer.gateway {
        return Err(Blocked::NoEastWestGateway);
    }
    match (&caller.root, &peer.root) {
        (Some(a), Some(b)) if a == b => {}
        _ => return Err(Blocked::NoSharedRoot),
    }
    if cross_network && caller.ztunnel_network != caller.network {
        return Err(Blocked::ZtunnelNetworkMismatch);
    }
    Ok(())
}

fn label<'a>(obj: &'a Value, name: &str) -> Option<&'a str> {
    obj.pointer(&format!("/metadata/labels/{}", name.replace('/', "~1")))
        .and_then(Value::as_str)
}

fn pods_on_node<'a>(
    st: &'a State,
    node: &'a str,
    pick: impl Fn(&Value) -> bool + 'a,
) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
    st.objects.iter().filter(move |(k, p)| {
        k.group.is_empty()
            && k.plural == "pods"
            && p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
            && meta_str(p, "deletionTimestamp").is_empty()
            && pick(p)
    })
}

fn is_ztunnel(p: &Value) -> bool {
    label(p, "app") == Some("ztunnel") && container_env(p, "XDS_ADDRESS").is_some()
}

/// A Ready istio-cni node agent with ambient enabled on `node` (its `istio-cni-config`
/// ConfigMap, read through `envFrom`, says `AMBIENT_ENABLED: "true"`).
fn cni_ready(st: &State, node: &str) -> bool {
    pods_on_node(st, node, |p| label(p, "k8s-app") == Some("istio-cni-node")).any(|(k, p)| {
        pod_ready(p) && {
            let from: Vec<&str> = p
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("envFrom").and_then(Value::as_array))
                .flatten()
                .filter_map(|e| e.pointer("/configMapRef/name").and_then(Value::as_str))
                .collect();
            container_env(p, "AMBIENT_ENABLED") == Some("true")
                || from.iter().any(|name| {
                    st.objects
                        .get(&Key {
                            group: String::new(),
                            plural: "configmaps".into(),
                            namespace: k.namespace.clone(),
                            name: (*name).into(),
                        })
                        .and_then(|cm| cm.pointer("/data/AMBIENT_ENABLED"))
                        .and_then(Value::as_str)
                        == Some("true")
                })
        }
    })
}

/// Whether istio-cni captures `pod` (see the module docs).
pub fn captured(st: &State, pod_key: &Key, pod: &Value) -> bool {
    if st.sidecar_roots.contains_key(pod_key) {
        return false;
    }
    let mode = label(pod, "istio.io/dataplane-mode");
    let ns_mode = namespace_label(st, &pod_key.namespace, "istio.io/dataplane-mode");
    let enabled = mode == Some("ambient") || (ns_mode == "ambient" && mode != Some("none"));
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    enabled && pod_key.namespace != "kube-system" && cni_ready(st, node)
}

/// The Ready istiod pod behind ztunnel's `XDS_ADDRESS` (`SVC.NS.svc:15012`).
fn xds_istiod(st: &State, ztunnel: &Value) -> Option<Key> {
    let address = container_env(ztunnel, "XDS_ADDRESS")?;
    let host = address.split(':').next()?;
    let mut parts = host.split('.');
    let (svc, ns) = (parts.next()?, parts.next()?);
    let service = st.objects.get(&Key {
        group: String::new(),
        plural: "services".into(),
        namespace: ns.into(),
        name: svc.into(),
    })?;
    ready_pods(st, ns, service)
        .into_iter()
        .find(|(_, p)| crate::proxy::is_istiod(p))
        .map(|(k, _)| k.clone())
}

/// The cluster ztunnel claims to be in (`ISTIO_META_CLUSTER_ID`, else `CLUSTER_ID`, else
/// `Kubernetes`: ztunnel src/config.rs).
fn ztunnel_cluster(ztunnel: &Value) -> &str {
    container_env(ztunnel, "ISTIO_META_CLUSTER_ID")
        .or_else(|| container_env(ztunnel, "CLUSTER_ID"))
        .unwrap_or("Kubernetes")
}

/// Whether istiod accepts a ztunnel pod, so that its first xDS sync completes and its
/// readiness probe passes (ztunnel src/app.rs registers the `state manager` readiness task,
/// src/xds/client.rs releases it on the first sync). ztunnel sends its cluster id in the
/// `clusterid` header (src/identity/auth.rs); istiod's `KubeJWTAuthenticator` validates the
/// token with the kube client of that cluster, its own when the id is its `CLUSTER_ID`
/// (security/pkg/server/ca/authenticate/kubeauth/kube_jwt.go `getKubeClient`); any other id
/// fails (unknown: "client claims to be in cluster ..."; a remote cluster's: that cluster
/// does not know this cluster's token). So the istiod behind `XDS_ADDRESS` must be Ready and
/// have ztunnel's cluster id.
pub fn ztunnel_accepted(st: &State, ztunnel: &Value) -> bool {
    let Some(istiod) = xds_istiod(st, ztunnel).and_then(|k| st.objects.get(&k)) else {
        return false;
    };
    crate::proxy::own_cluster_id(istiod) == ztunnel_cluster(ztunnel)
}

/// Whether `pod` is a ztunnel whose readiness waits for its istiod.
pub fn waits_for_istiod(pod: &Value) -> bool {
    is_ztunnel(pod)
}

/// GLOBAL by the `serviceScopeConfigs` of an istiod's mesh config (pilot/pkg/serviceregistry/kube/
/// controller/ambient/services.go `matchServiceScope`: a config matches when its namespace and
/// services selectors (absent: everything) match; the first GLOBAL match wins).
pub fn is_global(
    scope_configs: &[Value],
    ns_labels: Option<&Value>,
    svc_labels: Option<&Value>,
) -> bool {
    scope_configs.iter().any(|c| {
        c.get("scope").and_then(Value::as_str) == Some("GLOBAL")
            && selector_matches(c.get("namespaceSelector"), ns_labels)
            && selector_matches(c.get("servicesSelector"), svc_labels)
    })
}

/// The `serviceScopeConfigs` of the mesh config istiod `pod` loaded (its `config-volume`
/// ConfigMap, `mesh` key).
fn scope_configs(st: &State, istiod: &Key) -> Vec<Value> {
    let Some(pod) = st.objects.get(istiod) else {
        return Vec::new();
    };
    let cm = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "config-volume")
        .and_then(|v| v.pointer("/configMap/name"))
        .and_then(Value::as_str)
        .unwrap_or("istio");
    st.objects
        .get(&Key {
            group: String::new(),
            plural: "configmaps".into(),
            namespace: istiod.namespace.clone(),
            name: cm.into(),
        })
        .and_then(|c| c.pointer("/data/mesh"))
        .and_then(Value::as_str)
        .and_then(|m| serde_yaml::from_str::<Value>(m).ok())
        .and_then(|m| m.get("serviceScopeConfigs").cloned())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn namespace_labels(st: &State, ns: &str) -> Option<Value> {
    st.objects
        .get(&Key::namespace_key(ns))
        .and_then(|n| n.pointer("/metadata/labels").cloned())
}

fn service<'a>(st: &'a State, client: &Client) -> Option<&'a Value> {
    st.objects
        .get(&Key {
            group: String::new(),
            plural: "services".into(),
            namespace: client.namespace.clone(),
            name: client.service.clone(),
        })
        .filter(|svc| {
            svc.pointer("/spec/ports")
                .and_then(Value::as_array)
                .is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p.get("port").and_then(Value::as_u64) == Some(client.port.into()))
                })
        })
}

/// The Ready endpoints of the client's Service in a cluster.
fn endpoints(st: &State, client: &Client) -> Vec<Endpoint> {
    let Some(svc) = service(st, client) else {
        return Vec::new();
    };
    let mut eps: Vec<Endpoint> = ready_pods(st, &client.namespace, svc)
        .into_iter()
        .map(|(k, p)| Endpoint {
            pod: k.name.clone(),
            version: container_env(p, "SERVICE_VERSION")
                .unwrap_or("")
                .to_string(),
            root: None,
        })
        .collect();
    eps.sort_by(|a, b| a.pod.cmp(&b.pod));
    eps
}

/// Whether a cluster has a usable east-west gateway for `network` (see the module docs;
/// pilot/pkg/serviceregistry/kube/controller/ambient/networks.go
/// `remoteK8sGatewayToNetworkGateways` reads class, network label, status addresses and an
/// HBONE listener with TLS mode Terminate).
pub fn east_west_gateway(st: &State, network: &str) -> bool {
    st.objects
        .iter()
        .filter(|(k, _)| k.group == "gateway.networking.k8s.io" && k.plural == "gateways")
        .any(|(k, gw)| {
            let hbone = gw
                .pointer("/spec/listeners")
                .and_then(Value::as_array)
                .is_some_and(|ls| {
                    ls.iter().any(|l| {
                        l["protocol"] == "HBONE"
                            && l.pointer("/tls/mode") == Some(&"Terminate".into())
                    })
                });
            let addresses: Vec<&str> = gw
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|a| a["type"] == "IPAddress" || a["type"] == "Hostname")
                .filter_map(|a| a["value"].as_str())
                .collect();
            let Some(svc) = st.objects.get(&Key {
                group: String::new(),
                plural: "services".into(),
                namespace: k.namespace.clone(),
                name: k.name.clone(),
            }) else {
                return false;
            };
            // Reachable from another network only through the load balancer.
            let external = svc
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    i.get("ip")
                        .or_else(|| i.get("hostname"))
                        .and_then(Value::as_str)
                })
                .any(|a| addresses.contains(&a));
            gw.pointer("/spec/gatewayClassName").and_then(Value::as_str) == Some(EAST_WEST_CLASS)
                && label(gw, "topology.istio.io/network") == Some(network)
                && hbone
                && external
                && !ready_pods(st, &k.namespace, svc).is_empty()
        })
}

/// A Ready istiod pod of the cluster (the first by name).
fn some_istiod(st: &State) -> Option<Key> {
    let mut ks: Vec<Key> = st
        .istiod_pods()
        .filter(|(_, p)| pod_ready(p))
        .map(|(k, _)| k.clone())
        .collect();
    ks.sort_by(|a, b| a.name.cmp(&b.name));
    ks.into_iter().next()
}

/// What ztunnel does for a captured client `pod` of `st`'s cluster: the local endpoints, and
/// the ztunnel and istiod that decide about the others.
pub struct Plan {
    pub local: Vec<Endpoint>,
    pub caller: Caller,
    pub istiod: Option<Key>,
    scopes: Vec<Value>,
}

/// Plans a captured client's requests; `Err(())` when no Ready ztunnel runs on its node.
#[allow(clippy::result_unit_err)]
pub fn plan(st: &State, pod: &Value, client: &Client) -> Result<Plan, ()> {
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    let (_, ztunnel) = pods_on_node(st, node, is_ztunnel)
        .find(|(_, p)| pod_ready(p))
        .ok_or(())?;
    let istiod = xds_istiod(st, ztunnel);
    let scopes = istiod
        .as_ref()
        .map(|k| scope_configs(st, k))
        .unwrap_or_default();
    let local_global = service(st, client).is_none_or(|svc| {
        is_global(
            &scopes,
            namespace_labels(st, &client.namespace).as_ref(),
            svc.pointer("/metadata/labels"),
        )
    });
    let caller = Caller {
        multi_network: istiod
            .as_ref()
            .and_then(|k| st.objects.get(k))
            .is_some_and(|p| features(p).multi_network),
        network: istiod
            .as_ref()
            .map(|k| namespace_label(st, &k.namespace, "topology.istio.io/network"))
            .unwrap_or_default(),
        ztunnel_network: container_env(ztunnel, "NETWORK").unwrap_or("").to_string(),
        root: istiod
            .as_ref()
            .and_then(|k| st.istiod_roots.get(k).cloned().flatten()),
        local_global,
    };
    Ok(Plan {
        local: endpoints(st, client),
        caller,
        istiod,
        scopes,
    })
}

/// What a peer cluster `st` contributes to a captured client's request.
pub fn peer(st: &State, plan: &Plan, client: &Client) -> (Peer, Vec<Endpoint>) {
    let istiod = some_istiod(st);
    let network = istiod
        .as_ref()
        .map(|k| namespace_label(st, &k.namespace, "topology.istio.io/network"))
        .unwrap_or_default();
    let global = service(st, client).is_some_and(|svc| {
        is_global(
            &plan.scopes,
            namespace_labels(st, &client.namespace).as_ref(),
            svc.pointer("/metadata/labels"),
        )
    });
    let peer = Peer {
        gateway: east_west_gateway(st, &network),
        network,
        global,
        root: istiod
            .as_ref()
            .and_then(|k| st.istiod_roots.get(k).cloned().flatten()),
    };
    (peer, endpoints(st, client))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caller() -> Caller {
        Caller {
            multi_network: true,
            network: "net1".into(),
            ztunnel_network: "net1".into(),
            root: Some("root".into()),
            local_global: true,
        }
    }

    fn peer(network: &str) -> Peer {
        Peer {
            network: network.into(),
            global: true,
            gateway: true,
            root: Some("root".into()),
        }
    }

    #[test]
    fn a_global_service_behind_a_programmed_gateway_with_a_shared_root_is_reachable() {
        assert_eq!(reachable(&caller(), &peer("net2"), true), Ok(()));
    }

    #[test]
    fn multi_network_off_keeps_the_client_in_its_cluster() {
        let off = Caller {
            multi_network: false,
            ..caller()
        };
        assert_eq!(
            reachable(&off, &peer("net2"), true),
            Err(Blocked::MultiNetworkOff)
        );
    }

    #[test]
    fn an_unsynced_peer_is_out_of_reach() {
        assert_eq!(
            reachable(&caller(), &peer("net2"), false),
            Err(Blocked::NotSynced)
        );
    }

    #[test]
    fn only_global_services_are_merged_across_clusters() {
        let local = Peer {
            global: false,
            ..peer("net2")
        };
        assert_eq!(reachable(&caller(), &local, true), Err(Blocked::NotGlobal));
        let local_here = Caller {
            local_global: false,
            ..caller()
        };
        assert_eq!(
            reachable(&local_here, &peer("net2"), true),
            Err(Blocked::NotGlobal)
        );
    }

    #[test]
    fn another_network_needs_its_east_west_gateway_the_same_one_does_not() {
        let no_gateway = Peer {
            gateway: false,
            ..peer("net2")
        };
        assert_eq!(
            reachable(&caller(), &no_gateway, true),
            Err(Blocked::NoEastWestGateway)
        );
        let same = Peer {
            gateway: false,
            ..peer("net1")
        };
        assert_eq!(reachable(&caller(), &same, true), Ok(()));
    }

    #[test]
    fn different_or_self_signed_roots_break_mtls() {
        let other = Peer {
            root: Some("other".into()),
            ..peer("net2")
        };
        assert_eq!(
            reachable(&caller(), &other, true),
            Err(Blocked::NoSharedRoot)
        );
        let self_signed = Caller {
            root: None,
            ..caller()
        };
        let theirs = Peer {
            root: None,
            ..peer("net2")
        };
        assert_eq!(
            reachable(&self_signed, &theirs, true),
            Err(Blocked::NoSharedRoot)
        );
    }

    #[test]
    fn a_ztunnel_on_the_wrong_network_fails_cross_network_requests_only() {
        let wrong = Caller {
            ztunnel_network: String::new(),
            ..caller()
        };
        assert_eq!(
            reachable(&wrong, &peer("net2"), true),
            Err(Blocked::ZtunnelNetworkMismatch)
        );
        assert_eq!(reachable(&wrong, &peer("net1"), true), Ok(()));
    }

    #[test]
    fn the_ambient_profile_scope_rule_selects_services_labelled_global() {
        let scopes = vec![json!({"servicesSelector": {"matchExpressions": [
            {"key": "istio.io/global", "operator": "In", "values": ["true"]}]}, "scope": "GLOBAL"})];
        assert!(is_global(
            &scopes,
            None,
            Some(&json!({"istio.io/global": "true"}))
        ));
        assert!(!is_global(&scopes, None, Some(&json!({"app": "x"}))));
        assert!(!is_global(&scopes, None, None));
        assert!(!is_global(
            &[],
            None,
            Some(&json!({"istio.io/global": "true"}))
        ));
        let by_namespace = vec![
            json!({"namespaceSelector": {"matchLabels": {"shared": "yes"}}, "scope": "GLOBAL"}),
        ];
        assert!(is_global(
            &by_namespace,
            Some(&json!({"shared": "yes"})),
            None
        ));
    }

    fn state() -> State {
        let mut st = State::new("c", String::new());
        st.add_node();
        for (gv, plural, obj) in [
            (
                "v1",
                "namespaces",
                json!({"metadata": {"name": "istio-system"}}),
            ),
            (
                "v1",
                "namespaces",
                json!({"metadata": {"name": "app", "labels": {"istio.io/dataplane-mode": "ambient"}}}),
            ),
            (
                "v1",
                "configmaps",
                json!({"metadata": {"name": "istio-cni-config", "namespace": "istio-system"},
                "data": {"AMBIENT_ENABLED": "true"}}),
            ),
            (
                "v1",
                "pods",
                json!({"metadata": {"name": "istio-cni-node-x", "namespace": "istio-system",
                "labels": {"k8s-app": "istio-cni-node"}}, "spec": {"containers": [{"name": "install-cni",
                "envFrom": [{"configMapRef": {"name": "istio-cni-config"}}]}]}}),
            ),
        ] {
            let (g, v) = gv.split_once('/').unwrap_or(("", gv));
            let res = st.resource(g, v, plural).unwrap();
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            st.create(&res, &ns, obj, false).unwrap();
        }
        st
    }

    #[test]
    fn a_pod_of_an_ambient_namespace_is_captured_unless_it_opts_out_or_cni_is_off() {
        let mut st = state();
        let pod = |labels: Value| {
            json!({"metadata": {"name": "p", "namespace": "app", "labels": labels},
            "spec": {"nodeName": "c-control-plane"}})
        };
        let key = crate::proxy::pod_key("app", "p");
        assert!(captured(&st, &key, &pod(json!({}))));
        assert!(!captured(
            &st,
            &key,
            &pod(json!({"istio.io/dataplane-mode": "none"}))
        ));
        let other = crate::proxy::pod_key("istio-system", "p");
        assert!(
            !captured(&st, &other, &pod(json!({}))),
            "namespace not ambient"
        );
        assert!(captured(
            &st,
            &other,
            &pod(json!({"istio.io/dataplane-mode": "ambient"}))
        ));
        st.sidecar_roots.insert(key.clone(), None);
        assert!(
            !captured(&st, &key, &pod(json!({}))),
            "a sidecar pod is not captured"
        );
        st.sidecar_roots.clear();
        let cm = Key {
            group: String::new(),
            plural: "configmaps".into(),
            namespace: "istio-system".into(),
            name: "istio-cni-config".into(),
        };
        st.objects.get_mut(&cm).unwrap()["data"]["AMBIENT_ENABLED"] = json!("false");
        assert!(!captured(&st, &key, &pod(json!({}))), "cni without ambient");
    }

    #[test]
    fn ztunnel_is_accepted_only_by_an_istiod_of_its_cluster_id() {
        let mut st = state();
        for (gv, plural, obj) in [
            (
                "v1",
                "services",
                json!({"metadata": {"name": "istiod", "namespace": "istio-system"},
                "spec": {"selector": {"app": "istiod"}, "ports": [{"port": 15012}]}}),
            ),
            (
                "v1",
                "pods",
                json!({"metadata": {"name": "istiod-x", "namespace": "istio-system",
                "labels": {"app": "istiod"}}, "spec": {"containers": [{"name": "discovery",
                "env": [{"name": "CLUSTER_ID", "value": "c1"}]}]}}),
            ),
        ] {
            let res = st.resource("", gv, plural).unwrap();
            st.create(&res, "istio-system", obj, false).unwrap();
        }
        let ztunnel = |id: Option<&str>| {
            let mut env =
                vec![json!({"name": "XDS_ADDRESS", "value": "istiod.istio-system.svc:15012"})];
            if let Some(id) = id {
                env.push(json!({"name": "ISTIO_META_CLUSTER_ID", "value": id}));
            }
            json!({"metadata": {"labels": {"app": "ztunnel"}}, "spec": {"containers": [{"name": "istio-proxy", "env": env}]}})
        };
        assert!(waits_for_istiod(&ztunnel(None)));
        assert!(ztunnel_accepted(&st, &ztunnel(Some("c1"))));
        assert!(!ztunnel_accepted(&st, &ztunnel(Some("c2"))));
        assert!(
            !ztunnel_accepted(&st, &ztunnel(None)),
            "`Kubernetes` is not c1"
        );
    }
}
