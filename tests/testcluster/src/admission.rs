//! Validating admission webhooks, as far as istiod's matter: the API server calls the webhooks
//! of every ValidatingWebhookConfiguration whose rules match a write; a webhook backed by a
//! Service with no ready endpoint cannot be called, and with `failurePolicy: Fail` (the v1
//! default) the write is refused (apiserver pkg/admission/plugin/webhook/validating
//! `validatingDispatcher.Dispatch`, `callHook`). No webhook is really called: a reachable one
//! accepts.

use serde_json::{Value, json};

use crate::registry::Resource;
use crate::store::{ApiError, Key, State};

/// The revision whose istiod owns (patches) a webhook configuration: its `istio.io/rev` label
/// (pilot pkg/webhooks/validation/controller `newController` watches by that label).
pub fn owning_revision(hook: &Value) -> Option<String> {
    hook.pointer("/metadata/labels/istio.io~1rev")
        .and_then(Value::as_str)
        .map(String::from)
}

/// Whether a list of rule values (`apiGroups`, `resources`, `operations`) holds `v` or `*`.
fn listed(list: Option<&Value>, v: &str) -> bool {
    list.and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|x| x == "*" || x == v))
}

/// Whether a webhook's rules cover `operation` on `res` (main resource; no subresources).
pub(crate) fn rules_match(hook: &Value, res: &Resource, operation: &str) -> bool {
    hook.get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|r| {
            listed(r.get("operations"), operation)
                && listed(r.get("apiGroups"), &res.group)
                && listed(r.get("apiVersions"), &res.version)
                && listed(r.get("resources"), &res.plural)
        })
}

/// Whether labels satisfy a LabelSelector object (`matchLabels`, `matchExpressions` with In,
/// NotIn, Exists, DoesNotExist); no selector matches everything.
pub fn selector_matches(selector: Option<&Value>, labels: Option<&Value>) -> bool {
    let Some(sel) = selector else {
        return true;
    };
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let by_labels = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let by_expressions = sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => label(key).is_some_and(|v| values.contains(&v)),
                "NotIn" => label(key).is_none_or(|v| !values.contains(&v)),
                "Exists" => label(key).is_some(),
                "DoesNotExist" => label(key).is_none(),
                _ => false,
            }
        });
    by_labels && by_expressions
}

impl State {
    /// Calls the validating webhooks that match a write of `obj` (its `old` version for an
    /// update): a webhook whose Service has no ready endpoint fails the write when its
    /// `failurePolicy` is `Fail`, with the API server's words.
    pub(crate) fn call_validating_webhooks(
        &self,
        res: &Resource,
        operation: &str,
        old: Option<&Value>,
        obj: &Value,
    ) -> Result<(), ApiError> {
        let Some(vwc) = self.resource(
            "admissionregistration.k8s.io",
            "v1",
            "validatingwebhookconfigurations",
        ) else {
            return Ok(());
        };
        // Webhooks never see the webhook configurations themselves (nor leases, events).
        if res.group == "admissionregistration.k8s.io" {
            return Ok(());
        }
        let labels_of = |o: &Value| o.pointer("/metadata/labels").cloned();
        let ns_labels = if res.namespaced {
            self.objects
                .get(&Key {
                    group: String::new(),
                    plural: "namespaces".into(),
                    namespace: String::new(),
                    name: crate::store::meta_str(obj, "namespace").to_string(),
                })
                .and_then(labels_of)
        } else {
            None
        };
        for (_, config) in self.select(&vwc, None) {
            for hook in config
                .get("webhooks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !rules_match(hook, res, operation) {
                    continue;
                }
                let object_match =
                    selector_matches(hook.get("objectSelector"), labels_of(obj).as_ref())
                        || old.is_some_and(|o| {
                            selector_matches(hook.get("objectSelector"), labels_of(o).as_ref())
                        });
                if !object_match
                    || (res.namespaced
                        && !selector_matches(hook.get("namespaceSelector"), ns_labels.as_ref()))
                {
                    continue;
                }
                let Err(reason) = self.webhook_endpoint(hook) else {
                    continue;
                };
                if fails_closed(hook) {
                    return Err(call_failed(hook, &reason));
                }
            }
        }
        Ok(())
    }

    /// Where the API server's call to a webhook goes: a `url` (taken as reachable), or a
    /// Service, which needs a ready endpoint (a Ready pod its selector picks). The error names
    /// the call as the API server's webhook client does (`Post
    /// "https://SVC.NS.svc:PORT/PATH?timeout=Ns": ...`).
    pub(crate) fn webhook_endpoint(&self, hook: &Value) -> Result<Endpoint, String> {
        let Some(svc_ref) = hook.pointer("/clientConfig/service") else {
            return Ok(Endpoint::Elsewhere);
        };
        let s = |k: &str| svc_ref.get(k).and_then(Value::as_str).unwrap_or("");
        let (name, ns) = (s("name"), s("namespace"));
        let url = webhook_url(hook);
        let Some(svc) = self.objects.get(&Key {
            group: String::new(),
            plural: "services".into(),
            namespace: ns.into(),
            name: name.into(),
        }) else {
            return Err(format!("{url}: service \"{name}\" not found"));
        };
        self.service_endpoint(ns, svc)
            .ok_or_else(|| format!("{url}: no endpoints available for service \"{name}\""))
    }

    /// A ready endpoint of a Service: the first (by name) Ready pod of its namespace matched
    /// by its selector; a Service without a selector has one elsewhere when an EndpointSlice
    /// names it (as meshup's remote profile does) or it is an ExternalName.
    pub(crate) fn service_endpoint(&self, ns: &str, svc: &Value) -> Option<Endpoint> {
        let name = crate::store::meta_str(svc, "name");
        match svc.pointer("/spec/selector").and_then(Value::as_object) {
            Some(sel) if !sel.is_empty() => self
                .objects
                .iter()
                .find(|(k, p)| {
                    k.group.is_empty()
                        && k.plural == "pods"
                        && k.namespace == ns
                        && crate::proxy::pod_ready(p)
                        && sel.iter().all(|(l, v)| {
                            p.pointer(&format!("/metadata/labels/{}", l.replace('/', "~1")))
                                == Some(v)
                        })
                })
                .map(|(k, _)| Endpoint::Pod(k.clone())),
            _ => (svc.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName")
                || self.objects.iter().any(|(k, e)| {
                    k.group == "discovery.k8s.io"
                        && k.plural == "endpointslices"
                        && k.namespace == ns
                        && e.pointer("/metadata/labels/kubernetes.io~1service-name")
                            .and_then(Value::as_str)
                            == Some(name)
                }))
            .then_some(Endpoint::Elsewhere),
        }
    }
}

/// The call to a Service webhook as the API server's client names it in errors: `Post
/// "https://SVC.NS.svc:PORT/PATH?timeout=Ns"` (port 443 and 10 s by default).
pub(crate) fn webhook_url(hook: &Value) -> String {
    let svc_ref = hook
        .pointer("/clientConfig/service")
        .unwrap_or(&Value::Null);
    let s = |k: &str| svc_ref.get(k).and_then(Value::as_str).unwrap_or("");
    let port = svc_ref.get("port").and_then(Value::as_u64).unwrap_or(443);
    let timeout = hook
        .get("timeoutSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(10);
    format!(
        "Post \"https://{}.{}.svc:{port}{}?timeout={timeout}s\"",
        s("name"),
        s("namespace"),
        s("path")
    )
}

/// Where a webhook call lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// A Ready pod of this cluster behind the webhook's Service.
    Pod(Key),
    /// Outside this cluster's pods: a `url`, an ExternalName Service, or a Service whose
    /// EndpointSlice names an address elsewhere.
    Elsewhere,
}

/// The API server's answer when a webhook with `failurePolicy: Fail` cannot be called
/// (apiserver pkg/admission/plugin/webhook/errors `ErrCallingWebhook`, turned into a 500 by
/// `apierrors.NewInternalError` in the validating and mutating dispatchers).
pub(crate) fn call_failed(hook: &Value, reason: &str) -> ApiError {
    let name = hook.get("name").and_then(Value::as_str).unwrap_or("");
    let cause = format!("failed calling webhook \"{name}\": failed to call webhook: {reason}");
    let mut e = ApiError::new(
        500,
        "InternalError",
        format!("Internal error occurred: {cause}"),
    );
    e.causes = Some(Box::new(json!([json!({"message": cause})])));
    e
}

/// Whether a webhook's `failurePolicy` is `Fail` (the v1 default when unset).
pub(crate) fn fails_closed(hook: &Value) -> bool {
    hook.get("failurePolicy")
        .and_then(Value::as_str)
        .unwrap_or("Fail")
        == "Fail"
}
