//! The HTTP side: routing of API paths, verbs, content types and watch streams.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::LoggedRequest;
use crate::auth::{self, Who};
use crate::net::{Conn, Cut, Faults, Verdict};
use crate::patch;
use crate::registry::Resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{ApiError, Event, Key, Pending, State, WriteMode, meta_str};
use crate::util::url_decode;

/// What the server threads and the `TestCluster` handle share.
pub struct Shared {
    pub name: String,
    pub state: Mutex<State>,
    pub latency_ns: AtomicU64,
    pub requests: AtomicU64,
    pub mutations: AtomicU64,
    pub log: bool,
    pub pki: crate::tls::Pki,
    pub admin_token: String,
    pub faults: Mutex<Faults>,
    /// Tells open connections to close (stop) or reset (outage).
    pub cut: tokio::sync::watch::Sender<Cut>,
    pub request_log: Mutex<Vec<LoggedRequest>>,
    pub pod_proxy: AtomicBool,
    pub sync_delay_ms: AtomicU64,
    /// [`crate::Options::informer_lag`] in milliseconds.
    pub informer_lag_ms: AtomicU64,
    /// [`crate::Options::remote_cluster_timeout`] in milliseconds.
    pub remote_cluster_timeout_ms: AtomicU64,
}

impl Shared {
    fn record(&self, method: &Method, uri: &axum::http::Uri, status: u16, who: &str) {
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| uri.path().to_string());
        self.request_log.lock().unwrap().push(LoggedRequest {
            method: method.as_str().to_string(),
            path,
            status,
            who: who.to_string(),
        });
    }

    /// Closes (or resets) every open connection but `exempt`.
    pub fn cut_all(&self, reset: bool, exempt: Option<u64>) {
        self.cut.send_modify(|c| c.next(reset, exempt));
    }
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (url_decode(k), url_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

fn json_response(code: u16, v: &Value) -> Response {
    let mut r = Response::new(Body::from(serde_json::to_vec(v).unwrap()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.status())
}

fn text_response(code: u16, s: &'static str) -> Response {
    let mut r = Response::new(Body::from(s));
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn not_found_path(path: &str) -> Response {
    let mut e = ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    );
    e.name = path.to_string();
    error_response(&e)
}

fn is_write(method: &Method) -> bool {
    matches!(
        method,
        &Method::POST | &Method::PUT | &Method::PATCH | &Method::DELETE
    )
}

/// Paths that anyone may read without a token, as on a real cluster
/// (`system:public-info-viewer`).
fn is_public(path: &str) -> bool {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    matches!(first, "version" | "healthz" | "readyz" | "livez")
}

/// Answers one request: latency, faults, authentication, then the API.
pub async fn handle(shared: Arc<Shared>, conn: Conn, req: Request) -> Response {
    let latency = Duration::from_nanos(shared.latency_ns.load(Ordering::Relaxed));
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let method = req.method().clone();
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let who = {
        let st = shared.state.lock().unwrap();
        auth::authenticate(&st, &shared.admin_token, authorization.as_deref())
    };
    let user = who.as_ref().map(Who::user).unwrap_or_else(|_| "-".into());
    let verdict = shared.faults.lock().unwrap().verdict();
    match verdict {
        Verdict::Serve => {}
        Verdict::Reset => {
            shared.record(&method, &uri, 0, &user);
            conn.reset().await
        }
        Verdict::Throttled => {
            shared.record(&method, &uri, 429, &user);
            let e = ApiError::new(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
            );
            let mut r = error_response(&e);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        Verdict::Unavailable => {
            shared.record(&method, &uri, 503, &user);
            let e = ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            );
            return error_response(&e);
        }
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let write = is_write(&method);
    if write {
        shared.mutations.fetch_add(1, Ordering::Relaxed);
    }
    if let Some((ns, name)) = crate::exec::exec_target(uri.path()) {
        let resp = match &who {
            Ok(Who::Anonymous) | Err(()) => json_response(401, &auth::unauthorized()),
            Ok(who) => crate::exec::exec(&shared, who, &ns, &name, req).await,
        };
        shared.record(&method, &uri, resp.status().as_u16(), &user);
        return resp;
    }
    // Always read the body, DELETE's too: clients reuse the connection.
    let body = match to_bytes(req.into_body(), 256 << 20).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::new(400, "BadRequest", e.to_string())),
    };
    let query = Query::parse(uri.query());
    let resp = match who {
        Err(()) => json_response(401, &auth::unauthorized()),
        Ok(Who::Anonymous) if !is_public(uri.path()) => json_response(401, &auth::unauthorized()),
        Ok(who) => match crate::proxy::pod_proxy_target(uri.path()) {
            Some(target) if method == Method::GET => {
                crate::proxy::pod_proxy(&shared, &who, target).await
            }
            _ => {
                let (resp, pending) =
                    route(&shared, &who, &method, uri.path(), &query, &headers, body);
                spawn_pending(&shared, pending);
                resp
            }
        },
    };
    let status = resp.status().as_u16();
    if shared.log {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        eprintln!("[{}] {method} {uri} ({ct}) {user} -> {status}", shared.name);
    }
    shared.record(&method, &uri, status, &user);
    if write && shared.faults.lock().unwrap().count_write() {
        shared.cut_all(true, Some(conn.id));
    }
    resp
}

/// Runs the controllers' follow-up work of a write: the token controller fills new token
/// secrets shortly after; Job pods run (their traffic is emulated without the state lock) and
/// complete. Must be called within the cluster's runtime.
pub fn spawn_pending(shared: &Arc<Shared>, pending: Pending) {
    if !pending.tokens.is_empty() {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut st = shared.state.lock().unwrap();
            for k in pending.tokens {
                st.fill_token(&k);
            }
        });
    }
    for pod in pending.jobs {
        let shared = shared.clone();
        tokio::spawn(async move {
            let log = crate::mesh::run(&shared, &pod).await.unwrap_or_default();
            shared.state.lock().unwrap().finish_job(&pod, log);
        });
    }
}

/// The Kubernetes version the test clusters report.
pub const GIT_VERSION: &str = "v1.34.0";

fn version() -> Value {
    json!({
        "major": "1", "minor": "34", "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2025-08-27T00:00:00Z", "goVersion": "go1.24.6", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn route(
    shared: &Arc<Shared>,
    who: &Who,
    method: &Method,
    path: &str,
    q: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> (Response, Pending) {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut st = shared.state.lock().unwrap();
    let reg = &st.registry;
    let found = |v: Option<Value>| match v {
        Some(v) => json_response(200, &v),
        None => not_found_path(path),
    };
    let resp = match segs.as_slice() {
        ["version"] => json_response(200, &version()),
        [h, ..] if matches!(*h, "healthz" | "readyz" | "livez") => text_response(200, "ok"),
        ["api"] => json_response(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
        ),
        ["apis"] => json_response(200, &reg.api_group_list()),
        ["apis", g] => found(reg.api_group(g)),
        ["api", v] => found(reg.resource_list("", v)),
        ["apis", g, v] => found(reg.resource_list(g, v)),
        ["openapi", "v3"] => json_response(200, &reg.openapi_root()),
        ["openapi", "v3", "api", v] => found(reg.openapi_gv("", v)),
        ["openapi", "v3", "apis", g, v] => found(reg.openapi_gv(g, v)),
        ["api", v, rest @ ..] => {
            let v = v.to_string();
            return resource(shared, &mut st, who, method, "", &v, rest, q, headers, body);
        }
        ["apis", g, v, rest @ ..] => {
            let (g, v) = (g.to_string(), v.to_string());
            return resource(shared, &mut st, who, method, &g, &v, rest, q, headers, body);
        }
        _ => not_found_path(path),
    };
    (resp, Pending::default())
}

/// A resource path, split into its parts.
pub struct Target {
    pub res: Resource,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

/// Resolves the segments after `/api/V` or `/apis/G/V` to a resource, namespace, name and
/// subresource.
pub fn resolve(st: &State, group: &str, version: &str, segs: &[&str]) -> Result<Target, ApiError> {
    let missing = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let get = |i: usize| segs.get(i).map(|s| s.to_string());
    if segs.first() == Some(&"namespaces")
        && segs.len() >= 3
        && let Some(res) = st
            .resource(group, version, segs[2])
            .filter(|r| r.namespaced)
    {
        return Ok(Target {
            res,
            ns: get(1),
            name: get(3),
            sub: get(4),
        });
    }
    let first = segs.first().ok_or_else(missing)?;
    let res = st.resource(group, version, first).ok_or_else(missing)?;
    Ok(Target {
        res,
        ns: None,
        name: get(1),
        sub: get(2),
    })
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase()
}

fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    let ct = content_type(headers);
    let bad = |e: String| ApiError::new(400, "BadRequest", e);
    if ct.starts_with("application/vnd.kubernetes.protobuf") {
        crate::proto::decode(body).map_err(|e| ApiError::new(415, "UnsupportedMediaType", e))
    } else if ct.contains("yaml") {
        serde_yaml::from_slice(body).map_err(|e| bad(e.to_string()))
    } else {
        serde_json::from_slice(body).map_err(|e| bad(e.to_string()))
    }
}

#[allow(clippy::too_many_arguments)]
fn resource(
    shared: &Arc<Shared>,
    st: &mut State,
    who: &Who,
    method: &Method,
    group: &str,
    version: &str,
    segs: &[&str],
    q: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> (Response, Pending) {
    if matches!(method, &Method::POST | &Method::PUT | &Method::PATCH) {
        let manager = q.get("fieldManager").map(String::from).unwrap_or_else(|| {
            crate::fields::manager_from_user_agent(
                headers
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            )
        });
        st.writer = Some(crate::fields::Writer {
            manager,
            applied: None,
            force: q.flag("force"),
        });
    }
    let resp = match resource_inner(
        shared, st, who, method, group, version, segs, q, headers, body,
    ) {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    st.writer = None;
    (resp, st.take_pending())
}

#[allow(clippy::too_many_arguments)]
fn resource_inner(
    shared: &Arc<Shared>,
    st: &mut State,
    who: &Who,
    method: &Method,
    group: &str,
    version: &str,
    segs: &[&str],
    q: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = resolve(st, group, version, segs)?;
    let res = &t.res;
    let ns = t.ns.clone().unwrap_or_default();
    if let Some(sub) = &t.sub
        && !res.subresources.iter().any(|s| &s.0 == sub)
    {
        // A subresource the kind does not have (`configmaps/NAME/status`) is no route at all
        // (apiserver pkg/endpoints/installer `registerResourceHandlers` installs only the
        // storage's own subresources); a custom resource's is answered by the CRD handler
        // as the object not found (apiextensions-apiserver `crdHandler.ServeHTTP`).
        if res.crd.is_some() {
            return Err(ApiError::not_found(
                &res.group,
                &res.plural,
                t.name.as_deref().unwrap_or(""),
            ));
        }
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let verb = match (method, &t.name) {
        (&Method::GET, None) if q.flag("watch") => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, None) => "deletecollection",
        _ => "delete",
    };
    let resource_name = match &t.sub {
        Some(sub) => format!("{}/{sub}", res.plural),
        None => res.plural.clone(),
    };
    let ask = auth::Attributes {
        verb,
        group: &res.group,
        resource: &resource_name,
        namespace: t.ns.as_deref(),
        name: t.name.as_deref(),
    };
    if !auth::allowed(st, who, &ask) {
        let message = auth::forbidden_message(
            who,
            verb,
            &res.group,
            &resource_name,
            t.ns.as_deref(),
            t.name.as_deref(),
        );
        let mut e = ApiError::new(403, "Forbidden", message);
        e.name = t.name.clone().unwrap_or_default();
        e.group = res.group.clone();
        e.plural = res.plural.clone();
        return Err(e);
    }
    let dry_run = q.get("dryRun").is_some_and(|v| !v.is_empty());
    let bad = |m: &str| ApiError::new(405, "MethodNotAllowed", m.to_string());
    let label = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
        .map_err(|e| ApiError::new(400, "BadRequest", e))?;
    let field = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))
        .map_err(|e| ApiError::new(400, "BadRequest", e))?;

    match (method, &t.name) {
        (&Method::GET, None) => {
            let ns_filter = t.ns.as_deref();
            if q.flag("watch") {
                return Ok(watch(shared, st, res, ns_filter, label, field, q));
            }
            if let Some(asked) = q.get("resourceVersion").and_then(|v| v.parse::<u64>().ok())
                && asked > st.rv
            {
                // The watch cache waits (3 s) for a resourceVersion it has not seen, then gives
                // up (apiserver pkg/storage/cacher `waitUntilFreshAndBlock`,
                // `storage.NewTooLargeResourceVersionError`).
                let mut e = ApiError::new(
                    504,
                    "Timeout",
                    format!(
                        "Timeout: Too large resource version: {asked}, current: {}",
                        st.rv
                    ),
                );
                e.causes = Some(Box::new(json!([{
                    "reason": "ResourceVersionTooLarge",
                    "message": "Too large resource version"
                }])));
                return Err(e);
            }
            let items: Vec<Value> = st
                .select(res, ns_filter)
                .filter(|(_, o)| label.matches(o) && field.matches(o))
                .map(|(_, o)| o.clone())
                .collect();
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                        "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            ))
        }
        (&Method::GET | &Method::PUT | &Method::PATCH, Some(name))
            if res.plural == "deployments" && t.sub.as_deref() == Some("scale") =>
        {
            let key = Key::new(res, &ns, name);
            let mut dep = st
                .objects
                .get(&key)
                .cloned()
                .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))?;
            let mut scale = scale_of(&dep);
            if method == Method::GET {
                return Ok(json_response(200, &scale));
            }
            let p = decode_body(headers, &body)?;
            if method == Method::PUT {
                scale = p;
            } else if content_type(headers).starts_with("application/json-patch") {
                patch::json(&mut scale, &p).map_err(|e| ApiError::new(422, "Invalid", e))?;
            } else {
                patch::merge(&mut scale, &p);
            }
            let replicas = scale
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .ok_or_else(|| ApiError::new(422, "Invalid", "spec.replicas is required"))?;
            dep["spec"]["replicas"] = json!(replicas);
            let dep = st.update(res, &key, dep, WriteMode::Main, dry_run)?;
            Ok(json_response(200, &scale_of(&dep)))
        }
        (&Method::GET, Some(name)) if res.plural == "pods" && t.sub.as_deref() == Some("log") => {
            let key = Key::new(res, &ns, name);
            let pod = st
                .objects
                .get(&key)
                .ok_or_else(|| ApiError::not_found("", "pods", name))?;
            let containers: Vec<&str> = pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .collect();
            match q.get("container") {
                None if containers.len() > 1 => {
                    return Err(ApiError::new(
                        400,
                        "BadRequest",
                        format!(
                            "a container name must be specified for pod {name}, choose one of: [{}]",
                            containers.join(" ")
                        ),
                    ));
                }
                Some(c) if !containers.contains(&c) => {
                    return Err(ApiError::new(
                        400,
                        "BadRequest",
                        format!("container {c} is not valid for pod {name}"),
                    ));
                }
                _ => {}
            }
            let log = match st.istiods.get(&key) {
                Some(istiod) => istiod_log(istiod, q)?,
                None => st.pod_logs.get(&key).cloned().unwrap_or_default(),
            };
            let mut r = Response::new(Body::from(log));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            Ok(r)
        }
        (&Method::GET, Some(name)) => {
            if t.sub.as_deref().is_some_and(|s| s != "status") {
                return Err(bad("subresource not supported"));
            }
            let key = Key::new(res, &ns, name);
            match st.objects.get(&key) {
                Some(o) => Ok(json_response(200, o)),
                None => Err(ApiError::not_found(&res.group, &res.plural, name)),
            }
        }
        (&Method::POST, Some(name))
            if res.plural == "serviceaccounts" && t.sub.as_deref() == Some("token") =>
        {
            let key = Key::new(res, &ns, name);
            if !st.objects.contains_key(&key) {
                return Err(ApiError::not_found("", "serviceaccounts", name));
            }
            let body = decode_body(headers, &body)?;
            let body = if body.is_object() { body } else { json!({}) };
            Ok(json_response(201, &st.token_request(&ns, name, body)))
        }
        (&Method::POST, None) if res.create_only => {
            let mut body = decode_body(headers, &body)?;
            if !body.is_object() {
                body = json!({});
            }
            if res.plural == "tokenreviews"
                && body
                    .pointer("/spec/token")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                // pkg/registry/authentication/tokenreview `REST.Create`.
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    "token is required for TokenReview in authentication",
                ));
            }
            body["apiVersion"] = json!(res.api_version());
            body["kind"] = json!(res.kind);
            body["status"] = review_status(st, &shared.admin_token, who, res, &body);
            Ok(json_response(201, &body))
        }
        (&Method::POST, None) => {
            let body = decode_body(headers, &body)?;
            let obj = st.create(res, &ns, body, dry_run)?;
            Ok(json_response(201, &obj))
        }
        (&Method::PUT, Some(name)) => {
            let mode = match t.sub.as_deref() {
                None => WriteMode::Main,
                Some("status") => WriteMode::Status,
                Some(_) => return Err(bad("subresource not supported")),
            };
            let body = decode_body(headers, &body)?;
            check_name(&body, name, t.ns.as_deref())?;
            if res.group == "coordination.k8s.io"
                && res.plural == "leases"
                && meta_str(&body, "resourceVersion").is_empty()
            {
                // Leases allow no unconditional update: a lock is only as good as its
                // resourceVersion check.
                let mut e = ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "leases.coordination.k8s.io \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0: must be specified for an update"
                    ),
                );
                e.name = name.clone();
                e.group = res.group.clone();
                e.plural = res.plural.clone();
                return Err(e);
            }
            let key = Key::new(res, &ns, name);
            let obj = st.update(res, &key, body, mode, dry_run)?;
            Ok(json_response(200, &obj))
        }
        (&Method::PATCH, Some(name)) => {
            let mode = match t.sub.as_deref() {
                None => WriteMode::Main,
                Some("status") => WriteMode::Status,
                Some(_) => return Err(bad("subresource not supported")),
            };
            let ct = content_type(headers);
            let p = decode_body(headers, &body)?;
            let key = Key::new(res, &ns, name);
            let existing = st.objects.get(&key).cloned();
            if ct.starts_with("application/apply-patch") {
                let manager = q.get("fieldManager").unwrap_or("unknown").to_string();
                if let Some(w) = st.writer.as_mut() {
                    w.applied = Some(p.clone());
                }
                let applied_key = (key.clone(), manager);
                let (code, obj) = match existing {
                    None => {
                        if mode == WriteMode::Status {
                            return Err(ApiError::not_found(&res.group, &res.plural, name));
                        }
                        let mut body = p.clone();
                        if body.is_object() {
                            body["metadata"]["name"] = json!(name);
                        }
                        (201, st.create(res, &ns, body, dry_run)?)
                    }
                    Some(mut cur) => {
                        let prev = st.applied.get(&applied_key).cloned();
                        let before = cur.clone();
                        patch::apply(&mut cur, &p, prev.as_ref());
                        crate::fields::restore_others(&applied_key.1, &before, &mut cur);
                        (200, st.update(res, &key, cur, mode, dry_run)?)
                    }
                };
                if !dry_run {
                    st.applied.insert(applied_key, p);
                }
                return Ok(json_response(code, &obj));
            }
            let Some(mut cur) = existing else {
                return Err(ApiError::not_found(&res.group, &res.plural, name));
            };
            if ct.starts_with("application/json-patch") {
                patch::json(&mut cur, &p).map_err(|e| ApiError::new(422, "Invalid", e))?;
            } else if ct.starts_with("application/strategic-merge-patch") && res.crd.is_none() {
                patch::strategic(&mut cur, &p);
            } else if ct.starts_with("application/merge-patch") {
                patch::merge(&mut cur, &p);
            } else {
                // apiserver pkg/endpoints/handlers `PatchResource`: a custom resource has no
                // strategic merge patch (no Go struct to carry the patch strategy).
                let mut accepted =
                    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
                        .to_string();
                if res.crd.is_none() {
                    accepted.push_str(", application/strategic-merge-patch+json");
                }
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: {accepted}"
                    ),
                ));
            }
            let obj = st.update(res, &key, cur, mode, dry_run)?;
            Ok(json_response(200, &obj))
        }
        (&Method::DELETE, name) => {
            // DeleteOptions (JSON or protobuf): its preconditions are checked against the
            // object before the delete (k8s.io/apiserver pkg/registry/rest/delete.go
            // `BeforeDelete`: a Conflict on `Kind.group`, as a real v1.35 server answers).
            let options = decode_body(headers, &body).unwrap_or(Value::Null);
            if let Some(name) = name.as_deref()
                && let Some(current) = st.objects.get(&Key::new(res, &ns, name))
            {
                let kind = if res.group.is_empty() {
                    res.kind.clone()
                } else {
                    format!("{}.{}", res.kind, res.group)
                };
                for (field, label, why) in [
                    ("uid", "UID", "deleted and then recreated"),
                    ("resourceVersion", "ResourceVersion", "modified"),
                ] {
                    let Some(want) = options["preconditions"][field].as_str() else {
                        continue;
                    };
                    let have = meta_str(current, field);
                    if want != have {
                        let mut e = ApiError::new(
                            409,
                            "Conflict",
                            format!(
                                "Operation cannot be fulfilled on {kind} \"{name}\": the {label} in the precondition ({want}) does not match the {label} in record ({have}). The object might have been {why}"
                            ),
                        );
                        e.name = name.to_string();
                        e.group = res.group.clone();
                        e.plural = res.kind.clone();
                        return Err(e);
                    }
                }
            }
            let keys: Vec<Key> = match name {
                Some(name) => vec![Key::new(res, &ns, name)],
                None => st
                    .select(res, t.ns.as_deref())
                    .filter(|(_, o)| label.matches(o) && field.matches(o))
                    .map(|(k, _)| k.clone())
                    .collect(),
            };
            if let (Some(name), Some(ns)) = (name, keys.first().and_then(|k| st.objects.get(k)))
                && res.group.is_empty()
                && res.plural == "namespaces"
                && !meta_str(ns, "deletionTimestamp").is_empty()
            {
                // Already terminating, its `kubernetes` finalizer still there
                // (pkg/registry/core/namespace/storage `REST.Delete`).
                let mut e = ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on namespaces \"{name}\": The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system."
                    ),
                );
                e.name = name.clone();
                e.plural = "namespaces".into();
                return Err(e);
            }
            let mut last = None;
            for key in &keys {
                let gone = if dry_run {
                    st.objects.get(key).cloned()
                } else {
                    st.delete(key)
                };
                match gone {
                    Some(o) => last = Some(o),
                    None if name.is_some() => {
                        return Err(ApiError::not_found(&res.group, &res.plural, &key.name));
                    }
                    None => {}
                }
            }
            if let (Some(obj), Some(key)) = (&last, keys.first())
                && name.is_some()
                && !dry_run
                && st.objects.contains_key(key)
            {
                // Still there (a terminating namespace): the API server answers the object.
                return Ok(json_response(200, obj));
            }
            let (n, uid) = last
                .as_ref()
                .map(|o| (meta_str(o, "name"), meta_str(o, "uid")))
                .unwrap_or(("", ""));
            Ok(json_response(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "details": {"name": n, "group": res.group, "kind": res.plural, "uid": uid}}),
            ))
        }
        _ => Err(bad(
            "the server does not allow this method on the requested resource",
        )),
    }
}

/// A PUT's object must be the one its URL names (apiserver pkg/endpoints/handlers/rest.go
/// `checkName`; another namespace is refused before that, with the words of
/// `rest.BeforeUpdate`, as a real v1.35 server answers).
fn check_name(body: &Value, name: &str, ns: Option<&str>) -> Result<(), ApiError> {
    let sent = meta_str(body, "name");
    if sent != name {
        return Err(ApiError::new(
            400,
            "BadRequest",
            format!("the name of the object ({sent}) does not match the name on the URL ({name})"),
        ));
    }
    let sent_ns = meta_str(body, "namespace");
    if let Some(ns) = ns
        && !sent_ns.is_empty()
        && sent_ns != ns
    {
        return Err(ApiError::new(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

/// An istiod pod's log as the kubelet serves it: `sinceTime` (RFC 3339) or `sinceSeconds`
/// keep the lines written since then, `tailLines` the last N of those, `timestamps` prefixes
/// each with its time stamp.
fn istiod_log(istiod: &crate::istiod::Istiod, q: &Query) -> Result<String, ApiError> {
    let since = match (q.get("sinceTime"), q.get("sinceSeconds")) {
        (Some(t), _) => Some(crate::istiod::parse_rfc3339(t).ok_or_else(|| {
            ApiError::new(
                400,
                "BadRequest",
                format!("parsing time {t:?}: invalid RFC 3339"),
            )
        })?),
        (None, Some(s)) => {
            let secs: u64 = s.parse().map_err(|_| {
                ApiError::new(400, "BadRequest", format!("invalid sinceSeconds {s:?}"))
            })?;
            std::time::SystemTime::now().checked_sub(Duration::from_secs(secs))
        }
        (None, None) => None,
    };
    let log = istiod.render_log(since, q.flag("timestamps"));
    Ok(
        match q.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => {
                let lines: Vec<&str> = log.lines().collect();
                let kept = &lines[lines.len().saturating_sub(n)..];
                kept.iter().map(|l| format!("{l}\n")).collect()
            }
            None => log,
        },
    )
}

/// The `scale` subresource of a Deployment (`autoscaling/v1` Scale).
fn scale_of(dep: &Value) -> Value {
    let selector: Vec<String> = dep
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    let meta = &dep["metadata"];
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                     "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
        "spec": {"replicas": dep.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": dep.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
                   "selector": selector.join(",")},
    })
}

/// The answer of a review: a TokenReview names the token's owner; a SelfSubjectAccessReview
/// says what the caller's own role allows; a SubjectAccessReview allows (only admins and the
/// reader role may ask, and testcluster grants no finer roles).
fn review_status(st: &State, admin_token: &str, who: &Who, res: &Resource, body: &Value) -> Value {
    match res.plural.as_str() {
        "tokenreviews" => {
            let token = body
                .pointer("/spec/token")
                .and_then(Value::as_str)
                .unwrap_or("");
            let audiences: Vec<String> = body
                .pointer("/spec/audiences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            auth::token_review_status(st, admin_token, token, &audiences)
        }
        "selfsubjectaccessreviews" => {
            let attr = body.pointer("/spec/resourceAttributes");
            let s = |k: &str| {
                attr.and_then(|a| a.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("")
            };
            let resource = match s("subresource") {
                "" => s("resource").to_string(),
                sub => format!("{}/{sub}", s("resource")),
            };
            let ask = auth::Attributes {
                verb: s("verb"),
                group: s("group"),
                resource: &resource,
                namespace: Some(s("namespace")).filter(|n| !n.is_empty()),
                name: Some(s("name")).filter(|n| !n.is_empty()),
            };
            // Non-resource paths (discovery, health) are open to every authenticated user.
            if attr.is_none() || auth::allowed(st, who, &ask) {
                json!({"allowed": true})
            } else {
                json!({"allowed": false, "reason": "no RBAC policy matched"})
            }
        }
        _ => json!({"allowed": true}),
    }
}

struct Filter {
    group: String,
    plural: String,
    ns: Option<String>,
    label: LabelSelector,
    field: FieldSelector,
}

impl Filter {
    fn matches(&self, ev: &Event) -> bool {
        ev.key.group == self.group
            && ev.key.plural == self.plural
            && self.ns.as_ref().is_none_or(|ns| *ns == ev.key.namespace)
            && self.label.matches(&ev.object)
            && self.field.matches(&ev.object)
    }
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

fn watch(
    shared: &Arc<Shared>,
    st: &mut State,
    res: &Resource,
    ns: Option<&str>,
    label: LabelSelector,
    field: FieldSelector,
    q: &Query,
) -> Response {
    let filter = Filter {
        group: res.group.clone(),
        plural: res.plural.clone(),
        ns: ns.map(String::from),
        label,
        field,
    };
    let mut initial = std::collections::VecDeque::new();
    let rv = q.get("resourceVersion").unwrap_or("");
    let send_initial = q.flag("sendInitialEvents");
    if send_initial || rv.is_empty() || rv == "0" {
        for (_, o) in st.select(res, ns) {
            if filter.label.matches(o) && filter.field.matches(o) {
                initial.push_back(event_line("ADDED", o));
            }
        }
        if send_initial {
            initial.push_back(event_line(
                "BOOKMARK",
                &json!({"kind": res.kind, "apiVersion": res.api_version(),
                        "metadata": {"resourceVersion": st.rv.to_string(),
                                     "annotations": {"k8s.io/initial-events-end": "true"}}}),
            ));
        }
    } else {
        let since: u64 = rv.parse().unwrap_or(0);
        for ev in st
            .log
            .iter()
            .filter(|ev| ev.rv > since && filter.matches(ev))
        {
            initial.push_back(event_line(ev.kind, &ev.object));
        }
    }
    let rx = st.tx.subscribe();
    let deadline = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| Instant::now() + Duration::from_secs(s));
    let _ = shared;
    let stream = futures_util::stream::unfold(
        (initial, rx, filter, deadline),
        |(mut initial, mut rx, filter, deadline)| async move {
            if let Some(b) = initial.pop_front() {
                return Some((Ok::<_, Infallible>(b), (initial, rx, filter, deadline)));
            }
            loop {
                let next = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                        Ok(r) => r,
                        Err(_) => return None,
                    },
                    None => rx.recv().await,
                };
                match next {
                    Ok(ev) if filter.matches(&ev) => {
                        let line = event_line(ev.kind, &ev.object);
                        return Some((Ok(line), (initial, rx, filter, deadline)));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
