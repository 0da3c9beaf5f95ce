//! Ambient mode across clusters, end to end with the real helm 3 and 4: three clusters on two
//! networks get istiod (ambient profile, multi-network on), istio-cni, ztunnel with istiod's
//! cluster name and network, and an HBONE east-west Gateway that istiod programs; traffic
//! flows only to services marked global; uninstall leaves nothing.

use serde_json::Value;

use super::common::*;
use meshup_testcluster::TestCluster;

/// An ambient mesh file for `env`'s clusters: cluster1 on network1, the others on network2,
/// with Istio's charts of [`ISTIO_FROM`] (`charts`) and the Gateway API CRDs that build pins.
fn ambient_mesh(env: &Env, charts: &std::path::Path, extra: &str) -> String {
    let mut text = format!(
        "meshID: mesh1\ndataplane: ambient\ngatewayApiCrds: {}\nistio:\n  version: {ISTIO_FROM}\n  charts: {}\ntrust:\n  dir: {}\n{extra}clusters:\n",
        meshup_testcluster::istio_gateway_api_crds(ISTIO_FROM).display(),
        charts.display(),
        env.path("certs").display()
    );
    for (i, cluster) in env.clusters.iter().enumerate() {
        let network = if i == 0 { "network1" } else { "network2" };
        text.push_str(&format!(
            "  - name: {0}\n    context: {0}\n    network: {network}\n",
            cluster.name()
        ));
    }
    let path = env.path("ambient.yaml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn env_of(object: &Value, name: &str) -> Option<String> {
    object["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
        .map(str::to_string)
}

fn get(cluster: &TestCluster, path: &str) -> Value {
    cluster
        .get(path)
        .unwrap_or_else(|| panic!("{}: {path} missing", cluster.name()))
}

/// ztunnel claims the cluster id and network istiod has, in every cluster.
fn ztunnel_matches_istiod(env: &Env) {
    for cluster in &env.clusters {
        let istiod = get(
            cluster,
            &format!("/apis/apps/v1/namespaces/{NS}/deployments/istiod"),
        );
        let ztunnel = get(
            cluster,
            &format!("/apis/apps/v1/namespaces/{NS}/daemonsets/ztunnel"),
        );
        assert_eq!(
            env_of(&ztunnel, "ISTIO_META_CLUSTER_ID"),
            env_of(&istiod, "CLUSTER_ID"),
            "{}",
            cluster.name()
        );
        // istiod's network: its namespace's label (Istio's chart gives istiod no env for it).
        let namespace = get(cluster, &format!("/api/v1/namespaces/{NS}"));
        let network = namespace["metadata"]["labels"]["topology.istio.io/network"]
            .as_str()
            .map(str::to_string);
        assert!(network.is_some(), "{}: no network label", cluster.name());
        assert_eq!(env_of(&ztunnel, "NETWORK"), network, "{}", cluster.name());
        assert_eq!(
            env_of(&istiod, "AMBIENT_ENABLE_MULTI_NETWORK").as_deref(),
            Some("true")
        );
    }
}

/// `hostnames`: load balancers that give host names (as AWS's do), not IPs.
fn install_status_verify_uninstall(tools: &str, hostnames: bool) {
    let env = Env::with(
        tools,
        3,
        meshup_testcluster::Options {
            load_balancer_hostname: hostnames,
            ..Default::default()
        },
    );
    let charts = istio_charts(ISTIO_FROM);
    let mesh = ambient_mesh(&env, &charts, "");
    env.meshup(&["install", "-f", &mesh]).expect(0);
    ztunnel_matches_istiod(&env);
    for cluster in &env.clusters {
        let gateway = get(
            cluster,
            &format!(
                "/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/gateways/istio-eastwestgateway"
            ),
        );
        assert_eq!(gateway["spec"]["gatewayClassName"], "istio-east-west");
        assert_eq!(gateway["spec"]["listeners"][0]["port"], 15008);
        let address = &gateway["status"]["addresses"][0];
        assert!(address["value"].is_string(), "{gateway:#}");
        assert_eq!(
            address["type"],
            if hostnames { "Hostname" } else { "IPAddress" },
            "{gateway:#}"
        );
    }
    let status = env.meshup(&["status", "-f", &mesh]).expect(0);
    for column in ["ZTUNNEL", "CNI", "GATEWAY"] {
        assert!(status.stdout.contains(column), "{}", status.stdout);
    }
    // Sync and traffic across both networks (verify marks helloworld global).
    traffic_reaches_every_cluster(&env, &mesh);
    // A second install changes nothing.
    let since: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    env.meshup(&["install", "-f", &mesh]).expect(0);
    for (cluster, &n) in env.clusters.iter().zip(&since) {
        assert!(
            mesh_writes(cluster, n).is_empty(),
            "{}: {:?}",
            cluster.name(),
            mesh_writes(cluster, n)
        );
    }
    env.meshup(&["uninstall", "--yes", "-f", &mesh]).expect(0);
    for cluster in &env.clusters {
        assert!(helm_records(cluster).is_empty(), "{}", cluster.name());
        assert!(
            cluster
                .get(&format!("/apis/apps/v1/namespaces/{NS}/daemonsets/ztunnel"))
                .is_none()
        );
        assert!(
            cluster
                .get(&format!("/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/gateways/istio-eastwestgateway"))
                .is_none()
        );
    }
}

#[test]
fn ambient_on_two_networks_helm3() {
    install_status_verify_uninstall("helm3", false);
}

#[test]
fn ambient_on_two_networks_behind_host_name_load_balancers_helm4() {
    install_status_verify_uninstall("helm4", true);
}

/// ztunnel left without a network (what Istio's Helm steps do: they set `global.network`
/// for istiod only) breaks traffic across networks; meshup's next install puts istiod's
/// network back and traffic flows.
/// Services not marked global stay local; `expose` marks one in every cluster that has it.
#[test]
fn a_ztunnel_without_istiods_network_breaks_east_west_until_install_repairs_it() {
    let env = Env::new("helm4", 2);
    let charts = istio_charts(ISTIO_FROM);
    let mesh = ambient_mesh(&env, &charts, "");
    env.meshup(&["install", "-f", &mesh]).expect(0);
    // As Istio's Helm page installs it: no network for ztunnel.
    let cluster2 = env.cluster("cluster2");
    let helm = env.tools.join("helm");
    let out = std::process::Command::new(&helm)
        .args(["upgrade", "ztunnel"])
        .arg(charts.join("ztunnel"))
        .args([
            "--namespace",
            NS,
            "--reuse-values",
            "--set",
            "network=",
            "--wait",
            "--kube-context",
            "cluster2",
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
    let ztunnel = get(
        cluster2,
        &format!("/apis/apps/v1/namespaces/{NS}/daemonsets/ztunnel"),
    );
    assert_eq!(env_of(&ztunnel, "NETWORK"), None);
    let run = env.meshup(&[
        "verify",
        "--traffic",
        "--requests",
        "6",
        "-f",
        &mesh,
        "--output",
        "json",
    ]);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(run.code, Some(1), "{}", run.all());
    // From cluster2: its own cluster answers, cluster1 (another network) never does, and the
    // requests that went there failed. The report lists only clusters that answered.
    let answers = report["traffic"]["answers"]["cluster2"]
        .as_object()
        .unwrap_or_else(|| panic!("no answers from cluster2: {}", run.stdout));
    assert!(answers["cluster2"].as_u64().unwrap() > 0, "{}", run.stdout);
    assert!(
        !answers.contains_key("cluster1"),
        "cluster2's ztunnel is on no network: {}",
        run.stdout
    );
    assert!(
        report["traffic"]["failed"]["cluster2"].as_u64().unwrap() > 0,
        "{}",
        run.stdout
    );
    // doctor names it, from the mesh file and from the contexts alone.
    for args in [
        vec!["-f", mesh.as_str()],
        vec!["--context", "cluster1", "--context", "cluster2"],
    ] {
        let (code, report) = super::doctor::doctor(&env, &args);
        assert_eq!(code, Some(1), "{report:#}");
        let named = report["findings"].as_array().unwrap().iter().any(|f| {
            f["cluster"] == "cluster2"
                && f["what"] == "ztunnel"
                && f["why"]
                    .as_str()
                    .unwrap()
                    .contains("network `none` (istiod's is `network2`)")
                && f["fix"].is_string()
        });
        assert!(named, "{report:#}");
    }
    env.meshup(&["install", "-f", &mesh]).expect(0);
    ztunnel_matches_istiod(&env);
    traffic_reaches_every_cluster(&env, &mesh);

    // expose / unexpose: the label in every cluster that has the service.
    for cluster in &env.clusters {
        cluster
            .put(
                "/api/v1/namespaces",
                serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
            )
            .unwrap();
    }
    cluster2
        .put(
            "/api/v1/namespaces/shop/services",
            serde_json::json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "cart", "namespace": "shop"},
                "spec": {"ports": [{"port": 80}], "selector": {"app": "cart"}}}),
        )
        .unwrap();
    env.meshup(&["expose", "cart", "-n", "shop", "-f", &mesh])
        .expect(0);
    let cart = get(cluster2, "/api/v1/namespaces/shop/services/cart");
    assert_eq!(cart["metadata"]["labels"]["istio.io/global"], "true");
    let status = env.meshup(&["status", "-f", &mesh]).expect(0);
    assert!(status.stdout.contains("shop/cart"), "{}", status.stdout);
    env.meshup(&["unexpose", "cart", "-n", "shop", "-f", &mesh])
        .expect(0);
    // A name no cluster has is an error, not a silent no-op.
    let run = env
        .meshup(&["expose", "kart", "-n", "shop", "-f", &mesh])
        .expect(1);
    assert!(
        run.stderr
            .contains("no cluster of the mesh has service `shop/kart`"),
        "{}",
        run.all()
    );
    let cart = get(cluster2, "/api/v1/namespaces/shop/services/cart");
    assert!(
        cart["metadata"]["labels"]["istio.io/global"].is_null(),
        "{cart:#}"
    );
}

/// Without the Gateway API CRDs and without `gatewayApiCrds`, install stops before it changes
/// anything and says which release to install.
#[test]
fn missing_gateway_api_crds_stop_install_before_any_change() {
    let env = Env::new("helm4", 2);
    let charts = istio_charts(ISTIO_FROM);
    let mesh = ambient_mesh(&env, &charts, "");
    let text = std::fs::read_to_string(&mesh).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("gatewayApiCrds"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&mesh, text).unwrap();
    let run = env.meshup(&["install", "-f", &mesh]).expect(1);
    assert!(
        run.stderr.contains("Gateway API CRDs are missing")
            && run
                .stderr
                .contains(meshup_testcluster::gateway_api_for_istio(ISTIO_FROM).unwrap()),
        "{}",
        run.all()
    );
    for cluster in &env.clusters {
        assert!(helm_records(cluster).is_empty(), "{}", cluster.name());
    }
}

/// `meshup upgrade` of an ambient mesh: istio-cni and ztunnel move to the new chart and
/// revision only once the control plane did (promote), and back before it (rollback).
#[test]
fn an_ambient_upgrade_moves_the_node_agents_after_the_control_plane() {
    let env = Env::new("helm4", 2);
    let old_charts = istio_charts(ISTIO_FROM);
    let old = ambient_mesh(&env, &old_charts, "");
    env.meshup(&["install", "-f", &old]).expect(0);
    let new_charts = istio_charts(ISTIO_TO);
    let new = env.path("ambient-new.yaml");
    std::fs::write(
        &new,
        std::fs::read_to_string(&old)
            .unwrap()
            .replace(
                &format!("version: {ISTIO_FROM}"),
                &format!("version: {ISTIO_TO}"),
            )
            .replace(
                &old_charts.display().to_string(),
                &new_charts.display().to_string(),
            ),
    )
    .unwrap();
    let new = new.to_str().unwrap();
    let ztunnel_image = |cluster: &TestCluster| {
        let ds = get(
            cluster,
            &format!("/apis/apps/v1/namespaces/{NS}/daemonsets/ztunnel"),
        );
        (
            ds["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .to_string(),
            env_of(&ds, "XDS_ADDRESS").unwrap_or_default(),
        )
    };
    env.meshup(&["upgrade", "start", "-f", new]).expect(0);
    for cluster in &env.clusters {
        // The control plane is there, but not promoted: ztunnel stays as it was.
        let (tag, xds) = ztunnel_image(cluster);
        assert_eq!(
            tag,
            format!("{ISTIO_FROM}-distroless"),
            "{}",
            cluster.name()
        );
        assert!(xds.starts_with("istiod.istio-system"), "{xds}");
    }
    env.meshup(&["upgrade", "promote", "-f", new]).expect(0);
    for cluster in &env.clusters {
        let (tag, xds) = ztunnel_image(cluster);
        assert_eq!(tag, format!("{ISTIO_TO}-distroless"), "{}", cluster.name());
        let revision = ISTIO_TO.replace('.', "-");
        assert!(
            xds.starts_with(&format!("istiod-{revision}.istio-system")),
            "{xds}"
        );
    }
    env.meshup(&["verify", "-f", new, "--wait", "30s"])
        .expect(0);
    env.meshup(&["upgrade", "rollback", "-f", new]).expect(0);
    for cluster in &env.clusters {
        let (tag, xds) = ztunnel_image(cluster);
        assert_eq!(
            tag,
            format!("{ISTIO_FROM}-distroless"),
            "{}",
            cluster.name()
        );
        assert!(xds.starts_with("istiod.istio-system"), "{xds}");
    }
}
