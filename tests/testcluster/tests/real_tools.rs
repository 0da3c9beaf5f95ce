//! Drives the real helm and kubectl (from `scripts/fetch-tools.sh`) against in-memory test
//! clusters, and checks what the clusters stored. The install run uses the commands and flags
//! meshup uses (`kubectl apply --server-side --force-conflicts --field-manager meshup
//! --filename -` with the manifest on stdin, `helm upgrade --install ... --wait`, `helm list`
//! with its state flags); the other tests drive what meshup's later features rely on: tokens,
//! pods, the pod proxy, Jobs and their logs, leases and faults.
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
/// meshup's apply: server-side, its own field manager, the manifest on stdin.
const APPLY: [&str; 6] = [
    "apply",
    "--server-side",
    "--force-conflicts",
    "--field-manager",
    "meshup",
    "--filename",
];
/// The CRDs Istio's base chart (1.30) installs, each annotated `helm.sh/resource-policy: keep`.
const CRDS: [&str; 15] = [
    "authorizationpolicies.security.istio.io",
    "destinationrules.networking.istio.io",
    "envoyfilters.networking.istio.io",
    "gateways.networking.istio.io",
    "peerauthentications.security.istio.io",
    "proxyconfigs.networking.istio.io",
    "requestauthentications.security.istio.io",
    "serviceentries.networking.istio.io",
    "sidecars.networking.istio.io",
    "telemetries.telemetry.istio.io",
    "trafficextensions.extensions.istio.io",
    "virtualservices.networking.istio.io",
    "wasmplugins.extensions.istio.io",
    "workloadentries.networking.istio.io",
    "workloadgroups.networking.istio.io",
];

/// Istio's chart `name` of [`meshup_testcluster::ISTIO_FROM`], as a path argument.
fn istio_chart(name: &str) -> String {
    meshup_testcluster::istio_charts(meshup_testcluster::ISTIO_FROM)
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

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
            // Short-lived Go processes: no garbage collection below 1 GiB (a tenth less CPU
            // for the suite; behaviour unchanged).
            .env("GOGC", "off")
            .env("GOMEMLIMIT", "1GiB")
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

    fn kubectl_json_stdin(&self, ctx: &str, args: &[&str], stdin: &str) -> Value {
        let out = self.kubectl(ctx, args, Some(stdin));
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
         ---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: cacerts\n  namespace: {NS}\ndata:\n  ca-cert.pem: {}\n  ca-key.pem: {}\n  root-cert.pem: {}\n  cert-chain.pem: {}\n\
         ---\napiVersion: v1\nkind: Secret\ntype: Opaque\nmetadata:\n  name: istio-remote-secret-other\n  namespace: {NS}\n  labels:\n    istio/multiCluster: \"true\"\n  annotations:\n    networking.istio.io/cluster: other\ndata:\n  other: {}\n",
        STANDARD.encode(format!("ca of {ctx}")),
        STANDARD.encode("key"),
        STANDARD.encode("root"),
        STANDARD.encode("chain"),
        STANDARD.encode("apiVersion: v1\nkind: Config\n"),
    );
    let apply = |manifest: &str| {
        let mut args = APPLY.to_vec();
        args.push("-");
        t.kubectl(ctx, &args, Some(manifest))
    };
    let first = apply(&docs);
    assert!(
        first.contains("secret/cacerts serverside-applied"),
        "{first}"
    );
    let versions = || {
        [
            ns_path.clone(),
            format!("{ns_path}/secrets/cacerts"),
            format!("{ns_path}/secrets/istio-remote-secret-other"),
        ]
        .map(|p| c.get(&p).unwrap()["metadata"]["resourceVersion"].clone())
    };
    let before = versions();
    let second = apply(&docs);
    assert_eq!(second.matches("serverside-applied").count(), 3, "{second}");
    assert_eq!(
        before,
        versions(),
        "a second apply of the same manifest wrote"
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
                "--values",
                values,
                "--wait",
                "--timeout",
                "2m0s",
            ],
        )
    };
    install("istio-base", &istio_chart("base"));
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
    install("istiod", &istio_chart("istiod"));
    install("istiod", &istio_chart("istiod"));
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
    // Istio's chart gives istiod no mesh id or network env: proxies get them from the
    // injector's values (and istiod its network from its namespace's label).
    assert_eq!(env_value("ISTIO_META_NETWORK"), None);
    let injector = c
        .get(&format!("{ns_path}/configmaps/istio-sidecar-injector"))
        .expect("injector configmap");
    let values: Value = serde_json::from_str(injector["data"]["values"].as_str().unwrap()).unwrap();
    assert_eq!(values["global"]["meshID"], "mesh1");
    assert_eq!(values["global"]["network"], json!(format!("net-{ctx}")));
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
    let list_args = [
        "list",
        "--namespace",
        NS,
        "--deployed",
        "--failed",
        "--pending",
        "--uninstalling",
        "--output",
        "json",
    ];
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
    apply(&token_secret);
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

// ---- credentials, pods, pod proxy, Jobs, leases and faults, driven by the real kubectl ----

/// A kubeconfig with one context `ctx` for `c` whose user holds `token`.
fn user_kubeconfig(path: &Path, c: &TestCluster, token: &str) {
    std::fs::write(path, remote_kubeconfig(c, "ctx", c.ca_pem(), token)).unwrap();
}

/// A kubeconfig naming `c`'s server with the given CA and token, as a remote secret holds it.
fn remote_kubeconfig(c: &TestCluster, name: &str, ca_pem: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {}\n    certificate-authority-data: {}\ncontexts:\n- name: {name}\n  context: {{cluster: {name}, user: {name}}}\ncurrent-context: {name}\nusers:\n- name: {name}\n  user:\n    token: {token}\n",
        c.url(),
        STANDARD.encode(ca_pem)
    )
}

/// A scratch directory, a kubeconfig for `clusters` and the helm 4 / kubectl 1.35 tools.
fn kubectl_env(clusters: &[&TestCluster]) -> (tempfile::TempDir, Tools) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, clusters).unwrap();
    let t = tools("helm4", &kubeconfig, dir.path());
    (dir, t)
}

fn put(c: &TestCluster, path: &str, object: Value) -> Value {
    c.put(path, object)
        .unwrap_or_else(|e| panic!("put {path}: {e}"))
}

/// The token the token controller put into a token secret.
fn wait_token(c: &TestCluster, ns: &str, secret: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(t) = c
            .get(&format!("/api/v1/namespaces/{ns}/secrets/{secret}"))
            .and_then(|s| s["data"]["token"].as_str().map(String::from))
        {
            return String::from_utf8(STANDARD.decode(t).unwrap()).unwrap();
        }
        assert!(Instant::now() < deadline, "{secret} never got a token");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The reader's ClusterRole and binding, as the istiod chart renders them with
/// `global.enableReaderRBAC` (the default); `configmaps` as from Istio 1.29.
fn bind_reader(c: &TestCluster) {
    let rbac = "/apis/rbac.authorization.k8s.io/v1";
    c.put(
        &format!("{rbac}/clusterroles/istio-reader-clusterrole-istio-system"),
        json!({"rules": [
            {"apiGroups": ["config.istio.io", "security.istio.io", "networking.istio.io"], "resources": ["*"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["endpoints", "pods", "services", "nodes", "namespaces", "secrets", "configmaps"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        ]}),
    )
    .unwrap();
    c.put(
        &format!("{rbac}/clusterrolebindings/istio-reader-clusterrole-istio-system"),
        json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "istio-reader-clusterrole-istio-system"},
               "subjects": [{"kind": "ServiceAccount", "name": "istio-reader-service-account", "namespace": "istio-system"}]}),
    )
    .unwrap();
}

/// istio-system with the reader service account and its token secret; returns the token.
fn reader(c: &TestCluster) -> String {
    let ns = format!("/api/v1/namespaces/{NS}");
    if c.get(&ns).is_none() {
        put(c, &ns, json!({}));
    }
    put(
        c,
        &format!("{ns}/serviceaccounts/istio-reader-service-account"),
        json!({}),
    );
    bind_reader(c);
    put(
        c,
        &format!("{ns}/secrets/reader-token"),
        json!({"type": "kubernetes.io/service-account-token", "metadata": {"annotations": {
            "kubernetes.io/service-account.name": "istio-reader-service-account"}}}),
    );
    wait_token(c, NS, "reader-token")
}

/// Waits until the Deployment's pods all run the current template and are Ready, as
/// `kubectl rollout status` would (pods become Ready after `Options::pod_ready_delay`).
fn wait_rolled_out(c: &TestCluster, ns: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = c
            .get(&format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}"))
            .unwrap_or_else(|| panic!("deployment {ns}/{name}"));
        let want = &d["spec"]["replicas"];
        if d["status"]["updatedReplicas"] == *want
            && d["status"]["availableReplicas"] == *want
            && d["status"]["replicas"] == *want
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "deployment {ns}/{name} not rolled out: {}",
            d["status"]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A control plane as the charts leave it: istio-system (on `network`), `cacerts` with `root`
/// (none when `None`), the reader's token secret, and a ready istiod reporting `id`.
fn control_plane(c: &TestCluster, id: &str, network: &str, root: Option<&str>) -> String {
    control_plane_image(c, id, network, root, "pilot")
}

/// [`control_plane`] with istiod's `discovery` image (its tag names the Istio version).
fn control_plane_image(
    c: &TestCluster,
    id: &str,
    network: &str,
    root: Option<&str>,
    image: &str,
) -> String {
    let ns = format!("/api/v1/namespaces/{NS}");
    put(
        c,
        &ns,
        json!({"metadata": {"labels": {"topology.istio.io/network": network}}}),
    );
    if let Some(root) = root {
        let b64 = |s: &str| STANDARD.encode(s);
        put(
            c,
            &format!("{ns}/secrets/cacerts"),
            json!({"data": {"ca-cert.pem": b64(&format!("ca of {id}")), "ca-key.pem": b64("key"),
                            "root-cert.pem": b64(root), "cert-chain.pem": b64("chain")}}),
        );
    }
    let token = reader(c);
    put(
        c,
        &format!("/apis/apps/v1/namespaces/{NS}/deployments/istiod"),
        json!({"metadata": {"labels": {"app": "istiod"}}, "spec": {
            "selector": {"matchLabels": {"app": "istiod", "istio.io/rev": "default"}},
            "template": {"metadata": {"labels": {"app": "istiod", "istio.io/rev": "default"}},
                "spec": {"containers": [{"name": "discovery", "image": image,
                    "ports": [{"name": "http-monitoring", "containerPort": 15014}],
                    "env": [{"name": "CLUSTER_ID", "value": id}]}]}}}}),
    );
    injector(c);
    istiod_pod(c);
    token
}

/// istiod's Service and the default revision's injector webhook for namespaces labelled
/// `istio-injection=enabled` (the chart's `namespace.sidecar-injector.istio.io`).
fn injector(c: &TestCluster) {
    put(
        c,
        &format!("/api/v1/namespaces/{NS}/services/istiod"),
        json!({"spec": {"selector": {"app": "istiod", "istio.io/rev": "default"},
               "ports": [{"name": "https-webhook", "port": 443, "targetPort": 15017}]}}),
    );
    put(
        c,
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector",
        json!({"metadata": {"labels": {"istio.io/rev": "default"}}, "webhooks": [{
            "name": "namespace.sidecar-injector.istio.io",
            "clientConfig": {"service": {"name": "istiod", "namespace": NS, "path": "/inject", "port": 443}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchExpressions": [{"key": "istio-injection", "operator": "In", "values": ["enabled"]}]},
            "objectSelector": {"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"]}]}),
    );
}

/// A remote secret in `from` for the peer `to`, named `istio-remote-secret-NAME`.
fn remote_secret(from: &TestCluster, name: &str, id: &str, kubeconfig: &str) {
    put(
        from,
        &format!("/api/v1/namespaces/{NS}/secrets/istio-remote-secret-{name}"),
        json!({"metadata": {"labels": {"istio/multiCluster": "true"}},
               "data": {id: STANDARD.encode(kubeconfig)}}),
    );
}

/// The sync status of cluster `id` in a clusterz view.
fn sync(view: &Value, id: &str) -> String {
    view.as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {view}"))["syncStatus"]
        .as_str()
        .unwrap()
        .to_string()
}

fn pods(c: &TestCluster, ns: &str) -> Vec<Value> {
    c.list(&format!("/api/v1/namespaces/{ns}/pods"))
}

/// The istiod pod, once it has started: Ready (after `Options::pod_ready_delay`) or crashing.
fn istiod_pod(c: &TestCluster) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let started = pods(c, NS).into_iter().find(|p| {
            let status = |t: &str| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == t && c["status"] == "True")
            };
            p["metadata"]["labels"]["app"] == "istiod"
                && (status("Ready")
                    || p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                        == "CrashLoopBackOff")
        });
        if let Some(p) = started {
            return p["metadata"]["name"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no istiod pod started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kubectl_with_a_wrong_or_revoked_token_is_refused() {
    let c = TestCluster::start("c1", Options::default());
    let (dir, admin) = kubectl_env(&[&c]);
    assert!(admin.kubectl_out("c1", &["get", "ns"], None).ok);

    let kubeconfig = dir.path().join("user");
    let t = tools("helm4", &kubeconfig, dir.path());
    user_kubeconfig(&kubeconfig, &c, "not-a-token");
    let out = t.kubectl_out("ctx", &["get", "namespaces"], None);
    assert!(!out.ok);
    assert!(out.stderr.contains("Unauthorized"), "{}", out.stderr);

    let token = reader(&c);
    user_kubeconfig(&kubeconfig, &c, &token);
    assert!(t.kubectl_out("ctx", &["get", "secrets", "-n", NS], None).ok);
    let write = t.kubectl_out("ctx", &["create", "namespace", "x"], None);
    assert!(!write.ok);
    assert!(
        write.stderr.contains("is forbidden: User \"system:serviceaccount:istio-system:istio-reader-service-account\" cannot create resource \"namespaces\""),
        "{}",
        write.stderr
    );
    c.delete(&format!("/api/v1/namespaces/{NS}/secrets/reader-token"))
        .unwrap();
    let revoked = t.kubectl_out("ctx", &["get", "namespaces"], None);
    assert!(!revoked.ok);
    assert!(
        revoked.stderr.contains("Unauthorized"),
        "{}",
        revoked.stderr
    );
}

#[test]
fn kubectl_scales_restarts_and_deletes_a_deployment_with_its_pods() {
    let c = TestCluster::start("c1", Options::default());
    let (_dir, t) = kubectl_env(&[&c]);
    let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: default}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: nginx}]\n";
    let mut args = APPLY.to_vec();
    args.push("-");
    t.kubectl("c1", &args, Some(manifest));
    let status = t.kubectl(
        "c1",
        &["rollout", "status", "deployment/web", "--timeout=30s"],
        None,
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    // The pods that are not terminating (deleted pods linger for `pod_termination_delay`).
    let all_web = |c: &TestCluster| -> Vec<Value> {
        pods(c, "default")
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "web")
            .collect()
    };
    let web = |c: &TestCluster| -> Vec<Value> {
        all_web(c)
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect()
    };
    let eventually_none_terminating = |c: &TestCluster| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while all_web(c).len() != web(c).len() {
            assert!(Instant::now() < deadline, "pods stay Terminating");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let first = web(&c);
    assert_eq!(first.len(), 2);
    let rs = c.list("/apis/apps/v1/namespaces/default/replicasets");
    assert_eq!(rs.len(), 1);
    for p in &first {
        let name = p["metadata"]["name"].as_str().unwrap();
        let rs_name = rs[0]["metadata"]["name"].as_str().unwrap();
        assert!(
            name.starts_with(&format!("{rs_name}-")) && name.len() == rs_name.len() + 6,
            "{name}"
        );
        assert_eq!(
            p["metadata"]["ownerReferences"][0]["uid"],
            rs[0]["metadata"]["uid"]
        );
        assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(p["status"]["phase"], "Running");
        assert!(
            p["status"]["podIP"].as_str().unwrap().starts_with("10.2"),
            "an address of the cluster's pod range (10.244 for the first cluster of the process)"
        );
        assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
    }
    let ready = t.kubectl(
        "c1",
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
        ],
        None,
    );
    assert_eq!(ready, "True True");

    t.kubectl("c1", &["scale", "deployment/web", "--replicas=3"], None);
    assert_eq!(web(&c).len(), 3);
    t.kubectl("c1", &["scale", "deployment/web", "--replicas=1"], None);
    assert_eq!(web(&c).len(), 1);
    let terminating = all_web(&c);
    assert_eq!(terminating.len(), 3, "scaled-away pods terminate first");
    assert!(
        terminating
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_string())
            .all(|p| p["metadata"]["deletionGracePeriodSeconds"] == 30
                && p["status"]["conditions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "False"))
    );
    eventually_none_terminating(&c);

    let gone = web(&c)[0]["metadata"]["name"].as_str().unwrap().to_string();
    t.kubectl("c1", &["delete", "pod", &gone], None);
    let replaced = web(&c);
    assert_eq!(replaced.len(), 1, "the ReplicaSet replaces a deleted pod");
    assert_ne!(replaced[0]["metadata"]["name"], gone.as_str());

    let before = web(&c)[0]["metadata"]["name"].clone();
    t.kubectl("c1", &["rollout", "restart", "deployment/web"], None);
    let status = t.kubectl(
        "c1",
        &["rollout", "status", "deployment/web", "--timeout=30s"],
        None,
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    let after = web(&c);
    assert_eq!(after.len(), 1);
    assert_ne!(
        after[0]["metadata"]["name"], before,
        "old pods go with the old template"
    );
    assert_eq!(
        c.list("/apis/apps/v1/namespaces/default/replicasets").len(),
        2
    );

    t.kubectl("c1", &["delete", "deployment", "web"], None);
    assert!(
        c.list("/apis/apps/v1/namespaces/default/replicasets")
            .is_empty()
    );
    assert!(web(&c).is_empty(), "garbage collection removes the pods");
    eventually_none_terminating(&c);
    assert!(all_web(&c).is_empty());
}

#[test]
fn istiods_debug_handlers_refuse_the_pod_proxy_with_401() {
    let c1 = TestCluster::start("c1", Options::default());
    let (_dir, t) = kubectl_env(&[&c1]);
    control_plane(&c1, "cluster1", "n1", None);
    let pod = istiod_pod(&c1);
    let raw = |port: &str, path: &str| {
        t.kubectl_out(
            "c1",
            &[
                "get",
                "--raw",
                &format!("/api/v1/namespaces/{NS}/pods/{pod}:{port}/proxy/{path}"),
            ],
            None,
        )
    };
    for port in ["15014", "http-monitoring"] {
        let out = raw(port, "debug/clusterz");
        assert!(!out.ok, "{}", out.stdout);
        // What kubectl prints for a 401 without a Status body.
        assert!(
            out.stderr
                .contains("the server has asked for the client to provide credentials"),
            "{}",
            out.stderr
        );
    }
    assert_eq!(
        c1.requests_log().last().map(|r| r.status),
        Some(401),
        "istiod's answer, passed on by the API server"
    );
    let unknown = raw("15014", "debug/nothing");
    assert!(
        !unknown.ok && unknown.stderr.contains("NotFound"),
        "{}",
        unknown.stderr
    );
    // Nothing else listens; a private control plane reaches no pod.
    let other = raw("8080", "debug/clusterz");
    assert!(!other.ok);
    assert!(
        other.stderr.contains("connect: connection refused"),
        "{}",
        other.stderr
    );
    c1.set_pod_proxy(false);
    let private = raw("15014", "debug/clusterz");
    assert!(!private.ok);
    assert!(
        private.stderr.contains("ServiceUnavailable") || private.stderr.contains("i/o timeout"),
        "{}",
        private.stderr
    );
}

/// Waits until istiod of `c` lists cluster `id` with `status` (at most 20 s: the machine may
/// be loaded) and returns the view.
fn wait_sync(c: &TestCluster, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pod = istiod_pod(c);
        if let Some(view) = c.istiod_clusterz(NS, &pod)
            && view
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["id"] == id && e["syncStatus"] == status)
        {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never became {status}: {:?}",
            c.istiod_clusterz(NS, &pod)
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// helloworld `version` in namespace meshup-verify (injected) of `c`.
fn helloworld(c: &TestCluster, version: &str) {
    let ns = "/api/v1/namespaces/meshup-verify";
    if c.get(ns).is_none() {
        put(
            c,
            ns,
            json!({"metadata": {"labels": {"istio-injection": "enabled"}}}),
        );
    }
    put(
        c,
        &format!("{ns}/services/helloworld"),
        json!({"spec": {"selector": {"app": "helloworld"}, "ports": [{"name": "http", "port": 5000}]}}),
    );
    put(
        c,
        &format!("/apis/apps/v1/namespaces/meshup-verify/deployments/helloworld-{version}"),
        json!({"spec": {"selector": {"matchLabels": {"app": "helloworld", "version": version}},
            "template": {"metadata": {"labels": {"app": "helloworld", "version": version}},
                "spec": {"containers": [{"name": "helloworld", "image": "helloworld",
                    "env": [{"name": "SERVICE_VERSION", "value": version}]}]}}}}),
    );
    wait_rolled_out(c, "meshup-verify", &format!("helloworld-{version}"));
}

/// Runs the curl client Job `name` in `ctx` and returns its log lines.
fn curl_job(t: &Tools, ctx: &str, name: &str, requests: u32) -> Vec<String> {
    let job = format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}, namespace: meshup-verify}}\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: curl\n        image: curlimages/curl\n        command: [sh, -c, 'for i in $(seq $REQUESTS); do curl -s $URL || echo request failed; echo; done']\n        env:\n        - {{name: URL, value: 'http://helloworld.meshup-verify:5000/hello'}}\n        - {{name: REQUESTS, value: '{requests}'}}\n"
    );
    let mut args = APPLY.to_vec();
    args.push("-");
    t.kubectl(ctx, &args, Some(&job));
    let job_ref = format!("job/{name}");
    t.kubectl(
        ctx,
        &[
            "wait",
            "--for=condition=complete",
            &job_ref,
            "-n",
            "meshup-verify",
            "--timeout=30s",
        ],
        None,
    );
    t.kubectl(ctx, &["logs", &job_ref, "-n", "meshup-verify"], None)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn a_curl_job_reaches_both_clusters_only_with_a_shared_root() {
    let c1 = TestCluster::start("c1", Options::default());
    let c2 = TestCluster::start("c2", Options::default());
    let (_dir, t) = kubectl_env(&[&c1, &c2]);
    let token1 = control_plane(&c1, "cluster1", "n1", Some("root"));
    let token2 = control_plane(&c2, "cluster2", "n1", Some("root"));
    remote_secret(
        &c1,
        "cluster2",
        "cluster2",
        &remote_kubeconfig(&c2, "cluster2", c2.ca_pem(), &token2),
    );
    remote_secret(
        &c2,
        "cluster1",
        "cluster1",
        &remote_kubeconfig(&c1, "cluster1", c1.ca_pem(), &token1),
    );
    helloworld(&c1, "v1");
    helloworld(&c2, "v2");
    wait_sync(&c1, "cluster2", "synced");
    wait_sync(&c2, "cluster1", "synced");

    let lines = curl_job(&t, "c1", "curl", 4);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let job = c1
        .get("/apis/batch/v1/namespaces/meshup-verify/jobs/curl")
        .unwrap();
    assert_eq!(job["status"]["succeeded"], 1);
    let uid = job["metadata"]["uid"].as_str().unwrap();
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    for label in ["batch.kubernetes.io/controller-uid", "controller-uid"] {
        assert_eq!(job["spec"]["template"]["metadata"]["labels"][label], uid);
    }
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"]["job-name"],
        "curl"
    );
    for v in ["v1", "v2"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("Hello version: {v}, instance: helloworld-{v}-"))),
            "{v} missing: {lines:?}"
        );
    }

    // cluster2's reader token revoked: istiod keeps serving what it listed.
    c2.delete(&format!("/api/v1/namespaces/{NS}/secrets/reader-token"))
        .unwrap();
    assert!(
        curl_job(&t, "c1", "curl-revoked", 4)
            .iter()
            .any(|l| l.contains("version: v2")),
        "endpoints stay after the token is revoked"
    );

    // cluster2 gets another root: its workloads keep the old one until both istiod and they
    // restart; then cross-cluster mTLS fails.
    put(
        &c2,
        &format!("/api/v1/namespaces/{NS}/secrets/cacerts"),
        json!({"data": {
        "ca-cert.pem": STANDARD.encode("x"), "ca-key.pem": STANDARD.encode("x"),
        "root-cert.pem": STANDARD.encode("another root"), "cert-chain.pem": STANDARD.encode("x")}}),
    );
    let reaches_v2 = |job: &str| {
        curl_job(&t, "c1", job, 4)
            .iter()
            .any(|l| l.contains("version: v2"))
    };
    assert!(
        reaches_v2("curl-2"),
        "a new cacerts is not used before istiod restarts"
    );
    let istiod2 = istiod_pod(&c2);
    t.kubectl("c2", &["delete", "pod", &istiod2, "-n", NS], None);
    istiod_pod(&c2);
    // The new istiod serves its webhook with the new root once its patcher put that root into
    // the injector's caBundle; until then the API server cannot call it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c2
        .list("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations")
        .iter()
        .flat_map(|m| m["webhooks"].as_array().cloned().unwrap_or_default())
        .any(|h| h["clientConfig"]["caBundle"] == STANDARD.encode("another root"))
    {
        assert!(
            Instant::now() < deadline,
            "the new istiod never patched its injector"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        reaches_v2("curl-3"),
        "running workloads keep their certificates"
    );
    t.kubectl(
        "c2",
        &[
            "rollout",
            "restart",
            "deployment/helloworld-v2",
            "-n",
            "meshup-verify",
        ],
        None,
    );
    wait_rolled_out(&c2, "meshup-verify", "helloworld-v2");
    assert!(
        !reaches_v2("curl-4"),
        "a restarted v2 trusts only the new root"
    );

    // Nothing serves the Service in cluster1 any more and cluster2 is out of reach.
    t.kubectl(
        "c1",
        &[
            "delete",
            "deployment",
            "helloworld-v1",
            "-n",
            "meshup-verify",
        ],
        None,
    );
    assert_eq!(
        curl_job(&t, "c1", "curl-5", 2),
        ["request failed", "request failed"]
    );
}

/// `kubectl delete --raw PATH -f -` with preconditions (how meshup gives its lock back): a
/// stale resourceVersion is refused with the storage layer's 409, the current one deletes.
#[test]
fn a_delete_with_preconditions_needs_the_current_resource_version() {
    let c = TestCluster::start("c1", Options::default());
    let (dir, t) = kubectl_env(&[&c]);
    let lease = "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: meshup-lock, namespace: default}\nspec: {holderIdentity: run-1}\n";
    t.kubectl("c1", &["create", "-f", "-"], Some(lease));
    let path = "/apis/coordination.k8s.io/v1/namespaces/default/leases/meshup-lock";
    let version = c.get(path).unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let options = |rv: &str| {
        let p = dir.path().join(format!("delete-{rv}.json"));
        std::fs::write(
            &p,
            json!({"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"resourceVersion": rv}})
                .to_string(),
        )
        .unwrap();
        p
    };
    let stale = t.kubectl_out(
        "c1",
        &[
            "delete",
            "--raw",
            path,
            "-f",
            options("1").to_str().unwrap(),
        ],
        None,
    );
    assert!(!stale.ok);
    assert!(
        stale.stderr.contains(&format!(
            "the ResourceVersion in the precondition (1) does not match the ResourceVersion in record ({version})"
        )),
        "{}",
        stale.stderr
    );
    assert!(c.get(path).is_some());
    t.kubectl(
        "c1",
        &[
            "delete",
            "--raw",
            path,
            "-f",
            options(&version).to_str().unwrap(),
        ],
        None,
    );
    assert!(c.get(path).is_none());
}

#[test]
fn leases_refuse_a_second_create_and_a_stale_update() {
    let c = TestCluster::start("c1", Options::default());
    let (dir, t) = kubectl_env(&[&c]);
    let lease = "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: meshup-lock, namespace: default}\nspec: {holderIdentity: run-1, leaseDurationSeconds: 30}\n";
    t.kubectl("c1", &["create", "-f", "-"], Some(lease));
    let again = t.kubectl_out("c1", &["create", "-f", "-"], Some(lease));
    assert!(!again.ok);
    assert!(again.stderr.contains("AlreadyExists"), "{}", again.stderr);

    let got = t.kubectl_json("c1", &["get", "lease", "meshup-lock", "-o", "json"]);
    let mut stale = got.clone();
    stale["spec"]["holderIdentity"] = json!("run-2");
    let mut fresh = got;
    fresh["spec"]["holderIdentity"] = json!("run-3");
    let file = |v: &Value, n: &str| {
        let p = dir.path().join(n);
        std::fs::write(&p, v.to_string()).unwrap();
        p
    };
    let (fresh_file, stale_file) = (file(&fresh, "fresh.json"), file(&stale, "stale.json"));
    t.kubectl("c1", &["replace", "-f", fresh_file.to_str().unwrap()], None);
    let conflict = t.kubectl_out("c1", &["replace", "-f", stale_file.to_str().unwrap()], None);
    assert!(!conflict.ok);
    assert!(
        conflict.stderr.contains("the object has been modified"),
        "{}",
        conflict.stderr
    );
    let holder = c
        .get("/apis/coordination.k8s.io/v1/namespaces/default/leases/meshup-lock")
        .unwrap();
    assert_eq!(holder["spec"]["holderIdentity"], "run-3");

    let mut unconditional = holder;
    unconditional["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let reply = c
        .request(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/default/leases/meshup-lock",
            Some(c.admin_token()),
            Some(&unconditional),
        )
        .unwrap();
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(
        reply.body.contains("must be specified for an update"),
        "{}",
        reply.body
    );
}

#[test]
fn a_reset_window_fails_kubectl_until_it_ends() {
    let c = TestCluster::start("c1", Options::default());
    let (_dir, t) = kubectl_env(&[&c]);
    assert!(t.kubectl_out("c1", &["get", "ns"], None).ok);
    c.outage_after_writes(1, Duration::from_secs(2));
    t.kubectl("c1", &["create", "namespace", "a"], None);
    // The outage began before kubectl got its answer: a window from now covers it.
    let started = Instant::now();
    let failed = t.kubectl_out("c1", &["create", "namespace", "b"], None);
    assert!(!failed.ok);
    assert!(
        failed.stderr.contains("connection reset by peer"),
        "{}",
        failed.stderr
    );
    assert!(c.get("/api/v1/namespaces/b").is_none());
    std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    t.kubectl("c1", &["create", "namespace", "b"], None);
    assert!(c.get("/api/v1/namespaces/b").is_some());
    let creates: Vec<u16> = c
        .requests_log()
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/api/v1/namespaces"))
        .map(|r| r.status)
        .collect();
    assert_eq!(
        creates,
        [201, 201],
        "no namespace write was served in the window"
    );
}

#[test]
fn an_istiod_with_a_partial_cacerts_crashes_until_the_set_is_complete() {
    let c = TestCluster::start("c1", Options::default());
    let (_dir, t) = kubectl_env(&[&c]);
    put(&c, &format!("/api/v1/namespaces/{NS}"), json!({}));
    put(
        &c,
        &format!("/api/v1/namespaces/{NS}/secrets/cacerts"),
        json!({"data": {"ca-cert.pem": STANDARD.encode("ca"), "root-cert.pem": STANDARD.encode("root")}}),
    );
    control_plane(&c, "cluster1", "n1", None);
    let pod = istiod_pod(&c);
    let stored = c
        .get(&format!("/api/v1/namespaces/{NS}/pods/{pod}"))
        .unwrap();
    assert_eq!(
        stored["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "CrashLoopBackOff"
    );
    let dep = c
        .get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/istiod"))
        .unwrap();
    assert_eq!(dep["status"]["conditions"][0]["status"], "False", "{dep}");
    assert_eq!(dep["status"].get("readyReplicas"), None);
    let waiting = t.kubectl_out(
        "c1",
        &[
            "rollout",
            "status",
            "deployment/istiod",
            "-n",
            NS,
            "--timeout=1s",
        ],
        None,
    );
    assert!(
        !waiting.ok,
        "a crashing istiod rolled out: {}",
        waiting.stdout
    );
    let logs = t.kubectl("c1", &["logs", &pod, "-n", NS], None);
    assert!(logs.contains("incomplete signing CA bundle"), "{logs}");
    let exec = t.kubectl_out(
        "c1",
        &[
            "exec",
            "-n",
            NS,
            &pod,
            "-c",
            "discovery",
            "--",
            "pilot-discovery",
            "request",
            "GET",
            "/debug/clusterz",
        ],
        None,
    );
    assert!(
        !exec.ok && exec.stderr.contains("container not found (\"discovery\")"),
        "{}",
        exec.stderr
    );
    let proxy = t.kubectl_out(
        "c1",
        &[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/{NS}/pods/{pod}:15014/proxy/debug/clusterz"),
        ],
        None,
    );
    assert!(
        !proxy.ok && proxy.stderr.contains("connection refused"),
        "{}",
        proxy.stderr
    );

    // The complete set: the restarted container starts and loads it.
    let b64 = |s: &str| STANDARD.encode(s);
    put(
        &c,
        &format!("/api/v1/namespaces/{NS}/secrets/cacerts"),
        json!({"data": {"ca-cert.pem": b64("ca"), "ca-key.pem": b64("key"),
                        "root-cert.pem": b64("root"), "cert-chain.pem": b64("chain")}}),
    );
    let status = t.kubectl(
        "c1",
        &[
            "rollout",
            "status",
            "deployment/istiod",
            "-n",
            NS,
            "--timeout=10s",
        ],
        None,
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    assert_eq!(istiod_pod(&c), pod, "the same pod, restarted in place");
}

#[test]
fn kubectl_waits_out_throttling_but_not_unavailability() {
    let c = TestCluster::start("c1", Options::default());
    let (_dir, t) = kubectl_env(&[&c]);
    c.set_random_faults(meshup_testcluster::RandomFaults {
        seed: 3,
        throttled: 0.3,
        ..Default::default()
    });
    let started = Instant::now();
    t.kubectl("c1", &["get", "namespace", "default", "-o", "name"], None);
    let throttled = c.requests_log().iter().filter(|r| r.status == 429).count();
    assert!(throttled > 0, "seed 3 throttles none of kubectl's requests");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured"
    );

    c.set_random_faults(meshup_testcluster::RandomFaults {
        seed: 3,
        unavailable: 1.0,
        ..Default::default()
    });
    let out = t.kubectl_out("c1", &["get", "namespace", "default"], None);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("unable to handle the request"),
        "{}",
        out.stderr
    );
}

#[test]
fn helm_cut_off_mid_install_leaves_the_release_pending() {
    let c = TestCluster::start("c1", Options::default());
    let (dir, t) = kubectl_env(&[&c]);
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, "global:\n  multiCluster:\n    clusterName: c1\n").unwrap();
    let install = |timeout: &str| {
        let kc = t.kubeconfig.to_str().unwrap();
        t.run(
            &t.helm,
            &[
                "upgrade",
                "--install",
                "istiod",
                &istio_chart("istiod"),
                "--namespace",
                NS,
                "--create-namespace",
                "--values",
                values.to_str().unwrap(),
                "--wait",
                "--timeout",
                timeout,
                "--kubeconfig",
                kc,
                "--kube-context",
                "c1",
            ],
            None,
        )
    };
    // The namespace, the release record and a few objects get through; then every
    // connection is reset for longer than helm retries.
    c.outage_after_writes(4, Duration::from_secs(4));
    let cut = install("20s");
    assert!(!cut.ok, "helm survived the outage:\n{}", cut.stdout);
    assert!(
        cut.stderr.contains("connection reset by peer"),
        "{}",
        cut.stderr
    );
    let record = c
        .get(&format!(
            "/api/v1/namespaces/{NS}/secrets/sh.helm.release.v1.istiod.v1"
        ))
        .expect("helm wrote its release record before the outage");
    assert_eq!(record["metadata"]["labels"]["status"], "pending-install");
    std::thread::sleep(Duration::from_secs(4));
    let again = install("20s");
    assert!(!again.ok, "a pending release blocks the next upgrade");
    assert!(
        again
            .stderr
            .contains("another operation (install/upgrade/rollback) is in progress"),
        "{}",
        again.stderr
    );
}

// ---- istiod: exec, logs and the secret controller, driven by the real kubectl ----

/// `kubectl exec POD -c discovery -- pilot-discovery request GET PATH` in istio-system.
fn pilot_request(t: &Tools, ctx: &str, pod: &str, path: &str) -> Out {
    t.kubectl_out(
        ctx,
        &[
            "exec",
            "-n",
            NS,
            pod,
            "-c",
            "discovery",
            "--",
            "pilot-discovery",
            "request",
            "GET",
            path,
        ],
        None,
    )
}

/// Two clusters, istiod in each (image `image`), c1 holding a remote secret for c2.
fn linked(image: &str, options: Options) -> (TestCluster, TestCluster, String) {
    let c1 = TestCluster::start("c1", options.clone());
    let c2 = TestCluster::start("c2", options);
    control_plane_image(&c1, "cluster1", "n1", None, image);
    let token2 = control_plane_image(&c2, "cluster2", "n1", None, image);
    remote_secret(
        &c1,
        "cluster2",
        "cluster2",
        &remote_kubeconfig(&c2, "cluster2", c2.ca_pem(), &token2),
    );
    (c1, c2, token2)
}

#[test]
fn kubectl_1_34_and_1_35_exec_pilot_discovery_request_for_clusterz() {
    let (c1, c2, _) = linked("docker.io/istio/pilot:1.28.1", Options::default());
    wait_sync(&c1, "cluster2", "synced");
    let pod = istiod_pod(&c1);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, &[&c1, &c2]).unwrap();
    for set in ["helm4", "helm3"] {
        let t = tools(set, &kubeconfig, dir.path());
        let out = pilot_request(&t, "c1", &pod, "/debug/clusterz");
        assert!(out.ok, "{set}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.ends_with("]\n"), "{set}: {:?}", out.stdout);
        let view: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(
            view,
            json!([
                {"id": "cluster1", "secretName": "", "syncStatus": "synced"},
                {"id": "cluster2", "secretName": "istio-system/istio-remote-secret-cluster2", "syncStatus": "synced"},
            ]),
            "{set}"
        );
        // A 404 prints its body and exits 0, as pilot-discovery's request command does.
        let missing = pilot_request(&t, "c1", &pod, "/debug/nothing");
        assert!(missing.ok, "{set}: {}", missing.stderr);
        assert_eq!(missing.stdout, "404 page not found\n\n", "{set}");
        // Nothing else is in the image.
        let ls = t.kubectl_out(
            "c1",
            &["exec", "-n", NS, &pod, "-c", "discovery", "--", "ls", "/"],
            None,
        );
        assert!(!ls.ok);
        assert!(
            ls.stderr
                .contains("Internal error occurred: error executing command in container")
                && ls
                    .stderr
                    .contains("exec: \"ls\": executable file not found in $PATH: unknown"),
            "{set}: {}",
            ls.stderr
        );
        // The wrong container, and a pod that does not exist.
        let wrong = t.kubectl_out(
            "c1",
            &["exec", "-n", NS, &pod, "-c", "istio-proxy", "--", "true"],
            None,
        );
        assert!(
            !wrong.ok
                && wrong
                    .stderr
                    .contains("container istio-proxy is not valid for pod"),
            "{set}: {}",
            wrong.stderr
        );
        let absent = t.kubectl_out("c1", &["exec", "-n", NS, "istiod-nope", "--", "true"], None);
        assert!(
            !absent.ok && absent.stderr.contains("pods \"istiod-nope\" not found"),
            "{set}: {}",
            absent.stderr
        );
    }
    // Every command ran over a WebSocket (GET, 101); a refused upgrade (the 400s above) makes
    // kubectl fall back to SPDY (POST), which is refused the same way.
    let log = c1.requests_log();
    let exec: Vec<_> = log.iter().filter(|r| r.path.contains("/exec?")).collect();
    assert!(
        exec.iter().all(|r| (r.method == "GET") == (r.status == 101)
            || r.status == 400
            || r.status == 404),
        "{exec:?}"
    );
    assert_eq!(
        exec.iter().filter(|r| r.status == 101).count(),
        6,
        "{exec:?}"
    );
}

#[test]
fn exec_over_websocket_needs_get_on_pods_exec_as_kube_apiserver_1_34_authorizes_it() {
    let c = TestCluster::start("c1", Options::default());
    let token = control_plane(&c, "cluster1", "n1", None);
    let pod = istiod_pod(&c);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("user");
    user_kubeconfig(&kubeconfig, &c, &token);
    let t = tools("helm4", &kubeconfig, dir.path());
    let refused = pilot_request(&t, "ctx", &pod, "/debug/clusterz");
    assert!(!refused.ok);
    // kubectl tries the WebSocket (GET: verb `get`), is refused, falls back to SPDY (POST:
    // verb `create`) and reports that refusal.
    assert!(
        refused.stderr.contains(&format!(
            "pods \"{pod}\" is forbidden: User \"system:serviceaccount:istio-system:istio-reader-service-account\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"istio-system\""
        )),
        "{}",
        refused.stderr
    );
    let tried: Vec<(String, u16)> = c
        .requests_log()
        .into_iter()
        .filter(|r| r.path.contains("/exec?"))
        .map(|r| (r.method, r.status))
        .collect();
    assert_eq!(tried, [("GET".into(), 403), ("POST".into(), 403)]);
    let rbac = "/apis/rbac.authorization.k8s.io/v1";
    put(
        &c,
        &format!("{rbac}/namespaces/{NS}/roles/exec"),
        json!({"rules": [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get"]}]}),
    );
    put(
        &c,
        &format!("{rbac}/namespaces/{NS}/rolebindings/exec"),
        json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "exec"},
               "subjects": [{"kind": "ServiceAccount", "name": "istio-reader-service-account", "namespace": NS}]}),
    );
    let allowed = pilot_request(&t, "ctx", &pod, "/debug/clusterz");
    assert!(allowed.ok, "{}", allowed.stderr);
}

/// istiod's log lines (without their time stamps) since `since`, through kubectl.
fn istiod_log(t: &Tools, ctx: &str, pod: &str, since: Option<&str>) -> Vec<String> {
    let mut args = vec!["logs", "-n", NS, pod, "-c", "discovery"];
    let flag;
    if let Some(s) = since {
        flag = format!("--since-time={s}");
        args.push(&flag);
    }
    t.kubectl(ctx, &args, None)
        .lines()
        .map(|l| {
            l.split_once('\t')
                .map(|(_, rest)| rest)
                .unwrap_or(l)
                .to_string()
        })
        .collect()
}

/// Waits until istiod's log (through kubectl) has a line equal to `line`.
fn wait_log(t: &Tools, ctx: &str, pod: &str, since: Option<&str>, line: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = istiod_log(t, ctx, pod, since);
        if lines.iter().any(|l| l == line) {
            return lines;
        }
        assert!(Instant::now() < deadline, "no {line:?} in {lines:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A rotated reader token for c2 in c1's remote secret; returns when it was written (RFC 3339,
/// whole seconds, as `--since-time` takes it).
fn rotate(c1: &TestCluster, c2: &TestCluster, name: &str) -> String {
    put(
        c2,
        &format!("/api/v1/namespaces/{NS}/secrets/{name}"),
        json!({"type": "kubernetes.io/service-account-token", "metadata": {"annotations": {
            "kubernetes.io/service-account.name": "istio-reader-service-account"}}}),
    );
    let rotated = wait_token(c2, NS, name);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let since = rfc3339(now);
    remote_secret(
        c1,
        "cluster2",
        "cluster2",
        &remote_kubeconfig(c2, "cluster2", c2.ca_pem(), &rotated),
    );
    since
}

fn rfc3339(secs: u64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn istio_1_28_logs_update_cluster_and_rebuilds_a_changed_kubeconfig_stop_first() {
    let (c1, c2, _) = linked("docker.io/istio/pilot:1.28.1", Options::default());
    let (_dir, t) = kubectl_env(&[&c1, &c2]);
    let pod = istiod_pod(&c1);
    let secret = "secret=istio-system/istio-remote-secret-cluster2";
    let first = wait_log(
        &t,
        "c1",
        &pod,
        None,
        &format!("info\tAdd cluster\tcluster=cluster2 {secret}"),
    );
    assert!(
        first.contains(
            &"info\tprocessing secret event for secret istio-system/istio-remote-secret-cluster2"
                .to_string()
        ),
        "{first:#?}"
    );
    wait_sync(&c1, "cluster2", "synced");
    c1.set_sync_delay(Duration::from_secs(600));
    let since = rotate(&c1, &c2, "reader-token-2");
    let lines = wait_log(
        &t,
        "c1",
        &pod,
        Some(&since),
        &format!("info\tUpdate cluster\tcluster=cluster2 {secret}"),
    );
    let update = lines
        .iter()
        .position(|l| l.starts_with("info\tUpdate cluster"))
        .unwrap();
    assert!(
        !lines[update..].iter().any(|l| l.contains("Add cluster")),
        "an update, not an add: {lines:#?}"
    );
    let view = wait_sync(&c1, "cluster2", "syncing");
    assert_eq!(view.as_array().unwrap().len(), 2, "{view}");
    c1.set_sync_delay(Duration::ZERO);
    wait_sync(&c1, "cluster2", "synced");
    // The same kubeconfig again: skipped.
    let again = c1
        .get(&format!(
            "/api/v1/namespaces/{NS}/secrets/istio-remote-secret-cluster2"
        ))
        .unwrap();
    let mut touched = again.clone();
    touched["metadata"]["annotations"] = json!({"touched": "yes"});
    put(
        &c1,
        &format!("/api/v1/namespaces/{NS}/secrets/istio-remote-secret-cluster2"),
        touched,
    );
    wait_log(
        &t,
        "c1",
        &pod,
        None,
        &format!("info\tskipping update (kubeconfig are identical)\tcluster=cluster2 {secret}"),
    );
}

#[test]
fn istio_1_30_swaps_a_changed_kubeconfig_in_and_logs_config() {
    let (c1, c2, _) = linked("docker.io/istio/pilot:1.30.0", Options::default());
    let (_dir, t) = kubectl_env(&[&c1, &c2]);
    let pod = istiod_pod(&c1);
    let config = "config=istio-system/istio-remote-secret-cluster2";
    wait_log(
        &t,
        "c1",
        &pod,
        None,
        &format!("info\tAdd cluster\tcluster=cluster2 {config}"),
    );
    wait_sync(&c1, "cluster2", "synced");
    c1.set_sync_delay(Duration::from_secs(600));
    let since = rotate(&c1, &c2, "reader-token-2");
    let lines = wait_log(
        &t,
        "c1",
        &pod,
        Some(&since),
        &format!("info\tUpdate cluster\tcluster=cluster2 {config}"),
    );
    assert!(
        lines.contains(
            &"info\tprocessing remote config event for istio-system/istio-remote-secret-cluster2"
                .to_string()
        ),
        "{lines:#?}"
    );
    wait_sync(&c1, "cluster2", "syncing");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("stopping previous cluster"))
    );
    c1.set_sync_delay(Duration::ZERO);
    wait_sync(&c1, "cluster2", "synced");
    wait_log(
        &t,
        "c1",
        &pod,
        Some(&since),
        "info\tstopping previous cluster cluster2 after new cluster synced",
    );
}

#[test]
fn synced_stays_synced_after_the_token_is_revoked_and_a_new_istiod_starts_fresh() {
    let (c1, c2, _) = linked("docker.io/istio/pilot:1.28.1", Options::default());
    let (_dir, t) = kubectl_env(&[&c1, &c2]);
    wait_sync(&c1, "cluster2", "synced");
    c2.delete(&format!("/api/v1/namespaces/{NS}/secrets/reader-token"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pod = istiod_pod(&c1);
    let out = pilot_request(&t, "c1", &pod, "/debug/clusterz");
    let view: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(sync(&view, "cluster2"), "synced", "sticky");
    // A new istiod pod loads the secret again: the revoked token never syncs.
    t.kubectl("c1", &["delete", "pod", &pod, "-n", NS], None);
    wait_sync(&c1, "cluster2", "timeout");
    let new_pod = istiod_pod(&c1);
    wait_log(
        &t,
        "c1",
        &new_pod,
        None,
        "error\tremote cluster cluster2 failed to sync after 2s",
    );
}

#[test]
fn an_unreachable_server_times_out_then_syncs_once_it_answers() {
    let options = Options {
        remote_cluster_timeout: Duration::from_millis(500),
        ..Options::default()
    };
    let c1 = TestCluster::start("c1", options.clone());
    let c2 = TestCluster::start("c2", options);
    control_plane_image(&c1, "cluster1", "n1", None, "docker.io/istio/pilot:1.28.1");
    let token2 = control_plane(&c2, "cluster2", "n1", None);
    c2.stop();
    remote_secret(
        &c1,
        "cluster2",
        "cluster2",
        &remote_kubeconfig(&c2, "cluster2", c2.ca_pem(), &token2),
    );
    wait_sync(&c1, "cluster2", "timeout");
    c2.restart();
    wait_sync(&c1, "cluster2", "synced");
}

#[test]
fn a_second_secret_for_a_registered_id_is_ignored_and_deleting_a_secret_removes_its_cluster() {
    let (c1, c2, token2) = linked("docker.io/istio/pilot:1.28.1", Options::default());
    let (_dir, t) = kubectl_env(&[&c1, &c2]);
    let pod = istiod_pod(&c1);
    wait_sync(&c1, "cluster2", "synced");
    remote_secret(
        &c1,
        "again",
        "cluster2",
        &remote_kubeconfig(&c2, "x", c2.ca_pem(), &token2),
    );
    wait_log(
        &t,
        "c1",
        &pod,
        None,
        "warn\tcluster has already been registered\tcluster=cluster2 secret=istio-system/istio-remote-secret-again",
    );
    let view = c1.istiod_clusterz(NS, &pod).unwrap();
    assert_eq!(view.as_array().unwrap().len(), 2, "{view}");
    assert_eq!(
        view[1]["secretName"],
        "istio-system/istio-remote-secret-cluster2"
    );
    t.kubectl(
        "c1",
        &["delete", "secret", "istio-remote-secret-cluster2", "-n", NS],
        None,
    );
    wait_log(
        &t,
        "c1",
        &pod,
        None,
        "info\tDeleting cluster_id=cluster2 configured by secret=istio-system/istio-remote-secret-cluster2",
    );
    let view = c1.istiod_clusterz(NS, &pod).unwrap();
    assert_eq!(view.as_array().unwrap().len(), 1, "{view}");
    let tail = t.kubectl(
        "c1",
        &[
            "logs",
            "-n",
            NS,
            &pod,
            "-c",
            "discovery",
            "--tail=1",
            "--timestamps",
        ],
        None,
    );
    let (stamp, line) = tail.trim_end().split_once(' ').unwrap();
    assert!(stamp.ends_with('Z') && stamp.contains('T'), "{tail}");
    assert!(
        line.ends_with("\tinfo\tNumber of remote clusters: 0"),
        "{tail}"
    );
}

// ---- cluster timing with the real clients ----

/// helm `--wait` and `kubectl rollout status` wait for late-ready pods; `kubectl delete ns`
/// waits for the namespace to finish terminating; `helm install --create-namespace` into a
/// terminating namespace fails as on a real cluster; `kubectl wait --for=delete` sees it go.
fn timing_with(set: &str) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let t = tools(set, &kubeconfig, &home);
    let c = TestCluster::start(
        "slow",
        Options {
            pod_ready_delay: Duration::from_millis(1500),
            namespace_finalize_delay: Duration::from_millis(1500),
            ..Options::default()
        },
    );
    write_kubeconfig(&kubeconfig, &[&c]).unwrap();
    let helm_install = |release: &str, chart: &str, ns: &str| {
        let kc = kubeconfig.to_str().unwrap();
        t.run(
            &t.helm,
            &[
                "upgrade",
                "--install",
                release,
                chart,
                "--namespace",
                ns,
                "--create-namespace",
                "--wait",
                "--timeout",
                "1m0s",
                "--kubeconfig",
                kc,
                "--kube-context",
                "slow",
            ],
            None,
        )
    };

    let out = helm_install("istio-base", &istio_chart("base"), NS);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let started = Instant::now();
    let out = helm_install("istiod", &istio_chart("istiod"), NS);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "helm --wait returned before istiod was Ready ({:?})",
        started.elapsed()
    );
    let dep = c
        .get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/istiod"))
        .unwrap();
    assert_eq!(dep["status"]["readyReplicas"], 1, "{}", dep["status"]);

    // A new template: rollout status waits for the new pod, then reports success.
    t.kubectl(
        "slow",
        &["rollout", "restart", "deployment/istiod", "-n", NS],
        None,
    );
    let started = Instant::now();
    let status = t.kubectl(
        "slow",
        &[
            "rollout",
            "status",
            "deployment/istiod",
            "-n",
            NS,
            "--timeout=30s",
        ],
        None,
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    assert!(started.elapsed() >= Duration::from_millis(1000), "{status}");
    let active = |c: &TestCluster| {
        pods(c, NS)
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .count()
    };
    assert_eq!(active(&c), 1, "the old pod went with the rollout");

    // istiod switched its webhooks to Fail; an upgrade keeps that (the charts leave
    // failurePolicy out on upgrade), while applying `Ignore` conflicts with istiod.
    let vwc = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations";
    let policy = |name: &str| {
        c.get(&format!("{vwc}/{name}")).unwrap()["webhooks"][0]["failurePolicy"].clone()
    };
    for name in ["istiod-default-validator", "istio-validator-istio-system"] {
        assert_eq!(policy(name), "Fail", "{name}");
    }
    let out = helm_install("istiod", &istio_chart("istiod"), NS);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert_ne!(policy("istio-validator-istio-system"), "Ignore");
    let ignore = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {name: istiod-default-validator}\nwebhooks:\n- name: validation.istio.io\n  clientConfig: {service: {name: istiod, namespace: istio-system, path: /validate}}\n  failurePolicy: Ignore\n  sideEffects: None\n  admissionReviewVersions: [v1]\n";
    let conflict = t.kubectl_out(
        "slow",
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "helm",
            "-f",
            "-",
        ],
        Some(ignore),
    );
    assert!(!conflict.ok);
    assert!(
        conflict.stderr.contains(
            "conflict with \"pilot-discovery\" using admissionregistration.k8s.io/v1 at "
        ) && conflict
            .stderr
            .contains(".webhooks[name=\"validation.istio.io\"].failurePolicy"),
        "{}",
        conflict.stderr
    );

    // helm --wait waits for a LoadBalancer address, here an AWS-style host name.
    c.set_pod_ready_delay(Duration::ZERO);
    c.set_load_balancer_delay(Duration::from_millis(1500));
    c.set_load_balancer_hostname(true);
    let started = Instant::now();
    let out = helm_install("eastwest", &istio_chart("gateway"), NS);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let lb = || {
        c.list(&format!("/api/v1/namespaces/{NS}/services"))
            .into_iter()
            .find(|s| s["spec"]["type"] == "LoadBalancer")
            .expect("the gateway's LoadBalancer Service")
    };
    if set == "helm3" {
        // helm 3's ready checker waits for a LoadBalancer's ingress.
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "helm 3 --wait returned before the load balancer had an address ({:?})",
            started.elapsed()
        );
    } else {
        // helm 4's kstatus takes a Service with a cluster IP as ready: no address yet.
        assert_eq!(lb()["status"], json!({"loadBalancer": {}}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while lb()["status"]["loadBalancer"]["ingress"].is_null() {
            assert!(Instant::now() < deadline, "no address arrived");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let lb = lb();
    let ingress = &lb["status"]["loadBalancer"]["ingress"][0];
    assert!(
        ingress["hostname"]
            .as_str()
            .is_some_and(|h| h.ends_with(".elb.us-east-1.amazonaws.com"))
            && ingress.get("ip").is_none(),
        "{ingress}"
    );
    c.set_pod_ready_delay(Duration::from_millis(1500));

    // No istiod left: Istio resources are refused with the API server's words.
    t.kubectl(
        "slow",
        &["scale", "deployment/istiod", "-n", NS, "--replicas=0"],
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while pods(&c, NS)
        .iter()
        .any(|p| p["metadata"]["labels"]["app"] == "istiod")
    {
        assert!(Instant::now() < deadline, "istiod pods stay");
        std::thread::sleep(Duration::from_millis(20));
    }
    let gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\nspec: {}\n";
    let refused = t.kubectl_out("slow", &["create", "-f", "-"], Some(gateway));
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("Error from server (InternalError): error when creating \"STDIN\": Internal error occurred: failed calling webhook \"validation.istio.io\": failed to call webhook: Post \"https://istiod.istio-system.svc:443/validate?timeout=10s\": no endpoints available for service \"istiod\""),
        "{}",
        refused.stderr
    );

    // kubectl delete waits for the namespace to go.
    t.kubectl("slow", &["create", "namespace", "doomed"], None);
    t.kubectl(
        "slow",
        &[
            "create",
            "configmap",
            "cm",
            "-n",
            "doomed",
            "--from-literal=a=b",
        ],
        None,
    );
    let started = Instant::now();
    let deleted = t.kubectl("slow", &["delete", "namespace", "doomed", "--wait"], None);
    assert!(deleted.contains("deleted"), "{deleted}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "kubectl returned while the namespace was terminating ({:?})",
        started.elapsed()
    );
    assert!(c.get("/api/v1/namespaces/doomed").is_none());

    // helm into a terminating namespace: the namespace "exists", its content is refused.
    t.kubectl("slow", &["create", "namespace", "doomed2"], None);
    t.kubectl(
        "slow",
        &["delete", "namespace", "doomed2", "--wait=false"],
        None,
    );
    let phase = t.kubectl(
        "slow",
        &[
            "get",
            "namespace",
            "doomed2",
            "-o",
            "jsonpath={.status.phase}",
        ],
        None,
    );
    assert_eq!(phase, "Terminating");
    let out = helm_install("late", &istio_chart("gateway"), "doomed2");
    assert!(!out.ok, "helm installed into a terminating namespace");
    assert!(
        out.stderr.contains(
            "unable to create new content in namespace doomed2 because it is being terminated"
        ),
        "{}",
        out.stderr
    );
    t.kubectl(
        "slow",
        &["wait", "--for=delete", "namespace/doomed2", "--timeout=20s"],
        None,
    );
    assert!(c.get("/api/v1/namespaces/doomed2").is_none());
}

#[test]
fn helm4_and_kubectl_1_35_wait_for_pods_rollouts_and_namespaces() {
    timing_with("helm4");
}

#[test]
fn helm3_and_kubectl_1_34_wait_for_pods_rollouts_and_namespaces() {
    timing_with("helm3");
}

#[test]
fn server_side_apply_keeps_field_managers_with_both_kubectls() {
    for set in ["helm4", "helm3"] {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let c = TestCluster::start("ssa", Options::default());
        write_kubeconfig(&kubeconfig, &[&c]).unwrap();
        let t = tools(set, &kubeconfig, dir.path());
        let cm = |x: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: default, labels: {{app: a}}}}\ndata: {{x: \"{x}\", z: \"1\"}}\n"
            )
        };
        let apply = |manager: &str, x: &str, force: bool| {
            let mut args = vec!["apply", "--server-side", "--field-manager", manager];
            if force {
                args.push("--force-conflicts");
            }
            args.extend(["-f", "-"]);
            t.kubectl_out("ssa", &args, Some(&cm(x)))
        };
        assert!(apply("a", "1", false).ok);
        assert!(apply("b", "1", false).ok, "the same values are shared");
        let refused = apply("b", "2", false);
        assert!(!refused.ok);
        assert!(
            refused
                .stderr
                .contains("Apply failed with 1 conflict: conflict with \"a\": .data.x"),
            "{set}: {}",
            refused.stderr
        );
        assert!(apply("b", "2", true).ok, "forced");
        t.kubectl(
            "ssa",
            &["patch", "configmap", "cm", "-p", "{\"data\":{\"z\":\"2\"}}"],
            None,
        );
        let got = t.kubectl_json(
            "ssa",
            &[
                "get",
                "configmap",
                "cm",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        );
        let managers: Vec<(String, String, Value)> = got["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["manager"].as_str().unwrap().to_string(),
                    m["operation"].as_str().unwrap().to_string(),
                    m["fieldsV1"].clone(),
                )
            })
            .collect();
        assert_eq!(
            managers,
            [
                (
                    "a".to_string(),
                    "Apply".to_string(),
                    json!({"f:metadata": {"f:labels": {"f:app": {}}}})
                ),
                (
                    "b".to_string(),
                    "Apply".to_string(),
                    json!({"f:data": {"f:x": {}}, "f:metadata": {"f:labels": {"f:app": {}}}})
                ),
                (
                    "kubectl-patch".to_string(),
                    "Update".to_string(),
                    json!({"f:data": {"f:z": {}}})
                ),
            ],
            "{set}"
        );
    }
}

#[test]
fn kubectl_creates_token_reviews_with_both_versions() {
    for set in ["helm4", "helm3"] {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let c = TestCluster::start("tr", Options::default());
        write_kubeconfig(&kubeconfig, &[&c]).unwrap();
        let t = tools(set, &kubeconfig, dir.path());
        let token = reader(&c);
        let review = |token: &str| {
            let manifest = format!(
                "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: {token}\n"
            );
            t.kubectl_json_stdin("tr", &["create", "-f", "-", "-o", "json"], &manifest)
        };
        let got = review(&token);
        assert_eq!(got["status"]["authenticated"], true, "{set}: {got}");
        assert_eq!(
            got["status"]["user"]["username"],
            format!("system:serviceaccount:{NS}:istio-reader-service-account")
        );
        assert_eq!(
            got["status"]["user"]["groups"][1],
            format!("system:serviceaccounts:{NS}")
        );
        c.delete(&format!("/api/v1/namespaces/{NS}/secrets/reader-token"))
            .unwrap();
        let got = review(&token);
        assert_eq!(got["status"]["authenticated"], false, "{set}: {got}");
        assert_eq!(
            got["status"]["error"],
            "[invalid bearer token, service account token has been invalidated]"
        );
    }
}

/// The reader role of `c` with or without `configmaps` (Istio 1.29 added them).
fn reader_reads_configmaps(c: &TestCluster, grant: bool) {
    let rbac =
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/istio-reader-clusterrole-istio-system";
    let mut role = c.get(rbac).unwrap();
    let resources = role["rules"][1]["resources"].as_array_mut().unwrap();
    resources.retain(|r| r != "configmaps");
    if grant {
        resources.push(json!("configmaps"));
    }
    put(c, rbac, role);
}

#[test]
fn a_1_29_istiod_syncs_a_peer_only_once_the_peers_reader_role_grants_configmaps() {
    for (image, syncs_at_once) in [
        ("docker.io/istio/pilot:1.29.0", false),
        ("docker.io/istio/pilot:1.28.1", true),
    ] {
        let options = Options {
            remote_cluster_timeout: Duration::from_secs(1),
            ..Options::default()
        };
        let c1 = TestCluster::start("c1", options.clone());
        let c2 = TestCluster::start("c2", options);
        control_plane_image(&c1, "cluster1", "n1", None, image);
        let token2 = control_plane_image(&c2, "cluster2", "n1", None, image);
        // The peer's reader role as the 1.28 charts render it.
        reader_reads_configmaps(&c2, false);
        remote_secret(
            &c1,
            "cluster2",
            "cluster2",
            &remote_kubeconfig(&c2, "cluster2", c2.ca_pem(), &token2),
        );
        if syncs_at_once {
            wait_sync(&c1, "cluster2", "synced");
            continue;
        }
        wait_sync(&c1, "cluster2", "timeout");
        // The peer's istiod chart upgraded to 1.29: its reader role grants configmaps.
        reader_reads_configmaps(&c2, true);
        wait_sync(&c1, "cluster2", "synced");
    }
}

/// The pods of Deployment `name` in namespace `ns`: the revision that injected each.
fn injected_revisions(c: &TestCluster, ns: &str, name: &str) -> Vec<String> {
    pods(c, ns)
        .iter()
        .filter(|p| {
            p["metadata"]["labels"]["app"] == name && p["metadata"]["deletionTimestamp"].is_null()
        })
        .map(|p| {
            let status = p["metadata"]["annotations"]["sidecar.istio.io/status"]
                .as_str()
                .unwrap_or("{}");
            let v: Value = serde_json::from_str(status).unwrap();
            v["revision"].as_str().unwrap_or("none").to_string()
        })
        .collect()
}

/// Installs Istio's charts of two Istio versions as a canary upgrade does (the second as
/// revision `1-29`), and moves the tag `stable` from the first to the second.
fn a_revision_tag_moves_injection_to_the_canary(set: &str) {
    let c = TestCluster::start("c1", Options::default());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, &[&c]).unwrap();
    let t = tools(set, &kubeconfig, dir.path());
    let (old, new) = (
        meshup_testcluster::istio_charts(meshup_testcluster::ISTIO_FROM),
        meshup_testcluster::istio_charts(meshup_testcluster::ISTIO_TO),
    );
    let chart = |d: &Path, name: &str| d.join(name).to_str().unwrap().to_string();
    let install = |release: &str, chart: &str, extra: &[&str]| {
        let mut args = vec![
            "upgrade",
            "--install",
            release,
            chart,
            "-n",
            NS,
            "--create-namespace",
            "--wait",
            "--timeout",
            "60s",
        ];
        args.extend_from_slice(extra);
        t.helm("c1", &args);
    };
    install("istio-base", &chart(&old, "base"), &[]);
    install(
        "istiod",
        &chart(&old, "istiod"),
        &["--set", "revisionTags={stable}"],
    );
    install(
        "istiod-1-29",
        &chart(&new, "istiod"),
        &["--set", "revision=1-29"],
    );
    let image = |rev: &str| {
        let d = c
            .get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/{rev}"))
            .unwrap();
        d["spec"]["template"]["spec"]["containers"][0]["image"].clone()
    };
    assert_eq!(
        image("istiod"),
        format!("docker.io/istio/pilot:{}", meshup_testcluster::ISTIO_FROM)
    );
    assert_eq!(
        image("istiod-1-29"),
        format!("docker.io/istio/pilot:{}", meshup_testcluster::ISTIO_TO)
    );

    put(
        &c,
        "/api/v1/namespaces/app",
        json!({"metadata": {"labels": {"istio.io/rev": "stable"}}}),
    );
    let web = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: app}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: web}]\n";
    t.kubectl("c1", &["apply", "-f", "-"], Some(web));
    wait_rolled_out(&c, "app", "web");
    assert_eq!(injected_revisions(&c, "app", "web"), ["default"], "{set}");

    // Move the tag: off the old revision, onto the canary; new pods go to 1-29.
    install(
        "istiod",
        &chart(&old, "istiod"),
        &["--set", "revisionTags=null"],
    );
    install(
        "istiod-1-29",
        &chart(&new, "istiod"),
        &["--set", "revision=1-29", "--set", "revisionTags={stable}"],
    );
    let tag = c
        .get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-revision-tag-stable")
        .expect("the tag's webhooks");
    assert_eq!(tag["metadata"]["labels"]["istio.io/rev"], "1-29");
    assert_eq!(
        tag["webhooks"][0]["clientConfig"]["service"]["name"],
        "istiod-1-29"
    );
    t.kubectl(
        "c1",
        &["rollout", "restart", "deployment/web", "-n", "app"],
        None,
    );
    t.kubectl(
        "c1",
        &[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            "app",
            "--timeout=30s",
        ],
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while injected_revisions(&c, "app", "web") != ["1-29"] {
        assert!(
            Instant::now() < deadline,
            "{set}: {:?}",
            injected_revisions(&c, "app", "web")
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Without a ready istiod behind the tag, a new pod is refused (failurePolicy Fail).
    t.kubectl(
        "c1",
        &["scale", "deployment/istiod-1-29", "-n", NS, "--replicas=0"],
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while pods(&c, NS)
        .iter()
        .any(|p| p["metadata"]["labels"]["istio.io/rev"] == "1-29")
    {
        assert!(Instant::now() < deadline, "{set}: istiod-1-29 still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: one, namespace: app}\nspec:\n  containers: [{name: web, image: web}]\n";
    let out = t.kubectl_out("c1", &["create", "-f", "-"], Some(pod));
    assert!(!out.ok, "{set}: {}", out.stdout);
    assert!(
        out.stderr.contains(
            "Internal error occurred: failed calling webhook \"rev.namespace.sidecar-injector.istio.io\": failed to call webhook: Post \"https://istiod-1-29.istio-system.svc:443/inject?timeout=10s\": no endpoints available for service \"istiod-1-29\""
        ),
        "{set}: {}",
        out.stderr
    );
}

#[test]
fn helm4_a_revision_tag_moves_injection_to_the_canary() {
    a_revision_tag_moves_injection_to_the_canary("helm4");
}

#[test]
fn helm3_a_revision_tag_moves_injection_to_the_canary() {
    a_revision_tag_moves_injection_to_the_canary("helm3");
}

/// The ambient profile's charts with one tool set: istiod, then the istio-cni and ztunnel
/// DaemonSets, installed and upgraded with `--wait`; `kubectl rollout status` agrees.
fn ambient_node_agents(set: &str) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let t = tools(set, &kubeconfig, &home);
    let c = TestCluster::start(
        "ambient",
        Options {
            pod_ready_delay: Duration::from_millis(800),
            ..Options::default()
        },
    );
    write_kubeconfig(&kubeconfig, &[&c]).unwrap();
    let charts = meshup_testcluster::istio_charts(meshup_testcluster::ISTIO_FROM);
    let chart = |name: &str| charts.join(name).to_str().unwrap().to_string();
    let ctx = "ambient";
    let common = [
        "--namespace",
        NS,
        "--create-namespace",
        "--wait",
        "--timeout",
        "60s",
    ];
    let install = |release: &str, name: &str, sets: &[&str]| {
        let chart = chart(name);
        let mut args = vec!["upgrade", "--install", release, chart.as_str()];
        args.extend_from_slice(&common);
        for s in sets {
            args.extend_from_slice(&["--set", s]);
        }
        t.helm(ctx, &args);
    };
    let ambient = [
        "profile=ambient",
        "global.multiCluster.clusterName=ambient",
        "global.network=net1",
    ];
    install("istiod", "istiod", &ambient);
    install("istio-cni", "cni", &["profile=ambient"]);
    let started = Instant::now();
    install(
        "ztunnel",
        "ztunnel",
        &["multiCluster.clusterName=ambient", "global.network=net1"],
    );
    let ds = |name: &str| t.kubectl_json(ctx, &["get", "daemonset", name, "-n", NS, "-o", "json"]);
    let ztunnel = ds("ztunnel");
    // ztunnel's RollingUpdate (maxSurge 1, maxUnavailable 0) makes both helm 3 and helm 4
    // wait for a ready pod.
    assert_eq!(ztunnel["status"]["numberReady"], 1, "{ztunnel}");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "helm waited for readiness"
    );
    let env = &ztunnel["spec"]["template"]["spec"]["containers"][0]["env"];
    let var = |n: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .map(|e| e["value"].clone())
    };
    assert_eq!(var("ISTIO_META_CLUSTER_ID"), Some(json!("ambient")));
    assert_eq!(var("NETWORK"), Some(json!("net1")));
    assert_eq!(
        var("XDS_ADDRESS"),
        Some(json!("istiod.istio-system.svc:15012"))
    );
    // The cni chart keeps maxUnavailable 1: on one node helm 3 expects 0 ready pods, so
    // `kubectl rollout status` is what waits for the node agent.
    let rollout = t.kubectl(
        ctx,
        &[
            "rollout",
            "status",
            "daemonset/istio-cni-node",
            "-n",
            NS,
            "--timeout=30s",
        ],
        None,
    );
    assert!(rollout.contains("successfully rolled out"), "{rollout}");
    let cni = ds("istio-cni-node");
    assert_eq!(cni["status"]["numberAvailable"], 1, "{cni}");
    let config = t.kubectl_json(
        ctx,
        &[
            "get",
            "configmap",
            "istio-cni-config",
            "-n",
            NS,
            "-o",
            "json",
        ],
    );
    assert_eq!(config["data"]["AMBIENT_ENABLED"], "true");

    // A new template rolls out: the new ztunnel pod next to the old one, then alone.
    install(
        "ztunnel",
        "ztunnel",
        &[
            "multiCluster.clusterName=ambient",
            "global.network=net1",
            "tag=1.28.2",
        ],
    );
    let ztunnel = ds("ztunnel");
    assert_eq!(ztunnel["status"]["updatedNumberScheduled"], 1, "{ztunnel}");
    assert_eq!(ztunnel["status"]["numberReady"], 1, "{ztunnel}");
    let rollout = t.kubectl(
        ctx,
        &[
            "rollout",
            "status",
            "daemonset/ztunnel",
            "-n",
            NS,
            "--timeout=30s",
        ],
        None,
    );
    assert!(rollout.contains("successfully rolled out"), "{rollout}");
    let pods = t.kubectl_json(
        ctx,
        &["get", "pods", "-n", NS, "-l", "app=ztunnel", "-o", "json"],
    );
    let images: Vec<&str> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap())
        .collect();
    assert_eq!(images, ["docker.io/istio/ztunnel:1.28.2"]);
}

#[test]
fn helm4_installs_and_upgrades_the_ambient_daemonsets_with_wait() {
    ambient_node_agents("helm4");
}

#[test]
fn helm3_installs_and_upgrades_the_ambient_daemonsets_with_wait() {
    ambient_node_agents("helm3");
}

/// The east-west Gateway that `samples/multicluster/gen-eastwest-gateway.sh --ambient` prints
/// for `network`.
fn east_west_gateway(network: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: istio-eastwestgateway
  namespace: istio-system
  labels:
    topology.istio.io/network: \"{network}\"
spec:
  gatewayClassName: istio-east-west
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
    tls:
      mode: Terminate
      options:
        gateway.istio.io/tls-terminate-mode: ISTIO_MUTUAL
"
    )
}

/// istiod with the ambient profile (and `AMBIENT_ENABLE_MULTI_NETWORK` when `multi_network`),
/// the Gateway API CRDs applied server-side, the east-west Gateway applied; then what
/// `kubectl wait --for=condition=Programmed` sees.
fn east_west(c: &TestCluster, multi_network: bool) -> (Tools, tempfile::TempDir) {
    let (dir, t) = kubectl_env(&[c]);
    let ctx = c.name();
    let charts = meshup_testcluster::istio_charts(meshup_testcluster::ISTIO_FROM);
    let istiod = charts.join("istiod");
    let mut args = vec![
        "install",
        "istiod",
        istiod.to_str().unwrap(),
        "-n",
        NS,
        "--create-namespace",
        "--wait",
        "--set",
        "profile=ambient",
        "--set",
        "global.network=net1",
    ];
    if multi_network {
        args.extend_from_slice(&["--set", "pilot.env.AMBIENT_ENABLE_MULTI_NETWORK=true"]);
    }
    t.helm(ctx, &args);
    let crds = meshup_testcluster::istio_gateway_api_crds(meshup_testcluster::ISTIO_FROM);
    t.kubectl(
        ctx,
        &["apply", "--server-side", "-f", crds.to_str().unwrap()],
        None,
    );
    let crd = t.kubectl_json(
        ctx,
        &[
            "get",
            "crd",
            "gateways.gateway.networking.k8s.io",
            "-o",
            "json",
        ],
    );
    assert_eq!(
        crd["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"],
        meshup_testcluster::gateway_api_for_istio(meshup_testcluster::ISTIO_FROM).unwrap()
    );
    t.kubectl(
        ctx,
        &["apply", "--server-side", "-f", "-"],
        Some(&east_west_gateway("net1")),
    );
    (t, dir)
}

#[test]
fn an_ambient_istiod_programs_the_east_west_gateway_once_its_load_balancer_has_an_address() {
    let c = TestCluster::start(
        "eastwest",
        Options {
            load_balancer: false,
            ..Options::default()
        },
    );
    let (t, _dir) = east_west(&c, true);
    let ctx = c.name();
    let classes = t.kubectl_json(ctx, &["get", "gatewayclasses", "-o", "json"]);
    assert_eq!(
        names(&classes),
        ["istio", "istio-east-west", "istio-remote", "istio-waypoint"]
    );
    let gw = |t: &Tools| {
        t.kubectl_json(
            ctx,
            &[
                "get",
                "gateway",
                "istio-eastwestgateway",
                "-n",
                NS,
                "-o",
                "json",
            ],
        )
    };
    // istiod deploys it; without a load balancer it is not programmed.
    t.kubectl(
        ctx,
        &[
            "rollout",
            "status",
            "deployment/istio-eastwestgateway",
            "-n",
            NS,
            "--timeout=30s",
        ],
        None,
    );
    let not_yet = t.kubectl_out(
        ctx,
        &[
            "wait",
            "--for=condition=Programmed",
            "gateway/istio-eastwestgateway",
            "-n",
            NS,
            "--timeout=1s",
        ],
        None,
    );
    assert!(!not_yet.ok, "{}", not_yet.stdout);
    let pending = gw(&t);
    assert_eq!(
        pending["status"]["conditions"][1]["reason"], "AddressNotAssigned",
        "{pending}"
    );
    let svc = t.kubectl_json(
        ctx,
        &[
            "get",
            "service",
            "istio-eastwestgateway",
            "-n",
            NS,
            "-o",
            "json",
        ],
    );
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(
        pending["status"]["addresses"],
        json!([{"type": "IPAddress", "value": svc["spec"]["clusterIP"]}]),
        "the cluster IP while the load balancer is pending"
    );
    c.set_load_balancer(true);
    t.kubectl(
        ctx,
        &[
            "wait",
            "--for=condition=Programmed",
            "gateway/istio-eastwestgateway",
            "-n",
            NS,
            "--timeout=30s",
        ],
        None,
    );
    let done = gw(&t);
    let svc = t.kubectl_json(
        ctx,
        &[
            "get",
            "service",
            "istio-eastwestgateway",
            "-n",
            NS,
            "-o",
            "json",
        ],
    );
    assert_eq!(
        done["status"]["addresses"],
        json!([{"type": "IPAddress", "value": svc["status"]["loadBalancer"]["ingress"][0]["ip"]}])
    );
    assert_eq!(
        done["metadata"]["annotations"]["gateway.istio.io/controller-version"],
        "5"
    );
    // Deleting the Gateway takes what istiod made for it.
    t.kubectl(
        ctx,
        &["delete", "gateway", "istio-eastwestgateway", "-n", NS],
        None,
    );
    let left = t.kubectl_json(
        ctx,
        &["get", "deployments,services", "-n", NS, "-o", "json"],
    );
    assert!(
        !names(&left).contains(&"istio-eastwestgateway".to_string()),
        "{left}"
    );
}

#[test]
fn a_host_name_load_balancer_gives_the_gateway_a_hostname_address() {
    let c = TestCluster::start(
        "eastwest-elb",
        Options {
            load_balancer_hostname: true,
            ..Options::default()
        },
    );
    let (t, _dir) = east_west(&c, true);
    let ctx = c.name();
    t.kubectl(
        ctx,
        &[
            "wait",
            "--for=condition=Programmed",
            "gateway/istio-eastwestgateway",
            "-n",
            NS,
            "--timeout=30s",
        ],
        None,
    );
    let gw = t.kubectl_json(
        ctx,
        &[
            "get",
            "gateway",
            "istio-eastwestgateway",
            "-n",
            NS,
            "-o",
            "json",
        ],
    );
    let address = &gw["status"]["addresses"][0];
    assert_eq!(address["type"], "Hostname", "{gw}");
    assert!(
        address["value"]
            .as_str()
            .unwrap()
            .ends_with(".elb.us-east-1.amazonaws.com")
    );
}

#[test]
fn without_ambient_multi_network_istiod_ignores_the_east_west_gateway() {
    let c = TestCluster::start("eastwest-off", Options::default());
    let (t, _dir) = east_west(&c, false);
    let ctx = c.name();
    std::thread::sleep(Duration::from_millis(600));
    let gw = t.kubectl_json(
        ctx,
        &[
            "get",
            "gateway",
            "istio-eastwestgateway",
            "-n",
            NS,
            "-o",
            "json",
        ],
    );
    assert!(gw["status"].get("conditions").is_none(), "{gw}");
    let classes = t.kubectl_json(ctx, &["get", "gatewayclasses", "-o", "json"]);
    assert_eq!(names(&classes), ["istio", "istio-remote", "istio-waypoint"]);
    let deployments = t.kubectl_json(ctx, &["get", "deployments", "-n", NS, "-o", "json"]);
    assert_eq!(names(&deployments), ["istiod"]);
}

/// One cluster of an ambient multi-network mesh, installed with the fixture charts (helm 4):
/// network label, `cacerts` with `root`, istiod (`profile: ambient`,
/// `AMBIENT_ENABLE_MULTI_NETWORK`), istio-cni, ztunnel with `ztunnel_sets`, the Gateway API
/// CRDs and the east-west Gateway; returns the reader token.
fn ambient_cluster(
    t: &Tools,
    c: &TestCluster,
    id: &str,
    network: &str,
    ztunnel_sets: &[&str],
) -> String {
    let ns = format!("/api/v1/namespaces/{NS}");
    put(
        c,
        &ns,
        json!({"metadata": {"labels": {"topology.istio.io/network": network}}}),
    );
    let b64 = |s: &str| STANDARD.encode(s);
    put(
        c,
        &format!("{ns}/secrets/cacerts"),
        json!({"data": {"ca-cert.pem": b64(&format!("ca of {id}")), "ca-key.pem": b64("key"),
                        "root-cert.pem": b64("root"), "cert-chain.pem": b64("chain")}}),
    );
    let charts = meshup_testcluster::istio_charts(meshup_testcluster::ISTIO_FROM);
    let chart = |n: &str| charts.join(n).to_str().unwrap().to_string();
    let cluster_name = format!("global.multiCluster.clusterName={id}");
    let network_set = format!("global.network={network}");
    let ctx = c.name();
    let install = |release: &str, name: &str, sets: &[&str]| {
        let chart = chart(name);
        let mut args = vec![
            "upgrade",
            "--install",
            release,
            chart.as_str(),
            "-n",
            NS,
            "--wait",
            "--timeout",
            "30s",
        ];
        for s in sets {
            args.extend_from_slice(&["--set", s]);
        }
        t.helm(ctx, &args);
    };
    install("istio-base", "base", &[]);
    install(
        "istiod",
        "istiod",
        &[
            "profile=ambient",
            "pilot.env.AMBIENT_ENABLE_MULTI_NETWORK=true",
            &cluster_name,
            &network_set,
        ],
    );
    put(
        c,
        &format!("{ns}/secrets/reader-token"),
        json!({"type": "kubernetes.io/service-account-token", "metadata": {"annotations": {
            "kubernetes.io/service-account.name": "istio-reader-service-account"}}}),
    );
    let token = wait_token(c, NS, "reader-token");
    install("istio-cni", "cni", &["profile=ambient"]);
    install("ztunnel", "ztunnel", ztunnel_sets);
    let crds = meshup_testcluster::istio_gateway_api_crds(meshup_testcluster::ISTIO_FROM);
    t.kubectl(
        ctx,
        &["apply", "--server-side", "-f", crds.to_str().unwrap()],
        None,
    );
    t.kubectl(
        ctx,
        &["apply", "--server-side", "-f", "-"],
        Some(&east_west_gateway(network)),
    );
    t.kubectl(
        ctx,
        &[
            "wait",
            "--for=condition=Programmed",
            "gateways.gateway.networking.k8s.io/istio-eastwestgateway",
            "-n",
            NS,
            "--timeout=30s",
        ],
        None,
    );
    token
}

/// helloworld `version` in the ambient namespace `meshup-verify`, its Service GLOBAL.
fn ambient_helloworld(c: &TestCluster, version: &str) {
    let ns = "/api/v1/namespaces/meshup-verify";
    put(
        c,
        ns,
        json!({"metadata": {"labels": {"istio.io/dataplane-mode": "ambient"}}}),
    );
    put(
        c,
        &format!("{ns}/services/helloworld"),
        json!({"metadata": {"labels": {"app": "helloworld", "istio.io/global": "true"}},
               "spec": {"selector": {"app": "helloworld"}, "ports": [{"name": "http", "port": 5000}]}}),
    );
    put(
        c,
        &format!("/apis/apps/v1/namespaces/meshup-verify/deployments/helloworld-{version}"),
        json!({"spec": {"selector": {"matchLabels": {"app": "helloworld", "version": version}},
            "template": {"metadata": {"labels": {"app": "helloworld", "version": version}},
                "spec": {"containers": [{"name": "helloworld", "image": "helloworld",
                    "env": [{"name": "SERVICE_VERSION", "value": version}]}]}}}}),
    );
    wait_rolled_out(c, "meshup-verify", &format!("helloworld-{version}"));
}

#[test]
fn ambient_clients_reach_a_global_service_across_networks_through_the_east_west_gateways() {
    let c1 = TestCluster::start("amb1", Options::default());
    let c2 = TestCluster::start("amb2", Options::default());
    let (_dir, t) = kubectl_env(&[&c1, &c2]);
    let token1 = ambient_cluster(
        &t,
        &c1,
        "cluster1",
        "net1",
        &["multiCluster.clusterName=cluster1", "network=net1"],
    );
    let token2 = ambient_cluster(
        &t,
        &c2,
        "cluster2",
        "net2",
        &["multiCluster.clusterName=cluster2", "network=net2"],
    );
    remote_secret(
        &c1,
        "cluster2",
        "cluster2",
        &remote_kubeconfig(&c2, "cluster2", c2.ca_pem(), &token2),
    );
    remote_secret(
        &c2,
        "cluster1",
        "cluster1",
        &remote_kubeconfig(&c1, "cluster1", c1.ca_pem(), &token1),
    );
    ambient_helloworld(&c1, "v1");
    ambient_helloworld(&c2, "v2");
    wait_sync(&c1, "cluster2", "synced");
    wait_sync(&c2, "cluster1", "synced");

    let pod = |c: &TestCluster| {
        c.list("/api/v1/namespaces/meshup-verify/pods")
            .into_iter()
            .find(|p| p["metadata"]["labels"]["app"] == "helloworld")
            .unwrap()
    };
    assert!(
        pod(&c1)["metadata"]["annotations"]["sidecar.istio.io/status"].is_null(),
        "an ambient namespace gets no sidecar"
    );
    let lines = curl_job(&t, "amb1", "curl", 4);
    for v in ["v1", "v2"] {
        assert!(
            lines.iter().any(|l| l.contains(&format!("version: {v}"))),
            "{v}: {lines:?}"
        );
    }
    assert!(!lines.iter().any(|l| l == "request failed"), "{lines:?}");
    let back = curl_job(&t, "amb2", "curl", 4);
    assert!(back.iter().any(|l| l.contains("version: v1")), "{back:?}");

    // A Service that is not GLOBAL stays in its cluster.
    put(
        &c2,
        "/api/v1/namespaces/meshup-verify/services/helloworld",
        json!({"metadata": {"labels": {"app": "helloworld"}},
               "spec": {"selector": {"app": "helloworld"}, "ports": [{"name": "http", "port": 5000}]}}),
    );
    let lines = curl_job(&t, "amb1", "curl-local", 4);
    assert!(lines.iter().all(|l| l.contains("version: v1")), "{lines:?}");
    ambient_helloworld(&c2, "v2");

    // ztunnel on the wrong network: the remote endpoint fails, the local one answers.
    let chart = PathBuf::from(istio_chart("ztunnel"));
    t.helm(
        "amb1",
        &[
            "upgrade",
            "ztunnel",
            chart.to_str().unwrap(),
            "-n",
            NS,
            "--wait",
            "--timeout",
            "30s",
            "--set",
            "multiCluster.clusterName=cluster1",
        ],
    );
    let lines = curl_job(&t, "amb1", "curl-no-network", 4);
    assert!(lines.iter().any(|l| l.contains("version: v1")), "{lines:?}");
    assert!(lines.iter().any(|l| l == "request failed"), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("version: v2")),
        "{lines:?}"
    );

    // ztunnel claiming another cluster id: istiod refuses it, the new pod never turns Ready
    // and the rollout (maxUnavailable 0) keeps the old one.
    let upgrade = t.run(
        &t.helm,
        &[
            "upgrade",
            "ztunnel",
            chart.to_str().unwrap(),
            "-n",
            NS,
            "--wait",
            "--timeout",
            "3s",
            "--set",
            "network=net1",
            "--kubeconfig",
            t.kubeconfig.to_str().unwrap(),
            "--kube-context",
            "amb1",
        ],
        None,
    );
    assert!(!upgrade.ok, "{}", upgrade.stdout);
    let ds = t.kubectl_json(
        "amb1",
        &["get", "daemonset", "ztunnel", "-n", NS, "-o", "json"],
    );
    assert_eq!(ds["status"]["updatedNumberScheduled"], json!(null), "{ds}");
    assert_eq!(ds["status"]["numberReady"], 1, "{ds}");
}
