//! The `testcluster` binary (for `scripts/bench.sh clusters`): it writes a kubeconfig that the
//! real kubectl uses over HTTPS, applies its fault flags to the clusters named, and stops when
//! its stdin closes.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn faults_flags_hit_only_the_named_clusters() {
    let kubectl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/helm4/kubectl");
    assert!(
        kubectl.is_file(),
        "`{}` is missing: run `scripts/fetch-tools.sh` first",
        kubectl.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_testcluster"))
        .args(["--clusters", "2", "--latency-ms", "1", "--unavailable", "1"])
        .args(["--fault-clusters", "cluster2", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    let get = |ctx: &str| {
        Command::new(&kubectl)
            .args([
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--context",
                ctx,
            ])
            .args(["get", "namespaces", "-o", "name"])
            .env("HOME", dir.path())
            .output()
            .unwrap()
    };
    let healthy = get("cluster1");
    assert!(healthy.status.success(), "{healthy:?}");
    assert!(String::from_utf8_lossy(&healthy.stdout).contains("namespace/default"));
    let faulty = get("cluster2");
    assert!(!faulty.status.success());
    let stderr = String::from_utf8_lossy(&faulty.stderr);
    assert!(stderr.contains("unable to handle the request"), "{stderr}");

    drop(child.stdin.take());
    let status = child.wait().unwrap();
    let mut summary = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut summary)
        .unwrap();
    assert!(status.success(), "{summary}");
    assert!(
        summary.contains("cluster1: ") && summary.contains(", 0 answered 503"),
        "{summary}"
    );
    let cluster2 = summary
        .lines()
        .find(|l| l.starts_with("cluster2: "))
        .unwrap();
    assert!(!cluster2.contains(" 0 answered 503"), "{summary}");
}
