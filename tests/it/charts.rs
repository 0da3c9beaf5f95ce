//! Charts once per run, end to end: a chart repository served over HTTP, read once per
//! install (not per cluster), each chart downloaded once into meshup's cache, none of it again
//! on a warm cache, and a chart whose bytes do not match the repository's digest refused.

use super::common::*;

fn index_reads(log: &[String]) -> usize {
    log.iter().filter(|p| p.ends_with("/index.yaml")).count()
}

fn downloads(log: &[String]) -> usize {
    log.iter().filter(|p| p.ends_with(".tgz")).count()
}

/// The mesh of `env` with charts from `url`, pinned to `version` when given.
fn mesh_from(env: &Env, url: &str, version: Option<&str>) -> std::path::PathBuf {
    let mesh = env.mesh_file(&[], &[], "");
    let charts = istio_charts(ISTIO_FROM).display().to_string();
    let pin = version
        .map(|v| format!("  version: {v}\n"))
        .unwrap_or_default();
    let text = std::fs::read_to_string(&mesh)
        .unwrap()
        .replace(&format!("  version: {ISTIO_FROM}\n"), &pin)
        .replace(&charts, url);
    std::fs::write(&mesh, text).unwrap();
    mesh
}

#[test]
fn a_repository_is_read_once_per_install_and_not_at_all_on_a_warm_cache() {
    let env = Env::new("helm4", 3);
    let charts = ChartRepo::serve(&env.tools.join("helm"), &["base", "istiod"]);
    let mesh = mesh_from(&env, &charts.url, Some(ISTIO_FROM));
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    let cold = charts.take();
    assert_eq!(index_reads(&cold), 1, "{cold:?}");
    assert_eq!(
        downloads(&cold),
        2,
        "one download per chart, not per cluster: {cold:?}"
    );
    for cluster in &env.clusters {
        assert_eq!(
            release_status(cluster, "istiod").as_deref(),
            Some("deployed")
        );
    }

    env.meshup(&["install", "-f", mesh]).expect(0);
    let warm = charts.take();
    assert!(
        warm.is_empty(),
        "a warm cache needs no repository: {warm:?}"
    );
    env.meshup(&["status", "-f", mesh]).expect(0);
}

#[test]
fn an_unpinned_mesh_installs_the_newest_release_everywhere_and_says_so() {
    let env = Env::new("helm4", 2);
    let charts = ChartRepo::serve(&env.tools.join("helm"), &["base", "istiod"]);
    let mesh = mesh_from(&env, &charts.url, None);
    let run = env
        .meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(0);
    assert!(
        run.stderr.contains(&format!(
            "`istio.version` is not set: installing {ISTIO_FROM}, the newest in"
        )),
        "{}",
        run.stderr
    );
    let log = charts.take();
    assert_eq!((index_reads(&log), downloads(&log)), (1, 2), "{log:?}");
}

#[test]
fn a_chart_that_does_not_match_the_repository_digest_is_refused_before_any_cluster_changes() {
    let env = Env::new("helm4", 2);
    let charts = ChartRepo::serve(&env.tools.join("helm"), &["base", "istiod"]);
    // The archive changes after the index was made: its digest no longer matches.
    let archive = charts.dir.path().join(format!("istiod-{ISTIO_FROM}.tgz"));
    let mut bytes = std::fs::read(&archive).unwrap();
    bytes.extend_from_slice(b"tampered");
    std::fs::write(&archive, bytes).unwrap();
    let mesh = mesh_from(&env, &charts.url, Some(ISTIO_FROM));
    let before = env.mutations();
    let run = env
        .meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(1);
    assert!(
        run.stderr.contains(&format!("chart `istiod` {ISTIO_FROM}"))
            && run.stderr.contains("do not install it"),
        "{}",
        run.stderr
    );
    assert_eq!(before, env.mutations(), "a cluster was changed");
}

#[test]
fn plan_shows_the_pulls_and_installs_the_pulled_archives() {
    let env = Env::new("helm4", 2);
    let mesh = mesh_from(&env, "https://charts.example.test/istio", Some(ISTIO_FROM));
    let run = env
        .meshup(&["plan", "-f", mesh.to_str().unwrap()])
        .expect(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let repo_add = lines
        .iter()
        .position(|l| l.starts_with("helm repo add meshup-"))
        .expect("a repo add");
    let pulls: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("helm pull meshup-"))
        .collect();
    assert_eq!(pulls.len(), 2, "{}", run.stdout);
    let install = lines
        .iter()
        .position(|l| l.starts_with("helm upgrade --install istiod "))
        .unwrap();
    assert!(repo_add < install);
    assert!(
        lines[install].contains(&format!("/istiod-{ISTIO_FROM}.tgz")),
        "{}",
        lines[install]
    );
    assert!(!lines[install].contains("--repo"), "{}", lines[install]);
}
