//! The four topologies, end to end with the real helm 3 and 4: multi-primary on two networks,
//! primary-remote on one network and on two, and a mixed mesh of two primaries and a remote.
//! Each is installed, installed again (nothing changes), checked with status and verify, and
//! uninstalled.

use std::collections::BTreeSet;

use super::common::*;
use meshup_testcluster::Options;
use meshup_testcluster::TestCluster;
use serde_json::Value;

/// One cluster of a topology: (name, network, primary it is a remote of).
type Spec = (&'static str, &'static str, Option<&'static str>);

fn mesh_for(env: &Env, clusters: &[Spec]) -> String {
    let mut text = format!(
        "meshID: mesh1\nistio:\n  version: {ISTIO_FROM}\n  charts: {}\ntrust:\n  dir: {}\nclusters:\n",
        istio_charts(ISTIO_FROM).display(),
        env.path("certs").display()
    );
    for (name, network, primary) in clusters {
        text.push_str(&format!(
            "  - name: {name}\n    context: {name}\n    network: {network}\n"
        ));
        if let Some(primary) = primary {
            text.push_str(&format!("    role: remote\n    primary: {primary}\n"));
        }
    }
    let path = env.path("mesh.yaml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn get(cluster: &TestCluster, path: &str) -> Option<Value> {
    cluster.get(&format!("/api/v1/namespaces/{NS}/{path}"))
}

fn istio(cluster: &TestCluster, kind: &str, name: &str) -> Option<Value> {
    cluster.get(&format!(
        "/apis/networking.istio.io/v1/namespaces/{NS}/{kind}/{name}"
    ))
}

fn deployment(cluster: &TestCluster, name: &str) -> Option<Value> {
    cluster.get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}"))
}

fn env_var(deployment: &Value, name: &str) -> Option<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

/// Installs, checks what each cluster holds, installs again, status, verify, uninstall.
fn topology(tools: &str, clusters: &[Spec]) {
    topology_with(tools, clusters, Options::default());
}

/// The same on clusters whose load balancers behave as `options` say (late, or with a
/// `hostname` as on AWS instead of an `ip`).
fn topology_with(tools: &str, clusters: &[Spec], options: Options) {
    let hostname = options.load_balancer_hostname;
    let env = Env::with(tools, clusters.len(), options);
    let mesh = mesh_for(&env, clusters);
    let mesh = mesh.as_str();
    let run = env.meshup(&["install", "-f", mesh]).expect(0);
    assert!(
        !run.stderr.contains("networks"),
        "no warning about networks: {}",
        run.stderr
    );
    let networks: BTreeSet<&str> = clusters.iter().map(|c| c.1).collect();
    let multi_network = networks.len() > 1;

    for (name, network, primary) in clusters {
        let cluster = env.cluster(name);
        let namespace = cluster.get(&format!("/api/v1/namespaces/{NS}")).unwrap();
        assert_eq!(
            namespace["metadata"]["labels"]["topology.istio.io/network"], *network,
            "{name}"
        );
        let remotes: Vec<&str> = clusters
            .iter()
            .filter(|c| c.2 == Some(*name))
            .map(|c| c.0)
            .collect();
        let gateway = multi_network || !remotes.is_empty();
        // Who holds whose remote secret.
        let held = names(&remote_secrets(cluster));
        let expected: BTreeSet<String> = match primary {
            Some(_) => BTreeSet::new(),
            None => clusters
                .iter()
                .filter(|c| c.0 != *name)
                .map(|c| format!("istio-remote-secret-{}", c.0))
                .collect(),
        };
        assert_eq!(held, expected, "remote secrets in {name}");

        match primary {
            Some(primary) => {
                assert!(
                    deployment(cluster, "istiod").is_none(),
                    "{name} runs no istiod"
                );
                assert_eq!(
                    namespace["metadata"]["annotations"]["topology.istio.io/controlPlaneClusters"],
                    *primary
                );
                // istiod here is the primary's, reached through its east-west gateway: at an
                // IP through an EndpointSlice, at a host name through an ExternalName Service.
                let ingress = env
                    .cluster(primary)
                    .get(&format!(
                        "/api/v1/namespaces/{NS}/services/istio-eastwestgateway"
                    ))
                    .unwrap()["status"]["loadBalancer"]["ingress"][0]
                    .clone();
                if hostname {
                    assert!(ingress.get("ip").is_none(), "{ingress}");
                    let host = ingress["hostname"].as_str().unwrap();
                    assert!(host.ends_with(".elb.us-east-1.amazonaws.com"), "{host}");
                    let service = get(cluster, "services/istiod").expect("istiod Service");
                    assert_eq!(service["spec"]["type"], "ExternalName", "{name}");
                    assert_eq!(service["spec"]["externalName"], host, "{name}");
                } else {
                    // Istio's chart names it after the Service (`istiod[-REV]`,
                    // templates/remote-istiod-endpointslices.yaml); `-remote` only with
                    // `istiodRemote.enabledLocalInjectorIstiod`.
                    let slice = cluster
                        .get(&format!(
                            "/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/istiod"
                        ))
                        .expect("the remote's istiod EndpointSlice");
                    assert_eq!(
                        slice["metadata"]["labels"]["kubernetes.io/service-name"], "istiod",
                        "{name}"
                    );
                    assert_eq!(
                        slice["endpoints"][0]["addresses"][0], ingress["ip"],
                        "{name}"
                    );
                }
                assert!(
                    get(cluster, "secrets/cacerts").is_none(),
                    "a remote needs no cacerts"
                );
            }
            None => {
                let istiod = deployment(cluster, "istiod").expect("istiod");
                assert_eq!(
                    env_var(&istiod, "EXTERNAL_ISTIOD").is_some(),
                    !remotes.is_empty(),
                    "{name}"
                );
                assert_eq!(
                    istio(cluster, "gateways", "istiod-gateway").is_some(),
                    !remotes.is_empty(),
                    "{name}"
                );
                assert_eq!(
                    istio(cluster, "virtualservices", "istiod-vs").is_some(),
                    !remotes.is_empty(),
                    "{name}"
                );
            }
        }
        assert_eq!(
            deployment(cluster, "istio-eastwestgateway").is_some(),
            gateway,
            "east-west gateway in {name}"
        );
        if gateway {
            let service = get(cluster, "services/istio-eastwestgateway").unwrap();
            assert_eq!(
                service["metadata"]["labels"]["topology.istio.io/network"],
                *network
            );
            let ports: BTreeSet<u64> = service["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_u64().unwrap())
                .collect();
            assert_eq!(ports, BTreeSet::from([15021, 15443, 15012, 15017]));
        }
        let cross = istio(cluster, "gateways", "cross-network-gateway");
        assert_eq!(cross.is_some(), multi_network, "{name}");
        if let Some(cross) = cross {
            let server = &cross["spec"]["servers"][0];
            assert_eq!(server["port"]["number"], 15443);
            assert_eq!(server["tls"]["mode"], "AUTO_PASSTHROUGH");
            assert_eq!(server["hosts"][0], "*.local");
        }
    }

    // Again: nothing but meshup's lock is written.
    let before: Vec<usize> = env.clusters.iter().map(|c| writes(c, 0).len()).collect();
    env.meshup(&["install", "-f", mesh]).expect(0);
    for (cluster, before) in env.clusters.iter().zip(before) {
        let new: Vec<(String, String)> = writes(cluster, 0)
            .into_iter()
            .skip(before)
            .filter(|(_, p)| !is_lock(p))
            .collect();
        assert!(
            new.is_empty(),
            "a second install wrote to {}: {new:?}",
            cluster.name()
        );
    }

    let status = env.meshup(&["status", "-f", mesh]).expect(0);
    for (name, _, primary) in clusters {
        if let Some(primary) = primary {
            assert!(
                status.stdout.contains(&format!("remote of {primary}")),
                "{name}: {}",
                status.stdout
            );
        }
    }
    let verify = env
        .meshup(&["verify", "--wait", "60s", "-f", mesh, "--output", "json"])
        .expect(0);
    let report: Value = serde_json::from_str(&verify.stdout).unwrap();
    let rows: BTreeSet<&str> = report["sync"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cluster"].as_str().unwrap())
        .collect();
    let primaries: BTreeSet<&str> = clusters
        .iter()
        .filter(|c| c.2.is_none())
        .map(|c| c.0)
        .collect();
    assert_eq!(rows, primaries, "only istiod looks: {}", verify.stdout);

    let run = env
        .meshup(&["uninstall", "--yes", "-v", "-f", mesh])
        .expect(0);
    for cluster in &env.clusters {
        assert!(
            cluster.get(&format!("/api/v1/namespaces/{NS}")).is_none(),
            "{}",
            cluster.name()
        );
        assert!(helm_records(cluster).is_empty(), "{}", cluster.name());
    }
    // A remote is taken away before its primary, and a gateway before istiod.
    let order: Vec<(String, String)> = run
        .commands()
        .into_iter()
        .filter(|(_, c)| c.starts_with("helm uninstall"))
        .collect();
    for (name, _, primary) in clusters {
        let Some(primary) = primary else { continue };
        let last_remote = order.iter().rposition(|(c, _)| c == name).unwrap();
        let first_primary = order.iter().position(|(c, _)| c == primary).unwrap();
        assert!(last_remote < first_primary, "{order:#?}");
    }
    for (name, _, _) in clusters {
        let mine: Vec<&str> = order
            .iter()
            .filter(|(c, _)| c == name)
            .map(|(_, c)| c.as_str())
            .collect();
        // The clusters that got an east-west gateway (as checked after install).
        let has_gateway = multi_network || clusters.iter().any(|c| c.2 == Some(*name));
        let gateway = mine
            .iter()
            .position(|c| c.contains("istio-eastwestgateway"));
        assert_eq!(
            gateway.is_some(),
            has_gateway,
            "{name}: the gateway's uninstall: {mine:#?}"
        );
        let istiod = mine
            .iter()
            .position(|c| c.starts_with("helm uninstall istiod"))
            .unwrap_or_else(|| panic!("{name}: no istiod uninstall: {mine:#?}"));
        if let Some(gateway) = gateway {
            assert!(gateway < istiod, "{mine:#?}");
        }
    }
}

fn multi_primary_on_two_networks(tools: &str) {
    topology(
        tools,
        &[
            ("cluster1", "network1", None),
            ("cluster2", "network2", None),
        ],
    );
}

fn primary_remote_on_one_network(tools: &str) {
    topology(
        tools,
        &[
            ("cluster1", "network1", None),
            ("cluster2", "network1", Some("cluster1")),
        ],
    );
}

fn primary_remote_on_two_networks(tools: &str) {
    topology(
        tools,
        &[
            ("cluster1", "network1", None),
            ("cluster2", "network2", Some("cluster1")),
        ],
    );
}

fn two_primaries_and_a_remote(tools: &str) {
    topology(
        tools,
        &[
            ("cluster1", "network1", None),
            ("cluster2", "network2", None),
            ("cluster3", "network1", Some("cluster1")),
        ],
    );
}

/// AWS-style load balancers: a host name and no IP, arriving late.
fn hostnames() -> Options {
    Options {
        load_balancer_hostname: true,
        load_balancer_delay: std::time::Duration::from_millis(800),
        ..Options::default()
    }
}

#[test]
fn multi_primary_on_two_networks_behind_host_name_load_balancers() {
    let clusters = [
        ("cluster1", "network1", None),
        ("cluster2", "network2", None),
    ];
    topology_with("helm4", &clusters, hostnames());
    // And requests cross the networks through the gateways' host names.
    let env = Env::with("helm4", 2, hostnames());
    let mesh = mesh_for(&env, &clusters);
    env.meshup(&["install", "-f", &mesh]).expect(0);
    traffic_reaches_every_cluster(&env, &mesh);
}

#[test]
fn primary_remote_behind_host_name_load_balancers() {
    topology_with(
        "helm4",
        &[
            ("cluster1", "network1", None),
            ("cluster2", "network2", Some("cluster1")),
        ],
        hostnames(),
    );
}

split_helms!(
    helm4: [multi_primary_on_two_networks, primary_remote_on_two_networks],
    helm3: [primary_remote_on_one_network, two_primaries_and_a_remote],
);

#[test]
fn a_cluster_without_a_load_balancer_is_waited_for_then_named() {
    let env = Env::new("helm4", 2);
    for cluster in &env.clusters {
        cluster.set_load_balancer(false);
    }
    let mesh = mesh_for(
        &env,
        &[
            ("cluster1", "network1", None),
            ("cluster2", "network2", None),
        ],
    );
    let run = env
        .meshup(&["install", "-f", &mesh, "--timeout", "8s"])
        .expect(1);
    assert!(
        run.stderr
            .contains("waiting for the east-west gateway's external address"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("eastWestGateway: {service: {type: NodePort}, address:"),
        "{}",
        run.stderr
    );

    // With an address given, a NodePort gateway needs no load balancer.
    let text = std::fs::read_to_string(&mesh).unwrap().replace(
        "    network: network1\n",
        "    network: network1\n    eastWestGateway: {service: {type: NodePort}, address: 10.0.0.11}\n",
    ).replace(
        "    network: network2\n",
        "    network: network2\n    eastWestGateway: {service: {type: NodePort}, address: 10.0.0.12}\n",
    );
    std::fs::write(&mesh, text).unwrap();
    env.meshup(&["install", "-f", &mesh]).expect(0);
    let service = env
        .cluster("cluster1")
        .get(&format!(
            "/api/v1/namespaces/{NS}/services/istio-eastwestgateway"
        ))
        .unwrap();
    assert_eq!(service["spec"]["type"], "NodePort");
    assert_eq!(service["spec"]["externalIPs"][0], "10.0.0.11");
    let status = env.meshup(&["status", "-f", &mesh]).expect(0);
    assert!(status.stdout.contains("10.0.0.11"), "{}", status.stdout);
}

/// istiod's validating webhook fails closed once istiod ran (as istiod switches it): while no
/// istiod pod is ready — here, the one pod just replaced and not ready for 6 s — creating the
/// east-west `Gateway` is refused, and install waits that out with retries, as on a real
/// cluster during a restart.
#[test]
fn a_gateway_refused_while_istiod_restarts_is_retried() {
    let env = Env::new("helm4", 2);
    let clusters = [
        ("cluster1", "network1", None),
        ("cluster2", "network2", None),
    ];
    let mesh = mesh_for(&env, &clusters);
    env.meshup(&["install", "-f", &mesh]).expect(0);
    let c1 = env.cluster("cluster1");
    let webhook = c1
        .get("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/istio-validator-istio-system")
        .expect("istiod's validating webhook");
    assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Fail", "{webhook}");
    // The gateway object goes, and istiod's only pod is replaced by one that is not ready yet.
    c1.set_pod_ready_delay(std::time::Duration::from_secs(6));
    assert!(
        c1.delete(&format!(
            "/apis/networking.istio.io/v1/namespaces/{NS}/gateways/cross-network-gateway"
        ))
        .is_some()
    );
    let pods = c1.list(&format!("/api/v1/namespaces/{NS}/pods"));
    for pod in pods
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "istiod")
    {
        let name = pod["metadata"]["name"].as_str().unwrap();
        c1.delete(&format!("/api/v1/namespaces/{NS}/pods/{name}"));
    }
    let run = env.meshup(&["install", "-f", &mesh]).expect(0);
    assert!(
        run.stderr
            .contains("retry 1/5 in 1s: a validating webhook did not answer (istiod not ready)"),
        "{}",
        run.stderr
    );
    assert!(istio(c1, "gateways", "cross-network-gateway").is_some());
}
