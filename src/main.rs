//! The `meshup` binary: parse the command line, run, turn the result into an exit code.

use std::process::ExitCode;

use clap::Parser;
use meshup::app;
use meshup::model::cli;
use meshup::tools::runner;

fn main() -> ExitCode {
    runner::install_interrupt_handler();
    let result = app::run(cli::Cli::parse());
    // However a command ended, Ctrl-C means 130: the run was cut short.
    if runner::interrupted() {
        eprintln!("error: {}", meshup::error::Error::Interrupted);
        return ExitCode::from(130);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if !error.is_reported() {
                eprintln!("error: {error}");
            }
            ExitCode::from(error.exit_code())
        }
    }
}
