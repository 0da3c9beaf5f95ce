//! `meshup verify --traffic`: Istio's "Verify the installation", automated. In a test namespace
//! of every cluster (labelled for sidecar injection): the `helloworld` Service, a `helloworld`
//! Deployment answering with its cluster's name as its version, and a curl client run as a Job.
//! Each client sends K requests to `helloworld.NS:5000/hello`; its log says which cluster
//! answered each. Every client must reach every cluster. The namespace is removed afterwards
//! (also after a failure or Ctrl-C) unless `--keep`.
//!
//! Why a Job whose log is read, not `kubectl exec`: it needs nothing but `apply`, `wait` and
//! `logs` (no exec permission, no streaming connection through the API server), and it leaves
//! a record. The client stops its sidecar when done (`/quitquitquit`), so the Job completes.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::json;

use crate::engine::run::{Run, parallel};
use crate::model::mesh::Cluster;
use crate::tools::kubectl;
use crate::tools::runner::{self, StepError, run_ok};
use crate::trust::sensitive::Sensitive;

/// The default images, from Docker Hub as Istio's samples use them.
pub const HELLOWORLD_IMAGE: &str = "docker.io/istio/examples-helloworld-v1:1.0";
pub const CURL_IMAGE: &str = "docker.io/curlimages/curl:8.16.0";
const SERVICE: &str = "helloworld";
pub use crate::components::ambient::GLOBAL_LABEL;
const CLIENT: &str = "meshup-verify-client";

/// How to run the check.
#[derive(Debug, Clone)]
pub struct Options {
    pub namespace: String,
    /// Requests each client sends.
    pub requests: u32,
    /// Leave the namespace in place afterwards.
    pub keep: bool,
    pub helloworld_image: String,
    pub curl_image: String,
    /// The namespace's mesh label: `istio-injection=enabled`, `istio.io/rev=R` with a
    /// revision, or `istio.io/dataplane-mode=ambient`.
    pub injection: (String, String),
    /// Ambient: the `helloworld` Service is marked global (`istio.io/global=true`), which
    /// the ambient profile's `serviceScopeConfigs` make reachable from other clusters.
    pub global_service: bool,
}

impl Options {
    /// The images with their registry replaced (`docker.io` → `registry`).
    pub fn images(registry: Option<&str>) -> (String, String) {
        let swap = |image: &str| match registry {
            Some(registry) => format!(
                "{}/{}",
                registry.trim_end_matches('/'),
                image.strip_prefix("docker.io/").unwrap_or(image)
            ),
            None => image.to_string(),
        };
        (swap(HELLOWORLD_IMAGE), swap(CURL_IMAGE))
    }
}

/// Who reached whom.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub ok: bool,
    /// For each client cluster: answers per answering cluster.
    pub answers: BTreeMap<String, BTreeMap<String, u32>>,
    /// For each client cluster: requests that got no answer.
    pub failed: BTreeMap<String, u32>,
    /// Clusters where the check itself could not run, and why.
    pub errors: BTreeMap<String, String>,
}

impl Report {
    /// The pairs (client, server) with no answer.
    pub fn unreached(&self, clusters: &[String]) -> Vec<(String, String)> {
        let mut missing = Vec::new();
        for from in clusters {
            for to in clusters {
                let count = self
                    .answers
                    .get(from)
                    .and_then(|row| row.get(to))
                    .copied()
                    .unwrap_or(0);
                if count == 0 {
                    missing.push((from.clone(), to.clone()));
                }
            }
        }
        missing
    }
}

/// Deploys, runs the clients, reads their logs, and cleans up.
pub fn check(run: &Run, options: &Options) -> Report {
    let clusters = &run.mesh.clusters;
    let mut report = Report::default();
    let deployed = parallel(run.jobs, clusters, |cluster| deploy(run, cluster, options));
    let results: Vec<Result<String, StepError>> = if deployed.iter().all(Result::is_ok) {
        parallel(run.jobs, clusters, |cluster| client(run, cluster, options))
    } else {
        deployed
            .into_iter()
            .map(|r| r.map(|()| String::new()))
            .collect()
    };
    for (cluster, result) in clusters.iter().zip(results) {
        match result {
            Ok(log) => {
                let (answers, failed) = tally(&log);
                report.answers.insert(cluster.name.clone(), answers);
                report.failed.insert(cluster.name.clone(), failed);
            }
            Err(e) => {
                report.errors.insert(cluster.name.clone(), e.to_string());
            }
        }
    }
    if !options.keep {
        runner::cleanup(|| {
            for (cluster, result) in clusters
                .iter()
                .zip(parallel(run.jobs, clusters, |c| remove(run, c, options)))
            {
                if let Err(e) = result {
                    run.reporter.warn(&format!(
                        "[{}] could not remove namespace `{}`: {e}",
                        cluster.name, options.namespace
                    ));
                }
            }
        });
    }
    let names: Vec<String> = clusters.iter().map(|c| c.name.clone()).collect();
    report.ok = report.errors.is_empty() && report.unreached(&names).is_empty();
    report
}

/// The namespace, the Service and this cluster's helloworld, ready.
fn deploy(run: &Run, cluster: &Cluster, options: &Options) -> Result<(), StepError> {
    let target = run.target(cluster);
    let manifests = [
        namespace(options),
        service(&options.namespace, options.global_service),
        helloworld(cluster, options),
    ]
    .iter()
    .map(|m| serde_yaml::to_string(m).expect("plain JSON is valid YAML"))
    .collect::<Vec<_>>()
    .join("---\n");
    run_ok(
        run.runner,
        &kubectl::apply(&target, Sensitive::new(manifests.into_bytes()), run.timeout),
    )?;
    run_ok(
        run.runner,
        &kubectl::rollout_status(
            &target,
            &format!("{SERVICE}-{}", cluster.name),
            &options.namespace,
            run.timeout,
        ),
    )?;
    Ok(())
}

/// Runs this cluster's client and returns its log.
fn client(run: &Run, cluster: &Cluster, options: &Options) -> Result<String, StepError> {
    let target = run.target(cluster);
    let ns = &options.namespace;
    // A Job's pod template cannot change: start from none.
    run_ok(
        run.runner,
        &kubectl::delete(&target, "job", &[CLIENT.to_string()], Some(ns), run.timeout),
    )?;
    let job = serde_yaml::to_string(&job(options, run.timeout.as_secs()))
        .expect("plain JSON is valid YAML");
    run_ok(
        run.runner,
        &kubectl::apply(&target, Sensitive::new(job.into_bytes()), run.timeout),
    )?;
    let waited = run_ok(
        run.runner,
        &kubectl::wait(
            &target,
            "condition=complete",
            &format!("job/{CLIENT}"),
            ns,
            run.timeout,
        ),
    );
    let logs = run_ok(
        run.runner,
        &kubectl::logs(
            &target,
            &format!("job/{CLIENT}"),
            "client",
            ns,
            None,
            run.timeout,
        ),
    );
    match (waited, logs) {
        (_, Ok(logs)) => Ok(logs.stdout),
        (Err(e), Err(_)) | (Ok(_), Err(e)) => Err(e),
    }
}

fn remove(run: &Run, cluster: &Cluster, options: &Options) -> Result<(), StepError> {
    run_ok(
        run.runner,
        &kubectl::delete(
            &run.target(cluster),
            "namespace",
            std::slice::from_ref(&options.namespace),
            None,
            run.timeout,
        ),
    )
    .map(|_| ())
}

/// Answers per answering cluster, and failed requests, in a client's log.
pub fn tally(log: &str) -> (BTreeMap<String, u32>, u32) {
    let mut answers = BTreeMap::new();
    let mut failed = 0;
    for line in log.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line
            .strip_prefix("Hello version: ")
            .and_then(|rest| rest.split(',').next())
        {
            Some(version) => *answers.entry(version.trim().to_string()).or_insert(0) += 1,
            None => failed += 1,
        }
    }
    (answers, failed)
}

fn namespace(options: &Options) -> serde_json::Value {
    let (key, value) = &options.injection;
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": options.namespace, "labels": {key: value}},
    })
}

fn service(namespace: &str, global: bool) -> serde_json::Value {
    let mut labels = json!({"app": SERVICE});
    if global {
        labels[GLOBAL_LABEL] = json!("true");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": namespace, "labels": labels},
        "spec": {
            "ports": [{"port": 5000, "name": "http"}],
            "selector": {"app": SERVICE},
        },
    })
}

fn helloworld(cluster: &Cluster, options: &Options) -> serde_json::Value {
    let labels = json!({"app": SERVICE, "version": cluster.name});
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": format!("{SERVICE}-{}", cluster.name),
            "namespace": options.namespace,
            "labels": labels,
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{
                    "name": SERVICE,
                    "image": options.helloworld_image,
                    "env": [{"name": "SERVICE_VERSION", "value": cluster.name}],
                    "ports": [{"containerPort": 5000}],
                }]},
            },
        },
    })
}

/// The client: REQUESTS requests to URL, one line each, then it stops its sidecar.
fn job(options: &Options, deadline_seconds: u64) -> serde_json::Value {
    let script = r#"for i in $(seq 1 "$REQUESTS"); do curl -s --max-time 5 "$URL" || echo "request failed"; done; curl -fsS -X POST http://127.0.0.1:15020/quitquitquit >/dev/null 2>&1 || true"#;
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": CLIENT, "namespace": options.namespace},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_seconds.max(60),
            "template": {
                "metadata": {
                    "labels": {"app": CLIENT},
                    // The first request must not go out before the sidecar is ready.
                    "annotations": {"proxy.istio.io/config": "{\"holdApplicationUntilProxyStarts\": true}"},
                },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "client",
                        "image": options.curl_image,
                        "command": ["sh", "-c", script],
                        "env": [
                            {"name": "URL", "value": format!("http://{SERVICE}.{}:5000/hello", options.namespace)},
                            {"name": "REQUESTS", "value": options.requests.to_string()},
                        ],
                    }],
                },
            },
        },
    })
}

/// The matrix of who reached whom, as text.
pub fn render(report: &Report, clusters: &[String]) -> String {
    let width = clusters.iter().map(String::len).max().unwrap_or(4).max(9) + 2;
    let mut out = format!("{:<width$}", "traffic: from \\ to");
    out.push('\n');
    out.push_str(&format!("{:<width$}", ""));
    for to in clusters {
        out.push_str(&format!("{to:<width$}"));
    }
    out.push_str("failed\n");
    for from in clusters {
        out.push_str(&format!("{from:<width$}"));
        if let Some(error) = report.errors.get(from) {
            out.push_str(&format!(
                "not run: {}\n",
                error.lines().next().unwrap_or_default()
            ));
            continue;
        }
        for to in clusters {
            let count = report
                .answers
                .get(from)
                .and_then(|r| r.get(to))
                .copied()
                .unwrap_or(0);
            out.push_str(&format!("{count:<width$}"));
        }
        out.push_str(&format!(
            "{}\n",
            report.failed.get(from).copied().unwrap_or(0)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_is_tallied_by_answering_cluster() {
        let log = "Hello version: cluster1, instance: helloworld-cluster1-abc\nHello version: cluster2, instance: helloworld-cluster2-def\nrequest failed\nHello version: cluster1, instance: helloworld-cluster1-abc\n";
        let (answers, failed) = tally(log);
        assert_eq!(answers["cluster1"], 2);
        assert_eq!(answers["cluster2"], 1);
        assert_eq!(failed, 1);
    }

    #[test]
    fn a_report_names_every_pair_without_an_answer() {
        let mut report = Report::default();
        report.answers.insert(
            "a".into(),
            BTreeMap::from([("a".into(), 3), ("b".into(), 2)]),
        );
        report
            .answers
            .insert("b".into(), BTreeMap::from([("b".into(), 5)]));
        let clusters = ["a".to_string(), "b".to_string()];
        assert_eq!(report.unreached(&clusters), [("b".into(), "a".into())]);
        let text = render(&report, &clusters);
        assert!(
            text.contains("a          3          2          0"),
            "{text}"
        );
    }

    #[test]
    fn a_registry_replaces_docker_hub_in_both_images() {
        let (hello, curl) = Options::images(Some("registry.corp:5000/mirror/"));
        assert_eq!(
            hello,
            "registry.corp:5000/mirror/istio/examples-helloworld-v1:1.0"
        );
        assert_eq!(curl, "registry.corp:5000/mirror/curlimages/curl:8.16.0");
        assert_eq!(Options::images(None).0, HELLOWORLD_IMAGE);
    }

    #[test]
    fn the_client_job_carries_its_url_and_count_and_stops_its_sidecar() {
        let options = Options {
            namespace: "meshup-verify".into(),
            requests: 7,
            keep: false,
            helloworld_image: HELLOWORLD_IMAGE.into(),
            curl_image: CURL_IMAGE.into(),
            injection: ("istio-injection".into(), "enabled".into()),
            global_service: false,
        };
        let job = job(&options, 300);
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["env"][0]["value"],
            "http://helloworld.meshup-verify:5000/hello"
        );
        assert_eq!(container["env"][1]["value"], "7");
        assert!(
            container["command"][2]
                .as_str()
                .unwrap()
                .contains("quitquitquit")
        );
        assert_eq!(job["spec"]["backoffLimit"], 0);
    }
}
