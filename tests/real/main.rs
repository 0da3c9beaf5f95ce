//! The real tier: meshup against real Kubernetes control planes (kube-apiserver, etcd,
//! kube-controller-manager, kube-scheduler; kwok for the kubelets) and a real istiod
//! (pilot-discovery built from `istio.io/istio`) per istiod pod, with Istio's own charts
//! stamped as a release build stamps them. What these tests assert is what the real components
//! say: the API servers' answers, istiod's own `/debug/clusterz` and its log.
//!
//! Run with `cargo nextest run --test real` (scripts/test.sh does, after
//! `scripts/real-clusters.sh build`); this target is not part of the default test run.

mod common;
mod engines;
mod fleet;
mod fleet_upgrade;
mod probes;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::Value;

const TOKEN_SECRET: &str = "istio-reader-service-account-istio-remote-secret-token";

/// Every pair of istiods `synced`, as `meshup verify --output json` reads it from istiod.
fn all_synced(real: &Real, mesh: &str) -> bool {
    let run = real.meshup(&["verify", "-f", mesh, "--output", "json"]);
    let Ok(report) = serde_json::from_str::<Value>(&run.stdout) else {
        return false;
    };
    let rows = report["sync"].as_array().cloned().unwrap_or_default();
    rows.len() == real.n
        && rows.iter().all(|row| {
            let peers = row["peers"].as_object().cloned().unwrap_or_default();
            peers.len() == real.n - 1 && peers.values().all(|p| p["state"] == "synced")
        })
}

fn helm_records(real: &Real, context: &str) -> BTreeSet<String> {
    names(&real.json(context, &["get", "secrets", "-n", NS, "-l", "owner=helm"]))
        .into_iter()
        .collect()
}

/// The Istio objects left in `context`: CRDs of `istio.io` groups, the namespace, webhook
/// configurations and cluster-wide RBAC named for Istio.
fn istio_leftovers(real: &Real, context: &str) -> Vec<String> {
    let mut out = Vec::new();
    for name in names(&real.json(context, &["get", "crd"])) {
        if name.contains("istio.io") {
            out.push(format!("crd/{name}"));
        }
    }
    for kind in [
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
        "clusterroles",
        "clusterrolebindings",
    ] {
        for name in names(&real.json(context, &["get", kind])) {
            if name.contains("istio") {
                out.push(format!("{kind}/{name}"));
            }
        }
    }
    if real
        .kubectl_out(context, &["get", "namespace", NS])
        .status
        .success()
    {
        out.push(format!("namespace/{NS}"));
    }
    out
}

/// Install, status, verify and doctor on three real clusters (sidecar, one network); a second
/// install changes no release; a reader token revoked behind istiod's back is found by verify
/// and status while the real clusterz still says `synced`, and install repairs it; uninstalling
/// cluster3 revokes what it held; uninstalling the mesh leaves no Istio object.
#[test]
fn a_mesh_on_three_real_clusters_installs_verifies_repairs_and_goes() {
    let real = Real::up(3);
    let mesh = real.mesh_file("mesh.yaml", TO, None, "");
    real.meshup(&["install", "-f", &mesh]).expect(0);
    real.until(
        "every real istiod synced with every peer",
        Duration::from_secs(120),
        || all_synced(&real, &mesh),
    );
    real.meshup(&["verify", "-f", &mesh]).expect(0);
    let status = real.meshup(&["status", "-f", &mesh]).expect(0);
    assert!(
        status.stdout.contains("is as the mesh file says"),
        "{}",
        status.all()
    );
    assert!(status.stdout.contains("v1.35.4"), "{}", status.all());
    let doctor = real.meshup(&["doctor", "-f", &mesh]).expect(0);
    assert!(
        doctor.stdout.contains("no problem found"),
        "{}",
        doctor.all()
    );

    // Each real istiod took the `cacerts` meshup made as its CA: the root it publishes to every
    // namespace is that secret's root.
    for i in 1..=3 {
        let context = format!("real-{i}");
        let cacerts = real.json(&context, &["get", "secret", "-n", NS, "cacerts"]);
        let root = decode(&cacerts["data"]["root-cert.pem"]);
        let published = real.json(
            &context,
            &["get", "configmap", "-n", NS, "istio-ca-root-cert"],
        );
        assert_eq!(
            published["data"]["root-cert.pem"].as_str().map(str::trim),
            Some(root.trim()),
            "{context}: istiod's root is not cacerts' root"
        );
    }

    // The API servers call the real istiods' webhooks at their pods' addresses: injection and
    // validation are istiod's own.
    real.kubectl("real-1", &["create", "namespace", "app"]);
    real.kubectl(
        "real-1",
        &["label", "namespace", "app", "istio-injection=enabled"],
    );
    real.kubectl(
        "real-1",
        &[
            "create",
            "deployment",
            "sleep",
            "-n",
            "app",
            "--image=docker.io/curlimages/curl",
            "--",
            "sleep",
            "3600",
        ],
    );
    real.until(
        "the sleep pod, injected by the real istiod",
        Duration::from_secs(60),
        || {
            let pods = real.json("real-1", &["get", "pods", "-n", "app"]);
            pods["items"].as_array().unwrap().iter().any(|p| {
                let containers = p["spec"]["containers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let all: Vec<&Value> = containers
                    .iter()
                    .chain(p["spec"]["initContainers"].as_array().into_iter().flatten())
                    .collect();
                all.iter().any(|c| c["name"] == "istio-proxy")
            })
        },
    );
    let invalid = real.path("invalid.yaml");
    std::fs::write(
        &invalid,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: bad\n  namespace: app\nspec:\n  host: \"\"\n",
    )
    .unwrap();
    let refused = real.kubectl_out("real-1", &["apply", "-f", invalid.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("validation.istio.io"),
        "istiod's validating webhook refuses an empty host: {said}"
    );
    real.kubectl("real-1", &["delete", "namespace", "app", "--wait=false"]);

    let records: Vec<BTreeSet<String>> = (1..=3)
        .map(|i| helm_records(&real, &format!("real-{i}")))
        .collect();
    let again = real.meshup(&["install", "-f", &mesh]).expect(0);
    assert!(again.stderr.contains("istiod unchanged"), "{}", again.all());
    for (i, before) in records.iter().enumerate() {
        assert_eq!(
            &helm_records(&real, &format!("real-{}", i + 1)),
            before,
            "a second install made a new helm release revision in real-{}",
            i + 1
        );
    }

    // cluster1's reader token secret goes: the real API server refuses the token its peers
    // hold, while their istiods keep reporting cluster1 `synced` (they synced once).
    let held: Vec<(String, String)> = real.held_tokens("real-2");
    let (_, token) = held.iter().find(|(c, _)| c == "cluster1").unwrap();
    assert_eq!(real.status_with_token("real-1", token), 200);
    real.kubectl("real-1", &["delete", "secret", "-n", NS, TOKEN_SECRET]);
    real.until(
        "the real API server refuses the deleted secret's token",
        Duration::from_secs(30),
        || real.status_with_token("real-1", token) == 401,
    );
    let verify = real
        .meshup(&["verify", "-f", &mesh, "--output", "json"])
        .expect(1);
    let report = verify.json();
    let row = report["sync"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cluster"] == "cluster2")
        .unwrap();
    assert_eq!(row["peers"]["cluster1"]["state"], "synced", "{report:#}");
    let text = real.meshup(&["verify", "-f", &mesh]).expect(1);
    assert!(
        text.all()
            .contains("holds a token that `cluster1`'s API server refuses"),
        "{}",
        text.all()
    );
    let status = real.meshup(&["status", "-f", &mesh]).expect(1);
    assert!(
        status
            .stdout
            .contains("holds a token that `cluster1`'s API server refuses"),
        "{}",
        status.all()
    );
    real.meshup(&["install", "-f", &mesh]).expect(0);
    real.meshup(&["verify", "-f", &mesh, "--wait", "120s"])
        .expect(0);

    // cluster3 leaves: the tokens it held for cluster1 and cluster2 are refused from then on.
    let held3 = real.held_tokens("real-3");
    assert_eq!(held3.len(), 2, "{held3:?}");
    for (cluster, token) in &held3 {
        let context = cluster.replace("cluster", "real-");
        assert_eq!(real.status_with_token(&context, token), 200, "{cluster}");
    }
    real.meshup(&["uninstall", "cluster3", "-y", "-f", &mesh])
        .expect(0);
    // The API server checks a legacy token's secret in its informer cache: refused within
    // that informer's lag of the deletion.
    for (cluster, token) in &held3 {
        let context = cluster.replace("cluster", "real-");
        real.until(
            &format!("{cluster} refuses the token cluster3 held"),
            Duration::from_secs(10),
            || real.status_with_token(&context, token) == 401,
        );
    }
    for context in ["real-1", "real-2"] {
        let held: Vec<String> = real
            .held_tokens(context)
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert!(
            !held.contains(&"cluster3".to_string()),
            "{context}: {held:?}"
        );
    }
    // What stays in cluster3 is Istio's CRDs (helm keeps them, and with them Istio config);
    // the real namespace controller empties and removes the namespace.
    real.until(
        "cluster3 holds nothing of Istio but its CRDs",
        Duration::from_secs(120),
        || {
            istio_leftovers(&real, "real-3")
                .iter()
                .all(|o| o.starts_with("crd/"))
        },
    );
    assert!(
        !istio_leftovers(&real, "real-3").is_empty(),
        "the CRDs stay without --purge-crds"
    );

    real.meshup(&["uninstall", "--purge-crds", "-y", "-f", &mesh])
        .expect(0);
    for i in 1..=3 {
        let context = format!("real-{i}");
        real.until(
            &format!("{context} holds no Istio object"),
            Duration::from_secs(120),
            || istio_leftovers(&real, &context).is_empty(),
        );
    }
}

/// `link --rotate` on real istiods: each istiod logs `Update cluster` for every peer before any
/// old token is revoked; afterwards the real API servers refuse the old tokens and accept the new.
#[test]
fn link_rotate_waits_for_the_real_istiods_then_revokes() {
    let real = Real::up(2);
    let mesh = real.mesh_file("mesh.yaml", TO, None, "");
    real.meshup(&["install", "-f", &mesh]).expect(0);
    real.meshup(&["verify", "-f", &mesh, "--wait", "120s"])
        .expect(0);
    let old: Vec<(String, (String, String))> = ["real-1", "real-2"]
        .iter()
        .flat_map(|c| {
            real.held_tokens(c)
                .into_iter()
                .map(move |t| (c.to_string(), t))
        })
        .collect();
    assert_eq!(old.len(), 2);
    for (_, (cluster, token)) in &old {
        assert_eq!(
            real.status_with_token(&cluster.replace("cluster", "real-"), token),
            200
        );
    }

    // meshup's progress, read as it comes: when did it start revoking each cluster's tokens?
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meshup"))
        .args([
            "link",
            "--rotate",
            "-f",
            &mesh,
            "--output",
            "plain",
            "--timeout",
            "120s",
        ])
        .arg("--kubeconfig")
        .arg(real.kubeconfig())
        .arg("--helm")
        .arg(repo().join(".tools/helm4/helm"))
        .arg("--kubectl")
        .arg(repo().join(".tools/helm4/kubectl"))
        .env("HOME", real.path("."))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut revoking = std::collections::BTreeMap::new();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(cluster) = line
            .strip_suffix("] old reader tokens: started")
            .and_then(|l| l.strip_prefix('['))
        {
            revoking
                .entry(cluster.to_string())
                .or_insert_with(|| time::OffsetDateTime::from(SystemTime::now()));
        }
        lines.push(line);
    }
    assert!(child.wait().unwrap().success(), "{}", lines.join("\n"));

    for (context, peer) in [("real-1", "cluster2"), ("real-2", "cluster1")] {
        let logs = real.istiod_logs(context);
        let needle = format!("Update cluster\tcluster={peer} ");
        let line = logs
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_else(|| panic!("{context}'s istiod never logged `{needle}`:\n{logs}"));
        let stamp = line
            .split_whitespace()
            .find(|w| w.starts_with("20") && w.ends_with('Z'))
            .unwrap();
        let at = time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
            .unwrap();
        let revoked = revoking
            .get(peer)
            .unwrap_or_else(|| panic!("no revocation of {peer}'s tokens: {}", lines.join("\n")));
        assert!(
            at < *revoked,
            "{context}'s istiod updated {peer} at {at}, after {peer}'s old tokens were revoked at {revoked}"
        );
    }
    for (_, (cluster, token)) in &old {
        real.until(
            &format!("{cluster} refuses its old token (within its secret informer's lag)"),
            Duration::from_secs(10),
            || real.status_with_token(&cluster.replace("cluster", "real-"), token) == 401,
        );
    }
    for context in ["real-1", "real-2"] {
        for (cluster, token) in real.held_tokens(context) {
            assert!(
                old.iter().all(|(_, (_, t))| *t != token),
                "{context} still holds an old token"
            );
            assert_eq!(
                real.status_with_token(&cluster.replace("cluster", "real-"), &token),
                200
            );
        }
    }
    real.meshup(&["verify", "-f", &mesh, "--wait", "120s"])
        .expect(0);
}

/// Two networks, with Istio's gateway chart as the east-west gateway: its LoadBalancer Service
/// gets an address, and status, verify and doctor find the mesh healthy.
#[test]
fn two_networks_with_east_west_gateways() {
    let real = Real::up(2);
    let mesh = real.mesh_file("mesh.yaml", TO, Some(&["network1", "network2"]), "");
    real.meshup(&["install", "-f", &mesh]).expect(0);
    for context in ["real-1", "real-2"] {
        let svc = real.json(
            context,
            &["get", "service", "-n", NS, "istio-eastwestgateway"],
        );
        assert!(
            svc["status"]["loadBalancer"]["ingress"][0]["ip"].is_string(),
            "{context}: {svc:#}"
        );
        let label = real.json(context, &["get", "namespace", NS]);
        assert_eq!(
            label["metadata"]["labels"]["topology.istio.io/network"],
            if context == "real-1" {
                "network1"
            } else {
                "network2"
            }
        );
    }
    real.meshup(&["verify", "-f", &mesh, "--wait", "120s"])
        .expect(0);
    real.meshup(&["status", "-f", &mesh]).expect(0);
    let doctor = real.meshup(&["doctor", "-f", &mesh]);
    assert_eq!(doctor.code, Some(0), "{}", doctor.all());
}

/// A canary upgrade between two real istiod builds one minor version apart: start runs the new
/// revision's real istiod beside the old one (each in its own network namespace), promote and
/// finish leave only the new one, synced with its peers.
#[test]
fn a_canary_upgrade_between_two_real_istiod_builds() {
    let real = Real::up(2);
    let old = real.mesh_file("old.yaml", FROM, None, "");
    let new = real.mesh_file("new.yaml", TO, None, "");
    real.meshup(&["install", "-f", &old]).expect(0);
    real.meshup(&["verify", "-f", &old, "--wait", "120s"])
        .expect(0);

    real.meshup(&["upgrade", "start", "-f", &new]).expect(0);
    for context in ["real-1", "real-2"] {
        let ready_images = || -> BTreeSet<String> {
            let pods = real.json(context, &["get", "pods", "-n", NS, "-l", "app=istiod"]);
            pods["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| {
                    p["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .map(|p| {
                    p["spec"]["containers"][0]["image"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        // The old istiod's readiness probe (a real one, every few seconds) may miss once on a
        // loaded machine while the new one starts: both must be Ready within a probe period or
        // two, not at one instant.
        let mut ready = ready_images();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while ready.len() < 2 && std::time::Instant::now() < deadline {
            eprintln!("{context}: Ready istiods {ready:?}; waiting for both revisions");
            std::thread::sleep(std::time::Duration::from_secs(1));
            ready = ready_images();
        }
        assert_eq!(
            ready.len(),
            2,
            "{context}: both revisions' real istiods Ready: {ready:?}"
        );
        // Each revision's exec reaches its own istiod (its own network namespace).
        for (deployment, version) in [("istiod", FROM), ("istiod-1-31-0", TO)] {
            let said = real.kubectl(
                context,
                &[
                    "exec",
                    "-n",
                    NS,
                    &format!("deploy/{deployment}"),
                    "-c",
                    "discovery",
                    "--",
                    "pilot-discovery",
                    "request",
                    "GET",
                    "/version",
                ],
            );
            assert!(said.contains(version), "{context} {deployment}: {said}");
        }
    }
    real.meshup(&["verify", "-f", &new, "--wait", "120s"])
        .expect(0);
    real.meshup(&["upgrade", "promote", "-f", &new]).expect(0);
    real.meshup(&["upgrade", "finish", "-f", &new]).expect(0);
    for context in ["real-1", "real-2"] {
        real.until(
            &format!("{context}: only the new istiod runs"),
            Duration::from_secs(60),
            || {
                let pods = real.json(context, &["get", "pods", "-n", NS, "-l", "app=istiod"]);
                let images: BTreeSet<String> = pods["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        p["spec"]["containers"][0]["image"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    })
                    .collect();
                images.len() == 1 && images.iter().all(|i| i.ends_with(&format!(":{TO}")))
            },
        );
    }
    real.meshup(&["verify", "-f", &new, "--wait", "120s"])
        .expect(0);
    let status = real.meshup(&["status", "-f", &new]).expect(0);
    assert!(status.stdout.contains(TO), "{}", status.all());
}

/// On real API servers (their managedFields are the truth): a fresh install has no diff; a
/// `kubectl set env` on istiod is drift named with its manager, what the real
/// kube-controller-manager and the real istiod wrote is not; `install --repair` removes it,
/// and the diff is clean again.
#[test]
fn diff_sees_a_hand_edit_on_real_clusters_and_repair_removes_it() {
    let real = Real::up(2);
    let mesh = real.mesh_file("mesh.yaml", TO, None, "");
    real.meshup(&["install", "-f", &mesh]).expect(0);
    real.until(
        "every real istiod synced with every peer",
        Duration::from_secs(120),
        || all_synced(&real, &mesh),
    );
    let clean = real.meshup(&["diff", "-f", &mesh]);
    assert_eq!(clean.code, Some(0), "{}", clean.all());
    real.kubectl(
        "real-1",
        &[
            "set",
            "env",
            "deployment/istiod",
            "--namespace",
            NS,
            "--containers",
            "discovery",
            "MESHUP_HAND_EDIT=yes",
        ],
    );
    let drifted = real.meshup(&["diff", "-f", &mesh]);
    assert_eq!(drifted.code, Some(3), "{}", drifted.all());
    assert!(
        drifted
            .stdout
            .contains("cluster1: istiod: 1 object drifted")
            && drifted.stdout.contains("cluster2: no changes")
            && drifted.stdout.contains("env[name=MESHUP_HAND_EDIT]")
            && drifted.stdout.contains("kubectl-set"),
        "{}",
        drifted.all()
    );
    real.meshup(&["install", "--repair", "-f", &mesh]).expect(0);
    let deployment = real.json("real-1", &["get", "deployment", "-n", NS, "istiod"]);
    assert!(
        !deployment.to_string().contains("MESHUP_HAND_EDIT"),
        "{deployment}"
    );
    let again = real.meshup(&["diff", "-f", &mesh]);
    assert_eq!(again.code, Some(0), "{}", again.all());
}
