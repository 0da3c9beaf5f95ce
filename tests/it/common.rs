//! What the integration tests share: test clusters (in-memory API servers) with a kubeconfig
//! naming them, one set of the real helm and kubectl, the built meshup, and ways to read what
//! happened (the clusters' objects and request logs, meshup's verbose command lines).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
pub use meshup_testcluster::{ISTIO_FROM, ISTIO_TO, istio_charts};
use meshup_testcluster::{LoggedRequest, Options, TestCluster, write_kubeconfig};
use serde_json::Value;

pub const NS: &str = "istio-system";

/// Runs scenarios `fn(tools: &str)` with Helm 4 (module `helm4`) or Helm 3 (module `helm3`):
/// `both` with each (what helm's major changes: install, uninstall, kills, diff's managed
/// fields), the others once, the list split between the two so that both still drive every
/// module.
macro_rules! split_helms {
    (helm4: [$($a:ident),* $(,)?], helm3: [$($b:ident),* $(,)?] $(,)?) => {
        split_helms!(both: [], helm4: [$($a),*], helm3: [$($b),*]);
    };
    (both: [$($c:ident),* $(,)?], helm4: [$($a:ident),* $(,)?], helm3: [$($b:ident),* $(,)?] $(,)?) => {
        mod helm4 {
            $(#[test] fn $c() { super::$c("helm4") })*
            $(#[test] fn $a() { super::$a("helm4") })*
        }
        mod helm3 {
            $(#[test] fn $c() { super::$c("helm3") })*
            $(#[test] fn $b() { super::$b("helm3") })*
        }
    };
}
pub const CACERTS: &str = "/api/v1/namespaces/istio-system/secrets/cacerts";
pub const TOKEN_SECRET: &str = meshup::tools::remote_secret::TOKEN_SECRET;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A set of test clusters, a kubeconfig naming them, and one tool set.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub clusters: Vec<TestCluster>,
    pub kubeconfig: PathBuf,
    pub tools: PathBuf,
}

impl Env {
    /// `n` clusters `cluster1`..`clusterN` with the tools of `tool_set` (`helm4`, `helm3`).
    pub fn new(tool_set: &str, n: usize) -> Env {
        Env::with(tool_set, n, Options::default())
    }

    pub fn with(tool_set: &str, n: usize, options: Options) -> Env {
        let tools = repo().join(".tools").join(tool_set);
        assert!(
            tools.join("helm").is_file() && tools.join("kubectl").is_file(),
            "the real helm and kubectl are missing from {}; run scripts/fetch-tools.sh (scripts/test.sh does)",
            tools.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("meshup-test-")
            .tempdir()
            .unwrap();
        let clusters: Vec<TestCluster> = (1..=n)
            .map(|i| TestCluster::start(&format!("cluster{i}"), options.clone()))
            .collect();
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&kubeconfig, &clusters.iter().collect::<Vec<_>>()).unwrap();
        Env {
            dir,
            clusters,
            kubeconfig,
            tools,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `mesh.yaml` for the named clusters (all when empty) and returns its path.
    /// `overrides` maps a cluster name to its `apiServer`; `extra` goes before `clusters:`.
    pub fn mesh_file(&self, names: &[&str], overrides: &[(&str, &str)], extra: &str) -> PathBuf {
        let mut text = format!(
            "meshID: mesh1\nnetwork: network1\nistio:\n  version: {ISTIO_FROM}\n  charts: {}\ntrust:\n  dir: {}\n{extra}clusters:\n",
            istio_charts(ISTIO_FROM).display(),
            self.path("certs").display()
        );
        for cluster in &self.clusters {
            if !names.is_empty() && !names.contains(&cluster.name()) {
                continue;
            }
            text.push_str(&format!(
                "  - name: {0}\n    context: {0}\n",
                cluster.name()
            ));
            if let Some((_, server)) = overrides.iter().find(|(n, _)| *n == cluster.name()) {
                text.push_str(&format!("    apiServer: {server}\n"));
            }
        }
        let path = self.path("mesh.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Sets `trust.mode` in the mesh file.
    pub fn set_trust_mode(&self, mesh: &Path, mode: &str) {
        let text = std::fs::read_to_string(mesh)
            .unwrap()
            .replace("trust:\n", &format!("trust:\n  mode: {mode}\n"));
        std::fs::write(mesh, text).unwrap();
    }

    /// Runs meshup with this env's kubeconfig and tools; plain output.
    pub fn meshup(&self, args: &[&str]) -> Run {
        self.meshup_env(args, &[])
    }

    /// Like [`Env::meshup`], with extra environment variables.
    pub fn meshup_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Run {
        let output = self
            .command(args)
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        Run::from(output)
    }

    /// The meshup command [`Env::meshup`] runs, to start it some other way.
    pub fn command(&self, args: &[&str]) -> Command {
        let home = self.path("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_meshup"));
        let given = |flag: &str| args.contains(&flag);
        command.args(args).arg("--kubeconfig").arg(&self.kubeconfig);
        if !given("--helm") {
            command.arg("--helm").arg(self.tools.join("helm"));
        }
        if !given("--kubectl") {
            command.arg("--kubectl").arg(self.tools.join("kubectl"));
        }
        if !given("--output") && !given("-o") {
            command.args(["--output", "plain"]);
        }
        if !given("--timeout") {
            command.args(["--timeout", "60s"]);
        }
        command
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            // helm and kubectl (meshup's children inherit it) are short-lived Go processes:
            // no garbage collection below 1 GiB, a tenth less CPU for the suite with the same
            // behaviour.
            .env("GOGC", "off")
            .env("GOMEMLIMIT", "1GiB")
            .env_remove("KUBECONFIG")
            .env_remove("MESHUP_FILE")
            .env_remove("MESHUP_HELM")
            .env_remove("MESHUP_KUBECTL");
        command
    }

    pub fn cluster(&self, name: &str) -> &TestCluster {
        self.clusters.iter().find(|c| c.name() == name).unwrap()
    }

    /// Every cluster's write count.
    pub fn mutations(&self) -> Vec<u64> {
        self.clusters.iter().map(TestCluster::mutations).collect()
    }

    /// Every cluster's request count.
    pub fn requests(&self) -> Vec<u64> {
        self.clusters.iter().map(TestCluster::requests).collect()
    }

    /// The reader token `cluster` holds in its token secret.
    pub fn token(&self, cluster: &str) -> String {
        let secret = self
            .cluster(cluster)
            .get(&format!("/api/v1/namespaces/{NS}/secrets/{TOKEN_SECRET}"))
            .expect("the token secret exists");
        decode(&secret["data"]["token"])
    }
}

/// What a finished meshup run printed.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code,
            Some(code),
            "meshup exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The command lines a `--verbose` run printed, in order: (cluster, `helm ...`).
    pub fn commands(&self) -> Vec<(String, String)> {
        self.stderr
            .lines()
            .filter_map(|line| {
                let (who, command) = line.split_once("$ ")?;
                let cluster = who.trim().trim_start_matches('[').trim_end_matches(']');
                Some((cluster.to_string(), command.to_string()))
            })
            .collect()
    }

    /// The command lines a `--verbose` run printed for `cluster`.
    pub fn commands_in(&self, cluster: &str) -> Vec<String> {
        self.commands()
            .into_iter()
            .filter(|(c, _)| c == cluster)
            .map(|(_, command)| command)
            .collect()
    }
}

/// The writes sent to a cluster (method, path without query), after the first `since`
/// requests of its log: every attempt, whatever the answer (a refused write — 403, 409, 422,
/// 500 — is still an attempt to change the cluster).
pub fn writes(cluster: &TestCluster, since: usize) -> Vec<(String, String)> {
    cluster
        .requests_log()
        .into_iter()
        .skip(since)
        .filter(|r: &LoggedRequest| r.method != "GET")
        .map(|r| {
            let path = r.path.split('?').next().unwrap_or_default().to_string();
            (r.method, path)
        })
        .collect()
}

/// Lists of every pod in the cluster without a label selector (`GET /api/v1/pods`), as sent:
/// meshup reads only the pods it reports on.
pub fn unfiltered_pod_lists(cluster: &TestCluster) -> Vec<String> {
    cluster
        .requests_log()
        .into_iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.path)
        .filter(|path| {
            let (route, query) = path.split_once('?').unwrap_or((path, ""));
            route == "/api/v1/pods"
                && !query
                    .split('&')
                    .any(|q| q.starts_with("labelSelector=") && q.len() > "labelSelector=".len())
        })
        .collect()
}

/// `meshup verify --traffic` passes, and every cluster's requests got answers from every
/// cluster (waiting for istiod to sync first).
pub fn traffic_reaches_every_cluster(env: &Env, mesh: &str) {
    traffic_with(env, mesh, &[]);
}

/// [`traffic_reaches_every_cluster`] with more `verify` flags (`--keep` leaves the helloworld
/// Deployments, whose proxies an upgrade must then move).
pub fn traffic_with(env: &Env, mesh: &str, flags: &[&str]) {
    let mut args = vec![
        "verify",
        "--wait",
        "60s",
        "--traffic",
        "--requests",
        "10",
        "-f",
        mesh,
        "--output",
        "json",
    ];
    args.extend_from_slice(flags);
    let run = env.meshup(&args).expect(0);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    for from in &env.clusters {
        for to in &env.clusters {
            let (from, to) = (from.name(), to.name());
            let answers = report["traffic"]["answers"][from][to].as_u64().unwrap_or(0);
            assert!(answers > 0, "{from} → {to}: {}", run.stdout);
        }
    }
}

/// Starts meshup in a process group of its own, as a terminal or a CI job runs it.
pub fn spawn(env: &Env, args: &[&str]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut command = env.command(args);
    command
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.spawn().unwrap()
}

/// Whether a request path is meshup's lock (the Lease, or its collection on create).
pub fn is_lock(path: &str) -> bool {
    path.starts_with("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases")
}

/// The writes to `cluster` after the first `since` requests, but meshup's lock.
pub fn mesh_writes(cluster: &TestCluster, since: usize) -> Vec<(String, String)> {
    writes(cluster, since)
        .into_iter()
        .filter(|(_, path)| !is_lock(path))
        .collect()
}

pub fn secrets(cluster: &TestCluster) -> Vec<Value> {
    cluster.list(&format!("/api/v1/namespaces/{NS}/secrets"))
}

pub fn remote_secrets(cluster: &TestCluster) -> Vec<Value> {
    secrets(cluster)
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["istio/multiCluster"] == "true")
        .collect()
}

pub fn names(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// helm's release records: (release, version).
pub fn helm_records(cluster: &TestCluster) -> BTreeSet<(String, String)> {
    secrets(cluster)
        .iter()
        .filter(|s| s["metadata"]["labels"]["owner"] == "helm")
        .map(|s| {
            let labels = &s["metadata"]["labels"];
            (
                labels["name"].as_str().unwrap().to_string(),
                labels["version"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The status helm recorded for the newest revision of `release`.
pub fn release_status(cluster: &TestCluster, release: &str) -> Option<String> {
    secrets(cluster)
        .iter()
        .filter(|s| {
            s["metadata"]["labels"]["owner"] == "helm" && s["metadata"]["labels"]["name"] == release
        })
        .max_by_key(|s| {
            s["metadata"]["labels"]["version"]
                .as_str()
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        })
        .map(|s| {
            s["metadata"]["labels"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
}

pub fn decode(value: &Value) -> String {
    String::from_utf8(B64.decode(value.as_str().unwrap()).unwrap()).unwrap()
}

pub fn encode(text: &str) -> String {
    B64.encode(text)
}

pub fn istio_crds(cluster: &TestCluster) -> BTreeSet<String> {
    names(&cluster.list("/apis/apiextensions.k8s.io/v1/customresourcedefinitions"))
        .into_iter()
        .filter(|n| n.ends_with(".istio.io"))
        .collect()
}

pub fn resource_versions(objects: &[Value]) -> BTreeSet<(String, String)> {
    objects
        .iter()
        .map(|o| {
            (
                o["metadata"]["name"].as_str().unwrap().to_string(),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// A Helm chart repository served over HTTP on 127.0.0.1 from a directory: Istio's charts
/// ([`ISTIO_FROM`]) packaged by the real helm, an `index.yaml` made by `helm repo index`, and a log of every
/// path requested.
pub struct ChartRepo {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ChartRepo {
    /// Packages Istio's charts `{names}` of [`ISTIO_FROM`] with `helm` and serves them.
    pub fn serve(helm: &Path, names: &[&str]) -> ChartRepo {
        use std::io::{BufRead, BufReader, Write};
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        for name in names {
            let chart = istio_charts(ISTIO_FROM).join(name);
            let out = Command::new(helm)
                .args(["package"])
                .arg(&chart)
                .arg("--destination")
                .arg(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = Command::new(helm)
            .args(["repo", "index"])
            .arg(dir.path())
            .args(["--url", &url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (root, requests) = (dir.path().to_path_buf(), log.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                // Skip the headers.
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                requests.lock().unwrap().push(path.clone());
                let file = root.join(path.trim_start_matches('/'));
                let response = match std::fs::read(&file) {
                    Ok(body) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend(body);
                        r
                    }
                    Err(_) => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = stream.write_all(&response);
            }
        });
        ChartRepo { url, dir, log }
    }

    /// How often `suffix` was requested since the log was last taken.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// The mesh file `mesh` (as `Env::mesh_file` writes it, at [`ISTIO_FROM`]) moved to `version`
/// of the charts at `charts` (a directory or a repository URL), written as `name`.
pub fn mesh_moved(
    env: &Env,
    mesh: &Path,
    version: &str,
    charts: &dyn std::fmt::Display,
    name: &str,
) -> String {
    let text = std::fs::read_to_string(mesh).unwrap().replace(
        &format!(
            "  version: {ISTIO_FROM}\n  charts: {}\n",
            istio_charts(ISTIO_FROM).display()
        ),
        &format!("  version: {version}\n  charts: {charts}\n"),
    );
    assert!(text.contains(version), "{text}");
    let path = env.path(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Every file under `dir`, by relative path.
pub fn read_tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(relative, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    out
}
