//! `meshup status`: each cluster as it is, compared with the mesh file. Reads only.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use crate::exec::{Ctx, parallel};
use crate::helm::{self, Chart};
use crate::kubectl;
use crate::mesh::Cluster;
use crate::plan;
use crate::remote_secret;
use crate::runner::run_ok;
use crate::trust::{self, TrustMode};

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
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub cluster: String,
    pub context: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<String>,
    pub releases: Vec<ReleaseStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub istiod: Option<Readiness>,
    pub remote_secrets: RemoteSecrets,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cacerts: Option<Cacerts>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseStatus {
    pub name: String,
    /// helm's status (`deployed`, `failed`, ...), or None when absent.
    pub status: Option<String>,
    pub chart: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: u64,
    pub desired: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RemoteSecrets {
    /// Peers whose secret is present and right.
    pub present: Vec<String>,
    pub missing: Vec<String>,
    /// Peers whose secret points elsewhere than the mesh file says.
    pub stale: Vec<String>,
    /// Remote secrets for clusters not in the mesh (or for this cluster itself).
    pub unexpected: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cacerts {
    pub present: bool,
    /// SHA-256 of the root certificate; never key material.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_fingerprint: Option<String>,
}

/// Reads every cluster and compares.
pub fn collect(ctx: &Ctx) -> Status {
    let clusters = parallel(ctx.jobs, &ctx.mesh.clusters, |c| cluster_status(ctx, c));
    let mut problems = Vec::new();
    let roots: BTreeSet<&str> = clusters
        .iter()
        .filter_map(|c| c.cacerts.as_ref()?.root_fingerprint.as_deref())
        .collect();
    let shared_root = if ctx.mesh.trust.mode == TrustMode::None || roots.is_empty() {
        None
    } else {
        Some(roots.len() == 1)
    };
    if shared_root == Some(false) {
        problems.push(format!(
            "the clusters' `cacerts` have {} different roots; cross-cluster mTLS fails until they share one",
            roots.len()
        ));
    }
    if ctx.mesh.trust.mode != TrustMode::None {
        let root_file = ctx.mesh.trust.dir.join("root-cert.pem");
        if let Ok(pem) = std::fs::read_to_string(&root_file)
            && let Ok(local) = trust::fingerprint(&pem)
            && roots.iter().any(|r| *r != local)
        {
            problems.push(format!(
                "a cluster's `cacerts` root is not the mesh root in {}",
                root_file.display()
            ));
        }
    }
    let ok = problems.is_empty() && clusters.iter().all(|c| c.problems.is_empty());
    Status {
        mesh_id: ctx.mesh.mesh_id.clone(),
        ok,
        shared_root,
        clusters,
        problems,
    }
}

fn cluster_status(ctx: &Ctx, cluster: &Cluster) -> ClusterStatus {
    let mesh = ctx.mesh;
    let target = ctx.target(cluster);
    let ns = &mesh.namespace;
    let mut status = ClusterStatus {
        cluster: cluster.name.clone(),
        context: cluster.context.clone(),
        ..ClusterStatus::default()
    };
    match run_ok(ctx.runner, &kubectl::server_version(&target, ctx.timeout)) {
        Ok(output) => {
            status.reachable = true;
            let json: Value = serde_json::from_str(&output.stdout).unwrap_or(Value::Null);
            status.kubernetes = json["serverVersion"]["gitVersion"]
                .as_str()
                .map(str::to_string);
        }
        Err(e) => {
            status.problems.push(format!(
                "context `{}` does not answer: {e}",
                cluster.context
            ));
            return status;
        }
    }

    let wanted_version = mesh.chart_version();
    match run_ok(ctx.runner, &helm::list(&target, ns)) {
        Ok(output) => {
            let list: Value =
                serde_json::from_str(output.stdout.trim()).unwrap_or(Value::Array(Vec::new()));
            for chart in [Chart::Base, Chart::Istiod] {
                let name = plan::release_name(mesh, chart);
                let found = list
                    .as_array()
                    .and_then(|all| all.iter().find(|r| r["name"] == name.as_str()));
                let release = ReleaseStatus {
                    name: name.clone(),
                    status: found.and_then(|r| r["status"].as_str()).map(str::to_string),
                    chart: found.and_then(|r| r["chart"].as_str()).map(str::to_string),
                };
                match (&release.status, &release.chart, &wanted_version) {
                    (None, _, _) => status
                        .problems
                        .push(format!("helm release `{name}` is not installed")),
                    (Some(s), _, _) if s != "deployed" => status
                        .problems
                        .push(format!("helm release `{name}` is `{s}`, not deployed")),
                    (_, Some(have), Some(want)) if !helm::chart_is_version(have, chart, want) => {
                        status.problems.push(format!(
                            "helm release `{name}` runs chart {have}, not version {want}"
                        ))
                    }
                    _ => {}
                }
                status.releases.push(release);
            }
        }
        Err(e) => status.problems.push(e.to_string()),
    }

    match run_ok(
        ctx.runner,
        &kubectl::get(
            &target,
            "deployment",
            &mesh.istiod_deployment(),
            Some(ns),
            ctx.timeout,
        ),
    ) {
        Ok(output) if output.stdout.trim().is_empty() => {
            status.problems.push(format!(
                "deployment `{}` does not exist",
                mesh.istiod_deployment()
            ));
        }
        Ok(output) => {
            let json: Value = serde_json::from_str(&output.stdout).unwrap_or(Value::Null);
            let readiness = Readiness {
                ready: json["status"]["readyReplicas"].as_u64().unwrap_or(0),
                desired: json["spec"]["replicas"].as_u64().unwrap_or(1),
            };
            if readiness.ready == 0 || readiness.ready < readiness.desired {
                status.problems.push(format!(
                    "istiod has {}/{} ready replicas",
                    readiness.ready, readiness.desired
                ));
            }
            status.istiod = Some(readiness);
        }
        Err(e) => status.problems.push(e.to_string()),
    }

    let selector = remote_secret::multicluster_selector();
    match run_ok(
        ctx.runner,
        &kubectl::list(&target, "secrets", Some(ns), Some(&selector), ctx.timeout),
    )
    .map_err(|e| e.to_string())
    .and_then(|output| remote_secret::found(&output.stdout))
    {
        Ok(found) => {
            let secrets = &mut status.remote_secrets;
            for peer in mesh.clusters.iter().filter(|p| p.name != cluster.name) {
                let holders: Vec<&str> = found
                    .iter()
                    .filter(|f| f.cluster == peer.name)
                    .map(|f| f.secret.as_str())
                    .collect();
                if holders.len() > 1 {
                    status.problems.push(format!(
                        "{} secrets give istiod cluster `{}` ({}); istiod uses only one of them, so delete the others",
                        holders.len(),
                        peer.name,
                        holders.join(", ")
                    ));
                }
                match found.iter().find(|f| f.cluster == peer.name) {
                    None => secrets.missing.push(peer.name.clone()),
                    Some(f)
                        if !peer.server.is_empty()
                            && f.server.as_deref() != Some(peer.server.as_str()) =>
                    {
                        secrets.stale.push(peer.name.clone());
                        status.problems.push(format!(
                            "the remote secret for `{}` points at {}, not {}; run `meshup link`",
                            peer.name,
                            f.server.as_deref().unwrap_or("nothing readable"),
                            peer.server
                        ));
                    }
                    Some(_) => secrets.present.push(peer.name.clone()),
                }
            }
            for f in &found {
                let known_peer = f.cluster != cluster.name && mesh.cluster(&f.cluster).is_some();
                if !known_peer {
                    secrets.unexpected.push(f.cluster.clone());
                    status.problems.push(format!(
                        "secret `{}` gives istiod cluster `{}`, which is {}",
                        f.secret,
                        f.cluster,
                        if f.cluster == cluster.name {
                            "this cluster itself"
                        } else {
                            "not in the mesh"
                        }
                    ));
                }
            }
            if !secrets.missing.is_empty() {
                status.problems.push(format!(
                    "remote secrets missing for {}; run `meshup link`",
                    secrets.missing.join(", ")
                ));
            }
        }
        Err(e) => status.problems.push(e),
    }

    if mesh.trust.mode != TrustMode::None {
        match run_ok(
            ctx.runner,
            &kubectl::get(&target, "secret", "cacerts", Some(ns), ctx.timeout),
        ) {
            Ok(output) if output.stdout.trim().is_empty() => {
                status.cacerts = Some(Cacerts {
                    present: false,
                    root_fingerprint: None,
                });
                status
                    .problems
                    .push("secret `cacerts` is missing: istiod signs with a self-made root".into());
            }
            Ok(output) => {
                let json: Value = serde_json::from_str(&output.stdout).unwrap_or(Value::Null);
                let root = trust::live_root_fingerprint(&json).ok().flatten();
                if root.is_none() {
                    status
                        .problems
                        .push("secret `cacerts` has no readable `root-cert.pem`".into());
                }
                status.cacerts = Some(Cacerts {
                    present: true,
                    root_fingerprint: root,
                });
            }
            Err(e) => status.problems.push(e.to_string()),
        }
    }
    status
}

/// The status as text for people.
pub fn render_text(status: &Status) -> String {
    let mut out = String::new();
    for c in &status.clusters {
        out.push_str(&format!(
            "{} (context {}): {}\n",
            c.cluster,
            c.context,
            match (&c.reachable, &c.kubernetes) {
                (true, Some(v)) => format!("reachable, Kubernetes {v}"),
                (true, None) => "reachable".to_string(),
                (false, _) => "UNREACHABLE".to_string(),
            }
        ));
        for r in &c.releases {
            out.push_str(&format!(
                "  release {:<12} {:<10} {}\n",
                r.name,
                r.status.as_deref().unwrap_or("absent"),
                r.chart.as_deref().unwrap_or("")
            ));
        }
        if let Some(i) = &c.istiod {
            out.push_str(&format!("  istiod ready {}/{}\n", i.ready, i.desired));
        }
        let s = &c.remote_secrets;
        if c.reachable {
            out.push_str(&format!(
                "  remote secrets: present [{}] missing [{}] stale [{}] unexpected [{}]\n",
                s.present.join(", "),
                s.missing.join(", "),
                s.stale.join(", "),
                s.unexpected.join(", ")
            ));
        }
        if let Some(ca) = &c.cacerts {
            out.push_str(&format!(
                "  cacerts: {}\n",
                match (&ca.present, &ca.root_fingerprint) {
                    (true, Some(fp)) => format!("present, root {fp}"),
                    (true, None) => "present, root unreadable".to_string(),
                    (false, _) => "missing".to_string(),
                }
            ));
        }
        for p in &c.problems {
            out.push_str(&format!("  problem: {p}\n"));
        }
    }
    if let Some(shared) = status.shared_root {
        out.push_str(&format!(
            "shared root of trust: {}\n",
            if shared { "yes" } else { "NO" }
        ));
    }
    for p in &status.problems {
        out.push_str(&format!("problem: {p}\n"));
    }
    let count = status.problems.len()
        + status
            .clusters
            .iter()
            .map(|c| c.problems.len())
            .sum::<usize>();
    out.push_str(&if status.ok {
        format!("mesh `{}` is as the mesh file says\n", status.mesh_id)
    } else {
        format!("mesh `{}`: {count} problem(s)\n", status.mesh_id)
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote_secret::RemoteSecret;
    use crate::reporter::{Mode, Reporter};
    use crate::runner::{Output, RecordingRunner};
    use crate::sensitive::Sensitive;
    use crate::step::Step;
    use crate::testing::mesh;
    use serde_json::json;

    fn ok(stdout: String) -> Output {
        Output {
            code: Some(0),
            stdout,
            stderr: String::new(),
        }
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
        } else if args.starts_with("get deployment") {
            ok(json!({"spec": {"replicas": 1}, "status": {"readyReplicas": 1}}).to_string())
        } else if args.starts_with("get secrets") {
            ok(json!({"items": secrets}).to_string())
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

    fn status_of(mesh: &crate::mesh::Mesh, secrets_in_cluster1: Vec<Value>) -> Status {
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
        let ctx = Ctx {
            mesh,
            runner: &runner,
            reporter: &reporter,
            jobs: 2,
            timeout: std::time::Duration::from_secs(5),
            kubeconfig: None,
            values_dir: Default::default(),
            trust: None,
            rotate_ca: false,
            restart: false,
        };
        collect(&ctx)
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
        let text = c1.problems.join("\n");
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
        let text = status.clusters[0].problems.join("\n");
        assert!(
            text.contains("2 secrets give istiod cluster `cluster2`"),
            "{text}"
        );
    }

    #[test]
    fn text_output_names_the_verdict() {
        let m = mesh(2, TrustMode::None);
        let status = status_of(&m, vec![]);
        let text = render_text(&status);
        assert!(
            text.contains("remote secrets: present [] missing [cluster2]"),
            "{text}"
        );
        assert!(text.ends_with("problem(s)\n"), "{text}");
    }
}
