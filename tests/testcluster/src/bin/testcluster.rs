//! `testcluster --clusters N --latency-ms MS --kubeconfig PATH`: starts N in-memory clusters
//! named cluster1..clusterN, writes a kubeconfig for them, prints `ready`, and runs until
//! SIGTERM/SIGINT or until stdin closes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use meshup_testcluster::{Options, TestCluster, write_kubeconfig};
use tokio::io::AsyncReadExt;

const USAGE: &str = "usage: testcluster --clusters N [--latency-ms MS] --kubeconfig PATH";

fn main() -> ExitCode {
    let mut clusters = 1usize;
    let mut latency_ms = 0u64;
    let mut kubeconfig: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .ok_or_else(|| format!("`{flag}` needs a value; {USAGE}"))
        };
        let parsed = match arg.as_str() {
            "--clusters" => value("--clusters").and_then(|v| {
                v.parse()
                    .map_err(|e| format!("--clusters: {e}"))
                    .map(|n| clusters = n)
            }),
            "--latency-ms" => value("--latency-ms").and_then(|v| {
                v.parse()
                    .map_err(|e| format!("--latency-ms: {e}"))
                    .map(|n| latency_ms = n)
            }),
            "--kubeconfig" => value("--kubeconfig").map(|v| kubeconfig = Some(v.into())),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument `{other}`; {USAGE}")),
        };
        if let Err(e) = parsed {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    let Some(kubeconfig) = kubeconfig else {
        eprintln!("error: `--kubeconfig` is required; {USAGE}");
        return ExitCode::from(2);
    };
    let options = Options {
        latency: Duration::from_millis(latency_ms),
        ..Options::default()
    };
    let running: Vec<TestCluster> = (1..=clusters)
        .map(|i| TestCluster::start(&format!("cluster{i}"), options.clone()))
        .collect();
    let refs: Vec<&TestCluster> = running.iter().collect();
    if let Err(e) = write_kubeconfig(&kubeconfig, &refs) {
        eprintln!("error: could not write `{}`: {e}", kubeconfig.display());
        return ExitCode::from(1);
    }
    for c in &running {
        eprintln!("{} {}", c.name(), c.url());
    }
    println!("ready");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .expect("SIGINT handler");
        let stdin_closed = async {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 1024];
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = stdin_closed => {}
        }
    });
    // The stdin reader sits in a blocking thread: do not wait for it.
    rt.shutdown_background();
    for c in &running {
        eprintln!(
            "{}: {} requests, {} mutations",
            c.name(),
            c.requests(),
            c.mutations()
        );
    }
    drop(running);
    ExitCode::SUCCESS
}
