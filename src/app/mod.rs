//! Runs one command: validate the input, then act. Every path that touches a cluster first
//! builds a validated `Mesh` (exit 2 on bad input, nothing touched), then its topology, then
//! walks it (plan → exec, or status/preflight).
//!
//! One file per command (`install.rs`, `link.rs`, `uninstall.rs`, `verify.rs`, `plan.rs`,
//! `remote_secret.rs`); `session.rs` holds what they share: the session, checks, confirmation
//! and the summary.

mod doctor;
mod expose;
mod install;
mod link;
mod plan;
mod remote_secret;
mod session;
mod uninstall;
mod upgrade;
mod verify;

/// What every command file uses.
mod prelude {
    pub(super) use std::io::{IsTerminal, Write};
    pub(super) use std::path::{Path, PathBuf};
    pub(super) use std::sync::Arc;

    pub(super) use crate::cli::{
        Cli, Command, DEFAULT_JOBS, DEFAULT_READ_JOBS, GlobalArgs, InstallArgs, Jobs, LinkArgs,
        MeshArgs, Operation, OutputFormat, PlanArgs, UninstallArgs, VerifyArgs,
    };
    pub(super) use crate::components::reader;
    pub(super) use crate::error::{Error, InputError};
    pub(super) use crate::exec::{self, Summary};
    pub(super) use crate::files::{self, Existing};
    pub(super) use crate::finding::{Finding, Level};
    pub(super) use crate::kubeconfig::Kubeconfig;
    pub(super) use crate::leave;
    pub(super) use crate::live::Live;
    pub(super) use crate::lock;
    pub(super) use crate::lock::LockError;
    pub(super) use crate::mesh::{self, Mesh};
    pub(super) use crate::preflight;
    pub(super) use crate::pull;
    pub(super) use crate::remote_secret;
    pub(super) use crate::reporter::{Mode, Reporter};
    pub(super) use crate::rotate;
    pub(super) use crate::run::Run;
    pub(super) use crate::runner::ProcessRunner;
    pub(super) use crate::status;
    pub(super) use crate::step::{Target, Tool};
    pub(super) use crate::topology::{Choices, Topology};
    pub(super) use crate::traffic;
    pub(super) use crate::trust::{self, KeyType, Trust, TrustMode};
    pub(super) use crate::values;
    pub(super) use crate::verify;

    pub(super) use super::session::*;
    pub(super) use super::{print_json, print_stdout, warn_about_mesh};
    pub(super) use crate::plan;
}

use clap::CommandFactory;

use prelude::*;

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
        Command::Plan(args) => plan::plan(&global, &mesh_args, &reporter, &args),
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
        } => remote_secret::remote_secret_command(
            &global, &reporter, &context, &name, server, &namespace,
        ),
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
        Command::Install(args) => install::install(&global, &mesh_args, &reporter, &args),
        Command::Link(args) => link::link(&global, &mesh_args, &reporter, &args),
        Command::Status => {
            let mut session = Session::open(&global, &mesh_args, &reporter)?;
            session.require_tools()?;
            session.settle_revision();
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
        Command::Verify(args) => verify::verify(&global, &mesh_args, &reporter, &args),
        Command::Expose(args) => expose::expose(&global, &mesh_args, &reporter, &args, true),
        Command::Unexpose(args) => expose::expose(&global, &mesh_args, &reporter, &args, false),
        Command::Doctor(args) => doctor::doctor(&global, &mesh_args, &reporter, &args),
        Command::Upgrade(args) => upgrade::upgrade(&global, &mesh_args, &reporter, &args),
        Command::Uninstall(args) => uninstall::uninstall(&global, &mesh_args, &reporter, &args),
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
