//! An east-west gateway's part beyond its Helm release (a `Release` value of the `gateway`
//! chart): its external address, waited for (or given in the mesh file), and the Istio
//! objects that route through it, applied server-side by meshup — `cross-network-gateway`
//! (port 15443, `AUTO_PASSTHROUGH`, for traffic from other networks) and, on a primary that
//! controls remote clusters, `istiod-gateway` with its VirtualService `istiod-vs` (istiod on
//! 15012 and its webhook on 15017, `PASSTHROUGH`).

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Action, ClusterCtx, Component, ScriptCx, Stage};
use crate::components::handoff::Handoff;
use crate::model::values::EAST_WEST_GATEWAY;
use crate::observe::facts::{ClusterStatus, column};
use crate::observe::finding::Finding;
use crate::tools::kubectl;
use crate::tools::runner::{self, StepError};
use crate::trust::sensitive::Sensitive;

const ISTIO_API: &str = "networking.istio.io/v1";

/// One cluster's east-west gateway address and routing objects.
pub struct EastWest {
    pub namespace: String,
    pub stage: Stage,
    /// The address from the mesh file, when the cluster has no load balancer.
    pub address: Option<String>,
    /// Serve traffic from other networks (`cross-network-gateway`).
    pub cross_network: bool,
    /// Expose istiod to remote clusters (`istiod-gateway`, `istiod-vs`); the istiod Service's
    /// host.
    pub expose_istiod: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Service {
    #[serde(default)]
    spec: ServiceSpec,
    #[serde(default)]
    status: ServiceStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ServiceSpec {
    external_i_ps: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ServiceStatus {
    load_balancer: LoadBalancer,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LoadBalancer {
    ingress: Vec<Ingress>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Ingress {
    ip: Option<String>,
    hostname: Option<String>,
}

impl Service {
    /// The address other clusters reach the gateway at.
    fn address(&self) -> Option<String> {
        self.status
            .load_balancer
            .ingress
            .iter()
            .find_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
            .or_else(|| self.spec.external_i_ps.first().cloned())
    }
}

impl EastWest {
    /// The Istio objects this gateway needs, as (kind, name, object).
    fn objects(&self) -> Vec<(&'static str, &'static str, Value)> {
        let ns = &self.namespace;
        let mut out = Vec::new();
        if self.cross_network {
            out.push((
                "Gateway",
                "cross-network-gateway",
                json!({
                    "apiVersion": ISTIO_API,
                    "kind": "Gateway",
                    "metadata": {"name": "cross-network-gateway", "namespace": ns},
                    "spec": {
                        "selector": {"istio": "eastwestgateway"},
                        "servers": [{
                            "port": {"number": 15443, "name": "tls", "protocol": "TLS"},
                            "tls": {"mode": "AUTO_PASSTHROUGH"},
                            "hosts": ["*.local"],
                        }],
                    },
                }),
            ));
        }
        if let Some(istiod) = &self.expose_istiod {
            out.push((
                "Gateway",
                "istiod-gateway",
                json!({
                    "apiVersion": ISTIO_API,
                    "kind": "Gateway",
                    "metadata": {"name": "istiod-gateway", "namespace": ns},
                    "spec": {
                        "selector": {"istio": "eastwestgateway"},
                        "servers": [
                            {"port": {"number": 15012, "name": "tls-istiod", "protocol": "tls"},
                             "tls": {"mode": "PASSTHROUGH"}, "hosts": ["*"]},
                            {"port": {"number": 15017, "name": "tls-istiodwebhook", "protocol": "tls"},
                             "tls": {"mode": "PASSTHROUGH"}, "hosts": ["*"]},
                        ],
                    },
                }),
            ));
            out.push((
                "VirtualService",
                "istiod-vs",
                json!({
                    "apiVersion": ISTIO_API,
                    "kind": "VirtualService",
                    "metadata": {"name": "istiod-vs", "namespace": ns},
                    "spec": {
                        "hosts": ["*"],
                        "gateways": ["istiod-gateway"],
                        "tls": [
                            {"match": [{"port": 15012, "sniHosts": ["*"]}],
                             "route": [{"destination": {"host": istiod, "port": {"number": 15012}}}]},
                            {"match": [{"port": 15017, "sniHosts": ["*"]}],
                             "route": [{"destination": {"host": istiod, "port": {"number": 443}}}]},
                        ],
                    },
                }),
            ));
        }
        out
    }

    fn manifest(&self) -> String {
        self.objects()
            .iter()
            .map(|(_, _, o)| serde_yaml::to_string(o).expect("plain JSON is valid YAML"))
            .collect::<Vec<_>>()
            .join("---\n")
    }

    /// The gateway's address: given, or its Service's, waited for.
    fn address(&self, cx: &ClusterCtx) -> Result<String, StepError> {
        if let Some(address) = &self.address {
            return Ok(address.clone());
        }
        let deadline = Instant::now() + cx.timeout();
        let mut said = false;
        loop {
            let service: Option<Service> =
                cx.live
                    .get("service", EAST_WEST_GATEWAY, Some(&self.namespace))?;
            if let Some(address) = service.as_ref().and_then(Service::address) {
                return Ok(address);
            }
            if Instant::now() >= deadline {
                return Err(StepError::other(
                    &cx.cluster.name,
                    format!(
                        "the east-west gateway's Service `{EAST_WEST_GATEWAY}` got no external address within {}s",
                        cx.timeout().as_secs()
                    ),
                    Some(format!(
                        "a cluster without a load balancer needs `eastWestGateway: {{service: {{type: NodePort}}, address: <node IP>}}` for `{}` in the mesh file",
                        cx.cluster.name
                    )),
                ));
            }
            if !said {
                cx.reporter.line(&format!(
                    "[{}] waiting for the east-west gateway's external address (Service `{EAST_WEST_GATEWAY}` is pending; without a load balancer, set `eastWestGateway.address`)",
                    cx.cluster.name
                ));
                said = true;
            }
            runner::sleep(Duration::from_secs(2))?;
        }
    }
}

impl Component for EastWest {
    fn handoff(&self) -> Vec<Handoff> {
        let objects: Vec<Value> = self.objects().into_iter().map(|(_, _, o)| o).collect();
        if objects.is_empty() {
            return Vec::new();
        }
        vec![Handoff::Manifests {
            name: "east-west-objects",
            objects,
        }]
    }

    fn label(&self, _: Action) -> &'static str {
        "east-west gateway"
    }

    fn stage(&self) -> Stage {
        self.stage
    }

    fn converge(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let address = self.address(cx)?;
        cx.board
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cx.cluster.name.clone(), address.clone());
        let wanted = self.objects();
        if wanted.is_empty() {
            return Ok(format!("at {address}"));
        }
        let names: Vec<(&str, &str)> = wanted
            .iter()
            .map(|(kind, name, _)| {
                (
                    if *kind == "Gateway" {
                        "gateways.networking.istio.io"
                    } else {
                        "virtualservices.networking.istio.io"
                    },
                    *name,
                )
            })
            .collect();
        let found = cx.live.get_each(&names, Some(&self.namespace))?;
        let mut same = true;
        for (kind, name, object) in &wanted {
            let live: Option<Value> = found.find(kind, name)?;
            if live.as_ref().map(|l| &l["spec"]) != Some(&object["spec"]) {
                same = false;
            }
        }
        if same {
            return Ok(format!("at {address}, unchanged"));
        }
        cx.live.run(&kubectl::apply(
            cx.target(),
            Sensitive::new(self.manifest().into_bytes()),
            cx.timeout(),
        ))?;
        Ok(format!("at {address}, {} object(s) applied", wanted.len()))
    }

    fn remove(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let objects = self.objects();
        for (kind, name, _) in &objects {
            let resource = if *kind == "Gateway" {
                "gateways.networking.istio.io"
            } else {
                "virtualservices.networking.istio.io"
            };
            let step = kubectl::delete(
                cx.target(),
                resource,
                &[name.to_string()],
                Some(&self.namespace),
                cx.timeout(),
            );
            let output = cx.live.runner.run(&step)?;
            // Without Istio's CRDs there is nothing of this kind left to delete.
            if !output.success()
                && !output
                    .stderr
                    .contains("the server doesn't have a resource type")
            {
                return Err(StepError::failed(&step, &output));
            }
        }
        Ok(format!("{} object(s) removed", objects.len()))
    }

    fn script(&self, cx: &ScriptCx, action: Action) -> String {
        match action {
            Action::Install => {
                let mut text = format!(
                    "# The east-west gateway's address: {}.\n",
                    self.address.as_deref().unwrap_or(
                        "its Service's load-balancer address (wait until `kubectl get service istio-eastwestgateway` shows one)"
                    )
                );
                if !self.objects().is_empty() {
                    text.push_str(&format!(
                        "{} <<'EOF'\n{}EOF\n",
                        kubectl::apply(&cx.target, Sensitive::default(), cx.timeout).command_line(),
                        self.manifest()
                    ));
                }
                text
            }
            Action::Remove => self
                .objects()
                .iter()
                .map(|(kind, name, _)| {
                    let resource = if *kind == "Gateway" {
                        "gateways.networking.istio.io"
                    } else {
                        "virtualservices.networking.istio.io"
                    };
                    format!(
                        "{}\n",
                        kubectl::delete(
                            &cx.target,
                            resource,
                            &[name.to_string()],
                            Some(&self.namespace),
                            cx.timeout
                        )
                        .command_line()
                    )
                })
                .collect(),
        }
    }

    fn inspect(&self, cx: &mut ClusterCtx, status: &mut ClusterStatus) {
        let cluster = Some(cx.cluster.name.as_str());
        let service =
            match cx
                .live
                .get::<Service>("service", EAST_WEST_GATEWAY, Some(&self.namespace))
            {
                Ok(service) => service,
                Err(e) => {
                    status.problem(Finding::fail(cluster, "east-west gateway", e.to_string()));
                    return;
                }
            };
        let address = self
            .address
            .clone()
            .or_else(|| service.as_ref().and_then(Service::address));
        match (&service, &address) {
            (None, _) => status.problem(
                Finding::fail(
                    cluster,
                    "east-west gateway",
                    format!("Service `{EAST_WEST_GATEWAY}` does not exist"),
                )
                .fix("run `meshup install`"),
            ),
            (Some(_), None) => status.problem(
                Finding::fail(
                    cluster,
                    "east-west gateway",
                    format!("Service `{EAST_WEST_GATEWAY}` has no external address"),
                )
                .fix("give the cluster a load balancer, or set `eastWestGateway.address`"),
            ),
            _ => {}
        }
        if let Some(address) = &address {
            status.cell(column::GATEWAY, address);
        }
        status.gateway = address;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ok, run_component};
    use crate::tools::step::Step;

    fn gateway(cross_network: bool, istiod: bool) -> EastWest {
        EastWest {
            namespace: "istio-system".into(),
            stage: Stage::Cluster,
            address: None,
            cross_network,
            expose_istiod: istiod.then(|| "istiod.istio-system.svc.cluster.local".to_string()),
        }
    }

    #[test]
    fn the_cross_network_gateway_is_auto_passthrough_for_local_hosts() {
        let objects = gateway(true, false).objects();
        assert_eq!(objects.len(), 1);
        let server = &objects[0].2["spec"]["servers"][0];
        assert_eq!(server["port"]["number"], 15443);
        assert_eq!(server["tls"]["mode"], "AUTO_PASSTHROUGH");
        assert_eq!(server["hosts"][0], "*.local");
        assert_eq!(objects[0].2["spec"]["selector"]["istio"], "eastwestgateway");
    }

    #[test]
    fn istiod_is_exposed_on_15012_and_its_webhook_on_15017() {
        let objects = gateway(false, true).objects();
        let names: Vec<&str> = objects.iter().map(|o| o.1).collect();
        assert_eq!(names, ["istiod-gateway", "istiod-vs"]);
        let routes = &objects[1].2["spec"]["tls"];
        assert_eq!(
            routes[0]["route"][0]["destination"]["port"]["number"],
            15012
        );
        assert_eq!(routes[1]["route"][0]["destination"]["port"]["number"], 443);
    }

    #[test]
    fn the_address_is_the_load_balancers_and_the_objects_are_applied_once() {
        let respond = |step: &Step| {
            let args = step.args.join(" ");
            if args.starts_with("get service") {
                ok(
                    r#"{"kind":"Service","status":{"loadBalancer":{"ingress":[{"ip":"172.18.255.4"}]}}}"#,
                )
            } else {
                ok("")
            }
        };
        let (outcome, calls) = run_component(&gateway(true, true), Action::Install, respond);
        assert_eq!(outcome.unwrap(), "at 172.18.255.4, 3 object(s) applied");
        assert!(
            calls
                .last()
                .unwrap()
                .starts_with("kubectl apply --server-side"),
            "{calls:?}"
        );
    }
}
