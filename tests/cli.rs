//! Runs the meshup binary against the fake `helm` and `kubectl` in `tests/fake`, which log
//! every call and keep per-context cluster state, and checks what meshup ran, in which order,
//! what it printed and what the clusters hold afterwards.
//!
//! Every test has its own temporary directory (kubeconfig, mesh file, fake state, call log), so
//! the tests run in parallel.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};
use tempfile::TempDir;

const NS: &str = "istio-system";
const TOKEN_SECRET: &str = "istio-reader-service-account-istio-remote-secret-token";

fn fake(tool: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fake")
        .join(tool)
}

/// PATH with the real python3 first: a version-manager shim (pyenv) in front of it costs
/// ~100 ms per call, which would dominate the fakes' run time.
fn path_var() -> String {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::var("PATH").unwrap_or_default();
        let output = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 must be on PATH: the fake helm and kubectl are Python scripts");
        let exe = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        match exe.parent() {
            Some(dir) if output.status.success() => format!("{}:{path}", dir.display()),
            _ => path,
        }
    })
    .clone()
}

/// One call a fake recorded.
#[derive(Debug, Clone, Deserialize)]
struct Call {
    tool: String,
    argv: Vec<String>,
    context: Option<String>,
    stdin: Option<String>,
    code: i32,
    start: f64,
    end: f64,
}

impl Call {
    fn line(&self) -> String {
        format!("{} {}", self.tool, self.argv.join(" "))
    }

    fn verb(&self) -> (&str, &str) {
        let word = |i: usize| self.argv.get(i).map(String::as_str).unwrap_or_default();
        (word(0), word(1))
    }

    /// Whether the call can change a cluster: everything but the read-only verbs.
    fn mutates(&self) -> bool {
        let read_only = match (self.tool.as_str(), self.verb()) {
            ("helm", (verb, _)) => ["version", "list", "get", "status", "history"].contains(&verb),
            ("kubectl", ("rollout", sub)) => sub == "status",
            ("kubectl", (verb, _)) => ["version", "get"].contains(&verb),
            _ => false,
        };
        !read_only
    }

    /// The documents on stdin (kubectl apply).
    fn documents(&self) -> Vec<Value> {
        let Some(text) = &self.stdin else {
            return Vec::new();
        };
        serde_yaml::Deserializer::from_str(text)
            .map(|doc| Value::deserialize(doc).expect("stdin is YAML"))
            .filter(|doc| !doc.is_null())
            .collect()
    }

    /// A short name for what the call does, for asserting order: `apply Secret/cacerts`,
    /// `helm upgrade istiod`, `delete secrets`, ...
    fn label(&self) -> String {
        match (self.tool.as_str(), self.verb()) {
            ("kubectl", ("apply", _)) => {
                let names: Vec<String> = self
                    .documents()
                    .iter()
                    .map(|d| {
                        format!(
                            "{}/{}",
                            d["kind"].as_str().unwrap_or("?"),
                            d["metadata"]["name"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                format!("apply {}", names.join(","))
            }
            ("helm", (verb, _)) => format!("helm {verb} {}", self.release()),
            ("kubectl", (verb, kind)) => format!("{verb} {kind}"),
            _ => self.line(),
        }
    }

    /// The release a helm call is about.
    fn release(&self) -> &str {
        match self.verb() {
            ("upgrade", _) => &self.argv[2],
            ("uninstall", name) => name,
            ("get", _) => &self.argv[2],
            _ => "",
        }
    }
}

/// A test's world: a temp dir with a kubeconfig of `n` contexts `kind-clusterI`, a mesh file
/// `mesh.yaml` (trust `none` unless a test writes another), the fakes' state and log.
struct World {
    dir: TempDir,
    n: usize,
}

impl World {
    fn new(n: usize) -> Self {
        let world = Self {
            dir: tempfile::Builder::new()
                .prefix("meshup-cli-")
                .tempdir()
                .unwrap(),
            n,
        };
        let mut kubeconfig = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
        for i in 1..=n {
            kubeconfig +=
                &format!("- name: c{i}\n  cluster:\n    server: https://cluster{i}.test:6443\n");
        }
        kubeconfig += "contexts:\n";
        for i in 1..=n {
            kubeconfig += &format!(
                "- name: kind-cluster{i}\n  context:\n    cluster: c{i}\n    user: admin\n"
            );
        }
        kubeconfig += "users:\n- name: admin\n  user:\n    token: admin-token\ncurrent-context: kind-cluster1\n";
        world.write("kubeconfig", &kubeconfig);
        std::fs::create_dir_all(world.path("tmp")).unwrap();
        world.mesh("none", 1..=n);
        world
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Writes `mesh.yaml` for clusters `which`, with `trust.mode`.
    fn mesh(&self, trust: &str, which: impl IntoIterator<Item = usize>) {
        let mut yaml = format!(
            "meshID: mesh1\nnetwork: network1\nistio:\n  version: 1.28.1\ntrust:\n  mode: {trust}\nclusters:\n"
        );
        for i in which {
            yaml += &format!("  - name: cluster{i}\n    context: kind-cluster{i}\n");
        }
        self.write("mesh.yaml", &yaml);
    }

    fn contexts(&self) -> Vec<String> {
        (1..=self.n).map(|i| format!("kind-cluster{i}")).collect()
    }

    fn meshup(&self, args: &[&str]) -> Cmd<'_> {
        Cmd {
            world: self,
            args: args.iter().map(|s| s.to_string()).collect(),
            vars: Vec::new(),
            status: Some(0),
        }
    }

    /// `meshup install`, which must succeed.
    fn install(&self) {
        self.meshup(&["install"]).run();
    }

    fn base_env(&self, cmd: &mut Command) {
        cmd.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", path_var())
            .env("HOME", self.path("tmp"))
            .env("TMPDIR", self.path("tmp"))
            .env("FAKE_STATE", self.path("state"));
    }

    /// Calls the fake kubectl directly (not logged): to seed or change cluster state.
    fn kubectl(&self, context: &str, args: &[&str], stdin: Option<&str>) -> String {
        let mut cmd = Command::new(fake("kubectl"));
        self.base_env(&mut cmd);
        cmd.args(args)
            .args(["--context", context])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or_default().as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "fake kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Applies objects (JSON documents) in a cluster as another field manager would.
    fn seed(&self, context: &str, objects: &[Value]) {
        for object in objects {
            self.kubectl(
                context,
                &[
                    "apply",
                    "--server-side",
                    "--field-manager",
                    "test",
                    "--filename",
                    "-",
                ],
                Some(&object.to_string()),
            );
        }
    }

    /// An object as the fake cluster holds it.
    fn object(
        &self,
        context: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let mut args = vec!["get", kind, name, "--output", "json", "--ignore-not-found"];
        if let Some(ns) = namespace {
            args.extend(["--namespace", ns]);
        }
        let text = self.kubectl(context, &args, None);
        (!text.trim().is_empty()).then(|| serde_json::from_str(&text).unwrap())
    }

    fn names(&self, context: &str, kind: &str, namespace: Option<&str>) -> BTreeSet<String> {
        let mut args = vec!["get", kind, "--output", "json"];
        if let Some(ns) = namespace {
            args.extend(["--namespace", ns]);
        }
        let list: Value = serde_json::from_str(&self.kubectl(context, &args, None)).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The reader token the fake's token controller gave `context`.
    fn token(&self, context: &str) -> String {
        let secret = self
            .object(context, "secret", Some(NS), TOKEN_SECRET)
            .expect("the token secret exists");
        decode(secret["data"]["token"].as_str().unwrap())
    }

    fn calls(&self) -> Vec<Call> {
        match std::fs::read_to_string(self.path("calls.jsonl")) {
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn calls_to(&self, context: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.context.as_deref() == Some(context))
            .collect()
    }

    fn mutations_in(&self, context: &str) -> Vec<String> {
        self.calls_to(context)
            .iter()
            .filter(|c| c.mutates())
            .map(Call::label)
            .collect()
    }

    fn clear_log(&self) {
        let _ = std::fs::remove_file(self.path("calls.jsonl"));
    }

    /// Every file under the world except the fakes' own state and log.
    fn files_meshup_could_write(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        walk(self.dir.path(), &mut files);
        files.retain(|f| !f.starts_with(self.path("state")) && *f != self.path("calls.jsonl"));
        files
    }
}

/// One meshup run being set up.
struct Cmd<'a> {
    world: &'a World,
    args: Vec<String>,
    vars: Vec<(String, String)>,
    /// The exit code the run must end with; `None` accepts any.
    status: Option<i32>,
}

/// What a finished run printed.
struct Run {
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl Cmd<'_> {
    fn env(mut self, key: &str, value: &str) -> Self {
        self.vars.push((key.into(), value.into()));
        self
    }

    /// The exit code the run must end with (0 unless set).
    fn status(mut self, code: i32) -> Self {
        self.status = Some(code);
        self
    }

    /// Accepts any exit code.
    fn any_status(mut self) -> Self {
        self.status = None;
        self
    }

    fn run(self) -> Run {
        let world = self.world;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshup"));
        world.base_env(&mut cmd);
        cmd.args(&self.args)
            .env("KUBECONFIG", world.path("kubeconfig"))
            .env("MESHUP_HELM", fake("helm"))
            .env("MESHUP_KUBECTL", fake("kubectl"))
            .env("FAKE_LOG", world.path("calls.jsonl"))
            .env("CI", "1")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        let output = cmd.output().unwrap();
        let run = Run {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        if let Some(code) = self.status {
            assert_eq!(
                output.status.code(),
                Some(code),
                "`meshup {}` exited with {:?}, expected {code}\n--- stdout\n{}\n--- stderr\n{}",
                self.args.join(" "),
                output.status.code(),
                run.stdout,
                run.stderr
            );
        }
        run
    }
}

fn decode(b64: &str) -> String {
    String::from_utf8(B64.decode(b64).unwrap()).unwrap()
}

fn namespace_object(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// The remote secrets (name → document) that `context` received in its link apply.
fn link_apply(world: &World, context: &str) -> Vec<Value> {
    let applies: Vec<Call> = world
        .calls_to(context)
        .into_iter()
        .filter(|c| c.label().starts_with("apply Secret/istio-remote-secret-"))
        .collect();
    assert_eq!(applies.len(), 1, "one link apply in {context}");
    applies[0].documents()
}

// --- install: order -------------------------------------------------------------------------

#[test]
fn install_runs_namespace_base_istiod_and_remote_secret_in_order_in_every_cluster() {
    let world = World::new(3);
    world.install();
    for i in 1..=3 {
        let peers: Vec<String> = (1..=3)
            .filter(|&j| j != i)
            .map(|j| format!("Secret/istio-remote-secret-cluster{j}"))
            .collect();
        assert_eq!(
            world.mutations_in(&format!("kind-cluster{i}")),
            [
                "apply Namespace/istio-system".to_string(),
                "helm upgrade istio-base".into(),
                "helm upgrade istiod".into(),
                format!("apply Secret/{TOKEN_SECRET}"),
                format!("apply {}", peers.join(",")),
            ],
            "cluster{i}"
        );
    }
}

#[test]
fn install_links_only_after_every_cluster_built_its_remote_secret() {
    let world = World::new(2);
    world.install();
    let calls = world.calls();
    let is_link = |c: &Call| c.argv.contains(&"--selector".to_string());
    let phase_one_end = calls
        .iter()
        .filter(|c| c.argv.contains(&TOKEN_SECRET.to_string()) || c.verb().0 == "upgrade")
        .map(|c| c.end)
        .fold(f64::MIN, f64::max);
    let phase_two_start = calls
        .iter()
        .filter(|c| is_link(c))
        .map(|c| c.start)
        .fold(f64::MAX, f64::min);
    assert!(
        phase_one_end <= phase_two_start,
        "a link call started before every cluster's chain ended"
    );
    assert_eq!(calls.iter().filter(|c| is_link(c)).count(), 2);
}

#[test]
fn install_with_generated_trust_applies_cacerts_before_the_charts() {
    let world = World::new(2);
    world.mesh("generate", 1..=2);
    world.install();
    let root = std::fs::read_to_string(world.path("meshup-certs/root-cert.pem")).unwrap();
    for context in world.contexts() {
        let mutations = world.mutations_in(&context);
        assert_eq!(
            mutations[..4],
            [
                "apply Namespace/istio-system",
                "apply Secret/cacerts",
                "helm upgrade istio-base",
                "helm upgrade istiod",
            ],
            "{context}"
        );
        let cacerts = world
            .object(&context, "secret", Some(NS), "cacerts")
            .unwrap();
        assert_eq!(
            decode(cacerts["data"]["root-cert.pem"].as_str().unwrap()),
            root
        );
    }
}

#[test]
fn install_gives_istiod_the_mesh_id_and_cluster_name() {
    let world = World::new(2);
    world.install();
    for i in 1..=2 {
        let context = format!("kind-cluster{i}");
        let deployment = world
            .object(&context, "deployment", Some(NS), "istiod")
            .unwrap();
        let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"][0];
        assert_eq!(env["value"], format!("cluster{i}"));
        let config = world
            .object(&context, "configmap", Some(NS), "istio")
            .unwrap();
        assert!(
            config["data"]["mesh"]
                .as_str()
                .unwrap()
                .contains("meshId: mesh1")
        );
    }
}

// --- remote secrets ---------------------------------------------------------------------------

#[test]
fn the_remote_secret_of_each_cluster_reaches_every_other_cluster() {
    let world = World::new(3);
    // cluster1's peers reach it at its `apiServer`, the others at their kubeconfig server.
    world.write(
        "mesh.yaml",
        "meshID: mesh1\ntrust: {mode: none}\nistio: {version: 1.28.1}\nclusters:\n\
         - {name: cluster1, context: kind-cluster1, apiServer: 'https://cluster1.example:443'}\n\
         - {name: cluster2, context: kind-cluster2}\n\
         - {name: cluster3, context: kind-cluster3}\n",
    );
    world.install();
    let server = |a: usize| match a {
        1 => "https://cluster1.example:443".to_string(),
        _ => format!("https://cluster{a}.test:6443"),
    };
    for b in 1..=3 {
        let docs = link_apply(&world, &format!("kind-cluster{b}"));
        assert_eq!(docs.len(), 2, "cluster{b} gets one secret per peer");
        for a in (1..=3).filter(|&a| a != b) {
            let name = format!("cluster{a}");
            let doc = docs
                .iter()
                .find(|d| d["metadata"]["name"] == format!("istio-remote-secret-{name}"))
                .unwrap_or_else(|| panic!("cluster{b} did not get {name}'s secret"));
            assert_eq!(doc["metadata"]["labels"]["istio/multiCluster"], "true");
            let data = doc["data"].as_object().unwrap();
            assert_eq!(data.keys().collect::<Vec<_>>(), [&name]);
            let kubeconfig: Value =
                serde_yaml::from_str(&decode(data[&name].as_str().unwrap())).unwrap();
            assert_eq!(kubeconfig["clusters"][0]["name"], name);
            assert_eq!(kubeconfig["clusters"][0]["cluster"]["server"], server(a));
            assert_eq!(
                kubeconfig["users"][0]["user"]["token"],
                world.token(&format!("kind-cluster{a}"))
            );
        }
    }
}

#[test]
fn tokens_appear_in_no_argv_no_output_and_no_file() {
    let world = World::new(2);
    world.mesh("generate", 1..=2);
    let mut printed = vec![world.meshup(&["install", "-v"]).run()];
    printed.push(world.meshup(&["link", "-v"]).run());
    printed.push(world.meshup(&["status", "-v"]).run());
    printed.push(world.meshup(&["status", "--output", "json"]).run());
    printed.push(world.meshup(&["plan"]).run());
    let mut secrets = Vec::new();
    for context in world.contexts() {
        let token = world.token(&context);
        assert!(token.starts_with("fake-token-"), "{token}");
        secrets.push(B64.encode(&token));
        secrets.push(token);
    }
    for secret in &secrets {
        for call in world.calls() {
            assert!(
                !call.line().contains(secret.as_str()),
                "token in argv: {}",
                call.line()
            );
        }
        for run in &printed {
            assert!(
                !run.all().contains(secret.as_str()),
                "token printed:\n{}",
                run.all()
            );
        }
        for file in world.files_meshup_could_write() {
            let bytes = std::fs::read(&file).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(secret.as_str()),
                "token in {}",
                file.display()
            );
        }
    }
}

#[test]
fn remote_secret_prints_exactly_one_secret() {
    let world = World::new(2);
    world.install();
    let run = world
        .meshup(&[
            "remote-secret",
            "--context",
            "kind-cluster1",
            "--name",
            "cluster1",
        ])
        .run();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&run.stdout)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 1, "{}", run.stdout);
    let secret = &docs[0];
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["name"], "istio-remote-secret-cluster1");
    assert_eq!(secret["metadata"]["namespace"], NS);
    let kubeconfig: Value =
        serde_yaml::from_str(&decode(secret["data"]["cluster1"].as_str().unwrap())).unwrap();
    let token = world.token("kind-cluster1");
    assert_eq!(kubeconfig["users"][0]["user"]["token"], token.as_str());
    assert!(!run.stderr.contains(&token));
}

// --- idempotency and resuming -----------------------------------------------------------------

#[test]
fn a_second_install_changes_nothing() {
    let world = World::new(2);
    world.mesh("generate", 1..=2);
    world.install();
    world.clear_log();
    let run = world.meshup(&["install"]).run();
    for context in world.contexts() {
        assert_eq!(
            world.mutations_in(&context),
            Vec::<String>::new(),
            "{context}"
        );
    }
    assert!(
        run.stderr.contains("[cluster1] istiod: unchanged"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("[cluster2] link: unchanged"),
        "{}",
        run.stderr
    );
}

fn fail_istiod_in_cluster2(world: &World) -> Run {
    world
        .meshup(&["install"])
        .env("FAKE_FAIL", "kind-cluster2:upgrade --install istiod")
        .status(1)
        .run()
}

#[test]
fn a_failing_istiod_stops_its_cluster_and_skips_linking() {
    let world = World::new(3);
    let run = fail_istiod_in_cluster2(&world);
    assert!(run.stderr.contains("[cluster2]"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("`helm upgrade --install istiod istiod --repo"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("--kube-context kind-cluster2"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("Error: UPGRADE FAILED: timed out waiting for the condition"),
        "{}",
        run.stderr
    );
    for other in ["kind-cluster1", "kind-cluster3"] {
        assert_eq!(
            world.mutations_in(other),
            [
                "apply Namespace/istio-system".to_string(),
                "helm upgrade istio-base".into(),
                "helm upgrade istiod".into(),
                format!("apply Secret/{TOKEN_SECRET}"),
            ],
            "{other} finished its chain"
        );
    }
    assert_eq!(
        world.mutations_in("kind-cluster2"),
        [
            "apply Namespace/istio-system",
            "helm upgrade istio-base",
            "helm upgrade istiod"
        ]
    );
    assert!(
        !world
            .calls()
            .iter()
            .any(|c| c.argv.contains(&"--selector".to_string())),
        "phase 2 (link) ran"
    );
    let failed: Vec<String> = world
        .calls()
        .iter()
        .filter(|c| c.code != 0)
        .map(|c| format!("{} {}", c.context.as_deref().unwrap_or("-"), c.label()))
        .collect();
    assert_eq!(failed, ["kind-cluster2 helm upgrade istiod"]);
}

#[test]
fn an_install_after_a_failure_resumes_where_it_stopped() {
    let world = World::new(3);
    fail_istiod_in_cluster2(&world);
    world.clear_log();
    world.install();
    let upgrades: Vec<String> = world
        .calls()
        .iter()
        .filter(|c| c.verb().0 == "upgrade")
        .map(|c| format!("{} {}", c.context.as_deref().unwrap(), c.release()))
        .collect();
    assert_eq!(upgrades, ["kind-cluster2 istiod"]);
    for context in world.contexts() {
        assert_eq!(link_apply(&world, &context).len(), 2, "{context}");
    }
}

// --- bad input: exit 2, no call ---------------------------------------------------------------

fn assert_bad_input(mesh: &str, needles: &[&str]) {
    let world = World::new(2);
    world.write("mesh.yaml", mesh);
    let run = world.meshup(&["install"]).status(2).run();
    assert!(
        world.calls().is_empty(),
        "a tool was called: {:?}",
        world.calls()
    );
    assert!(run.stderr.contains("mesh.yaml"), "{}", run.stderr);
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "`{needle}` not in:\n{}",
            run.stderr
        );
    }
}

const TWO: &str = "clusters:\n  - name: cluster1\n    context: kind-cluster1\n  - name: cluster2\n    context: kind-cluster2\n";

#[test]
fn an_unknown_key_is_bad_input() {
    assert_bad_input(
        &format!("meshId: mesh1\n{TWO}"),
        &["unknown field `meshId`", "line 1"],
    );
}

#[test]
fn a_duplicate_cluster_name_is_bad_input() {
    assert_bad_input(
        "meshID: mesh1\nclusters:\n  - {name: cluster1, context: kind-cluster1}\n  - {name: cluster1, context: kind-cluster2}\n",
        &["`clusters[1].name`: `cluster1` is used by another cluster"],
    );
}

#[test]
fn a_cluster_name_that_is_not_a_dns_label_is_bad_input() {
    assert_bad_input(
        "meshID: mesh1\nclusters:\n  - {name: Cluster_1, context: kind-cluster1}\n",
        &["`clusters[0].name`: `Cluster_1` is not a DNS-1123 label"],
    );
}

#[test]
fn a_missing_mesh_id_is_bad_input() {
    assert_bad_input(TWO, &["`meshID` is required"]);
}

#[test]
fn an_empty_cluster_list_is_bad_input() {
    assert_bad_input("meshID: mesh1\nclusters: []\n", &["`clusters` is empty"]);
}

#[test]
fn an_unknown_context_is_bad_input() {
    assert_bad_input(
        "meshID: mesh1\nclusters:\n  - {name: cluster1, context: kind-cluster1}\n  - {name: cluster2, context: kind-nowhere}\n",
        &[
            "`clusters[1].context`: `kind-nowhere` is not in the kubeconfig",
            "kind-cluster2",
        ],
    );
}

#[test]
fn malformed_yaml_is_bad_input_with_line_and_column() {
    assert_bad_input(
        "meshID: mesh1\nclusters:\n  - name: cluster1\n   context: kind-cluster1\n",
        &["line 4 column 4"],
    );
}

#[test]
fn a_reserved_value_in_cluster_values_is_bad_input() {
    assert_bad_input(
        &format!("meshID: mesh1\n{TWO}    values:\n      global:\n        meshID: other\n"),
        &[
            "`clusters[1].values.global.meshID` is set to `other`",
            "`meshID`",
        ],
    );
}

// --- preflight ----------------------------------------------------------------------------------

#[test]
fn a_down_context_fails_install_before_anything_changes() {
    let world = World::new(2);
    let run = world
        .meshup(&["install"])
        .env("FAKE_DOWN", "kind-cluster2")
        .status(1)
        .run();
    assert!(run.stderr.contains("[cluster2]"), "{}", run.stderr);
    assert!(run.stderr.contains("`kind-cluster2`"), "{}", run.stderr);
    assert!(!world.calls().is_empty(), "preflight ran");
    let mutating: Vec<String> = world
        .calls()
        .iter()
        .filter(|c| c.mutates())
        .map(Call::line)
        .collect();
    assert!(mutating.is_empty(), "{mutating:#?}");
}

#[test]
fn an_istio_of_another_mesh_fails_preflight() {
    let world = World::new(2);
    world.seed(
        "kind-cluster2",
        &[
            namespace_object(NS),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "istio", "namespace": NS},
                   "data": {"mesh": "defaultConfig:\n  meshId: othermesh\n"}}),
        ],
    );
    let run = world.meshup(&["install"]).status(1).run();
    assert!(run.stderr.contains("[cluster2]"), "{}", run.stderr);
    assert!(run.stderr.contains("mesh `othermesh`"), "{}", run.stderr);
    assert!(!world.calls().iter().any(Call::mutates));
}

// --- link -----------------------------------------------------------------------------------------

#[test]
fn link_removes_the_secrets_of_a_cluster_that_left_the_mesh() {
    let world = World::new(3);
    world.install();
    world.seed(
        "kind-cluster1",
        &[json!({"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": "istio-remote-secret-legacy", "namespace": NS,
                              "labels": {"istio/multiCluster": "true"}},
                 "data": {"legacy": B64.encode("apiVersion: v1\nkind: Config\n")}})],
    );
    world.mesh("none", 1..=2);
    world.clear_log();
    world.meshup(&["link"]).run();
    assert_eq!(
        world.names("kind-cluster1", "secrets", Some(NS)),
        BTreeSet::from([
            TOKEN_SECRET.to_string(),
            "istio-remote-secret-cluster2".into(),
            "istio-remote-secret-legacy".into(),
        ])
    );
    assert_eq!(
        world.names("kind-cluster2", "secrets", Some(NS)),
        BTreeSet::from([
            TOKEN_SECRET.to_string(),
            "istio-remote-secret-cluster1".into()
        ])
    );
    assert!(world.calls_to("kind-cluster3").is_empty());
}

// --- status ---------------------------------------------------------------------------------------

#[test]
fn status_passes_on_an_installed_mesh() {
    let world = World::new(2);
    world.install();
    world.clear_log();
    let run = world.meshup(&["status"]).run();
    assert!(
        run.stdout.contains("mesh `mesh1` is as the mesh file says"),
        "{}",
        run.stdout
    );
    assert!(!world.calls().iter().any(Call::mutates));
}

#[test]
fn status_fails_when_a_remote_secret_is_missing() {
    let world = World::new(2);
    world.install();
    world.kubectl(
        "kind-cluster2",
        &[
            "delete",
            "secret",
            "istio-remote-secret-cluster1",
            "--namespace",
            NS,
        ],
        None,
    );
    let run = world.meshup(&["status"]).status(1).run();
    assert!(
        run.stdout.contains("remote secrets missing for cluster1"),
        "{}",
        run.stdout
    );
}

#[test]
fn status_json_is_one_parseable_document() {
    let world = World::new(2);
    world.install();
    let run = world.meshup(&["status", "--output", "json"]).run();
    let status: Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    assert_eq!(status["ok"], true);
    assert_eq!(status["meshId"], "mesh1");
    assert_eq!(status["clusters"].as_array().unwrap().len(), 2);
    assert_eq!(
        status["clusters"][1]["remoteSecrets"]["present"],
        json!(["cluster1"])
    );
}

#[test]
fn install_json_is_one_document_with_every_cluster_and_step() {
    let world = World::new(2);
    world.mesh("none", 1..=2);
    let run = world.meshup(&["install", "--output", "json"]).run();
    let summary: Value = serde_json::from_str(&run.stdout).expect("stdout is one JSON document");
    assert_eq!(summary["command"], "install");
    assert_eq!(summary["ok"], true);
    let clusters = summary["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 2);
    let steps: Vec<&str> = clusters[0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["namespace", "istio-base", "istiod", "remote secret", "link"]
    );
    // Progress lines are not printed in JSON mode.
    assert!(!run.stderr.contains("started"), "{}", run.stderr);
}

// --- uninstall -----------------------------------------------------------------------------------

#[test]
fn uninstall_removes_secrets_istiod_base_and_namespace_in_that_order() {
    let world = World::new(2);
    world.install();
    world.clear_log();
    world.meshup(&["uninstall", "--yes"]).run();
    for context in world.contexts() {
        assert_eq!(
            world.mutations_in(&context),
            [
                "delete secrets",
                "helm uninstall istiod",
                "helm uninstall istio-base",
                "delete namespace"
            ],
            "{context}"
        );
        let unlink = &world.calls_to(&context)[0];
        assert!(
            unlink
                .line()
                .contains("--selector istio/multiCluster=true,app.kubernetes.io/managed-by=meshup"),
            "{}",
            unlink.line()
        );
        assert!(!world.names(&context, "namespaces", None).contains(NS));
        assert_eq!(
            world
                .names(&context, "customresourcedefinitions", None)
                .len(),
            4,
            "helm keeps the CRDs"
        );
    }
}

#[test]
fn uninstall_with_purge_crds_deletes_istio_crds_only() {
    let world = World::new(2);
    world.install();
    world.seed(
        "kind-cluster1",
        &[
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                 "metadata": {"name": "certificates.cert-manager.io"}}),
        ],
    );
    world.meshup(&["uninstall", "--yes", "--purge-crds"]).run();
    assert_eq!(
        world.names("kind-cluster1", "customresourcedefinitions", None),
        BTreeSet::from(["certificates.cert-manager.io".to_string()])
    );
    assert!(
        world
            .names("kind-cluster2", "customresourcedefinitions", None)
            .is_empty()
    );
}

#[test]
fn a_second_uninstall_succeeds_without_touching_helm() {
    let world = World::new(2);
    world.install();
    world.meshup(&["uninstall", "--yes"]).run();
    world.clear_log();
    world.meshup(&["uninstall", "--yes"]).run();
    assert!(!world.calls().iter().any(|c| c.verb().0 == "uninstall"));
}

// --- commands that contact nothing ---------------------------------------------------------------

#[test]
fn render_writes_the_same_bytes_twice_and_calls_no_tool() {
    let world = World::new(2);
    let read_all = |dir: &str| -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for cluster in ["cluster1", "cluster2"] {
            for file in ["base-values.yaml", "istiod-values.yaml"] {
                let rel = format!("{dir}/{cluster}/{file}");
                files.push((rel.clone(), std::fs::read(world.path(&rel)).unwrap()));
            }
        }
        files
    };
    world.meshup(&["render", "--out", "values"]).run();
    let first = read_all("values");
    world.meshup(&["render", "--out", "values"]).run();
    assert_eq!(first, read_all("values"));
    assert!(world.calls().is_empty());
    let istiod = String::from_utf8(first[1].1.clone()).unwrap();
    assert!(istiod.contains("clusterName: cluster1"), "{istiod}");
}

#[test]
fn plan_prints_every_ordered_pair_and_calls_no_tool() {
    let world = World::new(3);
    let run = world.meshup(&["plan"]).run();
    assert!(world.calls().is_empty());
    let lines: Vec<&str> = run.stdout.lines().collect();
    let mut pairs = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("meshup remote-secret --context kind-cluster") {
            let from = rest.chars().next().unwrap();
            let next = lines[i + 1];
            assert!(next.contains("| kubectl apply"), "{next}");
            let to = next
                .split("--context kind-cluster")
                .nth(1)
                .unwrap()
                .chars()
                .next()
                .unwrap();
            pairs.insert((from, to));
        }
    }
    let all: BTreeSet<(char, char)> = ['1', '2', '3']
        .iter()
        .flat_map(|&a| ['1', '2', '3'].into_iter().map(move |b| (a, b)))
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(pairs, all, "{}", run.stdout);
}

#[test]
fn plan_after_an_install_holds_no_token() {
    let world = World::new(2);
    world.install();
    let run = world.meshup(&["plan"]).run();
    for context in world.contexts() {
        assert!(!run.stdout.contains(&world.token(&context)));
    }
}

// --- trust ------------------------------------------------------------------------------------------

/// Puts a `cacerts` made from another root into cluster2 (as a previous, different install).
fn foreign_cacerts_in_cluster2(world: &World) {
    world.write(
        "other.yaml",
        "meshID: mesh1\ntrust: {mode: generate, dir: other-certs}\nclusters:\n  - {name: cluster2, context: kind-cluster2}\n",
    );
    world.meshup(&["certs", "-f", "other.yaml"]).run();
    let mut data = serde_json::Map::new();
    for file in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        let pem =
            std::fs::read_to_string(world.path(&format!("other-certs/cluster2/{file}"))).unwrap();
        data.insert(file.into(), B64.encode(pem).into());
    }
    world.seed(
        "kind-cluster2",
        &[
            namespace_object(NS),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "cacerts", "namespace": NS}, "data": data}),
        ],
    );
    world.mesh("generate", 1..=2);
}

#[test]
fn a_cacerts_with_another_root_stops_its_cluster_and_names_rotate_ca() {
    let world = World::new(2);
    foreign_cacerts_in_cluster2(&world);
    let run = world.meshup(&["install"]).status(1).run();
    assert!(run.stderr.contains("[cluster2]"), "{}", run.stderr);
    assert!(run.stderr.contains("--rotate-ca"), "{}", run.stderr);
    assert!(
        !world
            .calls_to("kind-cluster2")
            .iter()
            .any(|c| c.tool == "helm"),
        "helm ran in cluster2"
    );
    assert!(
        world
            .mutations_in("kind-cluster1")
            .contains(&"helm upgrade istiod".to_string()),
        "cluster1 went on"
    );
}

#[test]
fn rotate_ca_replaces_a_cacerts_with_another_root() {
    let world = World::new(2);
    foreign_cacerts_in_cluster2(&world);
    world.meshup(&["install", "--rotate-ca"]).run();
    let root = std::fs::read_to_string(world.path("meshup-certs/root-cert.pem")).unwrap();
    let cacerts = world
        .object("kind-cluster2", "secret", Some(NS), "cacerts")
        .unwrap();
    assert_eq!(
        decode(cacerts["data"]["root-cert.pem"].as_str().unwrap()),
        root
    );
}

#[test]
fn private_keys_travel_only_on_the_stdin_of_the_cacerts_apply() {
    let world = World::new(2);
    world.mesh("generate", 1..=2);
    let runs = [
        world.meshup(&["install", "-v"]).run(),
        world.meshup(&["status", "-v"]).run(),
        world.meshup(&["plan"]).run(),
    ];
    for run in &runs {
        assert!(!run.all().contains("PRIVATE KEY"), "{}", run.all());
        assert!(!run.all().contains("-----BEGIN"), "{}", run.all());
    }
    let mut key_carriers = Vec::new();
    for call in world.calls() {
        assert!(!call.line().contains("PRIVATE KEY") && !call.line().contains("-----BEGIN"));
        let key_in_stdin = call.documents().iter().any(|doc| {
            doc["data"].as_object().into_iter().flatten().any(|(_, v)| {
                v.as_str()
                    .is_some_and(|v| decode_lossy(v).contains("PRIVATE KEY"))
            })
        }) || call
            .stdin
            .as_deref()
            .unwrap_or_default()
            .contains("PRIVATE KEY");
        if key_in_stdin {
            key_carriers.push(format!(
                "{} {}",
                call.context.clone().unwrap(),
                call.label()
            ));
        }
    }
    key_carriers.sort();
    assert_eq!(
        key_carriers,
        [
            "kind-cluster1 apply Secret/cacerts",
            "kind-cluster2 apply Secret/cacerts"
        ]
    );
}

fn decode_lossy(b64: &str) -> String {
    B64.decode(b64)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[test]
fn install_restart_restarts_an_istiod_that_ran_before_its_cacerts() {
    let world = World::new(1);
    world.install();
    world.mesh("generate", 1..=1);
    world.clear_log();
    world.meshup(&["install", "--restart"]).run();
    assert_eq!(
        world.mutations_in("kind-cluster1"),
        ["apply Secret/cacerts", "rollout restart"]
    );
    let verbs: Vec<(String, String)> = world
        .calls_to("kind-cluster1")
        .iter()
        .map(|c| (c.verb().0.to_string(), c.verb().1.to_string()))
        .collect();
    let at = |verb: (&str, &str)| {
        verbs
            .iter()
            .position(|v| (v.0.as_str(), v.1.as_str()) == verb)
            .unwrap_or_else(|| panic!("no `kubectl {} {}`", verb.0, verb.1))
    };
    assert!(at(("rollout", "restart")) < at(("rollout", "status")));
    let deployment = world
        .object("kind-cluster1", "deployment", Some(NS), "istiod")
        .unwrap();
    assert!(
        deployment["spec"]["template"]["metadata"]["annotations"]
            ["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );
}

#[test]
fn install_converges_when_cacerts_holds_a_key_meshup_does_not_write() {
    let world = World::new(1);
    world.mesh("generate", 1..=1);
    world.install();
    // Someone else's field manager adds `tls.crt`, which istiod would prefer to meshup's keys.
    world.seed(
        "kind-cluster1",
        &[json!({"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": "cacerts", "namespace": NS},
                 "data": {"tls.crt": B64.encode("not meshup's")}})],
    );
    world.meshup(&["install"]).any_status().run();
    world.clear_log();
    world.meshup(&["install"]).any_status().run();
    assert!(
        !world
            .mutations_in("kind-cluster1")
            .contains(&"apply Secret/cacerts".to_string()),
        "every install re-applies cacerts: server-side apply cannot remove a key another \
         field manager owns, so the live secret never matches"
    );
}

#[test]
fn a_second_install_with_a_float_value_leaves_istiod_alone() {
    let world = World::new(1);
    // Istio's own default for pilot.traceSampling is 1.0.
    world.write(
        "mesh.yaml",
        "meshID: mesh1\ntrust: {mode: none}\nistio: {version: 1.28.1}\n\
         values:\n  pilot:\n    traceSampling: 1.0\n\
         clusters:\n  - {name: cluster1, context: kind-cluster1}\n",
    );
    world.install();
    world.clear_log();
    world.install();
    assert_eq!(
        world.mutations_in("kind-cluster1"),
        Vec::<String>::new(),
        "helm prints `1.0` back as `1`, and meshup takes that for a change"
    );
}
