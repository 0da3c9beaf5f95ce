//! Drives the real helm and kubectl (from `scripts/fetch-tools.sh`) against in-memory test
//! clusters with exactly the commands meshup runs, and checks what the clusters stored.
//!
//! `.tools/helm4` holds helm 4.1 with kubectl 1.35, `.tools/helm3` helm 3.19 with kubectl 1.34.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use meshup_testcluster::{Options, TestCluster, write_kubeconfig};
use serde_json::{Value, json};

const NS: &str = "istio-system";
const CRDS: [&str; 4] = [
    "virtualservices.networking.istio.io",
    "destinationrules.networking.istio.io",
    "gateways.networking.istio.io",
    "peerauthentications.security.istio.io",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// helm and kubectl of one tool set, with a private HOME so no user config leaks in.
struct Tools {
    helm: PathBuf,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    home: PathBuf,
}

fn tools(set: &str, kubeconfig: &Path, home: &Path) -> Tools {
    let dir = repo_root().join(".tools").join(set);
    for bin in ["helm", "kubectl"] {
        assert!(
            dir.join(bin).is_file(),
            "`{}` is missing: run `scripts/fetch-tools.sh` first (it installs the real helm and kubectl these tests drive)",
            dir.join(bin).display()
        );
    }
    Tools {
        helm: dir.join("helm"),
        kubectl: dir.join("kubectl"),
        kubeconfig: kubeconfig.to_path_buf(),
        home: home.to_path_buf(),
    }
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Tools {
    fn run(&self, bin: &Path, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .current_dir(repo_root())
            .env("HOME", &self.home)
            .env("XDG_CACHE_HOME", self.home.join(".cache"))
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("XDG_DATA_HOME", self.home.join(".local/share"))
            .env_remove("KUBECONFIG")
            .env_remove("HELM_KUBECONTEXT")
            .env_remove("HELM_NAMESPACE")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn kubectl_out(&self, ctx: &str, args: &[&str], stdin: Option<&str>) -> Out {
        let kc = self.kubeconfig.to_str().unwrap();
        let mut full = vec!["--kubeconfig", kc, "--context", ctx];
        full.extend_from_slice(args);
        self.run(&self.kubectl, &full, stdin)
    }

    fn kubectl(&self, ctx: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_out(ctx, args, stdin);
        assert!(
            out.ok,
            "kubectl {args:?} on {ctx} failed:\n{}{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    fn kubectl_json(&self, ctx: &str, args: &[&str]) -> Value {
        let out = self.kubectl(ctx, args, None);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}: {out}"))
    }

    fn helm(&self, ctx: &str, args: &[&str]) -> String {
        let kc = self.kubeconfig.to_str().unwrap();
        let mut full = args.to_vec();
        full.extend_from_slice(&["--kubeconfig", kc, "--kube-context", ctx]);
        let out = self.run(&self.helm, &full, None);
        assert!(
            out.ok,
            "helm {args:?} on {ctx} failed:\n{}{}",
            out.stdout, out.stderr
        );
        out.stdout
    }
}

fn decode(v: &Value) -> String {
    String::from_utf8(STANDARD.decode(v.as_str().expect("base64 string")).unwrap()).unwrap()
}

fn names(list: &Value) -> Vec<String> {
    let mut n: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

/// What one cluster's run hands back for cross-cluster checks.
struct Seen {
    ca_crt: String,
    token: String,
}

/// The commands meshup runs against one cluster, in meshup's order, with checks of the stored
/// objects after each.
fn drive(t: &Tools, c: &TestCluster, helm_major: &str, dir: &Path) -> Seen {
    let ctx = c.name();
    let ns_path = format!("/api/v1/namespaces/{NS}");

    // Preflight.
    let version = t.kubectl_json(ctx, &["version", "-o", "json"]);
    assert_eq!(
        version["serverVersion"]["gitVersion"],
        meshup_testcluster::GIT_VERSION
    );
    let missing = t.kubectl(
        ctx,
        &[
            "get",
            "configmap",
            "istio",
            "-n",
            NS,
            "-o",
            "json",
            "--ignore-not-found",
        ],
        None,
    );
    assert_eq!(
        missing, "",
        "a missing object prints nothing with --ignore-not-found"
    );

    // Namespace and secrets from stdin, twice.
    let docs = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n  labels:\n    topology.istio.io/network: net-{ctx}\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: cacerts\n  namespace: {NS}\ndata:\n  ca-cert.pem: {}\n  root-cert.pem: {}\n\
         ---\napiVersion: v1\nkind: Secret\ntype: Opaque\nmetadata:\n  name: istio-remote-secret-other\n  namespace: {NS}\n  labels:\n    istio/multiCluster: \"true\"\n  annotations:\n    networking.istio.io/cluster: other\ndata:\n  other: {}\n",
        STANDARD.encode(format!("ca of {ctx}")),
        STANDARD.encode("root"),
        STANDARD.encode("apiVersion: v1\nkind: Config\n"),
    );
    let first = t.kubectl(ctx, &["apply", "-f", "-"], Some(&docs));
    assert!(first.contains("secret/cacerts created"), "{first}");
    let second = t.kubectl(ctx, &["apply", "-f", "-"], Some(&docs));
    assert_eq!(
        second.matches("unchanged").count(),
        3,
        "a second apply changes nothing: {second}"
    );
    let ns = c.get(&ns_path).expect("namespace stored");
    assert_eq!(
        ns["metadata"]["labels"]["topology.istio.io/network"],
        format!("net-{ctx}")
    );
    let cacerts = c
        .get(&format!("{ns_path}/secrets/cacerts"))
        .expect("cacerts stored");
    assert_eq!(
        decode(&cacerts["data"]["ca-cert.pem"]),
        format!("ca of {ctx}")
    );
    assert_eq!(cacerts["type"], "Opaque");

    // istio-base, then istiod twice (install, then upgrade).
    let values = dir.join(format!("{ctx}-values.yaml"));
    std::fs::write(
        &values,
        format!("global:\n  meshID: mesh1\n  multiCluster:\n    clusterName: {ctx}\n  network: net-{ctx}\n"),
    )
    .unwrap();
    let values = values.to_str().unwrap();
    let install = |release: &str, chart: &str| {
        t.helm(
            ctx,
            &[
                "upgrade",
                "--install",
                release,
                chart,
                "--namespace",
                NS,
                "--create-namespace",
                "-f",
                values,
                "--wait",
                "--timeout",
                "2m0s",
            ],
        )
    };
    install("istio-base", "tests/fixtures/charts/base");
    for crd in CRDS {
        let stored = c
            .get(&format!(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"
            ))
            .unwrap_or_else(|| panic!("CRD {crd} stored"));
        assert_eq!(
            stored["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        assert_eq!(stored["status"]["conditions"][1]["type"], "Established");
    }
    assert!(
        c.get(&format!(
            "{ns_path}/serviceaccounts/istio-reader-service-account"
        ))
        .is_some()
    );
    assert!(
        c.get("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/istiod-default-validator")
            .is_some()
    );
    install("istiod", "tests/fixtures/charts/istiod");
    install("istiod", "tests/fixtures/charts/istiod");
    let dep = c
        .get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/istiod"))
        .expect("istiod deployment");
    let env = &dep["spec"]["template"]["spec"]["containers"][0]["env"];
    let env_value = |name: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(env_value("CLUSTER_ID"), Some(json!(ctx)));
    assert_eq!(env_value("ISTIO_META_MESH_ID"), Some(json!("mesh1")));
    assert_eq!(
        env_value("ISTIO_META_NETWORK"),
        Some(json!(format!("net-{ctx}")))
    );
    assert_eq!(dep["status"]["readyReplicas"], 1);
    let mesh = c
        .get(&format!("{ns_path}/configmaps/istio"))
        .expect("istio configmap");
    assert!(
        mesh["data"]["mesh"]
            .as_str()
            .unwrap()
            .contains("meshId: mesh1"),
        "{mesh}"
    );
    assert!(c.get(&format!("{ns_path}/services/istiod")).unwrap()["spec"]["clusterIP"].is_string());
    assert!(
        c.get(&format!(
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/istio-reader-clusterrole-{NS}"
        ))
        .is_some()
    );
    assert!(
        c.get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector")
            .is_some()
    );
    let release = |v: u32| {
        c.get(&format!("{ns_path}/secrets/sh.helm.release.v1.istiod.v{v}"))
            .unwrap()
    };
    assert_eq!(release(1)["metadata"]["labels"]["status"], "superseded");
    assert_eq!(release(2)["metadata"]["labels"]["status"], "deployed");

    // Release inspection.
    // helm 4 lists releases in every status by default and has no `--all` any more.
    let mut list_args = vec!["list", "--namespace", NS, "-o", "json"];
    if helm_major == "3" {
        list_args.push("--all");
    }
    let list: Value = serde_json::from_str(&t.helm(ctx, &list_args)).unwrap();
    let releases: Vec<(Value, Value, Value)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].clone(),
                r["status"].clone(),
                r["revision"].clone(),
            )
        })
        .collect();
    assert_eq!(
        releases,
        vec![
            (json!("istio-base"), json!("deployed"), json!("1")),
            (json!("istiod"), json!("deployed"), json!("2")),
        ]
    );
    let got: Value = serde_json::from_str(&t.helm(
        ctx,
        &["get", "values", "istiod", "--namespace", NS, "-o", "json"],
    ))
    .unwrap();
    assert_eq!(
        got,
        json!({"global": {"meshID": "mesh1", "multiCluster": {"clusterName": ctx}, "network": format!("net-{ctx}")}})
    );
    let helm_version = t.helm(ctx, &["version", "--template", "{{.Version}}"]);
    assert!(
        helm_version.starts_with(&format!("v{helm_major}.")),
        "{helm_version:?}"
    );

    // Reader service account and its token.
    let sa = t.kubectl(
        ctx,
        &[
            "get",
            "serviceaccount",
            "istio-reader-service-account",
            "-n",
            NS,
            "-o",
            "json",
            "--ignore-not-found",
        ],
        None,
    );
    assert_eq!(
        serde_json::from_str::<Value>(&sa).unwrap()["metadata"]["name"],
        "istio-reader-service-account"
    );
    t.kubectl(
        ctx,
        &["create", "serviceaccount", "meshup-extra", "-n", NS],
        None,
    );
    assert!(
        c.get(&format!("{ns_path}/serviceaccounts/meshup-extra"))
            .is_some()
    );
    let token_secret = format!(
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/service-account-token\nmetadata:\n  name: istio-reader-service-account-istio-remote-secret-token\n  namespace: {NS}\n  annotations:\n    kubernetes.io/service-account.name: istio-reader-service-account\n"
    );
    t.kubectl(ctx, &["apply", "-f", "-"], Some(&token_secret));
    let deadline = Instant::now() + Duration::from_secs(5);
    let secret = loop {
        let s = t.kubectl_json(
            ctx,
            &[
                "get",
                "secret",
                "istio-reader-service-account-istio-remote-secret-token",
                "-n",
                NS,
                "-o",
                "json",
            ],
        );
        if s["data"]["token"].is_string() && s["data"]["ca.crt"].is_string() {
            break s;
        }
        assert!(Instant::now() < deadline, "token secret never filled: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let ca_crt = decode(&secret["data"]["ca.crt"]);
    assert!(
        ca_crt.starts_with("-----BEGIN CERTIFICATE-----"),
        "{ca_crt}"
    );
    assert_eq!(decode(&secret["data"]["namespace"]), NS);

    // Remote secrets: list by label, delete.
    let remote = t.kubectl_json(
        ctx,
        &[
            "get",
            "secrets",
            "-n",
            NS,
            "-l",
            "istio/multiCluster=true",
            "-o",
            "json",
        ],
    );
    assert_eq!(names(&remote), vec!["istio-remote-secret-other"]);
    t.kubectl(
        ctx,
        &[
            "delete",
            "secret",
            "istio-remote-secret-other",
            "istio-remote-secret-none",
            "-n",
            NS,
            "--ignore-not-found",
        ],
        None,
    );
    assert!(
        c.get(&format!("{ns_path}/secrets/istio-remote-secret-other"))
            .is_none()
    );

    // Restart istiod.
    let before = t.kubectl_json(
        ctx,
        &["get", "deployment", "istiod", "-n", NS, "-o", "json"],
    );
    t.kubectl(
        ctx,
        &["rollout", "restart", "deployment/istiod", "-n", NS],
        None,
    );
    let status = t.kubectl(
        ctx,
        &[
            "rollout",
            "status",
            "deployment/istiod",
            "-n",
            NS,
            "--timeout=60s",
        ],
        None,
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    let after = c
        .get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/istiod"))
        .unwrap();
    assert_eq!(
        after["metadata"]["generation"].as_i64().unwrap(),
        before["metadata"]["generation"].as_i64().unwrap() + 1
    );
    assert!(
        after["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );
    assert_eq!(
        after["status"]["observedGeneration"],
        after["metadata"]["generation"]
    );

    // Teardown.
    t.helm(
        ctx,
        &[
            "uninstall",
            "istiod",
            "--namespace",
            NS,
            "--wait",
            "--timeout",
            "2m0s",
        ],
    );
    assert!(
        c.get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/istiod"))
            .is_none()
    );
    assert!(
        c.list(&format!("/apis/apps/v1/namespaces/{NS}/replicasets"))
            .is_empty()
    );
    t.helm(
        ctx,
        &[
            "uninstall",
            "istio-base",
            "--namespace",
            NS,
            "--wait",
            "--timeout",
            "2m0s",
        ],
    );
    let crds = t.kubectl_json(ctx, &["get", "crd", "-o", "json"]);
    let mut want: Vec<String> = CRDS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(
        names(&crds),
        want,
        "helm uninstall keeps CRDs annotated keep"
    );
    let mut delete_crds = vec!["delete", "crd"];
    delete_crds.extend(CRDS);
    delete_crds.extend(["nothere.networking.istio.io", "--ignore-not-found"]);
    t.kubectl(ctx, &delete_crds, None);
    assert!(
        c.list("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
            .is_empty()
    );
    t.kubectl(
        ctx,
        &[
            "delete",
            "namespace",
            NS,
            "--ignore-not-found",
            "--wait",
            "--timeout=60s",
        ],
        None,
    );
    assert!(c.get(&ns_path).is_none());
    assert!(
        c.list(&format!("{ns_path}/secrets")).is_empty(),
        "namespace contents go with it"
    );
    t.kubectl(
        ctx,
        &[
            "delete",
            "namespace",
            NS,
            "--ignore-not-found",
            "--wait",
            "--timeout=60s",
        ],
        None,
    );

    Seen {
        ca_crt,
        token: decode(&secret["data"]["token"]),
    }
}

/// Two clusters, driven in parallel with one tool set.
fn full_run(set: &str, helm_major: &str) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let t = tools(set, &kubeconfig, &home);
    let c1 = TestCluster::start("cluster1", Options::default());
    let c2 = TestCluster::start("cluster2", Options::default());
    write_kubeconfig(&kubeconfig, &[&c1, &c2]).unwrap();

    let started = Instant::now();
    let (s1, s2) = std::thread::scope(|s| {
        let a = s.spawn(|| drive(&t, &c1, helm_major, dir.path()));
        let b = s.spawn(|| drive(&t, &c2, helm_major, dir.path()));
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!(
        "{set}: both clusters in {:.1?} ({} / {} requests, {} / {} mutations)",
        started.elapsed(),
        c1.requests(),
        c2.requests(),
        c1.mutations(),
        c2.mutations()
    );
    assert_ne!(s1.ca_crt, s2.ca_crt, "every cluster has its own CA");
    assert_ne!(s1.token, s2.token);
    assert!(c1.mutations() > 20 && c1.requests() > c1.mutations());
}

#[test]
fn helm4_and_kubectl_1_35_install_upgrade_link_and_remove() {
    full_run("helm4", "4");
}

#[test]
fn helm3_and_kubectl_1_34_install_upgrade_link_and_remove() {
    full_run("helm3", "3");
}

#[test]
fn a_stopped_cluster_refuses_connections() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let t = tools("helm4", &kubeconfig, dir.path());
    let c = TestCluster::start("gone", Options::default());
    write_kubeconfig(&kubeconfig, &[&c]).unwrap();
    assert!(t.kubectl_out("gone", &["version", "-o", "json"], None).ok);

    c.stop();
    let started = Instant::now();
    let out = t.kubectl_out(
        "gone",
        &["version", "-o", "json", "--request-timeout=10s"],
        None,
    );
    assert!(
        !out.ok,
        "kubectl version succeeded against a stopped cluster"
    );
    assert!(out.stderr.contains("refused"), "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        c.get("/api/v1/namespaces/default").is_some(),
        "objects stay readable after stop"
    );
}

#[test]
fn latency_is_added_to_every_request() {
    let c = TestCluster::start(
        "slow",
        Options {
            latency: Duration::from_millis(200),
            ..Options::default()
        },
    );
    let started = Instant::now();
    let reply = c.request("GET", "/healthz", None, None).unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!((c.requests(), c.mutations()), (1, 0));
}
