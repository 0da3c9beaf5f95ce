//! Cluster timing and shape, through the HTTPS API: namespaces that terminate, pods that
//! become Ready late, rolling updates, load balancers that take a while (or only get a host
//! name) and istiod's validating webhook failing closed.

use std::time::{Duration, Instant};

use meshup_testcluster::{Options, TestCluster};
use serde_json::{Value, json};

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls `f` every 10 ms until it holds, for at most `secs`.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn deployment(name: &str, ns: &str, labels: Value, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": ns, "labels": labels},
           "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels},
               "spec": {"containers": [{"name": "discovery", "image": image}]}}}})
}

#[test]
fn a_deleted_namespace_terminates_refuses_new_content_then_goes() {
    let c = TestCluster::start(
        "ns",
        Options {
            namespace_finalize_delay: Duration::from_millis(500),
            ..Options::default()
        },
    );
    let token = c.admin_token().to_string();
    let admin = Some(token.as_str());
    let created = c.put("/api/v1/namespaces/app", json!({})).unwrap();
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    c.put(
        "/api/v1/namespaces/app/configmaps/cm",
        json!({"data": {"a": "b"}}),
    )
    .unwrap();

    let deleted = c
        .request("DELETE", "/api/v1/namespaces/app", admin, None)
        .unwrap();
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let ns = json_of(&deleted.body);
    assert_eq!(
        ns["kind"], "Namespace",
        "the API server answers the namespace"
    );
    assert_eq!(ns["status"]["phase"], "Terminating");
    assert!(ns["metadata"]["deletionTimestamp"].is_string());
    assert!(
        c.get("/api/v1/namespaces/app/configmaps/cm").is_none(),
        "its contents are deleted"
    );

    let again = c
        .request("DELETE", "/api/v1/namespaces/app", admin, None)
        .unwrap();
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(
        json_of(&again.body)["message"],
        "Operation cannot be fulfilled on namespaces \"app\": The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system."
    );

    let create = c
        .request(
            "POST",
            "/api/v1/namespaces/app/configmaps",
            admin,
            Some(&json!({"metadata": {"name": "late"}})),
        )
        .unwrap();
    assert_eq!(create.status, 403, "{}", create.body);
    let status = json_of(&create.body);
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        "configmaps \"late\" is forbidden: unable to create new content in namespace app because it is being terminated"
    );
    assert_eq!(
        status["details"]["causes"],
        json!([{"reason": "NamespaceTerminating", "message": "namespace app is being terminated",
                "field": "metadata.namespace"}])
    );
    let deploy = c
        .request(
            "POST",
            "/apis/apps/v1/namespaces/app/deployments",
            admin,
            Some(&deployment("d", "app", json!({"app": "d"}), "x")),
        )
        .unwrap();
    assert!(
        json_of(&deploy.body)["message"]
            .as_str()
            .unwrap()
            .starts_with("deployments.apps \"d\" is forbidden: unable to create new content"),
        "{}",
        deploy.body
    );

    let again = c
        .request(
            "POST",
            "/api/v1/namespaces",
            admin,
            Some(&json!({"metadata": {"name": "app"}})),
        )
        .unwrap();
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(json_of(&again.body)["reason"], "AlreadyExists");
    // An update (helm 4 applies the namespace it would create) leaves it terminating.
    let updated = c
        .put(
            "/api/v1/namespaces/app",
            json!({"metadata": {"labels": {"a": "b"}}, "status": {"phase": "Active"}}),
        )
        .unwrap();
    assert_eq!(updated["status"]["phase"], "Terminating");
    assert!(updated["metadata"]["deletionTimestamp"].is_string());

    eventually(5, "the namespace goes", || {
        c.get("/api/v1/namespaces/app").is_none()
    });
    // Watchers saw it terminate, then go.
    let events = c
        .request(
            "GET",
            &format!(
                "/api/v1/namespaces?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3Dapp&timeoutSeconds=1"
            ),
            admin,
            None,
        )
        .unwrap();
    let kinds: Vec<String> = events
        .body
        .lines()
        .map(|l| json_of(l)["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        ["MODIFIED", "MODIFIED", "DELETED"],
        "{}",
        events.body
    );
    c.put("/api/v1/namespaces/app", json!({}))
        .expect("the name is free again");
}

#[test]
fn new_pods_run_unready_until_the_delay_passes() {
    let c = TestCluster::start(
        "pods",
        Options {
            pod_ready_delay: Duration::from_millis(400),
            ..Options::default()
        },
    );
    let path = "/apis/apps/v1/namespaces/default/deployments/web";
    c.put(
        path,
        deployment("web", "default", json!({"app": "web"}), "nginx"),
    )
    .unwrap();
    let pods = c.list("/api/v1/namespaces/default/pods");
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["status"]["phase"], "Running");
    assert!(!ready(&pods[0]), "{}", pods[0]["status"]);
    assert_eq!(pods[0]["status"]["containerStatuses"][0]["ready"], false);
    let dep = c.get(path).unwrap();
    assert_eq!(dep["status"]["replicas"], 1);
    assert_eq!(dep["status"].get("readyReplicas"), None);
    assert_eq!(dep["status"]["conditions"][0]["status"], "False");
    eventually(5, "the pod is Ready", || {
        ready(&c.list("/api/v1/namespaces/default/pods")[0])
    });
    eventually(1, "the Deployment is available", || {
        let s = &c.get(path).unwrap()["status"];
        s["readyReplicas"] == 1 && s["availableReplicas"] == 1 && s["updatedReplicas"] == 1
    });
}

#[test]
fn a_new_template_rolls_out_with_old_and_new_pods_side_by_side() {
    let c = TestCluster::start(
        "roll",
        Options {
            pod_ready_delay: Duration::from_millis(300),
            ..Options::default()
        },
    );
    let path = "/apis/apps/v1/namespaces/istio-system/deployments/istiod";
    c.put("/api/v1/namespaces/istio-system", json!({})).unwrap();
    let labels = json!({"app": "istiod", "istio.io/rev": "default"});
    c.put(
        path,
        deployment("istiod", "istio-system", labels.clone(), "pilot:1.27.0"),
    )
    .unwrap();
    let pods = || c.list("/api/v1/namespaces/istio-system/pods");
    eventually(5, "the first istiod is Ready", || {
        pods().iter().all(ready) && pods().len() == 1
    });
    let first = pods()[0]["metadata"]["name"].clone();

    c.put(
        path,
        deployment("istiod", "istio-system", labels, "pilot:1.28.0"),
    )
    .unwrap();
    // maxSurge 25% of 1 rounds up to 1, maxUnavailable down to 0: a second pod, the old one
    // kept until the new one is Ready.
    let now = pods();
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(
        now.iter()
            .any(|p| p["metadata"]["name"] == first && ready(p))
    );
    assert!(
        now.iter()
            .any(|p| p["metadata"]["name"] != first && !ready(p))
    );
    let status = &c.get(path).unwrap()["status"];
    assert_eq!(status["replicas"], 2);
    assert_eq!(status["updatedReplicas"], 1);
    assert_eq!(status["availableReplicas"], 1);
    eventually(5, "the old pod goes once the new one is Ready", || {
        let p = pods();
        p.len() == 1 && p[0]["metadata"]["name"] != first && ready(&p[0])
    });
    eventually(1, "the rollout is complete", || {
        let s = &c.get(path).unwrap()["status"];
        s["replicas"] == 1 && s["updatedReplicas"] == 1 && s["availableReplicas"] == 1
    });
}

#[test]
fn a_three_replica_rollout_stays_within_surge_and_unavailability() {
    let c = TestCluster::start(
        "roll3",
        Options {
            pod_ready_delay: Duration::from_millis(150),
            ..Options::default()
        },
    );
    let path = "/apis/apps/v1/namespaces/default/deployments/web";
    let mut d = deployment("web", "default", json!({"app": "web"}), "v1");
    d["spec"]["replicas"] = json!(4);
    c.put(path, d.clone()).unwrap();
    let pods = || c.list("/api/v1/namespaces/default/pods");
    eventually(5, "4 Ready pods", || {
        let p = pods();
        p.len() == 4 && p.iter().all(ready)
    });
    d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("v2");
    c.put(path, d).unwrap();
    // 4 replicas: maxSurge 1, maxUnavailable 1. Never more than 5 pods, never fewer than 3
    // Ready ones.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Terminating pods are no replicas any more (they linger a while).
        let p: Vec<Value> = pods()
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        assert!(p.len() <= 5, "{} pods", p.len());
        assert!(p.iter().filter(|p| ready(p)).count() >= 3, "{p:?}");
        let s = c.get(path).unwrap()["status"].clone();
        if s["updatedReplicas"] == 4 && s["availableReplicas"] == 4 && s["replicas"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "rollout stuck: {s}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn load_balancer_addresses_arrive_late_and_may_be_host_names() {
    let c = TestCluster::start(
        "lb",
        Options {
            load_balancer_delay: Duration::from_millis(300),
            ..Options::default()
        },
    );
    let svc = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 15443}]}});
    let path = "/api/v1/namespaces/default/services/gw";
    c.put(path, svc.clone()).unwrap();
    assert_eq!(c.get(path).unwrap()["status"], json!({"loadBalancer": {}}));
    eventually(5, "an IP", || {
        c.get(path).unwrap()["status"]["loadBalancer"]["ingress"][0]["ip"].is_string()
    });

    c.set_load_balancer_hostname(true);
    let path = "/api/v1/namespaces/default/services/gw2";
    c.put(path, svc.clone()).unwrap();
    assert_eq!(c.get(path).unwrap()["status"], json!({"loadBalancer": {}}));
    eventually(5, "a host name", || {
        c.get(path).unwrap()["status"]["loadBalancer"]["ingress"][0].is_object()
    });
    let ingress = c.get(path).unwrap()["status"]["loadBalancer"]["ingress"][0].clone();
    let host = ingress["hostname"].as_str().unwrap().to_string();
    assert!(ingress.get("ip").is_none(), "{ingress}");
    assert!(
        host.starts_with('a') && host.ends_with(".elb.us-east-1.amazonaws.com"),
        "{host}"
    );
    // An update keeps the address.
    c.put(path, svc).unwrap();
    assert_eq!(
        c.get(path).unwrap()["status"]["loadBalancer"]["ingress"][0]["hostname"],
        host.as_str()
    );
}

fn validator(name: &str, rev: &str, service: &str, object_selector: Option<Value>) -> Value {
    let mut hook = json!({
        "name": if object_selector.is_some() { "rev.validation.istio.io" } else { "validation.istio.io" },
        "clientConfig": {"service": {"name": service, "namespace": "istio-system", "path": "/validate"}},
        "rules": [{"operations": ["CREATE", "UPDATE"],
                   "apiGroups": ["security.istio.io", "networking.istio.io", "telemetry.istio.io", "extensions.istio.io"],
                   "apiVersions": ["*"], "resources": ["*"]}],
        "failurePolicy": "Ignore", "sideEffects": "None", "admissionReviewVersions": ["v1"],
    });
    if let Some(sel) = object_selector {
        hook["objectSelector"] = sel;
    }
    json!({"metadata": {"name": name, "labels": {"app": "istiod", "istio.io/rev": rev}},
           "webhooks": [hook]})
}

fn gateway_crd(c: &TestCluster) {
    c.put(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gateways.networking.istio.io",
        json!({"spec": {"group": "networking.istio.io", "scope": "Namespaced",
            "names": {"kind": "Gateway", "plural": "gateways", "singular": "gateway", "listKind": "GatewayList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}),
    )
    .unwrap();
}

fn failure_policy(c: &TestCluster, name: &str) -> String {
    c.get(&format!(
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{name}"
    ))
    .unwrap()["webhooks"][0]["failurePolicy"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn istiods_webhook_fails_closed_once_istiod_is_ready() {
    let c = TestCluster::start("hook", Options::default());
    let token = c.admin_token().to_string();
    let admin = Some(token.as_str());
    gateway_crd(&c);
    c.put("/api/v1/namespaces/istio-system", json!({})).unwrap();
    let vwc = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations";
    c.put(
        &format!("{vwc}/istiod-default-validator"),
        validator("istiod-default-validator", "default", "istiod", None),
    )
    .unwrap();
    c.put(
        &format!("{vwc}/istio-validator-canary-istio-system"),
        validator(
            "istio-validator-canary-istio-system",
            "canary",
            "istiod-canary",
            Some(json!({"matchExpressions": [{"key": "istio.io/rev", "operator": "In", "values": ["canary"]}]})),
        ),
    )
    .unwrap();
    let gateway = |name: &str, labels: Value| {
        c.request(
            "POST",
            "/apis/networking.istio.io/v1/namespaces/default/gateways",
            admin,
            Some(
                &json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                         "metadata": {"name": name, "labels": labels}, "spec": {}}),
            ),
        )
        .unwrap()
    };
    // Fail-open while no istiod is ready (and its Service does not even exist).
    assert_eq!(gateway("g1", json!({})).status, 201);

    c.put(
        "/api/v1/namespaces/istio-system/services/istiod",
        json!({"spec": {"selector": {"app": "istiod", "istio.io/rev": "default"},
                        "ports": [{"name": "https-webhook", "port": 443, "targetPort": 15017}]}}),
    )
    .unwrap();
    let labels = json!({"app": "istiod", "istio.io/rev": "default"});
    c.put(
        "/apis/apps/v1/namespaces/istio-system/deployments/istiod",
        deployment("istiod", "istio-system", labels.clone(), "pilot:1.28.0"),
    )
    .unwrap();
    eventually(5, "istiod switches its webhook to Fail", || {
        failure_policy(&c, "istiod-default-validator") == "Fail"
    });
    assert_eq!(
        failure_policy(&c, "istio-validator-canary-istio-system"),
        "Ignore",
        "another revision's webhook is not istiod's to patch"
    );
    assert_eq!(gateway("g2", json!({})).status, 201, "istiod answers");

    // A rollout keeps a ready istiod: still served.
    c.put(
        "/apis/apps/v1/namespaces/istio-system/deployments/istiod",
        deployment("istiod", "istio-system", labels, "pilot:1.28.1"),
    )
    .unwrap();
    assert_eq!(gateway("g3", json!({})).status, 201);

    // Every istiod gone: refused with the API server's words.
    let mut scaled = c
        .get("/apis/apps/v1/namespaces/istio-system/deployments/istiod")
        .unwrap();
    scaled["spec"]["replicas"] = json!(0);
    c.put(
        "/apis/apps/v1/namespaces/istio-system/deployments/istiod",
        scaled,
    )
    .unwrap();
    eventually(5, "no istiod pod", || {
        c.list("/api/v1/namespaces/istio-system/pods").is_empty()
    });
    let refused = gateway("g4", json!({}));
    assert_eq!(refused.status, 500, "{}", refused.body);
    let status = json_of(&refused.body);
    assert_eq!(status["reason"], "InternalError");
    assert_eq!(
        status["message"],
        "Internal error occurred: failed calling webhook \"validation.istio.io\": failed to call webhook: Post \"https://istiod.istio-system.svc:443/validate?timeout=10s\": no endpoints available for service \"istiod\""
    );
    // Other groups are not the webhook's business; a fail-open webhook lets writes through.
    assert_eq!(
        c.put("/api/v1/namespaces/default/configmaps/x", json!({}))
            .map(|_| ()),
        Ok(())
    );
    c.delete("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/istiod-default-validator")
        .unwrap();
    assert_eq!(
        gateway("g5", json!({"istio.io/rev": "default"})).status,
        201
    );
}
