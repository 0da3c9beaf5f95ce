//! Preflight: the tools, each context's API server, and Istio installs that would conflict.
//! Reads only; `install` runs it first and stops before touching anything when a check fails.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::exec::{Ctx, parallel};
use crate::helm;
use crate::kubectl;
use crate::mesh::{Cluster, Mesh};
use crate::remote_secret;
use crate::runner::{Runner, StepError, run_ok};
use crate::step::Tool;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub check: String,
    pub level: Level,
    pub detail: String,
}

impl Check {
    fn new(cluster: Option<&str>, check: &str, level: Level, detail: impl Into<String>) -> Self {
        Self {
            cluster: cluster.map(str::to_string),
            check: check.to_string(),
            level,
            detail: detail.into(),
        }
    }
}

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

/// Checks the local tools: helm 3.12+ or 4, and kubectl.
pub fn tool_checks(runner: &dyn Runner, helm_path: &Path, kubectl_path: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    match run_ok(runner, &helm::version()) {
        Ok(output) => {
            let version = output.stdout.trim().to_string();
            let (level, what) = match major_minor(&version) {
                Some((4, _)) => (Level::Ok, "Helm 4".to_string()),
                Some((3, minor)) if minor >= 12 => (Level::Ok, "Helm 3".to_string()),
                Some(_) => (
                    Level::Fail,
                    "meshup needs Helm 3.12+ or Helm 4; upgrade helm".to_string(),
                ),
                None => (Level::Warn, "an unknown version".to_string()),
            };
            checks.push(Check::new(
                None,
                "helm",
                level,
                format!("helm {version} ({what}) at {}", helm_path.display()),
            ));
        }
        Err(e) => checks.push(Check::new(None, "helm", Level::Fail, e.to_string())),
    }
    match run_ok(runner, &kubectl::client_version()) {
        Ok(output) => {
            let json: Value = serde_json::from_str(&output.stdout).unwrap_or(Value::Null);
            let version = json["clientVersion"]["gitVersion"]
                .as_str()
                .unwrap_or("(unknown version)");
            checks.push(Check::new(
                None,
                "kubectl",
                Level::Ok,
                format!("kubectl {version} at {}", kubectl_path.display()),
            ));
        }
        Err(e) => checks.push(Check::new(None, "kubectl", Level::Fail, e.to_string())),
    }
    checks
}

/// Checks every cluster in parallel: reachable, and no conflicting Istio install.
pub fn cluster_checks(ctx: &Ctx) -> Vec<Check> {
    let mut checks: Vec<Check> = parallel(ctx.jobs, &ctx.mesh.clusters, |cluster| {
        check_cluster(ctx, cluster)
    })
    .into_iter()
    .flatten()
    .collect();
    checks.extend(network_warning(ctx.mesh).map(|w| Check::new(None, "networks", Level::Warn, w)));
    checks.extend(
        loopback_warnings(ctx.mesh)
            .into_iter()
            .map(|(cluster, detail)| {
                Check::new(Some(&cluster), "api server address", Level::Warn, detail)
            }),
    );
    checks
}

/// A warning when the clusters sit on more than one network: cross-network traffic needs an
/// east-west gateway per network (Istio's `gateway` chart), which meshup does not install.
pub fn network_warning(mesh: &Mesh) -> Option<String> {
    let networks: std::collections::BTreeSet<&str> = mesh
        .clusters
        .iter()
        .filter_map(|c| c.network.as_deref())
        .collect();
    (networks.len() > 1).then(|| {
        format!(
            "the clusters are on {} networks ({}); traffic between networks needs an east-west gateway in each (Istio's `gateway` chart with `networkGateway`), which meshup does not install",
            networks.len(),
            networks.into_iter().collect::<Vec<_>>().join(", ")
        )
    })
}

/// Clusters whose remote secret would carry a loopback server, which no peer can reach.
pub fn loopback_warnings(mesh: &Mesh) -> Vec<(String, String)> {
    if mesh.clusters.len() < 2 {
        return Vec::new();
    }
    mesh.clusters
        .iter()
        .filter(|c| remote_secret::is_loopback(&c.server))
        .map(|c| {
            (
                c.name.clone(),
                format!(
                    "{} is a loopback address: istiod in the other clusters cannot reach it; set `apiServer` for this cluster in the mesh file",
                    c.server
                ),
            )
        })
        .collect()
}

fn check_cluster(ctx: &Ctx, cluster: &Cluster) -> Vec<Check> {
    let target = ctx.target(cluster);
    let name = Some(cluster.name.as_str());
    let mut checks = Vec::new();
    match run_ok(ctx.runner, &kubectl::server_version(&target, ctx.timeout)) {
        Ok(output) => {
            let json: Value = serde_json::from_str(&output.stdout).unwrap_or(Value::Null);
            let version = json["serverVersion"]["gitVersion"]
                .as_str()
                .unwrap_or("(unknown version)");
            checks.push(Check::new(
                name,
                "api server",
                Level::Ok,
                format!(
                    "context `{}` answers: Kubernetes {version}",
                    cluster.context
                ),
            ));
        }
        Err(e) => {
            checks.push(Check::new(
                name,
                "api server",
                Level::Fail,
                format!(
                    "context `{}` ({}) does not answer: {e}",
                    cluster.context,
                    display_server(&cluster.server)
                ),
            ));
            return checks;
        }
    }
    match conflicts(ctx, cluster) {
        Ok(found) if found.is_empty() => checks.push(Check::new(
            name,
            "existing istio",
            Level::Ok,
            "no conflicting install",
        )),
        Ok(found) => checks.extend(
            found
                .into_iter()
                .map(|f| Check::new(name, "existing istio", Level::Fail, f)),
        ),
        Err(e) => checks.push(Check::new(
            name,
            "existing istio",
            Level::Fail,
            e.to_string(),
        )),
    }
    checks
}

fn display_server(server: &str) -> &str {
    if server.is_empty() {
        "no server"
    } else {
        server
    }
}

/// An existing Istio whose mesh ID or cluster name differs from the mesh file's.
fn conflicts(ctx: &Ctx, cluster: &Cluster) -> Result<Vec<String>, StepError> {
    let mesh = ctx.mesh;
    let target = ctx.target(cluster);
    let ns = &mesh.namespace;
    let (configmap, deployment) = (mesh.mesh_configmap(), mesh.istiod_deployment());
    let output = run_ok(
        ctx.runner,
        &kubectl::get_each(
            &target,
            &[("configmap", &configmap), ("deployment", &deployment)],
            Some(ns),
            ctx.timeout,
        ),
    )?;
    let objects =
        kubectl::objects(&output.stdout).map_err(|e| StepError::other(&cluster.name, e, None))?;
    let mut found = Vec::new();
    if let Some(mesh_id) = kubectl::find(&objects, "ConfigMap", &configmap).and_then(mesh_id_of)
        && mesh_id != mesh.mesh_id
    {
        found.push(format!(
            "Istio in namespace `{ns}` already belongs to mesh `{mesh_id}`, not `{}`; uninstall it or use meshID `{mesh_id}`",
            mesh.mesh_id
        ));
    }
    if let Some(id) = kubectl::find(&objects, "Deployment", &deployment).and_then(cluster_id_of)
        && id != cluster.name
    {
        found.push(format!(
            "istiod in namespace `{ns}` already runs as cluster `{id}`, not `{}`; rename the cluster to `{id}` in the mesh file or uninstall that istiod",
            cluster.name
        ));
    }
    Ok(found)
}

/// The mesh ID in an `istio` ConfigMap: `meshId` at the top of the mesh config, or under
/// `defaultConfig`.
pub fn mesh_id_of(configmap: &Value) -> Option<String> {
    let mesh: serde_yaml::Value = serde_yaml::from_str(configmap["data"]["mesh"].as_str()?).ok()?;
    mesh.get("meshId")
        .or_else(|| mesh.get("defaultConfig").and_then(|d| d.get("meshId")))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// istiod's `CLUSTER_ID` from its Deployment.
pub fn cluster_id_of(deployment: &Value) -> Option<String> {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()?
        .iter()
        .flat_map(|c| c["env"].as_array().into_iter().flatten())
        .find(|env| env["name"] == "CLUSTER_ID")
        .and_then(|env| env["value"].as_str())
        .map(str::to_string)
}

/// Prints checks, one line each.
pub fn print(reporter: &crate::reporter::Reporter, checks: &[Check]) {
    for check in checks {
        let mark = match check.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        let who = check
            .cluster
            .as_deref()
            .map(|c| format!("[{c}] "))
            .unwrap_or_default();
        reporter.line(&format!("{mark} {who}{}: {}", check.check, check.detail));
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
    fn mesh_id_is_read_from_either_place() {
        let top =
            serde_json::json!({"data":{"mesh":"meshId: mesh1\ntrustDomain: cluster.local\n"}});
        let nested = serde_json::json!({"data":{"mesh":"defaultConfig:\n  meshId: mesh2\n"}});
        assert_eq!(mesh_id_of(&top).as_deref(), Some("mesh1"));
        assert_eq!(mesh_id_of(&nested).as_deref(), Some("mesh2"));
        assert_eq!(mesh_id_of(&serde_json::json!({"data": {}})), None);
    }

    #[test]
    fn cluster_id_comes_from_istiod_env() {
        let deployment: Value = serde_json::from_str(r#"{"spec":{"template":{"spec":{"containers":[{"name":"discovery","env":[{"name":"X","value":"1"},{"name":"CLUSTER_ID","value":"east"}]}]}}}}"#).unwrap();
        assert_eq!(cluster_id_of(&deployment).as_deref(), Some("east"));
    }

    #[test]
    fn several_networks_are_warned_about() {
        let mut mesh = crate::testing::mesh(3, crate::trust::TrustMode::None);
        assert_eq!(network_warning(&mesh), None);
        mesh.clusters[2].network = Some("network2".into());
        let warning = network_warning(&mesh).unwrap();
        assert!(
            warning.contains("2 networks (network1, network2)"),
            "{warning}"
        );
    }

    #[test]
    fn only_loopback_servers_of_a_multi_cluster_mesh_are_warned_about() {
        let mut mesh = crate::testing::mesh(2, crate::trust::TrustMode::None);
        mesh.clusters[1].server = "https://127.0.0.1:6443".into();
        let warnings = loopback_warnings(&mesh);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].0, "cluster2");
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
