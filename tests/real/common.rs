//! The real tier's harness: real clusters from `scripts/real-clusters.sh up` (real
//! kube-apiservers, etcd, controllers, kwok nodes and a real istiod per istiod pod), driven by
//! the meshup binary and the real helm and kubectl.
//!
//! A test that cannot start its clusters (no root, no Go-built binaries) fails with the
//! launcher's message: the real tier never passes by skipping.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

pub const NS: &str = "istio-system";

/// The Istio builds the launcher runs (scripts/pins.env `ISTIO_BUILDS`): the suite upgrades
/// from the first to the second.
pub const FROM: &str = "1.30.0";
pub const TO: &str = "1.31.0";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Real clusters `real-1` … `real-N`, taken down when dropped.
pub struct Real {
    pub dir: PathBuf,
    pub n: usize,
    home: tempfile::TempDir,
    tools: PathBuf,
}

impl Real {
    /// Starts `n` real clusters in a new directory; panics with the launcher's output when it
    /// cannot.
    pub fn up(n: usize) -> Real {
        Real::with_tools("helm4", n)
    }

    pub fn with_tools(tools: &str, n: usize) -> Real {
        let home = tempfile::Builder::new()
            .prefix("meshup-real")
            .tempdir()
            .unwrap();
        let dir = home.path().join("clusters");
        let started = Instant::now();
        let out = Command::new(repo().join("scripts/real-clusters.sh"))
            .args(["up", &n.to_string()])
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("scripts/real-clusters.sh runs");
        assert!(
            out.status.success(),
            "scripts/real-clusters.sh up {n} failed ({:?}):\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{n} real clusters up in {:.1?}", started.elapsed());
        Real {
            dir,
            n,
            home,
            tools: repo().join(".tools").join(tools),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Istio's charts of `version`, stamped, as the launcher put them beside its istiod build.
    pub fn charts(&self, version: &str) -> PathBuf {
        self.dir.join("charts").join(version)
    }

    /// A mesh file: clusters `cluster1` … on contexts `real-1` …, one network unless
    /// `networks` gives each cluster's; `extra` is appended to the top level.
    pub fn mesh_file(
        &self,
        name: &str,
        version: &str,
        networks: Option<&[&str]>,
        extra: &str,
    ) -> String {
        let mut text = format!(
            "meshID: mesh1\nistio:\n  version: {version}\n  charts: {}\ntrust:\n  dir: {}\n{extra}",
            self.charts(version).display(),
            self.path("certs").display()
        );
        if networks.is_none() {
            text.push_str("network: network1\n");
        }
        text.push_str("clusters:\n");
        for i in 1..=self.n {
            text.push_str(&format!("  - name: cluster{i}\n    context: real-{i}\n"));
            if let Some(networks) = networks {
                text.push_str(&format!("    network: {}\n", networks[i - 1]));
            }
        }
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }

    pub fn meshup(&self, args: &[&str]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_meshup"));
        if !args.contains(&"--output") {
            command.args(["--output", "plain"]);
        }
        command
            .args(args)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--helm")
            .arg(self.tools.join("helm"))
            .arg("--kubectl")
            .arg(self.tools.join("kubectl"));
        if !args.contains(&"--timeout") {
            command.args(["--timeout", "120s"]);
        }
        command
            .current_dir(self.home.path())
            .stdin(Stdio::null())
            .env("HOME", self.home.path())
            .env("XDG_CACHE_HOME", self.home.path().join(".cache"))
            .env("XDG_CONFIG_HOME", self.home.path().join(".config"))
            .env_remove("KUBECONFIG")
            .env_remove("MESHUP_FILE");
        let started = Instant::now();
        let run = Run::from(command.output().expect("meshup runs"));
        eprintln!(
            "meshup {} → {:?} in {:.1?}",
            args.join(" "),
            run.code,
            started.elapsed()
        );
        run
    }

    /// kubectl against `context`; the output of a run that must succeed.
    pub fn kubectl(&self, context: &str, args: &[&str]) -> String {
        let out = self.kubectl_out(context, args);
        assert!(
            out.status.success(),
            "kubectl --context {context} {}: {:?}\n{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn kubectl_out(&self, context: &str, args: &[&str]) -> Output {
        Command::new(self.tools.join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(["--context", context, "--request-timeout", "30s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("kubectl runs")
    }

    /// kubectl against `context` with `input` on its stdin (`apply -f -` and the like).
    pub fn kubectl_stdin(&self, context: &str, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(self.tools.join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(["--context", context, "--request-timeout", "30s"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().expect("kubectl runs")
    }

    /// The real helm against `context`.
    pub fn helm(&self, context: &str, args: &[&str]) -> Output {
        Command::new(self.tools.join("helm"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(["--kube-context", context])
            .args(args)
            .stdin(Stdio::null())
            .env("HOME", self.home.path())
            .output()
            .expect("helm runs")
    }

    pub fn json(&self, context: &str, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(context, &all)).unwrap()
    }

    /// The API server address of `context` (`https://IP:6443`).
    pub fn server(&self, context: &str) -> String {
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(self.kubeconfig()).unwrap()).unwrap();
        config["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == context)
            .and_then(|c| c["cluster"]["server"].as_str())
            .unwrap()
            .to_string()
    }

    /// The HTTP status `context`'s API server answers to a bearer `token` (GET /api).
    pub fn status_with_token(&self, context: &str, token: &str) -> u16 {
        let out = Command::new(self.tools.join("kubectl"))
            .arg("--kubeconfig=/dev/null")
            .arg(format!("--server={}", self.server(context)))
            .arg("--insecure-skip-tls-verify")
            .arg(format!("--token={token}"))
            .args(["get", "--raw", "/api", "-v=6"])
            .stdin(Stdio::null())
            .output()
            .expect("kubectl runs");
        let text = String::from_utf8_lossy(&out.stderr);
        // kubectl -v=6 logs each response: `... url="..." status="401 Unauthorized" ...`.
        if let Some(code) = text
            .split("status=\"")
            .nth(1)
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
        {
            return code;
        }
        panic!("no status in kubectl's answer: {text}")
    }

    /// The reader tokens in `context`'s remote secrets, by the cluster each one names.
    pub fn held_tokens(&self, context: &str) -> Vec<(String, String)> {
        let list = self.json(
            context,
            &["get", "secrets", "-n", NS, "-l", "istio/multiCluster=true"],
        );
        let mut out = Vec::new();
        for secret in list["items"].as_array().unwrap() {
            for (cluster, data) in secret["data"].as_object().unwrap() {
                let text = decode(data);
                let config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
                let token = config["users"][0]["user"]["token"]
                    .as_str()
                    .unwrap()
                    .to_string();
                out.push((cluster.clone(), token));
            }
        }
        out.sort();
        out
    }

    /// Every istiod pod's log in `context`.
    pub fn istiod_logs(&self, context: &str) -> String {
        self.kubectl(
            context,
            &[
                "logs",
                "-n",
                NS,
                "-l",
                "app=istiod",
                "-c",
                "discovery",
                "--tail=-1",
                "--prefix",
            ],
        )
    }

    /// Waits (bounded) until `check` holds.
    pub fn until(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?}: {what}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Real {
    fn drop(&mut self) {
        let out = Command::new(repo().join("scripts/real-clusters.sh"))
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
        if let Ok(out) = out
            && !out.status.success()
        {
            eprintln!("down: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// The GitOps engines on `real`'s clusters (`scripts/engines.sh up DIR MODE`): Flux's
/// controllers as host processes, a Helm chart repository and a Git server; stopped when
/// dropped (declare it after the `Real` it runs on).
pub struct Engines {
    dir: PathBuf,
    /// What `up` printed (DIR/engines/engines.json): `helm_repository`, `git.repository`,
    /// `git.path`, `kubeconfig_secrets`, `controllers`, …
    pub state: Value,
}

impl Engines {
    /// `mode`: `hub` (controllers against real-1 only) or `every` (a set per cluster).
    pub fn up(real: &Real, mode: &str) -> Engines {
        let started = Instant::now();
        let out = Command::new(repo().join("scripts/engines.sh"))
            .arg("up")
            .arg(&real.dir)
            .arg(mode)
            .stdin(Stdio::null())
            .output()
            .expect("scripts/engines.sh runs");
        assert!(
            out.status.success(),
            "scripts/engines.sh up {mode} failed ({:?}):\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("engines up ({mode}) in {:.1?}", started.elapsed());
        Engines {
            dir: real.dir.clone(),
            state: serde_json::from_slice(&out.stdout).expect("engines.sh up prints its state"),
        }
    }

    /// `scripts/engines.sh status`: each process and its resident memory.
    pub fn status(&self) -> String {
        let out = Command::new(repo().join("scripts/engines.sh"))
            .arg("status")
            .arg(&self.dir)
            .output()
            .expect("scripts/engines.sh runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The last `lines` lines of each engine log whose file name contains `filter`.
    pub fn logs(&self, filter: &str, lines: usize) -> String {
        let mut out = String::new();
        let dir = self.dir.join("engines").join("logs");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if !name.contains(filter) {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("==> {name}\n"));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Engines {
    fn drop(&mut self) {
        let out = Command::new(repo().join("scripts/engines.sh"))
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
        if let Ok(out) = out
            && !out.status.success()
        {
            eprintln!("engines down: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

pub fn decode(value: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str().unwrap_or_default())
        .unwrap();
    String::from_utf8(bytes).unwrap()
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
        assert_eq!(self.code, Some(code), "{}", self.all());
        self
    }

    pub fn all(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.all()))
    }
}

/// Names of the objects of a `kubectl get -o json` list.
pub fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}
