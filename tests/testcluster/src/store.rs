//! The object store of one cluster: objects as JSON keyed by group, resource, namespace and
//! name; one resourceVersion counter; an event log and channel that feed watches; and the
//! writes every object goes through (defaults, generation, status, namespace checks).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::registry::{Registry, Resource};
use crate::util::{now_rfc3339, random_string, random_uid};

const LOG_LEN: usize = 20_000;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(res: &Resource, namespace: &str, name: &str) -> Key {
        Key {
            group: res.group.clone(),
            plural: res.plural.clone(),
            namespace: if res.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }

    pub(crate) fn namespace_key(ns: &str) -> Key {
        Key {
            group: String::new(),
            plural: "namespaces".into(),
            namespace: String::new(),
            name: ns.into(),
        }
    }
}

/// A change, as sent to watchers.
#[derive(Debug)]
pub struct Event {
    pub kind: &'static str,
    pub key: Key,
    pub rv: u64,
    pub object: Value,
}

/// An API error, answered as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: Box<str>,
    pub name: String,
    pub group: String,
    pub plural: String,
    /// `details.causes` of the Status, when the API server names them.
    pub causes: Option<Box<Value>>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into().into_boxed_str(),
            name: String::new(),
            group: String::new(),
            plural: String::new(),
            causes: None,
        }
    }

    pub fn not_found(group: &str, plural: &str, name: &str) -> ApiError {
        let what = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{what} \"{name}\" not found").into_boxed_str(),
            name: name.into(),
            group: group.into(),
            plural: plural.into(),
            causes: None,
        }
    }

    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": {"name": self.name, "group": self.group, "kind": self.plural},
            "code": self.code,
        });
        if let Some(causes) = &self.causes {
            status["details"]["causes"] = (**causes).clone();
        }
        status
    }
}

/// How a write treats the object in the body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WriteMode {
    /// The whole object (create, update, patch of the main resource): status is kept.
    Main,
    /// A write to the `status` subresource: only status changes.
    Status,
    /// A controller's own write: taken as given.
    Internal,
}

/// Everything one cluster stores, and the controllers' bookkeeping.
pub struct State {
    pub cluster: String,
    pub ca_pem: String,
    pub registry: Registry,
    pub objects: BTreeMap<Key, Value>,
    pub rv: u64,
    pub log: VecDeque<Arc<Event>>,
    pub tx: broadcast::Sender<Arc<Event>>,
    /// What each field manager applied last (server-side apply), to drop fields it stops setting.
    pub applied: HashMap<(Key, String), Value>,
    next_ip: u32,
    /// The last node port handed out (they start at 30001).
    pub next_node_port: u64,
    /// Token secrets the token controller fills in shortly.
    pub pending_tokens: Vec<Key>,
    /// Tokens issued by TokenRequests.
    pub issued: HashMap<String, crate::auth::Issued>,
    /// Tokens the token controller wrote into token secrets, and the secret of each.
    pub secret_tokens: HashMap<String, Key>,
    /// The cluster's number among those this process started (0 for the first).
    pub index: u32,
    /// Whether LoadBalancer Services get an address (a load-balancer controller runs).
    pub load_balancer: bool,
    /// When each live object was created: its first resourceVersion (creation order) and
    /// instant.
    pub born: HashMap<Key, (u64, std::time::Instant)>,
    /// What each pod's containers printed (`.../pods/NAME/log`).
    pub pod_logs: HashMap<Key, String>,
    /// The root of trust each istiod pod loaded from `cacerts` when it started (`None`: a
    /// self-signed root of its own).
    pub istiod_roots: HashMap<Key, Option<String>>,
    /// The secret controller of each ready istiod pod (see the `istiod` module).
    pub istiods: HashMap<Key, crate::istiod::Istiod>,
    /// Workloads (ReplicaSets, Deployments) whose status must be recomputed from their pods.
    pub stale_status: Vec<Key>,
    depth: u32,
    flushing: bool,
    /// Pods with a sidecar, and the root of trust it got from the istiod that injected it
    /// (`None`: that istiod's own self-signed root).
    pub sidecar_roots: HashMap<Key, Option<String>>,
    /// Client pods of Jobs that the job controller runs shortly.
    pub pending_jobs: Vec<Key>,
    /// The delays of the controllers that act over time.
    pub timing: crate::timers::Timing,
    /// What those controllers do next, and when.
    pub timers: Vec<(std::time::Instant, crate::timers::Timer)>,
    /// The field manager of the request being served, if it writes.
    pub writer: Option<crate::fields::Writer>,
    /// Set while a terminated pod is removed for good.
    pub(crate) removing: bool,
}

/// Work the controllers do shortly after a write, outside the request.
#[derive(Debug, Default)]
pub struct Pending {
    /// Token secrets to fill.
    pub tokens: Vec<Key>,
    /// Job pods to run.
    pub jobs: Vec<Key>,
}

fn key_name(obj: &Value) -> String {
    meta_str(obj, "name").to_string()
}

/// A string field of `metadata`, empty when absent.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let o = obj.as_object_mut().unwrap();
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut().unwrap()
}

/// A resource as the API server names it in messages: `plural` for the core group,
/// `plural.group` otherwise (apimachinery `schema.GroupResource.String`).
pub fn qualified(res: &Resource) -> String {
    if res.group.is_empty() {
        res.plural.clone()
    } else {
        format!("{}.{}", res.plural, res.group)
    }
}

/// The object without metadata and status: what a change of bumps `generation`.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
        o.remove("apiVersion");
        o.remove("kind");
    }
    v
}

/// What the API server's validation refuses of the fields meshup's charts set: a negative
/// replica count (a typo in one cluster's values), answered 422 as a real API server does.
fn validate(res: &Resource, name: &str, obj: &Value) -> Result<(), ApiError> {
    let scaled = res.group == "apps"
        && matches!(
            res.plural.as_str(),
            "deployments" | "replicasets" | "statefulsets"
        );
    if scaled
        && let Some(replicas) = obj.pointer("/spec/replicas").and_then(Value::as_i64)
        && replicas < 0
    {
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!(
                "{}.{} \"{name}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0",
                res.kind, res.group
            ),
        );
        e.name = name.to_string();
        e.group = res.group.clone();
        e.plural = res.plural.clone();
        return Err(e);
    }
    Ok(())
}

impl State {
    pub fn new(cluster: &str, ca_pem: String) -> State {
        let (tx, _) = broadcast::channel(4096);
        let mut s = State {
            cluster: cluster.into(),
            ca_pem,
            registry: Registry::builtin(),
            objects: BTreeMap::new(),
            rv: 1,
            log: VecDeque::new(),
            tx,
            applied: HashMap::new(),
            next_ip: 1,
            next_node_port: 30000,
            pending_tokens: Vec::new(),
            issued: HashMap::new(),
            secret_tokens: HashMap::new(),
            load_balancer: true,
            index: 0,
            born: HashMap::new(),
            pod_logs: HashMap::new(),
            istiod_roots: HashMap::new(),
            istiods: HashMap::new(),
            stale_status: Vec::new(),
            sidecar_roots: HashMap::new(),
            depth: 0,
            flushing: false,
            pending_jobs: Vec::new(),
            timing: crate::timers::Timing::default(),
            timers: Vec::new(),
            writer: None,
            removing: false,
        };
        let ns = s.registry.find("", "v1", "namespaces").unwrap().clone();
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            s.create(&ns, "", obj, false).expect("builtin namespace");
        }
        let svc = s.registry.find("", "v1", "services").unwrap().clone();
        let kubernetes = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}});
        s.create(&svc, "default", kubernetes, false)
            .expect("kubernetes service");
        // The bootstrap policy's superuser role (plugin/pkg/auth/authorizer/rbac/
        // bootstrappolicy `ClusterRoles`), which a binding may name.
        let roles = s
            .registry
            .find("rbac.authorization.k8s.io", "v1", "clusterroles")
            .unwrap()
            .clone();
        let admin = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "cluster-admin",
                "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                      {"nonResourceURLs": ["*"], "verbs": ["*"]}]});
        s.create(&roles, "", admin, false)
            .expect("cluster-admin role");
        s
    }

    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<Resource> {
        self.registry.find(group, version, plural).cloned()
    }

    fn resource_of_key(&self, key: &Key) -> Option<Resource> {
        self.registry
            .resources
            .iter()
            .find(|r| r.group == key.group && r.plural == key.plural)
            .cloned()
    }

    fn emit(&mut self, kind: &'static str, key: Key, object: Value) {
        let ev = Arc::new(Event {
            kind,
            key,
            rv: self.rv,
            object,
        });
        if self.log.len() >= LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back(ev.clone());
        let _ = self.tx.send(ev);
    }

    /// Stores an object under a new resourceVersion and tells the watchers.
    fn commit(&mut self, key: Key, mut obj: Value, kind: &'static str) -> Value {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.objects.insert(key.clone(), obj.clone());
        self.emit(kind, key, obj.clone());
        obj
    }

    /// Stores a changed object as is (a controller's own write, no admission) and tells the
    /// watchers.
    pub(crate) fn commit_modified(&mut self, key: Key, obj: Value) -> Value {
        self.commit(key, obj, "MODIFIED")
    }

    /// Removes an object from the store at once (its finalizers are done) and tells the
    /// watchers.
    pub(crate) fn remove_now(&mut self, key: &Key) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        self.born.remove(key);
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.applied.retain(|(k, _), _| k != key);
        self.emit("DELETED", key.clone(), obj.clone());
        Some(obj)
    }

    /// The NamespaceLifecycle admission plugin on a create (apiserver
    /// pkg/admission/plugin/namespace/lifecycle `Lifecycle.Admit`): the namespace must exist
    /// (404) and not be terminating (403 with a `NamespaceTerminating` cause).
    fn check_namespace(&self, res: &Resource, ns: &str, name: &str) -> Result<(), ApiError> {
        if !res.namespaced {
            return Ok(());
        }
        let Some(namespace) = self.objects.get(&Key::namespace_key(ns)) else {
            return Err(ApiError::not_found("", "namespaces", ns));
        };
        if namespace.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
            let resource = if res.group.is_empty() {
                res.plural.clone()
            } else {
                format!("{}.{}", res.plural, res.group)
            };
            let subject = if name.is_empty() {
                resource
            } else {
                format!("{resource} \"{name}\"")
            };
            let mut e = ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{subject} is forbidden: unable to create new content in namespace {ns} because it is being terminated"
                ),
            );
            e.name = name.to_string();
            e.group = res.group.clone();
            e.plural = res.plural.clone();
            e.causes = Some(Box::new(json!([json!({
                "reason": "NamespaceTerminating",
                "message": format!("namespace {ns} is being terminated"),
                "field": "metadata.namespace",
            })])));
            return Err(e);
        }
        Ok(())
    }

    /// Creates an object (admission, then the controllers' follow-up writes).
    pub fn create(
        &mut self,
        res: &Resource,
        ns: &str,
        obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        self.depth += 1;
        let r = self.create_inner(res, ns, obj, dry_run);
        self.leave();
        r
    }

    /// Replaces an existing object with `obj` (the outcome of a PUT or a patch).
    pub fn update(
        &mut self,
        res: &Resource,
        key: &Key,
        obj: Value,
        mode: WriteMode,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        self.depth += 1;
        let r = self.update_inner(res, key, obj, mode, dry_run);
        self.leave();
        r
    }

    /// Deletes an object and everything that depends on it: objects it owns, a namespace's
    /// contents, a CRD's custom resources.
    pub fn delete(&mut self, key: &Key) -> Option<Value> {
        self.depth += 1;
        let r = self.delete_inner(key);
        self.leave();
        r
    }

    /// Ends a write; the outermost one then brings the status of the workloads it touched up
    /// to date (their pods changed), which may write again.
    fn leave(&mut self) {
        self.depth -= 1;
        if self.depth == 0 && !self.flushing {
            self.flushing = true;
            while let Some(k) = self.stale_status.pop() {
                self.refresh_status(&k);
            }
            self.flushing = false;
        }
    }

    fn create_inner(
        &mut self,
        res: &Resource,
        ns: &str,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the body is not an object",
            ));
        }
        self.check_namespace(res, ns, meta_str(&obj, "name"))?;
        let meta = meta_mut(&mut obj);
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            let prefix = meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if prefix.is_empty() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!("{} must have a name", res.kind),
                ));
            }
            name = format!(
                "{prefix}{}",
                random_string(5, b"bcdfghjklmnpqrstvwxz2456789")
            );
            meta.insert("name".into(), json!(name));
        }
        if let Some(body_ns) = meta.get("namespace").and_then(Value::as_str)
            && res.namespaced
            && !body_ns.is_empty()
            && body_ns != ns
        {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let key = Key::new(res, ns, &name);
        if self.objects.contains_key(&key) {
            let mut e = ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(res)),
            );
            e.name = name;
            e.group = res.group.clone();
            e.plural = res.plural.clone();
            return Err(e);
        }
        validate(res, &name, &obj)?;
        let injector = if res.group.is_empty() && res.plural == "pods" {
            self.call_mutating_webhooks(ns, &mut obj)?
        } else {
            None
        };
        self.prepare(res, &key, None, &mut obj, WriteMode::Main);
        self.call_validating_webhooks(res, "CREATE", None, &obj)?;
        self.record_managers(res, None, &mut obj)?;
        if dry_run {
            return Ok(obj);
        }
        if let Some(istiod) = injector {
            // The sidecar trusts the root its istiod loaded when it started.
            let root = self.istiod_roots.get(&istiod).cloned().flatten();
            self.sidecar_roots.insert(key.clone(), root);
        }
        let stored = self.commit(key.clone(), obj, "ADDED");
        self.born
            .insert(key.clone(), (self.rv, std::time::Instant::now()));
        self.after_write(res, &key, &stored);
        Ok(stored)
    }

    fn update_inner(
        &mut self,
        res: &Resource,
        key: &Key,
        mut obj: Value,
        mode: WriteMode,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let Some(old) = self.objects.get(key).cloned() else {
            return Err(ApiError::not_found(&res.group, &res.plural, &key.name));
        };
        if mode != WriteMode::Internal {
            let sent_rv = meta_str(&obj, "resourceVersion");
            if !sent_rv.is_empty() && sent_rv != meta_str(&old, "resourceVersion") {
                let mut e = ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                        qualified(res),
                        key.name
                    ),
                );
                e.name = key.name.clone();
                e.plural = res.plural.clone();
                e.group = res.group.clone();
                return Err(e);
            }
        }
        if mode == WriteMode::Main {
            validate(res, &key.name, &obj)?;
            crate::immutable::check_update(res, &key.name, &old, &obj)?;
        }
        self.prepare(res, key, Some(&old), &mut obj, mode);
        if mode == WriteMode::Main {
            self.call_validating_webhooks(res, "UPDATE", Some(&old), &obj)?;
            self.record_managers(res, Some(&old), &mut obj)?;
        }
        if dry_run {
            return Ok(obj);
        }
        // A write that changes nothing is no write: the resourceVersion stays, no event.
        let mut unchanged = old.clone();
        meta_mut(&mut unchanged).remove("resourceVersion");
        if obj == unchanged {
            return Ok(old);
        }
        let stored = self.commit(key.clone(), obj, "MODIFIED");
        self.after_write(res, key, &stored);
        Ok(stored)
    }

    /// Records the request's field manager in `metadata.managedFields` (the outermost write
    /// of a request only: what controllers write in its wake is theirs), or refuses an apply
    /// that conflicts.
    fn record_managers(
        &mut self,
        res: &Resource,
        old: Option<&Value>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        if self.depth != 1 {
            return Ok(());
        }
        let Some(writer) = &self.writer else {
            return Ok(());
        };
        let mut managed = crate::fields::managed_fields(writer, &res.api_version(), old, obj)
            .map_err(|mut e| {
                e.name = key_name(obj);
                e
            })?;
        if res.group == "apps" && res.plural == "deployments" {
            // The revision annotation is the deployment controller's own Update
            // (pkg/controller/deployment/sync.go `getNewReplicaSet` → `SetDeploymentRevision`),
            // written after the client's request: kube-controller-manager owns it, the client
            // does not.
            managed = crate::fields::hand_over(
                managed,
                &[
                    "f:metadata",
                    "f:annotations",
                    "f:deployment.kubernetes.io/revision",
                ],
                "kube-controller-manager",
                &res.api_version(),
                old.and_then(|o| {
                    o.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
                }) != obj.pointer("/metadata/annotations/deployment.kubernetes.io~1revision"),
            );
        }
        if managed.as_array().is_some_and(Vec::is_empty) {
            managed = Value::Null;
        }
        let meta = meta_mut(obj);
        if managed.is_null() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), managed);
        }
        Ok(())
    }

    /// Server-managed metadata, generation, status handling and the per-kind defaults.
    fn prepare(
        &mut self,
        res: &Resource,
        key: &Key,
        old: Option<&Value>,
        obj: &mut Value,
        mode: WriteMode,
    ) {
        if mode == WriteMode::Status {
            let status = obj.get("status").cloned();
            *obj = old.cloned().unwrap_or_default();
            match status {
                Some(s) => obj["status"] = s,
                None => {
                    obj.as_object_mut().unwrap().remove("status");
                }
            }
        }
        let o = obj.as_object_mut().unwrap();
        o.insert("apiVersion".into(), json!(res.api_version()));
        o.insert("kind".into(), json!(res.kind));
        if mode == WriteMode::Main
            && let Some(old) = old
            && res.has_status()
        {
            match old.get("status") {
                Some(s) => o.insert("status".into(), s.clone()),
                None => o.remove("status"),
            };
        }
        let generation = match old {
            None => 1,
            Some(old) => {
                let g = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                if spec_part(old) != spec_part(obj) {
                    g + 1
                } else {
                    g
                }
            }
        };
        let meta = meta_mut(obj);
        meta.insert("name".into(), json!(key.name));
        if res.namespaced {
            meta.insert("namespace".into(), json!(key.namespace));
        } else {
            meta.remove("namespace");
        }
        let (uid, created) = match old {
            Some(old) => (
                meta_str(old, "uid").to_string(),
                meta_str(old, "creationTimestamp").to_string(),
            ),
            None => (random_uid(), now_rfc3339()),
        };
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(created));
        // Clients cannot set or clear a deletion in progress.
        for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
            match old.and_then(|o| o.pointer(&format!("/metadata/{field}"))) {
                Some(v) if mode != WriteMode::Internal => {
                    meta.insert(field.into(), v.clone());
                }
                None if old.is_some() || mode != WriteMode::Internal => {
                    meta.remove(field);
                }
                _ => {}
            }
        }
        meta.insert("generation".into(), json!(generation));
        meta.remove("resourceVersion");
        // Field managers are the server's to keep (see `record_managers`).
        match old.and_then(|o| o.pointer("/metadata/managedFields")) {
            Some(m) => meta.insert("managedFields".into(), m.clone()),
            None => meta.remove("managedFields"),
        };
        if meta.get("labels").is_some_and(Value::is_null) {
            meta.remove("labels");
        }
        if meta.get("annotations").is_some_and(Value::is_null) {
            meta.remove("annotations");
        }
        self.admit(res, key, old, obj);
    }

    fn delete_inner(&mut self, key: &Key) -> Option<Value> {
        if key.group.is_empty()
            && key.plural == "namespaces"
            && !self.timing.namespace_finalize.is_zero()
        {
            return self.terminate_namespace(key);
        }
        if key.group.is_empty()
            && key.plural == "pods"
            && !self.timing.pod_termination.is_zero()
            && !self.removing
        {
            return self.terminate_pod(key);
        }
        let mut obj = self.objects.remove(key)?;
        self.born.remove(key);
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.applied.retain(|(k, _), _| k != key);
        self.emit("DELETED", key.clone(), obj.clone());

        let uid = meta_str(&obj, "uid").to_string();
        let mut dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                o.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(&uid))
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        if key.group.is_empty() && key.plural == "serviceaccounts" {
            // The token controller deletes the token secrets of a deleted service account.
            dependents.extend(
                self.objects
                    .iter()
                    .filter(|(k, s)| {
                        k.group.is_empty()
                            && k.plural == "secrets"
                            && k.namespace == key.namespace
                            && s.get("type").and_then(Value::as_str)
                                == Some("kubernetes.io/service-account-token")
                            && s.pointer(
                                "/metadata/annotations/kubernetes.io~1service-account.name",
                            )
                            .and_then(Value::as_str)
                                == Some(key.name.as_str())
                    })
                    .map(|(k, _)| k.clone()),
            );
        }
        if key.group.is_empty() && key.plural == "namespaces" {
            dependents.extend(
                self.objects
                    .keys()
                    .filter(|k| k.namespace == key.name)
                    .cloned(),
            );
        }
        if key.group == "apiextensions.k8s.io" && key.plural == "customresourcedefinitions" {
            let group = obj
                .pointer("/spec/group")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let plural = obj
                .pointer("/spec/names/plural")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            dependents.extend(
                self.objects
                    .keys()
                    .filter(|k| k.group == group && k.plural == plural)
                    .cloned(),
            );
            self.registry.remove_crd(&key.name);
        }
        for k in dependents {
            self.delete(&k);
        }
        if key.group.is_empty() && key.plural == "pods" {
            self.pod_logs.remove(key);
            self.istiod_roots.remove(key);
            self.istiods.remove(key);
            self.sidecar_roots.remove(key);
            self.owner_status_stale(&obj);
        }
        if key.group.is_empty() && key.plural == "secrets" && key.name == "cacerts" {
            self.restart_crashing_istiods(&key.namespace);
            self.replace_pod(key, &obj);
        }
        Some(obj)
    }

    /// Takes the work the controllers owe after the last writes.
    pub fn take_pending(&mut self) -> Pending {
        Pending {
            tokens: std::mem::take(&mut self.pending_tokens),
            jobs: std::mem::take(&mut self.pending_jobs),
        }
    }

    /// The ReplicaSet controller replaces a deleted pod while its ReplicaSet lives.
    fn replace_pod(&mut self, key: &Key, pod: &Value) {
        let Some(owner) = pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| {
                refs.iter()
                    .find(|r| r["kind"] == "ReplicaSet" && r["controller"] == true)
            })
            .and_then(|r| r.get("name"))
            .and_then(Value::as_str)
        else {
            return;
        };
        let rs_key = Key {
            group: "apps".into(),
            plural: "replicasets".into(),
            namespace: key.namespace.clone(),
            name: owner.to_string(),
        };
        if let Some(rs) = self.objects.get(&rs_key).cloned() {
            self.reconcile_pods(&rs_key, &rs);
        }
    }

    /// Whether the token controller still has to fill a token secret: its `token`, `ca.crt` or
    /// `namespace` is missing (pkg/controller/serviceaccount `generateTokenIfNeeded`).
    pub fn is_token_secret_unfilled(obj: &Value) -> bool {
        obj.get("type").and_then(Value::as_str) == Some("kubernetes.io/service-account-token")
            && ["token", "ca.crt", "namespace"]
                .iter()
                .any(|k| obj.pointer(&format!("/data/{k}")).is_none_or(|v| v == ""))
    }

    /// The token controller: fills `token`, `ca.crt` and `namespace` of a token secret.
    pub fn fill_token(&mut self, key: &Key) {
        let Some(mut obj) = self.objects.get(key).cloned() else {
            return;
        };
        if !Self::is_token_secret_unfilled(&obj) {
            return;
        }
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let sa = obj
            .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let sa_key = Key {
            group: String::new(),
            plural: "serviceaccounts".into(),
            namespace: key.namespace.clone(),
            name: sa.clone(),
        };
        if !self.objects.contains_key(&sa_key) {
            // The token controller deletes a token secret whose service account does not exist.
            self.delete(key);
            return;
        }
        let data = obj
            .as_object_mut()
            .unwrap()
            .entry("data")
            .or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        // A token the client wrote is kept, as the real controller does, but it is no
        // credential: only tokens this controller issued authenticate.
        if data.get("token").is_none_or(|v| v == "") {
            let token = crate::controllers::token(&self.cluster, &key.namespace, &sa, None);
            data["token"] = json!(b64(&token));
            self.secret_tokens.insert(token, key.clone());
        }
        if data.get("ca.crt").is_none_or(|v| v == "") {
            data["ca.crt"] = json!(b64(&self.ca_pem));
        }
        if data.get("namespace").is_none_or(|v| v == "") {
            data["namespace"] = json!(b64(&key.namespace));
        }
        if let Some(sa_uid) = self
            .objects
            .get(&sa_key)
            .map(|sa| meta_str(sa, "uid").to_string())
        {
            obj["metadata"]["annotations"]["kubernetes.io/service-account.uid"] = json!(sa_uid);
        }
        if let Some(res) = self.resource_of_key(key) {
            let _ = self.update(&res, key, obj, WriteMode::Internal, false);
        }
    }

    /// The first two octets of this cluster's pod CIDR: `10.244` for the first cluster of the
    /// process, `10.245` for the second, and so on (pod IPs differ across clusters, as a flat
    /// multi-cluster network needs).
    pub fn pod_prefix(&self) -> String {
        format!("10.{}", 244 + self.index % 12)
    }

    /// The first two octets of this cluster's load-balancer addresses: `172.18`, `172.19`, …
    pub fn load_balancer_prefix(&self) -> String {
        format!("172.{}", 18 + self.index % 12)
    }

    /// The cluster's one node, named like kind's.
    pub fn node_name(&self) -> String {
        format!("{}-control-plane", self.cluster)
    }

    /// The node's InternalIP: `172.30.0.2` for the first cluster of the process, then `.3`, …
    pub fn node_ip(&self) -> String {
        format!("172.30.0.{}", 2 + self.index % 250)
    }

    /// Registers the cluster's node, Ready, once the cluster's number is known.
    pub fn add_node(&mut self) {
        let Some(res) = self.resource("", "v1", "nodes") else {
            return;
        };
        let (name, ip) = (self.node_name(), self.node_ip());
        let cidr = format!("{}.0.0/16", self.pod_prefix());
        let node = json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/control-plane": ""}},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "kubelet is posting ready status"}],
                "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "nodeInfo": {"kubeletVersion": crate::GIT_VERSION, "containerRuntimeVersion": "containerd://2.1.0",
                             "operatingSystem": "linux", "architecture": "amd64"},
            },
        });
        let _ = self.create(&res, "", node, false);
    }

    /// The next free address under a two-octet prefix.
    pub fn allocate_ip(&mut self, prefix: &str) -> String {
        let n = self.next_ip;
        self.next_ip += 1;
        format!("{prefix}.{}.{}", n / 250, n % 250 + 1)
    }

    /// Objects of a resource, optionally in one namespace.
    pub fn select<'a>(
        &'a self,
        res: &'a Resource,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        self.objects.iter().filter(move |(k, _)| {
            k.group == res.group && k.plural == res.plural && ns.is_none_or(|ns| k.namespace == ns)
        })
    }
}
