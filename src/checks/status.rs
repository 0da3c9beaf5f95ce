//! `meshup status`: each cluster as it is, compared with the mesh file. Reads only. The
//! engine here reaches each cluster and walks its components' `inspect`; what is checked
//! lives in the components.

use serde::Serialize;

use crate::components::cacerts;
use crate::engine::run::{Run, walk};
use crate::engine::topology::Topology;
pub use crate::observe::facts::{
    Cacerts, ClusterStatus, Column, Readiness, ReleaseStatus, RemoteSecrets, Sync, column,
};
use crate::observe::finding::Finding;
use crate::observe::sync;
use crate::trust::TrustMode;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub mesh_id: String,
    /// True when nothing differs from the mesh file.
    pub ok: bool,
    /// Whether every cluster's `cacerts` has the same root (None when trust is off or no
    /// cluster has one).
    pub shared_root: Option<bool>,
    pub clusters: Vec<ClusterStatus>,
    /// Mesh-wide problems (e.g. roots that differ).
    #[serde(serialize_with = "crate::observe::finding::sentences")]
    pub problems: Vec<Finding>,
}

/// Reads every cluster and compares.
pub fn collect(run: &Run, topology: &Topology) -> Status {
    let mesh = run.mesh;
    let mut clusters = walk(run, topology, |node, cx| {
        let cluster = cx.cluster;
        let mut status = ClusterStatus {
            cluster: cluster.name.clone(),
            context: cluster.context.clone(),
            primary: node.primary.clone(),
            ..ClusterStatus::default()
        };
        status.cell(column::CLUSTER, &cluster.name);
        status.cell(column::CONTEXT, &cluster.context);
        status.cell(
            column::ROLE,
            match &node.primary {
                Some(primary) => format!("remote of {primary}"),
                None => "primary".into(),
            },
        );
        (|| {
            match cx.live.server_version() {
                Ok(version) => {
                    status.reachable = true;
                    status.cell(column::KUBERNETES, &version);
                    status.kubernetes = Some(version);
                }
                Err(e) => {
                    status.cell(column::KUBERNETES, "UNREACHABLE");
                    status.problem(Finding::fail(
                        Some(&cluster.name),
                        "api server",
                        format!("context `{}` does not answer: {e}", cluster.context),
                    ));
                    return;
                }
            }
            for component in &node.components {
                component.inspect(cx, &mut status);
            }
            for row in node.components.iter().filter_map(|c| c.sync(cx)) {
                let said = status.remote_secrets.missing.clone();
                for finding in sync::findings(run.mesh, &row, &said) {
                    status.problem(finding);
                }
                let (synced, expected) = row.synced();
                status.cell(column::PEERS_SYNCED, format!("{synced}/{expected}"));
                status.sync = Some(Sync {
                    synced,
                    expected,
                    peers: row
                        .peers
                        .iter()
                        .map(|(p, c)| (p.clone(), c.state))
                        .collect(),
                });
            }
        })();
        status
    });
    for finding in crate::checks::verify::credentials(run, topology) {
        if let Some(status) = clusters
            .iter_mut()
            .find(|c| Some(&c.cluster) == finding.cluster.as_ref())
        {
            status.problem(finding);
        }
    }
    let (shared_root, problems) = if mesh.trust.mode == TrustMode::None {
        (None, Vec::new())
    } else {
        cacerts::shared_root(&clusters, &mesh.trust.dir.join("root-cert.pem"))
    };
    let ok = problems.is_empty() && clusters.iter().all(|c| c.problems.is_empty());
    Status {
        mesh_id: mesh.mesh_id.clone(),
        ok,
        shared_root,
        clusters,
        problems,
    }
}

/// `status --drift`: a DRIFT column from `meshup diff`'s comparison (`none`, or how many
/// objects `install` would change or `install --repair` converge), and each such object as a
/// problem.
pub fn add_drift(status: &mut Status, report: &crate::checks::diff::Report) {
    for found in &report.clusters {
        let Some(cluster) = status
            .clusters
            .iter_mut()
            .find(|c| c.cluster == found.cluster)
        else {
            continue;
        };
        let name = Some(found.cluster.as_str());
        if let Some(error) = &found.error {
            cluster.cell(column::DRIFT, "unknown");
            cluster.problem(Finding::fail(
                name,
                "drift",
                format!(
                    "could not be compared: {}",
                    error.lines().next().unwrap_or_default()
                ),
            ));
            continue;
        }
        let (changes, drifted) = (found.changed(), found.drifted());
        cluster.cell(
            column::DRIFT,
            match (changes, drifted) {
                (0, _) => "none".to_string(),
                (n, 0) => format!("{n} to change"),
                (n, d) if n == d => format!("{d} drifted"),
                (n, d) => format!("{} to change, {d} drifted", n - d),
            },
        );
        for object in &found.objects {
            let fields: Vec<&str> = object.fields.iter().map(|f| f.path.as_str()).collect();
            let what = if object.install_changes() {
                "differs from the mesh file"
            } else {
                "drifted from its chart"
            };
            let fix = if object.install_changes() {
                "run `meshup diff`, then `meshup install`"
            } else {
                "run `meshup diff`, then `meshup install --repair`"
            };
            let detail = if fields.is_empty() {
                format!("{:?}", object.action).to_lowercase()
            } else {
                fields.join(", ")
            };
            cluster.problem(
                Finding::fail(
                    name,
                    &object.part,
                    format!("{} {what} ({detail})", object.title()),
                )
                .fix(fix),
            );
        }
    }
    status.ok = status.problems.is_empty() && status.clusters.iter().all(|c| c.problems.is_empty());
}

/// The status as text for people: one row per cluster, then what is wrong.
pub fn render_text(status: &Status) -> String {
    // Every column some cluster has a cell in, in order.
    let mut columns: Vec<Column> = status
        .clusters
        .iter()
        .flat_map(|c| c.cells.iter().map(|cell| cell.column))
        .collect();
    columns.sort();
    columns.dedup();
    let rows: Vec<Vec<String>> = status
        .clusters
        .iter()
        .map(|c| {
            columns
                .iter()
                .map(|column| {
                    c.cells
                        .iter()
                        .find(|cell| cell.column == *column)
                        .map_or_else(|| "-".to_string(), |cell| cell.text.clone())
                })
                .collect()
        })
        .collect();
    let header: Vec<String> = columns.iter().map(|(_, h)| h.to_string()).collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = cells
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        text.truncate(text.trim_end().len());
        text.push('\n');
        text
    };
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(row));
    }
    if let Some(shared) = status.shared_root {
        out.push_str(&format!(
            "shared root of trust: {}\n",
            if shared { "yes" } else { "NO" }
        ));
    }
    let problems: Vec<String> = status
        .clusters
        .iter()
        .flat_map(|c| {
            c.problems
                .iter()
                .map(move |p| format!("[{}] {}", c.cluster, p.sentence()))
        })
        .chain(status.problems.iter().map(Finding::sentence))
        .collect();
    if !problems.is_empty() {
        out.push_str("problems:\n");
        for p in &problems {
            out.push_str(&format!("  {p}\n"));
        }
    }
    out.push_str(&if status.ok {
        format!("mesh `{}` is as the mesh file says\n", status.mesh_id)
    } else {
        format!("mesh `{}`: {} problem(s)\n", status.mesh_id, problems.len())
    });
    out
}

/// `4D:34:09:7D…`: enough of a fingerprint to tell roots apart at a glance.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::topology::Choices;
    use crate::testing::mesh;
    use crate::tools::remote_secret::RemoteSecret;
    use crate::tools::reporter::{Mode, Reporter};
    use crate::tools::runner::{Output, RecordingRunner};
    use crate::tools::step::Step;
    use crate::trust::sensitive::Sensitive;
    use serde_json::{Value, json};

    fn ok(stdout: String) -> Output {
        crate::testing::ok(&stdout)
    }

    /// A cluster whose releases and istiod are fine, holding the given remote secrets.
    fn answer(step: &Step, secrets: &[Value]) -> Output {
        let args = step.args.join(" ");
        if args.starts_with("version") {
            ok(json!({"serverVersion": {"gitVersion": "v1.33.0"}}).to_string())
        } else if args.starts_with("list") {
            ok(json!([
                {"name": "istio-base", "status": "deployed", "chart": "base-1.28.1"},
                {"name": "istiod", "status": "deployed", "chart": "istiod-1.28.1"}
            ])
            .to_string())
        } else if args.starts_with("get deployments") && args.contains("app=istiod") {
            ok(json!({"kind": "DeploymentList", "items": [{"metadata": {"name": "istiod", "labels": {"app": "istiod", "istio.io/rev": "default"}},
                "spec": {"template": {"spec": {"containers": [{"name": "discovery", "image": "docker.io/istio/pilot:1.28.1"}]}}}}]})
            .to_string())
        } else if args.starts_with("get deployment") {
            ok(json!({"kind": "Deployment", "spec": {"replicas": 1}, "status": {"readyReplicas": 1}}).to_string())
        } else if args.starts_with("get mutatingwebhookconfigurations") {
            ok(json!({"kind": "MutatingWebhookConfigurationList", "items": []}).to_string())
        } else if args.starts_with("get secrets") && args.contains("meshup.io/reader-token") {
            // The reader token, whose CA the remote secrets carry.
            ok(json!({"kind": "SecretList", "items": [{
                "metadata": {"name": "istio-reader-service-account-istio-remote-secret-token"},
                "data": {"ca.crt": "Q0E=", "token": "dA=="}}]})
            .to_string())
        } else if args.starts_with("get secrets") {
            ok(json!({"kind": "SecretList", "items": secrets}).to_string())
        } else if args.starts_with("create") {
            ok(json!({"kind": "TokenReview", "status": {"authenticated": true}}).to_string())
        } else if args.starts_with("get pods") {
            ok(json!({"kind": "PodList", "items": [{"metadata": {"name": "istiod-x"},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}]})
            .to_string())
        } else if args.starts_with("exec") {
            // istiod synced with every peer it holds a secret for.
            let mut entries =
                vec![json!({"id": step.cluster, "secretName": "", "syncStatus": "synced"})];
            for s in secrets {
                for id in s["data"].as_object().unwrap().keys() {
                    entries.push(json!({"id": id, "secretName": format!("istio-system/{}", s["metadata"]["name"].as_str().unwrap()), "syncStatus": "synced"}));
                }
            }
            ok(serde_json::Value::Array(entries).to_string())
        } else {
            ok(String::new())
        }
    }

    fn secret_for(name: &str, server: &str, secret_name: Option<&str>) -> Value {
        let secret = RemoteSecret::new(name, server, "Q0E=", &Sensitive::new("t".into()));
        let mut manifest: Value =
            serde_yaml::from_str(secret.manifest("istio-system").expose()).unwrap();
        if let Some(other) = secret_name {
            manifest["metadata"]["name"] = other.into();
        }
        manifest
    }

    fn status_of(mesh: &crate::model::mesh::Mesh, secrets_in_cluster1: Vec<Value>) -> Status {
        let good: Vec<Value> = mesh
            .clusters
            .iter()
            .map(|c| secret_for(&c.name, &c.server, None))
            .collect();
        let runner = RecordingRunner::new(move |step: &Step| {
            if step.cluster == "cluster1" {
                answer(step, &secrets_in_cluster1)
            } else {
                let own: Vec<Value> = good
                    .iter()
                    .filter(|s| {
                        s["metadata"]["annotations"]["networking.istio.io/cluster"]
                            != step.cluster.as_str()
                    })
                    .cloned()
                    .collect();
                answer(step, &own)
            }
        });
        let reporter = Reporter::new(Mode::Json, true, false);
        let run = Run {
            mesh,
            runner: &runner,
            reporter: &reporter,
            jobs: 2,
            timeout: std::time::Duration::from_secs(5),
            kubeconfig: None,
            retry: crate::engine::run::Retry::DEFAULT,
            locks: None,
            caches: Default::default(),
        };
        collect(&run, &Topology::of(mesh, &Choices::default()))
    }

    fn sentences(findings: &[Finding]) -> String {
        findings
            .iter()
            .map(Finding::sentence)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_complete_mesh_is_ok() {
        let m = mesh(3, TrustMode::None);
        let peers = vec![
            secret_for("cluster2", &m.clusters[1].server, None),
            secret_for("cluster3", &m.clusters[2].server, None),
        ];
        let status = status_of(&m, peers);
        assert!(status.ok, "{status:#?}");
        assert_eq!(
            status.clusters[0].remote_secrets.present,
            ["cluster2", "cluster3"]
        );
    }

    #[test]
    fn missing_stale_and_unexpected_secrets_are_problems() {
        let m = mesh(3, TrustMode::None);
        let secrets = vec![
            secret_for("cluster2", "https://127.0.0.1:6443", None),
            secret_for("cluster1", &m.clusters[0].server, None),
            secret_for("gone", "https://10.9.9.9", None),
        ];
        let status = status_of(&m, secrets);
        assert!(!status.ok);
        let c1 = &status.clusters[0];
        assert_eq!(c1.remote_secrets.missing, ["cluster3"]);
        assert_eq!(c1.remote_secrets.stale, ["cluster2"]);
        assert_eq!(c1.remote_secrets.unexpected, ["cluster1", "gone"]);
        let text = sentences(&c1.problems);
        assert!(
            text.contains("points at https://127.0.0.1:6443, not https://172.18.0.3:6443"),
            "{text}"
        );
        assert!(
            text.contains("this cluster itself") && text.contains("not in the mesh"),
            "{text}"
        );
        assert!(
            status.clusters[1].problems.is_empty(),
            "{:?}",
            status.clusters[1].problems
        );
    }

    #[test]
    fn two_secrets_for_one_peer_are_a_problem() {
        let m = mesh(2, TrustMode::None);
        let server = &m.clusters[1].server;
        let secrets = vec![
            secret_for("cluster2", server, None),
            secret_for("cluster2", server, Some("istioctl-made")),
        ];
        let status = status_of(&m, secrets);
        let text = sentences(&status.clusters[0].problems);
        assert!(
            text.contains("2 secrets give istiod cluster `cluster2`"),
            "{text}"
        );
    }

    #[test]
    fn a_part_adds_its_column_by_writing_cells() {
        let m = mesh(2, TrustMode::None);
        let mut status = status_of(&m, vec![]);
        status.clusters[1].cell((65, "NEW PART"), "here");
        let text = render_text(&status);
        let header = text.lines().next().unwrap();
        assert!(header.ends_with("PEERS SYNCED  NEW PART"), "{header}");
        assert!(
            text.lines().nth(1).unwrap().ends_with("0/1           -"),
            "{text}"
        );
        assert!(
            text.lines().nth(2).unwrap().ends_with("1/1           here"),
            "{text}"
        );
    }

    #[test]
    fn text_output_names_the_verdict() {
        let m = mesh(2, TrustMode::None);
        let status = status_of(&m, vec![]);
        let text = render_text(&status);
        assert!(
            text.starts_with("CLUSTER   CONTEXT        KUBERNETES"),
            "{text}"
        );
        // No part wrote a gateway or a cacerts root: those columns are not shown.
        assert!(
            text.contains(
                "cluster1  kind-cluster1  v1.33.0     primary  base-1.28.1 istiod-1.28.1  1/1     default 1.28.1  0/1\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("GATEWAY") && !text.contains("CACERTS"),
            "{text}"
        );
        assert!(
            text.contains("  [cluster1] remote secrets missing for cluster2; run `meshup link`"),
            "{text}"
        );
        assert!(text.ends_with("problem(s)\n"), "{text}");
    }
}
