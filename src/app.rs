//! Runs one command: validate the input, then act. Every path that touches a cluster first
//! builds a validated `Mesh` (exit 2 on bad input, nothing touched), then its topology, then
//! walks it (plan → exec, or status/preflight).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::CommandFactory;

use crate::cli::{
    Cli, Command, DEFAULT_JOBS, DEFAULT_READ_JOBS, GlobalArgs, InstallArgs, Jobs, LinkArgs,
    MeshArgs, Operation, OutputFormat, UninstallArgs, VerifyArgs,
};
use crate::components::reader;
use crate::error::{Error, InputError};
use crate::exec::{self, Run, Summary};
use crate::files::{self, Existing};
use crate::finding::{Finding, Level};
use crate::kubeconfig::Kubeconfig;
use crate::leave;
use crate::live::Live;
use crate::lock;
use crate::lock::LockError;
use crate::mesh::{self, Mesh};
use crate::plan;
use crate::preflight;
use crate::pull;
use crate::remote_secret;
use crate::reporter::{Mode, Reporter};
use crate::rotate;
use crate::runner::ProcessRunner;
use crate::status;
use crate::step::{Target, Tool};
use crate::topology::{Choices, Topology};
use crate::traffic;
use crate::trust::{self, KeyType, Trust, TrustMode};
use crate::values;
use crate::verify;

pub fn run(cli: Cli) -> Result<(), Error> {
    let Cli {
        command,
        global,
        mesh: mesh_args,
    } = cli;
    let reporter = Arc::new(Reporter::new(mode(&global), global.quiet, global.verbose));
    match command {
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "meshup", &mut out);
            print_stdout(&String::from_utf8_lossy(&out))
        }
        Command::Render { out } => {
            let mesh = mesh::load(&mesh_args, None)?;
            warn_about_mesh(&reporter, &mesh);
            for path in render(&mesh, &out)? {
                reporter.info(&format!("wrote {}", path.display()));
            }
            Ok(())
        }
        Command::Plan(args) => {
            let mut mesh = mesh::load(&mesh_args, None)?;
            warn_about_mesh(&reporter, &mesh);
            if let Some(names) = &args.rotate {
                check_cluster_names(&mesh, "--rotate", names)?;
            }
            check_cluster_names(&mesh, "CLUSTER", &args.leaving)?;
            let pulls = match pull::planned(
                &mesh.charts,
                mesh.version.as_deref(),
                &mesh.charts_needed(),
                &pull::cache_dir(),
            ) {
                Some((pulls, charts)) if args.operation == Operation::Install => {
                    mesh.charts = charts;
                    pulls
                }
                _ => Vec::new(),
            };
            let choices = Choices {
                purge_crds: args.purge_crds,
                ..Choices::default()
            };
            let topology = Topology::of(&mesh, &choices);
            let everyone = mesh.clusters.iter().all(|c| args.leaving.contains(&c.name));
            let rest = leave::rest(&mesh, &args.leaving);
            let plan = match args.operation {
                Operation::Install => plan::install(&topology).then(rotation_plan(
                    &mesh,
                    &topology,
                    args.rotate.as_deref(),
                )),
                Operation::Link => plan::link(&topology).then(rotation_plan(
                    &mesh,
                    &topology,
                    args.rotate.as_deref(),
                )),
                Operation::Uninstall if args.leaving.is_empty() || everyone => {
                    plan::uninstall(&topology)
                }
                Operation::Uninstall => {
                    check_primaries_leave_with_remotes(&mesh, &args.leaving)?;
                    leave::plan(&topology, &rest, &args.leaving, &choices)
                }
            };
            let script = plan::script(
                &mesh,
                &plan,
                &plan::ScriptOptions {
                    values_dir: &args.values_dir,
                    mesh_flags: &mesh_args.override_flags(),
                    kubeconfig: global.kubeconfig.as_deref(),
                    timeout: global.timeout,
                    pulls: &pulls,
                },
            );
            print_stdout(&script)
        }
        Command::Certs { key_type } => {
            let mesh = mesh::load(&mesh_args, None)?;
            match prepare_trust(&reporter, &mesh, key_type.into())? {
                None => reporter.info("trust.mode is `none`: no certificates"),
                Some(trust) => {
                    let root = trust::fingerprint(&trust.root_cert_pem)
                        .unwrap_or_else(|e| format!("unreadable ({e})"));
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
            let topology = Topology::of(&session.mesh, &Choices::default());
            let checks = session.preflight(&topology);
            report_checks(&reporter, &checks)?;
            if checks.iter().any(Finding::is_failure) {
                return Err(Error::Reported);
            }
            Ok(())
        }
        Command::Install(args) => install(&global, &mesh_args, &reporter, &args),
        Command::Link(args) => link(&global, &mesh_args, &reporter, &args),
        Command::Status => {
            let session = Session::open(&global, &mesh_args, &reporter)?;
            session.require_tools()?;
            let topology = Topology::of(&session.mesh, &Choices::default());
            let status = status::collect(&session.read(), &topology);
            if reporter.mode() == Mode::Json {
                print_json(&status)?;
            } else {
                print_stdout(&status::render_text(&status))?;
            }
            if status.ok {
                Ok(())
            } else {
                Err(Error::Reported)
            }
        }
        Command::Verify(args) => verify(&global, &mesh_args, &reporter, &args),
        Command::Uninstall(args) => uninstall(&global, &mesh_args, &reporter, &args),
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

fn print_stdout(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::Stdout)
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).expect("meshup's reports serialize");
    print_stdout(&format!("{text}\n"))
}

/// Writes every release's values file of every cluster under `out`: `<cluster>/<chart>-values.yaml`.
fn render(mesh: &Mesh, out: &Path) -> Result<Vec<PathBuf>, Error> {
    let topology = Topology::of(mesh, &Choices::default());
    let mut written = Vec::new();
    for node in &topology.nodes {
        let dir = out.join(&node.cluster);
        files::ensure_dir(&dir, 0o755)?;
        for (chart, values) in node.components.iter().filter_map(|c| c.values_file()) {
            let path = dir.join(values::file_name(&chart));
            let text = values::file_text(mesh, &node.cluster, &chart, values);
            files::write(&path, text.as_bytes(), 0o644, Existing::Replace)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Warnings for commands that contact no cluster (install says them as it pins a version).
fn warn_about_mesh(reporter: &Reporter, mesh: &Mesh) {
    warn_unpinned(reporter, mesh);
}

fn warn_unpinned(reporter: &Reporter, mesh: &Mesh) {
    if mesh.version.is_none() && !mesh.charts.is_local() {
        reporter.warn("`istio.version` is not set, so helm takes the newest chart and two runs may install different Istio versions; pin it (or pass --istio-version)");
    }
}

/// A validated mesh with the tools to act on it.
struct Session {
    mesh: Mesh,
    global_kubeconfig: Option<PathBuf>,
    /// Clusters changed at once.
    jobs: usize,
    /// Clusters read at once.
    read_jobs: usize,
    retries: u32,
    wait_for_lock: Option<std::time::Duration>,
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
        mesh_args: &MeshArgs,
        reporter: &Arc<Reporter>,
    ) -> Result<Self, Error> {
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
        let clusters = mesh.clusters.len();
        let jobs = Jobs::resolve(global.jobs, clusters, DEFAULT_JOBS);
        let read_jobs = Jobs::resolve(global.jobs, clusters, DEFAULT_READ_JOBS);
        Ok(Self {
            mesh,
            global_kubeconfig: global.kubeconfig.clone(),
            jobs,
            read_jobs,
            retries: global.retries,
            wait_for_lock: global.wait_for_lock,
            timeout: global.timeout,
            helm,
            kubectl,
            runner,
            reporter: reporter.clone(),
        })
    }

    fn require_tools(&self) -> Result<(), Error> {
        for found in [&self.helm, &self.kubectl] {
            if let Err(message) = found {
                return Err(Error::MissingTool(message.clone()));
            }
        }
        Ok(())
    }

    /// For commands that change clusters.
    fn run(&self) -> Run<'_> {
        Run {
            mesh: &self.mesh,
            runner: &self.runner,
            reporter: &self.reporter,
            jobs: self.jobs,
            timeout: self.timeout,
            kubeconfig: self.global_kubeconfig.clone(),
            retry: exec::Retry {
                times: self.retries,
                ..exec::Retry::DEFAULT
            },
            locks: None,
            caches: Some(Default::default()),
        }
    }

    /// Runs `f` holding every cluster's lock.
    fn locked<R>(&self, command: &str, f: impl FnOnce(&Run) -> R) -> Result<R, Error> {
        let run = self.run();
        Ok(lock::hold(&run, command, self.wait_for_lock, |locks| {
            // Snapshots are read once the locks are held: nothing changes them meanwhile.
            f(&Run {
                locks: Some(locks),
                caches: Some(Default::default()),
                ..run.clone()
            })
        })?)
    }

    /// For commands that only read: they may fan out wider.
    fn read(&self) -> Run<'_> {
        Run {
            jobs: self.read_jobs,
            ..self.run()
        }
    }

    /// Tools, then (if kubectl is there) every cluster, with its Kubernetes version.
    fn preflight(&self, topology: &Topology) -> Vec<Finding> {
        let mut checks = self.tool_checks();
        if self.kubectl.is_err() {
            return checks;
        }
        checks.extend(preflight::cluster_checks(&self.read(), topology, true));
        checks
    }

    /// The local helm and kubectl: found, and of a version meshup works with.
    fn tool_checks(&self) -> Vec<Finding> {
        let mut checks = Vec::new();
        for (name, found) in [("helm", &self.helm), ("kubectl", &self.kubectl)] {
            if let Err(message) = found {
                checks.push(Finding::fail(None, name, message.clone()));
            }
        }
        if let (Ok(helm), Ok(kubectl)) = (&self.helm, &self.kubectl) {
            checks.extend(preflight::tool_checks(&self.runner, helm, kubectl));
        }
        checks
    }
}

/// Prints the warnings among `checks`.
fn warn_checks(reporter: &Reporter, checks: &[Finding]) {
    for check in checks.iter().filter(|c| c.level == Level::Warn) {
        reporter.warn(&format!(
            "{}{}",
            check
                .cluster
                .as_deref()
                .map(|c| format!("[{c}] "))
                .unwrap_or_default(),
            check.sentence()
        ));
    }
}

fn report_checks(reporter: &Reporter, checks: &[Finding]) -> Result<(), Error> {
    if reporter.mode() == Mode::Json {
        let ok = !checks.iter().any(Finding::is_failure);
        print_json(&serde_json::json!({ "ok": ok, "checks": checks }))
    } else {
        preflight::print(reporter, checks);
        Ok(())
    }
}

fn install(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &InstallArgs,
) -> Result<(), Error> {
    let mut session = Session::open(global, mesh_args, reporter)?;
    let tools = session.tool_checks();
    if tools.iter().any(Finding::is_failure) {
        report_checks(reporter, &tools)?;
        reporter.line("error: preflight failed; nothing was changed");
        return Err(Error::Reported);
    }
    warn_checks(reporter, &tools);
    session.require_tools()?;
    let fetched = pull::fetch(
        &session.runner,
        reporter,
        &session.mesh.charts,
        session.mesh.version.as_deref(),
        &session.mesh.charts_needed(),
        &pull::cache_dir(),
    )?;
    session.mesh.charts = fetched.charts;
    if let Some(version) = fetched.pinned {
        session.mesh.version = Some(version);
    }
    let trust = prepare_trust(reporter, &session.mesh, args.key_type.into())?;
    let choices = Choices {
        trust: trust.as_ref(),
        rotate_ca: args.rotate_ca,
        restart: args.restart,
        purge_crds: false,
    };
    let topology = Topology::of(&session.mesh, &choices);
    // The clusters are checked once their locks are held, from the snapshot the install then
    // works with; a failed check releases them with nothing changed.
    let locked = session.locked("install", |run| {
        let checks = preflight::cluster_checks(run, &topology, false);
        if checks.iter().any(Finding::is_failure) {
            return Err(checks);
        }
        warn_checks(run.reporter, &checks);
        let summary = exec::execute(run, &plan::install(&topology));
        Ok(after_link(run, &topology, summary, args.prune))
    });
    // A cluster whose lock cannot be taken fails the preflight: it does not answer, or
    // refuses meshup.
    let outcome = match locked {
        Err(Error::Lock(LockError::Cluster { cluster, message })) => Err(vec![Finding::fail(
            Some(&cluster),
            "api server",
            format!(
                "meshup could not take its lock there: {}",
                message.trim_start_matches(&format!("[{cluster}] "))
            ),
        )]),
        other => other?,
    };
    match outcome {
        Ok(summary) => finish(reporter, "install", &summary),
        Err(checks) => {
            report_checks(reporter, &checks)?;
            reporter.line("error: preflight failed; nothing was changed");
            Err(Error::Reported)
        }
    }
}

fn link(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &LinkArgs,
) -> Result<(), Error> {
    let session = Session::open(global, mesh_args, reporter)?;
    if let Some(names) = &args.rotate {
        check_cluster_names(&session.mesh, "--rotate", names)?;
    }
    session.require_tools()?;
    let topology = Topology::of(&session.mesh, &Choices::default());
    let plan = plan::link(&topology).then(rotation_plan(
        &session.mesh,
        &topology,
        args.rotate.as_deref(),
    ));
    let summary = session.locked("link", |run| {
        let summary = exec::execute(run, &plan);
        after_link(run, &topology, summary, args.prune)
    })?;
    finish(reporter, "link", &summary)
}

/// The rotations asked for with `--rotate`: the named clusters, all when it names none.
fn rotation_plan<'t>(
    mesh: &Mesh,
    topology: &Topology,
    rotate: Option<&[String]>,
) -> plan::Plan<'t> {
    match rotate {
        None => plan::Plan::default(),
        Some(names) => {
            let names = (!names.is_empty()).then_some(names);
            rotate::plan(mesh, topology, &rotate::sources(mesh, topology, names))
        }
    }
}

/// After a successful link, when clusters left the mesh file: every token rotated with
/// `--prune`, a warning without (which clusters left is known only once the link ran).
fn after_link(run: &Run, topology: &Topology, summary: Summary, prune: bool) -> Summary {
    if !summary.ok || summary.departed.is_empty() {
        return summary;
    }
    let departed = summary.departed.join(", ");
    if !prune {
        run.reporter.warn(&format!(
            "{departed} left the mesh file: its remote secrets were removed from the peers, but it may still hold their reader tokens, which stay valid; run `meshup link --rotate` to revoke them (or re-run with --prune)"
        ));
        return summary;
    }
    run.reporter.info(&format!(
        "{departed} left the mesh file and may still hold its peers' reader tokens: rotating them all"
    ));
    let sources = rotate::sources(run.mesh, topology, None);
    summary.and(exec::execute(
        run,
        &rotate::plan(run.mesh, topology, &sources),
    ))
}

fn uninstall(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &UninstallArgs,
) -> Result<(), Error> {
    let session = Session::open(global, mesh_args, reporter)?;
    let mesh = &session.mesh;
    check_cluster_names(mesh, "CLUSTER", &args.leaving)?;
    let everyone = mesh.clusters.iter().all(|c| args.leaving.contains(&c.name));
    let leaving: Vec<String> = if everyone {
        Vec::new()
    } else {
        args.leaving.clone()
    };
    check_primaries_leave_with_remotes(mesh, &leaving)?;
    if !args.yes && std::io::stdin().is_terminal() && !confirm(mesh, &leaving, args.purge_crds)? {
        reporter.line("nothing was changed");
        return Ok(());
    }
    session.require_tools()?;
    let choices = Choices {
        purge_crds: args.purge_crds,
        ..Choices::default()
    };
    if leaving.is_empty() {
        let topology = Topology::of(mesh, &choices);
        let summary = session.locked("uninstall", |run| {
            exec::execute(run, &plan::uninstall(&topology))
        })?;
        return finish(reporter, "uninstall", &summary);
    }
    let full = Topology::of(mesh, &choices);
    let rest = leave::rest(mesh, &leaving);
    let plan = leave::plan(&full, &rest, &leaving, &choices);
    let summary = session.locked("uninstall", |run| exec::execute(run, &plan))?;
    let (gone, it) = if leaving.len() == 1 {
        (format!("`{}` is out of the mesh", leaving[0]), "it")
    } else {
        (
            format!("{} are out of the mesh", leaving.join(", ")),
            "them",
        )
    };
    let command = format!("uninstall {}", leaving.join(" "));
    finish(reporter, &command, &summary).inspect(|()| {
        reporter.line(&format!(
            "{gone}; remove {it} from {} so the next install does not bring {it} back",
            mesh.source
        ));
    })
}

/// Every name must be a cluster of the mesh file.
fn check_cluster_names(mesh: &Mesh, what: &str, names: &[String]) -> Result<(), InputError> {
    let known: Vec<&str> = mesh.clusters.iter().map(|c| c.name.as_str()).collect();
    let problems: Vec<String> = names
        .iter()
        .filter(|n| !known.contains(&n.as_str()))
        .map(|n| {
            format!(
                "{what}: `{n}` is not a cluster of the mesh (its clusters: {})",
                known.join(", ")
            )
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(InputError {
            source: mesh.source.clone(),
            problems,
        })
    }
}

/// A primary cannot leave while a remote it runs istiod for stays.
fn check_primaries_leave_with_remotes(mesh: &Mesh, leaving: &[String]) -> Result<(), InputError> {
    let problems: Vec<String> = leaving
        .iter()
        .flat_map(|primary| {
            mesh.remotes_of(primary)
                .filter(|r| !leaving.contains(&r.name))
                .map(move |r| {
                    format!(
                        "CLUSTER: `{primary}` runs istiod for remote `{}`; take `{}` out too, or give it another primary first",
                        r.name, r.name
                    )
                })
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(InputError {
            source: mesh.source.clone(),
            problems,
        })
    }
}

fn verify(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &VerifyArgs,
) -> Result<(), Error> {
    let session = Session::open(global, mesh_args, reporter)?;
    session.require_tools()?;
    let mesh = &session.mesh;
    let topology = Topology::of(mesh, &Choices::default());
    let run = session.read();
    let sync = verify::sync_until(&run, &topology, args.wait)?;
    let credentials = verify::credentials(&run, &topology);
    let traffic = args.traffic.then(|| {
        let (helloworld, curl) = traffic::Options::images(args.registry.as_deref());
        let options = traffic::Options {
            namespace: args.namespace.clone(),
            requests: args.requests,
            keep: args.keep,
            helloworld_image: args.helloworld_image.clone().unwrap_or(helloworld),
            curl_image: args.curl_image.clone().unwrap_or(curl),
            injection: match &mesh.revision {
                Some(rev) => ("istio.io/rev".to_string(), rev.clone()),
                None => ("istio-injection".to_string(), "enabled".to_string()),
            },
        };
        reporter.info(&format!(
            "traffic: {} requests from every cluster to `helloworld.{}`",
            options.requests, options.namespace
        ));
        traffic::check(&run, &options)
    });
    if crate::runner::interrupted() {
        return Err(Error::Interrupted);
    }
    let mut problems = verify::problems(&run, &sync);
    problems.extend(credentials);
    let ok = problems.is_empty() && traffic.as_ref().is_none_or(|t| t.ok);
    let report = verify::Report {
        ok,
        sync,
        problems,
        traffic,
    };
    if reporter.mode() == Mode::Json {
        print_json(&report)?;
    } else {
        let mut text = verify::render_sync(&run, &report.sync);
        for finding in &report.problems {
            text.push_str(&format!("  {}\n", verify::line(finding)));
        }
        if let Some(traffic) = &report.traffic {
            let names: Vec<String> = mesh.clusters.iter().map(|c| c.name.clone()).collect();
            text.push('\n');
            text.push_str(&traffic::render(traffic, &names));
            for (from, to) in traffic.unreached(&names) {
                if !traffic.errors.contains_key(&from) {
                    text.push_str(&format!("  {from} → {to}: no answer\n"));
                }
            }
        }
        text.push_str(if report.ok {
            "the mesh works: every istiod is synced with every peer\n"
        } else {
            "the mesh does not work as the mesh file says\n"
        });
        print_stdout(&text)?;
    }
    if report.ok {
        Ok(())
    } else {
        Err(Error::Reported)
    }
}

/// Creates or loads the CA material the mesh's `trust` asks for.
fn prepare_trust(
    reporter: &Reporter,
    mesh: &Mesh,
    key_type: KeyType,
) -> Result<Option<Trust>, Error> {
    let clusters: Vec<(&str, &str)> = mesh
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), mesh.namespace.as_str()))
        .collect();
    let dir = &mesh.trust.dir;
    match mesh.trust.mode {
        TrustMode::None => Ok(None),
        TrustMode::Generate => {
            let (trust, written) = trust::generate(dir, &clusters, key_type)?;
            if !written.is_empty() {
                reporter.info(&format!(
                    "trust: wrote {} CA file(s) under {} (keys mode 0600)",
                    written.len(),
                    dir.display()
                ));
            }
            Ok(Some(trust))
        }
        TrustMode::Provided => Ok(Some(trust::load_provided(dir, &clusters)?)),
    }
}

fn finish(reporter: &Reporter, command: &str, summary: &Summary) -> Result<(), Error> {
    if reporter.mode() == Mode::Json {
        let mut report = serde_json::json!({ "command": command, "ok": summary.ok, "interrupted": summary.interrupted, "clusters": summary.clusters });
        if !summary.departed.is_empty() {
            report["departed"] = serde_json::json!(summary.departed);
        }
        if !summary.gates.is_empty() {
            report["gates"] = serde_json::json!(summary.gates);
        }
        if !summary.rotated.is_empty() {
            report["rotated"] = serde_json::json!(summary.rotated);
        }
        print_json(&report)?;
    } else {
        for line in rotate::render(&summary.rotated) {
            reporter.line(&line);
        }
        exec::print_summary(reporter, command, summary);
    }
    if summary.interrupted {
        Err(Error::Interrupted)
    } else if summary.ok {
        Ok(())
    } else {
        Err(Error::Reported)
    }
}

fn confirm(mesh: &Mesh, leaving: &[String], purge_crds: bool) -> Result<bool, Error> {
    let crds = if purge_crds {
        ", and Istio's CRDs with all Istio config"
    } else {
        ""
    };
    let question = if leaving.is_empty() {
        let names: Vec<&str> = mesh.clusters.iter().map(|c| c.name.as_str()).collect();
        format!(
            "Remove Istio (mesh `{}`, namespace `{}`{crds}) from {}? [y/N] ",
            mesh.mesh_id,
            mesh.namespace,
            names.join(", ")
        )
    } else {
        let staying: Vec<&str> = mesh
            .clusters
            .iter()
            .filter(|c| !leaving.contains(&c.name))
            .map(|c| c.name.as_str())
            .collect();
        format!(
            "Take {} out of mesh `{}`: remove its remote secrets from {}, remove Istio (namespace `{}`{crds}) from it, and rotate the reader tokens it held? [y/N] ",
            leaving.join(", "),
            mesh.mesh_id,
            staying.join(", "),
            mesh.namespace,
        )
    };
    let mut err = std::io::stderr().lock();
    // A terminal that cannot be written to cannot be asked: take it as "no".
    if err
        .write_all(question.as_bytes())
        .and_then(|()| err.flush())
        .is_err()
    {
        return Ok(false);
    }
    let mut answer = String::new();
    crate::runner::PROMPTING.store(true, std::sync::atomic::Ordering::SeqCst);
    let read = std::io::stdin().read_line(&mut answer);
    crate::runner::PROMPTING.store(false, std::sync::atomic::Ordering::SeqCst);
    Ok(read.is_ok() && matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// `meshup remote-secret`: the only command that prints a token, and only to stdout.
fn remote_secret_command(
    global: &GlobalArgs,
    reporter: &Arc<Reporter>,
    context: &str,
    name: &str,
    server: Option<String>,
    namespace: &str,
) -> Result<(), Error> {
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
        preflight::locate(Tool::Kubectl, global.kubectl.as_deref()).map_err(Error::MissingTool)?;
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
    let live = Live::new(&runner, &target, global.timeout);
    let secret = reader::build(&live, name, namespace, &server)?;
    print_stdout(secret.manifest(namespace).expose())
}
