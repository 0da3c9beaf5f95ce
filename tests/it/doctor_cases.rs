//! `meshup doctor` names every case of issue #17 (its cluster, the cause, a fix), from the mesh
//! file and from contexts alone. The meshes are made by plain helm and kubectl, as Istio's
//! "Install Multi-Primary" pages make them (multi-network ones by `meshup install`); each test
//! installs once, checks it is healthy where that is the point, then seeds several cases in
//! different clusters and runs doctor once per mode.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::common::*;
use super::doctor::doctor;

const CONTEXTS: [&str; 6] = [
    "--context",
    "cluster1",
    "--context",
    "cluster2",
    "--context",
    "cluster3",
];

/// Runs one of the env's real tools (`helm`, `kubectl`) with its kubeconfig; `stdin` is fed.
fn tool(env: &Env, name: &str, args: &[&str], stdin: Option<&str>) -> Run {
    use std::io::Write;
    let mut command = Command::new(env.tools.join(name));
    command
        .args(args)
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .env("HOME", env.path("home"))
        .env_remove("KUBECONFIG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    Run::from(child.wait_with_output().unwrap())
}

#[track_caller]
fn kubectl(env: &Env, args: &[&str]) -> Run {
    let run = tool(env, "kubectl", args, None);
    assert_eq!(run.code, Some(0), "kubectl {args:?}: {}", run.all());
    run
}

#[track_caller]
fn kubectl_in(env: &Env, args: &[&str], stdin: &str) -> Run {
    let run = tool(env, "kubectl", args, Some(stdin));
    assert_eq!(run.code, Some(0), "kubectl {args:?}: {}", run.all());
    run
}

#[track_caller]
fn helm(env: &Env, args: &[&str]) -> Run {
    let run = tool(env, "helm", args, None);
    assert_eq!(run.code, Some(0), "helm {args:?}: {}", run.all());
    run
}

/// `meshup remote-secret --context SOURCE --name NAME` (our `istioctl create-remote-secret`).
fn remote_secret(env: &Env, source: &str, name: &str) -> String {
    env.meshup(&["remote-secret", "--context", source, "--name", name])
        .expect(0)
        .stdout
}

/// `meshup remote-secret --context SOURCE --name NAME | kubectl apply --context WATCHER -f -`.
fn link(env: &Env, source: &str, name: &str, watcher: &str) {
    let secret = remote_secret(env, source, name);
    kubectl_in(env, &["apply", "--context", watcher, "-f", "-"], &secret);
}

/// How one cluster of a hand-made mesh is installed.
struct HandMade {
    /// The directory of the `base` and `istiod` charts.
    charts: PathBuf,
    /// `global.multiCluster.clusterName`; `None` leaves it at the chart's default.
    cluster_name: Option<String>,
    /// Where its `ca-cert.pem` etc. are (`None`: no `cacerts`).
    certs: Option<PathBuf>,
    /// More `--set`s for istiod, after the others.
    sets: Vec<String>,
}

impl HandMade {
    /// As the page has it: Istio's charts, the cluster's name, the certs `meshup certs`
    /// wrote into the env's `certs`.
    fn plain(env: &Env, cluster: &str) -> HandMade {
        HandMade {
            charts: fixture_charts(),
            cluster_name: Some(cluster.to_string()),
            certs: Some(env.path("certs").join(cluster)),
            sets: Vec::new(),
        }
    }
}

/// One cluster as Istio's "Install Multi-Primary" page does it: the namespace with its network
/// label, `cacerts` from the certs `meshup certs` wrote, istio-base, istiod.
fn install_by_hand(env: &Env, cluster: &str, how: &HandMade) {
    kubectl(env, &["create", "namespace", NS, "--context", cluster]);
    kubectl(
        env,
        &[
            "label",
            "namespace",
            NS,
            "topology.istio.io/network=network1",
            "--context",
            cluster,
        ],
    );
    if let Some(certs) = &how.certs {
        create_cacerts(env, cluster, certs, &CACERTS_FILES);
    }
    let base = how.charts.join("base");
    helm(
        env,
        &[
            "install",
            "istio-base",
            base.to_str().unwrap(),
            "-n",
            NS,
            "--kube-context",
            cluster,
        ],
    );
    let istiod = how.charts.join("istiod");
    let mut args = vec![
        "install".to_string(),
        "istiod".into(),
        istiod.to_str().unwrap().into(),
        "-n".into(),
        NS.into(),
        "--kube-context".into(),
        cluster.into(),
        "--set".into(),
        "global.meshID=mesh1".into(),
        "--set".into(),
        "global.network=network1".into(),
    ];
    if let Some(name) = &how.cluster_name {
        args.push("--set".into());
        args.push(format!("global.multiCluster.clusterName={name}"));
    }
    for set in &how.sets {
        args.push("--set".into());
        args.push(set.clone());
    }
    helm(env, &args.iter().map(String::as_str).collect::<Vec<_>>());
}

const CACERTS_FILES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "root-cert.pem",
    "cert-chain.pem",
];

/// `kubectl create secret generic cacerts -n istio-system --from-file=...` of `files` in `dir`.
fn create_cacerts(env: &Env, cluster: &str, dir: &Path, files: &[&str]) {
    let mut args: Vec<String> = [
        "create",
        "secret",
        "generic",
        "cacerts",
        "-n",
        NS,
        "--context",
        cluster,
    ]
    .map(String::from)
    .to_vec();
    for f in files {
        args.push(format!("--from-file={}", dir.join(f).display()));
    }
    kubectl(env, &args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// A three-cluster multi-primary mesh made by hand; `how(cluster)` says how to install each.
/// Returns the mesh file that describes it (for `doctor -f`).
fn hand_made_mesh(env: &Env, how: impl Fn(&str) -> HandMade + Sync) -> String {
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap().to_string();
    env.meshup(&["certs", "-f", &mesh]).expect(0);
    std::thread::scope(|s| {
        for c in &env.clusters {
            let (name, how) = (c.name(), &how);
            s.spawn(move || install_by_hand(env, name, &how(name)));
        }
    });
    let names: Vec<&str> = env.clusters.iter().map(|c| c.name()).collect();
    let names = &names;
    std::thread::scope(|s| {
        for watcher in names {
            s.spawn(move || {
                for source in names.iter().filter(|s| *s != watcher) {
                    link(env, source, source, watcher);
                }
            });
        }
    });
    mesh
}

/// Istio's own charts, as the page installs them.
fn fixture_charts() -> std::path::PathBuf {
    istio_charts(ISTIO_FROM)
}

/// Takes `configmaps` out of `cluster`'s reader ClusterRole (`kubectl replace`), as Istio's
/// charts before 1.29 render it.
fn reader_role_without_configmaps(env: &Env, cluster: &str) {
    let role = format!("istio-reader-clusterrole-{NS}");
    let mut object: Value = serde_json::from_str(
        &kubectl(
            env,
            &[
                "get",
                "clusterrole",
                &role,
                "-o",
                "json",
                "--context",
                cluster,
            ],
        )
        .stdout,
    )
    .unwrap();
    let rules = object["rules"].as_array_mut().unwrap();
    let mut removed = 0;
    for rule in rules.iter_mut() {
        if let Some(resources) = rule["resources"].as_array_mut() {
            let before = resources.len();
            resources.retain(|r| r != "configmaps");
            removed += before - resources.len();
        }
    }
    rules.retain(|r| r["resources"].as_array().is_none_or(|r| !r.is_empty()));
    assert!(removed > 0, "{cluster}: {role} granted no configmaps");
    kubectl_in(
        env,
        &["replace", "--context", cluster, "-f", "-"],
        &object.to_string(),
    );
}

/// Waits (up to a minute) until `meshup verify` shows `watcher`'s istiod seeing `peer` in
/// `state` (the worst of its pods).
fn wait_view(env: &Env, mesh: &str, watcher: &str, peer: &str, state: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let run = env.meshup(&["verify", "-f", mesh, "--output", "json"]);
        let report: Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("verify's JSON: {e}: {}", run.all()));
        let seen = report["sync"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["cluster"] == watcher)
            .map(|r| r["peers"][peer]["state"].clone());
        if seen.as_ref().is_some_and(|s| s == state) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{watcher}'s istiod never saw {peer} {state}: {report:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `meshup verify` sees every istiod synced with every peer.
fn synced(env: &Env, mesh: &str) {
    env.meshup(&["verify", "--wait", "60s", "-f", mesh])
        .expect(0);
}

/// Both reports: from the mesh file and from the contexts.
fn both(env: &Env, mesh: &str) -> [(String, Option<i32>, Value); 2] {
    let (code, file) = doctor(env, &["-f", mesh]);
    let (code2, contexts) = doctor(env, &CONTEXTS);
    [
        ("-f".to_string(), code, file),
        ("--context".to_string(), code2, contexts),
    ]
}

fn why(finding: &Value) -> &str {
    finding["why"].as_str().unwrap_or_default()
}

fn findings(report: &Value) -> &Vec<Value> {
    report["findings"].as_array().unwrap()
}

/// The finding in `cluster` (`None`: the mesh as a whole) whose `why` holds every one of
/// `parts`; it has a fix.
#[track_caller]
fn named<'a>(mode: &str, report: &'a Value, cluster: Option<&str>, parts: &[&str]) -> &'a Value {
    let found = findings(report).iter().find(|f| {
        f["cluster"].as_str() == cluster
            && parts
                .iter()
                .all(|p| f["why"].as_str().unwrap_or_default().contains(p))
    });
    let Some(found) = found else {
        panic!("{mode}: no finding in {cluster:?} with {parts:?}: {report:#}");
    };
    assert!(
        found["fix"].as_str().is_some_and(|f| !f.is_empty()),
        "{mode}: no fix: {found:#}"
    );
    found
}

#[test]
fn a_healthy_hand_made_mesh_gives_no_finding() {
    let env = Env::new("helm4", 3);
    let mesh = hand_made_mesh(&env, |c| HandMade::plain(&env, c));
    synced(&env, &mesh);
    for (mode, code, report) in both(&env, &mesh) {
        assert_eq!(findings(&report).len(), 0, "{mode}: {report:#}");
        assert_eq!(code, Some(0), "{mode}: {report:#}");
    }
}

/// A remote secret's manifest with its name changed and its kubeconfig's CA replaced by `ca`
/// (PEM), as a secret left from an earlier install of the cluster would hold.
fn with_name_and_ca(manifest: &str, name: &str, ca: Option<&str>) -> String {
    let mut secret: serde_yaml::Value = serde_yaml::from_str(manifest).unwrap();
    secret["metadata"]["name"] = name.into();
    if let Some(ca) = ca {
        let data = secret["data"].as_mapping_mut().unwrap();
        for (_, value) in data.iter_mut() {
            let mut config: serde_yaml::Value =
                serde_yaml::from_str(&decode(&serde_json::json!(value.as_str().unwrap()))).unwrap();
            config["clusters"][0]["cluster"]["certificate-authority-data"] = encode(ca).into();
            *value = encode(&serde_yaml::to_string(&config).unwrap()).into();
        }
    }
    serde_yaml::to_string(&secret).unwrap()
}

/// Cases 1–4 and 12 on a hand-made mesh, one watcher each:
/// - cluster1: its secret for cluster3 sits in `default` (1); the one for cluster2 points at
///   a loopback address nothing listens on (2);
/// - cluster2: its secret for cluster1 lost `istio/multiCluster` (1); a second, stale secret
///   for cluster3 holds cluster1's CA (4: two secrets for one id; 3: a CA not the issuer's);
/// - cluster3: its secret for cluster1 is keyed `cluster-one` (4), it holds its own remote
///   secret (4), and the token of its secret for cluster2 was revoked there (3);
/// - istiod's own view names the peers it lacks, with the cause (12).
#[test]
fn remote_secret_mistakes_are_named_with_their_watcher() {
    let env = Env::new("helm4", 3);
    let mesh = hand_made_mesh(&env, |c| HandMade::plain(&env, c));
    synced(&env, &mesh);

    let delete = |cluster: &str, name: &str| {
        kubectl(
            &env,
            &["delete", "secret", name, "-n", NS, "--context", cluster],
        );
    };
    // cluster1: the secret for cluster3 applied to `default`; cluster2's through loopback.
    let secret = remote_secret(&env, "cluster3", "cluster3").replace(NS, "default");
    kubectl_in(
        &env,
        &["apply", "--context", "cluster1", "-f", "-"],
        &secret,
    );
    delete("cluster1", "istio-remote-secret-cluster3");
    let secret = env
        .meshup(&[
            "remote-secret",
            "--context",
            "cluster2",
            "--name",
            "cluster2",
            "--server",
            "https://127.0.0.1:1",
        ])
        .expect(0)
        .stdout;
    kubectl_in(
        &env,
        &["apply", "--context", "cluster1", "-f", "-"],
        &secret,
    );
    // cluster2: unlabelled; a stale second secret for cluster3 with another CA.
    kubectl(
        &env,
        &[
            "label",
            "secret",
            "istio-remote-secret-cluster1",
            "-n",
            NS,
            "istio/multiCluster-",
            "--context",
            "cluster2",
        ],
    );
    let stale = with_name_and_ca(
        &remote_secret(&env, "cluster3", "cluster3"),
        "cluster3-old",
        Some(env.cluster("cluster1").ca_pem()),
    );
    kubectl_in(&env, &["apply", "--context", "cluster2", "-f", "-"], &stale);
    // cluster3: keyed by another name; its own secret; cluster2's reader token revoked.
    delete("cluster3", "istio-remote-secret-cluster1");
    link(&env, "cluster1", "cluster-one", "cluster3");
    link(&env, "cluster3", "cluster3", "cluster3");
    delete("cluster2", TOKEN_SECRET);
    // istiod gives up on the loopback server after its remote cluster timeout (2 s here).
    wait_view(&env, &mesh, "cluster1", "cluster2", "timeout");

    for (mode, code, report) in both(&env, &mesh) {
        let report = &report;
        assert_eq!(code, Some(1), "{mode}: {report:#}");
        let c1 = Some("cluster1");
        let c2 = Some("cluster2");
        let c3 = Some("cluster3");
        named(
            &mode,
            report,
            c1,
            &[
                "`default/istio-remote-secret-cluster3`",
                "outside istiod's namespace",
            ],
        );
        named(
            &mode,
            report,
            c1,
            &["points at https://127.0.0.1:1", "loopback"],
        );
        named(
            &mode,
            report,
            c2,
            &[
                "`istio-system/istio-remote-secret-cluster1`",
                "label is missing",
            ],
        );
        named(
            &mode,
            report,
            c2,
            &["2 secrets hold a kubeconfig for `cluster3`", "cluster3-old"],
        );
        named(
            &mode,
            report,
            c2,
            &["`cluster3-old`", "CA that is not `cluster3`'s cluster CA"],
        );
        named(
            &mode,
            report,
            c3,
            &[
                "names cluster `cluster-one`",
                "no cluster's istiod has CLUSTER_ID",
            ],
        );
        named(
            &mode,
            report,
            c3,
            &["names `cluster3`, this cluster's own CLUSTER_ID"],
        );
        named(
            &mode,
            report,
            c3,
            &[
                "`istio-remote-secret-cluster2`",
                "token that `cluster2`'s API server refuses",
            ],
        );
        // istiod's own view, with the cause.
        named(
            &mode,
            report,
            c1,
            &["cluster1 → cluster2: timeout", "cause:", "loopback"],
        );
        named(
            &mode,
            report,
            c1,
            &[
                "cluster1 → cluster3: missing",
                "cause:",
                "outside istiod's namespace",
            ],
        );
        named(
            &mode,
            report,
            c2,
            &["cluster2 → cluster1: missing", "cause:", "label is missing"],
        );
        // The loopback test servers work (istiod synced them): only the dead one is blamed,
        // and secrets istiod does not read are not taken for duplicates.
        let loopback: Vec<&Value> = findings(report)
            .iter()
            .filter(|f| f["what"] == "remote secrets" && why(f).contains("loopback"))
            .collect();
        assert_eq!(loopback.len(), 1, "{mode}: {loopback:#?}");
        assert!(
            !findings(report)
                .iter()
                .any(|f| why(f).contains("secrets hold a kubeconfig for `cluster1`")),
            "{mode}: {report:#}"
        );
    }
}

/// Cases 5 and 7 on a hand-made mesh (helm 3):
/// - cluster1: `clusterName` left at the chart's default (`Kubernetes`); its `cacerts`
///   replaced, without `ca-key.pem`, after istiod started;
/// - cluster2 and cluster3 both named `cluster2`; cluster2's `cacerts` from another root;
/// - cluster3: another mesh ID and trust domain, no `cacerts`.
#[test]
fn identity_and_trust_mistakes_are_named() {
    let env = Env::new("helm3", 3);
    // A second root, as a cluster set up from another certs directory would have.
    let other = env.path("other.yaml");
    let text = std::fs::read_to_string(env.mesh_file(&[], &[], ""))
        .unwrap()
        .replace(
            &env.path("certs").display().to_string(),
            &env.path("other-certs").display().to_string(),
        );
    std::fs::write(&other, text).unwrap();
    env.meshup(&["certs", "-f", other.to_str().unwrap()])
        .expect(0);
    let mesh = hand_made_mesh(&env, |c| {
        let mut how = HandMade::plain(&env, c);
        match c {
            "cluster1" => how.cluster_name = None,
            "cluster2" => how.certs = Some(env.path("other-certs").join(c)),
            _ => {
                how.cluster_name = Some("cluster2".into());
                how.certs = None;
                how.sets = vec![
                    "global.meshID=mesh3".into(),
                    "meshConfig.trustDomain=cluster3.local".into(),
                ];
            }
        }
        how
    });
    // Replaced a while after istiod started (times have seconds).
    std::thread::sleep(Duration::from_millis(1100));
    kubectl(
        &env,
        &[
            "delete",
            "secret",
            "cacerts",
            "-n",
            NS,
            "--context",
            "cluster1",
        ],
    );
    create_cacerts(
        &env,
        "cluster1",
        &env.path("certs").join("cluster1"),
        &["ca-cert.pem", "root-cert.pem", "cert-chain.pem"],
    );

    for (mode, code, report) in both(&env, &mesh) {
        let report = &report;
        assert_eq!(code, Some(1), "{mode}: {report:#}");
        let (c1, c2, c3) = (Some("cluster1"), Some("cluster2"), Some("cluster3"));
        named(&mode, report, c1, &["CLUSTER_ID is `Kubernetes`"]);
        named(
            &mode,
            report,
            None,
            &["cluster2, cluster3 run istiod with the same CLUSTER_ID `cluster2`"],
        );
        named(
            &mode,
            report,
            None,
            &["do not share one mesh ID", "cluster3: mesh3"],
        );
        named(&mode, report, c1, &["`cacerts` lacks ca-key.pem"]);
        named(
            &mode,
            report,
            c1,
            &["`cacerts` was created at", "after istiod started"],
        );
        named(&mode, report, None, &["`cacerts` have different roots"]);
        named(&mode, report, c3, &["no `cacerts` in `istio-system`"]);
        // cluster3 runs as `cluster2`: its secret for cluster2 is its own, so istiod skips it.
        named(
            &mode,
            report,
            c3,
            &[
                "cluster3 → cluster2: missing",
                "cause:",
                "this cluster's own CLUSTER_ID",
            ],
        );
        named(
            &mode,
            report,
            None,
            &["different trust domains", "cluster3: cluster3.local"],
        );
        for cluster in [c2, c3] {
            assert!(
                !findings(report)
                    .iter()
                    .any(|f| f["cluster"].as_str() == cluster
                        && (why(f).contains("after istiod started") || why(f).contains("lacks"))),
                "{mode}: {report:#}"
            );
        }
    }
}

/// `kubectl apply` of a ClusterIP Service (the test servers take no protobuf bodies, which
/// `kubectl create service` sends).
fn service(env: &Env, cluster: &str, namespace: &str, name: &str, port: u16) {
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: {port}, targetPort: 5000}}]\n"
    );
    kubectl_in(env, &["apply", "--context", cluster, "-f", "-"], &manifest);
}

/// An istiod Deployment as `istioctl install --revision 1-27` leaves it: no helm annotations.
const ISTIOCTL_ISTIOD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: istiod-1-27
  namespace: istio-system
  labels: {app: istiod, istio.io/rev: 1-27, operator.istio.io/component: Pilot}
spec:
  replicas: 1
  selector:
    matchLabels: {app: istiod, istio.io/rev: 1-27}
  template:
    metadata:
      labels: {app: istiod, istio.io/rev: 1-27, istio: istiod}
    spec:
      containers:
      - name: discovery
        image: docker.io/istio/pilot:1.27.3
        env:
        - {name: CLUSTER_ID, value: cluster2}
        - {name: ISTIO_META_NETWORK, value: network1}
"#;

/// The validating webhook that revision's removal left behind.
const STALE_VALIDATOR: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: istio-validator-1-27-istio-system
  labels: {app: istiod, istio.io/rev: 1-27}
webhooks:
- name: rev.validation.istio.io
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  clientConfig:
    service: {name: istiod-1-27, namespace: istio-system, path: /validate}
  rules:
  - operations: [CREATE, UPDATE]
    apiGroups: [networking.istio.io]
    apiVersions: ["*"]
    resources: ["*"]
"#;

/// Cases 8, 9, 11 and 12 on a hand-made mesh:
/// - cluster1 runs istiod of [`ISTIO_FROM`] (which lists its peers' mesh ConfigMap, as 1.29
///   and later do); cluster2 and cluster3 run a 1.28 istiod image, and their reader roles do
///   not grant configmaps, as 1.28's charts render them (8), so cluster1 does not sync them
///   (12, with that cause);
/// - services in namespaces labelled for injection differ in ports, or exist only in
///   cluster1, while DNS proxying is off (9); a lone service in an unlabelled namespace is no
///   finding;
/// - cluster2: an istiod installed by istioctl beside the helm one; cluster3: a validating
///   webhook calling a gone istiod Service, and istiod's release stuck `pending-upgrade` after
///   helm was killed in its `--wait` (11).
#[test]
fn reader_rbac_services_and_leftovers_are_named() {
    let env = Env::new("helm4", 3);
    let mesh = hand_made_mesh(&env, |c| {
        let mut how = HandMade::plain(&env, c);
        if c != "cluster1" {
            how.sets.push("global.tag=1.28.1".into());
        }
        how
    });
    for c in ["cluster1", "cluster2", "cluster3"] {
        for ns in ["sample", "plain"] {
            kubectl(&env, &["create", "namespace", ns, "--context", c]);
        }
        kubectl(
            &env,
            &[
                "label",
                "namespace",
                "sample",
                "istio-injection=enabled",
                "--context",
                c,
            ],
        );
        let port = if c == "cluster2" { 5001 } else { 5000 };
        service(&env, c, "sample", "helloworld", port);
    }
    service(&env, "cluster1", "sample", "only-here", 80);
    service(&env, "cluster2", "plain", "lonely", 80);
    kubectl_in(
        &env,
        &["apply", "--context", "cluster2", "-f", "-"],
        ISTIOCTL_ISTIOD,
    );
    kubectl_in(
        &env,
        &["apply", "--context", "cluster3", "-f", "-"],
        STALE_VALIDATOR,
    );
    // helm killed while it waits for istiod's new pods: the release stays pending-upgrade.
    let cluster3 = env.cluster("cluster3");
    cluster3.set_pod_ready_delay(Duration::from_secs(600));
    let istiod = fixture_charts().join("istiod");
    let mut upgrade = Command::new(env.tools.join("helm"));
    upgrade
        .args(["upgrade", "istiod", istiod.to_str().unwrap(), "-n", NS])
        .args(["--kube-context", "cluster3", "--reuse-values", "--wait"])
        .args(["--timeout", "5m", "--set", "pilot.env.PILOT_DEBUG=1"])
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .env("HOME", env.path("home"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut helm = upgrade.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while release_status(cluster3, "istiod").as_deref() != Some("pending-upgrade") {
        assert!(
            std::time::Instant::now() < deadline,
            "helm never got pending"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    helm.kill().unwrap();
    helm.wait().unwrap();
    assert_eq!(
        release_status(cluster3, "istiod").as_deref(),
        Some("pending-upgrade")
    );
    // The peers' reader roles as 1.28's charts render them: no configmaps.
    for peer in ["cluster2", "cluster3"] {
        reader_role_without_configmaps(&env, peer);
    }
    // cluster1's istiod synced its peers for good while their roles were whole: a new pod
    // (a restart, an upgrade) meets the roles as they are now.
    for args in [
        &["rollout", "restart", "deployment/istiod", "-n", NS][..],
        &[
            "rollout",
            "status",
            "deployment/istiod",
            "-n",
            NS,
            "--timeout",
            "60s",
        ][..],
    ] {
        let mut args = args.to_vec();
        args.extend(["--context", "cluster1"]);
        kubectl(&env, &args);
    }
    // cluster1's istiod gives up on its peers after the remote cluster timeout (2 s here).
    for peer in ["cluster2", "cluster3"] {
        wait_view(&env, &mesh, "cluster1", peer, "timeout");
    }

    for (mode, code, report) in both(&env, &mesh) {
        let report = &report;
        assert_eq!(code, Some(1), "{mode}: {report:#}");
        let (c1, c2, c3) = (Some("cluster1"), Some("cluster2"), Some("cluster3"));
        for peer in ["cluster2", "cluster3"] {
            named(
                &mode,
                report,
                Some(peer),
                &[
                    "does not let istiod list ConfigMaps",
                    &format!("`cluster1` ({ISTIO_FROM})"),
                ],
            );
            named(
                &mode,
                report,
                c1,
                &[&format!("cluster1 → {peer}: "), "cause:", "list ConfigMaps"],
            );
        }
        // Not blamed: the reader role that has configmaps, the (working) loopback test
        // servers, the istioctl istiod as a second cluster with cluster2's id.
        assert!(
            !findings(report).iter().any(|f| (f["cluster"] == "cluster1"
                && f["what"] == "reader RBAC")
                || why(f).contains("loopback")
                || why(f).contains("same CLUSTER_ID")),
            "{mode}: {report:#}"
        );
        named(
            &mode,
            report,
            None,
            &[
                "`sample/helloworld` differs across clusters",
                "cluster2: ClusterIP 5001/TCP",
            ],
        );
        named(
            &mode,
            report,
            None,
            &[
                "`sample/only-here` exists only in cluster1",
                "cluster2, cluster3",
            ],
        );
        assert!(
            !findings(report).iter().any(|f| why(f).contains("lonely")),
            "{mode}: {report:#}"
        );
        named(
            &mode,
            report,
            c2,
            &["istiod `istio-system/istiod-1-27` was not installed by helm"],
        );
        named(
            &mode,
            report,
            c3,
            &[
                "validating webhook `istio-validator-1-27-istio-system`",
                "`istio-system/istiod-1-27`, which does not exist",
            ],
        );
        named(
            &mode,
            report,
            c3,
            &["helm release `istiod` is stuck `pending-upgrade`"],
        );
    }
}

/// Cases 6 and 10 on a mesh `meshup install` made (multi-network, with a remote; Istio's
/// pages have no hand-made recipe for the remote's injector that the test servers follow):
/// - cluster1 (network1): its namespace lost the network label; its east-west gateway is
///   uninstalled;
/// - cluster2 (network2): namespace labelled `network9`; its gateway's address is a host name
///   (an AWS-style load balancer); `cross-network-gateway` deleted;
/// - cluster3, a remote of cluster2: `remotePilotAddress` changed by `helm upgrade`.
///
/// Then, from the mesh file only (from contexts the namespace annotation is what names the
/// remote's primary): cluster3's namespace no longer names cluster2 in
/// `topology.istio.io/controlPlaneClusters`, so cluster2's istiod stops patching cluster3's
/// injector, and one webhook's caBundle is emptied.
#[test]
fn network_and_remote_mistakes_are_named() {
    let env = Env::new("helm4", 3);
    env.cluster("cluster2").set_load_balancer_hostname(true);
    let text = format!(
        "meshID: mesh1\nistio:\n  version: {ISTIO_FROM}\n  charts: {}\ntrust:\n  dir: {}\nclusters:\n  - name: cluster1\n    context: cluster1\n    network: network1\n  - name: cluster2\n    context: cluster2\n    network: network2\n  - name: cluster3\n    context: cluster3\n    network: network2\n    role: remote\n    primary: cluster2\n",
        fixture_charts().display(),
        env.path("certs").display()
    );
    let mesh = env.path("mesh.yaml");
    std::fs::write(&mesh, text).unwrap();
    let mesh = mesh.to_str().unwrap().to_string();
    env.meshup(&["install", "-f", &mesh]).expect(0);
    let bundles = |cluster: &str| -> Vec<String> {
        let injector = env
            .cluster(cluster)
            .get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector")
            .expect("the remote's injector");
        injector["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                w["clientConfig"]["caBundle"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    // cluster2's istiod leads cluster3 once it synced it, and patches its injector.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while bundles("cluster3").iter().any(String::is_empty) {
        assert!(
            std::time::Instant::now() < deadline,
            "cluster2's istiod never patched cluster3's injector: {:?}",
            bundles("cluster3")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, report) = doctor(&env, &["-f", &mesh]);
    // Only the host name of the gateway (a warning).
    let unexpected: Vec<&Value> = findings(&report)
        .iter()
        .filter(|f| !why(f).contains("host name"))
        .collect();
    assert!(unexpected.is_empty(), "{code:?}: {report:#}");

    kubectl(
        &env,
        &[
            "label",
            "namespace",
            NS,
            "topology.istio.io/network-",
            "--context",
            "cluster1",
        ],
    );
    helm(
        &env,
        &[
            "uninstall",
            "istio-eastwestgateway",
            "-n",
            NS,
            "--kube-context",
            "cluster1",
        ],
    );
    kubectl(
        &env,
        &[
            "label",
            "namespace",
            NS,
            "topology.istio.io/network=network9",
            "--overwrite",
            "--context",
            "cluster2",
        ],
    );
    kubectl(
        &env,
        &[
            "delete",
            "gateways.networking.istio.io",
            "cross-network-gateway",
            "-n",
            NS,
            "--context",
            "cluster2",
        ],
    );
    let istiod = fixture_charts().join("istiod");
    helm(
        &env,
        &[
            "upgrade",
            "istiod",
            istiod.to_str().unwrap(),
            "-n",
            NS,
            "--kube-context",
            "cluster3",
            "--reuse-values",
            "--set",
            "global.remotePilotAddress=10.9.9.9",
        ],
    );

    for (mode, code, report) in both(&env, &mesh) {
        let report = &report;
        assert_eq!(code, Some(1), "{mode}: {report:#}");
        let (c1, c2, c3) = (Some("cluster1"), Some("cluster2"), Some("cluster3"));
        named(
            &mode,
            report,
            c1,
            &["has no `topology.istio.io/network` label", "`network1`"],
        );
        named(&mode, report, c1, &["no east-west gateway"]);
        named(
            &mode,
            report,
            c2,
            &[
                "labelled network `network9`",
                "`global.network` is `network2`",
            ],
        );
        named(
            &mode,
            report,
            c2,
            &["the gateway's address is the host name", ".elb."],
        );
        named(&mode, report, c2, &["no `cross-network-gateway` Gateway"]);
        named(
            &mode,
            report,
            c3,
            &["the injector calls 10.9.9.9", "primary `cluster2`"],
        );
        assert!(
            !findings(report)
                .iter()
                .any(|f| why(f).contains("empty caBundle")
                    || why(f).contains("controlPlaneClusters")),
            "{mode}: {report:#}"
        );
        // A remote has no istiod, network or gateway of its own to blame.
        assert!(
            !findings(report).iter().any(|f| f["cluster"] == "cluster3"
                && (f["what"] == "network" || f["what"] == "east-west gateway")),
            "{mode}: {report:#}"
        );
    }

    kubectl(
        &env,
        &[
            "annotate",
            "namespace",
            NS,
            "topology.istio.io/controlPlaneClusters-",
            "--context",
            "cluster3",
        ],
    );
    let injector = env
        .cluster("cluster3")
        .get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector")
        .expect("the remote's injector");
    let empty = injector["webhooks"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    kubectl(
        &env,
        &[
            "patch",
            "mutatingwebhookconfiguration",
            "istio-sidecar-injector",
            "--type",
            "json",
            "-p",
            r#"[{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": ""}]"#,
            "--context",
            "cluster3",
        ],
    );
    let (code, report) = doctor(&env, &["-f", &mesh]);
    assert_eq!(code, Some(1), "{report:#}");
    let c3 = Some("cluster3");
    named(
        "-f",
        &report,
        c3,
        &[
            "names no cluster in `topology.istio.io/controlPlaneClusters`",
            "not primary `cluster2`",
        ],
    );
    let unbundled = named(
        "-f",
        &report,
        c3,
        &[&format!("webhook `{empty}`"), "empty caBundle"],
    );
    assert!(
        unbundled["fix"]
            .as_str()
            .unwrap_or_default()
            .contains("controlPlaneClusters"),
        "{unbundled:#}"
    );
    // Nothing leads cluster3 now: the bundle stays empty (the patcher would have put it back
    // within its informer lag, long passed while doctor ran).
    assert!(
        bundles("cluster3")[0].is_empty(),
        "{:?}",
        bundles("cluster3")
    );
}
