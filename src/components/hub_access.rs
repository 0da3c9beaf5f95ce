//! A fleet hub's way into one cluster (`meshup install --only trust --hub CONTEXT`): a
//! service account `meshup-fleet` in the cluster, bound to `cluster-admin` (the engine installs
//! Istio's CRDs, cluster roles and webhooks), a long-lived token for it, and from those a
//! kubeconfig, put into the Secret `meshup-kubeconfig-CLUSTER` of the hub's engine namespace
//! that the exported releases name in `kubeConfig.secretRef`. The kubeconfig is built in
//! memory and goes to the hub on kubectl's stdin: never printed, written to disk or exported.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;

use super::{Action, ClusterCtx, Component, ScriptCx};
use crate::components::handoff::{Handoff, TRUST_COMMAND};
use crate::components::reader::wait_for_token_of;
use crate::tools::kubectl;
use crate::tools::live::{Live, Secret};
use crate::tools::remote_secret::{self, MANAGED_BY, MANAGED_BY_LABEL, read_token};
use crate::tools::runner::StepError;
use crate::tools::step::Target;
use crate::trust::sensitive::Sensitive;

/// The service account the hub's engine acts as in each cluster.
pub const FLEET_ACCOUNT: &str = "meshup-fleet";
/// Where it lives: a namespace no mesh uninstall removes.
pub const FLEET_NAMESPACE: &str = "kube-system";
/// Its long-lived token secret.
pub const FLEET_TOKEN: &str = "meshup-fleet-token";
/// The key of the kubeconfig in the hub's Secret (Flux's `kubeConfig.secretRef` default).
pub const KUBECONFIG_KEY: &str = "value";

/// One cluster's kubeconfig Secret in the hub.
pub struct HubAccess {
    /// The hub's context.
    pub hub: Target,
    /// The engine's namespace in the hub, which must exist.
    pub namespace: String,
    /// `meshup-kubeconfig-CLUSTER`.
    pub secret: String,
    /// The API server address the hub reaches this cluster at.
    pub server: String,
}

impl HubAccess {
    /// The account, its binding and its token secret, in one document list.
    fn account_manifest() -> String {
        let labels = json!({ MANAGED_BY_LABEL: MANAGED_BY });
        let objects = [
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": FLEET_ACCOUNT, "namespace": FLEET_NAMESPACE, "labels": labels}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": FLEET_ACCOUNT, "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": FLEET_ACCOUNT, "namespace": FLEET_NAMESPACE}]}),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                "metadata": {"name": FLEET_TOKEN, "namespace": FLEET_NAMESPACE, "labels": labels,
                    "annotations": {"kubernetes.io/service-account.name": FLEET_ACCOUNT}}}),
        ];
        objects
            .iter()
            .map(|o| serde_yaml::to_string(o).expect("plain JSON is valid YAML"))
            .collect::<Vec<_>>()
            .join("---\n")
    }

    /// The hub's Secret around a kubeconfig (base64, as it is stored).
    fn secret_manifest(&self, kubeconfig_b64: &str) -> Sensitive<String> {
        let object = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": self.secret,
                "namespace": self.namespace,
                "labels": { MANAGED_BY_LABEL: MANAGED_BY },
            },
            "data": { KUBECONFIG_KEY: kubeconfig_b64 },
        });
        Sensitive::new(serde_yaml::to_string(&object).expect("plain JSON is valid YAML"))
    }
}

impl Component for HubAccess {
    fn handoff(&self) -> Vec<Handoff> {
        vec![Handoff::Kept {
            what: format!(
                "the hub's kubeconfig Secret `{}` (service account `{FLEET_ACCOUNT}`)",
                self.secret
            ),
            by: TRUST_COMMAND,
        }]
    }

    fn label(&self, _: Action) -> &'static str {
        "hub kubeconfig"
    }

    fn acts_on(&self, action: Action) -> bool {
        action == Action::Install
    }

    fn converge(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let account = Self::account_manifest();
        let apply_account = |live: &Live| {
            live.run(&kubectl::apply(
                live.target,
                Sensitive::new(account.clone().into_bytes()),
                live.timeout,
            ))
            .map(|_| ())
        };
        // One read of the three; applied when one is missing or the binding names another
        // role or account (a binding deleted or edited by hand comes back).
        let fetched = cx.live.get_each(
            &[
                ("serviceaccount", FLEET_ACCOUNT),
                ("clusterrolebinding", FLEET_ACCOUNT),
                ("secret", FLEET_TOKEN),
            ],
            Some(FLEET_NAMESPACE),
        )?;
        let account_found: Option<serde_json::Value> =
            fetched.find("ServiceAccount", FLEET_ACCOUNT)?;
        let binding: Option<serde_json::Value> =
            fetched.find("ClusterRoleBinding", FLEET_ACCOUNT)?;
        let found: Option<Secret> = fetched.find("Secret", FLEET_TOKEN)?;
        let binding_right = binding.is_some_and(|b| {
            b["roleRef"]["name"] == "cluster-admin"
                && b["subjects"].as_array().is_some_and(|s| {
                    s.iter().any(|s| {
                        s["kind"] == "ServiceAccount"
                            && s["name"] == FLEET_ACCOUNT
                            && s["namespace"] == FLEET_NAMESPACE
                    })
                })
        });
        if account_found.is_none() || !binding_right || found.is_none() {
            apply_account(&cx.live)?;
        }
        let (ca, token) = match found.as_ref().and_then(read_token) {
            Some(filled) => filled,
            None => wait_for_token_of(
                &cx.live,
                FLEET_NAMESPACE,
                FLEET_TOKEN,
                FLEET_ACCOUNT,
                &|| apply_account(&cx.live),
            )?,
        };
        let kubeconfig = remote_secret::kubeconfig(&cx.cluster.name, &self.server, &ca, &token);
        let encoded = BASE64.encode(kubeconfig.expose());
        let hub = Live::new(cx.live.runner, &self.hub, cx.timeout());
        let held: Option<Secret> = hub.get("secret", &self.secret, Some(&self.namespace))?;
        let held = held.as_ref().and_then(|s| s.data.get(KUBECONFIG_KEY));
        if held.is_some_and(|v| *v.expose() == encoded) {
            return Ok("unchanged".into());
        }
        hub.run(&kubectl::apply(
            &self.hub,
            Sensitive::new(self.secret_manifest(&encoded).expose().clone().into_bytes()),
            cx.timeout(),
        ))?;
        Ok(if held.is_none() { "created" } else { "updated" }.into())
    }

    fn script(&self, _: &ScriptCx, action: Action) -> String {
        match action {
            // It holds a token: built by meshup, never in a script.
            Action::Install => format!(
                "# the hub's kubeconfig Secret `{}` in `{}` (context `{}`): meshup install --only trust --hub {}\n",
                self.secret, self.namespace, self.hub.context, self.hub.context
            ),
            Action::Remove => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_manifest_binds_cluster_admin_and_asks_for_a_token() {
        let docs: Vec<serde_json::Value> = HubAccess::account_manifest()
            .split("---\n")
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["ServiceAccount", "ClusterRoleBinding", "Secret"]);
        assert_eq!(docs[1]["roleRef"]["name"], "cluster-admin");
        assert_eq!(docs[1]["subjects"][0]["name"], FLEET_ACCOUNT);
        assert_eq!(docs[2]["type"], "kubernetes.io/service-account-token");
        assert_eq!(
            docs[2]["metadata"]["annotations"]["kubernetes.io/service-account.name"],
            FLEET_ACCOUNT
        );
    }
}
