//! Who a request comes from, and what they may do: the cluster's admin token may do
//! everything; a service account's token (from a live token secret, or a TokenRequest that has
//! not expired) may read, as the Istio reader role allows, and is refused every write.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::store::{Key, State, meta_str};
use crate::util::now_secs;

/// The identity a request was authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// The cluster's admin token (`write_kubeconfig` writes it).
    Admin,
    /// A service account's token.
    ServiceAccount { namespace: String, name: String },
    /// No `Authorization` header: allowed only on `/version` and the health endpoints.
    Anonymous,
}

impl Who {
    /// The user name the API server would log: `admin`, `system:serviceaccount:NS:NAME` or
    /// `system:anonymous`.
    pub fn user(&self) -> String {
        match self {
            Who::Admin => "admin".into(),
            Who::ServiceAccount { namespace, name } => {
                format!("system:serviceaccount:{namespace}:{name}")
            }
            Who::Anonymous => "system:anonymous".into(),
        }
    }
}

/// A token issued through `POST .../serviceaccounts/NAME/token`.
#[derive(Debug, Clone)]
pub struct Issued {
    pub namespace: String,
    pub name: String,
    pub sa_uid: String,
    pub expires: i64,
}

fn sa_key(ns: &str, name: &str) -> Key {
    Key {
        group: String::new(),
        plural: "serviceaccounts".into(),
        namespace: ns.into(),
        name: name.into(),
    }
}

/// The uid of a live service account.
fn sa_uid(st: &State, ns: &str, name: &str) -> Option<String> {
    st.objects
        .get(&sa_key(ns, name))
        .map(|sa| meta_str(sa, "uid").to_string())
}

/// Who holds the bearer token `token`, or `None` when nobody does (any more).
pub fn token_owner(st: &State, admin_token: &str, token: &str) -> Option<Who> {
    if token == admin_token {
        return Some(Who::Admin);
    }
    if let Some(i) = st.issued.get(token) {
        let live =
            i.expires > now_secs() && sa_uid(st, &i.namespace, &i.name) == Some(i.sa_uid.clone());
        return live.then(|| Who::ServiceAccount {
            namespace: i.namespace.clone(),
            name: i.name.clone(),
        });
    }
    let encoded = STANDARD.encode(token);
    st.objects
        .iter()
        .filter(|(k, _)| k.group.is_empty() && k.plural == "secrets")
        .find(|(_, s)| {
            s.get("type").and_then(Value::as_str) == Some("kubernetes.io/service-account-token")
                && s.pointer("/data/token").and_then(Value::as_str) == Some(&encoded)
        })
        .and_then(|(k, s)| {
            let ann = |a: &str| {
                s.pointer(&format!("/metadata/annotations/{}", a.replace('/', "~1")))
                    .and_then(Value::as_str)
                    .unwrap_or("")
            };
            let name = ann("kubernetes.io/service-account.name");
            let uid = sa_uid(st, &k.namespace, name)?;
            let want = ann("kubernetes.io/service-account.uid");
            (want.is_empty() || want == uid).then(|| Who::ServiceAccount {
                namespace: k.namespace.clone(),
                name: name.to_string(),
            })
        })
}

/// Authenticates a request from its `Authorization` header.
pub fn authenticate(st: &State, admin_token: &str, header: Option<&str>) -> Result<Who, ()> {
    let Some(h) = header else {
        return Ok(Who::Anonymous);
    };
    let token = h.strip_prefix("Bearer ").ok_or(())?.trim();
    token_owner(st, admin_token, token).ok_or(())
}

/// The `Status` of a 401.
pub fn unauthorized() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
}

/// What RBAC says when `who` may not `verb` a resource: the `Status` message of a 403.
pub fn forbidden_message(
    who: &Who,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> String {
    let subject = match name {
        Some(n) => format!("{resource} \"{n}\""),
        None => resource.to_string(),
    };
    let scope = match namespace {
        Some(ns) if !ns.is_empty() => format!("in the namespace \"{ns}\""),
        _ => "at the cluster scope".to_string(),
    };
    format!(
        "{subject} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}",
        who.user()
    )
}

/// Whether `who` may do `verb` (a Kubernetes verb) on `resource` (with `/subresource`).
pub fn allowed(who: &Who, verb: &str, resource: &str, create_only: bool) -> bool {
    match who {
        Who::Admin => true,
        Who::Anonymous => false,
        Who::ServiceAccount { .. } => {
            if create_only {
                // Reviews: every authenticated user may ask what they may do; the reader role
                // grants tokenreviews and subjectaccessreviews.
                return verb == "create";
            }
            let sub = resource.split_once('/').map(|(_, s)| s);
            matches!(verb, "get" | "list" | "watch") && sub.is_none_or(|s| s == "status")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_messages_name_the_user_verb_and_scope() {
        let sa = Who::ServiceAccount {
            namespace: "istio-system".into(),
            name: "istio-reader-service-account".into(),
        };
        assert_eq!(
            forbidden_message(&sa, "create", "", "secrets", Some("istio-system"), None),
            "secrets is forbidden: User \"system:serviceaccount:istio-system:istio-reader-service-account\" cannot create resource \"secrets\" in API group \"\" in the namespace \"istio-system\""
        );
        assert!(
            forbidden_message(
                &sa,
                "delete",
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                None,
                Some("x")
            )
            .ends_with("at the cluster scope")
        );
    }

    #[test]
    fn a_token_request_token_works_until_it_expires() {
        let mut st = State::new("c", String::new());
        let sa = st.resource("", "v1", "serviceaccounts").unwrap();
        let obj = st
            .create(&sa, "default", json!({"metadata": {"name": "r"}}), false)
            .unwrap();
        let issued = |expires| Issued {
            namespace: "default".into(),
            name: "r".into(),
            sa_uid: meta_str(&obj, "uid").into(),
            expires,
        };
        st.issued.insert("old".into(), issued(now_secs() - 1));
        st.issued.insert("new".into(), issued(now_secs() + 60));
        assert_eq!(token_owner(&st, "admin", "old"), None);
        assert_eq!(
            token_owner(&st, "admin", "new").map(|w| w.user()),
            Some("system:serviceaccount:default:r".into())
        );
    }

    #[test]
    fn service_accounts_only_read() {
        let sa = Who::ServiceAccount {
            namespace: "a".into(),
            name: "b".into(),
        };
        assert!(allowed(&sa, "list", "secrets", false));
        assert!(!allowed(&sa, "patch", "secrets", false));
        assert!(!allowed(&sa, "get", "pods/proxy", false));
        assert!(allowed(&sa, "create", "selfsubjectaccessreviews", true));
        assert!(allowed(&Who::Admin, "delete", "namespaces", false));
    }
}
