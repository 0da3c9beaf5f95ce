//! In-memory Kubernetes API servers for meshup's end-to-end tests.
//!
//! [`TestCluster::start`] serves one cluster on its own `127.0.0.1` port over plain HTTP, good
//! enough for real `helm` (3.19, 4.1) and `kubectl` (1.34, 1.35): discovery, OpenAPI v3,
//! create/update/patch (merge, strategic, JSON, server-side apply)/delete, selectors, watches,
//! and the bits of controller behaviour installs wait for (ready Deployments with ReplicaSets,
//! established CRDs, service IPs, service-account tokens). Objects are plain JSON.

mod controllers;
mod patch;
mod proto;
mod registry;
mod selector;
mod server;
mod store;
mod util;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

pub use server::GIT_VERSION;

use server::Shared;
use store::{Key, State};

/// How a test cluster behaves.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Added to every request before it is answered (to model a remote API server).
    pub latency: Duration,
}

/// One in-memory Kubernetes API server. Dropping it stops the server.
pub struct TestCluster {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop_tx: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A self-signed CA certificate, different for every cluster, for `ca.crt` of token secrets.
fn ca_pem(name: &str) -> String {
    let key = rcgen::KeyPair::generate().expect("generate a key");
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).expect("certificate params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("testcluster-{name}-ca"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).expect("self-sign").pem()
}

impl TestCluster {
    /// Starts a cluster on a free port of 127.0.0.1, served by its own thread and tokio runtime.
    pub fn start(name: &str, options: Options) -> TestCluster {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            state: Mutex::new(State::new(name, ca_pem(name))),
            latency: options.latency,
            requests: AtomicU64::new(0),
            mutations: AtomicU64::new(0),
            log: std::env::var_os("TESTCLUSTER_LOG").is_some(),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let app_state = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("testcluster-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let app = axum::Router::new()
                        .fallback(server::handle)
                        .with_state(app_state);
                    tokio::select! {
                        r = axum::serve(listener, app) => { let _ = r; }
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime cancels the open connections and watches.
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .expect("spawn server thread");
        TestCluster {
            name: name.to_string(),
            addr,
            shared,
            stop_tx: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving; afterwards connections to the port are refused. The stored objects stay
    /// readable through [`TestCluster::get`] and [`TestCluster::list`].
    pub fn stop(&self) {
        if let Some(tx) = self.stop_tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
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

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// POST, PUT, PATCH and DELETE requests served so far.
    pub fn mutations(&self) -> u64 {
        self.shared.mutations.load(Ordering::Relaxed)
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
    }
}

/// Writes a kubeconfig with one context per cluster: context, cluster and user all named after
/// the [`TestCluster`] name (the user has a dummy token), server = [`TestCluster::url`].
pub fn write_kubeconfig(path: &Path, clusters: &[&TestCluster]) -> std::io::Result<()> {
    let mut out = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for c in clusters {
        out += &format!("- name: {}\n  cluster:\n    server: {}\n", c.name, c.url());
    }
    out += "users:\n";
    for c in clusters {
        out += &format!(
            "- name: {}\n  user:\n    token: testcluster-{}-token\n",
            c.name, c.name
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
