//! istiod's Gateway API controllers, for the ambient east-west gateway (Istio 1.29.0
//! pilot/pkg/config/kube/gateway): the class controller creates the built-in GatewayClasses,
//! the deployment controller renders a Deployment, Service and ServiceAccount for each Gateway of
//! class `istio-east-west`, and the status controller writes the Gateway's `Accepted` and
//! `Programmed` conditions and its addresses from that Service.
//!
//! All of it runs only while a Ready istiod runs and the Gateway API CRDs are installed
//! (istiod starts these controllers once the CRDs exist). Which classes an istiod knows
//! (deploymentcontroller.go `getBuiltinClasses`, `getClassInfos`): `istio` always,
//! `istio-remote` with `PILOT_MULTI_NETWORK_DISCOVER_GATEWAY_API` (on by default),
//! `istio-waypoint` with ambient (`PILOT_ENABLE_AMBIENT`), `istio-east-west` with ambient
//! multi-network (`AMBIENT_ENABLE_MULTI_NETWORK`, read only when `PILOT_ENABLE_AMBIENT` is on:
//! pilot/pkg/features/ambient.go `registerAmbient`; off by default from 1.28 through 1.31).

use serde_json::{Value, json};

use crate::controllers::istiod_revision;
use crate::proxy::{container_env, pod_ready};
use crate::store::{Key, State, WriteMode, meta_str};

/// The class of ambient east-west gateways (pkg/config/constants `EastWestGatewayClassName`).
pub const EAST_WEST_CLASS: &str = "istio-east-west";
/// Its controller (`ManagedGatewayEastWestController`) and the label value naming it
/// (`ManagedGatewayEastWestControllerLabel`).
const EAST_WEST_CONTROLLER: &str = "istio.io/eastwest-controller";
const EAST_WEST_CONTROLLER_LABEL: &str = "istio.io-eastwest-controller";
/// The annotation istiod stamps on Gateways it manages (deploymentcontroller.go
/// `ControllerVersionAnnotation`, `ControllerVersion` 5).
const CONTROLLER_VERSION: &str = "gateway.istio.io/controller-version";

/// What an istiod pod's environment turns on (Go `strconv.ParseBool` spellings).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IstiodFeatures {
    /// `PILOT_ENABLE_AMBIENT`.
    pub ambient: bool,
    /// `AMBIENT_ENABLE_MULTI_NETWORK`, only with ambient.
    pub multi_network: bool,
    /// `PILOT_MULTI_NETWORK_DISCOVER_GATEWAY_API` (default true).
    pub discover_gateway_api: bool,
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The features an istiod pod runs with.
pub fn features(pod: &Value) -> IstiodFeatures {
    let flag = |name: &str, default: bool| {
        container_env(pod, name)
            .and_then(parse_bool)
            .unwrap_or(default)
    };
    let ambient = flag("PILOT_ENABLE_AMBIENT", false);
    IstiodFeatures {
        ambient,
        multi_network: ambient && flag("AMBIENT_ENABLE_MULTI_NETWORK", false),
        discover_gateway_api: flag("PILOT_MULTI_NETWORK_DISCOVER_GATEWAY_API", true),
    }
}

/// The built-in classes of an istiod with `f`: (name, controller, description).
pub fn builtin_classes(f: &IstiodFeatures) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut out = vec![(
        "istio",
        "istio.io/gateway-controller",
        "The default Istio GatewayClass",
    )];
    if f.discover_gateway_api {
        out.push((
            "istio-remote",
            "istio.io/unmanaged-gateway",
            "Remote to this cluster. Does not deploy or affect configuration.",
        ));
    }
    if f.ambient {
        out.push((
            "istio-waypoint",
            "istio.io/mesh-controller",
            "The default Istio waypoint GatewayClass",
        ));
    }
    if f.multi_network {
        out.push((
            EAST_WEST_CLASS,
            EAST_WEST_CONTROLLER,
            "The default GatewayClass for Istio East West Gateways",
        ));
    }
    out
}

fn label<'a>(obj: &'a Value, name: &str) -> Option<&'a str> {
    obj.pointer(&format!(
        "/metadata/labels/{}",
        name.replace('~', "~0").replace('/', "~1")
    ))
    .and_then(Value::as_str)
}

/// A `metav1.Condition`, keeping the transition time of an unchanged one (kstatus
/// `UpdateConditionIfChanged`).
fn condition(
    old: Option<&Value>,
    kind: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: &Value,
    now: &str,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let same = old
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == kind && c["status"] == status)
        });
    let since = same
        .map(|c| c["lastTransitionTime"].clone())
        .unwrap_or(json!(now));
    json!({"type": kind, "status": status, "observedGeneration": generation,
           "lastTransitionTime": since, "reason": reason, "message": message})
}

/// What istiod's status controller reports for an east-west Gateway, given its Service.
///
/// conversion.go `reportGatewayStatus` with context.go `ResolveGatewayInstances`: the gateway
/// service `<name>.<ns>.svc.cluster.local` must exist ("hostname ... not found"), have Ready
/// endpoints ("no instances found for hostname ...") and, being a LoadBalancer, an external
/// address ("address pending for hostname ..."); each warning makes `Programmed` False
/// (`AddressNotAssigned`, or `AddressNotUsable` for a missing Service). Addresses: the load
/// balancer's (IP or host name) once assigned; before that, with endpoints, the Service's
/// cluster IP (the class reports IPs and host names; a pending host is not reported).
pub fn gateway_status(
    gw: &Value,
    service: Option<&Value>,
    ready_endpoints: bool,
    now: &str,
) -> Value {
    let name = meta_str(gw, "name");
    let ns = meta_str(gw, "namespace");
    let generation = gw
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(1));
    let host = format!("{name}.{ns}.svc.cluster.local");
    let ports: Vec<i64> = {
        let mut ps: Vec<i64> = gw
            .pointer("/spec/listeners")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|l| l.get("port").and_then(Value::as_i64))
            .collect();
        ps.sort();
        ps.dedup();
        ps
    };
    let mut internal: Vec<String> = Vec::new();
    let mut internal_ip: Vec<String> = Vec::new();
    let mut external: Vec<String> = Vec::new();
    let mut pending = false;
    let mut warnings: Vec<String> = Vec::new();
    let mut unusable = false;
    match service {
        None => {
            warnings.push(format!("hostname {host:?} not found"));
            unusable = true;
        }
        Some(svc) => {
            let svc_ports: Vec<i64> = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("port").and_then(Value::as_i64))
                .collect();
            for port in &ports {
                if ready_endpoints && svc_ports.contains(port) {
                    internal.push(format!("{host}:{port}"));
                    if let Some(ip) = svc.pointer("/spec/clusterIP").and_then(Value::as_str) {
                        internal_ip.push(ip.to_string());
                    }
                    let ingress: Vec<String> = svc
                        .pointer("/status/loadBalancer/ingress")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|i| {
                            i.get("ip")
                                .or_else(|| i.get("hostname"))
                                .and_then(Value::as_str)
                                .map(String::from)
                        })
                        .collect();
                    if !ingress.is_empty() {
                        external.extend(ingress);
                    } else if svc.pointer("/spec/type").and_then(Value::as_str)
                        == Some("LoadBalancer")
                        && !pending
                    {
                        warnings.push(format!("address pending for hostname {host:?}"));
                        pending = true;
                    }
                } else if !ready_endpoints {
                    warnings.push(format!("no instances found for hostname {host:?}"));
                } else {
                    warnings.push(format!("port {port} not found for hostname {host:?}"));
                    unusable = true;
                }
            }
        }
    }
    for v in [
        &mut internal,
        &mut internal_ip,
        &mut external,
        &mut warnings,
    ] {
        v.sort();
        v.dedup();
    }
    let (programmed, reason, message) = if warnings.is_empty() {
        let message = if internal.is_empty() {
            "Resource programmed".to_string()
        } else {
            format!(
                "Resource programmed, assigned to service(s) {}",
                human_join(&internal)
            )
        };
        (true, "Programmed", message)
    } else {
        let message = if internal.is_empty() {
            format!(
                "Failed to assign to any requested addresses: {}",
                warnings.join("; ")
            )
        } else {
            format!(
                "Assigned to service(s) {}, but failed to assign to all requested addresses: {}",
                human_join(&internal),
                warnings.join("; ")
            )
        };
        let reason = if unusable {
            "AddressNotUsable"
        } else {
            "AddressNotAssigned"
        };
        (false, reason, message)
    };
    let old = gw.get("status");
    let mut addresses = external.clone();
    if addresses.is_empty() {
        addresses = internal_ip.clone();
        if !internal.is_empty() && !pending && !addresses.contains(&host) {
            addresses.push(host.clone());
        }
    }
    let mut status = json!({
        "conditions": [
            condition(old, "Accepted", true, "Accepted", "Resource accepted", &generation, now),
            condition(old, "Programmed", programmed, reason, &message, &generation, now),
        ],
        "listeners": listener_status(gw, &generation, now),
    });
    if addresses.is_empty() {
        // Never remove an address once reported (the status controller keeps the old ones).
        if let Some(a) = old.and_then(|s| s.get("addresses")) {
            status["addresses"] = a.clone();
        }
    } else {
        let typed: Vec<Value> = addresses
            .iter()
            .map(|a| {
                let kind = if a.parse::<std::net::IpAddr>().is_ok() {
                    "IPAddress"
                } else {
                    "Hostname"
                };
                json!({"type": kind, "value": a})
            })
            .collect();
        status["addresses"] = json!(typed);
    }
    status
}

/// `a`, `a and b`, `a, b, and c` (conversion.go `humanReadableJoin`).
fn human_join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [a, b] => format!("{a} and {b}"),
        [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
    }
}

/// Each listener accepted and programmed, no routes attached.
fn listener_status(gw: &Value, generation: &Value, now: &str) -> Value {
    let old_listeners = gw.pointer("/status/listeners").and_then(Value::as_array);
    let listeners: Vec<Value> = gw
        .pointer("/spec/listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|l| {
            let name = l.get("name").cloned().unwrap_or(json!(""));
            let old = old_listeners.and_then(|ls| ls.iter().find(|o| o["name"] == name));
            json!({
                "name": name,
                "attachedRoutes": 0,
                "supportedKinds": [],
                "conditions": [
                    condition(old, "Accepted", true, "Accepted", "No errors found", generation, now),
                    condition(old, "NoConflicts", false, "NoConflicts", "No errors found", generation, now),
                    condition(old, "Programmed", true, "Programmed", "No errors found", generation, now),
                    condition(old, "ResolvedRefs", true, "ResolvedRefs", "No errors found", generation, now),
                ],
            })
        })
        .collect();
    json!(listeners)
}

/// The objects the deployment controller renders for an east-west Gateway (istio-discovery
/// files/waypoint.yaml with `disableNameSuffix`: everything is named after the Gateway):
/// ServiceAccount, Deployment, Service. `istiod` is the pod of the istiod rendering them
/// (its image tag names the proxy's, its namespace's network label is the default network).
pub fn rendered(gw: &Value, istiod: &Value, network: &str) -> Vec<(&'static str, Value)> {
    let name = meta_str(gw, "name");
    let ns = meta_str(gw, "namespace");
    let class = gw
        .pointer("/spec/gatewayClassName")
        .and_then(Value::as_str)
        .unwrap_or("");
    let revision = istiod_revision(istiod);
    // The Gateway's own labels are the infrastructure labels (EnableGatewayAPICopyLabelsAnnotations),
    // plus the istiod's network when the Gateway names none (`setLabelOverrides`).
    let mut infra = gw.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
    if !infra.is_object() {
        infra = json!({});
    }
    if label(gw, "topology.istio.io/network").is_none() && !network.is_empty() {
        infra["topology.istio.io/network"] = json!(network);
    }
    let gw_network = infra["topology.istio.io/network"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let with = |extra: Value| {
        let mut l = infra.clone();
        for (k, v) in extra.as_object().unwrap() {
            l[k] = v.clone();
        }
        l
    };
    let owner = json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                        "name": name, "uid": meta_str(gw, "uid")}]);
    let image = istiod
        .pointer("/spec/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or("docker.io/istio/pilot:latest")
        .replace("/pilot:", "/proxyv2:");
    let cluster_id = crate::proxy::own_cluster_id(istiod);
    let account = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns, "ownerReferences": owner,
                     "labels": with(json!({"gateway.networking.k8s.io/gateway-name": name}))},
    });
    let pod_labels = with(json!({
        "sidecar.istio.io/inject": "false",
        "istio.io/dataplane-mode": "none",
        "service.istio.io/canonical-name": name,
        "service.istio.io/canonical-revision": "latest",
        "gateway.networking.k8s.io/gateway-name": name,
        "gateway.networking.k8s.io/gateway-class-name": class,
        "gateway.istio.io/managed": EAST_WEST_CONTROLLER_LABEL,
    }));
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "ownerReferences": owner,
            "labels": with(json!({
                "gateway.networking.k8s.io/gateway-name": name,
                "gateway.networking.k8s.io/gateway-class-name": class,
                "gateway.istio.io/managed": EAST_WEST_CONTROLLER_LABEL,
            }))},
        "spec": {
            "selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": name}},
            "template": {
                "metadata": {"labels": pod_labels,
                    "annotations": {"istio.io/rev": revision, "prometheus.io/path": "/stats/prometheus",
                                    "prometheus.io/port": "15020", "prometheus.io/scrape": "true"}},
                "spec": {
                    "serviceAccountName": name,
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "istio-proxy",
                        "image": image,
                        "args": ["proxy", "waypoint", "--domain", format!("{ns}.svc.cluster.local"),
                                 "--serviceCluster", format!("{name}.{ns}")],
                        "ports": [
                            {"containerPort": 15020, "name": "metrics", "protocol": "TCP"},
                            {"containerPort": 15021, "name": "status-port", "protocol": "TCP"},
                            {"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"},
                        ],
                        "env": [
                            {"name": "ISTIO_META_CLUSTER_ID", "value": cluster_id},
                            {"name": "ISTIO_META_NETWORK", "value": gw_network},
                            {"name": "ISTIO_META_REQUESTED_NETWORK_VIEW", "value": gw_network},
                            {"name": "ISTIO_META_INTERCEPTION_MODE", "value": "REDIRECT"},
                            {"name": "ISTIO_META_WORKLOAD_NAME", "value": name},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}},
                    }],
                },
            },
        },
    });
    let ports: Vec<Value> = std::iter::once(
        json!({"name": "status-port", "port": 15021, "protocol": "TCP", "appProtocol": "tcp"}),
    )
    .chain(
        gw.pointer("/spec/listeners")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, l)| {
                let protocol = l
                    .get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_lowercase();
                let name = l
                    .get("name")
                    .and_then(Value::as_str)
                    .map(String::from)
                    .unwrap_or_else(|| format!("{protocol}-{i}"));
                json!({"name": name, "port": l.get("port").cloned().unwrap_or(json!(0)),
                           "protocol": "TCP", "appProtocol": protocol})
            }),
    )
    .fold(Vec::new(), |mut acc: Vec<Value>, p| {
        if !acc.iter().any(|a| a["port"] == p["port"]) {
            acc.push(p);
        }
        acc
    });
    let service_type = gw
        .pointer("/metadata/annotations/networking.istio.io~1service-type")
        .and_then(Value::as_str)
        .unwrap_or("LoadBalancer");
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "ownerReferences": owner,
            "annotations": {"networking.istio.io/traffic-distribution": "PreferClose"},
            "labels": with(json!({
                "gateway.networking.k8s.io/gateway-name": name,
                "gateway.networking.k8s.io/gateway-class-name": class,
            }))},
        "spec": {
            "ipFamilyPolicy": "PreferDualStack",
            "ports": ports,
            "selector": {"gateway.networking.k8s.io/gateway-name": name},
            "type": service_type,
        },
    });
    vec![
        ("serviceaccounts", account),
        ("deployments", deployment),
        ("services", service),
    ]
}

/// The revision whose istiod owns an object: its `istio.io/rev` label, or the default
/// revision, each through the revision tags (`istio-revision-tag-<tag>` webhook configurations
/// name the revision they stand for); pkg/revisions `TagWatcher.IsMine`.
fn owning_revision(st: &State, obj: &Value) -> String {
    let wanted = label(obj, "istio.io/rev").unwrap_or("default");
    st.objects
        .iter()
        .find(|(k, _)| {
            k.group == "admissionregistration.k8s.io"
                && k.plural == "mutatingwebhookconfigurations"
                && k.name == format!("istio-revision-tag-{wanted}")
        })
        .and_then(|(_, w)| label(w, "istio.io/rev"))
        .unwrap_or(wanted)
        .to_string()
}

impl State {
    /// Ready istiod pods and what they run with.
    fn ready_istiods(&self) -> Vec<(Key, Value, IstiodFeatures)> {
        self.istiod_pods()
            .filter(|(_, p)| pod_ready(p) && meta_str(p, "deletionTimestamp").is_empty())
            .map(|(k, p)| (k.clone(), p.clone(), features(p)))
            .collect()
    }

    /// One pass of istiod's Gateway API controllers (see the module docs).
    pub(crate) fn istiod_gateway_controllers(&mut self) {
        let (Some(classes), Some(gateways)) = (
            self.resource("gateway.networking.k8s.io", "v1", "gatewayclasses"),
            self.resource("gateway.networking.k8s.io", "v1", "gateways"),
        ) else {
            return;
        };
        let istiods = self.ready_istiods();
        if istiods.is_empty() {
            return;
        }
        let now = crate::util::now_rfc3339();
        // The class controller: the built-in classes that do not exist yet, and their status.
        let mut known: Vec<(&str, &str, &str)> = Vec::new();
        for (_, _, f) in &istiods {
            for c in builtin_classes(f) {
                if !known.iter().any(|k| k.0 == c.0) {
                    known.push(c);
                }
            }
        }
        for (name, controller, description) in &known {
            let key = Key::new(&classes, "", name);
            if !self.objects.contains_key(&key) {
                let class = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                    "metadata": {"name": name},
                    "spec": {"controllerName": controller, "description": description}});
                let _ = self.create(&classes, "", class, false);
            }
        }
        let class_objects: Vec<(Key, Value)> = self
            .select(&classes, None)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, mut class) in class_objects {
            let controller = class
                .pointer("/spec/controllerName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !known.iter().any(|k| k.1 == controller) {
                continue;
            }
            let generation = class
                .pointer("/metadata/generation")
                .cloned()
                .unwrap_or(json!(1));
            let old = class.get("status").cloned();
            class["status"] = json!({"conditions": [condition(old.as_ref(), "Accepted", true,
                "Accepted", "Handled by Istio controller", &generation, &now)]});
            let _ = self.update(&classes, &key, class, WriteMode::Status, false);
        }
        // The deployment and status controllers, for east-west Gateways.
        let east_west: Vec<(Key, Value)> = self
            .select(&gateways, None)
            .filter(|(_, g)| {
                g.pointer("/spec/gatewayClassName").and_then(Value::as_str) == Some(EAST_WEST_CLASS)
                    && meta_str(g, "deletionTimestamp").is_empty()
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, gw) in east_west {
            let rev = owning_revision(self, &gw);
            let Some((istiod_key, istiod, _)) = istiods
                .iter()
                .find(|(_, p, f)| f.multi_network && istiod_revision(p) == rev)
            else {
                continue;
            };
            self.east_west_gateway(&gateways, &key, gw, istiod_key, istiod, &now);
        }
    }

    fn east_west_gateway(
        &mut self,
        gateways: &crate::registry::Resource,
        key: &Key,
        mut gw: Value,
        istiod_key: &Key,
        istiod: &Value,
        now: &str,
    ) {
        if label(&gw, "istio.io/rev").is_none()
            && gw
                .pointer(&format!(
                    "/metadata/annotations/{}",
                    CONTROLLER_VERSION.replace('/', "~1")
                ))
                .is_none()
        {
            crate::controllers::set_default(&mut gw, "/metadata/annotations", json!({}));
            gw["metadata"]["annotations"][CONTROLLER_VERSION] = json!("5");
            if let Ok(stored) = self.update(gateways, key, gw.clone(), WriteMode::Internal, false) {
                gw = stored;
            }
        }
        let network =
            crate::mesh::namespace_label(self, &istiod_key.namespace, "topology.istio.io/network");
        for (plural, obj) in rendered(&gw, istiod, &network) {
            let group = if plural == "deployments" { "apps" } else { "" };
            let Some(res) = self.resource(group, "v1", plural) else {
                continue;
            };
            let k = Key::new(&res, &key.namespace, &key.name);
            match self.objects.get(&k).cloned() {
                None => {
                    let _ = self.create(&res, &key.namespace, obj, false);
                }
                Some(mut existing) => {
                    let mut changed = false;
                    for field in ["labels", "annotations", "ownerReferences"] {
                        if let Some(v) = obj.pointer(&format!("/metadata/{field}"))
                            && existing.pointer(&format!("/metadata/{field}")) != Some(v)
                        {
                            existing["metadata"][field] = v.clone();
                            changed = true;
                        }
                    }
                    if let Some(spec) = obj.get("spec") {
                        let mut merged = existing.get("spec").cloned().unwrap_or(json!({}));
                        for (f, v) in spec.as_object().unwrap() {
                            if merged.get(f) != Some(v) {
                                merged[f] = v.clone();
                                changed = true;
                            }
                        }
                        existing["spec"] = merged;
                    }
                    if changed {
                        let _ = self.update(&res, &k, existing, WriteMode::Main, false);
                    }
                }
            }
        }
        let svc_key = Key {
            group: String::new(),
            plural: "services".into(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        };
        let service = self.objects.get(&svc_key).cloned();
        let ready = service
            .as_ref()
            .is_some_and(|s| !crate::mesh::ready_pods(self, &key.namespace, s).is_empty());
        let status = gateway_status(&gw, service.as_ref(), ready, now);
        if gw.get("status") != Some(&status) {
            gw["status"] = status;
            let _ = self.update(gateways, key, gw, WriteMode::Status, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway() -> Value {
        json!({"metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system", "generation": 1,
                "uid": "u", "labels": {"topology.istio.io/network": "net1"}},
            "spec": {"gatewayClassName": "istio-east-west", "listeners": [{"name": "mesh", "port": 15008,
                "protocol": "HBONE", "tls": {"mode": "Terminate",
                "options": {"gateway.istio.io/tls-terminate-mode": "ISTIO_MUTUAL"}}}]}})
    }

    fn service(ingress: Value) -> Value {
        json!({"metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.9",
                     "ports": [{"name": "status-port", "port": 15021}, {"name": "mesh", "port": 15008}]},
            "status": {"loadBalancer": ingress}})
    }

    fn programmed(status: &Value) -> (String, String, String) {
        let c = &status["conditions"][1];
        assert_eq!(c["type"], "Programmed");
        (
            c["status"].as_str().unwrap().into(),
            c["reason"].as_str().unwrap().into(),
            c["message"].as_str().unwrap().into(),
        )
    }

    const HOST: &str = "istio-eastwestgateway.istio-system.svc.cluster.local";

    #[test]
    fn the_ambient_multi_network_flag_needs_ambient_and_adds_the_east_west_class() {
        let pod = |env: Value| json!({"spec": {"containers": [{"name": "discovery", "env": env}]}});
        let plain = features(&pod(json!([])));
        assert_eq!(
            builtin_classes(&plain)
                .iter()
                .map(|c| c.0)
                .collect::<Vec<_>>(),
            ["istio", "istio-remote"]
        );
        let ignored = features(&pod(
            json!([{"name": "AMBIENT_ENABLE_MULTI_NETWORK", "value": "true"}]),
        ));
        assert!(
            !ignored.multi_network,
            "ignored without PILOT_ENABLE_AMBIENT"
        );
        let ambient = features(&pod(
            json!([{"name": "PILOT_ENABLE_AMBIENT", "value": "true"}]),
        ));
        assert!(ambient.ambient && !ambient.multi_network, "off by default");
        let multi = features(&pod(json!([
            {"name": "PILOT_ENABLE_AMBIENT", "value": "true"},
            {"name": "AMBIENT_ENABLE_MULTI_NETWORK", "value": "true"}])));
        assert_eq!(
            builtin_classes(&multi)
                .iter()
                .map(|c| (c.0, c.1))
                .collect::<Vec<_>>(),
            [
                ("istio", "istio.io/gateway-controller"),
                ("istio-remote", "istio.io/unmanaged-gateway"),
                ("istio-waypoint", "istio.io/mesh-controller"),
                ("istio-east-west", "istio.io/eastwest-controller"),
            ]
        );
    }

    #[test]
    fn without_ready_endpoints_the_gateway_is_accepted_but_not_programmed() {
        let s = gateway_status(&gateway(), Some(&service(json!({}))), false, "t");
        assert_eq!(s["conditions"][0]["type"], "Accepted");
        assert_eq!(s["conditions"][0]["status"], "True");
        assert_eq!(
            programmed(&s),
            (
                "False".into(),
                "AddressNotAssigned".into(),
                format!(
                    "Failed to assign to any requested addresses: no instances found for hostname \"{HOST}\""
                )
            )
        );
        assert!(s.get("addresses").is_none());
    }

    #[test]
    fn a_pending_load_balancer_reports_the_cluster_ip_and_stays_unprogrammed() {
        let s = gateway_status(&gateway(), Some(&service(json!({}))), true, "t");
        assert_eq!(
            programmed(&s),
            (
                "False".into(),
                "AddressNotAssigned".into(),
                format!(
                    "Assigned to service(s) {HOST}:15008, but failed to assign to all requested addresses: address pending for hostname \"{HOST}\""
                )
            )
        );
        assert_eq!(
            s["addresses"],
            json!([{"type": "IPAddress", "value": "10.96.0.9"}])
        );
    }

    #[test]
    fn a_load_balancer_address_programs_the_gateway() {
        let s = gateway_status(
            &gateway(),
            Some(&service(
                json!({"ingress": [{"ip": "172.18.0.1", "ipMode": "VIP"}]}),
            )),
            true,
            "t",
        );
        assert_eq!(
            programmed(&s),
            (
                "True".into(),
                "Programmed".into(),
                format!("Resource programmed, assigned to service(s) {HOST}:15008")
            )
        );
        assert_eq!(
            s["addresses"],
            json!([{"type": "IPAddress", "value": "172.18.0.1"}])
        );
        assert_eq!(s["conditions"][1]["observedGeneration"], 1);
        assert_eq!(s["listeners"][0]["name"], "mesh");
        let elb = "a1-2.elb.us-east-1.amazonaws.com";
        let s = gateway_status(
            &gateway(),
            Some(&service(json!({"ingress": [{"hostname": elb}]}))),
            true,
            "t",
        );
        assert_eq!(s["addresses"], json!([{"type": "Hostname", "value": elb}]));
    }

    #[test]
    fn a_missing_service_is_an_unusable_address_and_unchanged_conditions_keep_their_time() {
        let mut gw = gateway();
        let s = gateway_status(&gw, None, false, "t1");
        assert_eq!(programmed(&s).1, "AddressNotUsable");
        gw["status"] = s;
        let again = gateway_status(&gw, None, false, "t2");
        assert_eq!(again["conditions"][1]["lastTransitionTime"], "t1");
        assert_eq!(again, gw["status"]);
    }

    #[test]
    fn the_rendered_objects_are_named_after_the_gateway_and_select_its_pods() {
        let istiod = json!({"metadata": {"labels": {"app": "istiod", "istio.io/rev": "default"}},
            "spec": {"containers": [{"name": "discovery", "image": "docker.io/istio/pilot:1.29.0",
                "env": [{"name": "CLUSTER_ID", "value": "c1"}]}]}});
        let objs = rendered(&gateway(), &istiod, "net1");
        let names: Vec<(&str, &str)> = objs
            .iter()
            .map(|(p, o)| (*p, meta_str(o, "name")))
            .collect();
        assert_eq!(
            names,
            [
                ("serviceaccounts", "istio-eastwestgateway"),
                ("deployments", "istio-eastwestgateway"),
                ("services", "istio-eastwestgateway"),
            ]
        );
        let dep = &objs[1].1;
        assert_eq!(
            dep["spec"]["template"]["metadata"]["labels"]["gateway.istio.io/managed"],
            "istio.io-eastwest-controller"
        );
        assert_eq!(
            dep["spec"]["template"]["spec"]["containers"][0]["image"],
            "docker.io/istio/proxyv2:1.29.0"
        );
        let svc = &objs[2].1;
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"name": "status-port", "port": 15021, "protocol": "TCP", "appProtocol": "tcp"},
                   {"name": "mesh", "port": 15008, "protocol": "TCP", "appProtocol": "hbone"}])
        );
        assert_eq!(
            svc["metadata"]["labels"]["topology.istio.io/network"],
            "net1"
        );
        assert_eq!(svc["metadata"]["ownerReferences"][0]["kind"], "Gateway");
    }
}
