//! Preflight: the tools, each context's API server, and Istio installs that would conflict.
//! Reads only; `install` runs it first and stops before touching anything when a check fails.

use std::path::{Path, PathBuf};

use crate::components::ClusterCtx;
use crate::engine::run::{Run, walk};
use crate::engine::topology::{ClusterParts, Topology};
use crate::model::mesh::Mesh;
use crate::observe::finding::Finding;
use crate::tools::live;
use crate::tools::remote_secret;
use crate::tools::reporter::Reporter;
use crate::tools::runner::Runner;
use crate::tools::step::Tool;

/// Finds a tool: the flag (or its environment variable) when given, else `PATH`.
pub fn locate(tool: Tool, flag: Option<&Path>) -> Result<PathBuf, String> {
    let name = tool.name();
    match flag {
        Some(path) if path.is_file() => Ok(path.to_path_buf()),
        Some(path) => Err(format!(
            "`{}` (from --{name}) is not a file; install {name} or fix --{name}",
            path.display()
        )),
        None => which::which(name).map_err(|_| {
            format!("could not find `{name}` on PATH; install it or pass --{name} PATH")
        }),
    }
}

/// Parses `v3.19.0` into (3, 19).
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((major, minor))
}

/// What the local tools' checks found.
#[derive(Debug, Default)]
pub struct Tools {
    pub checks: Vec<Finding>,
    /// helm's major version, when it could be read (4 applies server-side).
    pub helm_major: Option<u32>,
}

/// Checks the local tools: helm 3.12+ or 4, and kubectl.
pub fn tool_checks(runner: &dyn Runner, helm_path: &Path, kubectl_path: &Path) -> Tools {
    let mut checks = Vec::new();
    let mut helm_major = None;
    match live::tools::helm_version(runner) {
        Ok(version) => {
            let at = helm_path.display();
            let parsed = major_minor(&version);
            helm_major = parsed.map(|(major, _)| major);
            checks.push(match parsed {
                Some((4, _)) => {
                    Finding::ok(None, "helm", format!("helm {version} (Helm 4) at {at}"))
                }
                Some((3, minor)) if minor >= 12 => {
                    Finding::ok(None, "helm", format!("helm {version} (Helm 3) at {at}"))
                }
                Some(_) => Finding::fail(None, "helm", format!("helm {version} at {at}"))
                    .fix("meshup needs Helm 3.12+ or Helm 4; upgrade helm"),
                None => Finding::warn(
                    None,
                    "helm",
                    format!("helm {version} (an unknown version) at {at}"),
                ),
            });
        }
        Err(e) => checks.push(Finding::fail(None, "helm", e.to_string())),
    }
    match live::tools::kubectl_version(runner) {
        Ok(version) => checks.push(Finding::ok(
            None,
            "kubectl",
            format!("kubectl {version} at {}", kubectl_path.display()),
        )),
        Err(e) => checks.push(Finding::fail(None, "kubectl", e.to_string())),
    }
    Tools { checks, helm_major }
}

/// Checks every cluster in parallel (reachable, and no conflicting Istio install), then the
/// mesh as a whole. With `versions`, each API server is asked its version; without, reading
/// the cluster's snapshot proves that it answers (one call fewer for `install`).
pub fn cluster_checks(run: &Run, topology: &Topology, versions: bool) -> Vec<Finding> {
    let mut checks: Vec<Finding> =
        walk(run, topology, |node, cx| check_cluster(cx, node, versions))
            .into_iter()
            .flatten()
            .collect();
    checks.extend(loopback_warnings(run.mesh));
    checks
}

/// Clusters whose remote secret would carry a loopback server, which no peer can reach.
pub fn loopback_warnings(mesh: &Mesh) -> Vec<Finding> {
    if mesh.clusters.len() < 2 {
        return Vec::new();
    }
    mesh.clusters
        .iter()
        .filter(|c| remote_secret::is_loopback(&c.server))
        .map(|c| {
            Finding::warn(
                Some(&c.name),
                "api server address",
                format!(
                    "{} is a loopback address: istiod in the other clusters cannot reach it",
                    c.server
                ),
            )
            .fix("set `apiServer` for this cluster in the mesh file")
        })
        .collect()
}

fn check_cluster(cx: &mut ClusterCtx, node: &ClusterParts, versions: bool) -> Vec<Finding> {
    let cluster = cx.cluster;
    let name = Some(cluster.name.as_str());
    let mut checks = Vec::new();
    let answer = if versions {
        cx.live
            .server_version()
            .map(|version| format!("Kubernetes {version}"))
    } else {
        cx.live
            .get::<live::Namespace>("namespace", &cx.mesh.namespace, None)
            .map(|_| "its API server is reachable".to_string())
    };
    match answer {
        Ok(what) => checks.push(Finding::ok(
            name,
            "api server",
            format!("context `{}` answers: {what}", cluster.context),
        )),
        Err(e) => {
            let server = if cluster.server.is_empty() {
                "no server"
            } else {
                &cluster.server
            };
            checks.push(Finding::fail(
                name,
                "api server",
                format!(
                    "context `{}` ({server}) does not answer: {e}",
                    cluster.context
                ),
            ));
            return checks;
        }
    }
    let mut conflicts = Vec::new();
    for component in &node.components {
        match component.preflight(cx) {
            Ok(found) => conflicts.extend(found),
            Err(e) => conflicts.push(Finding::fail(name, "existing istio", e.to_string())),
        }
    }
    if conflicts.is_empty() {
        checks.push(Finding::ok(
            name,
            "existing istio",
            "no conflicting install",
        ));
    }
    checks.extend(conflicts);
    checks
}

/// Prints findings, one line each.
pub fn print(reporter: &Reporter, checks: &[Finding]) {
    for check in checks {
        reporter.line(&check.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helm_versions_parse() {
        assert_eq!(major_minor("v3.19.0"), Some((3, 19)));
        assert_eq!(major_minor("v4.1.4"), Some((4, 1)));
        assert_eq!(major_minor("v3.12.0-rc.1"), Some((3, 12)));
        assert_eq!(major_minor("garbage"), None);
    }

    #[test]
    fn only_loopback_servers_of_a_multi_cluster_mesh_are_warned_about() {
        let mut mesh = crate::testing::mesh(2, crate::trust::TrustMode::None);
        mesh.clusters[1].server = "https://127.0.0.1:6443".into();
        let warnings = loopback_warnings(&mesh);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].cluster.as_deref(), Some("cluster2"));
        mesh.clusters.truncate(1);
        mesh.clusters[0].server = "https://127.0.0.1:6443".into();
        assert!(loopback_warnings(&mesh).is_empty());
    }

    #[test]
    fn a_missing_tool_says_how_to_fix_it() {
        let err = locate(Tool::Helm, Some(Path::new("/nonexistent/helm"))).unwrap_err();
        assert!(err.contains("install helm or fix --helm"), "{err}");
    }
}
