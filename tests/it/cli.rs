//! The built meshup against the real helm 4 and kubectl and in-memory API servers: the order
//! of what it does, what it prints, what it refuses, and what it never leaks. (Scenarios that
//! run with both Helm 3 and Helm 4 are in e2e.rs.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::common::*;
use meshup_testcluster::TestCluster;
use serde_json::{Value, json};

const TOOLS: &str = "helm4";

/// The mesh of every cluster of `env`, with `trust.mode: none`.
fn mesh_without_trust(env: &Env) -> PathBuf {
    let mesh = env.mesh_file(&[], &[], "");
    env.set_trust_mode(&mesh, "none");
    mesh
}

/// The index of the first write to `cluster` whose path `matches`.
fn first_write(cluster: &TestCluster, matches: impl Fn(&str) -> bool) -> usize {
    writes(cluster, 0)
        .iter()
        .position(|(_, path)| matches(path))
        .unwrap_or_else(|| {
            panic!(
                "no such write in {}: {:#?}",
                cluster.name(),
                writes(cluster, 0)
            )
        })
}

// --- install: order ---------------------------------------------------------------------------

#[test]
fn install_writes_namespace_cacerts_base_istiod_then_secrets_in_every_cluster() {
    let env = Env::new(TOOLS, 3);
    let mesh = env.mesh_file(&[], &[], "");
    env.meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(0);
    for cluster in &env.clusters {
        let at = |suffix: &'static str| first_write(cluster, move |p| p.ends_with(suffix));
        let namespace = at("/api/v1/namespaces/istio-system");
        let cacerts = at("/secrets/cacerts");
        let base = first_write(cluster, |p| p.contains("customresourcedefinitions/"));
        let istiod = at("/deployments/istiod");
        let token = at(&*format!("/secrets/{TOKEN_SECRET}").leak());
        let peer_secret = first_write(cluster, |p| p.contains("/secrets/istio-remote-secret-"));
        assert!(
            namespace < cacerts
                && cacerts < base
                && base < istiod
                && istiod < token
                && token < peer_secret,
            "{}: namespace {namespace}, cacerts {cacerts}, base {base}, istiod {istiod}, token {token}, remote secrets {peer_secret}",
            cluster.name()
        );
    }
}

#[test]
fn install_links_only_after_every_cluster_built_its_remote_secret() {
    let env = Env::new(TOOLS, 2);
    let mesh = mesh_without_trust(&env);
    let run = env
        .meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(0);
    let lines: Vec<&str> = run.stderr.lines().collect();
    let position = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("`{needle}` not in:\n{}", run.stderr))
    };
    let built = [
        "[cluster1] remote secret: built",
        "[cluster2] remote secret: built",
    ]
    .map(position)
    .into_iter()
    .max()
    .unwrap();
    let linking = ["[cluster1] link: started", "[cluster2] link: started"]
        .map(position)
        .into_iter()
        .min()
        .unwrap();
    assert!(built < linking, "{}", run.stderr);
}

#[test]
fn install_json_is_one_document_with_every_cluster_and_step() {
    let env = Env::new(TOOLS, 2);
    let mesh = mesh_without_trust(&env);
    let run = env
        .meshup(&["install", "-f", mesh.to_str().unwrap(), "--output", "json"])
        .expect(0);
    let summary: Value = serde_json::from_str(&run.stdout).expect("stdout is one JSON document");
    assert_eq!(summary["command"], "install");
    assert_eq!(summary["ok"], true);
    let clusters = summary["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 2);
    let steps: Vec<&str> = clusters[0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["namespace", "istio-base", "istiod", "remote secret", "link"]
    );
    // Progress lines are not printed in JSON mode.
    assert!(!run.stderr.contains("started"), "{}", run.stderr);
}

// --- failures and resuming ----------------------------------------------------------------------

/// A mesh file whose cluster2 has a typo in its values: a negative istiod replica count, which
/// the API server refuses (Istio's chart renders `replicas` only without autoscaling).
fn mesh_with_a_typo_in_cluster2(env: &Env) -> PathBuf {
    let mesh = mesh_without_trust(env);
    let text = std::fs::read_to_string(&mesh).unwrap().replace(
        "  - name: cluster2\n    context: cluster2\n",
        "  - name: cluster2\n    context: cluster2\n    values: {pilot: {autoscaleEnabled: false, replicaCount: -1}}\n",
    );
    std::fs::write(&mesh, text).unwrap();
    mesh
}

#[test]
fn a_failing_istiod_stops_its_cluster_skips_linking_and_the_next_install_resumes() {
    let env = Env::new(TOOLS, 3);
    let mesh = mesh_with_a_typo_in_cluster2(&env);
    let run = env
        .meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(1);
    let stderr = &run.stderr;
    assert!(
        stderr.contains("[cluster2] `helm upgrade --install istiod"),
        "{stderr}"
    );
    assert!(stderr.contains("--kube-context cluster2"), "{stderr}");
    assert!(
        stderr.contains("spec.replicas: Invalid value: -1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("retry"),
        "a bad value is not retried: {stderr}"
    );
    for other in ["cluster1", "cluster3"] {
        let cluster = env.cluster(other);
        assert_eq!(
            release_status(cluster, "istiod").as_deref(),
            Some("deployed"),
            "{other}"
        );
        assert!(remote_secrets(cluster).is_empty(), "{other} was linked");
    }
    assert!(remote_secrets(env.cluster("cluster2")).is_empty());
    assert_eq!(
        release_status(env.cluster("cluster2"), "istio-base").as_deref(),
        Some("deployed")
    );

    // The typo fixed, the next install does only what is missing.
    let mesh = mesh_without_trust(&env);
    let run = env
        .meshup(&["install", "-v", "-f", mesh.to_str().unwrap()])
        .expect(0);
    let upgrades: Vec<(String, String)> = run
        .commands()
        .into_iter()
        .filter(|(_, c)| c.starts_with("helm upgrade"))
        .collect();
    assert_eq!(upgrades.len(), 1, "{upgrades:?}");
    assert_eq!(upgrades[0].0, "cluster2");
    assert!(
        upgrades[0].1.starts_with("helm upgrade --install istiod"),
        "{upgrades:?}"
    );
    for cluster in &env.clusters {
        assert_eq!(remote_secrets(cluster).len(), 2, "{}", cluster.name());
    }
}

// --- bad input: exit 2, no cluster touched ------------------------------------------------------

fn assert_bad_input(mesh: &str, needles: &[&str]) {
    let env = Env::new(TOOLS, 2);
    std::fs::write(env.path("mesh.yaml"), mesh).unwrap();
    let run = env.meshup(&["install", "-f", "mesh.yaml"]).expect(2);
    assert_eq!(env.requests(), [0, 0], "a cluster was contacted");
    assert!(run.stderr.contains("mesh.yaml"), "{}", run.stderr);
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "`{needle}` not in:\n{}",
            run.stderr
        );
    }
}

const TWO: &str = "clusters:\n  - name: cluster1\n    context: cluster1\n  - name: cluster2\n    context: cluster2\n";

#[test]
fn an_unknown_key_is_bad_input() {
    assert_bad_input(
        &format!("meshId: mesh1\n{TWO}"),
        &["unknown field `meshId`", "line 1"],
    );
}

#[test]
fn a_duplicate_cluster_name_is_bad_input() {
    assert_bad_input(
        "meshID: mesh1\nclusters:\n  - {name: cluster1, context: cluster1}\n  - {name: cluster1, context: cluster2}\n",
        &["`clusters[1].name`: `cluster1` is used by another cluster"],
    );
}

#[test]
fn a_cluster_name_that_is_not_a_dns_label_is_bad_input() {
    assert_bad_input(
        "meshID: mesh1\nclusters:\n  - {name: Cluster_1, context: cluster1}\n",
        &["`clusters[0].name`: `Cluster_1` is not a DNS-1123 label"],
    );
}

#[test]
fn a_missing_mesh_id_is_bad_input() {
    assert_bad_input(TWO, &["`meshID` is required"]);
}

#[test]
fn an_empty_cluster_list_is_bad_input() {
    assert_bad_input("meshID: mesh1\nclusters: []\n", &["`clusters` is empty"]);
}

#[test]
fn an_unknown_context_is_bad_input() {
    assert_bad_input(
        "meshID: mesh1\nclusters:\n  - {name: cluster1, context: cluster1}\n  - {name: cluster2, context: kind-nowhere}\n",
        &[
            "`clusters[1].context`: `kind-nowhere` is not in the kubeconfig",
            "cluster2",
        ],
    );
}

#[test]
fn malformed_yaml_is_bad_input_with_line_and_column() {
    assert_bad_input(
        "meshID: mesh1\nclusters:\n  - name: cluster1\n   context: cluster1\n",
        &["line 4 column 4"],
    );
}

#[test]
fn a_reserved_value_in_cluster_values_is_bad_input() {
    assert_bad_input(
        &format!("meshID: mesh1\n{TWO}    values:\n      global:\n        meshID: other\n"),
        &[
            "`clusters[1].values.global.meshID` is set to `other`",
            "`meshID`",
        ],
    );
}

#[test]
fn clusters_to_take_out_or_rotate_must_be_in_the_mesh_file() {
    let env = Env::new(TOOLS, 2);
    std::fs::write(
        env.path("mesh.yaml"),
        format!("meshID: mesh1\n{TWO}    role: remote\n    primary: cluster1\n"),
    )
    .unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &["uninstall", "-y", "cluster9"],
            "CLUSTER: `cluster9` is not a cluster of the mesh (its clusters: cluster1, cluster2)",
        ),
        (
            &["link", "--rotate", "cluster1", "cluster9"],
            "--rotate: `cluster9` is not a cluster of the mesh",
        ),
        (
            &["uninstall", "-y", "cluster1"],
            "`cluster1` runs istiod for remote `cluster2`; take `cluster2` out too",
        ),
    ];
    for (args, needle) in cases {
        let mut args = args.to_vec();
        args.extend(["-f", "mesh.yaml"]);
        let run = env.meshup(&args).expect(2);
        assert!(
            run.stderr.contains("mesh.yaml") && run.stderr.contains(needle),
            "{args:?}: {}",
            run.stderr
        );
    }
    assert_eq!(env.requests(), [0, 0], "a cluster was contacted");
}

// --- preflight ----------------------------------------------------------------------------------

#[test]
fn an_istio_of_another_mesh_fails_preflight_before_any_write() {
    let env = Env::new(TOOLS, 2);
    let cluster2 = env.cluster("cluster2");
    cluster2
        .put(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        )
        .unwrap();
    cluster2
        .put(
            &format!("/api/v1/namespaces/{NS}/configmaps"),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "istio", "namespace": NS},
                   "data": {"mesh": "defaultConfig:\n  meshId: othermesh\n"}}),
        )
        .unwrap();
    let mesh = env.mesh_file(&[], &[], "");
    let before: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    let run = env
        .meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(1);
    assert!(
        run.stderr.contains("FAIL [cluster2] existing istio"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("mesh `othermesh`"), "{}", run.stderr);
    // The clusters were checked under meshup's lock, taken and given back; nothing else.
    for (cluster, before) in env.clusters.iter().zip(before) {
        assert_eq!(
            mesh_writes(cluster, before),
            [],
            "{} was changed",
            cluster.name()
        );
    }
}

// --- status ---------------------------------------------------------------------------------------

#[test]
fn status_fails_when_a_remote_secret_is_missing_and_reports_json() {
    let env = Env::new(TOOLS, 2);
    let mesh = mesh_without_trust(&env);
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    let run = env
        .meshup(&["status", "-f", mesh, "--output", "json"])
        .expect(0);
    let status: Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    assert_eq!(status["ok"], true);
    assert_eq!(status["meshId"], "mesh1");
    assert_eq!(status["clusters"].as_array().unwrap().len(), 2);
    assert_eq!(
        status["clusters"][1]["remoteSecrets"]["present"],
        json!(["cluster1"])
    );

    env.cluster("cluster2")
        .delete(&format!(
            "/api/v1/namespaces/{NS}/secrets/istio-remote-secret-cluster1"
        ))
        .expect("the secret was there");
    let run = env.meshup(&["status", "-f", mesh]).expect(1);
    assert!(
        run.stdout.contains("remote secrets missing for cluster1"),
        "{}",
        run.stdout
    );
}

// --- uninstall ------------------------------------------------------------------------------------

#[test]
fn uninstall_removes_secrets_istiod_base_and_namespace_in_that_order() {
    let env = Env::new(TOOLS, 2);
    let mesh = mesh_without_trust(&env);
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    let run = env
        .meshup(&["uninstall", "--yes", "-v", "-f", mesh])
        .expect(0);
    for cluster in ["cluster1", "cluster2"] {
        let removals: Vec<String> = run
            .commands_in(cluster)
            .into_iter()
            .filter(|c| c.starts_with("kubectl delete") || c.starts_with("helm uninstall"))
            .filter(|c| !c.contains("/leases/"))
            .map(|c| c.split(" --").next().unwrap().to_string())
            .collect();
        assert_eq!(
            removals,
            [
                "kubectl delete secrets",
                // meshup's revision tags (from `upgrade promote`), before istiod
                "kubectl delete mutatingwebhookconfigurations,services",
                "helm uninstall istiod",
                "helm uninstall istio-base",
                "kubectl delete namespace istio-system"
            ],
            "{cluster}"
        );
        let unlink = run
            .commands_in(cluster)
            .into_iter()
            .find(|c| c.starts_with("kubectl delete secrets"))
            .unwrap();
        assert!(
            unlink
                .contains("--selector istio/multiCluster=true,app.kubernetes.io/managed-by=meshup"),
            "{unlink}"
        );
    }
}

// --- commands that contact nothing --------------------------------------------------------------

/// Runs meshup with helm and kubectl that do not exist: a command that ran either would fail.
fn without_tools(env: &Env, args: &[&str]) -> Run {
    let mut args = args.to_vec();
    args.extend([
        "--helm",
        "/nonexistent/helm",
        "--kubectl",
        "/nonexistent/kubectl",
    ]);
    let mut command = env.command(&args);
    command.env("PATH", "/nonexistent");
    let output = command.output().unwrap();
    Run::from(output)
}

#[test]
fn render_writes_the_same_bytes_twice_and_runs_no_tool() {
    let env = Env::new(TOOLS, 2);
    let mesh = env.mesh_file(&[], &[], "");
    let read_all = || -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for cluster in ["cluster1", "cluster2"] {
            for file in ["base-values.yaml", "istiod-values.yaml"] {
                let rel = format!("values/{cluster}/{file}");
                files.push((rel.clone(), std::fs::read(env.path(&rel)).unwrap()));
            }
        }
        files
    };
    let args = ["render", "-f", mesh.to_str().unwrap(), "--out", "values"];
    without_tools(&env, &args).expect(0);
    let first = read_all();
    without_tools(&env, &args).expect(0);
    assert_eq!(first, read_all());
    assert_eq!(env.requests(), [0, 0]);
    let istiod = String::from_utf8(first[1].1.clone()).unwrap();
    assert!(istiod.contains("clusterName: cluster1"), "{istiod}");
}

#[test]
fn plan_prints_every_ordered_pair_and_contacts_no_cluster() {
    let env = Env::new(TOOLS, 3);
    let mesh = env.mesh_file(&[], &[], "");
    let run = without_tools(&env, &["plan", "-f", mesh.to_str().unwrap()]).expect(0);
    assert_eq!(env.requests(), [0, 0, 0]);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let mut pairs = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("meshup remote-secret") {
            let from = rest
                .split("--context cluster")
                .nth(1)
                .unwrap()
                .chars()
                .next()
                .unwrap();
            let next = lines[i + 1];
            assert!(next.contains("| kubectl apply"), "{next}");
            let to = next
                .split("--context cluster")
                .nth(1)
                .unwrap()
                .chars()
                .next()
                .unwrap();
            pairs.insert((from, to));
        }
    }
    let all: BTreeSet<(char, char)> = ['1', '2', '3']
        .iter()
        .flat_map(|&a| ['1', '2', '3'].into_iter().map(move |b| (a, b)))
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(pairs, all, "{}", run.stdout);
}

// --- secrets never leak ---------------------------------------------------------------------------

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn tokens_and_keys_appear_in_no_argv_no_output_and_no_file() {
    let env = Env::new(TOOLS, 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    let printed = [
        env.meshup(&["install", "-v", "-f", mesh]).expect(0),
        env.meshup(&["link", "-v", "-f", mesh]).expect(0),
        env.meshup(&["status", "-v", "-f", mesh]).expect(0),
        env.meshup(&["status", "--output", "json", "-f", mesh])
            .expect(0),
        env.meshup(&["plan", "-f", mesh]).expect(0),
    ];
    let mut secrets = Vec::new();
    for cluster in &env.clusters {
        let token = env.token(cluster.name());
        secrets.push(encode(&token));
        secrets.push(token);
    }
    let files = files_under(env.dir.path());
    for run in &printed {
        let all = run.all();
        assert!(
            !all.contains("PRIVATE KEY") && !all.contains("-----BEGIN"),
            "{all}"
        );
        for secret in &secrets {
            // The -v lines hold every argv meshup ran.
            assert!(
                !all.contains(secret.as_str()),
                "a token was printed:\n{all}"
            );
        }
    }
    for file in &files {
        let text = String::from_utf8_lossy(&std::fs::read(file).unwrap()).into_owned();
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a token is in {}",
                file.display()
            );
        }
    }
    // In the clusters, only `cacerts` holds a private key.
    for cluster in &env.clusters {
        for secret in super::common::secrets(cluster) {
            let holds_key = secret["data"]
                .as_object()
                .into_iter()
                .flatten()
                .any(|(_, v)| decode_lossy(v).contains("PRIVATE KEY"));
            if holds_key {
                assert_eq!(secret["metadata"]["name"], "cacerts", "{}", cluster.name());
            }
        }
    }
}

fn decode_lossy(value: &Value) -> String {
    use base64::Engine;
    value
        .as_str()
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// --- trust ------------------------------------------------------------------------------------------

/// Puts a `cacerts` made from another root into cluster2, as a different install would have.
fn foreign_cacerts_in_cluster2(env: &Env) {
    let other = env.path("other.yaml");
    std::fs::write(
        &other,
        format!(
            "meshID: mesh1\ntrust: {{mode: generate, dir: {}}}\nclusters:\n  - {{name: cluster2, context: cluster2}}\n",
            env.path("other-certs").display()
        ),
    )
    .unwrap();
    env.meshup(&["certs", "-f", other.to_str().unwrap()])
        .expect(0);
    let mut data = serde_json::Map::new();
    for file in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        let pem =
            std::fs::read_to_string(env.path(&format!("other-certs/cluster2/{file}"))).unwrap();
        data.insert(file.into(), encode(&pem).into());
    }
    let cluster2 = env.cluster("cluster2");
    cluster2
        .put(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        )
        .unwrap();
    cluster2
        .put(
            &format!("/api/v1/namespaces/{NS}/secrets"),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "cacerts", "namespace": NS}, "data": data}),
        )
        .unwrap();
}

#[test]
fn a_cacerts_with_another_root_stops_only_its_cluster_and_names_rotate_ca() {
    let env = Env::new(TOOLS, 2);
    foreign_cacerts_in_cluster2(&env);
    let mesh = env.mesh_file(&[], &[], "");
    let run = env
        .meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(1);
    assert!(run.stderr.contains("[cluster2]"), "{}", run.stderr);
    assert!(run.stderr.contains("--rotate-ca"), "{}", run.stderr);
    assert!(
        helm_records(env.cluster("cluster2")).is_empty(),
        "helm ran in cluster2"
    );
    assert_eq!(
        release_status(env.cluster("cluster1"), "istiod").as_deref(),
        Some("deployed"),
        "cluster1 went on"
    );
}

#[test]
fn a_cacerts_with_a_foreign_key_is_refused_until_rotate_ca() {
    let env = Env::new(TOOLS, 1);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    // istiod prefers `tls.crt` to meshup's keys when someone adds it.
    let cluster = env.cluster("cluster1");
    let mut cacerts = cluster.get(CACERTS).unwrap();
    cacerts["data"]["tls.crt"] = encode("not meshup's").into();
    cluster.put(CACERTS, cacerts).unwrap();
    let version = cluster.get(CACERTS).unwrap()["metadata"]["resourceVersion"].clone();
    let run = env.meshup(&["install", "-f", mesh]).expect(1);
    assert!(
        run.stderr.contains("tls.crt") && run.stderr.contains("--rotate-ca"),
        "{}",
        run.stderr
    );
    assert_eq!(
        cluster.get(CACERTS).unwrap()["metadata"]["resourceVersion"],
        version
    );

    env.meshup(&["install", "--rotate-ca", "-f", mesh])
        .expect(0);
    let keys: BTreeSet<String> = cluster.get(CACERTS).unwrap()["data"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(
            [
                "ca-cert.pem",
                "ca-key.pem",
                "cert-chain.pem",
                "root-cert.pem"
            ]
            .map(String::from)
        )
    );
}

#[test]
fn install_restart_restarts_an_istiod_that_ran_before_its_cacerts() {
    let env = Env::new(TOOLS, 1);
    let mesh = env.mesh_file(&[], &[], "");
    env.set_trust_mode(&mesh, "none");
    let mesh_path = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh_path]).expect(0);
    let mesh = env.mesh_file(&[], &[], "");
    let run = env
        .meshup(&["install", "--restart", "-v", "-f", mesh.to_str().unwrap()])
        .expect(0);
    assert!(
        run.stderr.contains("istiod restart: restarted"),
        "{}",
        run.stderr
    );
    let commands = run.commands_in("cluster1");
    let at = |prefix: &str| {
        commands
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {commands:#?}"))
    };
    assert!(at("kubectl rollout restart") < at("kubectl rollout status"));
    let deployment = env
        .cluster("cluster1")
        .get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/istiod"))
        .unwrap();
    assert!(
        deployment["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );
}

#[test]
fn a_second_install_with_a_float_value_leaves_istiod_alone() {
    let env = Env::new(TOOLS, 1);
    // Istio's own default for pilot.traceSampling is 1.0; helm prints it back as 1.
    let mesh = env.mesh_file(&[], &[], "values:\n  pilot:\n    traceSampling: 1.0\n");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    let records = helm_records(env.cluster("cluster1"));
    let run = env.meshup(&["install", "-f", mesh]).expect(0);
    assert!(run.stderr.contains("istiod: unchanged"), "{}", run.stderr);
    assert_eq!(
        records,
        helm_records(env.cluster("cluster1")),
        "a new helm revision"
    );
}

#[test]
fn plan_of_a_primary_and_a_remote_on_two_networks_shows_the_gateways() {
    let env = Env::new(TOOLS, 2);
    let mesh = env.mesh_file(&[], &[], "");
    let text = std::fs::read_to_string(&mesh).unwrap().replace(
        "  - name: cluster2\n    context: cluster2\n",
        "  - name: cluster2\n    context: cluster2\n    network: network2\n    role: remote\n    primary: cluster1\n",
    );
    std::fs::write(&mesh, text).unwrap();
    let run = without_tools(&env, &["plan", "-f", mesh.to_str().unwrap()]).expect(0);
    let plan = &run.stdout;
    for needle in [
        "helm upgrade --install istio-eastwestgateway",
        "name: cross-network-gateway",
        "mode: AUTO_PASSTHROUGH",
        "name: istiod-gateway",
        "name: istiod-vs",
        "topology.istio.io/controlPlaneClusters: cluster1",
        "# Phase 2: install the remote clusters' istiod",
        "--set \"global.remotePilotAddress=$(kubectl get service istio-eastwestgateway --namespace istio-system --context cluster1",
    ] {
        assert!(plan.contains(needle), "`{needle}` not in:\n{plan}");
    }
    assert_eq!(env.requests(), [0, 0]);
    // render writes the gateway's values too.
    without_tools(
        &env,
        &["render", "-f", mesh.to_str().unwrap(), "--out", "values"],
    )
    .expect(0);
    let gateway = std::fs::read_to_string(env.path("values/cluster2/gateway-values.yaml")).unwrap();
    assert!(gateway.contains("networkGateway: network2"), "{gateway}");
}

/// Every operation prints as a script from the plan it runs: a cluster leaving (its secrets
/// out of the others, its removal, then the rotation of each token it held, each with its
/// wait) and a rotation; no cluster is contacted and no token printed.
#[test]
fn plan_prints_a_cluster_leaving_and_a_rotation() {
    let env = Env::new(TOOLS, 3);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    let leaving = without_tools(&env, &["plan", "uninstall", "cluster3", "-f", mesh]).expect(0);
    let text = &leaving.stdout;
    let phases: Vec<&str> = text.lines().filter(|l| l.starts_with("# Phase ")).collect();
    assert_eq!(
        phases,
        [
            "# Phase 1: take cluster3's remote secrets out of the other clusters.",
            "# Phase 2: remove the mesh from cluster3.",
            "# Phase 3: a new reader token in cluster1.",
            "# Phase 4: cluster1's new remote secret to cluster2.",
            "# Phase 5: revoke cluster1's old reader tokens.",
            "# Phase 6: a new reader token in cluster2.",
            "# Phase 7: cluster2's new remote secret to cluster1.",
            "# Phase 8: revoke cluster2's old reader tokens.",
        ],
        "{text}"
    );
    assert!(
        text.contains("kubectl delete secrets istio-remote-secret-cluster3"),
        "{text}"
    );
    assert!(text.contains("helm uninstall istiod"), "{text}");
    assert_eq!(text.matches("## Wait: istiod in").count(), 2, "{text}");
    assert!(
        text.contains("pilot-discovery request GET /debug/clusterz"),
        "{text}"
    );

    let rotation =
        without_tools(&env, &["plan", "link", "--rotate", "cluster2", "-f", mesh]).expect(0);
    let text = &rotation.stdout;
    assert!(
        text.contains("# Phase 3: a new reader token in cluster2."),
        "{text}"
    );
    assert!(
        text.contains(
            "## Wait: istiod in cluster1, cluster3 acted on cluster2's new remote secret."
        ),
        "{text}"
    );
    assert!(!text.contains("a new reader token in cluster1"), "{text}");
    assert_eq!(env.requests(), [0, 0, 0]);
    for cluster in &env.clusters {
        assert!(!leaving.all().contains(cluster.admin_token()));
        assert!(!rotation.all().contains(cluster.admin_token()));
    }
    // A cluster that is not in the mesh file is bad input.
    let bad = without_tools(&env, &["plan", "uninstall", "cluster9", "-f", mesh]).expect(2);
    assert!(bad.stderr.contains("cluster9"), "{}", bad.stderr);
}

#[test]
fn plan_upgrade_prints_each_phase_in_waves_with_its_gates_and_contacts_no_cluster() {
    let env = Env::new(TOOLS, 3);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    let plan = |args: &[&str]| {
        let mut all = vec!["plan", "upgrade"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--to", "1.31.0", "-f", mesh]);
        without_tools(&env, &all).expect(0).stdout
    };
    let start = plan(&["start", "--wave-size", "2"]);
    for needle in [
        "# Phase 1: istio-base 1.31.0 and the new reader RBAC in every cluster",
        "| yq 'select(.metadata.labels.app == \"istio-reader\")'",
        "# Phase 2: istiod 1-31-0 beside default in cluster1, cluster2.",
        "helm upgrade --install istiod-1-31-0",
        "--set revision=1-31-0",
        "## Wait: istiod 1-31-0 in cluster1, cluster2 reports every peer synced.",
        "# Phase 3: istiod 1-31-0 beside default in cluster3.",
    ] {
        assert!(start.contains(needle), "`{needle}` not in:\n{start}");
    }
    // istio-base keeps pointing at the running revision until promote.
    assert!(!start.contains("--set defaultRevision=1-31-0"), "{start}");
    let promote = plan(&["promote", "cluster2", "--restart-workloads"]);
    for needle in [
        "revisionTags:\n- default",
        "kubectl apply --server-side --force-conflicts --field-manager meshup -f - --context cluster2",
        "istio.io/deactivated=never-match",
        "--set defaultRevision=1-31-0",
        "kubectl rollout restart deployment --namespace NAMESPACE --context cluster2",
        "## Wait: the gateway and restarted workloads in cluster2 run proxies of 1-31-0, and istiod 1-31-0 in cluster2 reports every peer synced.",
    ] {
        assert!(promote.contains(needle), "`{needle}` not in:\n{promote}");
    }
    assert!(!promote.contains("--context cluster1"), "{promote}");
    let finish = plan(&["finish"]);
    assert_eq!(
        finish
            .matches("helm uninstall istiod --namespace istio-system")
            .count(),
        3,
        "{finish}"
    );
    let rollback = plan(&["rollback", "--from", "default"]);
    assert!(
        rollback.contains("helm uninstall istiod-1-31-0"),
        "{rollback}"
    );
    let bad = without_tools(&env, &["plan", "upgrade", "sideways", "-f", mesh]).expect(2);
    assert!(
        bad.stderr.contains("`sideways` is not an upgrade phase"),
        "{}",
        bad.all()
    );
    assert_eq!(env.requests(), [0, 0, 0]);
}

#[test]
fn every_example_mesh_file_plans_without_contacting_a_cluster() {
    let env = Env::new(TOOLS, 1);
    let dir = repo().join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let run = without_tools(&env, &["plan", "-f", path.to_str().unwrap()]);
        assert_eq!(run.code, Some(0), "{}: {}", path.display(), run.all());
        seen += 1;
    }
    assert!(seen >= 5, "{seen} examples");
    assert_eq!(env.requests(), [0]);
}

#[test]
fn ambient_shapes_upstream_does_not_support_exit_2_and_touch_nothing() {
    let env = Env::new(TOOLS, 2);
    let mesh = env.mesh_file(&[], &[], "dataplane: ambient\n");
    let mesh = mesh.to_str().unwrap();
    let run = env.meshup(&["install", "-f", mesh]).expect(2);
    assert!(
        run.stderr.contains("ambient` on one network") && run.stderr.contains("--allow-untested"),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("Beta from 1.29"), "{}", run.all());
    let run = env
        .meshup(&[
            "expose",
            "helloworld",
            "-n",
            "sample",
            "-f",
            mesh,
            "--dataplane",
            "sidecar",
        ])
        .expect(2);
    assert!(run.stderr.contains("for ambient meshes"), "{}", run.all());
    assert_eq!(env.requests(), [0, 0]);
}
