//! Running steps. `ProcessRunner` is the only code in meshup that spawns a process: it gives
//! every child the step timeout, stops all children on Ctrl-C, and never shows stdin.
//! `RecordingRunner` lets unit tests see the argv sequence without spawning anything.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::tools::reporter::Reporter;
use crate::tools::step::{Step, Tool};

/// What a finished child left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// May hold secrets (a token secret read back as JSON): never print it.
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs steps.
pub trait Runner: Send + Sync {
    /// Runs one step to completion. A non-zero exit is an `Ok(Output)`; use [`run_ok`] when
    /// only success will do.
    fn run(&self, step: &Step) -> Result<Output, StepError>;

    /// The program it runs for `tool` (its file name is helm's field manager), when known.
    fn program(&self, tool: crate::tools::step::Tool) -> Option<PathBuf> {
        let _ = tool;
        None
    }
}

/// Runs a step and turns a non-zero exit into a [`StepError::Failed`].
pub fn run_ok(runner: &dyn Runner, step: &Step) -> Result<Output, StepError> {
    let output = runner.run(step)?;
    if output.success() {
        Ok(output)
    } else {
        Err(StepError::failed(step, &output))
    }
}

/// Why a step did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// It ran and exited non-zero (or was killed by a signal).
    #[error("{0}")]
    Failed(Box<Failure>),
    /// It could not be started.
    #[error("{}could not start `{command}`: {error}", prefix(.cluster))]
    Spawn {
        command: String,
        cluster: String,
        error: String,
    },
    /// It outlived the step timeout and was killed.
    #[error(
        "{}`{command}` did not finish within {}s and was stopped\n  hint: raise --timeout, or check that the cluster answers (`kubectl cluster-info`)",
        prefix(.cluster), .after.as_secs()
    )]
    TimedOut {
        command: String,
        cluster: String,
        after: Duration,
    },
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// A tool printed something meshup cannot read: never taken for "absent".
    #[error(
        "{}`{command}` printed output meshup cannot read ({problem})\n  hint: check that `{tool}` is a real {tool} of a supported version",
        prefix(.cluster), tool = .command.split(' ').next().unwrap_or_default()
    )]
    Malformed {
        cluster: String,
        command: String,
        problem: String,
    },
    /// Something meshup itself found wrong after a call (an unexpected answer).
    #[error("{}{message}{}", prefix(.cluster), hint_line(.hint))]
    Other {
        cluster: String,
        message: String,
        hint: Option<String>,
    },
}

/// The details of a failed call.
#[derive(Debug)]
pub struct Failure {
    pub cluster: String,
    /// The command line: argv only, never stdin.
    pub command: String,
    pub code: Option<i32>,
    /// The last lines of stderr.
    pub stderr_tail: String,
    pub hint: Option<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.code {
            Some(code) => format!("exit code {code}"),
            None => "a signal".to_string(),
        };
        write!(
            f,
            "{}`{}` failed with {status}",
            prefix(&self.cluster),
            self.command
        )?;
        if !self.stderr_tail.is_empty() {
            write!(f, "\n  stderr (last lines):")?;
            for line in self.stderr_tail.lines() {
                write!(f, "\n    {line}")?;
            }
        }
        write!(f, "{}", hint_line(&self.hint))
    }
}

/// `[cluster] ` before a message about a cluster.
fn prefix(cluster: &str) -> String {
    if cluster.is_empty() {
        String::new()
    } else {
        format!("[{cluster}] ")
    }
}

fn hint_line(hint: &Option<String>) -> String {
    hint.as_ref()
        .map(|h| format!("\n  hint: {h}"))
        .unwrap_or_default()
}

/// How many stderr lines a failure shows.
const TAIL_LINES: usize = 12;

impl StepError {
    pub fn failed(step: &Step, output: &Output) -> Self {
        let tail = tail(&output.stderr, TAIL_LINES);
        StepError::Failed(Box::new(Failure {
            cluster: step.cluster.clone(),
            command: step.command_line(),
            code: output.code,
            hint: hint(step, &output.stderr),
            stderr_tail: tail,
        }))
    }

    /// Output of `step` that cannot be read: `problem` says why (never quoting the output,
    /// which may hold a token).
    pub fn malformed(step: &Step, problem: impl fmt::Display) -> Self {
        StepError::Malformed {
            cluster: step.cluster.clone(),
            command: step.command_line(),
            problem: problem.to_string(),
        }
    }

    pub fn other(cluster: &str, message: impl Into<String>, hint: Option<String>) -> Self {
        StepError::Other {
            cluster: cluster.to_string(),
            message: message.into(),
            hint,
        }
    }

    pub fn is_interrupted(&self) -> bool {
        matches!(self, StepError::Interrupted)
    }

    /// Why this failure is worth retrying, when it is one an API server that blinked would
    /// cause (connection refused or reset, EOF, timeouts, 429/5xx, a changed etcd leader, an
    /// optimistic-lock conflict). Bad values, RBAC or a missing CRD are never retried.
    pub fn transient_cause(&self) -> Option<&'static str> {
        let StepError::Failed(failure) = self else {
            return None;
        };
        let text = failure.stderr_tail.to_lowercase();
        TRANSIENT
            .iter()
            .find(|(needles, _)| needles.iter().any(|n| text.contains(n)))
            .map(|(_, cause)| *cause)
    }
}

/// Signs of a failure that a retry can fix, and how to say it.
const TRANSIENT: &[(&[&str], &str)] = &[
    (&["connection refused"], "connection refused"),
    (
        &["connection reset by peer", "broken pipe"],
        "connection reset",
    ),
    (&["tls handshake timeout"], "TLS handshake timeout"),
    (&["i/o timeout"], "i/o timeout"),
    (
        &["http2: client connection lost", "http2: server sent goaway"],
        "HTTP/2 connection lost",
    ),
    (
        &["unexpected eof", ": eof", "\"eof\""],
        "connection closed (EOF)",
    ),
    (
        &[
            "etcdserver: leader changed",
            "etcdserver: request timed out",
        ],
        "etcd leader changed",
    ),
    (
        &["the object has been modified"],
        "conflicting write (the object has been modified)",
    ),
    (
        &["toomanyrequests", "too many requests", "(429)"],
        "HTTP 429",
    ),
    (
        &[
            "serviceunavailable",
            "service unavailable",
            "the server is currently unable to handle the request",
            "(503)",
        ],
        "HTTP 503",
    ),
    (
        &["failed calling webhook"],
        "a validating webhook did not answer (istiod not ready)",
    ),
    (
        &["failed to download openapi"],
        "kubectl could not read the API server's schema",
    ),
    (
        &["internalerror", "internal error occurred", "(500)"],
        "HTTP 500",
    ),
    (&["bad gateway", "(502)"], "HTTP 502"),
    (&["gateway timeout", "(504)"], "HTTP 504"),
];

/// The last `n` non-empty lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A hint for failures whose cause is known from the message.
fn hint(step: &Step, stderr: &str) -> Option<String> {
    let context = step
        .args
        .windows(2)
        .find(|w| w[0] == "--context" || w[0] == "--kube-context")
        .map(|w| w[1].clone())
        .unwrap_or_default();
    let lower = stderr.to_lowercase();
    let namespace = step
        .args
        .windows(2)
        .find(|w| w[0] == "--namespace")
        .map(|w| w[1].clone())
        .unwrap_or_default();
    // The namespace from the message: an apply names it only in its manifest.
    let missing = stderr
        .split("namespaces \"")
        .nth(1)
        .and_then(|rest| rest.split_once("\" not found"))
        .map(|(name, _)| name.to_string());
    if let Some(missing) = missing.filter(|m| namespace.is_empty() || *m == namespace) {
        return Some(format!(
            "namespace `{missing}` does not exist in context `{context}`; install Istio there first (`meshup install`)"
        ));
    }
    let known: &[(&[&str], String)] = &[
        (
            &["failed to download openapi"],
            format!("kubectl validates what it sends against the API server's OpenAPI schema, which context `{context}` did not serve; check the API server (`kubectl --context {context} get --raw /openapi/v3`)"),
        ),
        (
            &["failed calling webhook"],
            format!("a webhook that fails closed did not answer: istiod's validation webhook refuses Istio resources while no istiod pod is ready (restarting or upgrading); wait for `kubectl --context {context} rollout status deployment/istiod -n {namespace}`, then run meshup again"),
        ),
        (
            &["another operation (install/upgrade/rollback) is in progress"],
            "an earlier helm run was interrupted and left the release pending; `helm rollback` it (or `helm uninstall` a pending install), then re-run meshup".to_string(),
        ),
        (
            &["connection refused", "no such host", "i/o timeout", "no route to host", "unable to connect to the server"],
            format!("the API server of context `{context}` does not answer; check it with `kubectl --context {context} cluster-info`"),
        ),
        (
            &["context was not found", "context \"", "does not exist"],
            format!("context `{context}` is missing from the kubeconfig; check `kubectl config get-contexts`"),
        ),
        (
            &["forbidden", "unauthorized"],
            format!("the credentials of context `{context}` lack permission; meshup needs cluster-admin to install Istio"),
        ),
        (
            &["timed out waiting for the condition", "context deadline exceeded", "resource not ready"],
            format!("a resource did not become ready in time; look at the pods (`kubectl --context {context} get pods -n {namespace}`) or raise --timeout"),
        ),
        (
            &["invalid ownership metadata", "exists and cannot be imported into the current release"],
            "Istio objects exist that helm does not own (an istioctl install?); remove that install first".to_string(),
        ),
        (
            &["failed to fetch", "not found in", "no chart version found", "failed to download", "chart not found"],
            "the chart could not be fetched; check `istio.version` and `istio.charts` (use a local chart directory when air-gapped)".to_string(),
        ),
    ];
    known
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| lower.contains(n)))
        .map(|(_, hint)| hint.clone())
}

/// How often Ctrl-C was pressed; checked by every wait.
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);
/// While cleanup runs after a Ctrl-C, the presses it may ignore (see [`cleanup`]).
static CLEANUP_FLOOR: AtomicUsize = AtomicUsize::new(0);
/// Set while meshup waits for an answer on the terminal.
pub static PROMPTING: AtomicBool = AtomicBool::new(false);
/// The children running now, so Ctrl-C can stop them all.
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// A running child, to stop on Ctrl-C.
#[derive(Clone)]
struct Child(Arc<duct::Handle>);

impl Child {
    fn pids(&self) -> Vec<u32> {
        self.0.pids()
    }

    fn is(&self, other: &Child) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

fn track(child: &Child) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(child.clone());
}

fn untrack(child: &Child) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|c| !c.is(child));
}

/// Installs the Ctrl-C (and SIGTERM) handler: it marks the run interrupted and asks every
/// running child to stop with SIGTERM, so helm can record the release as failed rather than
/// leave it pending. A child still running after [`STOP_GRACE`] is killed by its waiter.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        INTERRUPTS.fetch_add(1, Ordering::SeqCst);
        if PROMPTING.load(Ordering::SeqCst) {
            // Waiting for the user's answer: nothing runs, nothing to stop.
            eprintln!();
            std::process::exit(130);
        }
        for child in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for pid in child.pids() {
                // SAFETY: kill(2) with a pid of our own child and a valid signal number.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
    });
}

/// How long a child may take to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTS.load(Ordering::SeqCst) > 0
}

/// Whether running steps must stop: Ctrl-C was pressed (again, during [`cleanup`]).
fn stopping() -> bool {
    INTERRUPTS.load(Ordering::SeqCst) > CLEANUP_FLOOR.load(Ordering::SeqCst)
}

/// Runs `f`, whose steps undo what a command created, even after a Ctrl-C; another Ctrl-C
/// stops it too.
pub fn cleanup<R>(f: impl FnOnce() -> R) -> R {
    CLEANUP_FLOOR.store(INTERRUPTS.load(Ordering::SeqCst), Ordering::SeqCst);
    let result = f();
    CLEANUP_FLOOR.store(0, Ordering::SeqCst);
    result
}

/// Sleeps up to `d`, waking early on Ctrl-C. Returns `Err(Interrupted)` if it was pressed.
pub fn sleep(d: Duration) -> Result<(), StepError> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stopping() {
            return Err(StepError::Interrupted);
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    if stopping() {
        Err(StepError::Interrupted)
    } else {
        Ok(())
    }
}

/// Runs steps as real processes.
pub struct ProcessRunner {
    pub helm: PathBuf,
    pub kubectl: PathBuf,
    /// The longest a child may run. helm's and kubectl's own `--timeout` are set to the same
    /// value, so a small grace lets their clearer message come first.
    pub timeout: Duration,
    /// Extra time beyond `timeout` before the child is killed (normally [`GRACE`]).
    pub grace: Duration,
    pub reporter: Arc<Reporter>,
}

/// Extra time a child gets beyond its own `--timeout` before meshup kills it.
pub const GRACE: Duration = Duration::from_secs(15);

impl ProcessRunner {
    fn program(&self, step: &Step) -> &PathBuf {
        match step.tool {
            Tool::Helm => &self.helm,
            Tool::Kubectl => &self.kubectl,
        }
    }

    fn spawn_error(step: &Step, e: impl fmt::Display) -> StepError {
        StepError::Spawn {
            command: step.command_line(),
            cluster: step.cluster.clone(),
            error: e.to_string(),
        }
    }
}

impl Runner for ProcessRunner {
    fn program(&self, tool: Tool) -> Option<PathBuf> {
        Some(match tool {
            Tool::Helm => self.helm.clone(),
            Tool::Kubectl => self.kubectl.clone(),
        })
    }

    fn run(&self, step: &Step) -> Result<Output, StepError> {
        if stopping() {
            return Err(StepError::Interrupted);
        }
        self.reporter.command(step);
        let mut expression = duct::cmd(self.program(step), &step.args)
            .stdout_capture()
            .stderr_capture()
            .unchecked();
        expression = match &step.stdin {
            Some(bytes) => expression.stdin_bytes(bytes.expose().clone()),
            None => expression.stdin_null(),
        };
        let handle = Arc::new(expression.start().map_err(|e| Self::spawn_error(step, e))?);
        let child = Child(handle.clone());
        track(&child);
        let deadline = Instant::now() + self.timeout + self.grace;
        let result = loop {
            match handle.wait_timeout(Duration::from_millis(100)) {
                Ok(Some(output)) => {
                    break if stopping() {
                        Err(StepError::Interrupted)
                    } else {
                        Ok(Output {
                            code: output.status.code(),
                            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                        })
                    };
                }
                Ok(None) if stopping() => {
                    if handle.wait_timeout(STOP_GRACE).ok().flatten().is_none() {
                        let _ = handle.kill();
                    }
                    break Err(StepError::Interrupted);
                }
                Ok(None) if Instant::now() >= deadline => {
                    let _ = handle.kill();
                    break Err(StepError::TimedOut {
                        command: step.command_line(),
                        cluster: step.cluster.clone(),
                        after: self.timeout + self.grace,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = handle.kill();
                    break Err(Self::spawn_error(step, e));
                }
            }
        };
        untrack(&child);
        result
    }
}

/// A runner for unit tests: records every step and answers with a function of the step.
#[cfg(test)]
pub struct RecordingRunner<F> {
    pub calls: Mutex<Vec<Step>>,
    respond: F,
}

#[cfg(test)]
impl<F: Fn(&Step) -> Output + Send + Sync> RecordingRunner<F> {
    pub fn new(respond: F) -> Self {
        Self {
            calls: Mutex::new(Vec::new()),
            respond,
        }
    }

    /// The command lines run so far, in order.
    pub fn command_lines(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(Step::command_line)
            .collect()
    }
}

#[cfg(test)]
impl<F: Fn(&Step) -> Output + Send + Sync> Runner for RecordingRunner<F> {
    fn run(&self, step: &Step) -> Result<Output, StepError> {
        self.calls.lock().unwrap().push(step.clone());
        Ok((self.respond)(step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::sensitive::Sensitive;

    fn step(tool: Tool, args: &[&str]) -> Step {
        Step {
            cluster: "cluster2".into(),
            tool,
            args: args.iter().map(|s| s.to_string()).collect(),
            stdin: None,
        }
    }

    #[test]
    fn failures_name_cluster_command_code_and_stderr_tail() {
        let s = step(
            Tool::Helm,
            &[
                "upgrade",
                "--install",
                "istiod",
                "--kube-context",
                "kind-c2",
            ],
        );
        let stderr = (1..=20)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let error = StepError::failed(
            &s,
            &Output {
                code: Some(1),
                stdout: String::new(),
                stderr,
            },
        );
        let text = error.to_string();
        assert!(text.starts_with("[cluster2] `helm upgrade --install istiod --kube-context kind-c2` failed with exit code 1"), "{text}");
        assert!(
            text.contains("line 20") && text.contains("line 9") && !text.contains("line 8\n"),
            "{text}"
        );
    }

    #[test]
    fn known_failures_get_a_hint_naming_the_context() {
        let s = step(Tool::Kubectl, &["get", "ns", "--context", "kind-c2"]);
        let output = Output {
            code: Some(1),
            stdout: String::new(),
            stderr: "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?\ndial tcp: connection refused".into(),
        };
        let text = StepError::failed(&s, &output).to_string();
        assert!(
            text.contains("hint: the API server of context `kind-c2` does not answer"),
            "{text}"
        );
    }

    fn failing(stderr: &str) -> StepError {
        StepError::failed(
            &step(Tool::Kubectl, &["apply"]),
            &Output {
                code: Some(1),
                stdout: String::new(),
                stderr: stderr.into(),
            },
        )
    }

    #[test]
    fn a_blinking_api_server_is_transient() {
        for (stderr, cause) in [
            (
                "Get \"https://127.0.0.1:6443/api\": read tcp 127.0.0.1:5->127.0.0.1:6443: read: connection reset by peer",
                "connection reset",
            ),
            (
                "Error: Kubernetes cluster unreachable: Get \"https://x/version\": dial tcp 127.0.0.1:6443: connect: connection refused",
                "connection refused",
            ),
            (
                "Error from server (ServiceUnavailable): the server is currently unable to handle the request",
                "HTTP 503",
            ),
            (
                "Error from server (InternalError): Internal error occurred: etcdserver: leader changed",
                "etcd leader changed",
            ),
            (
                "Error from server (Conflict): Operation cannot be fulfilled on leases.coordination.k8s.io \"x\": the object has been modified; please apply your changes to the latest version and try again",
                "conflicting write (the object has been modified)",
            ),
            (
                "Error: INSTALLATION FAILED: Get \"https://x/apis\": unexpected EOF",
                "connection closed (EOF)",
            ),
            (
                "Error from server (TooManyRequests): the server has received too many requests",
                "HTTP 429",
            ),
            (
                "Error from server (InternalError): error when creating \"STDIN\": Internal error occurred: failed calling webhook \"validation.istio.io\": failed to call webhook: Post \"https://istiod.istio-system.svc:443/validate?timeout=10s\": no endpoints available for service \"istiod\"",
                "a validating webhook did not answer (istiod not ready)",
            ),
        ] {
            assert_eq!(failing(stderr).transient_cause(), Some(cause), "{stderr}");
        }
    }

    #[test]
    fn bad_values_rbac_and_missing_kinds_are_not_transient() {
        for stderr in [
            "Error from server (Forbidden): secrets is forbidden: User \"x\" cannot create resource",
            "Error from server (Invalid): Deployment.apps \"istiod\" is invalid: spec.replicas: Invalid value: -1",
            "error: resource mapping not found for name: \"x\": no matches for kind \"Gateway\" in version \"networking.istio.io/v1\"",
            "Error: UPGRADE FAILED: context deadline exceeded",
        ] {
            assert_eq!(failing(stderr).transient_cause(), None, "{stderr}");
        }
        assert_eq!(StepError::Interrupted.transient_cause(), None);
    }

    #[test]
    fn failures_never_show_stdin() {
        let mut s = step(Tool::Kubectl, &["apply", "-f", "-"]);
        s.stdin = Some(Sensitive::new(b"token: c2VjcmV0".to_vec()));
        let text = StepError::failed(
            &s,
            &Output {
                code: Some(1),
                ..Output::default()
            },
        )
        .to_string();
        assert!(!text.contains("c2VjcmV0"), "{text}");
    }

    fn runner(timeout: Duration) -> ProcessRunner {
        ProcessRunner {
            helm: PathBuf::from("/bin/sh"),
            kubectl: PathBuf::from("/bin/sh"),
            timeout,
            grace: Duration::ZERO,
            reporter: Arc::new(Reporter::new(
                crate::tools::reporter::Mode::Plain,
                true,
                false,
            )),
        }
    }

    #[test]
    fn process_runner_kills_a_child_that_outlives_the_timeout() {
        let started = Instant::now();
        let error = runner(Duration::from_millis(300))
            .run(&step(Tool::Helm, &["-c", "sleep 30"]))
            .unwrap_err();
        assert!(matches!(error, StepError::TimedOut { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn process_runner_feeds_stdin_and_captures_output() {
        let s = Step {
            stdin: Some(Sensitive::new(b"hello".to_vec())),
            ..step(Tool::Helm, &["-c", "cat; echo oops >&2; exit 3"])
        };
        let output = runner(Duration::from_secs(10)).run(&s).unwrap();
        assert_eq!(output.code, Some(3));
        assert_eq!(output.stdout, "hello");
        assert_eq!(output.stderr, "oops\n");
    }

    #[test]
    fn process_runner_reports_a_missing_binary() {
        let mut r = runner(Duration::from_secs(10));
        r.kubectl = PathBuf::from("/nonexistent/kubectl");
        let error = r.run(&step(Tool::Kubectl, &["version"])).unwrap_err();
        assert!(matches!(error, StepError::Spawn { .. }), "{error}");
    }
}
