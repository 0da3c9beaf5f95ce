//! In-memory Kubernetes API servers for meshup's end-to-end tests.
//!
//! [`TestCluster::start`] serves one cluster on its own `127.0.0.1` port, good enough for the
//! real `helm` (3.19, 4.1) and `kubectl` (1.34, 1.35), and honest about what real clusters do
//! where meshup's behaviour depends on it. Objects are plain JSON.
//!
//! # The API
//! Discovery, OpenAPI v3, create/update/patch (merge, strategic, JSON, server-side
//! apply)/delete, label and field selectors, watches (chunked, with initial events and
//! bookmarks), protobuf request bodies of the kinds clients send that way, `dryRun`,
//! 409 AlreadyExists and 409 Conflict on a stale `resourceVersion`. A write that changes
//! nothing keeps the `resourceVersion` and sends no event. `coordination.k8s.io/v1` leases are
//! served (an update without `resourceVersion` is refused, as leases allow no unconditional
//! update); Deployments have `status` and `scale`.
//!
//! # Transport and credentials
//! Each cluster has its own CA ([`TestCluster::ca_pem`]) and serves HTTPS with a certificate
//! for IP 127.0.0.1 and DNS `localhost` ([`TestCluster::url`] is `https://127.0.0.1:PORT`),
//! from a listener with a backlog of 1024. Every request needs `Authorization: Bearer T`
//! where T is the admin token ([`TestCluster::admin_token`], written by [`write_kubeconfig`]
//! with the CA), a token the token controller wrote into a live
//! `kubernetes.io/service-account-token` Secret (one a client wrote there is no credential), or
//! a TokenRequest token for the API server's audience that has not expired; the service
//! account must still exist. TokenReviews answer who holds a token, or why nobody does.
//! Anything else gets 401 Unauthorized; `/version` and the health endpoints may be read without a
//! token. A service account may do what the ClusterRoles and Roles bound to it allow (RBAC
//! rules: verbs, API groups, resources and subresources, resource names; no aggregation),
//! use discovery and ask `selfsubjectaccessreviews`; anything else gets RBAC's 403 message.
//! With the charts' reader role, the reader token reads and writes nothing. The token
//! controller fills token secrets with a token, the cluster's CA as `ca.crt` and the
//! namespace, and deletes those of missing or deleted service accounts.
//!
//! # Controllers
//! One Ready node (`<cluster>-control-plane`). Done at once on each write: service (cluster
//! IPs; node ports for NodePort and LoadBalancer Services) and CRD status; Deployments get a
//! ReplicaSet per pod template and ReplicaSets a Running pod per replica (`<rs>-<5 chars>`,
//! owned by the ReplicaSet, IP from the cluster's own /16: 10.244 for the first cluster of the
//! process, 10.245 for the next); scaling, new templates and deletions act on pods as the
//! ReplicaSet controller and garbage collector would.
//!
//! Some things take time, as on a real cluster (a ticker in the server; each delay is an
//! [`Options`] field, zero for at once): pods become Ready after
//! [`Options::pod_ready_delay`], and a new template rolls out like the Deployment controller's
//! RollingUpdate (old and new pods side by side within maxSurge / maxUnavailable); a deleted
//! pod is `Terminating` (not Ready, no longer a replica) for [`Options::pod_termination_delay`];
//! a deleted namespace is `Terminating` (its contents deleted, new content refused with 403) until
//! [`Options::namespace_finalize_delay`] after it is empty; LoadBalancer Services get an
//! address (an IP from the cluster's own range, or an AWS-style host name with
//! [`Options::load_balancer_hostname`]) after [`Options::load_balancer_delay`], unless
//! [`Options::load_balancer`] is off. istiod's validating webhooks switch to
//! `failurePolicy: Fail` once a Ready istiod of their revision runs; from then on Istio
//! resources are refused while no istiod pod is Ready. Every write records its field manager
//! (`metadata.managedFields`); a server-side apply that changes another manager's field
//! answers 409 unless forced.
//!
//! `REALISM.md` (next to this crate's `Cargo.toml`) lists the source each behaviour follows
//! and where the emulation is more lenient than a real cluster. Jobs get the `controller-uid` selector
//! and labels and one pod that runs at once and completes the Job. A pod is injected the way a
//! real cluster decides it: the API server calls the MutatingWebhookConfigurations' webhooks
//! (configurations by name, webhooks in order; rules, namespace and object selectors), and a
//! call that reaches a Ready istiod pod behind the webhook's Service injects with that
//! istiod's revision (`sidecar.istio.io/status`, annotation `istio.io/rev`); a later webhook
//! that also matches injects again, and its revision wins. A webhook with no ready endpoint
//! refuses the pod with `failurePolicy: Fail` (the ReplicaSet and Job controllers retry), and is
//! skipped with `Ignore`. Tests install Istio's own charts ([`istio_charts`]).
//!
//! # Pods as istiod and as a curl client
//! Every ready `app=istiod` pod runs an emulation of istiod's multicluster secret controller
//! (Istio's `pkg/kube/multicluster`, per the Istio version in the tag of its `discovery`
//! image): `istio/multiCluster=true` secrets of its namespace reach it after
//! [`Options::informer_lag`]; each data key but its own `CLUSTER_ID` becomes a remote cluster
//! that is `syncing` until a real list of its kubeconfig's loopback server succeeds (not
//! before [`Options::sync_delay`]), then `synced` for good, or `timeout` after
//! [`Options::remote_cluster_timeout`]; changed kubeconfigs are rebuilt the way that version
//! does. Its view is what `kubectl exec POD -c discovery -- pilot-discovery request GET
//! /debug/clusterz` prints (exec is served over WebSocket, `v5.channel.k8s.io`) and what
//! [`TestCluster::istiod_clusterz`] returns; `kubectl logs POD -c discovery` shows the lines
//! istiod writes. `GET /api/v1/namespaces/NS/pods/NAME[:PORT]/proxy/PATH` to its debug
//! handlers on port 15014 answers 401, as a real istiod answers the API server. Nothing else
//! listens in a pod (503, connection refused), and with [`Options::pod_proxy`] off the API
//! server reaches no pod at all. `tests/testcluster/REALISM.md` lists what each behaviour
//! follows and what is left out.
//!
//! # Ambient mode
//! DaemonSets run a pod per node and roll out like the DaemonSet controller's RollingUpdate,
//! with the status `helm --wait` and `kubectl rollout status` read. With the Gateway API CRDs
//! installed ([`istio_gateway_api_crds`]), a Ready istiod
//! creates its built-in GatewayClasses and, with `PILOT_ENABLE_AMBIENT` and
//! `AMBIENT_ENABLE_MULTI_NETWORK`, deploys each `istio-east-west` Gateway (Deployment,
//! LoadBalancer Service, ServiceAccount named after it) and writes its `Accepted` and
//! `Programmed` conditions and addresses. A ztunnel pod turns Ready only when the istiod behind
//! its `XDS_ADDRESS` has its `ISTIO_META_CLUSTER_ID`. Pods of ambient namespaces are captured
//! by a Ready istio-cni and reach GLOBAL Services of other networks through the peers'
//! east-west Gateways (the `ambient` module lists the rules).
//!
//! A Job whose container has env `URL` (`http://SVC.NS:PORT/...`) and `REQUESTS` prints, in its
//! pod's log (`kubectl logs job/NAME`), one line per request: `Hello version: V, instance: POD`
//! from the reachable endpoints in turn, or `request failed`. Reachability across the clusters
//! of this process (injection, clusterz, the roots sidecars got from their istiod, networks
//! and east-west gateways) is described in the `mesh` module and follows Istio.
//!
//! # Faults and inspection
//! [`TestCluster::outage_after_writes`] resets every connection for a while after a number of
//! writes; [`TestCluster::set_random_faults`] answers a seeded fraction of requests with 503 or
//! a reset; [`TestCluster::set_latency`], [`TestCluster::stop`] and [`TestCluster::restart`]
//! change the server while it runs. [`TestCluster::requests_log`] lists every request with
//! its answer and caller; [`TestCluster::get`], [`TestCluster::list`], [`TestCluster::put`]
//! and [`TestCluster::delete`] read and change the store directly, and
//! [`TestCluster::request`] is a small HTTPS client for tests that need no kubectl.

#![warn(missing_docs)]

mod admission;
mod ambient;
mod auth;
mod controllers;
mod daemonsets;
mod exec;
mod fields;
mod fixtures;
mod gateways;
mod immutable;
mod injection;
mod istiod;
mod mesh;
mod net;
mod patch;
mod proto;
mod proxy;
mod registry;
mod selector;
mod server;
mod store;
mod timers;
mod tls;
mod util;
mod webhookpatch;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

pub use fixtures::{
    ISTIO_FROM, ISTIO_TO, ISTIO_TO_REVISION, gateway_api_for_istio, istio_charts, istio_charts_as,
    istio_gateway_api_crds,
};
pub use server::GIT_VERSION;

use server::Shared;
use store::{Key, State};

/// How a test cluster behaves. Every field can also be changed while it runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Added to every request before it is answered (to model a remote API server).
    pub latency: Duration,
    /// Whether the API server can reach pods through the `proxy` subresource (default true).
    /// Off models a private control plane: every pod proxy request answers 503.
    pub pod_proxy: bool,
    /// How long an emulated istiod's remote cluster stays `syncing` at least after it started
    /// (default zero: its first successful list syncs it).
    pub sync_delay: Duration,
    /// How long after a write of a remote secret each istiod pod processes it (its informer's
    /// lag; default 100 ms).
    pub informer_lag: Duration,
    /// istiod's `PILOT_REMOTE_CLUSTER_TIMEOUT` when its pod does not set that env: a remote
    /// cluster not synced within it shows `timeout` (default 2 s; Istio's own default is 30 s).
    pub remote_cluster_timeout: Duration,
    /// Whether LoadBalancer Services get `status.loadBalancer.ingress[0].ip` (default true);
    /// false leaves them pending, as on a cluster without a load-balancer controller.
    pub load_balancer: bool,
    /// How long a new pod runs before its readiness probe passes (default 200 ms): until then
    /// it is Running but not Ready, and Deployments roll out at that pace. Zero: Ready at once.
    pub pod_ready_delay: Duration,
    /// How long a deleted namespace stays `Terminating` once its contents are gone (default
    /// 300 ms). Zero: deleted at once, contents and all.
    pub namespace_finalize_delay: Duration,
    /// How long a LoadBalancer Service waits for its address (default 200 ms).
    pub load_balancer_delay: Duration,
    /// Whether load balancers get only a host name (`ingress[0].hostname`, AWS ELB style:
    /// `a<32 hex>-<16 hex>.elb.us-east-1.amazonaws.com`) instead of an IP (default false).
    pub load_balancer_hostname: bool,
    /// How long a deleted pod stays, `Terminating` (a `deletionTimestamp`, not Ready, no longer
    /// counted by its ReplicaSet), before it goes (default 200 ms): a container that exits
    /// promptly on SIGTERM. Zero: deleted at once.
    pub pod_termination_delay: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            latency: Duration::ZERO,
            pod_proxy: true,
            sync_delay: Duration::ZERO,
            informer_lag: Duration::from_millis(100),
            remote_cluster_timeout: Duration::from_secs(2),
            load_balancer: true,
            pod_ready_delay: Duration::from_millis(200),
            namespace_finalize_delay: Duration::from_millis(300),
            load_balancer_delay: Duration::from_millis(200),
            load_balancer_hostname: false,
            pod_termination_delay: Duration::from_millis(200),
        }
    }
}

/// One request as the API server saw it, in [`TestCluster::requests_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// Path with query, as sent.
    pub path: String,
    /// The status code answered; 0 when the connection was reset instead (a fault).
    pub status: u16,
    /// `admin`, `system:serviceaccount:NS:NAME`, `system:anonymous` (no token) or `-` (a token
    /// that was refused).
    pub who: String,
}

/// The answer to [`TestCluster::request`].
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// HTTP status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// Random faults: fractions of requests answered 503 or reset, drawn from a seeded generator so
/// that a test sees the same faults on every run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomFaults {
    /// Seed of the generator.
    pub seed: u64,
    /// Fraction (0..=1) of requests answered 503 ServiceUnavailable.
    pub unavailable: f64,
    /// Fraction (0..=1) of requests answered 429 TooManyRequests with `Retry-After: 1`
    /// (client-go waits and retries those by itself).
    pub throttled: f64,
    /// Fraction (0..=1) of requests whose connection is reset.
    pub reset: f64,
}

/// A failed [`TestCluster::put`]: what the API server would have answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// HTTP status code, e.g. 404 or 409.
    pub code: u16,
    /// The `Status` reason, e.g. `NotFound`.
    pub reason: String,
    /// The `Status` message.
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiFailure {}

/// How many clusters this process started: each gets its own pod and load-balancer ranges.
static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The running clusters of this process, so that one can reach another's state (traffic
/// emulation) by the port its URL names.
static RUNNING: Mutex<Vec<(u16, Weak<Shared>)>> = Mutex::new(Vec::new());

/// The running cluster serving `port`, if any.
pub(crate) fn cluster_by_port(port: u16) -> Option<Arc<Shared>> {
    RUNNING
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| *p == port)
        .and_then(|(_, w)| w.upgrade())
}

/// One in-memory Kubernetes API server. Dropping it stops the server.
pub struct TestCluster {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    shutdown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Stops the accept loop; its receiver acknowledges once the listener is closed.
    serving: Mutex<
        Option<(
            tokio::sync::watch::Sender<bool>,
            std::sync::mpsc::Receiver<()>,
        )>,
    >,
}

impl TestCluster {
    /// Starts a cluster on a free port of 127.0.0.1, served over HTTPS by its own thread and
    /// tokio runtime, with a CA of its own and a random admin token.
    pub fn start(name: &str, options: Options) -> TestCluster {
        let listener = net::bind("127.0.0.1:0".parse().unwrap()).expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let pki = tls::Pki::new(name);
        let mut state = State::new(name, pki.ca_pem.clone());
        state.load_balancer = options.load_balancer;
        state.timing = timers::Timing {
            pod_ready: options.pod_ready_delay,
            namespace_finalize: options.namespace_finalize_delay,
            load_balancer: options.load_balancer_delay,
            load_balancer_hostname: options.load_balancer_hostname,
            pod_termination: options.pod_termination_delay,
        };
        state.index = STARTED.fetch_add(1, Ordering::Relaxed);
        state.add_node();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            state: Mutex::new(state),
            latency_ns: AtomicU64::new(options.latency.as_nanos() as u64),
            requests: AtomicU64::new(0),
            mutations: AtomicU64::new(0),
            log: std::env::var_os("TESTCLUSTER_LOG").is_some(),
            pki,
            admin_token: format!(
                "admin-{}",
                util::random_string(32, b"abcdefghijklmnopqrstuvwxyz0123456789")
            ),
            faults: Mutex::new(net::Faults::default()),
            cut: tokio::sync::watch::Sender::new(net::Cut::default()),
            request_log: Mutex::new(Vec::new()),
            pod_proxy: AtomicBool::new(options.pod_proxy),
            sync_delay_ms: AtomicU64::new(options.sync_delay.as_millis() as u64),
            informer_lag_ms: AtomicU64::new(options.informer_lag.as_millis() as u64),
            remote_cluster_timeout_ms: AtomicU64::new(
                options.remote_cluster_timeout.as_millis() as u64
            ),
        });
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("testcluster-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                handle_tx.send(rt.handle().clone()).unwrap();
                rt.block_on(async move {
                    let _ = shutdown_rx.await;
                });
                // Dropping the runtime cancels the open connections and watches.
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .expect("spawn server thread");
        let runtime = handle_rx.recv().expect("runtime handle");
        runtime.spawn(istiod::run(shared.clone()));
        RUNNING
            .lock()
            .unwrap()
            .push((addr.port(), Arc::downgrade(&shared)));
        let cluster = TestCluster {
            name: name.to_string(),
            addr,
            shared,
            runtime,
            shutdown: Mutex::new(Some(shutdown_tx)),
            thread: Mutex::new(Some(thread)),
            serving: Mutex::new(None),
        };
        cluster.serve(listener);
        cluster
            .runtime
            .spawn(timers::run(Arc::downgrade(&cluster.shared)));
        cluster
            .runtime
            .spawn(webhookpatch::run(Arc::downgrade(&cluster.shared)));
        cluster
    }

    fn serve(&self, listener: std::net::TcpListener) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let shared = self.shared.clone();
        self.runtime.spawn(async move {
            if let Ok(l) = tokio::net::TcpListener::from_std(listener) {
                net::accept_loop(shared, l, stop_rx).await;
            }
            let _ = done_tx.send(());
        });
        *self.serving.lock().unwrap() = Some((stop_tx, done_rx));
    }

    /// The cluster's name, as given to [`TestCluster::start`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The PEM of the cluster's own CA, which signed its serving certificate (for IP 127.0.0.1
    /// and DNS `localhost`); token secrets carry it as `ca.crt`.
    pub fn ca_pem(&self) -> &str {
        &self.shared.pki.ca_pem
    }

    /// The bearer token of the cluster's admin (random per cluster).
    pub fn admin_token(&self) -> &str {
        &self.shared.admin_token
    }

    /// Stops serving: the listener closes (new connections are refused) and open connections
    /// and watches are closed. The stored objects stay, readable through [`TestCluster::get`]
    /// and [`TestCluster::list`], and [`TestCluster::restart`] serves them again.
    pub fn stop(&self) {
        if let Some((stop, done)) = self.serving.lock().unwrap().take() {
            let _ = stop.send(true);
            let _ = done.recv_timeout(Duration::from_secs(5));
        }
        self.shared.cut_all(false, None);
    }

    /// Serves the same state on the same port again after [`TestCluster::stop`] (a restarted
    /// API server). Does nothing while serving.
    pub fn restart(&self) {
        if self.serving.lock().unwrap().is_some() {
            return;
        }
        let listener = net::bind(self.addr).expect("bind the cluster's port again");
        self.serve(listener);
    }
    /// The stored object at an API path, e.g. `/api/v1/namespaces/istio-system/secrets/cacerts`.
    pub fn get(&self, path: &str) -> Option<Value> {
        let st = self.shared.state.lock().unwrap();
        let (t, _) = target(&st, path)?;
        let key = Key::new(&t.res, t.ns.as_deref().unwrap_or(""), t.name.as_deref()?);
        st.objects.get(&key).cloned()
    }

    /// The stored objects of a collection path, e.g. `/api/v1/namespaces/istio-system/secrets`
    /// or `/apis/apiextensions.k8s.io/v1/customresourcedefinitions`.
    pub fn list(&self, path: &str) -> Vec<Value> {
        let st = self.shared.state.lock().unwrap();
        let Some((t, _)) = target(&st, path) else {
            return Vec::new();
        };
        if t.name.is_some() {
            return Vec::new();
        }
        st.select(&t.res, t.ns.as_deref())
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Every stored object, in key order: what a test compares before and after a command
    /// that must change nothing (resourceVersions included).
    pub fn objects(&self) -> Vec<Value> {
        let st = self.shared.state.lock().unwrap();
        st.objects.values().cloned().collect()
    }

    /// What the istiod of pod `namespace/pod` would answer at `/debug/clusterz` right now
    /// (`[{"id", "secretName", "syncStatus"}]`, its own cluster first), read without going
    /// through the API; `None` when no istiod runs in that pod (absent, not ready, not
    /// `app=istiod`).
    pub fn istiod_clusterz(&self, namespace: &str, pod: &str) -> Option<Value> {
        let st = self.shared.state.lock().unwrap();
        let view = istiod::clusterz(&st, &proxy::pod_key(namespace, pod))?;
        Some(istiod::clusterz_json(&view))
    }

    /// Application pods for the benchmarks: `total` pods in namespace `bench-apps` (no
    /// injection label), of which `sidecars` go to namespace `bench-mesh`
    /// (`istio-injection=enabled`, injected by whichever istiod the webhooks reach). Each is
    /// created as an API request would create it, and runs Ready.
    pub fn add_app_pods(&self, total: usize, sidecars: usize) -> Result<(), ApiFailure> {
        for (ns, labels) in [
            ("bench-apps", serde_json::json!({})),
            (
                "bench-mesh",
                serde_json::json!({"istio-injection": "enabled"}),
            ),
        ] {
            self.put(
                "/api/v1/namespaces",
                serde_json::json!({"metadata": {"name": ns, "labels": labels}}),
            )?;
        }
        for i in 0..total {
            let ns = if i < sidecars {
                "bench-mesh"
            } else {
                "bench-apps"
            };
            let pod = serde_json::json!({
                "metadata": {"name": format!("app-{i}"), "labels": {"app": format!("app-{}", i % 50)}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1.0"}]},
            });
            self.put(&format!("/api/v1/namespaces/{ns}/pods"), pod)?;
        }
        Ok(())
    }

    /// Fills every istiod's log with `bytes` of older lines (debug pushes, spread over the day
    /// before the first line it wrote), as a long-running istiod's log would be; returns the
    /// lines added per istiod.
    pub fn pad_istiod_logs(&self, bytes: usize) -> usize {
        let mut st = self.shared.state.lock().unwrap();
        let mut added = 0;
        for istiod in st.istiods.values_mut() {
            let first = istiod
                .log
                .first()
                .map_or_else(std::time::SystemTime::now, |(at, _)| *at);
            let line = |i: usize| {
                format!(
                    "info\tads\tPush debounce stable[{i}] 1 for config ServiceEntry/bench/app-{}: 100.0ms since last change, 100.0ms since last push, full=true",
                    i % 5000
                )
            };
            let n = bytes / (line(0).len() + 29).max(1);
            let step = Duration::from_secs(86_400) / n.max(1) as u32;
            let mut old: Vec<(std::time::SystemTime, String)> = (0..n)
                .map(|i| {
                    let at = first - Duration::from_secs(86_400) + step * i as u32;
                    (at, format!("{}\t{}", istiod::istio_time(at), line(i)))
                })
                .collect();
            old.append(&mut istiod.log);
            istiod.log = old;
            added = n;
        }
        added
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// POST, PUT, PATCH and DELETE requests served so far.
    pub fn mutations(&self) -> u64 {
        self.shared.mutations.load(Ordering::Relaxed)
    }

    /// Sends one HTTPS request to this cluster, verifying its certificate against its CA, with
    /// `token` as bearer token (none: anonymous) and `body` as JSON: a client for tests that
    /// need no kubectl. Errors are transport failures (refused, reset, timeout).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<HttpReply, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let body = body.map(|b| serde_json::to_vec(b).unwrap());
        let reply = rt
            .block_on(tls::request(
                self.addr.port(),
                "127.0.0.1",
                self.ca_pem().as_bytes(),
                tls::Call {
                    method,
                    path,
                    token,
                    body: body.as_deref(),
                },
                Duration::from_secs(30),
            ))
            .map_err(|e| e.to_string())?;
        Ok(HttpReply {
            status: reply.status,
            body: String::from_utf8_lossy(&reply.body).into_owned(),
        })
    }

    /// Every request so far, in the order they were answered.
    pub fn requests_log(&self) -> Vec<LoggedRequest> {
        self.shared.request_log.lock().unwrap().clone()
    }

    /// Changes the latency added to every request from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_ns
            .store(latency.as_nanos() as u64, Ordering::Relaxed);
    }

    /// After the `k`-th write request (POST, PUT, PATCH, DELETE) from now has been answered,
    /// every connection is reset for `length`: open keep-alive connections and watches are cut,
    /// new connections are reset as they are accepted, and requests on a connection that
    /// survived get a reset instead of an answer. Calls queue several outages; overlapping ones
    /// add up.
    pub fn outage_after_writes(&self, k: u64, length: Duration) {
        self.shared
            .faults
            .lock()
            .unwrap()
            .outage_after_writes(k, length);
    }

    /// Answers a fraction of requests with 503, 429 or a reset, from now on (zero rates turn it
    /// off).
    pub fn set_random_faults(&self, faults: RandomFaults) {
        self.shared.faults.lock().unwrap().set_random(faults);
    }

    /// Lets the API server reach pods through the `proxy` subresource, or not (see
    /// [`Options::pod_proxy`]).
    pub fn set_pod_proxy(&self, enabled: bool) {
        self.shared.pod_proxy.store(enabled, Ordering::Relaxed);
    }

    /// Changes [`Options::sync_delay`].
    pub fn set_sync_delay(&self, delay: Duration) {
        self.shared
            .sync_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Changes [`Options::informer_lag`] for secret events from now on.
    pub fn set_informer_lag(&self, lag: Duration) {
        self.shared
            .informer_lag_ms
            .store(lag.as_millis() as u64, Ordering::Relaxed);
    }

    /// Changes [`Options::remote_cluster_timeout`] for istiod pods that start from now on
    /// (istiod reads it once, at start).
    pub fn set_remote_cluster_timeout(&self, timeout: Duration) {
        self.shared
            .remote_cluster_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// Turns the load-balancer controller on or off (see [`Options::load_balancer`]); turning
    /// it on gives pending LoadBalancer Services their address.
    pub fn set_load_balancer(&self, enabled: bool) {
        let mut st = self.shared.state.lock().unwrap();
        st.load_balancer = enabled;
        if enabled {
            st.assign_load_balancers();
        }
    }

    /// Changes [`Options::pod_ready_delay`] for pods created from now on.
    pub fn set_pod_ready_delay(&self, delay: Duration) {
        self.shared.state.lock().unwrap().timing.pod_ready = delay;
    }

    /// Changes [`Options::pod_termination_delay`] for pods deleted from now on.
    pub fn set_pod_termination_delay(&self, delay: Duration) {
        self.shared.state.lock().unwrap().timing.pod_termination = delay;
    }

    /// Changes [`Options::namespace_finalize_delay`] for namespaces deleted from now on.
    pub fn set_namespace_finalize_delay(&self, delay: Duration) {
        self.shared.state.lock().unwrap().timing.namespace_finalize = delay;
    }

    /// Changes [`Options::load_balancer_delay`] for Services written from now on.
    pub fn set_load_balancer_delay(&self, delay: Duration) {
        self.shared.state.lock().unwrap().timing.load_balancer = delay;
    }

    /// Changes [`Options::load_balancer_hostname`] for addresses handed out from now on.
    pub fn set_load_balancer_hostname(&self, hostname: bool) {
        self.shared
            .state
            .lock()
            .unwrap()
            .timing
            .load_balancer_hostname = hostname;
    }

    /// Creates or replaces the object at `path` (an object path, or a collection path and the
    /// name in `object`), through the same defaults and controllers as an API request; a
    /// `status` in `object` is written too. The resourceVersion in `object` is ignored.
    pub fn put(&self, path: &str, mut object: Value) -> Result<Value, ApiFailure> {
        let failure = |e: store::ApiError| ApiFailure {
            code: e.code,
            reason: e.reason.to_string(),
            message: e.message.into(),
        };
        let mut st = self.shared.state.lock().unwrap();
        let (t, _) = target(&st, path).ok_or_else(|| ApiFailure {
            code: 404,
            reason: "NotFound".into(),
            message: format!("no resource at `{path}`"),
        })?;
        if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let meta = |f: &str| store::meta_str(&object, f).to_string();
        let name = t.name.clone().unwrap_or_else(|| meta("name"));
        let ns = t.ns.clone().unwrap_or_else(|| meta("namespace"));
        let key = Key::new(&t.res, &ns, &name);
        let status = object.get("status").cloned();
        let result = if st.objects.contains_key(&key) {
            st.update(&t.res, &key, object, store::WriteMode::Main, false)
        } else {
            if object.is_object() {
                object["metadata"]["name"] = Value::String(name.clone());
            }
            st.create(&t.res, &ns, object, false)
        };
        let result = match (result, status) {
            (Ok(_), Some(status)) if t.res.has_status() => {
                let mut with_status = st.objects.get(&key).cloned().unwrap_or_default();
                with_status["status"] = status;
                st.update(&t.res, &key, with_status, store::WriteMode::Status, false)
            }
            (r, _) => r,
        };
        let pending = st.take_pending();
        drop(st);
        let _guard = self.runtime.enter();
        server::spawn_pending(&self.shared, pending);
        result.map_err(failure)
    }

    /// Deletes the object at `path` and what depends on it (owned objects, a namespace's
    /// contents), as the API server and its garbage collector would; returns the deleted object.
    /// A namespace is only marked `Terminating` (and returned so) while
    /// [`Options::namespace_finalize_delay`] runs; it goes once that has passed.
    pub fn delete(&self, path: &str) -> Option<Value> {
        let mut st = self.shared.state.lock().unwrap();
        let (t, _) = target(&st, path)?;
        let key = Key::new(&t.res, t.ns.as_deref().unwrap_or(""), t.name.as_deref()?);
        st.delete(&key)
    }
}

fn target(st: &State, path: &str) -> Option<(server::Target, ())> {
    let path = path.split('?').next().unwrap_or("");
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let t = match segs.as_slice() {
        ["api", v, rest @ ..] => server::resolve(st, "", v, rest),
        ["apis", g, v, rest @ ..] => server::resolve(st, g, v, rest),
        _ => return None,
    };
    t.ok().map(|t| (t, ()))
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop();
        RUNNING
            .lock()
            .unwrap()
            .retain(|(p, w)| *p != self.addr.port() && w.strong_count() > 0);
        if let Some(tx) = self.shutdown.lock().unwrap().take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}

/// Writes a kubeconfig with one context per cluster: context, cluster and user all named after
/// the [`TestCluster`] name; server = [`TestCluster::url`] with the cluster's CA as
/// `certificate-authority-data`; the user holds the cluster's [`TestCluster::admin_token`].
pub fn write_kubeconfig(path: &Path, clusters: &[&TestCluster]) -> std::io::Result<()> {
    let mut out = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for c in clusters {
        out += &format!(
            "- name: {}\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n",
            c.name,
            c.url(),
            STANDARD.encode(c.ca_pem())
        );
    }
    out += "users:\n";
    for c in clusters {
        out += &format!(
            "- name: {}\n  user:\n    token: {}\n",
            c.name,
            c.admin_token()
        );
    }
    out += "contexts:\n";
    for c in clusters {
        out += &format!(
            "- name: {0}\n  context:\n    cluster: {0}\n    user: {0}\n",
            c.name
        );
    }
    if let Some(first) = clusters.first() {
        out += &format!("current-context: {}\n", first.name);
    }
    let mut f = std::fs::File::create(path)?;
    f.write_all(out.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
