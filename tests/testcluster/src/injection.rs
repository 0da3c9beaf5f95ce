//! Sidecar injection, decided the way a real cluster decides it: on a pod CREATE the API
//! server calls the mutating webhooks of every MutatingWebhookConfiguration, configurations in
//! name order and each one's webhooks in their order (apiserver pkg/admission/configuration
//! `mutatingWebhookConfigurationManager.getMutatingWebhookConfigurations`, `sort.SliceStable`
//! `ByName`; pkg/admission/plugin/webhook/mutating `mutatingDispatcher.Dispatch`). A webhook
//! is called when its rules cover CREATE of v1 pods, its `namespaceSelector` matches the
//! namespace's labels and its `objectSelector` the pod's labels as mutated so far. A webhook
//! whose Service has no Ready endpoint cannot be called: `failurePolicy: Fail` (the v1
//! default) refuses the pod, `Ignore` skips the webhook.
//!
//! A call that lands on an istiod pod is answered by that istiod: it injects with its own
//! revision (the pod's `istio.io/rev` label) unless its policy check declines (Istio
//! pkg/kube/inject/inject.go `injectRequired`: host network, the ignored system namespaces,
//! `sidecar.istio.io/inject: "false"` as label or annotation). An injected pod gets the
//! `sidecar.istio.io/status` annotation (with `revision`), the `istio.io/rev` annotation and
//! the labels of the injection templates (istio-discovery files/injection-template.yaml and
//! gateway-injection-template.yaml: `security.istio.io/tlsMode` for a sidecar only,
//! `service.istio.io/canonical-*` for both). A pod a later webhook also selects is injected again,
//! and the later istiod's revision wins (pkg/kube/inject/webhook.go `inject` has no early
//! return for an `alreadyInjected` pod; `reapplyOverwrittenContainers` re-renders it).

use serde_json::{Value, json};

use crate::admission::{Endpoint, call_failed, fails_closed, rules_match, selector_matches};
use crate::controllers::istiod_revision;
use crate::store::{ApiError, Key, State, meta_str};

/// Namespaces istiod never injects into (pkg/kube/inject/initializer.go `IgnoredNamespaces`).
const IGNORED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// Whether istiod's own policy check lets it inject `pod` (`injectRequired`, with the
/// default policy `enabled` and no never/always selectors): not on the host network, not in
/// an ignored namespace, not opted out by `sidecar.istio.io/inject: "false"` (the label
/// wins over the annotation).
pub fn inject_required(ns: &str, pod: &Value) -> bool {
    if pod.pointer("/spec/hostNetwork") == Some(&json!(true)) || IGNORED_NAMESPACES.contains(&ns) {
        return false;
    }
    let label = pod
        .pointer("/metadata/labels/sidecar.istio.io~1inject")
        .and_then(Value::as_str);
    let annotation = pod
        .pointer("/metadata/annotations/sidecar.istio.io~1inject")
        .and_then(Value::as_str);
    label.or(annotation) != Some("false")
}

/// The revision whose istiod injected a pod's sidecar (`sidecar.istio.io/status`), if any.
pub fn injected_revision(pod: &Value) -> Option<String> {
    let status = pod
        .pointer("/metadata/annotations/sidecar.istio.io~1status")
        .and_then(Value::as_str)?;
    let v: Value = serde_json::from_str(status).ok()?;
    Some(
        v.get("revision")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string(),
    )
}

/// What an istiod of `revision` writes into a pod it injects: the `sidecar.istio.io/status`
/// and `istio.io/rev` annotations, and the labels of the template the pod asks for
/// (`inject.istio.io/templates`, `sidecar` by default). Both templates label the pod
/// `service.istio.io/canonical-name` and `-revision` (a value the pod has wins, else its
/// `app.kubernetes.io/name` or `app` label, else its own name); only the sidecar template
/// adds `security.istio.io/tlsMode` (`istio` unless the pod sets it): a gateway carries no
/// tlsMode label (istio-discovery files/injection-template.yaml,
/// gateway-injection-template.yaml).
fn inject(pod: &mut Value, revision: &str) {
    if !pod["metadata"].is_object() {
        pod["metadata"] = json!({});
    }
    for field in ["annotations", "labels"] {
        if !pod["metadata"][field].is_object() {
            pod["metadata"][field] = json!({});
        }
    }
    let gateway = pod
        .pointer("/metadata/annotations/inject.istio.io~1templates")
        .and_then(Value::as_str)
        == Some("gateway");
    let annotations = &mut pod["metadata"]["annotations"];
    annotations["sidecar.istio.io/status"] =
        json!(json!({"containers": ["istio-proxy"], "revision": revision}).to_string());
    annotations["istio.io/rev"] = json!(revision);
    let name = [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| pod["metadata"]["labels"][*k].as_str())
    .or_else(|| pod["metadata"]["generateName"].as_str())
    .or_else(|| pod["metadata"]["name"].as_str())
    .unwrap_or_default()
    .trim_end_matches('-')
    .to_string();
    let version = [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| pod["metadata"]["labels"][*k].as_str())
    .unwrap_or("latest")
    .to_string();
    let labels = &mut pod["metadata"]["labels"];
    labels["service.istio.io/canonical-name"] = json!(name);
    labels["service.istio.io/canonical-revision"] = json!(version);
    if !gateway && labels.get(TLS_MODE).is_none() {
        labels[TLS_MODE] = json!("istio");
    }
}

/// The label the sidecar template gives every pod it injects.
const TLS_MODE: &str = "security.istio.io/tlsMode";

impl State {
    /// The mutating webhooks' work on a pod about to be created in `ns`: the pod as they
    /// leave it, and the istiod pod that injected it last (`None`: no sidecar). A webhook that
    /// cannot be called with `failurePolicy: Fail` refuses the create with the API server's
    /// error.
    pub(crate) fn call_mutating_webhooks(
        &self,
        ns: &str,
        pod: &mut Value,
    ) -> Result<Option<Key>, ApiError> {
        let (Some(mwc), Some(pods)) = (
            self.resource(
                "admissionregistration.k8s.io",
                "v1",
                "mutatingwebhookconfigurations",
            ),
            self.resource("", "v1", "pods"),
        ) else {
            return Ok(None);
        };
        let ns_labels = self
            .objects
            .get(&Key {
                group: String::new(),
                plural: "namespaces".into(),
                namespace: String::new(),
                name: ns.into(),
            })
            .and_then(|n| n.pointer("/metadata/labels").cloned());
        let mut configs: Vec<&Value> = self.select(&mwc, None).map(|(_, c)| c).collect();
        configs.sort_by(|a, b| meta_str(a, "name").cmp(meta_str(b, "name")));
        let mut injector = None;
        for config in configs {
            for hook in config
                .get("webhooks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !rules_match(hook, &pods, "CREATE")
                    || !selector_matches(hook.get("namespaceSelector"), ns_labels.as_ref())
                    || !selector_matches(
                        hook.get("objectSelector"),
                        pod.pointer("/metadata/labels"),
                    )
                {
                    continue;
                }
                match self.webhook_endpoint(hook) {
                    Err(reason) if fails_closed(hook) => return Err(call_failed(hook, &reason)),
                    Err(_) | Ok(Endpoint::Elsewhere) => {}
                    Ok(Endpoint::Pod(server)) => {
                        let Some(istiod) = self
                            .objects
                            .get(&server)
                            .filter(|p| crate::proxy::is_istiod(p))
                        else {
                            continue;
                        };
                        // The API server verifies istiod's serving certificate against the
                        // webhook's caBundle (apiserver pkg/util/webhook `restClient` TLS
                        // config): a bundle without istiod's root fails the call.
                        let root = crate::webhookpatch::istiod_root(self, &server);
                        if !crate::webhookpatch::bundle_trusts(hook, &root) {
                            if fails_closed(hook) {
                                let reason = format!(
                                    "{}: tls: failed to verify certificate: x509: certificate signed by unknown authority",
                                    crate::admission::webhook_url(hook)
                                );
                                return Err(call_failed(hook, &reason));
                            }
                            continue;
                        }
                        if inject_required(ns, pod) {
                            inject(pod, &istiod_revision(istiod));
                            injector = Some(server);
                        }
                    }
                }
            }
        }
        Ok(injector)
    }

    /// The istiod pod that would inject a pod without labels created in `ns` now (`None`:
    /// none would, or the create would be refused).
    pub(crate) fn injector_for(&self, ns: &str) -> Option<Key> {
        let mut pod = json!({"metadata": {"namespace": ns}});
        self.call_mutating_webhooks(ns, &mut pod).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster with namespace `ns` (labels as given) and istiod pods, Ready, of the
    /// revisions given, each behind a Service `istiod[-REV]` selecting it by revision.
    fn cluster(ns_labels: Value, revisions: &[&str]) -> State {
        let mut st = State::new("c", "CLUSTER-CA".into());
        st.timing.pod_ready = std::time::Duration::ZERO;
        let res = |st: &State, g: &str, p: &str| st.resource(g, "v1", p).unwrap();
        for ns in ["istio-system", "app"] {
            let labels = if ns == "app" {
                ns_labels.clone()
            } else {
                json!({})
            };
            let r = res(&st, "", "namespaces");
            st.create(
                &r,
                "",
                json!({"metadata": {"name": ns, "labels": labels}}),
                false,
            )
            .unwrap();
        }
        for rev in revisions {
            let name = if *rev == "default" {
                "istiod".to_string()
            } else {
                format!("istiod-{rev}")
            };
            let r = res(&st, "", "pods");
            let pod = json!({"metadata": {"name": format!("{name}-abc"), "labels": {
                    "app": "istiod", "istio.io/rev": rev, "sidecar.istio.io/inject": "false"}},
                "spec": {"containers": [{"name": "discovery", "image": "docker.io/istio/pilot:1.28.1"}]}});
            st.create(&r, "istio-system", pod, false).unwrap();
            let r = res(&st, "", "services");
            let svc = json!({"metadata": {"name": name},
                "spec": {"selector": {"app": "istiod", "istio.io/rev": rev}, "ports": [{"port": 443}]}});
            st.create(&r, "istio-system", svc, false).unwrap();
        }
        st
    }

    fn webhook(name: &str, service: &str, ns_sel: Value, obj_sel: Value) -> Value {
        json!({"name": name,
            "clientConfig": {"service": {"name": service, "namespace": "istio-system", "path": "/inject", "port": 443}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": ns_sel, "objectSelector": obj_sel, "sideEffects": "None",
            "admissionReviewVersions": ["v1"]})
    }

    fn not_false() -> Value {
        json!({"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]})
    }

    /// The `rev.namespace.` webhook of Istio's injector for revision (or tag) `selects`,
    /// calling `service`.
    fn rev_namespace(service: &str, selects: &str) -> Value {
        webhook(
            "rev.namespace.sidecar-injector.istio.io",
            service,
            json!({"matchExpressions": [
                {"key": "istio.io/rev", "operator": "In", "values": [selects]},
                {"key": "istio-injection", "operator": "DoesNotExist"}]}),
            not_false(),
        )
    }

    /// A configuration as istiod leaves it: its webhooks trust istiod's root (the cluster's
    /// CA stands in for it without `cacerts`).
    fn add_config(st: &mut State, name: &str, mut hooks: Vec<Value>) {
        use base64::Engine;
        let bundle = base64::engine::general_purpose::STANDARD.encode(&st.ca_pem);
        for h in &mut hooks {
            if h.pointer("/clientConfig/caBundle").is_none() {
                h["clientConfig"]["caBundle"] = json!(bundle);
            }
        }
        let r = st
            .resource(
                "admissionregistration.k8s.io",
                "v1",
                "mutatingwebhookconfigurations",
            )
            .unwrap();
        st.create(
            &r,
            "",
            json!({"metadata": {"name": name}, "webhooks": hooks}),
            false,
        )
        .unwrap();
    }

    fn create_pod(st: &mut State, labels: Value) -> Result<Value, ApiError> {
        let r = st.resource("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"generateName": "web-", "labels": labels},
            "spec": {"containers": [{"name": "web", "image": "web"}]}});
        st.create(&r, "app", pod, false)
    }

    fn revision(pod: &Value) -> Option<String> {
        injected_revision(pod)
    }

    #[test]
    fn a_ca_bundle_without_istiods_root_refuses_the_pod_or_skips_the_webhook() {
        let mut st = cluster(json!({"istio-injection": "enabled"}), &["default"]);
        let mut hook = webhook(
            "namespace.sidecar-injector.istio.io",
            "istiod",
            json!({"matchLabels": {"istio-injection": "enabled"}}),
            not_false(),
        );
        hook["clientConfig"]["caBundle"] = json!("");
        add_config(&mut st, "istio-sidecar-injector", vec![hook.clone()]);
        let e = create_pod(&mut st, json!({})).unwrap_err();
        assert_eq!(e.code, 500);
        assert_eq!(
            &*e.message,
            "Internal error occurred: failed calling webhook \"namespace.sidecar-injector.istio.io\": \
             failed to call webhook: Post \"https://istiod.istio-system.svc:443/inject?timeout=10s\": \
             tls: failed to verify certificate: x509: certificate signed by unknown authority"
        );
        hook["failurePolicy"] = json!("Ignore");
        let r = st
            .resource(
                "admissionregistration.k8s.io",
                "v1",
                "mutatingwebhookconfigurations",
            )
            .unwrap();
        let key = Key::new(&r, "", "istio-sidecar-injector");
        let mut config = st.objects.get(&key).cloned().unwrap();
        config["webhooks"] = json!([hook]);
        st.update(&r, &key, config, crate::store::WriteMode::Main, false)
            .unwrap();
        let pod = create_pod(&mut st, json!({})).unwrap();
        assert_eq!(revision(&pod), None);
    }

    #[test]
    fn a_sidecar_gets_the_tls_mode_label_and_a_gateway_does_not() {
        let mut st = cluster(json!({"istio.io/rev": "canary"}), &["canary"]);
        add_config(
            &mut st,
            "istio-sidecar-injector-canary",
            vec![rev_namespace("istiod-canary", "canary")],
        );
        let pod = create_pod(&mut st, json!({"app": "web"})).unwrap();
        let labels = &pod["metadata"]["labels"];
        assert_eq!(labels["security.istio.io/tlsMode"], "istio");
        assert_eq!(labels["service.istio.io/canonical-name"], "web");
        assert_eq!(labels["service.istio.io/canonical-revision"], "latest");
        let kept = create_pod(&mut st, json!({"security.istio.io/tlsMode": "disabled"})).unwrap();
        assert_eq!(
            kept["metadata"]["labels"]["security.istio.io/tlsMode"],
            "disabled"
        );
        let r = st.resource("", "v1", "pods").unwrap();
        let gateway = json!({"metadata": {"generateName": "gw-", "labels": {"istio": "eastwestgateway"},
                "annotations": {"inject.istio.io/templates": "gateway"}},
            "spec": {"containers": [{"name": "istio-proxy", "image": "auto"}]}});
        let gateway = st.create(&r, "app", gateway, false).unwrap();
        assert_eq!(revision(&gateway).as_deref(), Some("canary"));
        let labels = &gateway["metadata"]["labels"];
        assert!(
            labels.get("security.istio.io/tlsMode").is_none(),
            "{labels}"
        );
        assert_eq!(labels["service.istio.io/canonical-name"], "gw");
    }

    #[test]
    fn the_namespace_label_picks_the_revision_whose_istiod_answers() {
        let mut st = cluster(json!({"istio.io/rev": "canary"}), &["default", "canary"]);
        add_config(
            &mut st,
            "istio-sidecar-injector",
            vec![rev_namespace("istiod", "default")],
        );
        add_config(
            &mut st,
            "istio-sidecar-injector-canary",
            vec![rev_namespace("istiod-canary", "canary")],
        );
        let pod = create_pod(&mut st, json!({})).unwrap();
        assert_eq!(revision(&pod).as_deref(), Some("canary"));
        assert_eq!(pod["metadata"]["annotations"]["istio.io/rev"], "canary");
        let key = Key::new(
            &st.resource("", "v1", "pods").unwrap(),
            "app",
            meta_str(&pod, "name"),
        );
        assert!(st.sidecar_roots.contains_key(&key), "the sidecar's root");
    }

    #[test]
    fn a_pod_two_webhooks_select_is_injected_again_by_the_later_configuration() {
        // A tag `prod` on the canary revision and the canary revision itself both select a
        // namespace labelled `prod`: configurations run in name order, so the tag's
        // (`istio-revision-tag-prod`) runs after `istio-sidecar-injector`'s.
        let mut st = cluster(json!({"istio.io/rev": "prod"}), &["default", "canary"]);
        add_config(
            &mut st,
            "istio-revision-tag-prod",
            vec![rev_namespace("istiod-canary", "prod")],
        );
        add_config(
            &mut st,
            "istio-sidecar-injector",
            vec![rev_namespace("istiod", "prod")],
        );
        let pod = create_pod(&mut st, json!({})).unwrap();
        assert_eq!(
            revision(&pod).as_deref(),
            Some("default"),
            "`istio-sidecar-injector` sorts after `istio-revision-tag-prod`"
        );
        // Within a configuration, webhooks run in their order: the last one wins too.
        let mut st = cluster(json!({"istio.io/rev": "prod"}), &["default", "canary"]);
        add_config(
            &mut st,
            "one",
            vec![
                rev_namespace("istiod", "prod"),
                rev_namespace("istiod-canary", "prod"),
            ],
        );
        let pod = create_pod(&mut st, json!({})).unwrap();
        assert_eq!(revision(&pod).as_deref(), Some("canary"));
    }

    #[test]
    fn a_tag_webhook_injects_with_the_revision_behind_its_service() {
        let mut st = cluster(json!({"istio.io/rev": "stable"}), &["1-28", "1-29"]);
        add_config(
            &mut st,
            "istio-revision-tag-stable",
            vec![rev_namespace("istiod-1-29", "stable")],
        );
        let pod = create_pod(&mut st, json!({})).unwrap();
        assert_eq!(revision(&pod).as_deref(), Some("1-29"));
        let r = st
            .resource(
                "admissionregistration.k8s.io",
                "v1",
                "mutatingwebhookconfigurations",
            )
            .unwrap();
        let key = Key::new(&r, "", "istio-revision-tag-stable");
        let mut tag = st.objects.get(&key).unwrap().clone();
        tag["webhooks"][0]["clientConfig"]["service"]["name"] = json!("istiod-1-28");
        st.update(&r, &key, tag, crate::store::WriteMode::Main, false)
            .unwrap();
        let pod = create_pod(&mut st, json!({})).unwrap();
        assert_eq!(revision(&pod).as_deref(), Some("1-28"), "the tag moved");
    }

    #[test]
    fn no_ready_istiod_fails_the_pod_with_fail_and_skips_with_ignore() {
        let mut st = cluster(json!({"istio.io/rev": "canary"}), &["default"]);
        add_config(
            &mut st,
            "istio-sidecar-injector-canary",
            vec![rev_namespace("istiod-canary", "canary")],
        );
        let e = create_pod(&mut st, json!({})).unwrap_err();
        assert_eq!(e.code, 500);
        assert_eq!(e.reason, "InternalError");
        assert_eq!(
            &*e.message,
            "Internal error occurred: failed calling webhook \"rev.namespace.sidecar-injector.istio.io\": \
             failed to call webhook: Post \"https://istiod-canary.istio-system.svc:443/inject?timeout=10s\": \
             service \"istiod-canary\" not found"
        );
        let r = st.resource("", "v1", "services").unwrap();
        let svc = json!({"metadata": {"name": "istiod-canary"},
            "spec": {"selector": {"app": "istiod", "istio.io/rev": "canary"}, "ports": [{"port": 443}]}});
        st.create(&r, "istio-system", svc, false).unwrap();
        let e = create_pod(&mut st, json!({})).unwrap_err();
        assert!(
            e.message.ends_with(
                "Post \"https://istiod-canary.istio-system.svc:443/inject?timeout=10s\": \
                 no endpoints available for service \"istiod-canary\""
            ),
            "{}",
            e.message
        );

        let r = st
            .resource(
                "admissionregistration.k8s.io",
                "v1",
                "mutatingwebhookconfigurations",
            )
            .unwrap();
        let key = Key::new(&r, "", "istio-sidecar-injector-canary");
        let mut config = st.objects.get(&key).unwrap().clone();
        config["webhooks"][0]["failurePolicy"] = json!("Ignore");
        st.update(&r, &key, config, crate::store::WriteMode::Main, false)
            .unwrap();
        let pod = create_pod(&mut st, json!({})).unwrap();
        assert_eq!(revision(&pod), None, "created without a sidecar");
    }

    #[test]
    fn inject_false_opts_a_pod_out() {
        let mut st = cluster(json!({"istio-injection": "enabled"}), &["default"]);
        let namespace = webhook(
            "namespace.sidecar-injector.istio.io",
            "istiod",
            json!({"matchExpressions": [{"key": "istio-injection", "operator": "In", "values": ["enabled"]}]}),
            not_false(),
        );
        add_config(&mut st, "istio-sidecar-injector", vec![namespace]);
        let pod = create_pod(&mut st, json!({"sidecar.istio.io/inject": "false"})).unwrap();
        assert_eq!(revision(&pod), None, "the object selector skips it");
        let pod = create_pod(&mut st, json!({})).unwrap();
        assert_eq!(revision(&pod).as_deref(), Some("default"));

        // The annotation is istiod's own check (the webhook is called, istiod declines).
        let mut pod = json!({"metadata": {"annotations": {"sidecar.istio.io/inject": "false"}}});
        assert!(!inject_required("app", &pod));
        pod["metadata"]["labels"] = json!({"sidecar.istio.io/inject": "true"});
        assert!(inject_required("app", &pod), "the label wins");
        assert!(!inject_required("kube-system", &json!({})));
    }

    #[test]
    fn an_unlabelled_namespace_injects_nothing_and_a_url_webhook_injects_nothing_here() {
        let mut st = cluster(json!({}), &["default"]);
        add_config(
            &mut st,
            "istio-sidecar-injector",
            vec![rev_namespace("istiod", "default")],
        );
        assert_eq!(revision(&create_pod(&mut st, json!({})).unwrap()), None);
        assert_eq!(st.injector_for("app"), None);

        let mut st = cluster(json!({"istio.io/rev": "default"}), &[]);
        let mut remote = rev_namespace("istiod", "default");
        remote["clientConfig"] = json!({"url": "https://192.0.2.1:15017/inject/cluster/c2"});
        add_config(&mut st, "istio-sidecar-injector", vec![remote]);
        let pod = create_pod(&mut st, json!({})).unwrap();
        assert_eq!(revision(&pod), None);
    }
}
