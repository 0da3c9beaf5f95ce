//! meshup: install, link, inspect and remove an Istio multi-primary mesh with Helm.

mod app;
mod cli;
mod error;
mod exec;
mod helm;
mod kubeconfig;
mod kubectl;
mod mesh;
mod plan;
mod preflight;
mod remote_secret;
mod reporter;
mod runner;
mod sensitive;
mod status;
mod step;
#[cfg(test)]
mod testing;
mod trust;
mod values;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let _ = color_eyre::config::HookBuilder::default()
        .display_location_section(false)
        .display_env_section(false)
        .install();
    runner::install_interrupt_handler();
    let cli = cli::Cli::parse();
    let result = app::run(cli);
    // However a command ended, Ctrl-C means 130: the run was cut short.
    if runner::interrupted() {
        eprintln!("error: {}", error::Interrupted);
        return ExitCode::from(130);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(report) => {
            if report.downcast_ref::<error::Reported>().is_none() {
                eprintln!("error: {report:#}");
            }
            ExitCode::from(error::exit_code(&report))
        }
    }
}
