//! HTTPS and credentials, through the crate's own HTTPS client (no kubectl): who may do what,
//! and when a token stops working.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use meshup_testcluster::{Options, TestCluster};
use serde_json::{Value, json};

const NS: &str = "istio-system";
const READER: &str = "istio-reader-service-account";

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The reader's ClusterRole and binding, as the istiod chart renders them with
/// `global.enableReaderRBAC` (the default).
fn bind_reader(c: &TestCluster) {
    let rbac = "/apis/rbac.authorization.k8s.io/v1";
    c.put(
        &format!("{rbac}/clusterroles/istio-reader-clusterrole-istio-system"),
        json!({"rules": [
            {"apiGroups": ["config.istio.io", "security.istio.io", "networking.istio.io"], "resources": ["*"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["endpoints", "pods", "services", "nodes", "namespaces", "secrets"], "verbs": ["get", "list", "watch"]},
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

/// A cluster with the reader service account and a filled token secret for it; returns the
/// token.
fn cluster_with_reader() -> (TestCluster, String) {
    let c = TestCluster::start("creds", Options::default());
    c.put("/api/v1/namespaces", json!({"metadata": {"name": NS}}))
        .unwrap();
    c.put(
        &format!("/api/v1/namespaces/{NS}/serviceaccounts/{READER}"),
        json!({}),
    )
    .unwrap();
    bind_reader(&c);
    c.put(
        &format!("/api/v1/namespaces/{NS}/secrets/reader-token"),
        json!({"type": "kubernetes.io/service-account-token",
               "metadata": {"annotations": {"kubernetes.io/service-account.name": READER}}}),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = c
            .get(&format!("/api/v1/namespaces/{NS}/secrets/reader-token"))
            .unwrap();
        if let Some(t) = s["data"]["token"].as_str() {
            let token = String::from_utf8(STANDARD.decode(t).unwrap()).unwrap();
            assert_eq!(
                String::from_utf8(
                    STANDARD
                        .decode(s["data"]["ca.crt"].as_str().unwrap())
                        .unwrap()
                )
                .unwrap(),
                c.ca_pem(),
                "token secrets carry the cluster's serving CA"
            );
            return (c, token);
        }
        assert!(Instant::now() < deadline, "token never filled: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn requests_without_a_valid_token_get_401_unauthorized() {
    let c = TestCluster::start("auth", Options::default());
    assert!(c.url().starts_with("https://127.0.0.1:"));
    for token in [None, Some("not-a-token")] {
        let r = c.request("GET", "/api/v1/namespaces", token, None).unwrap();
        assert_eq!(r.status, 401, "{token:?}");
        let status = json_of(&r.body);
        assert_eq!(
            (status["kind"].as_str(), status["reason"].as_str()),
            (Some("Status"), Some("Unauthorized"))
        );
    }
    assert_eq!(
        c.request("GET", "/version", None, None).unwrap().status,
        200
    );
    assert_eq!(
        c.request("GET", "/version", Some("not-a-token"), None)
            .unwrap()
            .status,
        401,
        "a refused token is refused on public paths too"
    );
    let ok = c
        .request("GET", "/api/v1/namespaces", Some(c.admin_token()), None)
        .unwrap();
    assert_eq!(ok.status, 200);
    let whos: Vec<String> = c.requests_log().into_iter().map(|r| r.who).collect();
    assert_eq!(
        whos,
        ["system:anonymous", "-", "system:anonymous", "-", "admin"]
    );
}

#[test]
fn a_service_account_token_reads_and_is_forbidden_to_write() {
    let (c, token) = cluster_with_reader();
    let read = c
        .request(
            "GET",
            &format!("/api/v1/namespaces/{NS}/secrets"),
            Some(&token),
            None,
        )
        .unwrap();
    assert_eq!(read.status, 200);
    let write = c
        .request(
            "POST",
            &format!("/api/v1/namespaces/{NS}/secrets"),
            Some(&token),
            Some(&json!({"metadata": {"name": "x"}})),
        )
        .unwrap();
    assert_eq!(write.status, 403);
    assert_eq!(
        json_of(&write.body)["message"],
        format!(
            "secrets is forbidden: User \"system:serviceaccount:{NS}:{READER}\" cannot create resource \"secrets\" in API group \"\" in the namespace \"{NS}\""
        )
    );
    assert!(
        c.get(&format!("/api/v1/namespaces/{NS}/secrets/x"))
            .is_none()
    );
    let log = c.requests_log();
    let last = log.last().unwrap();
    assert_eq!(
        (last.method.as_str(), last.status, last.who.as_str()),
        (
            "POST",
            403,
            format!("system:serviceaccount:{NS}:{READER}").as_str()
        )
    );
}

#[test]
fn deleting_the_token_secret_or_the_service_account_revokes_the_token() {
    let (c, token) = cluster_with_reader();
    let read = |t: &str| {
        c.request("GET", "/api/v1/namespaces", Some(t), None)
            .unwrap()
            .status
    };
    assert_eq!(read(&token), 200);
    c.delete(&format!("/api/v1/namespaces/{NS}/secrets/reader-token"))
        .unwrap();
    assert_eq!(
        read(&token),
        401,
        "a deleted token secret's token still worked"
    );

    let requested = c
        .request(
            "POST",
            &format!("/api/v1/namespaces/{NS}/serviceaccounts/{READER}/token"),
            Some(c.admin_token()),
            Some(&json!({"spec": {"expirationSeconds": 3600}})),
        )
        .unwrap();
    assert_eq!(requested.status, 201);
    let bound = json_of(&requested.body)["status"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(read(&bound), 200);
    c.delete(&format!("/api/v1/namespaces/{NS}/serviceaccounts/{READER}"))
        .unwrap();
    assert_eq!(
        read(&bound),
        401,
        "a deleted service account's token still worked"
    );
}

#[test]
fn a_service_account_reads_only_what_its_role_allows() {
    let (c, token) = cluster_with_reader();
    let get = |path: &str| c.request("GET", path, Some(&token), None).unwrap().status;
    assert_eq!(get(&format!("/api/v1/namespaces/{NS}/secrets")), 200);
    assert_eq!(
        get(&format!("/api/v1/namespaces/{NS}/configmaps")),
        403,
        "the reader role has no configmaps"
    );
    // Without the binding (`global.enableReaderRBAC=false`) the token reads nothing.
    c.delete("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/istio-reader-clusterrole-istio-system")
        .unwrap();
    assert_eq!(get(&format!("/api/v1/namespaces/{NS}/secrets")), 403);
    assert_eq!(
        get("/api"),
        200,
        "discovery stays open to every authenticated user"
    );
}

/// Waits for the token controller to fill `ca.crt` of a token secret.
fn wait_filled(c: &TestCluster, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = c
            .get(&format!("/api/v1/namespaces/{NS}/secrets/{name}"))
            .unwrap();
        if s["data"]["ca.crt"].is_string() {
            return s;
        }
        assert!(Instant::now() < deadline, "{name} never filled: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_token_a_client_writes_into_a_token_secret_is_no_credential() {
    let (c, token) = cluster_with_reader();
    let ns_list = format!("/api/v1/namespaces/{NS}/pods");
    // A forged token: kept in the secret (the token controller fills only what is missing),
    // but the API server never issued it.
    let forged = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6aXN0aW8tc3lzdGVtOmlzdGlvLXJlYWRlci1zZXJ2aWNlLWFjY291bnQifQ.c2lnbmF0dXJl";
    c.put(
        &format!("/api/v1/namespaces/{NS}/secrets/forged"),
        json!({"type": "kubernetes.io/service-account-token",
               "metadata": {"annotations": {"kubernetes.io/service-account.name": READER}},
               "data": {"token": STANDARD.encode(forged)}}),
    )
    .unwrap();
    let s = wait_filled(&c, "forged");
    assert_eq!(
        s["data"]["token"],
        STANDARD.encode(forged),
        "kept as written"
    );
    let r = c.request("GET", &ns_list, Some(forged), None).unwrap();
    assert_eq!(r.status, 401, "{}", r.body);

    // A copy of a real token in another secret: the token still belongs to the secret the
    // controller wrote it into, and goes with it.
    c.put(
        &format!("/api/v1/namespaces/{NS}/secrets/copy"),
        json!({"type": "kubernetes.io/service-account-token",
               "metadata": {"annotations": {"kubernetes.io/service-account.name": READER}},
               "data": {"token": STANDARD.encode(&token)}}),
    )
    .unwrap();
    assert_eq!(
        c.request("GET", &ns_list, Some(&token), None)
            .unwrap()
            .status,
        200
    );
    c.delete(&format!("/api/v1/namespaces/{NS}/secrets/reader-token"))
        .unwrap();
    assert_eq!(
        c.request("GET", &ns_list, Some(&token), None)
            .unwrap()
            .status,
        401,
        "the copy does not keep a revoked token alive"
    );
}

fn review(c: &TestCluster, caller: &str, token: &str, audiences: &[&str]) -> (u16, Value) {
    let r = c
        .request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(caller),
            Some(
                &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                         "spec": {"token": token, "audiences": audiences}}),
            ),
        )
        .unwrap();
    (r.status, json_of(&r.body))
}

#[test]
fn token_reviews_name_the_owner_or_say_why_not() {
    let (c, token) = cluster_with_reader();
    let admin = c.admin_token().to_string();
    let sa_uid = c
        .get(&format!("/api/v1/namespaces/{NS}/serviceaccounts/{READER}"))
        .unwrap()["metadata"]["uid"]
        .clone();
    let (code, got) = review(&c, &admin, &token, &[]);
    assert_eq!(code, 201);
    assert_eq!(got["kind"], "TokenReview");
    assert_eq!(
        got["status"],
        json!({"authenticated": true,
               "user": {"username": format!("system:serviceaccount:{NS}:{READER}"), "uid": sa_uid,
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{NS}"), "system:authenticated"]},
               "audiences": ["https://kubernetes.default.svc.cluster.local"]})
    );
    // The reader role may create token reviews (istiod reviews tokens with it).
    assert_eq!(review(&c, &token, &token, &[]).0, 201);

    // A TokenRequest token for another audience: not the API server's.
    let r = c
        .request(
            "POST",
            &format!("/api/v1/namespaces/{NS}/serviceaccounts/{READER}/token"),
            Some(&admin),
            Some(&json!({"spec": {"audiences": ["istio-ca"]}})),
        )
        .unwrap();
    let ca_token = json_of(&r.body)["status"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        c.request("GET", "/api/v1/namespaces", Some(&ca_token), None)
            .unwrap()
            .status,
        401
    );
    let (_, got) = review(&c, &admin, &ca_token, &[]);
    assert_eq!(
        got["status"],
        json!({"authenticated": false, "user": {},
               "error": "[invalid bearer token, token audiences [\"istio-ca\"] is invalid for the target audiences [\"https://kubernetes.default.svc.cluster.local\"]]"})
    );
    let (_, got) = review(&c, &admin, &ca_token, &["istio-ca"]);
    assert_eq!(got["status"]["authenticated"], true);
    assert_eq!(got["status"]["audiences"], json!(["istio-ca"]));
    assert!(
        got["status"]["user"]["extra"]["authentication.kubernetes.io/credential-id"][0]
            .as_str()
            .unwrap()
            .starts_with("JTI=")
    );

    // Refused tokens, in the authenticators' words.
    c.delete(&format!("/api/v1/namespaces/{NS}/secrets/reader-token"))
        .unwrap();
    let (_, got) = review(&c, &admin, &token, &[]);
    assert_eq!(
        got["status"],
        json!({"authenticated": false, "user": {}, "error": "[invalid bearer token, service account token has been invalidated]"})
    );
    let (_, got) = review(&c, &admin, "not-a-jwt", &[]);
    assert_eq!(
        got["status"],
        json!({"authenticated": false, "user": {}, "error": "invalid bearer token"})
    );
    let (code, got) = review(&c, &admin, "", &[]);
    assert_eq!(code, 400);
    assert_eq!(
        got["message"],
        "token is required for TokenReview in authentication"
    );
    // A service account without the role may not ask.
    c.put(
        &format!("/api/v1/namespaces/{NS}/serviceaccounts/nobody"),
        json!({}),
    )
    .unwrap();
    let r = c
        .request(
            "POST",
            &format!("/api/v1/namespaces/{NS}/serviceaccounts/nobody/token"),
            Some(&admin),
            Some(&json!({})),
        )
        .unwrap();
    let nobody = json_of(&r.body)["status"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, got) = review(&c, &nobody, &ca_token, &[]);
    assert_eq!(code, 403, "{got}");
    assert_eq!(
        got["message"],
        format!(
            "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:{NS}:nobody\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope"
        )
    );
}
