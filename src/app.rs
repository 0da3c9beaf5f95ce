//! Runs one command: validate the input, then act. Every path that touches a cluster first
//! builds a validated `Mesh` (exit 2 on bad input, nothing touched).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::CommandFactory;
use color_eyre::Result;
use color_eyre::eyre::{WrapErr, eyre};

use crate::cli::{Cli, Command, GlobalArgs, InstallArgs, OutputFormat};
use crate::error::{InputError, Interrupted, Reported};
use crate::exec::{self, Ctx, Summary};
use crate::kubeconfig::Kubeconfig;
use crate::mesh::{self, Charts, Mesh};
use crate::plan;
use crate::preflight::{self, Level};
use crate::remote_secret;
use crate::reporter::{Mode, Reporter};
use crate::runner::{ProcessRunner, Runner, StepError};
use crate::status;
use crate::step::{Target, Tool};
use crate::trust::{self, KeyType, Trust, TrustMode};
use crate::values;

pub fn run(cli: Cli) -> Result<()> {
    let Cli {
        command,
        global,
        mesh: mesh_args,
    } = cli;
    let reporter = Arc::new(Reporter::new(mode(&global), global.quiet, global.verbose));
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "meshup", &mut std::io::stdout());
            Ok(())
        }
        Command::Render { out } => {
            let mesh = mesh::load(&mesh_args, None)?;
            warn_about_mesh(&reporter, &mesh);
            let written = values::write(&mesh, &out)
                .wrap_err_with(|| format!("cannot write values under {}", out.display()))?;
            for path in written {
                reporter.info(&format!("wrote {}", path.display()));
            }
            Ok(())
        }
        Command::Plan { values_dir } => {
            let mesh = mesh::load(&mesh_args, None)?;
            warn_about_mesh(&reporter, &mesh);
            let script = plan::script(
                &mesh,
                &plan::install(&mesh),
                &plan::ScriptOptions {
                    values_dir: &values_dir,
                    mesh_flags: &mesh_args.override_flags(),
                    kubeconfig: global.kubeconfig.as_deref(),
                    timeout: global.timeout,
                },
            );
            print_stdout(&script)
        }
        Command::Certs { key_type } => {
            let mesh = mesh::load(&mesh_args, None)?;
            let trust = prepare_trust(&reporter, &mesh, key_type.into())?;
            match trust {
                None => reporter.info("trust.mode is `none`: no certificates"),
                Some(trust) => {
                    let root =
                        trust::fingerprint(&trust.root_cert_pem).map_err(|e| eyre!("{e}"))?;
                    reporter.info(&format!("root CA {root} in {}", mesh.trust.dir.display()));
                    for name in trust.clusters.keys() {
                        reporter.info(&format!(
                            "intermediate CA for `{name}` in {}",
                            mesh.trust.dir.join(name).display()
                        ));
                    }
                }
            }
            Ok(())
        }
        Command::RemoteSecret {
            context,
            name,
            server,
            namespace,
        } => remote_secret_command(&global, &reporter, &context, &name, server, &namespace),
        Command::Preflight => {
            let session = Session::open(&global, &mesh_args, &reporter)?;
            let checks = session.preflight();
            report_checks(&reporter, &checks)?;
            if checks.iter().any(|c| c.level == Level::Fail) {
                return Err(Reported.into());
            }
            Ok(())
        }
        Command::Install(args) => install(&global, &mesh_args, &reporter, &args),
        Command::Link => {
            let session = Session::open(&global, &mesh_args, &reporter)?;
            session.require_tools()?;
            let summary = exec::execute(
                &session.ctx(None, false, false, PathBuf::new()),
                &plan::link(&session.mesh),
            );
            finish(&reporter, "link", &summary)
        }
        Command::Status => {
            let session = Session::open(&global, &mesh_args, &reporter)?;
            session.require_tools()?;
            let status = status::collect(&session.ctx(None, false, false, PathBuf::new()));
            if reporter.mode() == Mode::Json {
                print_stdout(&format!("{}\n", serde_json::to_string_pretty(&status)?))?;
            } else {
                print_stdout(&status::render_text(&status))?;
            }
            if status.ok {
                Ok(())
            } else {
                Err(Reported.into())
            }
        }
        Command::Uninstall { purge_crds, yes } => {
            let session = Session::open(&global, &mesh_args, &reporter)?;
            if !yes && std::io::stdin().is_terminal() && !confirm(&session.mesh, purge_crds)? {
                reporter.line("nothing was changed");
                return Ok(());
            }
            session.require_tools()?;
            let summary = exec::execute(
                &session.ctx(None, false, false, PathBuf::new()),
                &plan::uninstall(&session.mesh, purge_crds),
            );
            finish(&reporter, "uninstall", &summary)
        }
    }
}

fn mode(global: &GlobalArgs) -> Mode {
    match global.output {
        Some(OutputFormat::Json) => Mode::Json,
        Some(OutputFormat::Plain) => Mode::Plain,
        Some(OutputFormat::Human) => Mode::Human,
        None if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() => Mode::Human,
        None => Mode::Plain,
    }
}

fn print_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Warnings for commands that contact no cluster (install gets them from preflight).
fn warn_about_mesh(reporter: &Reporter, mesh: &Mesh) {
    if let Some(warning) = preflight::network_warning(mesh) {
        reporter.warn(&warning);
    }
    warn_unpinned(reporter, mesh);
}

fn warn_unpinned(reporter: &Reporter, mesh: &Mesh) {
    if mesh.version.is_none() && !matches!(mesh.charts, Charts::Local { .. }) {
        reporter.warn("`istio.version` is not set, so helm takes the newest chart and two runs may install different Istio versions; pin it (or pass --istio-version)");
    }
}

/// A validated mesh with the tools to act on it.
struct Session {
    mesh: Mesh,
    global_kubeconfig: Option<PathBuf>,
    jobs: usize,
    timeout: std::time::Duration,
    helm: Result<PathBuf, String>,
    kubectl: Result<PathBuf, String>,
    runner: ProcessRunner,
    reporter: Arc<Reporter>,
}

impl Session {
    /// Validates everything (mesh file, flags, kubeconfig contexts) before any call.
    fn open(
        global: &GlobalArgs,
        mesh_args: &crate::cli::MeshArgs,
        reporter: &Arc<Reporter>,
    ) -> Result<Self> {
        let kubeconfig = Kubeconfig::load(global.kubeconfig.as_deref())?;
        let mesh = mesh::load(mesh_args, Some(&kubeconfig))?;
        let helm = preflight::locate(Tool::Helm, global.helm.as_deref());
        let kubectl = preflight::locate(Tool::Kubectl, global.kubectl.as_deref());
        let runner = ProcessRunner {
            helm: helm.clone().unwrap_or_else(|_| PathBuf::from("helm")),
            kubectl: kubectl.clone().unwrap_or_else(|_| PathBuf::from("kubectl")),
            timeout: global.timeout,
            grace: crate::runner::GRACE,
            reporter: reporter.clone(),
        };
        let jobs = global
            .jobs
            .map(usize::from)
            .unwrap_or(mesh.clusters.len())
            .max(1);
        Ok(Self {
            mesh,
            global_kubeconfig: global.kubeconfig.clone(),
            jobs,
            timeout: global.timeout,
            helm,
            kubectl,
            runner,
            reporter: reporter.clone(),
        })
    }

    fn require_tools(&self) -> Result<()> {
        for found in [&self.helm, &self.kubectl] {
            if let Err(message) = found {
                return Err(eyre!("{message}"));
            }
        }
        Ok(())
    }

    fn ctx<'a>(
        &'a self,
        trust: Option<&'a Trust>,
        rotate_ca: bool,
        restart: bool,
        values_dir: PathBuf,
    ) -> Ctx<'a> {
        Ctx {
            mesh: &self.mesh,
            runner: &self.runner as &dyn Runner,
            reporter: &self.reporter,
            jobs: self.jobs,
            timeout: self.timeout,
            kubeconfig: self.global_kubeconfig.clone(),
            values_dir,
            trust,
            rotate_ca,
            restart,
        }
    }

    /// Tools, then (if kubectl is there) every cluster.
    fn preflight(&self) -> Vec<preflight::Check> {
        let mut checks = Vec::new();
        for (name, found) in [("helm", &self.helm), ("kubectl", &self.kubectl)] {
            if let Err(message) = found {
                checks.push(preflight::Check {
                    cluster: None,
                    check: name.into(),
                    level: Level::Fail,
                    detail: message.clone(),
                });
            }
        }
        if self.kubectl.is_err() {
            return checks;
        }
        // The local tool checks run beside the cluster checks: neither waits for the other.
        let ctx = self.ctx(None, false, false, PathBuf::new());
        let (tools, clusters) = std::thread::scope(|scope| {
            let tools = scope.spawn(|| match (&self.helm, &self.kubectl) {
                (Ok(helm), Ok(kubectl)) => preflight::tool_checks(&self.runner, helm, kubectl),
                _ => Vec::new(),
            });
            let clusters = preflight::cluster_checks(&ctx);
            (tools.join().unwrap_or_default(), clusters)
        });
        checks.extend(tools);
        checks.extend(clusters);
        checks
    }
}

fn report_checks(reporter: &Reporter, checks: &[preflight::Check]) -> Result<()> {
    if reporter.mode() == Mode::Json {
        let ok = !checks.iter().any(|c| c.level == Level::Fail);
        let doc = serde_json::json!({ "ok": ok, "checks": checks });
        print_stdout(&format!("{}\n", serde_json::to_string_pretty(&doc)?))
    } else {
        preflight::print(reporter, checks);
        Ok(())
    }
}

fn install(
    global: &GlobalArgs,
    mesh_args: &crate::cli::MeshArgs,
    reporter: &Arc<Reporter>,
    args: &InstallArgs,
) -> Result<()> {
    let session = Session::open(global, mesh_args, reporter)?;
    warn_unpinned(reporter, &session.mesh);
    let checks = session.preflight();
    let failed = checks.iter().any(|c| c.level == Level::Fail);
    if failed {
        report_checks(reporter, &checks)?;
        reporter.line("error: preflight failed; nothing was changed");
        return Err(Reported.into());
    }
    for check in checks.iter().filter(|c| c.level == Level::Warn) {
        reporter.warn(&format!(
            "{}{}",
            check
                .cluster
                .as_deref()
                .map(|c| format!("[{c}] "))
                .unwrap_or_default(),
            check.detail
        ));
    }
    let trust = prepare_trust(reporter, &session.mesh, args.key_type.into())?;
    // Values hold no secrets; they live in a private temporary directory for this run.
    let values_dir = tempfile::Builder::new()
        .prefix("meshup-values-")
        .tempdir()?;
    values::write(&session.mesh, values_dir.path())?;
    let ctx = session.ctx(
        trust.as_ref(),
        args.rotate_ca,
        args.restart,
        values_dir.path().to_path_buf(),
    );
    let summary = exec::execute(&ctx, &plan::install(&session.mesh));
    finish(reporter, "install", &summary)
}

/// Creates or loads the CA material the mesh's `trust` asks for.
fn prepare_trust(reporter: &Reporter, mesh: &Mesh, key_type: KeyType) -> Result<Option<Trust>> {
    let clusters: Vec<(&str, &str)> = mesh
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), mesh.namespace.as_str()))
        .collect();
    let dir = &mesh.trust.dir;
    match mesh.trust.mode {
        TrustMode::None => Ok(None),
        TrustMode::Generate => {
            let (trust, written) = trust::generate(dir, &clusters, key_type)
                .map_err(|e| InputError::new(&mesh.source, format!("trust: {e}")))?;
            if !written.is_empty() {
                reporter.info(&format!(
                    "trust: wrote {} CA file(s) under {} (keys mode 0600)",
                    written.len(),
                    dir.display()
                ));
            }
            Ok(Some(trust))
        }
        TrustMode::Provided => {
            let trust = trust::load_provided(dir, &clusters)
                .map_err(|e| InputError::new(&mesh.source, format!("trust: {e}")))?;
            Ok(Some(trust))
        }
    }
}

fn finish(reporter: &Reporter, command: &str, summary: &Summary) -> Result<()> {
    if reporter.mode() == Mode::Json {
        let doc = serde_json::json!({ "command": command, "ok": summary.ok, "interrupted": summary.interrupted, "clusters": summary.clusters });
        print_stdout(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
    } else {
        exec::print_summary(reporter, command, summary);
    }
    if summary.interrupted {
        Err(Interrupted.into())
    } else if summary.ok {
        Ok(())
    } else {
        Err(Reported.into())
    }
}

fn confirm(mesh: &Mesh, purge_crds: bool) -> Result<bool> {
    let names: Vec<&str> = mesh.clusters.iter().map(|c| c.name.as_str()).collect();
    let mut err = std::io::stderr().lock();
    write!(
        err,
        "Remove Istio (mesh `{}`, namespace `{}`{}) from {}? [y/N] ",
        mesh.mesh_id,
        mesh.namespace,
        if purge_crds {
            ", and Istio's CRDs with all Istio config"
        } else {
            ""
        },
        names.join(", ")
    )?;
    err.flush()?;
    let mut answer = String::new();
    crate::runner::PROMPTING.store(true, std::sync::atomic::Ordering::SeqCst);
    let read = std::io::stdin().read_line(&mut answer);
    crate::runner::PROMPTING.store(false, std::sync::atomic::Ordering::SeqCst);
    read?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// `meshup remote-secret`: the only command that prints a token, and only to stdout.
fn remote_secret_command(
    global: &GlobalArgs,
    reporter: &Arc<Reporter>,
    context: &str,
    name: &str,
    server: Option<String>,
    namespace: &str,
) -> Result<()> {
    let kubeconfig = Kubeconfig::load(global.kubeconfig.as_deref())?;
    let mut problems = Vec::new();
    if !mesh::is_dns_label(name) {
        problems.push(format!(
            "--name: `{name}` is not a DNS-1123 label (lowercase letters, digits, `-`)"
        ));
    }
    if !mesh::is_dns_label(namespace) {
        problems.push(format!(
            "--namespace: `{namespace}` is not a DNS-1123 label"
        ));
    }
    let context_server = kubeconfig.servers.get(context).cloned();
    if context_server.is_none() {
        problems.push(format!(
            "--context: `{context}` is not in the kubeconfig ({}); check `kubectl config get-contexts`",
            kubeconfig.describe()
        ));
    }
    if let Some(s) = &server
        && !(s.starts_with("https://") || s.starts_with("http://"))
    {
        problems.push(format!(
            "--server: `{s}` must be a URL such as https://172.18.0.2:6443"
        ));
    }
    if !problems.is_empty() {
        return Err(InputError {
            source: "meshup remote-secret".into(),
            problems,
        }
        .into());
    }
    let server = server.or(context_server).unwrap_or_default();
    if server.is_empty() {
        return Err(InputError::new(
            "meshup remote-secret",
            format!("context `{context}` names no server; pass --server"),
        )
        .into());
    }
    if remote_secret::is_loopback(&server) {
        reporter.warn(&format!(
            "the server {server} is a loopback address, which istiod in other clusters cannot reach; pass --server (or set `apiServer` in the mesh file)"
        ));
    }
    let kubectl =
        preflight::locate(Tool::Kubectl, global.kubectl.as_deref()).map_err(|m| eyre!("{m}"))?;
    let runner = ProcessRunner {
        helm: PathBuf::from("helm"),
        kubectl,
        timeout: global.timeout,
        grace: crate::runner::GRACE,
        reporter: reporter.clone(),
    };
    let target = Target {
        cluster: name.to_string(),
        context: context.to_string(),
        kubeconfig: global.kubeconfig.clone(),
    };
    let secret = remote_secret::build(&runner, &target, name, namespace, &server, global.timeout)
        .map_err(step_report)?;
    print_stdout(secret.manifest(namespace).expose())
}

fn step_report(error: StepError) -> color_eyre::Report {
    if error.is_interrupted() {
        Interrupted.into()
    } else {
        eyre!("{error}")
    }
}
