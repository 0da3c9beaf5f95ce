//! What an update may not change: the API server's update validation of fields that are set
//! once (Kubernetes v1.35 pkg/apis/core/validation `ValidateServiceUpdate`
//! (`validateUpgradeDowngradeClusterIPs`), `ValidateSecretUpdate`, `ValidateConfigMapUpdate`;
//! pkg/apis/apps/validation `ValidateDeploymentUpdate`, `ValidateReplicaSetUpdate`,
//! `ValidateDaemonSetUpdate`). A refused update is 422 Invalid with the words of
//! apimachinery's `errors.NewInvalid`: `KIND[.GROUP] "NAME" is invalid: ERR` (several errors as
//! `[ERR, ERR]`), each error `FIELD: Invalid value: VALUE: DETAIL` or `FIELD: Forbidden: DETAIL`
//! (apimachinery pkg/util/validation/field `Error.Error`).

use serde_json::{Value, json};

use crate::registry::Resource;
use crate::store::ApiError;

/// One field error, as `field.Error` prints it.
struct FieldError {
    field: String,
    reason: &'static str,
    body: String,
}

fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> FieldError {
    FieldError {
        field: field.into(),
        reason: "FieldValueInvalid",
        body: format!("Invalid value: {value}: {detail}"),
    }
}

fn forbidden(field: &str, detail: &str) -> FieldError {
    FieldError {
        field: field.into(),
        reason: "FieldValueForbidden",
        body: format!("Forbidden: {detail}"),
    }
}

const IMMUTABLE_WHEN_SET: &str = "field is immutable when `immutable` is set";

/// Refuses an update of `old` to `new` that changes a field the API server keeps as it was
/// set. `new` is the object as the client sent it (before the server fills what it keeps).
pub fn check_update(res: &Resource, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    let errors = match (res.group.as_str(), res.plural.as_str()) {
        ("", "services") => service(old, new),
        ("", "secrets") => secret(old, new),
        ("", "configmaps") => immutable_data(old, new, &["data", "binaryData"]),
        ("apps", "deployments" | "replicasets" | "daemonsets") => {
            let (o, n) = (
                old.pointer("/spec/selector").unwrap_or(&Value::Null),
                new.pointer("/spec/selector").unwrap_or(&Value::Null),
            );
            if o != n {
                vec![invalid("spec.selector", n, "field is immutable")]
            } else {
                vec![]
            }
        }
        _ => vec![],
    };
    if errors.is_empty() {
        return Ok(());
    }
    let kind = if res.group.is_empty() {
        res.kind.clone()
    } else {
        format!("{}.{}", res.kind, res.group)
    };
    let printed: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.body))
        .collect();
    let all = if printed.len() == 1 {
        printed[0].clone()
    } else {
        format!("[{}]", printed.join(", "))
    };
    let mut e = ApiError::new(
        422,
        "Invalid",
        format!("{kind} \"{name}\" is invalid: {all}"),
    );
    e.name = name.to_string();
    e.group = res.group.clone();
    e.plural = res.plural.clone();
    e.causes = Some(Box::new(Value::Array(
        errors
            .iter()
            .map(|f| json!({"reason": f.reason, "message": f.body, "field": f.field}))
            .collect(),
    )));
    Err(e)
}

/// The cluster IPs may not change, except to or from ExternalName and between headless
/// Services. A client that sends only `clusterIP` changes the first of `clusterIPs` (the
/// registry's `NormalizeClusterIPs`); one that sends neither keeps the allocated ones.
fn service(old: &Value, new: &Value) -> Vec<FieldError> {
    let ty = |o: &Value| {
        o.pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string()
    };
    if ty(old) == "ExternalName" || ty(new) == "ExternalName" {
        return vec![];
    }
    let ips = |o: &Value| -> Vec<String> {
        o.pointer("/spec/clusterIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect()
    };
    let old_ips = ips(old);
    let sent_ips = ips(new);
    let sent_ip = new
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("");
    let new_ips = if !sent_ips.is_empty() && sent_ips != old_ips {
        sent_ips
    } else if !sent_ip.is_empty() && old_ips.first().map(String::as_str) != Some(sent_ip) {
        let mut v = vec![sent_ip.to_string()];
        v.extend(old_ips.iter().skip(1).cloned());
        v
    } else {
        return vec![];
    };
    let headless = |v: &[String]| v.first().is_some_and(|ip| ip == "None");
    if headless(&old_ips) && headless(&new_ips) {
        return vec![];
    }
    old_ips
        .iter()
        .enumerate()
        .filter(|(i, ip)| new_ips.get(*i).is_some_and(|n| n != *ip))
        .map(|(i, _)| {
            invalid(
                format!("spec.clusterIPs[{i}]"),
                &json!(new_ips),
                "may not change once set",
            )
        })
        .collect()
}

/// A Secret's type never changes (an absent type is `Opaque`, the default); an immutable one
/// keeps its data.
fn secret(old: &Value, new: &Value) -> Vec<FieldError> {
    let ty = |o: &Value| {
        o.get("type")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .unwrap_or("Opaque")
            .to_string()
    };
    let mut out = vec![];
    if ty(old) != ty(new) {
        out.push(invalid("type", &json!(ty(new)), "field is immutable"));
    }
    out.extend(immutable_data(old, new, &["data"]));
    out
}

/// Once `immutable: true`, it stays, and so do the data fields.
fn immutable_data(old: &Value, new: &Value, fields: &[&str]) -> Vec<FieldError> {
    if old.get("immutable") != Some(&json!(true)) {
        return vec![];
    }
    let mut out = vec![];
    if new.get("immutable") != Some(&json!(true)) {
        out.push(forbidden("immutable", IMMUTABLE_WHEN_SET));
    }
    for f in fields {
        if old.get(*f) != new.get(*f) {
            out.push(forbidden(f, IMMUTABLE_WHEN_SET));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn res(group: &str, plural: &str) -> Resource {
        Registry::builtin()
            .find(group, "v1", plural)
            .cloned()
            .unwrap()
    }

    fn message(r: Result<(), ApiError>) -> String {
        r.unwrap_err().message.to_string()
    }

    #[test]
    fn a_new_cluster_ip_is_refused_and_an_absent_one_keeps_the_old() {
        let svc = res("", "services");
        let old = json!({"spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"]}});
        assert_eq!(
            message(check_update(
                &svc,
                "s",
                &old,
                &json!({"spec": {"clusterIP": "10.96.99.99"}})
            )),
            "Service \"s\" is invalid: spec.clusterIPs[0]: Invalid value: [\"10.96.99.99\"]: may not change once set"
        );
        assert!(check_update(&svc, "s", &old, &json!({"spec": {}})).is_ok());
        assert!(check_update(&svc, "s", &old, &old).is_ok());
    }

    #[test]
    fn a_secret_keeps_its_type_and_an_immutable_config_map_its_data() {
        let old = json!({"type": "Opaque", "data": {"a": "Yg=="}});
        assert_eq!(
            message(check_update(
                &res("", "secrets"),
                "s",
                &old,
                &json!({"type": "example.com/other", "data": {"a": "Yg=="}})
            )),
            "Secret \"s\" is invalid: type: Invalid value: \"example.com/other\": field is immutable"
        );
        let old = json!({"immutable": true, "data": {"a": "b"}});
        assert_eq!(
            message(check_update(
                &res("", "configmaps"),
                "c",
                &old,
                &json!({"data": {"a": "c"}})
            )),
            "ConfigMap \"c\" is invalid: [immutable: Forbidden: field is immutable when `immutable` is set, data: Forbidden: field is immutable when `immutable` is set]"
        );
    }

    #[test]
    fn a_deployment_keeps_its_selector() {
        let old = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}}});
        let new = json!({"spec": {"selector": {"matchLabels": {"app": "b"}}}});
        assert_eq!(
            message(check_update(&res("apps", "deployments"), "d", &old, &new)),
            "Deployment.apps \"d\" is invalid: spec.selector: Invalid value: {\"matchLabels\":{\"app\":\"b\"}}: field is immutable"
        );
    }
}
