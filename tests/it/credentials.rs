//! Credentials over time: rotating reader tokens, taking a cluster out of a live mesh, adding
//! one. Tokens are real credentials on the test API servers: one is accepted only while the
//! token secret holding it exists. istiod follows its source: it acts on a changed remote
//! secret an informer lag after the write, rebuilds that cluster (logging `Update cluster`),
//! and keeps reporting a peer `synced` once it synced, whatever happens to its token later —
//! so a rotation must be judged by when istiod acted, not by clusterz alone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use meshup::tools::remote_secret::READER_TOKEN_LABEL;
use meshup_testcluster::{RandomFaults, TestCluster};
use serde_json::Value;

use crate::common::*;

/// Istio 1.30 and later swap a rebuilt remote cluster in once it synced (no gap): Istio's
/// charts of [`ISTIO_FROM`] do. Up to 1.29 istiod stops the old one first: these values run
/// Istio's chart with a 1.29 image (the emulated istiod takes its behaviour from the tag).
const ISTIO_1_29: &str = "values:\n  global:\n    tag: 1.29.0\n";

/// The reader token secrets meshup made in `cluster` (filled or not).
fn reader_token_secrets(cluster: &TestCluster) -> Vec<Value> {
    secrets(cluster)
        .into_iter()
        .filter(|s| {
            s.pointer(&format!(
                "/metadata/labels/{}",
                READER_TOKEN_LABEL.replace('/', "~1")
            ))
            .and_then(Value::as_str)
                == Some("true")
        })
        .collect()
}

/// The reader token secrets meshup made in `cluster`, by name: their tokens.
fn reader_tokens(cluster: &TestCluster) -> BTreeMap<String, String> {
    reader_token_secrets(cluster)
        .into_iter()
        .map(|s| {
            let name = s["metadata"]["name"].as_str().unwrap().to_string();
            (name, decode(&s["data"]["token"]))
        })
        .collect()
}

/// The names of the reader token secrets meshup made in `cluster`.
fn reader_token_names(cluster: &TestCluster) -> BTreeSet<String> {
    names(&reader_token_secrets(cluster))
}

/// The HTTP status `cluster` answers a reader's request with, carrying `token`.
fn status_with(cluster: &TestCluster, token: &str) -> u16 {
    cluster
        .request("GET", "/api/v1/namespaces?limit=1", Some(token), None)
        .unwrap()
        .status
}

/// The kubeconfig in `holder`'s remote secret for `source`.
fn remote_kubeconfig(holder: &TestCluster, source: &str) -> Option<String> {
    let secret = holder.get(&format!(
        "/api/v1/namespaces/{NS}/secrets/istio-remote-secret-{source}"
    ))?;
    Some(decode(&secret["data"][source]))
}

/// The names of `cluster`'s istiod pods.
fn istiod_pod_names(cluster: &TestCluster) -> Vec<String> {
    cluster
        .list(&format!("/api/v1/namespaces/{NS}/pods"))
        .into_iter()
        .filter(|p| p.pointer("/metadata/labels/app").and_then(Value::as_str) == Some("istiod"))
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// What istiod in `pod` of `cluster` logged (its `discovery` container). A log that cannot
/// be read fails the test: counted as empty, it would read as "no build yet".
fn istiod_log(cluster: &TestCluster, pod: &str) -> String {
    let path = format!("/api/v1/namespaces/{NS}/pods/{pod}/log?container=discovery");
    let reply = cluster
        .request("GET", &path, Some(cluster.admin_token()), None)
        .unwrap_or_else(|e| panic!("{}: GET {path}: {e}", cluster.name()));
    assert_eq!(
        reply.status,
        200,
        "{}: GET {path}: {}",
        cluster.name(),
        reply.body
    );
    reply.body
}

/// How many times istiod in `pod` built cluster `source` (`Add cluster` or `Update cluster`).
fn builds_of(cluster: &TestCluster, pod: &str, source: &str) -> usize {
    istiod_log(cluster, pod)
        .lines()
        .filter(|l| {
            (l.contains("\tUpdate cluster\t") || l.contains("\tAdd cluster\t"))
                && l.contains(&format!("cluster={source} "))
        })
        .count()
}

/// Runs `meshup args` while a thread watches every source's old reader token: the moment it
/// is gone (revoked), every istiod pod of every peer must already have built that source anew
/// since the run started. Returns the run and each revocation seen too early.
fn run_watching_revocations(env: &Env, args: &[&str]) -> (Run, Vec<String>) {
    let builds_before: BTreeMap<(String, String, String), usize> = env
        .clusters
        .iter()
        .flat_map(|peer| {
            istiod_pod_names(peer).into_iter().flat_map(move |pod| {
                env.clusters
                    .iter()
                    .filter(move |s| s.name() != peer.name())
                    .map(move |source| {
                        (
                            (
                                peer.name().to_string(),
                                pod.clone(),
                                source.name().to_string(),
                            ),
                            builds_of(peer, &pod, source.name()),
                        )
                    })
            })
        })
        .collect();
    let old: BTreeMap<&str, Vec<String>> = env
        .clusters
        .iter()
        .map(|c| (c.name(), reader_token_names(c).into_iter().collect()))
        .collect();
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut early = Vec::new();
            let mut judged: BTreeSet<&str> = BTreeSet::new();
            // Polls until the run ended, then once more: a revocation in the run's last
            // moments is judged too.
            let mut last = false;
            while !last {
                last = stop.load(Ordering::SeqCst);
                for source in &env.clusters {
                    let name = source.name();
                    if judged.contains(name) {
                        continue;
                    }
                    let now = reader_token_names(source);
                    if old[name].iter().any(|t| now.contains(t)) {
                        continue;
                    }
                    // Revoked: has every peer's istiod acted on the new secret?
                    judged.insert(name);
                    for ((peer, pod, s), before) in &builds_before {
                        if s == name && builds_of(env.cluster(peer), pod, name) <= *before {
                            early.push(format!("{name}'s old token revoked before istiod in {peer}/{pod} rebuilt it"));
                        }
                    }
                }
                if !last {
                    thread::sleep(Duration::from_millis(10));
                }
            }
            early
        });
        let run = env.meshup(args);
        stop.store(true, Ordering::SeqCst);
        (run, watcher.join().unwrap())
    })
}

/// `link --rotate`: every peer ends up with the new token, every old token is refused, no
/// istiod restarts, and no old token is revoked before every peer's istiod acted on the new
/// secret — which, with istiod's informer lag made long here, a rotation that revoked right
/// after applying would fail.
fn link_rotate_replaces_every_token_after_istiod_acted(tools: &str, istio: &str) {
    let env = Env::with(
        tools,
        3,
        meshup_testcluster::Options {
            informer_lag: Duration::from_millis(600),
            ..Default::default()
        },
    );
    let mesh = env.mesh_file(&[], &[], istio);
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    env.meshup(&["verify", "--wait", "60s", "-f", mesh])
        .expect(0);
    let old: BTreeMap<&str, BTreeMap<String, String>> = env
        .clusters
        .iter()
        .map(|c| (c.name(), reader_tokens(c)))
        .collect();
    for (name, tokens) in &old {
        assert_eq!(tokens.len(), 1, "{name}: {tokens:?}");
        assert_eq!(status_with(env.cluster(name), first(tokens)), 200);
    }
    let pods: Vec<BTreeSet<String>> = env.clusters.iter().map(istiod_pods).collect();

    let (run, early) = run_watching_revocations(&env, &["link", "--rotate", "-f", mesh]);
    let run = run.expect(0);
    assert!(early.is_empty(), "{early:?}\n{}", run.stderr);
    assert!(run.stderr.contains("waiting: istiod in"), "{}", run.stderr);
    let after: Vec<BTreeSet<String>> = env.clusters.iter().map(istiod_pods).collect();
    assert_eq!(pods, after, "istiod restarted");
    // The remote secrets were changed in place, never deleted.
    for cluster in &env.clusters {
        assert!(
            !cluster
                .requests_log()
                .iter()
                .any(|r| r.method == "DELETE" && r.path.contains("/secrets/istio-remote-secret-")),
            "{}",
            cluster.name()
        );
    }

    for cluster in &env.clusters {
        let name = cluster.name();
        let now = reader_tokens(cluster);
        assert_eq!(
            now.len(),
            1,
            "{name}: the old token secret is gone: {now:?}"
        );
        let (new_name, new_token) = now.iter().next().unwrap();
        let (old_name, old_token) = old[name].iter().next().unwrap();
        assert_ne!(new_name, old_name);
        assert_eq!(status_with(cluster, old_token), 401, "{name}'s old token");
        assert_eq!(status_with(cluster, new_token), 200, "{name}'s new token");
        for peer in env.clusters.iter().filter(|p| p.name() != name) {
            let kubeconfig = remote_kubeconfig(peer, name).unwrap();
            assert!(
                kubeconfig.contains(new_token.as_str()),
                "{} holds {name}'s new token",
                peer.name()
            );
        }
        // The report names both token secrets, never a token.
        assert!(
            run.stderr.contains(new_name) && run.stderr.contains(old_name),
            "{}",
            run.stderr
        );
        assert!(!run.all().contains(new_token.as_str()) && !run.all().contains(old_token.as_str()));
    }
    env.meshup(&["verify", "--wait", "60s", "-f", mesh])
        .expect(0);
    // Converged: another link changes no remote secret.
    let again = env.meshup(&["link", "-f", mesh]).expect(0);
    assert!(again.stderr.contains("unchanged"), "{}", again.stderr);
}

fn first(tokens: &BTreeMap<String, String>) -> &str {
    tokens.values().next().unwrap()
}

fn link_rotate_replaces_every_token_after_istiod_acted_1_29(tools: &str) {
    link_rotate_replaces_every_token_after_istiod_acted(tools, ISTIO_1_29);
}

#[test]
fn link_rotate_replaces_every_token_after_istiod_acted_1_30() {
    link_rotate_replaces_every_token_after_istiod_acted("helm4", "");
}

fn istiod_pods(cluster: &TestCluster) -> BTreeSet<String> {
    istiod_pod_names(cluster).into_iter().collect()
}

/// cluster1 and cluster2 hold no remote secret of cluster3, and the tokens of theirs it held
/// (`held`, by cluster) are refused.
fn no_trace_of_cluster3(env: &Env, held: &BTreeMap<&str, String>) {
    for (name, token) in held {
        let cluster = env.cluster(name);
        assert!(remote_kubeconfig(cluster, "cluster3").is_none(), "{name}");
        assert_eq!(
            status_with(cluster, token),
            401,
            "{name}'s token cluster3 held"
        );
    }
}

/// `uninstall cluster3`: cluster3 holds nothing of Istio's, the others hold no secret for it,
/// the tokens it held are refused, and cluster1 ↔ cluster2 are still linked and synced.
fn uninstall_one_cluster_takes_it_out_of_the_live_mesh(tools: &str) {
    let env = Env::new(tools, 3);
    let mesh = env.mesh_file(&[], &[], "");
    env.meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(0);
    let held: BTreeMap<&str, String> = ["cluster1", "cluster2"]
        .into_iter()
        .map(|c| (c, first(&reader_tokens(env.cluster(c))).to_string()))
        .collect();

    let run = env
        .meshup(&["uninstall", "cluster3", "-y", "-f", mesh.to_str().unwrap()])
        .expect(0);
    assert!(
        run.stderr.contains("remove it from") && run.stderr.contains("mesh.yaml"),
        "{}",
        run.stderr
    );
    for needle in [
        "[cluster1] remote secrets of leaving clusters: 1 removed",
        "[cluster2] remote secrets of leaving clusters: 1 removed",
        "remote secrets 2 removed",
    ] {
        assert!(run.stderr.contains(needle), "{needle}: {}", run.stderr);
    }

    let c3 = env.cluster("cluster3");
    assert!(
        c3.get(&format!("/api/v1/namespaces/{NS}")).is_none(),
        "cluster3 still has {NS}"
    );
    assert!(helm_records(c3).is_empty(), "{:?}", helm_records(c3));
    no_trace_of_cluster3(&env, &held);
    let smaller = env.mesh_file(&["cluster1", "cluster2"], &[], "");
    env.meshup(&["verify", "--wait", "60s", "-f", smaller.to_str().unwrap()])
        .expect(0);
    env.meshup(&["status", "-f", smaller.to_str().unwrap()])
        .expect(0);
}

/// Adding cluster4 and installing again writes, in the other three, only their new remote
/// secret (and meshup's lock): no helm upgrade, no restart.
fn adding_a_cluster_changes_only_the_new_remote_secret_in_the_others(tools: &str) {
    let env = Env::new(tools, 4);
    let three = env.mesh_file(&["cluster1", "cluster2", "cluster3"], &[], "");
    env.meshup(&["install", "-f", three.to_str().unwrap()])
        .expect(0);
    let before: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    let pods: Vec<BTreeSet<String>> = env.clusters[..3].iter().map(istiod_pods).collect();

    let four = env.mesh_file(&[], &[], "");
    env.meshup(&["install", "-f", four.to_str().unwrap()])
        .expect(0);
    for (i, cluster) in env.clusters[..3].iter().enumerate() {
        let changed: Vec<(String, String)> = writes(cluster, before[i])
            .into_iter()
            .filter(|(_, path)| !is_lock(path))
            .collect();
        assert_eq!(
            changed,
            [(
                "PATCH".to_string(),
                format!("/api/v1/namespaces/{NS}/secrets/istio-remote-secret-cluster4")
            )],
            "{}",
            cluster.name()
        );
        assert_eq!(
            istiod_pods(cluster),
            pods[i],
            "{} restarted",
            cluster.name()
        );
    }
    env.meshup(&["verify", "--wait", "60s", "-f", four.to_str().unwrap()])
        .expect(0);
}

/// A cluster dropped from the file: link warns that it may hold its peers' tokens; with
/// --prune it revokes them.
#[test]
fn prune_revokes_the_tokens_a_dropped_cluster_held() {
    let env = Env::new("helm4", 3);
    let mesh = env.mesh_file(&[], &[], "");
    env.meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(0);
    let held: BTreeMap<&str, String> = ["cluster1", "cluster2"]
        .into_iter()
        .map(|c| (c, first(&reader_tokens(env.cluster(c))).to_string()))
        .collect();
    let smaller = env.mesh_file(&["cluster1", "cluster2"], &[], "");
    let run = env
        .meshup(&["link", "--prune", "-f", smaller.to_str().unwrap()])
        .expect(0);
    assert!(
        run.stderr.contains("cluster3 left the mesh file"),
        "{}",
        run.stderr
    );
    for (name, token) in &held {
        assert_eq!(status_with(env.cluster(name), token), 401, "{name}");
    }
    env.meshup(&["verify", "--wait", "60s", "-f", smaller.to_str().unwrap()])
        .expect(0);
}

split_helms!(
    helm4: [
        link_rotate_replaces_every_token_after_istiod_acted_1_29,
        adding_a_cluster_changes_only_the_new_remote_secret_in_the_others,
    ],
    helm3: [uninstall_one_cluster_takes_it_out_of_the_live_mesh],
);

/// A rotation and a cluster's removal run on the one engine, so transient faults are waited
/// out in them as in an install: here a fifth of the requests to one cluster are answered
/// 503 or have their connection reset, while the rotation (and then the removal) runs.
#[test]
fn a_rotation_and_a_cluster_removal_ride_out_a_blinking_api_server() {
    let env = Env::new("helm4", 3);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    env.meshup(&["verify", "--wait", "60s", "-f", mesh])
        .expect(0);
    let first_token = first(&reader_tokens(env.cluster("cluster1"))).to_string();
    let blink = |cluster: &TestCluster, seed: u64| {
        cluster.set_random_faults(RandomFaults {
            seed,
            unavailable: 0.1,
            throttled: 0.0,
            reset: 0.1,
        })
    };
    let faulted = |cluster: &TestCluster, since: usize| {
        cluster
            .requests_log()
            .iter()
            .skip(since)
            .filter(|r| r.status == 503 || r.status == 0)
            .count()
    };

    let c2 = env.cluster("cluster2");
    let since = c2.requests_log().len();
    blink(c2, 7);
    let run = env
        .meshup(&["link", "--rotate", "cluster1", "-f", mesh])
        .expect(0);
    c2.set_random_faults(RandomFaults::default());
    assert!(faulted(c2, since) > 0, "no fault was injected");
    let c1 = env.cluster("cluster1");
    assert_eq!(status_with(c1, &first_token), 401, "{}", run.stderr);
    assert_eq!(status_with(c1, first(&reader_tokens(c1))), 200);

    let held: BTreeMap<&str, String> = ["cluster1", "cluster2"]
        .into_iter()
        .map(|c| (c, first(&reader_tokens(env.cluster(c))).to_string()))
        .collect();
    let since = c1.requests_log().len();
    blink(c1, 11);
    env.meshup(&["uninstall", "cluster3", "-y", "-f", mesh])
        .expect(0);
    c1.set_random_faults(RandomFaults::default());
    assert!(faulted(c1, since) > 0, "no fault was injected");
    let c3 = env.cluster("cluster3");
    assert!(helm_records(c3).is_empty());
    no_trace_of_cluster3(&env, &held);
    let smaller = env.mesh_file(&["cluster1", "cluster2"], &[], "");
    env.meshup(&["verify", "--wait", "60s", "-f", smaller.to_str().unwrap()])
        .expect(0);
}
