//! `testcluster --clusters N --kubeconfig PATH [options]`: starts N in-memory clusters named
//! cluster1..clusterN (HTTPS, each with its own CA and admin token), writes a kubeconfig for
//! them, prints `ready`, and runs until SIGTERM/SIGINT or until stdin closes.
//!
//! Commands on stdin, one a line, each answered on stdout with `done LINE` (or `error: ...`):
//!   pods TOTAL SIDECARS   in every cluster, TOTAL application pods, SIDECARS of them in an
//!                         `istio-injection=enabled` namespace (TestCluster::add_app_pods)
//!   istiod-log MB         every istiod's log grows by MB megabytes of older lines
//!
//! Options (faults apply to every cluster, or to those named by `--fault-clusters`):
//!   --latency-ms MS                 added to every request
//!   --unavailable FRACTION          fraction of requests answered 503 ServiceUnavailable
//!   --throttled FRACTION            fraction of requests answered 429 with Retry-After: 1
//!   --reset FRACTION                fraction of requests whose connection is reset
//!   --seed N                        seed of the random faults (default 1)
//!   --outage-after-writes K:MS      after the K-th write, reset every connection for MS ms
//!                                   (repeatable: outages queue)
//!   --fault-clusters NAME,NAME      the clusters the faults above apply to
//!   --sync-delay-ms MS              istiod reports a new peer `syncing` at least this long
//!   --informer-lag-ms MS            istiod sees a remote secret this long after its write
//!   --remote-cluster-timeout-ms MS  istiod's PILOT_REMOTE_CLUSTER_TIMEOUT (default 2000)
//!   --no-load-balancer              LoadBalancer Services stay pending
//!   --no-pod-proxy                  the pod proxy is refused (a private control plane)

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use meshup_testcluster::{Options, RandomFaults, TestCluster, write_kubeconfig};
use tokio::io::AsyncBufReadExt;

const USAGE: &str = "usage: testcluster --clusters N --kubeconfig PATH [--latency-ms MS] \
[--unavailable FRACTION] [--throttled FRACTION] [--reset FRACTION] [--seed N] [--outage-after-writes K:MS]... \
[--fault-clusters NAME,...] [--sync-delay-ms MS] [--informer-lag-ms MS] \
[--remote-cluster-timeout-ms MS] [--no-load-balancer] [--no-pod-proxy]";

/// What the command line asks for.
struct Args {
    clusters: usize,
    kubeconfig: PathBuf,
    options: Options,
    faults: RandomFaults,
    outages: Vec<(u64, Duration)>,
    fault_clusters: Option<Vec<String>>,
}

fn parse() -> Result<Option<Args>, String> {
    let mut clusters = 1usize;
    let mut kubeconfig: Option<PathBuf> = None;
    let mut options = Options::default();
    let mut faults = RandomFaults {
        seed: 1,
        ..RandomFaults::default()
    };
    let mut outages = Vec::new();
    let mut fault_clusters = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("`{arg}` needs a value; {USAGE}"))
        };
        fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e| format!("`{flag} {v}`: {e}"))
        }
        match arg.as_str() {
            "--clusters" => clusters = number(&arg, &value()?)?,
            "--kubeconfig" => kubeconfig = Some(value()?.into()),
            "--latency-ms" => {
                options.latency = Duration::from_millis(number(&arg, &value()?)?);
            }
            "--unavailable" => faults.unavailable = number(&arg, &value()?)?,
            "--throttled" => faults.throttled = number(&arg, &value()?)?,
            "--reset" => faults.reset = number(&arg, &value()?)?,
            "--seed" => faults.seed = number(&arg, &value()?)?,
            "--outage-after-writes" => {
                let v = value()?;
                let (k, ms) = v
                    .split_once(':')
                    .ok_or_else(|| format!("`{arg} {v}`: expected K:MS"))?;
                outages.push((number(&arg, k)?, Duration::from_millis(number(&arg, ms)?)));
            }
            "--fault-clusters" => {
                fault_clusters = Some(value()?.split(',').map(String::from).collect());
            }
            "--sync-delay-ms" => {
                options.sync_delay = Duration::from_millis(number(&arg, &value()?)?);
            }
            "--informer-lag-ms" => {
                options.informer_lag = Duration::from_millis(number(&arg, &value()?)?);
            }
            "--remote-cluster-timeout-ms" => {
                options.remote_cluster_timeout = Duration::from_millis(number(&arg, &value()?)?);
            }
            "--no-load-balancer" => options.load_balancer = false,
            "--no-pod-proxy" => options.pod_proxy = false,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument `{other}`; {USAGE}")),
        }
    }
    let kubeconfig = kubeconfig.ok_or_else(|| format!("`--kubeconfig` is required; {USAGE}"))?;
    Ok(Some(Args {
        clusters,
        kubeconfig,
        options,
        faults,
        outages,
        fault_clusters,
    }))
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let running: Vec<TestCluster> = (1..=args.clusters)
        .map(|i| TestCluster::start(&format!("cluster{i}"), args.options.clone()))
        .collect();
    for c in &running {
        let faulty = args
            .fault_clusters
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == c.name()));
        if faulty {
            c.set_random_faults(args.faults);
            for (k, length) in &args.outages {
                c.outage_after_writes(*k, *length);
            }
        }
    }
    let refs: Vec<&TestCluster> = running.iter().collect();
    if let Err(e) = write_kubeconfig(&args.kubeconfig, &refs) {
        eprintln!(
            "error: could not write `{}`: {e}",
            args.kubeconfig.display()
        );
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
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if !line.trim().is_empty() {
                    command(&running, line.trim());
                }
            }
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
        let resets = c.requests_log().iter().filter(|r| r.status == 0).count();
        let unavailable = c.requests_log().iter().filter(|r| r.status == 503).count();
        let throttled = c.requests_log().iter().filter(|r| r.status == 429).count();
        eprintln!(
            "{}: {} requests, {} mutations, {unavailable} answered 503, {throttled} answered 429, {resets} reset",
            c.name(),
            c.requests(),
            c.mutations()
        );
    }
    drop(running);
    ExitCode::SUCCESS
}

/// Runs one command read from stdin in every cluster and says on stdout that it is done.
fn command(running: &[TestCluster], line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |i: usize| words.get(i).and_then(|w| w.parse::<usize>().ok());
    let result = match (words.first().copied(), number(1), number(2)) {
        (Some("pods"), Some(total), Some(sidecars)) => running
            .iter()
            .try_for_each(|c| c.add_app_pods(total, sidecars))
            .map_err(|e| format!("{} {}: {}", e.code, e.reason, e.message)),
        (Some("istiod-log"), Some(mb), None) => {
            for c in running {
                c.pad_istiod_logs(mb << 20);
            }
            Ok(())
        }
        _ => Err(format!(
            "unknown command `{line}`; use `pods TOTAL SIDECARS` or `istiod-log MB`"
        )),
    };
    match result {
        Ok(()) => println!("done {line}"),
        Err(e) => println!("error: {e}"),
    }
}
