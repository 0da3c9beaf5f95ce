//! Runs one command: validate the input, then act. Every path that touches a cluster first
//! builds a validated `Mesh` (exit 2 on bad input, nothing touched), then its topology, then
//! walks it (plan → exec, or status/preflight).
//!
//! One file per command (`install.rs`, `link.rs`, `uninstall.rs`, `verify.rs`, `plan.rs`,
//! `remote_secret.rs`); `session.rs` holds what they share: the session, checks, confirmation
//! and the summary.

mod diff;
mod doctor;
mod export;
mod expose;
mod install;
mod link;
mod plan;
mod remote_secret;
mod session;
mod uninstall;
mod upgrade;
mod verify;

mod output;
mod prelude;

use clap::CommandFactory;

use output::{print_json, print_stdout, warn_about_mesh};
use prelude::*;
use session::*;

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
        Command::Export(args) => export::export(&global, &mesh_args, &reporter, &args),
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
        Command::Diff(args) => diff::diff(&global, &mesh_args, &reporter, &args),
        Command::Status(args) => {
            let mut session = Session::open(&global, &mesh_args, &reporter)?;
            session.require_tools()?;
            let drift = if args.drift {
                // The same comparison as `meshup diff` (with its guards), before the walk.
                session.tools_and_charts()?;
                let trust = diff::trust_on_disk(&session.mesh)?;
                Some(diff::compare(&session, trust.as_ref(), &[])?)
            } else {
                None
            };
            session.settle_revision();
            let topology = Topology::of(&session.mesh, &Choices::default());
            let mut status = status::collect(&session.read(), &topology);
            if let Some(report) = &drift {
                status::add_drift(&mut status, report);
            }
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
