//! `meshup export`: the files Flux and Argo CD run, written from the mesh file alone — the
//! same bytes twice, no cluster contacted, exactly the values `render` writes, the order and
//! the ignored fields each engine needs, and no secret material in any file.

use std::path::{Path, PathBuf};

use super::common::*;
use serde_json::Value;

const TOOLS: &str = "helm4";

/// A two-network mesh of `env`'s clusters (cluster1 and cluster2 primaries; cluster3, when
/// there, a remote of cluster1) whose charts come from an https repository.
fn fleet_mesh(env: &Env, extra: &str) -> PathBuf {
    let mut text = format!(
        "meshID: mesh1\nistio:\n  version: {ISTIO_FROM}\n  charts: https://charts.example.com/istio\ntrust:\n  dir: {}\n{extra}clusters:\n",
        env.path("certs").display()
    );
    for (i, cluster) in env.clusters.iter().enumerate() {
        let name = cluster.name();
        text.push_str(&format!("  - name: {name}\n    context: {name}\n"));
        match i {
            0 => {
                text.push_str("    network: net1\n    eastWestGateway:\n      address: 10.1.0.1\n")
            }
            1 => text.push_str("    network: net2\n"),
            _ => text.push_str("    network: net1\n    role: remote\n    primary: cluster1\n"),
        }
    }
    let path = env.path("mesh.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Flux's namespace, where `install --only trust` puts the trust gate.
fn engine_namespace(cluster: &meshup_testcluster::TestCluster) {
    cluster
        .put(
            "/api/v1/namespaces",
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}}),
        )
        .unwrap();
}

/// meshup with no helm or kubectl on its PATH: whatever it runs, it cannot start a tool.
fn without_tools(env: &Env, args: &[&str]) -> Run {
    let mut command = env.command(args);
    command.env("PATH", "/nonexistent");
    Run::from(command.output().unwrap())
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            serde_yaml::from_value::<Value>(serde_yaml::Value::deserialize(d).unwrap()).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// Key, certificate and token shapes: PEM blocks (also base64-encoded, as in a Secret's
/// data), JWTs, kubeconfig credentials.
fn secret_shapes(text: &str) -> Vec<&'static str> {
    let jwt = text.match_indices("eyJ").any(|(i, _)| {
        let rest = &text[i..];
        let token: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        token.matches('.').count() >= 2 && token.len() > 30
    });
    [
        ("-----BEGIN", text.contains("-----BEGIN")),
        ("PRIVATE KEY", text.contains("PRIVATE KEY")),
        ("base64 PEM", text.contains("LS0tLS1CRUdJTi")),
        ("client-key-data", text.contains("client-key-data")),
        ("a JWT", jwt),
        ("token:", text.contains("token:")),
    ]
    .into_iter()
    .filter_map(|(name, found)| found.then_some(name))
    .collect()
}

#[test]
fn flux_export_is_deterministic_has_renders_values_and_contacts_no_cluster() {
    let env = Env::new(TOOLS, 3);
    let mesh = fleet_mesh(&env, "");
    let mesh = mesh.to_str().unwrap();
    let out = env.path("fleet");
    let args = [
        "export",
        "--format",
        "flux",
        "-f",
        mesh,
        "--out",
        out.to_str().unwrap(),
    ];
    without_tools(&env, &args).expect(0);
    let first = read_tree(&out);
    without_tools(&env, &args).expect(0);
    assert_eq!(first, read_tree(&out), "a second export wrote other bytes");
    assert_eq!(env.requests(), [0, 0, 0], "export contacted a cluster");

    // The values of every release are exactly those `render` writes for it.
    without_tools(&env, &["render", "-f", mesh, "--out", "values"]).expect(0);
    let rendered = read_tree(&env.path("values"));
    let mut compared = 0;
    for cluster in ["cluster1", "cluster2", "cluster3"] {
        let kustomization = &docs(&first[&format!("{cluster}/releases/kustomization.yaml")])[0];
        let listed: Vec<&str> = kustomization["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let in_dir: Vec<&str> = first
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{cluster}/releases/")))
            .filter(|f| *f != "kustomization.yaml")
            .collect();
        assert_eq!(
            listed
                .iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            in_dir.iter().copied().collect(),
            "{cluster}: the kustomization does not list exactly its files"
        );
        let mut previous: Option<String> = None;
        for file in listed.iter().filter(|f| **f != "sources.yaml") {
            let release = &docs(&first[&format!("{cluster}/releases/{file}")])[0];
            let spec = &release["spec"];
            let chart = spec["chart"]["spec"]["chart"].as_str().unwrap();
            assert_eq!(spec["chart"]["spec"]["version"], ISTIO_FROM, "{file}");
            assert_eq!(spec["storageNamespace"], NS, "{file}");
            assert_eq!(spec["targetNamespace"], NS, "{file}");
            assert_eq!(spec["releaseName"], release["metadata"]["name"], "{file}");
            assert_eq!(spec["driftDetection"]["mode"], "enabled", "{file}");
            let ignored = spec["driftDetection"]["ignore"].to_string();
            assert!(
                ignored.contains("/webhooks/0/clientConfig/caBundle"),
                "{file}: {ignored}"
            );
            assert!(
                ignored.contains("/webhooks/0/failurePolicy"),
                "{file}: {ignored}"
            );
            // In meshup's install order: each depends on the one before.
            match &previous {
                Some(before) => assert_eq!(spec["dependsOn"][0]["name"], before.as_str(), "{file}"),
                None => assert!(spec["dependsOn"].is_null(), "{file}"),
            }
            previous = release["metadata"]["name"].as_str().map(str::to_string);
            let values_file = format!("{cluster}/{chart}-values.yaml");
            let expected: Value = serde_yaml::from_str(&rendered[&values_file]).unwrap();
            assert_eq!(
                spec["values"], expected,
                "{cluster}/{file} against {values_file}"
            );
            compared += 1;
            // A primary's releases wait for the trust gate; a remote's (no cacerts) do not.
            let gated = spec["valuesFrom"][0]["name"] == format!("meshup-trust-{cluster}");
            assert_eq!(
                gated,
                cluster != "cluster3",
                "{cluster}/{file}: valuesFrom {}",
                spec["valuesFrom"]
            );
        }
        assert!(previous.is_some(), "{cluster}: no HelmRelease");
    }
    assert_eq!(
        compared,
        rendered.len(),
        "a rendered values file has no HelmRelease"
    );

    // The plain manifests wait for the releases; a two-network primary has its Gateway.
    let flux = docs(&first["cluster1/flux.yaml"]);
    assert_eq!(flux[1]["metadata"]["name"], "meshup-objects");
    assert_eq!(flux[1]["spec"]["dependsOn"][0]["name"], "meshup-releases");
    let objects = &first["cluster1/objects/east-west-objects.yaml"];
    assert!(objects.contains("cross-network-gateway"), "{objects}");
    assert!(objects.contains("istiod-gateway"), "{objects}");
}

#[test]
fn the_hub_layout_reaches_each_cluster_through_a_kubeconfig_secret() {
    let env = Env::new(TOOLS, 2);
    let mesh = fleet_mesh(&env, "");
    let out = env.path("fleet");
    without_tools(
        &env,
        &[
            "export",
            "--format",
            "flux",
            "--layout",
            "hub",
            "-f",
            mesh.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .expect(0);
    let tree = read_tree(&out);
    for cluster in ["cluster1", "cluster2"] {
        let release = &docs(&tree[&format!("hub/releases/{cluster}-istiod.yaml")])[0];
        assert_eq!(release["spec"]["releaseName"], "istiod");
        assert_eq!(
            release["spec"]["kubeConfig"]["secretRef"]["name"],
            format!("meshup-kubeconfig-{cluster}")
        );
        assert_eq!(
            release["spec"]["dependsOn"][0]["name"],
            format!("{cluster}-istio-base")
        );
    }
    let hub = docs(&tree["hub/flux.yaml"]);
    let objects = hub
        .iter()
        .find(|k| k["metadata"]["name"] == "cluster1-meshup-objects")
        .expect("cluster1's objects Kustomization");
    assert_eq!(
        objects["spec"]["kubeConfig"]["secretRef"]["name"],
        "meshup-kubeconfig-cluster1"
    );
    let readme = &tree["README.md"];
    assert!(readme.contains("meshup-kubeconfig-cluster2"), "{readme}");
}

#[test]
fn argocd_export_orders_each_clusters_releases_by_sync_waves() {
    let env = Env::new(TOOLS, 2);
    let mesh = fleet_mesh(&env, "");
    let out = env.path("fleet");
    let args = [
        "export",
        "--format",
        "argocd",
        "-f",
        mesh.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--repo-url",
        "https://git.example.com/mesh.git",
        "--path",
        "fleet",
    ];
    without_tools(&env, &args).expect(0);
    let tree = read_tree(&out);
    let wave = |file: &str| -> u64 {
        docs(&tree[file])[0]["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let base = wave("cluster1/apps/istio-base.yaml");
    let istiod = wave("cluster1/apps/istiod.yaml");
    let gateway = wave("cluster1/apps/istio-eastwestgateway.yaml");
    let objects = wave("cluster1/apps/objects.yaml");
    assert!(
        base < istiod && istiod < gateway && gateway < objects,
        "{base} {istiod} {gateway} {objects}"
    );
    let app = &docs(&tree["cluster1/apps/istiod.yaml"])[0];
    let options = app["spec"]["syncPolicy"]["syncOptions"].to_string();
    assert!(
        options.contains("ServerSideApply=true")
            && options.contains("RespectIgnoreDifferences=true"),
        "{options}"
    );
    assert!(
        app["spec"]["ignoreDifferences"]
            .to_string()
            .contains("caBundle")
    );
    assert_eq!(app["spec"]["source"]["helm"]["releaseName"], "istiod");
    assert_eq!(app["spec"]["source"]["targetRevision"], ISTIO_FROM);
    let parent = &docs(&tree["cluster1/parent.yaml"])[0];
    assert_eq!(parent["spec"]["source"]["path"], "fleet/cluster1/apps");
    let health = &docs(&tree["argocd-cm.yaml"])[0];
    assert!(
        health["data"]["resource.customizations.health.argoproj.io_Application"]
            .as_str()
            .is_some_and(|lua| lua.contains("obj.status.health")),
        "{health}"
    );
}

#[test]
fn no_exported_file_holds_key_certificate_or_token_material() {
    // The scan finds what it looks for.
    assert_eq!(
        secret_shapes("ca-key.pem: -----BEGIN EC PRIVATE KEY-----"),
        ["-----BEGIN", "PRIVATE KEY"]
    );
    assert_eq!(
        secret_shapes("x: eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJrdWJlcm5ldGVzIn0.c2lnbmF0dXJl"),
        ["a JWT"]
    );
    assert_eq!(secret_shapes("data: LS0tLS1CRUdJTiBDRVJU"), ["base64 PEM"]);

    let env = Env::new(TOOLS, 3);
    let mesh = fleet_mesh(&env, "");
    let mesh = mesh.to_str().unwrap();
    // The mesh's CA material exists beside the mesh file, as it would after `install`.
    without_tools(&env, &["certs", "-f", mesh]).expect(0);
    assert!(env.path("certs/cluster1/ca-key.pem").is_file());
    for (format, layout) in [
        ("flux", "every"),
        ("flux", "hub"),
        ("argocd", "every"),
        ("argocd", "hub"),
    ] {
        let out = env.path(&format!("fleet-{format}-{layout}"));
        without_tools(
            &env,
            &[
                "export",
                "--format",
                format,
                "--layout",
                layout,
                "-f",
                mesh,
                "--out",
                out.to_str().unwrap(),
                "--repo-url",
                "https://git.example.com/mesh.git",
            ],
        )
        .expect(0);
        let tree = read_tree(&out);
        assert!(tree.len() > 10, "{format}/{layout}: {:?}", tree.keys());
        for (file, text) in &tree {
            let found = secret_shapes(text);
            assert!(
                found.is_empty(),
                "{format}/{layout}: {file} holds {found:?}"
            );
        }
    }
}

#[test]
fn export_refuses_what_an_engine_cannot_run_and_writes_nothing() {
    let env = Env::new(TOOLS, 3);
    let out = env.path("fleet");
    let export = |mesh: &Path, extra: &[&str]| {
        let mut args = vec![
            "export",
            "--format",
            "flux",
            "-f",
            mesh.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        without_tools(&env, &args)
    };
    // A local chart directory (the suite's usual mesh file).
    let local = env.mesh_file(&[], &[], "");
    let run = export(&local, &[]).expect(2);
    assert!(
        run.stderr.contains("`istio.charts`") && run.stderr.contains("local chart directory"),
        "{}",
        run.stderr
    );
    // Unpinned charts.
    let mesh = fleet_mesh(&env, "");
    let unpinned = std::fs::read_to_string(&mesh)
        .unwrap()
        .replace(&format!("  version: {ISTIO_FROM}\n"), "");
    std::fs::write(&mesh, unpinned).unwrap();
    let run = export(&mesh, &[]).expect(2);
    assert!(
        run.stderr.contains("`istio.version` is not set"),
        "{}",
        run.stderr
    );
    // A remote whose primary's gateway address only a live cluster knows.
    let mesh = fleet_mesh(&env, "");
    let unaddressed = std::fs::read_to_string(&mesh)
        .unwrap()
        .replace("    eastWestGateway:\n      address: 10.1.0.1\n", "");
    std::fs::write(&mesh, unaddressed).unwrap();
    let run = export(&mesh, &[]).expect(2);
    assert!(
        run.stderr.contains("`clusters[2]`") && run.stderr.contains("eastWestGateway.address"),
        "{}",
        run.stderr
    );
    // Argo CD needs the repository its parents read.
    let mesh = fleet_mesh(&env, "");
    let run = without_tools(
        &env,
        &[
            "export",
            "--format",
            "argocd",
            "-f",
            mesh.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .expect(2);
    assert!(run.stderr.contains("--repo-url"), "{}", run.stderr);
    assert!(!out.exists(), "a refused export wrote files");
    assert_eq!(env.requests(), [0, 0, 0]);
}

#[test]
fn list_names_an_owner_for_every_part_and_a_smaller_mesh_leaves_no_stale_files() {
    let env = Env::new(TOOLS, 3);
    let mesh = fleet_mesh(&env, "");
    let out = env.path("fleet");
    let run = without_tools(
        &env,
        &[
            "export",
            "--format",
            "flux",
            "-f",
            mesh.to_str().unwrap(),
            "--list",
        ],
    )
    .expect(0);
    assert!(
        !out.exists() && !env.path("meshup-export").exists(),
        "--list wrote files"
    );
    let owner = |cluster: &str, object: &str| -> String {
        run.stdout
            .lines()
            .find(|l| l.starts_with(cluster) && l.contains(object))
            .unwrap_or_else(|| panic!("no row for {cluster} {object}:\n{}", run.stdout))
            .to_string()
    };
    assert!(owner("cluster1", "namespace `istio-system`").contains("meshup"));
    assert!(owner("cluster1", "`cacerts`").contains("meshup"));
    assert!(owner("cluster1", "Helm release `istiod`").contains("Flux"));
    assert!(owner("cluster1", "remote secrets of cluster2, cluster3").contains("meshup link"));
    assert!(owner("cluster2", "meshup-trust-cluster2").contains("install --only trust"));
    assert!(owner("cluster3", "Helm release `istiod`").contains("Flux"));

    let args = [
        "export",
        "--format",
        "flux",
        "-f",
        mesh.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    without_tools(&env, &args).expect(0);
    assert!(out.join("cluster3/releases/istiod.yaml").is_file());
    // cluster3 leaves the mesh file; its folder's files go with it.
    let text = std::fs::read_to_string(&mesh).unwrap();
    let two = &text[..text.find("  - name: cluster3").unwrap()];
    std::fs::write(&mesh, two).unwrap();
    without_tools(&env, &args).expect(0);
    let tree = read_tree(&out);
    assert!(
        tree.keys().all(|k| !k.starts_with("cluster3/")),
        "{:?}",
        tree.keys()
    );
    assert!(tree.contains_key("cluster2/releases/istiod.yaml"));
}

#[test]
fn install_only_trust_puts_trust_then_the_gate_and_no_release() {
    let env = Env::new(TOOLS, 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    // Without the engine's namespace, the gate cannot go in: the cluster and namespace named.
    let run = env
        .meshup(&["install", "--only", "trust", "-f", mesh])
        .expect(1);
    assert!(run.stderr.contains("flux-system"), "{}", run.stderr);
    for cluster in &env.clusters {
        engine_namespace(cluster);
    }
    env.meshup(&["install", "--only", "trust", "-f", mesh])
        .expect(0);
    for cluster in &env.clusters {
        let name = cluster.name();
        let namespace = cluster.get("/api/v1/namespaces/istio-system").unwrap();
        assert_eq!(
            namespace["metadata"]["labels"]["topology.istio.io/network"],
            "network1"
        );
        let cacerts = cluster.get(CACERTS).expect("cacerts");
        let gate = cluster
            .get(&format!(
                "/api/v1/namespaces/flux-system/configmaps/meshup-trust-{name}"
            ))
            .expect("the trust gate");
        assert_eq!(gate["data"]["values.yaml"], "{}\n");
        // After cacerts: the gate's write comes later in the cluster's log.
        let log = writes(cluster, 0);
        let at = |part: &str| {
            log.iter()
                .position(|(_, p)| p.contains(part))
                .unwrap_or_else(|| panic!("{name}: no write of {part}: {log:?}"))
        };
        assert!(
            at("/secrets/cacerts") < at("/configmaps"),
            "{name}: {log:?}"
        );
        assert!(cacerts["data"]["root-cert.pem"].is_string());
        assert!(
            helm_records(cluster).is_empty(),
            "{name}: a release was installed"
        );
        assert!(
            cluster
                .get("/apis/apps/v1/namespaces/istio-system/deployments/istiod")
                .is_none()
        );
    }
    // A second run changes nothing (the lock's renewals aside).
    let since: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    env.meshup(&["install", "--only", "trust", "-f", mesh])
        .expect(0);
    for (cluster, since) in env.clusters.iter().zip(since) {
        let changed = mesh_writes(cluster, since);
        assert!(changed.is_empty(), "{}: {changed:?}", cluster.name());
    }
}

#[test]
fn install_only_trust_with_a_hub_gives_the_hub_a_working_kubeconfig_per_cluster() {
    let env = Env::new(TOOLS, 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    let hub = env.cluster("cluster1");
    // A hub context the kubeconfig does not name: refused before any cluster is touched.
    let before = env.requests();
    let run = env
        .meshup(&["install", "--only", "trust", "--hub", "nosuch", "-f", mesh])
        .expect(2);
    assert!(
        run.stderr.contains("--hub") && run.stderr.contains("`nosuch`"),
        "{}",
        run.stderr
    );
    assert_eq!(env.requests(), before, "a cluster was contacted");
    engine_namespace(hub);
    // Only the hub has the engine's namespace: the gates and the kubeconfigs all go there.
    let run = env
        .meshup(&[
            "install", "--only", "trust", "--hub", "cluster1", "-f", mesh,
        ])
        .expect(0);
    for cluster in &env.clusters {
        let name = cluster.name();
        let gate = hub
            .get(&format!(
                "/api/v1/namespaces/flux-system/configmaps/meshup-trust-{name}"
            ))
            .unwrap_or_else(|| panic!("{name}: no trust gate in the hub"));
        assert_eq!(gate["data"]["values.yaml"], "{}\n");
        let secret = hub
            .get(&format!(
                "/api/v1/namespaces/flux-system/secrets/meshup-kubeconfig-{name}"
            ))
            .unwrap_or_else(|| panic!("{name}: no kubeconfig Secret in the hub"));
        let kubeconfig = decode(&secret["data"]["value"]);
        let config: Value = serde_yaml::from_str(&kubeconfig).unwrap();
        let token = config["users"][0]["user"]["token"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(!token.is_empty());
        assert!(
            !run.all().contains(&token),
            "{name}: the fleet token was printed"
        );
        assert_eq!(
            config["clusters"][0]["cluster"]["server"],
            cluster.url().as_str(),
            "{name}"
        );
        // The kubeconfig works, as the engine would use it: a cluster-wide read and a write
        // of Istio's kind of object (cluster roles) are allowed.
        let file = env.path(&format!("hub-{name}.kubeconfig"));
        std::fs::write(&file, &kubeconfig).unwrap();
        for args in [
            &["get", "namespaces", "--output", "name"][..],
            &["auth", "can-i", "create", "clusterroles"][..],
        ] {
            let out = std::process::Command::new(env.tools.join("kubectl"))
                .arg("--kubeconfig")
                .arg(&file)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A cluster that is not the hub got no engine object.
        if name != "cluster1" {
            assert!(cluster.get("/api/v1/namespaces/flux-system").is_none());
        }
    }
    // A second run changes nothing anywhere.
    let since: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    env.meshup(&[
        "install", "--only", "trust", "--hub", "cluster1", "-f", mesh,
    ])
    .expect(0);
    for (cluster, since) in env.clusters.iter().zip(since) {
        let changed = mesh_writes(cluster, since);
        assert!(changed.is_empty(), "{}: {changed:?}", cluster.name());
    }
}

#[test]
fn the_examples_are_what_export_writes_today() {
    let env = Env::new(TOOLS, 1);
    let example = repo().join("examples/fleet");
    let mesh = example.join("mesh.yaml");
    let mesh = mesh.to_str().unwrap();
    for (format, extra) in [
        ("flux", vec!["--path", "./examples/fleet/flux"]),
        (
            "argocd",
            vec![
                "--path",
                "examples/fleet/argocd",
                "--repo-url",
                "https://git.example.com/platform/mesh.git",
            ],
        ),
    ] {
        let out = env.path(format);
        let mut args = vec![
            "export",
            "-f",
            mesh,
            "--format",
            format,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        without_tools(&env, &args).expect(0);
        assert_eq!(
            read_tree(&out),
            read_tree(&example.join(format)),
            "examples/fleet/{format} is stale: re-run the export its mesh.yaml names"
        );
    }
}

/// Marks every cluster's istiod Deployment as an engine's: `labels` and `annotations` added.
fn mark_istiod(env: &Env, labels: &[(&str, &str)], annotations: &[(&str, &str)]) {
    for cluster in &env.clusters {
        let path = "/apis/apps/v1/namespaces/istio-system/deployments/istiod";
        let mut deployment = cluster.get(path).expect("istiod");
        for (k, v) in labels {
            deployment["metadata"]["labels"][*k] = Value::from(*v);
        }
        for (k, v) in annotations {
            if deployment["metadata"]["annotations"].is_null() {
                deployment["metadata"]["annotations"] = serde_json::json!({});
            }
            deployment["metadata"]["annotations"][*k] = Value::from(*v);
        }
        cluster.put(path, deployment).unwrap();
    }
}

#[test]
fn an_engine_run_istiod_is_named_by_status_and_not_taken_over_by_install() {
    let env = Env::new(TOOLS, 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    let status = env.meshup(&["status", "-f", mesh]).expect(0);
    assert!(!status.stdout.contains("MANAGED BY"), "{}", status.stdout);

    // Flux's helm-controller labels what it installs with its HelmRelease.
    mark_istiod(
        &env,
        &[
            ("helm.toolkit.fluxcd.io/name", "istiod"),
            ("helm.toolkit.fluxcd.io/namespace", "flux-system"),
        ],
        &[],
    );
    let status = env.meshup(&["status", "-f", mesh]).expect(0);
    assert!(status.stdout.contains("MANAGED BY"), "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains("Flux (HelmRelease flux-system/istiod)"),
        "{}",
        status.stdout
    );
    let since: Vec<usize> = env
        .clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect();
    let run = env.meshup(&["install", "-f", mesh]).expect(2);
    assert!(
        run.stderr
            .contains("managed by Flux (HelmRelease flux-system/istiod)")
            && run.stderr.contains("--take-over"),
        "{}",
        run.stderr
    );
    for (cluster, since) in env.clusters.iter().zip(since) {
        assert!(
            mesh_writes(cluster, since).is_empty(),
            "{}: a refused install wrote",
            cluster.name()
        );
    }
    env.meshup(&["install", "--take-over", "-f", mesh])
        .expect(0);
    // `--only trust` touches no release: allowed beside an engine.
    for cluster in &env.clusters {
        engine_namespace(cluster);
    }
    env.meshup(&["install", "--only", "trust", "-f", mesh])
        .expect(0);
}

#[test]
fn meshup_reads_verifies_rotates_doctors_and_guards_an_argocd_run_mesh_without_helm_records() {
    let env = Env::new(TOOLS, 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    // Argo CD applies `helm template` output: its objects carry its tracking annotation and
    // there is no Helm release record.
    mark_istiod(
        &env,
        &[],
        &[(
            "argocd.argoproj.io/tracking-id",
            "cluster1-istiod:apps/Deployment:istio-system/istiod",
        )],
    );
    for cluster in &env.clusters {
        for secret in cluster.list("/api/v1/namespaces/istio-system/secrets") {
            let name = secret["metadata"]["name"].as_str().unwrap();
            if name.starts_with("sh.helm.release.v1.") {
                cluster.delete(&format!("/api/v1/namespaces/istio-system/secrets/{name}"));
            }
        }
        assert!(helm_records(cluster).is_empty());
    }
    let status = env.meshup(&["status", "-f", mesh]).expect(0);
    assert!(
        status
            .stdout
            .contains("synced by Argo CD (cluster1-istiod)"),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains("Argo CD (Application cluster1-istiod)"),
        "{}",
        status.stdout
    );
    assert!(
        !status.all().contains("is not installed"),
        "{}",
        status.all()
    );
    let run = env.meshup(&["install", "-f", mesh]).expect(2);
    assert!(run.stderr.contains("managed by Argo CD"), "{}", run.stderr);

    // meshup's own part works beside Argo CD, with versions read from the Deployments.
    env.meshup(&["verify", "--wait", "30s", "-f", mesh])
        .expect(0);
    let rotated = env.meshup(&["link", "--rotate", "-f", mesh]).expect(0);
    assert!(rotated.stderr.contains("rotat"), "{}", rotated.all());
    env.meshup(&["verify", "--wait", "30s", "-f", mesh])
        .expect(0);
    let doctor = env.meshup(&["doctor", "-f", mesh]).expect(0);
    assert!(!doctor.all().contains("helm"), "{}", doctor.all());
    let refused = env.meshup(&["upgrade", "promote", "-f", mesh]).expect(2);
    assert!(
        refused.stderr.contains(&format!("default ({ISTIO_FROM})")),
        "{}",
        refused.all()
    );
    // Two minor versions ahead, through the engine: the export reads the Deployments' version.
    let skipping = mesh_moved(
        &env,
        Path::new(mesh),
        "1.32.0",
        &"https://charts.example.com/istio",
        "skipping.yaml",
    );
    let out = env.path("argocd");
    let refused = env
        .meshup(&[
            "export",
            "--format",
            "argocd",
            "--repo-url",
            "https://git.example.com/mesh.git",
            "--upgrade",
            "start",
            "--out",
            out.to_str().unwrap(),
            "-f",
            &skipping,
        ])
        .expect(2);
    assert!(
        refused.stderr.contains(&format!("runs Istio {ISTIO_FROM}"))
            && refused.stderr.contains("more than one minor version apart"),
        "{}",
        refused.all()
    );
    assert!(!out.exists(), "a refused export wrote files");
    for cluster in &env.clusters {
        assert!(helm_records(cluster).is_empty(), "a refused upgrade wrote");
    }
}
