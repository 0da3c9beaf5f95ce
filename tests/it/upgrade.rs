//! `meshup upgrade`: a canary upgrade of a live multi-cluster mesh, end to end with the real
//! helm 3 and 4, from Istio's charts of one build ([`ISTIO_FROM`]) to the next minor's
//! ([`ISTIO_TO`]). Injection is decided by
//! the test servers from the webhook configurations the charts and meshup leave behind, so a
//! pod's revision (`sidecar.istio.io/status`) is what a real cluster would give it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::*;
use meshup_testcluster::{ISTIO_TO_REVISION as NEW_REV, TestCluster};

const TRAFFIC_NS: &str = "meshup-verify";

/// The mesh file of `env` moved to the charts in `charts`, of `version`.
fn mesh_at(env: &Env, mesh: &std::path::Path, charts: &std::path::Path, version: &str) -> String {
    mesh_moved(
        env,
        mesh,
        version,
        &charts.display(),
        &format!("mesh-{version}.yaml"),
    )
}

/// The istiod revisions running in `cluster` (their Deployments' `istio.io/rev`).
fn istiod_revisions(cluster: &TestCluster) -> BTreeSet<String> {
    cluster
        .list(&format!("/apis/apps/v1/namespaces/{NS}/deployments"))
        .iter()
        .filter(|d| d["metadata"]["labels"]["app"] == "istiod")
        .map(|d| {
            d["metadata"]["labels"]["istio.io/rev"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        })
        .collect()
}

/// Running pods in `ns` by the revision that injected them.
fn proxies_in(cluster: &TestCluster, ns: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for pod in cluster.list(&format!("/api/v1/namespaces/{ns}/pods")) {
        if pod["status"]["phase"] != "Running" || pod["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let Some(status) = pod["metadata"]["annotations"]["sidecar.istio.io/status"].as_str()
        else {
            continue;
        };
        let status: Value = serde_json::from_str(status).unwrap();
        *out.entry(status["revision"].as_str().unwrap_or("default").to_string())
            .or_default() += 1;
    }
    out
}

fn releases(cluster: &TestCluster) -> BTreeSet<String> {
    helm_records(cluster)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// `verify --traffic --keep`: every cluster reaches every cluster, and the helloworld
/// Deployments stay (their proxies are what the upgrade must move).
fn traffic_kept(env: &Env, mesh: &str) {
    traffic_with(env, mesh, &["--keep"]);
}

/// install ISTIO_FROM → start ISTIO_TO → promote cluster1 (with its workloads) → traffic across
/// mixed revisions → finish refused twice (not promoted; old proxies left) → promote the
/// rest → finish → only the new revision runs, install converges on it, traffic flows and
/// doctor finds nothing wrong.
fn start_promote_finish(tools: &str) {
    let env = Env::new(tools, 2);
    let old = env.mesh_file(&[], &[], "");
    let old = old.to_str().unwrap();
    env.meshup(&["install", "-f", old]).expect(0);
    traffic_kept(&env, old);
    let charts = istio_charts(ISTIO_TO);
    let new = mesh_at(&env, std::path::Path::new(old), &charts, ISTIO_TO);

    let run = env.meshup(&["upgrade", "start", "-f", &new]).expect(0);
    assert!(run.stderr.contains("upgrade promote"), "{}", run.all());
    // The old istiod keeps its chart until finish: no problem for status.
    let status = env.meshup(&["status", "-f", &new]).expect(0);
    assert!(
        status.stdout.contains(&format!("{NEW_REV} beside default")),
        "{}",
        status.all()
    );
    for cluster in &env.clusters {
        assert_eq!(
            istiod_revisions(cluster),
            BTreeSet::from(["default".into(), NEW_REV.into()]),
            "{}",
            cluster.name()
        );
        assert!(
            helm_records(cluster).contains(&("istio-base".into(), "2".into())),
            "istio-base upgraded in {}: {:?}",
            cluster.name(),
            helm_records(cluster)
        );
        // Nothing moved yet.
        assert_eq!(
            proxies_in(cluster, TRAFFIC_NS).keys().collect::<Vec<_>>(),
            ["default"]
        );
    }
    // Both revisions of every cluster see every peer.
    let run = env
        .meshup(&["verify", "-f", &new, "--wait", "30s", "--output", "json"])
        .expect(0);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        report["sync"].as_array().unwrap().len(),
        4,
        "{}",
        run.stdout
    );

    env.meshup(&[
        "upgrade",
        "promote",
        "--clusters",
        "cluster1",
        "--restart-workloads",
        "-f",
        &new,
    ])
    .expect(0);
    assert_eq!(
        proxies_in(env.cluster("cluster1"), TRAFFIC_NS)
            .keys()
            .collect::<Vec<_>>(),
        [NEW_REV]
    );
    assert_eq!(
        proxies_in(env.cluster("cluster2"), TRAFFIC_NS)
            .keys()
            .collect::<Vec<_>>(),
        ["default"]
    );
    // Mixed revisions across the clusters: every istiod synced and traffic flows everywhere.
    traffic_kept(&env, &new);

    let run = env.meshup(&["upgrade", "finish", "-f", &new]).expect(2);
    assert!(
        run.stderr.contains("`cluster2` cannot finish") && run.stderr.contains("promote"),
        "{}",
        run.all()
    );
    env.meshup(&["upgrade", "promote", "-f", &new]).expect(0);
    let run = env.meshup(&["upgrade", "finish", "-f", &new]).expect(2);
    assert!(
        run.stderr.contains(TRAFFIC_NS) && run.stderr.contains("cluster2"),
        "the refusal names the namespace and cluster: {}",
        run.all()
    );
    for cluster in &env.clusters {
        assert!(istiod_revisions(cluster).contains("default"));
    }
    env.meshup(&["upgrade", "promote", "--restart-workloads", "-f", &new])
        .expect(0);
    env.meshup(&["upgrade", "finish", "-f", &new]).expect(0);
    for cluster in &env.clusters {
        assert_eq!(
            istiod_revisions(cluster),
            BTreeSet::from([NEW_REV.into()]),
            "{}",
            cluster.name()
        );
        assert!(
            !releases(cluster).contains("istiod"),
            "{}: {:?}",
            cluster.name(),
            releases(cluster)
        );
        assert_eq!(
            proxies_in(cluster, TRAFFIC_NS).keys().collect::<Vec<_>>(),
            [NEW_REV]
        );
    }
    // The mesh file names no revision: every command finds the one the clusters run; the
    // proxies are counted from the injected pods alone.
    let status = env.meshup(&["status", "-f", &new]).expect(0);
    assert!(
        status.all().contains(&format!("{NEW_REV}:")),
        "status counts the proxies of {NEW_REV}: {}",
        status.all()
    );
    let since: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    env.meshup(&["install", "-f", &new]).expect(0);
    for (cluster, &n) in env.clusters.iter().zip(&since) {
        assert!(
            mesh_writes(cluster, n).is_empty(),
            "install after the upgrade changes nothing in {}: {:?}",
            cluster.name(),
            mesh_writes(cluster, n)
        );
    }
    // A second finish has nothing left to do.
    env.meshup(&["upgrade", "finish", "-f", &new]).expect(0);
    traffic_reaches_every_cluster(&env, &new);
    // doctor finds nothing wrong with the upgraded mesh, from the mesh file and from the
    // contexts alone (which it names by istiod's CLUSTER_ID, with the mesh ID it holds).
    let (code, report) = super::doctor::doctor(&env, &["-f", &new]);
    assert_eq!(code, Some(0), "{report:#}");
    let (code, report) =
        super::doctor::doctor(&env, &["--context", "cluster1", "--context", "cluster2"]);
    assert_eq!(code, Some(0), "{report:#}");
    let names: Vec<&str> = report["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cluster1", "cluster2"]);
    assert_eq!(report["meshId"], "mesh1", "{report:#}");
    // status, verify, promote's gates, finish's check and doctor read only injected pods.
    for cluster in &env.clusters {
        assert_eq!(
            unfiltered_pod_lists(cluster),
            Vec::<String>::new(),
            "{} was asked for every pod",
            cluster.name()
        );
    }
}

/// Helm 4 here; Helm 3 runs start, promote and finish in
/// `skew_and_jumps_are_refused_with_nothing_changed` and rollback in
/// `rollback_after_promote_restores_the_old_revision`.
#[test]
fn start_promote_finish_helm4() {
    start_promote_finish("helm4");
}

/// After promote, rollback puts tags, base and workloads back on the old revision and removes
/// the new one; the old mesh file installs again.
#[test]
fn rollback_after_promote_restores_the_old_revision() {
    let env = Env::new("helm3", 2);
    let old = env.mesh_file(&[], &[], "");
    let old = old.to_str().unwrap();
    env.meshup(&["install", "-f", old]).expect(0);
    traffic_kept(&env, old);
    let charts = istio_charts(ISTIO_TO);
    let new = mesh_at(&env, std::path::Path::new(old), &charts, ISTIO_TO);
    env.meshup(&["upgrade", "start", "--wave-size", "2", "-f", &new])
        .expect(0);
    env.meshup(&["upgrade", "promote", "--restart-workloads", "-f", &new])
        .expect(0);
    for cluster in &env.clusters {
        assert_eq!(
            proxies_in(cluster, TRAFFIC_NS).keys().collect::<Vec<_>>(),
            [NEW_REV]
        );
    }
    // Ctrl-C half-way through the rollback; the next run finishes it.
    ctrl_c_when(
        &env,
        &["upgrade", "rollback", "--restart-workloads", "-f", &new],
        "a tag moved back",
        |path| path.contains("mutatingwebhookconfigurations/istio-revision-tag-default"),
    );
    env.meshup(&["upgrade", "rollback", "--restart-workloads", "-f", &new])
        .expect(0);
    // And once more: nothing left to roll back.
    let run = env.meshup(&["upgrade", "rollback", "-f", &new]).expect(0);
    assert!(run.stderr.contains("nothing to roll back"), "{}", run.all());
    for cluster in &env.clusters {
        assert_eq!(
            istiod_revisions(cluster),
            BTreeSet::from(["default".into()]),
            "{}",
            cluster.name()
        );
        assert!(!releases(cluster).contains(&format!("istiod-{NEW_REV}")));
        assert_eq!(
            proxies_in(cluster, TRAFFIC_NS).keys().collect::<Vec<_>>(),
            ["default"],
            "{}",
            cluster.name()
        );
    }
    env.meshup(&["verify", "-f", old, "--wait", "30s"])
        .expect(0);
    env.meshup(&["install", "-f", old]).expect(0);
    traffic_reaches_every_cluster(&env, old);
}

/// Presses Ctrl-C (SIGINT to meshup's process group) once some cluster answered a write
/// whose path `matches`; meshup exits 130.
fn ctrl_c_when(env: &Env, args: &[&str], what: &str, matches: impl Fn(&str) -> bool) {
    let since: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    let mut child = spawn(env, args);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if env
            .clusters
            .iter()
            .zip(&since)
            .any(|(c, &n)| writes(c, n).iter().any(|(_, path)| matches(path)))
        {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("meshup ended ({status}) before {what}");
        }
        assert!(Instant::now() < deadline, "never reached {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) of the process group we created for the child.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGINT);
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Ctrl-C in each phase; the next run of the same phase finishes it.
#[test]
fn ctrl_c_in_any_phase_and_a_rerun_resumes() {
    // Two clusters: the waves across three are start_promote_finish's subject.
    let env = Env::new("helm4", 2);
    let old = env.mesh_file(&[], &[], "");
    let old = old.to_str().unwrap();
    env.meshup(&["install", "-f", old]).expect(0);
    traffic_kept(&env, old);
    let charts = istio_charts(ISTIO_TO);
    let new = mesh_at(&env, std::path::Path::new(old), &charts, ISTIO_TO);

    ctrl_c_when(
        &env,
        &["upgrade", "start", "-f", &new],
        "the new istiod in a cluster",
        |path| path.contains("/deployments") && path.contains(&format!("istiod-{NEW_REV}")),
    );
    env.meshup(&["upgrade", "start", "-f", &new]).expect(0);
    for cluster in &env.clusters {
        assert_eq!(istiod_revisions(cluster).len(), 2, "{}", cluster.name());
    }
    ctrl_c_when(
        &env,
        &["upgrade", "promote", "--restart-workloads", "-f", &new],
        "a revision tag",
        |path| path.contains("mutatingwebhookconfigurations/istio-revision-tag-default"),
    );
    env.meshup(&["upgrade", "promote", "--restart-workloads", "-f", &new])
        .expect(0);
    ctrl_c_when(
        &env,
        &["upgrade", "finish", "-f", &new],
        "the old istiod's removal",
        |path| path.contains("istio-sidecar-injector") || path.contains("/deployments/istiod"),
    );
    env.meshup(&["upgrade", "finish", "-f", &new]).expect(0);
    for cluster in &env.clusters {
        assert_eq!(
            istiod_revisions(cluster),
            BTreeSet::from([NEW_REV.into()]),
            "{}",
            cluster.name()
        );
        assert!(
            helm_records(cluster)
                .iter()
                .all(|(name, _)| release_status(cluster, name).as_deref() == Some("deployed")),
            "{:?}",
            helm_records(cluster)
        );
    }
    traffic_reaches_every_cluster(&env, &new);
}

/// Versions too far apart, a minor upgrade by install, or an upgrade under way: exit 2 with
/// nothing changed.
#[test]
fn skew_and_jumps_are_refused_with_nothing_changed() {
    let env = Env::new("helm3", 2);
    let old = env.mesh_file(&[], &[], "");
    let old = old.to_str().unwrap();
    env.meshup(&["install", "-f", old]).expect(0);
    // Two minor versions past ISTIO_FROM: Istio's newer charts stamped one minor further.
    let two_apart = "1.32.0";
    let charts_30 = meshup_testcluster::istio_charts_as(ISTIO_TO, two_apart);
    let to_30 = mesh_at(&env, std::path::Path::new(old), charts_30.path(), two_apart);
    let charts_29 = istio_charts(ISTIO_TO);
    let to_29 = mesh_at(&env, std::path::Path::new(old), &charts_29, ISTIO_TO);
    let since: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    let unchanged = |since: &[usize]| {
        for (cluster, &n) in env.clusters.iter().zip(since) {
            assert!(
                mesh_writes(cluster, n).is_empty(),
                "{}: {:?}",
                cluster.name(),
                mesh_writes(cluster, n)
            );
        }
    };
    let run = env.meshup(&["upgrade", "start", "-f", &to_30]).expect(2);
    assert!(run.stderr.contains("one minor version"), "{}", run.all());
    let run = env.meshup(&["install", "-f", &to_30]).expect(2);
    assert!(run.stderr.contains("one minor version"), "{}", run.all());
    let run = env.meshup(&["install", "-f", &to_29]).expect(2);
    assert!(
        run.stderr.contains("meshup upgrade start") && run.stderr.contains("--in-place"),
        "{}",
        run.all()
    );
    let run = env.meshup(&["upgrade", "promote", "-f", &to_29]).expect(2);
    assert!(run.stderr.contains("upgrade start"), "{}", run.all());
    unchanged(&since);

    // cluster1 all the way to ISTIO_TO; cluster2 stays on ISTIO_FROM: two_apart would be
    // two apart.
    for phase in ["start", "promote", "finish"] {
        env.meshup(&["upgrade", phase, "--clusters", "cluster1", "-f", &to_29])
            .expect(0);
    }
    assert_eq!(
        istiod_revisions(env.cluster("cluster1")),
        BTreeSet::from([NEW_REV.into()])
    );
    let since: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    let run = env
        .meshup(&["upgrade", "start", "--clusters", "cluster1", "-f", &to_30])
        .expect(2);
    assert!(
        run.stderr.contains("more than one minor version apart"),
        "{}",
        run.all()
    );
    unchanged(&since);
    // An upgrade under way blocks install, naming the next command.
    env.meshup(&["upgrade", "start", "--clusters", "cluster2", "-f", &to_29])
        .expect(0);
    let since2: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    let run = env.meshup(&["install", "-f", &to_29]).expect(2);
    assert!(
        run.stderr.contains("upgrade is under way in `cluster2`")
            && run.stderr.contains("meshup upgrade promote"),
        "{}",
        run.all()
    );
    unchanged(&since2);
    let status = env.meshup(&["status", "-f", &to_29]);
    assert!(status.stdout.contains("promote next"), "{}", status.all());
}

/// `install --in-place` changes the minor version one cluster at a time.
#[test]
fn install_in_place_goes_one_cluster_at_a_time() {
    let env = Env::new("helm3", 2);
    let old = env.mesh_file(&[], &[], "");
    let old = old.to_str().unwrap();
    env.meshup(&["install", "-f", old]).expect(0);
    let charts = istio_charts(ISTIO_TO);
    let new = mesh_at(&env, std::path::Path::new(old), &charts, ISTIO_TO);
    let run = env.meshup(&["install", "--in-place", "-f", &new]).expect(0);
    assert!(
        run.stderr.contains("(cluster1)") && run.stderr.contains("(cluster2)"),
        "one wave per cluster: {}",
        run.all()
    );
    for cluster in &env.clusters {
        let istiod = cluster
            .get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/istiod"))
            .unwrap();
        assert_eq!(
            istiod["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next(),
            Some(ISTIO_TO)
        );
    }
    env.meshup(&["verify", "-f", &new, "--wait", "30s"])
        .expect(0);
}

/// Primary-remote meshes are refused: Istio's remote injector is not per revision.
#[test]
fn primary_remote_meshes_are_refused() {
    let env = Env::new("helm4", 2);
    let mesh = env.path("remote.yaml");
    std::fs::write(
        &mesh,
        format!(
            "meshID: mesh1\nistio:\n  version: {ISTIO_FROM}\n  charts: {}\nclusters:\n  - name: cluster1\n    context: cluster1\n    network: n1\n  - name: cluster2\n    context: cluster2\n    network: n1\n    role: remote\n    primary: cluster1\n",
            istio_charts(ISTIO_FROM).display()
        ),
    )
    .unwrap();
    let run = env
        .meshup(&["upgrade", "start", "-f", mesh.to_str().unwrap()])
        .expect(2);
    assert!(run.stderr.contains("#34867"), "{}", run.all());
    assert_eq!(env.mutations(), vec![0, 0]);
}
