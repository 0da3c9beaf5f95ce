//! Faults on request: outages that reset connections, seeded random 503s and resets, latency,
//! stop and restart; load balancers (or none) and node ports.

use std::time::{Duration, Instant};

use meshup_testcluster::{Options, RandomFaults, TestCluster};
use serde_json::{Value, json};

fn list(c: &TestCluster) -> Result<u16, String> {
    c.request("GET", "/api/v1/namespaces", Some(c.admin_token()), None)
        .map(|r| r.status)
}

fn create_namespace(c: &TestCluster, name: &str) -> Result<u16, String> {
    c.request(
        "POST",
        "/api/v1/namespaces",
        Some(c.admin_token()),
        Some(&json!({"metadata": {"name": name}})),
    )
    .map(|r| r.status)
}

#[test]
fn random_faults_are_the_same_for_the_same_seed() {
    let outcomes = |seed| {
        let c = TestCluster::start("flaky", Options::default());
        c.set_random_faults(RandomFaults {
            seed,
            unavailable: 0.3,
            throttled: 0.0,
            reset: 0.2,
        });
        let seen: Vec<String> = (0..30)
            .map(|_| match list(&c) {
                Ok(code) => code.to_string(),
                Err(e) if e.contains("reset") => "reset".into(),
                Err(e) => panic!("neither an answer nor a reset: {e}"),
            })
            .collect();
        let unavailable = c
            .request("GET", "/api/v1/namespaces", Some(c.admin_token()), None)
            .ok()
            .filter(|r| r.status == 503);
        (seen, unavailable)
    };
    let (a, _) = outcomes(7);
    assert_eq!(a, outcomes(7).0, "the same seed gives the same faults");
    for kind in ["200", "503", "reset"] {
        assert!(a.iter().any(|o| o == kind), "no {kind} in {a:?}");
    }
    let (b, _) = outcomes(8);
    assert_ne!(a, b);
    let body = (0..20)
        .find_map(|s| outcomes(s).1)
        .expect("some seed answers 503 on the 31st request");
    let status: Value = serde_json::from_str(&body.body).unwrap();
    assert_eq!(
        (status["kind"].as_str(), status["reason"].as_str()),
        (Some("Status"), Some("ServiceUnavailable"))
    );
}

#[test]
fn an_outage_cuts_open_watches_and_resets_new_connections() {
    let c = TestCluster::start("outage", Options::default());
    c.outage_after_writes(1, Duration::from_secs(2));
    std::thread::scope(|s| {
        let watch = s.spawn(|| {
            c.request(
                "GET",
                "/api/v1/namespaces?watch=true&timeoutSeconds=20",
                Some(c.admin_token()),
                None,
            )
        });
        // The watch is open before the write that starts the outage.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !c
            .requests_log()
            .iter()
            .any(|r| r.path.contains("watch=true"))
        {
            assert!(Instant::now() < deadline, "the watch never arrived");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            create_namespace(&c, "a"),
            Ok(201),
            "the k-th write is answered"
        );
        // The outage began before the answer arrived: a window from now covers it.
        let started = Instant::now();
        let cut = watch.join().unwrap();
        assert!(
            cut.as_ref().is_err_and(|e| e.contains("reset")),
            "the watch was not reset: {cut:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the watch ran to its timeout instead of being cut"
        );
        let during = create_namespace(&c, "b");
        assert!(
            during.as_ref().is_err_and(|e| e.contains("reset")),
            "{during:?}"
        );
        std::thread::sleep(Duration::from_millis(2050).saturating_sub(started.elapsed()));
    });
    assert_eq!(
        create_namespace(&c, "b"),
        Ok(201),
        "served again after the outage"
    );
}

#[test]
fn latency_can_change_while_serving() {
    let c = TestCluster::start("slow", Options::default());
    c.set_latency(Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(list(&c), Ok(200));
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[test]
fn restart_serves_the_same_state_on_the_same_port() {
    let c = TestCluster::start("bounce", Options::default());
    let url = c.url();
    assert_eq!(create_namespace(&c, "kept"), Ok(201));
    c.stop();
    let down = list(&c);
    assert!(
        down.as_ref().is_err_and(|e| e.contains("refused")),
        "{down:?}"
    );
    c.restart();
    assert_eq!(c.url(), url);
    let got = c
        .request(
            "GET",
            "/api/v1/namespaces/kept",
            Some(c.admin_token()),
            None,
        )
        .unwrap();
    assert_eq!(got.status, 200, "{}", got.body);
}

#[test]
fn load_balancer_services_stay_pending_without_a_controller() {
    let c = TestCluster::start(
        "nolb",
        Options {
            load_balancer: false,
            ..Options::default()
        },
    );
    let path = "/api/v1/namespaces/default/services/gw";
    c.put(
        path,
        json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 15443}]}}),
    )
    .unwrap();
    assert_eq!(c.get(path).unwrap()["status"], json!({"loadBalancer": {}}));
    c.set_load_balancer(true);
    let ip = c.get(path).unwrap()["status"]["loadBalancer"]["ingress"][0]["ip"].clone();
    assert!(ip.as_str().is_some_and(|ip| ip.starts_with("172.")), "{ip}");
}

#[test]
fn load_balancer_and_node_port_services_get_node_ports_they_keep() {
    let c = TestCluster::start("ports", Options::default());
    let path = "/api/v1/namespaces/default/services/gw";
    let svc = json!({"spec": {"type": "LoadBalancer", "ports": [{"name": "tls", "port": 15443}]}});
    let first = c.put(path, svc.clone()).unwrap();
    let node_port = first["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&node_port), "{node_port}");
    let again = c.put(path, svc).unwrap();
    assert_eq!(again["spec"]["ports"][0]["nodePort"], node_port);
    let nodes = c.list("/api/v1/nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["status"]["addresses"][0]["type"], "InternalIP");
}
