//! Probes: the same request, through the real kubectl, to a real API server (the truth) and to
//! the emulator of `tests/testcluster` (`meshup_testcluster::TestCluster`), expecting the same
//! answer: status code, reason and message (digits masked: resource versions, addresses and
//! times differ between the two). Every divergence is collected and the test fails with the
//! whole list, so an emulator leniency the e2e tier relies on is found by a test.
//! tests/testcluster/REALISM.md ("Probed against the real tier") records what they found.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use meshup_testcluster::{Options, TestCluster, write_kubeconfig};
use serde_json::{Value, json};

use crate::common::*;

/// One API server the probes talk to.
struct Side {
    name: &'static str,
    kubeconfig: PathBuf,
    context: String,
    tools: PathBuf,
}

/// What an API server answered, as kubectl logged it at `-v=8`.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    code: u16,
    reason: String,
    message: String,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {:?}", self.code, self.reason, self.message)
    }
}

impl Side {
    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut c = Command::new(self.tools.join(tool));
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        if tool == "helm" {
            c.args(["--kube-context", &self.context]);
        } else {
            c.args(["--context", &self.context, "--request-timeout", "30s"]);
        }
        c.args(args);
        c
    }

    fn run(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut child = self
            .command(tool, args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tool runs");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// A setup step: must succeed.
    fn must(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(tool, args, stdin);
        assert!(
            out.status.success(),
            "[{}] {tool} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl with `-v=8`: the status of the last response, and its `Status` body's reason
    /// and message when it has one.
    fn ask(&self, args: &[&str], stdin: Option<&str>) -> Answer {
        let mut all = args.to_vec();
        all.push("-v=8");
        let out = self.run("kubectl", &all, stdin);
        let log = String::from_utf8_lossy(&out.stderr);
        let code = log
            .lines()
            .filter(|l| l.contains("\"Response\" "))
            .filter_map(|l| l.split("status=\"").nth(1))
            .filter_map(|s| s.get(..3)?.parse().ok())
            .next_back()
            .unwrap_or_else(|| panic!("[{}] no response in kubectl's log:\n{log}", self.name));
        let mut lines = log.lines();
        let mut body = None;
        // klog prints a body ending in a newline as `body=<` and the lines after it, one
        // without as a quoted string.
        while let Some(l) = lines.next() {
            if l.contains("\"Response Body\" body=<") {
                body = lines.next().map(|b| b.trim().to_string());
            } else if let Some((_, quoted)) = l.split_once("\"Response Body\" body=") {
                body = serde_json::from_str::<String>(quoted).ok();
            }
        }
        let status: Value = body
            .and_then(|b| serde_json::from_str(&b).ok())
            .filter(|v: &Value| v["kind"] == "Status")
            .unwrap_or(Value::Null);
        Answer {
            code,
            reason: status["reason"].as_str().unwrap_or("").to_string(),
            message: status["message"].as_str().unwrap_or("").to_string(),
        }
    }
}

/// Digits masked: resource versions, IPs and times are each server's own.
fn masked(a: &Answer) -> Answer {
    let mut message = String::new();
    let mut in_digits = false;
    for c in a.message.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                message.push('#');
            }
            in_digits = true;
        } else {
            message.push(c);
            in_digits = false;
        }
    }
    Answer {
        message,
        ..a.clone()
    }
}

/// A probe: setup on both sides (must succeed), then one request whose answers are compared;
/// the real answer must have the status the probe is about.
struct Probe {
    name: &'static str,
    setup: Vec<(Vec<String>, Option<String>)>,
    request: (Vec<String>, Option<String>),
    real_code: u16,
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn create(obj: Value) -> (Vec<String>, Option<String>) {
    (args("create --validate=false -f -"), Some(obj.to_string()))
}

fn probe(name: &'static str, real_code: u16, request: (Vec<String>, Option<String>)) -> Probe {
    Probe {
        name,
        setup: vec![],
        request,
        real_code,
    }
}

impl Probe {
    fn after(mut self, step: (Vec<String>, Option<String>)) -> Probe {
        self.setup.push(step);
        self
    }
}

const NSP: &str = "probes";

fn cm(name: &str, extra: Value) -> Value {
    let mut o = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NSP}, "data": {"a": "b"}});
    if let (Some(o), Some(extra)) = (o.as_object_mut(), extra.as_object()) {
        o.extend(extra.clone());
    }
    o
}

fn crd(plural: &str, kind: &str, status: bool) -> Value {
    let mut version = json!({"name": "v1", "served": true, "storage": true,
        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}});
    if status {
        version["subresources"] = json!({"status": {}});
    }
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.probe.example.com")},
        "spec": {"group": "probe.example.com", "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind},
            "versions": [version]}})
}

fn widget(kind: &str, name: &str) -> Value {
    json!({"apiVersion": "probe.example.com/v1", "kind": kind,
        "metadata": {"name": name, "namespace": NSP}, "spec": {"a": 1}})
}

/// The table: API answers the issue named as leniencies, and rows of REALISM.md the real tier
/// reaches.
fn probes() -> Vec<Probe> {
    let raw = |verb: &str, path: &str| args(&format!("{verb} --raw {path}"));
    let ns_path = format!("/api/v1/namespaces/{NSP}");
    vec![
        // Immutable fields → 422.
        probe(
            "service_cluster_ip_is_immutable",
            422,
            (
                args(r#"patch service s1 -n probes -p {"spec":{"clusterIP":"10.96.199.199"}}"#),
                None,
            ),
        )
        .after(create(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s1", "namespace": NSP},
            "spec": {"ports": [{"port": 80}], "selector": {"app": "s1"}}}))),
        probe(
            "secret_type_is_immutable",
            422,
            (
                args(r#"patch secret sec1 -n probes -p {"type":"example.com/other"}"#),
                None,
            ),
        )
        .after(create(json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "sec1", "namespace": NSP}, "data": {"a": "Yg=="}}))),
        probe(
            "deployment_selector_is_immutable",
            422,
            (
                args(
                    r#"patch deployment d1 -n probes -p {"spec":{"selector":{"matchLabels":{"app":"other"}},"template":{"metadata":{"labels":{"app":"other"}}}}}"#,
                ),
                None,
            ),
        )
        .after(create(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d1", "namespace": NSP},
            "spec": {"selector": {"matchLabels": {"app": "d1"}},
                "template": {"metadata": {"labels": {"app": "d1"}},
                    "spec": {"containers": [{"name": "c", "image": "x"}]}}}}))),
        probe(
            "immutable_config_map_keeps_its_data",
            422,
            (args(r#"patch configmap im1 -n probes -p {"data":{"a":"c"}}"#), None),
        )
        .after(create(cm("im1", json!({"immutable": true})))),
        probe(
            "immutable_config_map_stays_immutable",
            422,
            (args(r#"patch configmap im2 -n probes -p {"immutable":false}"#), None),
        )
        .after(create(cm("im2", json!({"immutable": true})))),
        probe(
            "mutable_config_map_changes",
            200,
            (args(r#"patch configmap m1 -n probes -p {"data":{"a":"c"}}"#), None),
        )
        .after(create(cm("m1", json!({})))),
        // A PUT whose body names another object than the URL → 400.
        probe(
            "put_naming_another_object",
            400,
            (
                raw("replace", &format!("{ns_path}/configmaps/p1")).into_iter().chain(args("-f -")).collect(),
                Some(cm("p2", json!({})).to_string()),
            ),
        )
        .after(create(cm("p1", json!({})))),
        probe(
            "put_naming_another_namespace",
            400,
            (
                raw("replace", &format!("{ns_path}/configmaps/p3")).into_iter().chain(args("-f -")).collect(),
                Some({
                    let mut o = cm("p3", json!({}));
                    o["metadata"]["namespace"] = json!("default");
                    o.to_string()
                }),
            ),
        )
        .after(create(cm("p3", json!({})))),
        // Custom resources: strategic merge patch → 415; merge patch works; created right
        // after its CRD; an existing one named with its group.
        probe(
            "strategic_merge_patch_on_a_custom_resource",
            415,
            (
                args(r#"patch widget w1 -n probes --type=strategic -p {"spec":{"a":2}}"#),
                None,
            ),
        )
        .after(create(widget("Widget", "w1"))),
        probe(
            "merge_patch_on_a_custom_resource",
            200,
            (
                args(r#"patch widget w1 -n probes --type=merge -p {"spec":{"a":3}}"#),
                None,
            ),
        ),
        probe(
            "custom_resource_that_exists",
            409,
            (
                raw("create", "/apis/probe.example.com/v1/namespaces/probes/widgets")
                    .into_iter()
                    .chain(args("-f -"))
                    .collect(),
                Some(widget("Widget", "w1").to_string()),
            ),
        ),
        probe(
            "custom_resource_right_after_its_crd",
            201,
            (
                raw("create", "/apis/probe.example.com/v1/namespaces/probes/gadgets")
                    .into_iter()
                    .chain(args("-f -"))
                    .collect(),
                Some(widget("Gadget", "g1").to_string()),
            ),
        )
        .after(create(crd("gadgets", "Gadget", false))),
        // resourceVersions the server has not reached.
        probe(
            "list_from_a_future_resource_version",
            504,
            (
                raw(
                    "get",
                    &format!("{ns_path}/configmaps?resourceVersion=999999999"),
                ),
                None,
            ),
        ),
        probe(
            "watch_from_a_future_resource_version",
            200,
            (
                raw(
                    "get",
                    &format!("{ns_path}/configmaps?watch=true&resourceVersion=999999999&timeoutSeconds=2"),
                ),
                None,
            ),
        ),
        probe(
            "watch_from_resource_version_1",
            200,
            (
                raw(
                    "get",
                    &format!("{ns_path}/configmaps?watch=true&resourceVersion=1&timeoutSeconds=1"),
                ),
                None,
            ),
        ),
        // Subresources a kind does not have → 404.
        probe(
            "get_status_of_a_config_map",
            404,
            (raw("get", &format!("{ns_path}/configmaps/m1/status")), None),
        ),
        probe(
            "put_status_of_a_config_map",
            404,
            (
                raw("replace", &format!("{ns_path}/configmaps/m1/status"))
                    .into_iter()
                    .chain(args("-f -"))
                    .collect(),
                Some(cm("m1", json!({})).to_string()),
            ),
        ),
        probe(
            "post_status_of_a_config_map",
            404,
            (
                raw("create", &format!("{ns_path}/configmaps/m1/status"))
                    .into_iter()
                    .chain(args("-f -"))
                    .collect(),
                Some(cm("m1", json!({})).to_string()),
            ),
        ),
        probe(
            "status_of_a_custom_resource_without_the_subresource",
            404,
            (
                raw("get", "/apis/probe.example.com/v1/namespaces/probes/widgets/w1/status"),
                None,
            ),
        ),
        probe(
            "status_of_a_deployment",
            200,
            (raw("get", "/apis/apps/v1/namespaces/probes/deployments/d1/status"), None),
        ),
        // REALISM.md rows: leases, preconditions, TokenReview, a missing namespace.
        probe(
            "lease_update_without_resource_version",
            422,
            (
                raw(
                    "replace",
                    "/apis/coordination.k8s.io/v1/namespaces/probes/leases/l1",
                )
                .into_iter()
                .chain(args("-f -"))
                .collect(),
                Some(
                    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": "l1", "namespace": NSP}, "spec": {"holderIdentity": "b"}})
                    .to_string(),
                ),
            ),
        )
        .after(create(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "l1", "namespace": NSP}, "spec": {"holderIdentity": "a"}}))),
        probe(
            "lease_update_with_a_stale_resource_version",
            409,
            (
                raw(
                    "replace",
                    "/apis/coordination.k8s.io/v1/namespaces/probes/leases/l1",
                )
                .into_iter()
                .chain(args("-f -"))
                .collect(),
                Some(
                    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": "l1", "namespace": NSP, "resourceVersion": "1"},
                        "spec": {"holderIdentity": "b"}})
                    .to_string(),
                ),
            ),
        ),
        probe(
            "delete_with_a_stale_precondition",
            409,
            (
                raw(
                    "delete",
                    "/apis/coordination.k8s.io/v1/namespaces/probes/leases/l1",
                )
                .into_iter()
                .chain(args("-f -"))
                .collect(),
                Some(
                    json!({"apiVersion": "v1", "kind": "DeleteOptions",
                        "preconditions": {"resourceVersion": "1"}})
                    .to_string(),
                ),
            ),
        ),
        probe(
            "token_review_without_a_token",
            400,
            (
                raw("create", "/apis/authentication.k8s.io/v1/tokenreviews")
                    .into_iter()
                    .chain(args("-f -"))
                    .collect(),
                Some(
                    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "spec": {"token": ""}})
                    .to_string(),
                ),
            ),
        ),
        probe(
            "write_into_a_missing_namespace",
            404,
            (
                raw("create", "/api/v1/namespaces/nowhere/configmaps")
                    .into_iter()
                    .chain(args("-f -"))
                    .collect(),
                Some(cm("x", json!({"metadata": {"name": "x", "namespace": "nowhere"}})).to_string()),
            ),
        ),
    ]
}

/// Divergences the emulator keeps on purpose (REALISM.md says why); a probe listed here that
/// agrees again fails the test, so the list stays true.
const KNOWN: &[&str] = &[];

fn emulated_side(dir: &std::path::Path, cluster: &TestCluster) -> Side {
    let kubeconfig = dir.join("emulated.kubeconfig");
    write_kubeconfig(&kubeconfig, &[cluster]).unwrap();
    Side {
        name: "emulated",
        kubeconfig,
        context: cluster.name().to_string(),
        tools: repo().join(".tools/helm4"),
    }
}

/// Runs the table against both sides; returns the divergences.
fn run_table(real: &Side, emulated: &Side) -> Vec<String> {
    let mut out = Vec::new();
    for p in probes() {
        for side in [real, emulated] {
            for (a, stdin) in &p.setup {
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                side.must("kubectl", &a, stdin.as_deref());
            }
        }
        let a: Vec<&str> = p.request.0.iter().map(String::as_str).collect();
        let stdin = p.request.1.as_deref();
        let r = real.ask(&a, stdin);
        let e = emulated.ask(&a, stdin);
        eprintln!("{}: real {r} / emulated {e}", p.name);
        if r.code != p.real_code {
            out.push(format!(
                "{}: the real server answered {r}, not {} (the probe is wrong)",
                p.name, p.real_code
            ));
        }
        let agree = masked(&r) == masked(&e);
        match (agree, KNOWN.contains(&p.name)) {
            (false, false) => out.push(format!("{}:\n  real     {r}\n  emulated {e}", p.name)),
            (true, true) => out.push(format!("{}: agrees now; take it out of KNOWN", p.name)),
            _ => {}
        }
    }
    out
}

/// Certificates for a `cacerts` whose signing certificate is no CA: a root, and a leaf it
/// signed (`CA:FALSE`) as `ca-cert.pem` and `cert-chain.pem`.
fn not_a_ca_cacerts() -> Value {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params, &root_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["not-a-ca".to_string()]).unwrap();
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let b = |s: &str| STANDARD.encode(s);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "cacerts", "namespace": NS},
        "data": {"ca-cert.pem": b(&leaf.pem()), "ca-key.pem": b(&leaf_key.serialize_pem()),
                 "root-cert.pem": b(&root.pem()), "cert-chain.pem": b(&leaf.pem())}})
}

fn wrong_ca_pem() -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

/// Webhooks and istiod: a webhook whose caBundle does not verify istiod's certificate refuses
/// the pod; istiod's own (patched) injector lets pods in; a `cacerts` whose signing
/// certificate is no CA stops istiod from starting.
fn run_istiod_probes(real: &Side, emulated: &Side, charts: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let wrong = STANDARD.encode(wrong_ca_pem());
    let hook = json!({"apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration", "metadata": {"name": "probe-wrong-ca"},
        "webhooks": [{"name": "probe.wrong-ca.example.com", "admissionReviewVersions": ["v1"],
            "sideEffects": "None", "failurePolicy": "Fail",
            "namespaceSelector": {"matchLabels": {"probe": "wrong-ca"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods"]}],
            "clientConfig": {"caBundle": wrong,
                "service": {"name": "istiod", "namespace": NS, "path": "/inject"}}}]});
    let pod = |ns: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "x"}]}})
        .to_string()
    };
    for side in [real, emulated] {
        let base = charts.join("base");
        let istiod = charts.join("istiod");
        side.must(
            "helm",
            &[
                "install",
                "base",
                base.to_str().unwrap(),
                "-n",
                NS,
                "--create-namespace",
            ],
            None,
        );
        side.must(
            "helm",
            &[
                "install",
                "istiod",
                istiod.to_str().unwrap(),
                "-n",
                NS,
                "--wait",
                "--timeout",
                "120s",
            ],
            None,
        );
        side.must(
            "kubectl",
            &[
                "wait",
                "--for=condition=Ready",
                "pod",
                "-l",
                "app=istiod",
                "-n",
                NS,
                "--timeout=120s",
            ],
            None,
        );
        side.must(
            "kubectl",
            &["create", "--validate=false", "-f", "-"],
            Some(&hook.to_string()),
        );
        for (ns, label) in [
            ("probe-wrong-ca", "probe=wrong-ca"),
            ("probe-injected", "istio-injection=enabled"),
        ] {
            side.must("kubectl", &["create", "namespace", ns], None);
            side.must("kubectl", &["label", "namespace", ns, label], None);
        }
    }
    // istiod patches its injector's caBundle once Ready; give both a moment.
    std::thread::sleep(Duration::from_secs(3));
    for (name, ns, real_code) in [
        (
            "webhook_whose_ca_bundle_does_not_verify_istiod",
            "probe-wrong-ca",
            500,
        ),
        ("istiods_own_injector_admits_a_pod", "probe-injected", 201),
    ] {
        let a = ["create", "--validate=false", "-f", "-"];
        let r = real.ask(&a, Some(&pod(ns)));
        let e = emulated.ask(&a, Some(&pod(ns)));
        eprintln!("{name}: real {r} / emulated {e}");
        if r.code != real_code {
            out.push(format!(
                "{name}: the real server answered {r}, not {real_code}"
            ));
        }
        if masked(&r) != masked(&e) {
            out.push(format!("{name}:\n  real     {r}\n  emulated {e}"));
        }
    }
    // cacerts whose signing certificate is no CA: a restarted istiod does not start.
    let cacerts = not_a_ca_cacerts().to_string();
    let needle = "certificate is not authorized to sign other certificates";
    let mut logs = Vec::new();
    for side in [real, emulated] {
        side.must("kubectl", &["create", "-f", "-"], Some(&cacerts));
        side.must(
            "kubectl",
            &[
                "delete",
                "pod",
                "-n",
                NS,
                "-l",
                "app=istiod",
                "--wait=false",
            ],
            None,
        );
    }
    for side in [real, emulated] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let found = loop {
            let out = side.run(
                "kubectl",
                &[
                    "logs",
                    "-n",
                    NS,
                    "-l",
                    "app=istiod",
                    "-c",
                    "discovery",
                    "--tail=-1",
                ],
                None,
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains(needle) || Instant::now() > deadline {
                break text.contains(needle);
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let ready = side.must(
            "kubectl",
            &[
                "get",
                "pods",
                "-n",
                NS,
                "-l",
                "app=istiod",
                "-o",
                "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
            ],
            None,
        );
        eprintln!(
            "cacerts_not_a_ca [{}]: error logged {found}, Ready {ready:?}",
            side.name
        );
        logs.push((found, ready.contains("True")));
    }
    if logs[0] != (true, false) {
        out.push(format!(
            "cacerts_not_a_ca: the real istiod did not refuse it: {:?}",
            logs[0]
        ));
    }
    if logs[0] != logs[1] {
        out.push(format!(
            "cacerts_not_a_ca: (error logged, Ready) real {:?} / emulated {:?}",
            logs[0], logs[1]
        ));
    }
    out
}

/// The probe table and the istiod probes against one real cluster and one emulated one.
#[test]
fn probe_the_emulator_answers_as_a_real_api_server() {
    let real = Real::up(1);
    let cluster = TestCluster::start("emulated", Options::default());
    let dir = tempfile::tempdir().unwrap();
    let real_side = Side {
        name: "real",
        kubeconfig: real.kubeconfig(),
        context: "real-1".into(),
        tools: repo().join(".tools/helm4"),
    };
    let emulated = emulated_side(dir.path(), &cluster);
    for side in [&real_side, &emulated] {
        side.must("kubectl", &["create", "namespace", NSP], None);
        side.must(
            "kubectl",
            &["create", "-f", "-"],
            Some(&crd("widgets", "Widget", false).to_string()),
        );
        side.must(
            "kubectl",
            &[
                "wait",
                "--for=condition=Established",
                "crd/widgets.probe.example.com",
                "--timeout=60s",
            ],
            None,
        );
    }
    let mut divergences = run_table(&real_side, &emulated);
    divergences.extend(run_istiod_probes(&real_side, &emulated, &real.charts(FROM)));
    assert!(
        divergences.is_empty(),
        "{} divergence(s) between the real API server and the emulator:\n{}",
        divergences.len(),
        divergences.join("\n")
    );
}
