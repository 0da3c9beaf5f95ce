//! Crash safety, end to end with the real helm 3 and 4: meshup and its helm children killed
//! together at several points of an install, API servers that drop every connection for a
//! few seconds, and two runs at once. In every case the next plain run converges.

use std::process::Child;
use std::time::{Duration, Instant};

use super::common::*;
use meshup_testcluster::{Options, TestCluster};
use serde_json::json;

/// Waits until some cluster answered a write whose path `matches`, then kills meshup and
/// every helm and kubectl it started (SIGKILL of the process group: a cancelled CI job).
fn kill_when(env: &Env, child: &mut Child, what: &str, matches: impl Fn(&str) -> bool) {
    kill_when_since(env, &vec![0; env.clusters.len()], child, what, matches)
}

/// Like [`kill_when`], looking only at requests after the first `since[i]` cluster i logged.
fn kill_when_since(
    env: &Env,
    since: &[usize],
    child: &mut Child,
    what: &str,
    matches: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if env
            .clusters
            .iter()
            .zip(since)
            .any(|(c, &n)| writes(c, n).iter().any(|(_, path)| matches(path)))
        {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("meshup ended ({status}) before {what}");
        }
        assert!(Instant::now() < deadline, "never reached {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    if std::env::var_os("CRASH_DEBUG").is_some() {
        for (c, &n) in env.clusters.iter().zip(since) {
            eprintln!("{}: {:?}", c.name(), writes(c, n));
        }
    }
    // SAFETY: kill(2) of the process group we created for the child.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
    // A killed helm may still have requests in flight; let them land.
    std::thread::sleep(Duration::from_millis(300));
}

#[track_caller]
fn converged(env: &Env, mesh: &str) {
    for cluster in &env.clusters {
        assert_eq!(
            release_status(cluster, "istio-base").as_deref(),
            Some("deployed"),
            "{}",
            cluster.name()
        );
        assert_eq!(
            release_status(cluster, "istiod").as_deref(),
            Some("deployed"),
            "{}",
            cluster.name()
        );
        assert_eq!(
            remote_secrets(cluster).len(),
            env.clusters.len() - 1,
            "{}",
            cluster.name()
        );
    }
    env.meshup(&["status", "-f", mesh]).expect(0);
}

#[track_caller]
fn cleaned(env: &Env) {
    for cluster in &env.clusters {
        assert!(
            cluster.get(&format!("/api/v1/namespaces/{NS}")).is_none(),
            "{}",
            cluster.name()
        );
        assert!(helm_records(cluster).is_empty(), "{}", cluster.name());
    }
}

/// A three-cluster env whose API servers answer slowly enough that helm is caught mid-way.
fn slow_env(tools: &str) -> Env {
    Env::with(
        tools,
        3,
        Options {
            latency: Duration::from_millis(15),
            ..Options::default()
        },
    )
}

fn killed_early_then_mid_base(tools: &str) {
    let env = slow_env(tools);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();

    // Killed as soon as it holds its locks: the next install takes them over and converges.
    let mut child = spawn(&env, &["install", "-f", mesh]);
    kill_when(&env, &mut child, "the locks", |p| p.contains("/leases"));
    let run = env.meshup(&["install", "-f", mesh]).expect(0);
    assert!(
        run.stderr
            .contains("took over the lock of `meshup install by"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("is gone"), "{}", run.stderr);
    converged(&env, mesh);

    // Killed while helm writes istio-base of a fresh install: uninstall cleans up.
    env.meshup(&["uninstall", "--yes", "-f", mesh]).expect(0);
    let since: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    let mut child = spawn(&env, &["install", "-f", mesh]);
    // The webhook configuration went with the uninstall (the CRDs stayed, so Helm 3 may not
    // write those again); Helm 4 applies it (PATCH .../NAME), Helm 3 creates it (POST).
    kill_when_since(&env, &since, &mut child, "istio-base's objects", |p| {
        p.contains("/validatingwebhookconfigurations")
    });
    let run = env.meshup(&["uninstall", "--yes", "-f", mesh]).expect(0);
    assert!(run.stderr.contains("took over the lock"), "{}", run.stderr);
    cleaned(&env);
}

fn killed_mid_istiod_then_during_link(tools: &str) {
    let env = slow_env(tools);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();

    // Killed while helm installs istiod: the next install recovers the pending release.
    let mut child = spawn(&env, &["install", "-f", mesh]);
    kill_when(&env, &mut child, "istiod's Deployment", |p| {
        p.contains("/namespaces/istio-system/deployments")
    });
    let pending: Vec<Option<String>> = env
        .clusters
        .iter()
        .map(|c| release_status(c, "istiod"))
        .collect();
    assert!(
        pending
            .iter()
            .any(|s| s.as_deref() == Some("pending-install")),
        "the kill left no release pending: {pending:?}"
    );
    let run = env.meshup(&["install", "-f", mesh]).expect(0);
    assert!(
        run.stderr
            .contains("istiod: recovered from an interrupted install"),
        "{}",
        run.stderr
    );
    converged(&env, mesh);

    // Killed while linking: uninstall takes everything away.
    for cluster in &env.clusters {
        cluster.delete(&format!(
            "/api/v1/namespaces/{NS}/secrets/istio-remote-secret-cluster1"
        ));
    }
    let since: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    let mut child = spawn(&env, &["install", "-f", mesh]);
    kill_when_since(&env, &since, &mut child, "the link", |p| {
        p.contains("/secrets/istio-remote-secret-cluster1")
    });
    env.meshup(&["uninstall", "--yes", "-f", mesh]).expect(0);
    cleaned(&env);
}

fn three_outages_during_one_install(tools: &str) {
    let env = Env::new(tools, 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    // cluster2's API server drops every connection for 3 s, three times: at its 5th write
    // (istio-base's release record), its 26th (istiod's objects, Istio's charts: base writes
    // 15 CRDs) and its 45th (after the retries, the link).
    let cluster2 = env.cluster("cluster2");
    for k in [5, 26, 45] {
        cluster2.outage_after_writes(k, Duration::from_secs(3));
    }
    let run = env.meshup(&["install", "-f", mesh]).expect(0);
    let retries: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("[cluster2]") && l.contains(": retry "))
        .collect();
    assert!(retries.len() >= 2, "{}", run.stderr);
    assert!(
        retries
            .iter()
            .all(|l| l.contains("connection") || l.contains("EOF") || l.contains("HTTP")),
        "{retries:#?}"
    );
    converged(&env, mesh);
}

// A kill leaves a release as each helm leaves it (pending states differ): both. An outage is
// ridden out by meshup's retries, and two installs at once by its locks: one helm each.
split_helms!(
    both: [killed_early_then_mid_base, killed_mid_istiod_then_during_link],
    helm4: [three_outages_during_one_install],
    helm3: [two_installs_at_once_one_stops_naming_the_other_and_the_mesh_converges],
);

// --- locks ----------------------------------------------------------------------------------------

/// A lease as another meshup on another host would hold it, renewed `ago` ago.
fn foreign_lease(cluster: &TestCluster, ago: time::Duration) {
    let renewed = time::OffsetDateTime::now_utc() - ago;
    let stamp = renewed
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    cluster
        .put(
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": format!("meshup-{NS}"), "namespace": "kube-system",
                                "annotations": {"meshup.io/host": "build-7", "meshup.io/pid": "4242",
                                                "meshup.io/user": "bob", "meshup.io/command": "install",
                                                "meshup.io/started": "2026-11-25T09:00:00Z"}},
                   "spec": {"holderIdentity": "meshup install by bob@build-7 (pid 4242)",
                            "leaseDurationSeconds": 30, "acquireTime": stamp, "renewTime": stamp}}),
        )
        .unwrap();
}

#[test]
fn a_live_holder_stops_a_second_run_before_it_changes_anything() {
    let env = Env::new("helm4", 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    foreign_lease(env.cluster("cluster2"), time::Duration::seconds(1));
    let before = env.mutations();
    let run = env.meshup(&["install", "-f", mesh]).expect(1);
    assert!(
        run.stderr.contains("[cluster2] `meshup install by bob@build-7 (pid 4242)` has been changing this cluster since 2026-11-25 09:00:00 UTC"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--wait-for-lock"), "{}", run.stderr);
    // Nothing but cluster1's lock, taken and given back.
    let lock = format!("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/meshup-{NS}");
    for (cluster, before) in env.clusters.iter().zip(before) {
        let new: Vec<(String, String)> = writes(cluster, 0)
            .into_iter()
            .skip(before as usize)
            .filter(|(_, p)| *p != lock && !p.ends_with("/leases"))
            .collect();
        assert!(new.is_empty(), "{}: {new:?}", cluster.name());
        assert!(cluster.get(&format!("/api/v1/namespaces/{NS}")).is_none());
    }
}

#[test]
fn a_holder_that_stopped_renewing_is_taken_over_and_one_that_lets_go_is_waited_for() {
    let env = Env::new("helm4", 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    foreign_lease(env.cluster("cluster1"), time::Duration::seconds(120));
    let run = env.meshup(&["install", "-f", mesh]).expect(0);
    assert!(
        run.stderr.contains(
            "[cluster1] took over the lock of `meshup install by bob@build-7 (pid 4242)`"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("its last renewal was at"),
        "{}",
        run.stderr
    );

    // A live holder that lets go: --wait-for-lock waits (it looks at the Lease again and
    // again, and changes nothing), then goes on.
    let cluster2 = env.cluster("cluster2");
    let lease = format!("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/meshup-{NS}");
    foreign_lease(cluster2, time::Duration::seconds(0));
    let since = cluster2.requests_log().len();
    let mut child = spawn(&env, &["install", "--wait-for-lock", "60s", "-f", mesh]);
    let lease_reads = || {
        cluster2
            .requests_log()
            .iter()
            .skip(since)
            .filter(|r| r.method == "GET" && r.path.starts_with(&lease))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while lease_reads() < 3 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "meshup ended instead of waiting for the lock"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "meshup never looked at the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let waited = mesh_writes(cluster2, since);
    assert!(waited.is_empty(), "wrote while waiting: {waited:?}");
    let released = cluster2.requests_log().len();
    cluster2.delete(&lease).unwrap();
    let output = child.wait_with_output().unwrap();
    let run = Run::from(output).expect(0);
    assert!(!run.stderr.contains("took over"), "{}", run.stderr);
    // It took the freed lock (a create, after the holder's Lease was deleted).
    let after = writes(cluster2, released);
    assert!(
        after
            .iter()
            .any(|(m, p)| m == "POST" && p.ends_with("/kube-system/leases")),
        "the lock was not taken after it was let go: {after:?}"
    );
}

fn two_installs_at_once_one_stops_naming_the_other_and_the_mesh_converges(tools: &str) {
    let env = Env::with(
        tools,
        2,
        Options {
            latency: Duration::from_millis(10),
            ..Options::default()
        },
    );
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    let first = spawn(&env, &["install", "-f", mesh]);
    std::thread::sleep(Duration::from_millis(1500));
    let second = env.meshup(&["install", "-f", mesh]);
    let first = Run::from(first.wait_with_output().unwrap());
    let (winner, loser) = if first.code == Some(0) {
        (first, second)
    } else {
        (second, first)
    };
    let winner = winner.expect(0);
    let loser = loser.expect(1);
    assert!(
        loser
            .stderr
            .contains("has been changing this cluster since"),
        "{}",
        loser.stderr
    );
    assert!(!winner.stderr.contains("took over"), "{}", winner.stderr);
    converged(&env, mesh);
}
