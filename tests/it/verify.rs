//! `meshup verify` and the sync column of `status`, end to end: istiod's own view of its peers
//! (read inside the test clusters' istiod pods with `kubectl exec`, as on a real cluster, whose
//! istiod answers the pod proxy 401), the credentials checked where they were issued, each way
//! a mesh breaks while every object still exists, and `meshup install` repairing it; then
//! traffic.

use std::time::{Duration, Instant};

use super::common::*;
use meshup_testcluster::Options;
use serde_json::{Value, json};

const TOOLS: &str = "helm4";

/// verify and status both fail naming `pairs` (e.g. `cluster1 → cluster2: timeout`).
#[track_caller]
fn both_fail_naming(env: &Env, mesh: &str, pairs: &[&str]) {
    let verify = env.meshup(&["verify", "-f", mesh]).expect(1);
    for pair in pairs {
        assert!(
            verify.stdout.contains(pair),
            "`{pair}` not in:\n{}",
            verify.stdout
        );
    }
    let status = env.meshup(&["status", "-f", mesh]).expect(1);
    assert!(status.stdout.contains("problems:"), "{}", status.stdout);
}

/// Waits (on state, bounded) until every istiod pod of `cluster` reports `peer` as `state`.
#[track_caller]
fn wait_until_istiod_says(env: &Env, cluster: &str, peer: &str, state: &str) {
    let c = env.cluster(cluster);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods: Vec<String> = c
            .list(&format!("/api/v1/namespaces/{NS}/pods"))
            .into_iter()
            .filter(|p| p.pointer("/metadata/labels/app").and_then(Value::as_str) == Some("istiod"))
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        let says = |pod: &String| {
            c.istiod_clusterz(NS, pod).is_some_and(|view| {
                view.as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e["id"] == peer && e["syncStatus"] == state)
            })
        };
        if !pods.is_empty() && pods.iter().all(says) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "istiod in {cluster} never reported {peer} {state}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[track_caller]
fn both_pass(env: &Env, mesh: &str) {
    let verify = env
        .meshup(&["verify", "--wait", "30s", "-f", mesh])
        .expect(0);
    assert!(
        verify.stdout.contains("the mesh works"),
        "{}",
        verify.stdout
    );
    let status = env.meshup(&["status", "-f", mesh]).expect(0);
    assert!(
        status.stdout.contains("is as the mesh file says"),
        "{}",
        status.stdout
    );
}

#[test]
fn an_api_server_the_peers_cannot_reach_shows_as_timeout_until_install_repairs_it() {
    let env = Env::new(TOOLS, 3);
    let bad = env.mesh_file(
        &[],
        &[("cluster2", "https://cluster2.unreachable.test:6443")],
        "",
    );
    let bad = bad.to_str().unwrap();
    env.meshup(&["install", "-f", bad]).expect(0);
    // istiod says `timeout` once PILOT_REMOTE_CLUSTER_TIMEOUT passed without a first sync.
    wait_until_istiod_says(&env, "cluster1", "cluster2", "timeout");
    wait_until_istiod_says(&env, "cluster3", "cluster2", "timeout");
    both_fail_naming(
        &env,
        bad,
        &[
            "cluster1 → cluster2: timeout",
            "cluster3 → cluster2: timeout",
            "is not reachable from inside",
        ],
    );
    let status = env
        .meshup(&["status", "-f", bad, "--output", "json"])
        .expect(1);
    let doc: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(doc["clusters"][0]["sync"]["peers"]["cluster2"], "timeout");
    assert_eq!(doc["clusters"][0]["sync"]["synced"], 1);

    let good = env.mesh_file(&[], &[], "");
    let good = good.to_str().unwrap();
    env.meshup(&["install", "-f", good]).expect(0);
    both_pass(&env, good);
}

#[test]
fn a_token_revoked_after_sync_a_wrong_ca_and_a_missing_secret_are_named_and_repaired() {
    let env = Env::new(TOOLS, 3);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    both_pass(&env, mesh);

    // cluster1's reader token goes. istiod keeps reporting cluster1 `synced` (it synced once),
    // but cluster1 refuses the token its peers hold.
    env.cluster("cluster1")
        .delete(&format!("/api/v1/namespaces/{NS}/secrets/{TOKEN_SECRET}"))
        .expect("the token secret was there");
    let verify = env.meshup(&["verify", "-f", mesh]).expect(1);
    assert!(
        verify
            .stdout
            .contains("cluster2    synced      -           synced"),
        "istiod still says synced:\n{}",
        verify.stdout
    );
    both_fail_naming(
        &env,
        mesh,
        &[
            "cluster2: the remote secret `istio-remote-secret-cluster1` in `cluster2` for `cluster1` holds a token that `cluster1`'s API server refuses",
            "cluster3: the remote secret `istio-remote-secret-cluster1` in `cluster3` for `cluster1` holds a token",
            "run `meshup install`",
        ],
    );
    let status = env.meshup(&["status", "-f", mesh]).expect(1);
    assert!(
        status
            .stdout
            .contains("holds a token that `cluster1`'s API server refuses"),
        "{}",
        status.stdout
    );
    env.meshup(&["install", "-f", mesh]).expect(0);
    both_pass(&env, mesh);

    // cluster3's secret for cluster2 carries another cluster's CA.
    let c3 = env.cluster("cluster3");
    let path = format!("/api/v1/namespaces/{NS}/secrets/istio-remote-secret-cluster2");
    let mut secret = c3.get(&path).unwrap();
    let kubeconfig = decode(&secret["data"]["cluster2"]).replace(
        &encode(env.cluster("cluster2").ca_pem()),
        &encode(env.cluster("cluster1").ca_pem()),
    );
    secret["data"]["cluster2"] = encode(&kubeconfig).into();
    c3.put(&format!("/api/v1/namespaces/{NS}/secrets"), secret)
        .unwrap();
    both_fail_naming(
        &env,
        mesh,
        &[
            "cluster3: the remote secret `istio-remote-secret-cluster2` in `cluster3` for `cluster2` holds a CA that is not `cluster2`'s cluster CA",
        ],
    );
    env.meshup(&["install", "-f", mesh]).expect(0);
    both_pass(&env, mesh);

    // A remote secret goes missing.
    env.cluster("cluster3")
        .delete(&format!(
            "/api/v1/namespaces/{NS}/secrets/istio-remote-secret-cluster2"
        ))
        .expect("the remote secret was there");
    both_fail_naming(
        &env,
        mesh,
        &[
            "cluster3 → cluster2: missing",
            "no remote secret for `cluster2`",
        ],
    );
    env.meshup(&["install", "-f", mesh]).expect(0);
    both_pass(&env, mesh);
}

/// A remote secret for `id` in `cluster`'s istiod namespace, giving a kubeconfig of cluster2.
fn foreign_secret(env: &Env, name: &str, id: &str, managed: bool) -> Value {
    let peer = env.cluster("cluster2");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {id}\n  cluster:\n    server: {}\n    certificate-authority-data: {}\ncontexts:\n- name: {id}\n  context: {{cluster: {id}, user: {id}}}\ncurrent-context: {id}\nusers:\n- name: {id}\n  user: {{token: {}}}\n",
        peer.url(),
        encode(peer.ca_pem()),
        peer.admin_token()
    );
    let mut labels = json!({"istio/multiCluster": "true"});
    if managed {
        labels["app.kubernetes.io/managed-by"] = "meshup".into();
    }
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": NS, "labels": labels},
           "data": {id: encode(&kubeconfig)}})
}

#[test]
fn a_secret_for_a_cluster_not_in_the_mesh_file_is_unexpected() {
    let env = Env::new(TOOLS, 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    let secrets = format!("/api/v1/namespaces/{NS}/secrets");
    // One someone else made, one meshup made for a cluster since dropped from the file.
    env.cluster("cluster1")
        .put(
            &secrets,
            foreign_secret(&env, "istio-remote-secret-stranger", "stranger", false),
        )
        .unwrap();
    env.cluster("cluster1")
        .put(
            &secrets,
            foreign_secret(&env, "istio-remote-secret-departed", "departed", true),
        )
        .unwrap();
    both_fail_naming(
        &env,
        mesh,
        &[
            "cluster1 → stranger: unexpected (secret istio-system/istio-remote-secret-stranger)",
            "cluster1 → departed: unexpected",
        ],
    );
    // install prunes what meshup made; the other stays named, with what to do.
    env.meshup(&["install", "-f", mesh]).expect(0);
    let verify = env.meshup(&["verify", "-f", mesh]).expect(1);
    assert!(!verify.stdout.contains("departed"), "{}", verify.stdout);
    assert!(
        verify.stdout.contains("delete that secret"),
        "{}",
        verify.stdout
    );
    env.cluster("cluster1")
        .delete(&format!("{secrets}/istio-remote-secret-stranger"))
        .unwrap();
    both_pass(&env, mesh);
}

#[test]
fn verify_waits_while_istiod_is_syncing() {
    let env = Env::with(
        TOOLS,
        2,
        Options {
            sync_delay: std::time::Duration::from_secs(4),
            ..Options::default()
        },
    );
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    let now = env.meshup(&["verify", "-f", mesh]).expect(1);
    assert!(
        now.stdout.contains("cluster1 → cluster2: syncing"),
        "{}",
        now.stdout
    );
    let later = env
        .meshup(&["verify", "--wait", "30s", "-f", mesh])
        .expect(0);
    assert!(later.stderr.contains("reading again"), "{}", later.stderr);
}

/// Through the pod proxy a real istiod answers 401 (the test servers do too): verify reads
/// every istiod inside its pod, also where the control plane reaches no pod at all, and says
/// nothing about it.
#[test]
fn verify_reads_every_istiod_inside_its_pod_without_a_warning() {
    let env = Env::with(
        TOOLS,
        3,
        Options {
            pod_proxy: false,
            ..Options::default()
        },
    );
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    let run = env
        .meshup(&["verify", "--wait", "30s", "-v", "-f", mesh])
        .expect(0);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    for cluster in &env.clusters {
        let name = cluster.name();
        let pods: Vec<String> = cluster
            .list(&format!("/api/v1/namespaces/{NS}/pods"))
            .into_iter()
            .filter(|p| p.pointer("/metadata/labels/app").and_then(Value::as_str) == Some("istiod"))
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        assert!(!pods.is_empty());
        let commands = run.commands_in(name);
        for pod in &pods {
            assert!(
                commands
                    .iter()
                    .any(|c| c.starts_with(&format!(
                        "kubectl exec {pod} --container discovery --namespace {NS}"
                    )) && c.ends_with("-- pilot-discovery request GET /debug/clusterz")),
                "{name}: {commands:?}"
            );
        }
        assert!(
            !commands.iter().any(|c| c.contains("/proxy/")),
            "{name}: {commands:?}"
        );
        // The API server saw the exec as a WebSocket upgrade of the pod's exec subresource.
        assert!(
            cluster.requests_log().iter().any(|r| r.method == "GET"
                && r.path.contains("/exec?")
                && r.path.contains("clusterz")),
            "{name}"
        );
    }
}

#[test]
fn traffic_crosses_every_pair_of_a_working_mesh() {
    let env = Env::new(TOOLS, 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    traffic_reaches_every_cluster(&env, mesh);
    for cluster in &env.clusters {
        assert!(
            cluster.get("/api/v1/namespaces/meshup-verify").is_none(),
            "the check's namespace was left in {}",
            cluster.name()
        );
    }
}

#[test]
fn without_a_shared_root_the_control_plane_syncs_but_no_request_crosses_clusters() {
    // Each istiod signs with a root of its own.
    let env = Env::new(TOOLS, 2);
    let mesh = env.mesh_file(&[], &[], "");
    env.set_trust_mode(&mesh, "none");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    env.meshup(&["verify", "--wait", "60s", "-f", mesh])
        .expect(0);
    let run = env
        .meshup(&[
            "verify",
            "--traffic",
            "--requests",
            "10",
            "--keep",
            "-f",
            mesh,
        ])
        .expect(1);
    assert!(
        run.stdout.contains("cluster1 → cluster2: no answer"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("traffic: from \\ to"), "{}", run.stdout);
    assert!(
        env.cluster("cluster1")
            .get("/api/v1/namespaces/meshup-verify")
            .is_some(),
        "--keep keeps the namespace"
    );
}
