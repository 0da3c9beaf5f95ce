//! Credentials over time: rotating reader tokens, taking a cluster out of a live mesh, adding
//! one. Tokens are real credentials on the test API servers: one is accepted only while the
//! token secret holding it exists, and istiod's clusterz probes its peers with the token it
//! loaded, so "synced" means the token works.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use meshup::remote_secret::READER_TOKEN_LABEL;
use meshup_testcluster::TestCluster;
use serde_json::Value;

use crate::common::*;

/// Istio 1.31 reloads a changed remote secret; the fixture istiod's image carries this tag.
const ISTIO_1_31: &str = "values:\n  global:\n    tag: 1.31.0\n";

/// The reader token secrets meshup made in `cluster`, by name: their tokens.
fn reader_tokens(cluster: &TestCluster) -> BTreeMap<String, String> {
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
        .map(|s| {
            let name = s["metadata"]["name"].as_str().unwrap().to_string();
            (name, decode(&s["data"]["token"]))
        })
        .collect()
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

/// Every istiod pod's clusterz view in `cluster`: (pod, peer id, syncStatus).
fn clusterz(cluster: &TestCluster) -> Vec<(String, String, String)> {
    let pods: Vec<String> = cluster
        .list(&format!("/api/v1/namespaces/{NS}/pods"))
        .into_iter()
        .filter(|p| p.pointer("/metadata/labels/app").and_then(Value::as_str) == Some("istiod"))
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let mut out = Vec::new();
    for pod in pods {
        let path = format!("/api/v1/namespaces/{NS}/pods/{pod}:15014/proxy/debug/clusterz");
        let Ok(reply) = cluster.request("GET", &path, Some(cluster.admin_token()), None) else {
            continue;
        };
        let Ok(entries) = serde_json::from_str::<Vec<Value>>(&reply.body) else {
            continue;
        };
        for e in entries {
            out.push((
                pod.clone(),
                e["id"].as_str().unwrap_or_default().to_string(),
                e["syncStatus"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

/// Reads every cluster's clusterz over and over while `meshup args` runs: the run, what
/// istiod reported that was not `synced`, and how many rounds were read.
fn run_watching_clusterz(env: &Env, args: &[&str]) -> (Run, Vec<String>, usize) {
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let (mut seen, mut rounds) = (Vec::new(), 0);
            while !stop.load(Ordering::SeqCst) {
                for cluster in &env.clusters {
                    for (pod, peer, state) in clusterz(cluster) {
                        if state != "synced" {
                            seen.push(format!("{}/{pod} saw {peer} {state}", cluster.name()));
                        }
                    }
                }
                rounds += 1;
                thread::sleep(Duration::from_millis(50));
            }
            (seen, rounds)
        });
        let run = env.meshup(args);
        stop.store(true, Ordering::SeqCst);
        let (seen, rounds) = watcher.join().unwrap();
        (run, seen, rounds)
    })
}

/// `link --rotate`: every peer ends up with the new token, every old token is refused, and
/// no istiod reported a peer anything but synced while it ran.
fn link_rotate_replaces_every_token_with_istiod_synced_throughout(tools: &str) {
    let env = Env::new(tools, 3);
    let mesh = env.mesh_file(&[], &[], ISTIO_1_31);
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    let old: BTreeMap<&str, BTreeMap<String, String>> = env
        .clusters
        .iter()
        .map(|c| (c.name(), reader_tokens(c)))
        .collect();
    for (name, tokens) in &old {
        assert_eq!(tokens.len(), 1, "{name}: {tokens:?}");
        assert_eq!(status_with(env.cluster(name), first(tokens)), 200);
    }

    let (run, not_synced, rounds) = run_watching_clusterz(&env, &["link", "--rotate", "-f", mesh]);
    let run = run.expect(0);
    assert!(rounds >= 3, "clusterz was read only {rounds} times");
    assert!(
        not_synced.is_empty(),
        "istiod lost a peer during the rotation: {not_synced:?}"
    );

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
    env.meshup(&["verify", "-f", mesh]).expect(0);
    // Converged: another link changes no remote secret.
    let again = env.meshup(&["link", "-f", mesh]).expect(0);
    assert!(again.stderr.contains("unchanged"), "{}", again.stderr);
}

fn first(tokens: &BTreeMap<String, String>) -> &str {
    tokens.values().next().unwrap()
}

/// Before Istio 1.31 istiod keeps the token it loaded: without --restart the old token stays
/// valid and meshup says how to finish; with it, istiod restarts and the old token goes.
#[test]
fn before_1_31_the_old_token_stays_until_istiod_restarts() {
    let env = Env::new("helm4", 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    let c1 = env.cluster("cluster1");
    let first_token = first(&reader_tokens(c1)).to_string();

    let run = env
        .meshup(&["link", "--rotate", "cluster1", "-f", mesh])
        .expect(1);
    assert!(
        run.stderr.contains("before 1.31") && run.stderr.contains("--restart"),
        "{}",
        run.stderr
    );
    assert_eq!(reader_tokens(c1).len(), 2, "the old token secret is kept");
    assert_eq!(status_with(c1, &first_token), 200, "and its token works");
    env.meshup(&["verify", "-f", mesh]).expect(0);

    let pods_before = istiod_pods(env.cluster("cluster2"));
    env.meshup(&["link", "--rotate", "cluster1", "--restart", "-f", mesh])
        .expect(0);
    assert_ne!(
        istiod_pods(env.cluster("cluster2")),
        pods_before,
        "istiod restarted"
    );
    let now = reader_tokens(c1);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(status_with(c1, &first_token), 401);
    assert_eq!(status_with(c1, first(&now)), 200);
    // cluster2 was not rotated: istiod in cluster1 was not restarted for it.
    env.meshup(&["verify", "-f", mesh]).expect(0);
}

fn istiod_pods(cluster: &TestCluster) -> BTreeSet<String> {
    clusterz(cluster)
        .into_iter()
        .map(|(pod, _, _)| pod)
        .collect()
}

/// `uninstall cluster3`: cluster3 holds nothing of Istio's, the others hold no secret for it,
/// the tokens it held are refused, and cluster1 ↔ cluster2 are still linked and synced.
fn uninstall_one_cluster_takes_it_out_of_the_live_mesh(tools: &str) {
    let env = Env::new(tools, 3);
    let mesh = env.mesh_file(&[], &[], ISTIO_1_31);
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
        "[cluster1] removed 1 remote secret(s) of cluster3",
        "[cluster2] removed 1 remote secret(s) of cluster3",
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
    for (name, token) in &held {
        let cluster = env.cluster(name);
        assert!(remote_kubeconfig(cluster, "cluster3").is_none(), "{name}");
        assert_eq!(
            status_with(cluster, token),
            401,
            "{name}'s token cluster3 held"
        );
    }
    let smaller = env.mesh_file(&["cluster1", "cluster2"], &[], ISTIO_1_31);
    env.meshup(&["verify", "-f", smaller.to_str().unwrap()])
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
            .filter(|(_, path)| !path.contains("/leases/"))
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
    env.meshup(&["verify", "-f", four.to_str().unwrap()])
        .expect(0);
}

/// A cluster dropped from the file: link warns that it may hold its peers' tokens; with
/// --prune it revokes them.
#[test]
fn prune_revokes_the_tokens_a_dropped_cluster_held() {
    let env = Env::new("helm4", 3);
    let mesh = env.mesh_file(&[], &[], ISTIO_1_31);
    env.meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(0);
    let held: BTreeMap<&str, String> = ["cluster1", "cluster2"]
        .into_iter()
        .map(|c| (c, first(&reader_tokens(env.cluster(c))).to_string()))
        .collect();
    let smaller = env.mesh_file(&["cluster1", "cluster2"], &[], ISTIO_1_31);
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
    env.meshup(&["verify", "-f", smaller.to_str().unwrap()])
        .expect(0);
}

with_both_helms!(
    link_rotate_replaces_every_token_with_istiod_synced_throughout,
    uninstall_one_cluster_takes_it_out_of_the_live_mesh,
    adding_a_cluster_changes_only_the_new_remote_secret_in_the_others,
);
