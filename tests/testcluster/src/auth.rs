//! Who a request comes from, and what they may do: the cluster's admin token may do
//! everything; a service account's token (one the token controller wrote into a live token
//! secret, or a TokenRequest's that has not expired) may do what RBAC grants it. TokenReview
//! answers come from here too.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
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
    /// The audiences it was issued for (the API server's when the request named none).
    pub audiences: Vec<String>,
    /// Its `jti` claim, reported as the credential id.
    pub jti: String,
}

/// The API server's own audience (`--api-audiences`, kind's default): tokens for other
/// audiences do not authenticate requests to it.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

fn sa_key(ns: &str, name: &str) -> Key {
    Key {
        group: String::new(),
        plural: "serviceaccounts".into(),
        namespace: ns.into(),
        name: name.into(),
    }
}

/// The uid of a live service account, or the error the token validators give
/// (pkg/serviceaccount `validator.Validate`, legacy.go `legacyValidator.Validate`).
fn live_sa(st: &State, ns: &str, name: &str, claimed_uid: &str) -> Result<String, String> {
    let uid = st
        .objects
        .get(&sa_key(ns, name))
        .map(|sa| meta_str(sa, "uid").to_string())
        .ok_or_else(|| format!("serviceaccounts \"{name}\" not found"))?;
    if !claimed_uid.is_empty() && claimed_uid != uid {
        return Err(format!(
            "service account UID ({uid}) does not match claim ({claimed_uid})"
        ));
    }
    Ok(uid)
}

/// A token that authenticated: who, the service account's uid, the audiences it is good for
/// (`None`: any, as legacy secret tokens) and its credential id.
pub struct Authenticated {
    pub who: Who,
    pub uid: String,
    pub audiences: Option<Vec<String>>,
    pub credential_id: Option<String>,
}

/// Authenticates a bearer token: the admin token; a TokenRequest token that has not expired
/// and whose service account still exists; or a token the token controller wrote into a
/// `kubernetes.io/service-account-token` Secret that still holds it, of a live service
/// account. A token a client wrote into a Secret itself is nobody's. The error is what the
/// API server's token authenticators say (`None`: not a token they recognise).
pub fn authenticate_token(
    st: &State,
    admin_token: &str,
    token: &str,
) -> Result<Authenticated, Option<String>> {
    if token == admin_token {
        return Ok(Authenticated {
            who: Who::Admin,
            uid: String::new(),
            audiences: None,
            credential_id: None,
        });
    }
    if let Some(i) = st.issued.get(token) {
        if i.expires <= now_secs() {
            return Err(Some("service account token has expired".into()));
        }
        let uid = live_sa(st, &i.namespace, &i.name, &i.sa_uid).map_err(Some)?;
        return Ok(Authenticated {
            who: Who::ServiceAccount {
                namespace: i.namespace.clone(),
                name: i.name.clone(),
            },
            uid,
            audiences: Some(i.audiences.clone()),
            credential_id: Some(format!("JTI={}", i.jti)),
        });
    }
    if let Some(key) = st.secret_tokens.get(token) {
        let encoded = STANDARD.encode(token);
        let Some(secret) = st
            .objects
            .get(key)
            .filter(|s| s.pointer("/data/token").and_then(Value::as_str) == Some(&encoded))
        else {
            return Err(Some("service account token has been invalidated".into()));
        };
        let ann = |a: &str| {
            secret
                .pointer(&format!("/metadata/annotations/{}", a.replace('/', "~1")))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        let name = ann("kubernetes.io/service-account.name");
        let uid = live_sa(
            st,
            &key.namespace,
            name,
            ann("kubernetes.io/service-account.uid"),
        )
        .map_err(Some)?;
        return Ok(Authenticated {
            who: Who::ServiceAccount {
                namespace: key.namespace.clone(),
                name: name.to_string(),
            },
            uid,
            audiences: None,
            credential_id: None,
        });
    }
    // A JWT the cluster did not sign fails its signature check; anything else is not a
    // service account token at all.
    let jwt = token.split('.').count() == 3
        && token
            .split('.')
            .next()
            .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
            .is_some_and(|h| serde_json::from_slice::<Value>(&h).is_ok());
    Err(jwt.then(|| "go-jose/go-jose: error in cryptographic primitive".to_string()))
}

/// Who holds the bearer token `token` for requests to the API server (its own audience), or
/// `None` when nobody does (any more).
pub fn token_owner(st: &State, admin_token: &str, token: &str) -> Option<Who> {
    let a = authenticate_token(st, admin_token, token).ok()?;
    a.audiences
        .is_none_or(|auds| auds.iter().any(|a| a == API_AUDIENCE))
        .then_some(a.who)
}

/// Go's `%q` of a string list: `["a" "b"]`.
fn quoted(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|a| format!("{a:?}")).collect();
    format!("[{}]", items.join(" "))
}

/// The status of a TokenReview of `token` for `audiences` (the API server's when empty), as
/// pkg/registry/authentication/tokenreview `REST.Create` fills it: the user of a token that
/// authenticates for one of the audiences, else `authenticated: false` and the
/// authenticators' error.
pub fn token_review_status(
    st: &State,
    admin_token: &str,
    token: &str,
    audiences: &[String],
) -> Value {
    let wanted: Vec<String> = if audiences.is_empty() {
        vec![API_AUDIENCE.to_string()]
    } else {
        audiences.to_vec()
    };
    // The review authenticates a request carrying the token; the API server's union of
    // bearer-token authenticators reports its authenticators' errors together, one of them
    // always `invalid bearer token` (bearertoken `Authenticator`, deduplicated by
    // apimachinery's error aggregate): `[invalid bearer token, <why>]`.
    let refused = |why: Option<String>| {
        let error = match why {
            Some(why) => format!("[invalid bearer token, {why}]"),
            None => "invalid bearer token".into(),
        };
        json!({"authenticated": false, "user": {}, "error": error})
    };
    let a = match authenticate_token(st, admin_token, token) {
        Ok(a) => a,
        Err(why) => return refused(why),
    };
    let granted: Vec<String> = match &a.audiences {
        None => wanted.clone(),
        Some(auds) => wanted
            .iter()
            .filter(|w| auds.contains(w))
            .cloned()
            .collect(),
    };
    if granted.is_empty() {
        return refused(Some(format!(
            "token audiences {} is invalid for the target audiences {}",
            quoted(a.audiences.as_deref().unwrap_or_default()),
            quoted(&wanted)
        )));
    }
    let user = match &a.who {
        Who::ServiceAccount { namespace, .. } => {
            let mut user = json!({
                "username": a.who.user(),
                "uid": a.uid,
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"),
                           "system:authenticated"],
            });
            if let Some(id) = &a.credential_id {
                user["extra"] = json!({"authentication.kubernetes.io/credential-id": [id]});
            }
            user
        }
        _ => {
            json!({"username": a.who.user(), "groups": ["system:masters", "system:authenticated"]})
        }
    };
    json!({"authenticated": true, "user": user, "audiences": granted})
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
    // The group-qualified resource, without subresource (apiserver responsewriters
    // `ForbiddenStatusError` → `NewForbidden(GroupResource, name, ...)`).
    let base = resource.split('/').next().unwrap_or(resource);
    let qualified = if group.is_empty() {
        base.to_string()
    } else {
        format!("{base}.{group}")
    };
    let subject = match name {
        Some(n) => format!("{qualified} \"{n}\""),
        None => qualified,
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

/// What a request asks to do, as RBAC sees it.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    /// The resource, with `/subresource` when there is one.
    pub resource: &'a str,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// Whether `who` may do what `a` asks. The admin may do everything; a service account what
/// the ClusterRoles and Roles bound to it (or to its groups) allow, plus asking what it may
/// do itself (`selfsubjectaccessreviews`, as `system:basic-user` grants). Aggregated
/// ClusterRoles are not evaluated.
pub fn allowed(st: &State, who: &Who, a: &Attributes) -> bool {
    let (ns, name) = match who {
        Who::Admin => return true,
        Who::Anonymous => return false,
        Who::ServiceAccount { namespace, name } => (namespace.as_str(), name.as_str()),
    };
    if a.group == "authorization.k8s.io"
        && matches!(
            a.resource,
            "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
        )
    {
        return true;
    }
    let binds_me = |binding: &Value| {
        binding
            .get("subjects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|s| {
                let field = |f: &str| s.get(f).and_then(Value::as_str).unwrap_or("");
                match field("kind") {
                    "ServiceAccount" => field("name") == name && field("namespace") == ns,
                    "User" => field("name") == format!("system:serviceaccount:{ns}:{name}"),
                    "Group" => {
                        matches!(
                            field("name"),
                            "system:serviceaccounts" | "system:authenticated"
                        ) || field("name") == format!("system:serviceaccounts:{ns}")
                    }
                    _ => false,
                }
            })
    };
    let role = |kind: &str, role_ns: &str, role_name: &str| -> Option<&Value> {
        let (plural, namespace) = match kind {
            "ClusterRole" => ("clusterroles", ""),
            "Role" => ("roles", role_ns),
            _ => return None,
        };
        st.objects.get(&Key {
            group: "rbac.authorization.k8s.io".into(),
            plural: plural.into(),
            namespace: namespace.into(),
            name: role_name.into(),
        })
    };
    st.objects
        .iter()
        .filter(|(k, b)| {
            k.group == "rbac.authorization.k8s.io"
                && (k.plural == "clusterrolebindings"
                    // A RoleBinding grants only within its namespace.
                    || (k.plural == "rolebindings" && a.namespace == Some(k.namespace.as_str())))
                && binds_me(b)
        })
        .filter_map(|(k, b)| {
            let kind = b.pointer("/roleRef/kind").and_then(Value::as_str)?;
            let role_name = b.pointer("/roleRef/name").and_then(Value::as_str)?;
            role(kind, &k.namespace, role_name)
        })
        .flat_map(|r| {
            r.get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .any(|rule| rule_allows(rule, a))
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let list = |f: &str| -> Vec<&str> {
        rule.get(f)
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let has = |f: &str, want: &str| list(f).iter().any(|x| *x == "*" || *x == want);
    let resource_ok = list("resources").iter().any(|r| {
        *r == "*"
            || *r == a.resource
            || r.strip_suffix("/*").is_some_and(|base| {
                a.resource.split('/').next() == Some(base) && a.resource.contains('/')
            })
    });
    let names = list("resourceNames");
    has("verbs", a.verb)
        && has("apiGroups", a.group)
        && resource_ok
        && (names.is_empty() || a.name.is_some_and(|n| names.contains(&n)))
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
            .starts_with("customresourcedefinitions.apiextensions.k8s.io \"x\" is forbidden: ")
        );
        assert!(
            forbidden_message(&sa, "create", "", "pods/exec", Some("ns"), Some("p"))
                .starts_with("pods \"p\" is forbidden: User \"system:serviceaccount:istio-system:istio-reader-service-account\" cannot create resource \"pods/exec\"")
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
            audiences: vec![API_AUDIENCE.into()],
            jti: "j".into(),
        };
        st.issued.insert("old".into(), issued(now_secs() - 1));
        st.issued.insert("new".into(), issued(now_secs() + 60));
        assert_eq!(token_owner(&st, "admin", "old"), None);
        assert_eq!(
            token_owner(&st, "admin", "new").map(|w| w.user()),
            Some("system:serviceaccount:default:r".into())
        );
    }

    fn with_reader_role(rules: Value) -> State {
        let mut st = State::new("c", String::new());
        let add = |st: &mut State, plural: &str, obj: Value| {
            let res = st
                .resource("rbac.authorization.k8s.io", "v1", plural)
                .unwrap();
            st.create(&res, "", obj, false).unwrap();
        };
        add(
            &mut st,
            "clusterroles",
            json!({"metadata": {"name": "reader"}, "rules": rules}),
        );
        add(
            &mut st,
            "clusterrolebindings",
            json!({"metadata": {"name": "reader"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "reader"},
                   "subjects": [{"kind": "ServiceAccount", "name": "r", "namespace": "istio-system"}]}),
        );
        st
    }

    fn ask<'a>(verb: &'a str, group: &'a str, resource: &'a str) -> Attributes<'a> {
        Attributes {
            verb,
            group,
            resource,
            namespace: Some("istio-system"),
            name: None,
        }
    }

    #[test]
    fn a_service_account_may_do_what_its_bound_roles_allow() {
        let st = with_reader_role(json!([
            {"apiGroups": [""], "resources": ["secrets", "namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["networking.istio.io"], "resources": ["*"], "verbs": ["list"]},
        ]));
        let sa = Who::ServiceAccount {
            namespace: "istio-system".into(),
            name: "r".into(),
        };
        assert!(allowed(&st, &sa, &ask("list", "", "secrets")));
        assert!(allowed(
            &st,
            &sa,
            &ask("list", "networking.istio.io", "gateways")
        ));
        assert!(!allowed(&st, &sa, &ask("create", "", "secrets")));
        assert!(!allowed(&st, &sa, &ask("get", "", "pods/proxy")));
        assert!(!allowed(&st, &sa, &ask("list", "", "configmaps")));
        assert!(allowed(
            &st,
            &sa,
            &ask("create", "authorization.k8s.io", "selfsubjectaccessreviews")
        ));
        let other = Who::ServiceAccount {
            namespace: "default".into(),
            name: "r".into(),
        };
        assert!(
            !allowed(&st, &other, &ask("list", "", "secrets")),
            "bound to istio-system/r only"
        );
        assert!(allowed(&st, &Who::Admin, &ask("delete", "", "namespaces")));
    }
}
