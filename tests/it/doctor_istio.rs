//! `meshup doctor` on meshes `meshup install` made with Istio's own charts
//! (`istio_charts(ISTIO_FROM)`), not the fixture charts: it reads what those charts render
//! (the system namespace's network label, `global.network` in the injector's values, the
//! remote's injector webhook by Service, the ambient east-west Gateway), so a healthy mesh gives
//! no finding, from the mesh file and from contexts alone; then a system namespace moved to
//! another network, a deleted east-west Gateway and a remote's istiod address moved off its
//! primary's gateway are named.

use std::process::Command;

use serde_json::Value;

use super::common::*;
use super::doctor::doctor;
use meshup_testcluster::{ISTIO_FROM, istio_charts};

/// One cluster: (name, network, the primary it is a remote of).
type Spec = (&'static str, &'static str, Option<&'static str>);

/// Runs the env's `kubectl` with its kubeconfig; it must succeed.
#[track_caller]
fn kubectl(env: &Env, args: &[&str]) -> String {
    let out = Command::new(env.tools.join("kubectl"))
        .args(args)
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .env("HOME", env.path("home"))
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The context of cluster `clusterN`: `ctx-N`. The kubeconfig's contexts are renamed so, so
/// that doctor from contexts must name each cluster as the cluster holds it (istiod's
/// `CLUSTER_ID`, a remote's injector path), not by its context.
fn context_of(cluster: &str) -> String {
    cluster.replace("cluster", "ctx-")
}

fn rename_contexts(env: &Env) {
    for cluster in &env.clusters {
        kubectl(
            env,
            &[
                "config",
                "rename-context",
                cluster.name(),
                &context_of(cluster.name()),
            ],
        );
    }
}

/// A mesh file for Istio's charts at [`ISTIO_FROM`]; `extra` goes before `clusters:`.
fn mesh_for(env: &Env, clusters: &[Spec], extra: &str) -> String {
    let mut text = format!(
        "meshID: mesh1\n{extra}istio:\n  version: {ISTIO_FROM}\n  charts: {}\ntrust:\n  dir: {}\nclusters:\n",
        istio_charts(ISTIO_FROM).display(),
        env.path("certs").display()
    );
    for (name, network, primary) in clusters {
        text.push_str(&format!(
            "  - name: {name}\n    context: {}\n    network: {network}\n",
            context_of(name)
        ));
        if let Some(primary) = primary {
            text.push_str(&format!("    role: remote\n    primary: {primary}\n"));
        }
    }
    let path = env.path("mesh.yaml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// `--context C` for each of `env`'s clusters.
fn contexts(env: &Env) -> Vec<String> {
    env.clusters
        .iter()
        .flat_map(|c| ["--context".to_string(), context_of(c.name())])
        .collect()
}

/// doctor from the mesh file and from the contexts: (mode, exit code, report).
fn both(env: &Env, mesh: &str) -> Vec<(&'static str, Option<i32>, Value)> {
    let (code, file) = doctor(env, &["-f", mesh]);
    let contexts = contexts(env);
    let (code2, found) = doctor(
        env,
        &contexts.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    vec![("-f", code, file), ("--context", code2, found)]
}

/// Installs the mesh and waits until every istiod synced; returns the mesh file.
fn install(env: &Env, clusters: &[Spec], extra: &str) -> String {
    rename_contexts(env);
    let mesh = mesh_for(env, clusters, extra);
    env.meshup(&["install", "-f", &mesh]).expect(0);
    env.meshup(&["verify", "--wait", "60s", "-f", &mesh])
        .expect(0);
    mesh
}

/// doctor finds nothing, in both modes, and knows every cluster by its name.
fn healthy(env: &Env, mesh: &str) {
    for (mode, code, report) in both(env, mesh) {
        let names: Vec<&str> = report["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        let expected: Vec<&str> = env.clusters.iter().map(|c| c.name()).collect();
        assert_eq!(names, expected, "{mode}: {report:#}");
        assert_eq!(
            report["findings"].as_array().map(Vec::len),
            Some(0),
            "{mode}: {report:#}"
        );
        assert_eq!(code, Some(0), "{mode}: {report:#}");
    }
    let run = env.meshup(&["doctor", "-f", mesh]).expect(0);
    assert!(run.stdout.contains("no problem found"), "{}", run.stdout);
}

const TWO_NETWORKS: [Spec; 3] = [
    ("cluster1", "network1", None),
    ("cluster2", "network2", None),
    ("cluster3", "network2", None),
];

/// A sidecar mesh on two networks (helm 4; the primary-remote one is helm 3's) is healthy; then cluster2's system namespace is relabelled
/// to another network, and doctor names the cluster and both networks.
fn two_networks(tools: &str) {
    let env = Env::new(tools, 3);
    let mesh = install(&env, &TWO_NETWORKS, "");
    healthy(&env, &mesh);
    kubectl(
        &env,
        &[
            "label",
            "ns",
            NS,
            "topology.istio.io/network=other",
            "--overwrite",
            "--context",
            "ctx-2",
        ],
    );
    for (mode, code, report) in both(&env, &mesh) {
        assert_eq!(code, Some(1), "{mode}: {report:#}");
        let named = report["findings"].as_array().unwrap().iter().any(|f| {
            let why = f["why"].as_str().unwrap_or_default();
            f["cluster"] == "cluster2"
                && f["what"] == "network"
                && why.contains("`other`")
                && why.contains("`network2`")
                && f["fix"].is_string()
        });
        assert!(named, "{mode}: {report:#}");
    }
    let run = env.meshup(&["doctor", "-f", &mesh]).expect(1);
    assert!(
        run.stdout.contains("[cluster2] network:") && run.stdout.contains("`other`"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_two_network_sidecar_mesh_of_istios_charts_is_healthy_until_a_namespace_moves() {
    two_networks("helm4");
}

/// An ambient mesh on two networks is healthy (its east-west gateways are Gateway API
/// Gateways of class `istio-east-west`); then a namespace moves to another network and a
/// Gateway goes, and doctor names both.
#[test]
fn an_ambient_two_network_mesh_of_istios_charts_is_healthy_until_it_breaks() {
    let env = Env::new("helm4", 3);
    let extra = format!(
        "dataplane: ambient\ngatewayApiCrds: {}\n",
        meshup_testcluster::istio_gateway_api_crds(ISTIO_FROM).display()
    );
    let mesh = install(&env, &TWO_NETWORKS, &extra);
    healthy(&env, &mesh);
    // The selectors `meshup status` names for a node agent not ready find its pods.
    for daemonset in ["ztunnel", "istio-cni-node"] {
        let selector = meshup::components::ambient::agent_pods(daemonset).unwrap();
        let pods = kubectl(
            &env,
            &[
                "get",
                "pods",
                "-n",
                NS,
                "-l",
                selector,
                "-o",
                "name",
                "--context",
                "ctx-1",
            ],
        );
        assert!(
            !pods.trim().is_empty(),
            "{daemonset}: no pod with {selector}"
        );
    }
    // cluster2's namespace moves to another network; cluster3 loses its east-west Gateway.
    kubectl(
        &env,
        &[
            "label",
            "ns",
            NS,
            "topology.istio.io/network=other",
            "--overwrite",
            "--context",
            "ctx-2",
        ],
    );
    kubectl(
        &env,
        &[
            "delete",
            "gateways.gateway.networking.k8s.io",
            "istio-eastwestgateway",
            "-n",
            NS,
            "--context",
            "ctx-3",
        ],
    );
    for (mode, code, report) in both(&env, &mesh) {
        assert_eq!(code, Some(1), "{mode}: {report:#}");
        let findings = report["findings"].as_array().unwrap();
        let named = |cluster: &str, what: &str, parts: &[&str]| {
            findings.iter().any(|f| {
                let why = f["why"].as_str().unwrap_or_default();
                f["cluster"] == cluster
                    && f["what"] == what
                    && parts.iter().all(|p| why.contains(p))
                    && f["fix"].is_string()
            })
        };
        assert!(
            named("cluster2", "network", &["`other`", "`network2`"]),
            "{mode}: {report:#}"
        );
        assert!(
            named(
                "cluster3",
                "east-west gateway",
                &["no Gateway of class `istio-east-west`"]
            ),
            "{mode}: {report:#}"
        );
    }
}

/// A primary and its remote (helm 3): the remote's injector calls the primary's istiod through
/// the remote's `istiod` Service, as Istio's remote profile renders it.
#[test]
fn a_primary_remote_mesh_of_istios_charts_is_healthy_until_its_istiod_address_moves_helm3() {
    let env = Env::new("helm3", 2);
    let mesh = install(
        &env,
        &[
            ("cluster1", "network1", None),
            ("cluster2", "network1", Some("cluster1")),
        ],
        "",
    );
    healthy(&env, &mesh);
    // The remote's istiod address moved off the primary's gateway: its EndpointSlice
    // `istiod` holds the new one, which doctor follows from the webhook's Service.
    let out = Command::new(env.tools.join("helm"))
        .arg("upgrade")
        .arg("istiod")
        .arg(istio_charts(ISTIO_FROM).join("istiod"))
        .args([
            "-n",
            NS,
            "--kube-context",
            "ctx-2",
            "--reuse-values",
            "--set",
            "global.remotePilotAddress=10.9.9.9",
            "--kubeconfig",
        ])
        .arg(&env.kubeconfig)
        .env("HOME", env.path("home"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (mode, code, report) in both(&env, &mesh) {
        assert_eq!(code, Some(1), "{mode}: {report:#}");
        let named = report["findings"].as_array().unwrap().iter().any(|f| {
            let why = f["why"].as_str().unwrap_or_default();
            f["cluster"] == "cluster2"
                && why.contains("the injector calls 10.9.9.9")
                && why.contains("primary `cluster1`")
        });
        assert!(named, "{mode}: {report:#}");
    }
}
