//! End to end: meshup drives the real helm and kubectl (Helm 4 and Helm 3 sets, fetched by
//! scripts/fetch-tools.sh) against in-memory Kubernetes API servers, one per cluster, and the
//! tests assert on the objects those servers hold afterwards.

use std::collections::BTreeSet;

use super::common::*;
use meshup_testcluster::TestCluster;
use serde_json::Value;

// ---- scenarios, each run with Helm 4 and Helm 3 (see the modules at the bottom) ----

/// Per cluster: helm's release records, and the resource versions of the remote secrets,
/// `cacerts`, the namespace and istiod (a version changes with every write).
type ClusterState = (
    BTreeSet<(String, String)>,
    BTreeSet<(String, String)>,
    Vec<Value>,
);

fn mesh_state(env: &Env) -> Vec<ClusterState> {
    env.clusters
        .iter()
        .map(|c| {
            let versions = [
                CACERTS.to_string(),
                format!("/api/v1/namespaces/{NS}"),
                format!("/apis/apps/v1/namespaces/{NS}/deployments/istiod"),
            ]
            .iter()
            .map(|path| c.get(path).expect(path)["metadata"]["resourceVersion"].clone())
            .collect();
            (
                helm_records(c),
                resource_versions(&remote_secrets(c)),
                versions,
            )
        })
        .collect()
}

/// Scenario 1: install on three clusters, then again: the second run changes nothing.
fn install_twice_converges(tools: &str) {
    let env = Env::new(tools, 3);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);

    let before = mesh_state(&env);
    for (cluster, (records, _, _)) in env.clusters.iter().zip(&before) {
        let releases: BTreeSet<&str> = records.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            releases,
            BTreeSet::from(["istio-base", "istiod"]),
            "{}",
            cluster.name()
        );
    }

    let writes_before: Vec<Vec<(String, String)>> =
        env.clusters.iter().map(|c| writes(c, 0)).collect();
    let again = env.meshup(&["install", "-f", mesh]).expect(0);
    assert!(
        again.stderr.contains("istiod unchanged"),
        "{}",
        again.stderr
    );
    let after = mesh_state(&env);
    assert_eq!(
        before, after,
        "a second install changed releases, remote secrets, cacerts, the namespace or istiod"
    );
    // The only writes of a second install are meshup's lock (taken, renewed, released).
    for (cluster, earlier) in env.clusters.iter().zip(&writes_before) {
        let new: Vec<(String, String)> = writes(cluster, 0)
            .into_iter()
            .skip(earlier.len())
            .filter(|(_, path)| !is_lock(path))
            .collect();
        assert!(new.is_empty(), "{}: {new:?}", cluster.name());
    }

    let quiet: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    let status = env.meshup(&["status", "-f", mesh]).expect(0);
    assert!(
        status.stdout.contains("is as the mesh file says"),
        "{}",
        status.stdout
    );
    // status only reads; the TokenReviews it asks for are not stored.
    for (cluster, quiet) in env.clusters.iter().zip(quiet) {
        let wrote: Vec<(String, String)> = writes(cluster, quiet)
            .into_iter()
            .filter(|(method, path)| !(method == "POST" && path.ends_with("/tokenreviews")))
            .collect();
        assert_eq!(wrote, [], "status wrote to {}", cluster.name());
    }
}

/// Scenario 2 (and the trust part of issue 4): every cluster holds a remote secret for each
/// peer and none for itself, carrying the peer's server, CA and reader token; every cacerts
/// chains to the one root; no token appears in meshup's output.
fn remote_secrets_carry_each_peers_credentials(tools: &str) {
    let env = Env::new(tools, 3);
    let override_server = "https://cluster2.example.test:6443";
    let mesh = env.mesh_file(&[], &[("cluster2", override_server)], "");
    let run = env
        .meshup(&["install", "-v", "-f", mesh.to_str().unwrap()])
        .expect(0);

    let root = std::fs::read_to_string(env.path("certs/root-cert.pem")).unwrap();
    for cluster in &env.clusters {
        let found = remote_secrets(cluster);
        let expected: BTreeSet<String> = env
            .clusters
            .iter()
            .filter(|p| p.name() != cluster.name())
            .map(|p| format!("istio-remote-secret-{}", p.name()))
            .collect();
        assert_eq!(
            names(&found),
            expected,
            "remote secrets in {}",
            cluster.name()
        );

        for secret in &found {
            let peer_name = secret["metadata"]["annotations"]["networking.istio.io/cluster"]
                .as_str()
                .unwrap();
            let peer = env.cluster(peer_name);
            let data = secret["data"].as_object().unwrap();
            assert_eq!(data.len(), 1);
            let kubeconfig: serde_yaml::Value =
                serde_yaml::from_str(&decode(&data[peer_name])).unwrap();
            let want_server = if peer_name == "cluster2" {
                override_server.to_string()
            } else {
                peer.url()
            };
            assert_eq!(
                kubeconfig["clusters"][0]["cluster"]["server"]
                    .as_str()
                    .unwrap(),
                want_server
            );
            let token_secret = peer
                .get(&format!("/api/v1/namespaces/{NS}/secrets/istio-reader-service-account-istio-remote-secret-token"))
                .expect("the peer's token secret");
            assert_eq!(
                kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]
                    .as_str()
                    .unwrap(),
                token_secret["data"]["ca.crt"].as_str().unwrap()
            );
            let token = decode(&token_secret["data"]["token"]);
            assert_eq!(
                kubeconfig["users"][0]["user"]["token"].as_str().unwrap(),
                token
            );
            assert!(
                !run.stdout.contains(&token) && !run.stderr.contains(&token),
                "a token reached meshup's output"
            );
        }

        let cacerts = cluster.get(CACERTS).expect("cacerts");
        assert_eq!(
            decode(&cacerts["data"]["root-cert.pem"]),
            root,
            "{} has another root",
            cluster.name()
        );
        let chain = decode(&cacerts["data"]["cert-chain.pem"]);
        assert!(
            chain.ends_with(&root) && chain.starts_with(&decode(&cacerts["data"]["ca-cert.pem"]))
        );
    }
    assert!(!run.stderr.contains("PRIVATE KEY") && !run.stdout.contains("PRIVATE KEY"));
}

/// Scenario 3: istiod in each cluster carries its own cluster name and the shared mesh ID and
/// network.
fn istiod_carries_the_cluster_identity(tools: &str) {
    let env = Env::new(tools, 2);
    let mesh = env.mesh_file(&[], &[], "");
    env.meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(0);
    for cluster in &env.clusters {
        let deployment = cluster
            .get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/istiod"))
            .expect("istiod");
        let env_vars: Vec<(String, String)> = deployment["spec"]["template"]["spec"]["containers"]
            [0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_string(),
                    e["value"].as_str()?.to_string(),
                ))
            })
            .collect();
        let get = |name: &str| {
            env_vars
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("CLUSTER_ID"), Some(cluster.name()));
        // Proxies get ISTIO_META_CLUSTER_ID from the injector (its values, below); Istio's
        // chart does not set it on istiod.
        assert_eq!(get("ISTIO_META_CLUSTER_ID"), None);
        // Istio's istiod chart gives istiod no network of its own: istiod reads it from its
        // namespace's `topology.istio.io/network` label, and injected proxies get
        // `global.network` from the injector's values.
        assert_eq!(get("ISTIO_META_NETWORK"), None);
        let namespace = cluster.get(&format!("/api/v1/namespaces/{NS}")).unwrap();
        assert_eq!(
            namespace["metadata"]["labels"]["topology.istio.io/network"],
            "network1"
        );
        let injector = cluster
            .get(&format!(
                "/api/v1/namespaces/{NS}/configmaps/istio-sidecar-injector"
            ))
            .expect("the injector ConfigMap");
        let values: Value =
            serde_json::from_str(injector["data"]["values"].as_str().unwrap()).unwrap();
        assert_eq!(values["global"]["network"], "network1");
        assert_eq!(
            values["global"]["multiCluster"]["clusterName"],
            cluster.name()
        );
        let configmap = cluster
            .get(&format!("/api/v1/namespaces/{NS}/configmaps/istio"))
            .expect("istio configmap");
        assert!(
            configmap["data"]["mesh"]
                .as_str()
                .unwrap()
                .contains("meshId: mesh1"),
            "{configmap}"
        );
        let namespace = cluster.get(&format!("/api/v1/namespaces/{NS}")).unwrap();
        assert_eq!(
            namespace["metadata"]["labels"]["topology.istio.io/network"],
            "network1"
        );
    }
}

/// Scenario 4: a cluster dropped from the mesh file loses its secrets in the others on `link`.
fn link_removes_a_dropped_cluster(tools: &str) {
    let env = Env::new(tools, 3);
    let mesh = env.mesh_file(&[], &[], "");
    env.meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(0);
    // A remote secret someone else made (no meshup label) is not meshup's to remove.
    env.cluster("cluster1")
        .put(
            &format!("/api/v1/namespaces/{NS}/secrets"),
            serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "istio-remote-secret-legacy", "namespace": NS,
                             "labels": {"istio/multiCluster": "true"}},
                "data": {"legacy": encode("apiVersion: v1\nkind: Config\n")}}),
        )
        .unwrap();
    let smaller = env.mesh_file(&["cluster1", "cluster2"], &[], "");
    let cluster3_requests = operator_requests(env.cluster("cluster3"));
    let run = env
        .meshup(&["link", "-f", smaller.to_str().unwrap()])
        .expect(0);
    assert!(run.stderr.contains("1 stale removed"), "{}", run.stderr);
    // cluster3 still holds the others' tokens: meshup says so, and how to revoke them.
    assert!(
        run.stderr.contains("cluster3 left the mesh file")
            && run.stderr.contains("run `meshup link --rotate`"),
        "{}",
        run.stderr
    );
    for name in ["cluster1", "cluster2"] {
        let peers = names(&remote_secrets(env.cluster(name)));
        assert!(
            !peers.contains("istio-remote-secret-cluster3"),
            "{name}: {peers:?}"
        );
    }
    assert_eq!(
        names(&remote_secrets(env.cluster("cluster1"))),
        BTreeSet::from([
            "istio-remote-secret-cluster2".to_string(),
            "istio-remote-secret-legacy".to_string()
        ])
    );
    assert_eq!(
        names(&remote_secrets(env.cluster("cluster2"))),
        BTreeSet::from(["istio-remote-secret-cluster1".to_string()])
    );
    // (The peers' istiod may still list cluster3 with its reader token until it drops the
    // secret; what counts is whether meshup, with the operator's credentials, called it.)
    assert_eq!(
        operator_requests(env.cluster("cluster3")),
        cluster3_requests,
        "a cluster no longer in the mesh file is not contacted"
    );
    env.cluster("cluster1").delete(&format!(
        "/api/v1/namespaces/{NS}/secrets/istio-remote-secret-legacy"
    ));
    env.meshup(&["status", "-f", smaller.to_str().unwrap()])
        .expect(0);
}

/// Scenario 5: with one API server down, preflight names it and no cluster is changed.
fn a_down_cluster_stops_install_before_any_change(tools: &str) {
    let env = Env::new(tools, 3);
    let mesh = env.mesh_file(&[], &[], "");
    env.cluster("cluster2").stop();
    let before: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    // One retry: the backoff of the default five (31 s) proves nothing more here.
    let run = env
        .meshup(&["install", "--retries", "1", "-f", mesh.to_str().unwrap()])
        .expect(1);
    assert!(
        run.stderr.contains("FAIL [cluster2] api server"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("preflight failed; nothing was changed"),
        "{}",
        run.stderr
    );
    // Only meshup's locks were taken and given back in the others.
    for (cluster, before) in env.clusters.iter().zip(before) {
        assert_eq!(
            mesh_writes(cluster, before),
            [],
            "{} was changed",
            cluster.name()
        );
    }
    for name in ["cluster1", "cluster3"] {
        assert!(
            env.cluster(name)
                .get(&format!("/api/v1/namespaces/{NS}"))
                .is_none()
        );
    }
}

/// Scenario 6: uninstall leaves nothing of meshup's; CRDs stay unless --purge-crds.
fn uninstall_leaves_nothing_behind(tools: &str) {
    let env = Env::new(tools, 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    let crds: Vec<BTreeSet<String>> = env.clusters.iter().map(istio_crds).collect();
    assert!(crds.iter().all(|c| !c.is_empty()));

    env.meshup(&["uninstall", "--yes", "-f", mesh]).expect(0);
    for (cluster, crds_before) in env.clusters.iter().zip(&crds) {
        assert!(
            cluster.get(&format!("/api/v1/namespaces/{NS}")).is_none(),
            "namespace left in {}",
            cluster.name()
        );
        assert!(
            secrets(cluster).is_empty(),
            "secrets left in {}",
            cluster.name()
        );
        let cluster_roles = names(&cluster.list("/apis/rbac.authorization.k8s.io/v1/clusterroles"));
        assert!(
            !cluster_roles.iter().any(|r| r.starts_with("istio")),
            "{cluster_roles:?}"
        );
        let webhooks =
            cluster.list("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations");
        assert!(webhooks.is_empty(), "{webhooks:?}");
        assert_eq!(
            &istio_crds(cluster),
            crds_before,
            "CRDs must stay without --purge-crds"
        );
    }

    // Already clean: not an error, and helm is not asked to uninstall anything; --purge-crds
    // removes Istio's CRDs and no other.
    env.cluster("cluster1")
        .put(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": "certificates.cert-manager.io"},
                "spec": {"group": "cert-manager.io", "scope": "Namespaced",
                         "names": {"kind": "Certificate", "plural": "certificates", "singular": "certificate"},
                         "versions": [{"name": "v1", "served": true, "storage": true,
                                       "schema": {"openAPIV3Schema": {"type": "object"}}}]}}),
        )
        .unwrap();
    let run = env
        .meshup(&["uninstall", "--yes", "--purge-crds", "-v", "-f", mesh])
        .expect(0);
    assert!(run.stderr.contains("istiod absent"), "{}", run.stderr);
    assert!(
        !run.commands()
            .iter()
            .any(|(_, c)| c.starts_with("helm uninstall")),
        "{}",
        run.stderr
    );
    for cluster in &env.clusters {
        assert!(
            istio_crds(cluster).is_empty(),
            "CRDs left in {}",
            cluster.name()
        );
    }
    assert!(
        env.cluster("cluster1")
            .get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/certificates.cert-manager.io")
            .is_some(),
        "a CRD that is not Istio's was deleted"
    );
}

/// Issue 4: a cacerts with another root blocks the install of that cluster unless --rotate-ca.
fn a_foreign_root_is_refused_until_rotate_ca(tools: &str) {
    let env = Env::new(tools, 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    // A different mesh root: a fresh trust dir.
    std::fs::rename(env.path("certs"), env.path("old-certs")).unwrap();
    let run = env.meshup(&["install", "-f", mesh]).expect(1);
    assert!(run.stderr.contains("different root CA"), "{}", run.stderr);
    assert!(run.stderr.contains("--rotate-ca"), "{}", run.stderr);
    let old_root = std::fs::read_to_string(env.path("old-certs/root-cert.pem")).unwrap();
    let cacerts = env.cluster("cluster1").get(CACERTS).unwrap();
    assert_eq!(
        decode(&cacerts["data"]["root-cert.pem"]),
        old_root,
        "refused cacerts was still changed"
    );

    let run = env
        .meshup(&["install", "--rotate-ca", "--restart", "-f", mesh])
        .expect(0);
    assert!(run.stderr.contains("cacerts rotated"), "{}", run.stderr);
    assert!(
        run.stderr.contains("istiod restart restarted"),
        "{}",
        run.stderr
    );
    let new_root = std::fs::read_to_string(env.path("certs/root-cert.pem")).unwrap();
    for cluster in &env.clusters {
        let cacerts = cluster.get(CACERTS).unwrap();
        assert_eq!(decode(&cacerts["data"]["root-cert.pem"]), new_root);
    }
    env.meshup(&["status", "-f", mesh]).expect(0);
}

// Install, uninstall and their refusals with both helms; the remote-secret exchange (kubectl
// only) and istiod's values once, split between them.
split_helms!(
    both: [
        install_twice_converges,
        a_down_cluster_stops_install_before_any_change,
        uninstall_leaves_nothing_behind,
        a_foreign_root_is_refused_until_rotate_ca,
    ],
    helm4: [remote_secrets_carry_each_peers_credentials, link_removes_a_dropped_cluster],
    helm3: [istiod_carries_the_cluster_identity],
);

#[test]
fn remote_secret_command_prints_one_secret_holding_the_reader_token() {
    let env = Env::new("helm4", 1);
    let mesh = env.mesh_file(&[], &[], "");
    env.meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(0);
    let run = env
        .meshup(&[
            "remote-secret",
            "--context",
            "cluster1",
            "--name",
            "east",
            "--server",
            "https://10.0.0.1:6443",
        ])
        .expect(0);
    let documents: Vec<serde_yaml::Value> = run
        .stdout
        .split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    assert_eq!(documents.len(), 1, "exactly one document: {}", run.stdout);
    let secret = &documents[0];
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["name"], "istio-remote-secret-east");
    assert_eq!(secret["metadata"]["labels"]["istio/multiCluster"], "true");
    let token_secret = env.clusters[0]
        .get(&format!(
            "/api/v1/namespaces/{NS}/secrets/istio-reader-service-account-istio-remote-secret-token"
        ))
        .expect("the token secret");
    let token = decode(&token_secret["data"]["token"]);
    let kubeconfig = decode(&serde_json::to_value(&secret["data"]["east"]).unwrap());
    assert!(kubeconfig.contains(&token));
    assert!(!run.stderr.contains(&token), "{}", run.stderr);
}

#[test]
fn remote_secret_without_istio_namespace_fails_with_a_hint() {
    let env = Env::new("helm4", 1);
    let run = env
        .meshup(&[
            "remote-secret",
            "--context",
            "cluster1",
            "--name",
            "cluster1",
        ])
        .expect(1);
    assert!(run.stderr.contains("[cluster1]"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("namespace `istio-system` does not exist"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
}

#[test]
fn trust_none_creates_no_cacerts() {
    let env = Env::new("helm4", 2);
    let mesh = env.mesh_file(&[], &[], "");
    env.set_trust_mode(&mesh, "none");
    let run = env
        .meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(0);
    assert!(!run.stderr.contains("cacerts"), "{}", run.stderr);
    for cluster in &env.clusters {
        assert!(cluster.get(CACERTS).is_none());
    }
    assert!(
        !env.path("certs").exists(),
        "mode none must write no CA files"
    );
    let status = env
        .meshup(&["status", "-f", mesh.to_str().unwrap()])
        .expect(0);
    assert!(!status.stdout.contains("shared root"), "{}", status.stdout);
}

#[test]
fn trust_provided_installs_the_users_pki() {
    let env = Env::new("helm4", 2);
    let mesh = env.mesh_file(&[], &[], "");
    // The user's PKI: made here by `meshup certs` into the trust dir, then used as provided,
    // with cluster2's intermediate removed so meshup must sign it with the provided root key.
    env.meshup(&["certs", "-f", mesh.to_str().unwrap()])
        .expect(0);
    std::fs::remove_dir_all(env.path("certs/cluster2")).unwrap();
    env.set_trust_mode(&mesh, "provided");
    env.meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(0);
    let root = std::fs::read_to_string(env.path("certs/root-cert.pem")).unwrap();
    for cluster in &env.clusters {
        let cacerts = cluster.get(CACERTS).expect("cacerts");
        assert_eq!(decode(&cacerts["data"]["root-cert.pem"]), root);
    }
    // A provided set that does not chain to the root is refused before any cluster changes.
    let foreign = tempfile::tempdir().unwrap();
    let other = env.path("other.yaml");
    let other_text = std::fs::read_to_string(&mesh).unwrap().replace(
        &env.path("certs").display().to_string(),
        &foreign.path().display().to_string(),
    );
    std::fs::write(&other, other_text.replace("  mode: provided\n", "")).unwrap();
    env.meshup(&["certs", "-f", other.to_str().unwrap()])
        .expect(0);
    std::fs::copy(
        foreign.path().join("cluster1/ca-cert.pem"),
        env.path("certs/cluster1/ca-cert.pem"),
    )
    .unwrap();
    let mutations: Vec<u64> = env.clusters.iter().map(TestCluster::mutations).collect();
    let run = env
        .meshup(&["install", "-f", mesh.to_str().unwrap()])
        .expect(2);
    assert!(run.stderr.contains("cluster1"), "{}", run.stderr);
    assert_eq!(
        mutations,
        env.clusters
            .iter()
            .map(TestCluster::mutations)
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_revision_names_the_istiod_release_and_deployment() {
    let env = Env::new("helm4", 2);
    let mesh = env.mesh_file(&[], &[], "");
    let text = std::fs::read_to_string(&mesh).unwrap().replace(
        &format!("  version: {ISTIO_FROM}\n"),
        &format!("  version: {ISTIO_FROM}\n  revision: canary\n"),
    );
    std::fs::write(&mesh, text).unwrap();
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    for cluster in &env.clusters {
        let releases: BTreeSet<String> =
            helm_records(cluster).into_iter().map(|(r, _)| r).collect();
        assert_eq!(
            releases,
            BTreeSet::from(["istio-base".to_string(), "istiod-canary".to_string()])
        );
        assert!(
            cluster
                .get(&format!(
                    "/apis/apps/v1/namespaces/{NS}/deployments/istiod-canary"
                ))
                .is_some()
        );
    }
    let again = env.meshup(&["install", "-f", mesh]).expect(0);
    assert!(
        again.stderr.contains("istiod unchanged"),
        "{}",
        again.stderr
    );
    env.meshup(&["status", "-f", mesh]).expect(0);
    env.meshup(&["uninstall", "--yes", "-f", mesh]).expect(0);
    for cluster in &env.clusters {
        assert!(helm_records(cluster).is_empty());
    }
}

/// Observe once, write only what differs: a fresh install of three clusters starts at most 10
/// helm/kubectl processes per cluster, and a re-run that changes nothing at most 6.
#[test]
fn install_processes_per_cluster_stay_few() {
    let env = Env::new("helm4", 3);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    let fresh = env.meshup(&["install", "-v", "-f", mesh]).expect(0);
    let again = env.meshup(&["install", "-v", "-f", mesh]).expect(0);
    for cluster in ["cluster1", "cluster2", "cluster3"] {
        let first = fresh.commands_in(cluster);
        let second = again.commands_in(cluster);
        eprintln!("{cluster} fresh {}:\n  {}", first.len(), first.join("\n  "));
        eprintln!(
            "{cluster} again {}:\n  {}",
            second.len(),
            second.join("\n  ")
        );
        // What -v printed is what ran: the installs of both charts and the link are there
        // (so an empty parse fails), and no more than the bound.
        for (run, wanted) in [
            (&first, "helm upgrade --install istio-base "),
            (&first, "helm upgrade --install istiod "),
            (&first, "kubectl apply "),
            (&second, "helm list "),
        ] {
            assert!(
                run.iter().any(|c| c.starts_with(wanted)),
                "{cluster}: no `{wanted}` in {run:#?}"
            );
        }
        assert!(
            (5..=10).contains(&first.len()),
            "{cluster}: {} on a fresh install",
            first.len()
        );
        assert!(
            (3..=6).contains(&second.len()),
            "{cluster}: {} on a no-op re-run",
            second.len()
        );
    }
}

/// Uninstall, then install at once: the namespace takes a while to terminate on a real
/// cluster (here 2 s), and the install neither fails with "namespace is being terminated" nor
/// leaves anything half done. Also when the namespace is still terminating as install starts
/// (an uninstall that gave up waiting for it): install says so and waits.
#[test]
fn install_right_after_uninstall_waits_for_the_namespace() {
    let env = Env::with(
        "helm4",
        2,
        meshup_testcluster::Options {
            namespace_finalize_delay: std::time::Duration::from_secs(2),
            ..Default::default()
        },
    );
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    env.meshup(&["uninstall", "--yes", "-f", mesh]).expect(0);
    env.meshup(&["install", "-f", mesh]).expect(0);
    env.meshup(&["verify", "--wait", "60s", "-f", mesh])
        .expect(0);

    // An uninstall whose wait for the namespace ran out (--timeout 4s against 12 s here: room for a loaded machine):
    // the releases are gone, the namespace still terminating.
    for cluster in &env.clusters {
        cluster.set_namespace_finalize_delay(std::time::Duration::from_secs(12));
    }
    let gave_up = env.meshup(&["uninstall", "--yes", "--timeout", "4s", "-f", mesh]);
    assert_eq!(gave_up.code, Some(1), "{}", gave_up.stderr);
    for cluster in &env.clusters {
        let ns = cluster.get(&format!("/api/v1/namespaces/{NS}")).unwrap();
        assert_eq!(ns["status"]["phase"], "Terminating");
        assert!(helm_records(cluster).is_empty());
    }
    let run = env.meshup(&["install", "-f", mesh]).expect(0);
    assert!(
        run.stderr.contains(
            "namespace `istio-system` is still terminating (a recent uninstall); waiting for it to go"
        ),
        "{}",
        run.stderr
    );
    env.meshup(&["verify", "--wait", "60s", "-f", mesh])
        .expect(0);
    env.meshup(&["status", "-f", mesh]).expect(0);
}

/// The mesh namespace deleted behind meshup's back (`kubectl delete ns istio-system`): the
/// cluster-wide objects of the releases stay, among them istiod's validating webhooks, whose
/// `failurePolicy` istiod took over. Helm 4 applies server-side, and without
/// `--force-conflicts` its reinstall fails on that field (istio/istio#59367); install takes it
/// over and converges.
#[test]
fn install_after_the_namespace_was_deleted_by_hand_converges_with_helm_4() {
    let env = Env::new("helm4", 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    env.meshup(&["verify", "--wait", "60s", "-f", mesh])
        .expect(0);
    for cluster in &env.clusters {
        let webhook = cluster
            .get("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/istiod-default-validator")
            .expect("istio-base's validating webhook");
        assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Fail", "{webhook}");
        cluster.delete(&format!("/api/v1/namespaces/{NS}"));
    }
    let run = env.meshup(&["install", "-v", "-f", mesh]).expect(0);
    assert!(
        run.commands()
            .iter()
            .any(|(_, c)| c.starts_with("helm upgrade --install istio-base")
                && c.contains("--force-conflicts")),
        "{}",
        run.stderr
    );
    env.meshup(&["verify", "--wait", "60s", "-f", mesh])
        .expect(0);
    env.meshup(&["status", "-f", mesh]).expect(0);
}

/// The requests `cluster` answered for the operator (meshup's kubeconfig), not for the
/// peers' istiod.
fn operator_requests(cluster: &TestCluster) -> usize {
    cluster
        .requests_log()
        .iter()
        .filter(|r| r.who == "admin")
        .count()
}
