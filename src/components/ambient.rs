//! The parts an ambient cluster has beyond istio-base and istiod: the Gateway API CRDs its
//! east-west gateway needs, the east-west gateway itself (a Gateway API `Gateway` of class
//! `istio-east-west`, HBONE on 15008, which istiod deploys), and the node agents (ztunnel and
//! istio-cni, each a DaemonSet from its own Helm release, `Release` values) as status shows
//! them.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Action, ClusterCtx, Component, ScriptCx, Stage};
use crate::components::handoff::{Handoff, TRUST_COMMAND};
use crate::observe::facts::{ClusterStatus, column};
use crate::observe::finding::Finding;
use crate::tools::kubectl;
use crate::tools::runner::{self, StepError};
use crate::tools::step::shell_quote;
use crate::trust::sensitive::Sensitive;

/// The label that makes a service reachable from other clusters in ambient mode (the ambient
/// profile's `serviceScopeConfigs` select it for GLOBAL scope).
pub const GLOBAL_LABEL: &str = "istio.io/global";
/// The CRD whose presence (and bundle version) stands for the Gateway API.
pub const GATEWAY_CRD: &str = "gateways.gateway.networking.k8s.io";
const BUNDLE_VERSION: &str = "gateway.networking.k8s.io/bundle-version";
/// The Gateway API resource of the east-west gateway.
const GATEWAY_RESOURCE: &str = "gateways.gateway.networking.k8s.io";
/// The east-west gateway's name (as Istio's samples/multicluster/gen-eastwest-gateway.sh
/// names it).
pub const EAST_WEST: &str = "istio-eastwestgateway";

/// The Gateway API release an Istio minor version is built against (`sigs.k8s.io/gateway-api`
/// in Istio's go.mod at the release tags: 1.28.0 and 1.29.0 v1.4.0, 1.30.0 v1.5.1, 1.31 v1.6.0).
pub fn gateway_api_for(istio: Option<&str>) -> &'static str {
    match istio.and_then(crate::model::version::IstioVersion::parse) {
        Some(v) if v.minor() >= (1, 31) => "v1.6.0",
        Some(v) if v.minor() >= (1, 30) => "v1.5.1",
        Some(_) => "v1.4.0",
        // No version pinned: the newest charts.
        None => "v1.6.0",
    }
}

/// The Gateway API CRDs: checked, and applied from `gatewayApiCrds` where they are missing.
/// meshup does not ship them; they are cluster-wide and outlive the mesh (never removed).
pub struct GatewayApiCrds {
    pub source: Option<String>,
    pub istio_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Crd {
    #[serde(default)]
    metadata: crate::tools::live::Meta,
}

impl GatewayApiCrds {
    fn missing_hint(&self) -> String {
        let version = gateway_api_for(self.istio_version.as_deref());
        format!(
            "install them (Istio {} is built against Gateway API {version}): `kubectl apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/releases/download/{version}/standard-install.yaml`, or set `gatewayApiCrds:` in the mesh file to a copy of that file and meshup applies it",
            self.istio_version.as_deref().unwrap_or("(newest)")
        )
    }

    fn found(&self, cx: &ClusterCtx) -> Result<Option<String>, StepError> {
        let crd: Option<Crd> = cx.live.get("crd", GATEWAY_CRD, None)?;
        Ok(crd.map(|c| {
            c.metadata
                .annotations
                .get(BUNDLE_VERSION)
                .cloned()
                .unwrap_or_else(|| "unknown version".into())
        }))
    }
}

impl Component for GatewayApiCrds {
    fn handoff(&self) -> Vec<Handoff> {
        vec![Handoff::Kept {
            what: "the Gateway API CRDs (the ambient east-west gateway is a Gateway API Gateway)"
                .into(),
            by: TRUST_COMMAND,
        }]
    }

    fn label(&self, _: Action) -> &'static str {
        "Gateway API CRDs"
    }

    fn acts_on(&self, action: Action) -> bool {
        action == Action::Install
    }

    fn converge(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        if let Some(version) = self.found(cx)? {
            return Ok(format!("present ({version})"));
        }
        let Some(source) = &self.source else {
            return Err(StepError::other(
                &cx.cluster.name,
                format!(
                    "the Gateway API CRDs are missing (`{GATEWAY_CRD}`): the ambient east-west gateway is a Gateway API Gateway"
                ),
                Some(self.missing_hint()),
            ));
        };
        let step = if source.contains("://") {
            kubectl::apply_url(cx.target(), source, cx.timeout())
        } else {
            let bytes = std::fs::read(source).map_err(|e| {
                StepError::other(
                    &cx.cluster.name,
                    format!("cannot read `gatewayApiCrds` {source}: {e}"),
                    None,
                )
            })?;
            kubectl::apply(cx.target(), Sensitive::new(bytes), cx.timeout())
        };
        cx.live.run(&step)?;
        Ok(format!("applied from {source}"))
    }

    fn script(&self, cx: &ScriptCx, action: Action) -> String {
        if action == Action::Remove {
            return String::new();
        }
        let kubectl = format!(
            "kubectl --context {}{}",
            shell_quote(&cx.cluster.context),
            cx.kubeconfig_flag()
        );
        let apply = match &self.source {
            Some(source) => format!("{kubectl} apply --server-side -f {}", shell_quote(source)),
            None => format!(
                "{{ echo 'the Gateway API CRDs are missing: {}' >&2; exit 1; }}",
                self.missing_hint().replace('\'', "")
            ),
        };
        format!("{kubectl} get crd {GATEWAY_CRD} >/dev/null 2>&1 || {apply}\n")
    }

    fn preflight(&self, cx: &mut ClusterCtx) -> Result<Vec<Finding>, StepError> {
        let cluster = Some(cx.cluster.name.as_str());
        Ok(match (self.found(cx)?, &self.source) {
            (Some(_), _) => Vec::new(),
            (None, Some(source)) => vec![Finding::ok(
                cluster,
                "Gateway API",
                format!("CRDs missing; install applies them from {source}"),
            )],
            (None, None) => vec![
                Finding::fail(cluster, "Gateway API", "the Gateway API CRDs are missing")
                    .fix(self.missing_hint()),
            ],
        })
    }

    fn inspect(&self, cx: &mut ClusterCtx, status: &mut ClusterStatus) {
        if let Ok(None) = self.found(cx) {
            status.problem(
                Finding::fail(
                    Some(&cx.cluster.name),
                    "Gateway API",
                    "the Gateway API CRDs are missing",
                )
                .fix(self.missing_hint()),
            );
        }
    }
}

/// The ambient east-west gateway: a Gateway API `Gateway` of class `istio-east-west` with an
/// HBONE listener on 15008 (TLS terminated with Istio mTLS), labelled with the network; istiod
/// deploys it and reports it `Programmed` with an address.
pub struct HboneGateway {
    pub namespace: String,
    pub network: Option<String>,
    pub stage: Stage,
}

#[derive(Debug, Default, Deserialize)]
struct Gateway {
    #[serde(default)]
    spec: Value,
    #[serde(default)]
    status: GatewayStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GatewayStatus {
    addresses: Vec<GatewayAddress>,
    conditions: Vec<crate::tools::live::Condition>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GatewayAddress {
    value: String,
}

impl Gateway {
    fn programmed(&self) -> Option<String> {
        let ok = self
            .status
            .conditions
            .iter()
            .any(|c| c.kind == "Programmed" && c.status == "True");
        let address = self.status.addresses.first().map(|a| a.value.clone());
        address.filter(|a| ok && !a.is_empty())
    }
}

impl HboneGateway {
    fn object(&self) -> Value {
        let mut labels = serde_json::Map::new();
        if let Some(network) = &self.network {
            labels.insert("topology.istio.io/network".into(), json!(network));
        }
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": EAST_WEST, "namespace": self.namespace, "labels": labels},
            "spec": {
                "gatewayClassName": "istio-east-west",
                "listeners": [{
                    "name": "mesh",
                    "port": 15008,
                    "protocol": "HBONE",
                    "tls": {
                        "mode": "Terminate",
                        "options": {"gateway.istio.io/tls-terminate-mode": "ISTIO_MUTUAL"},
                    },
                }],
            },
        })
    }

    fn read(&self, cx: &ClusterCtx) -> Result<Option<Gateway>, StepError> {
        cx.live
            .get(GATEWAY_RESOURCE, EAST_WEST, Some(&self.namespace))
    }

    /// Waits (bounded by `--timeout`) until istiod reports the Gateway programmed with an
    /// address.
    fn address(&self, cx: &ClusterCtx) -> Result<String, StepError> {
        let deadline = Instant::now() + cx.timeout();
        loop {
            if let Some(address) = self.read(cx)?.and_then(|g| g.programmed()) {
                return Ok(address);
            }
            if Instant::now() >= deadline {
                return Err(StepError::other(
                    &cx.cluster.name,
                    format!(
                        "the east-west Gateway `{EAST_WEST}` was not Programmed with an address within {}s",
                        cx.timeout().as_secs()
                    ),
                    Some(format!(
                        "istiod deploys it (class istio-east-west) as a LoadBalancer Service: check `kubectl describe gateway {EAST_WEST} -n {}` and that the cluster gives load balancers an address",
                        self.namespace
                    )),
                ));
            }
            runner::sleep(Duration::from_millis(500))?;
        }
    }
}

impl Component for HboneGateway {
    fn handoff(&self) -> Vec<Handoff> {
        vec![Handoff::Manifests {
            name: "east-west-gateway",
            objects: vec![self.object()],
        }]
    }

    fn label(&self, _: Action) -> &'static str {
        "east-west gateway"
    }

    fn stage(&self) -> Stage {
        self.stage
    }

    fn converge(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let wanted = self.object();
        let live = self.read(cx)?;
        let same = live.as_ref().is_some_and(|g| g.spec == wanted["spec"]);
        if !same {
            cx.live.run(&kubectl::apply(
                cx.target(),
                Sensitive::new(wanted.to_string().into_bytes()),
                cx.timeout(),
            ))?;
        }
        let address = self.address(cx)?;
        cx.board
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cx.cluster.name.clone(), address.clone());
        Ok(format!(
            "programmed at {address}{}",
            if same { ", unchanged" } else { "" }
        ))
    }

    fn remove(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let output = cx.live.run(&kubectl::delete(
            cx.target(),
            GATEWAY_RESOURCE,
            &[EAST_WEST.to_string()],
            Some(&self.namespace),
            cx.timeout(),
        ));
        match output {
            Ok(o) if kubectl::deleted_count(&o.stdout) > 0 => Ok("removed".into()),
            Ok(_) => Ok("absent".into()),
            // Without the Gateway API CRDs there is no Gateway to remove.
            Err(e)
                if e.to_string()
                    .contains("the server doesn't have a resource type") =>
            {
                Ok("absent".into())
            }
            Err(e) => Err(e),
        }
    }

    fn script(&self, cx: &ScriptCx, action: Action) -> String {
        let kubectl = format!(
            "kubectl --context {}{}",
            shell_quote(&cx.cluster.context),
            cx.kubeconfig_flag()
        );
        match action {
            Action::Install => format!(
                "{kubectl} apply --server-side --field-manager meshup -f - <<'EOF'\n{}\nEOF\n{kubectl} wait --for=condition=Programmed gateway.gateway.networking.k8s.io/{EAST_WEST} --namespace {} --timeout {}s\n",
                serde_yaml::to_string(&self.object())
                    .unwrap_or_default()
                    .trim_end(),
                self.namespace,
                cx.timeout.as_secs()
            ),
            Action::Remove => format!(
                "{kubectl} delete {GATEWAY_RESOURCE} {EAST_WEST} --namespace {} --ignore-not-found\n",
                self.namespace
            ),
        }
    }

    fn inspect(&self, cx: &mut ClusterCtx, status: &mut ClusterStatus) {
        let cluster = Some(cx.cluster.name.as_str());
        match self.read(cx) {
            Ok(Some(gateway)) => match gateway.programmed() {
                Some(address) => {
                    status.cell(column::GATEWAY, &address);
                    status.gateway = Some(address);
                }
                None => {
                    status.cell(column::GATEWAY, "NOT PROGRAMMED");
                    status.problem(
                        Finding::fail(cluster, "east-west gateway", format!("the Gateway `{EAST_WEST}` is not Programmed with an address: other networks cannot reach this cluster"))
                            .fix(format!("check `kubectl describe gateway {EAST_WEST} -n {}`; `meshup install` waits for it", self.namespace)),
                    );
                }
            },
            Ok(None) => {
                status.cell(column::GATEWAY, "MISSING");
                status.problem(
                    Finding::fail(
                        cluster,
                        "east-west gateway",
                        format!(
                            "no Gateway `{EAST_WEST}`: other networks cannot reach this cluster"
                        ),
                    )
                    .fix("run `meshup install`"),
                );
            }
            Err(e) => status.problem(Finding::warn(
                cluster,
                "east-west gateway",
                format!(
                    "could not be read: {}",
                    crate::observe::sync::first_line(&e.to_string())
                ),
            )),
        }
    }
}

/// ztunnel and istio-cni as status shows them: each DaemonSet ready on every node.
pub struct NodeAgents {
    pub namespace: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct DaemonSetStatus {
    desired_number_scheduled: u64,
    number_ready: u64,
}

#[derive(Debug, Default, Deserialize)]
struct DaemonSet {
    #[serde(default)]
    status: DaemonSetStatus,
}

/// The node agents: DaemonSet, what it is, the status column it goes to, and the label its
/// pods carry (ztunnel's chart labels them `app: ztunnel`, istio-cni's only
/// `k8s-app: istio-cni-node`).
const AGENTS: [(&str, &str, crate::observe::facts::Column, &str); 2] = [
    ("ztunnel", "ztunnel", column::ZTUNNEL, "app=ztunnel"),
    (
        "istio-cni-node",
        "istio-cni",
        column::CNI,
        "k8s-app=istio-cni-node",
    ),
];

/// The label selector of node agent `daemonset`'s pods (`ztunnel`, `istio-cni-node`), as the
/// status hint names it.
pub fn agent_pods(daemonset: &str) -> Option<&'static str> {
    AGENTS
        .iter()
        .find(|(name, ..)| *name == daemonset)
        .map(|(.., pods)| *pods)
}

impl Component for NodeAgents {
    fn handoff(&self) -> Vec<Handoff> {
        // A readiness check of the node agents, which istio-cni's and ztunnel's releases run.
        Vec::new()
    }

    fn label(&self, _: Action) -> &'static str {
        "node agents"
    }

    fn acts_on(&self, action: Action) -> bool {
        action == Action::Install
    }

    /// Waits until ztunnel and istio-cni run on every node: helm 3's `--wait` does not wait
    /// for a DaemonSet whose `maxUnavailable` allows a node without a ready pod (istio-cni's
    /// default), so the east-west gateway and traffic would otherwise start too early.
    fn converge(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let mut waited = Vec::new();
        for (name, _, _, _) in AGENTS {
            let found: Option<DaemonSet> = cx.live.get("daemonset", name, Some(&self.namespace))?;
            let ready = found.is_some_and(|ds| {
                ds.status.desired_number_scheduled > 0
                    && ds.status.number_ready == ds.status.desired_number_scheduled
            });
            if !ready {
                cx.live.run(&kubectl::rollout_status_of(
                    cx.target(),
                    &format!("daemonset/{name}"),
                    &self.namespace,
                    cx.timeout(),
                ))?;
                waited.push(name);
            }
        }
        Ok(if waited.is_empty() {
            "ready on every node".into()
        } else {
            format!("ready on every node (waited for {})", waited.join(", "))
        })
    }

    fn script(&self, cx: &ScriptCx, action: Action) -> String {
        if action == Action::Remove {
            return String::new();
        }
        AGENTS
            .iter()
            .map(|(name, _, _, _)| {
                format!(
                    "{}\n",
                    kubectl::rollout_status_of(
                        &cx.target,
                        &format!("daemonset/{name}"),
                        &self.namespace,
                        cx.timeout
                    )
                    .command_line()
                )
            })
            .collect()
    }

    fn inspect(&self, cx: &mut ClusterCtx, status: &mut ClusterStatus) {
        let cluster = Some(cx.cluster.name.as_str());
        let global: Result<Vec<Value>, StepError> = cx
            .live
            .list_everywhere("services", Some(&format!("{GLOBAL_LABEL}=true")));
        if let Ok(services) = global {
            let names: Vec<String> = services
                .iter()
                .map(|s| {
                    format!(
                        "{}/{}",
                        s["metadata"]["namespace"].as_str().unwrap_or_default(),
                        s["metadata"]["name"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            if !names.is_empty() {
                status.cell(column::GLOBAL_SERVICES, names.join(", "));
            }
        }
        for (name, what, col, _) in AGENTS {
            let found: Result<Option<DaemonSet>, StepError> =
                cx.live.get("daemonset", name, Some(&self.namespace));
            match found {
                Ok(Some(ds)) => {
                    let (ready, desired) =
                        (ds.status.number_ready, ds.status.desired_number_scheduled);
                    status.cell(col, format!("{ready}/{desired}"));
                    if desired == 0 || ready < desired {
                        status.problem(
                            Finding::fail(cluster, what, format!("{what} is ready on {ready} of {desired} nodes: pods on the others are not in the mesh"))
                                .fix(format!("check `kubectl get pods -n {} -l {}`", self.namespace, agent_pods(name).unwrap_or_default())),
                        );
                    }
                }
                Ok(None) => {
                    status.cell(col, "MISSING");
                    status.problem(
                        Finding::fail(cluster, what, format!("no DaemonSet `{name}`"))
                            .fix("run `meshup install`"),
                    );
                }
                Err(e) => status.problem(Finding::warn(
                    cluster,
                    what,
                    format!(
                        "could not be read: {}",
                        crate::observe::sync::first_line(&e.to_string())
                    ),
                )),
            }
        }
    }
}
