//! A plan is data: batches run in order; inside a batch each cluster's chain of tasks runs on
//! its own (clusters in parallel up to `--jobs`). `meshup plan` prints a plan as a bash script;
//! `install`, `link` and `uninstall` execute the same plans (see `exec.rs`).

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::helm::{self, Chart};
use crate::kubectl;
use crate::mesh::{Cluster, Mesh};
use crate::remote_secret;
use crate::sensitive::Sensitive;
use crate::step::{Step, Target, shell_quote};
use crate::trust::TrustMode;
use crate::values;

/// One unit of work in one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Create the namespace (labelled with the cluster's network).
    Namespace,
    /// Create or check the `cacerts` secret.
    Cacerts,
    /// `helm upgrade --install` a chart, unless the deployed release already matches.
    Release(Chart),
    /// Restart istiod when it ran before its `cacerts` appeared (with `--restart`).
    Restart,
    /// Build this cluster's remote secret (kept in memory).
    BuildRemoteSecret,
    /// Apply every peer's remote secret here and remove stale ones.
    Link,
    /// Delete the remote secrets meshup created here.
    Unlink,
    /// `helm uninstall` a chart.
    Uninstall(Chart),
    /// Delete the namespace and what is left in it.
    DeleteNamespace,
    /// Delete Istio's CRDs.
    PurgeCrds,
}

impl Task {
    /// The short name progress lines use.
    pub fn label(self) -> &'static str {
        match self {
            Task::Namespace => "namespace",
            Task::Cacerts => "cacerts",
            Task::Release(Chart::Base) => "istio-base",
            Task::Release(Chart::Istiod) => "istiod",
            Task::Restart => "istiod restart",
            Task::BuildRemoteSecret => "remote secret",
            Task::Link => "link",
            Task::Unlink => "remote secrets",
            Task::Uninstall(Chart::Base) => "istio-base",
            Task::Uninstall(Chart::Istiod) => "istiod",
            Task::DeleteNamespace => "namespace",
            Task::PurgeCrds => "CRDs",
        }
    }
}

/// One cluster's tasks within a batch, run in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub cluster: String,
    pub tasks: Vec<Task>,
}

/// Chains that may run at the same time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub title: String,
    pub chains: Vec<Chain>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub batches: Vec<Batch>,
}

fn chains(mesh: &Mesh, tasks: &[Task]) -> Vec<Chain> {
    mesh.clusters
        .iter()
        .map(|c| Chain {
            cluster: c.name.clone(),
            tasks: tasks.to_vec(),
        })
        .collect()
}

/// namespace → (cacerts) → istio-base → istiod → (restart) → own remote secret, per cluster;
/// then every cluster takes its peers' remote secrets.
pub fn install(mesh: &Mesh) -> Plan {
    let mut per_cluster = vec![Task::Namespace];
    let trust = mesh.trust.mode != TrustMode::None;
    if trust {
        per_cluster.push(Task::Cacerts);
    }
    per_cluster.extend([Task::Release(Chart::Base), Task::Release(Chart::Istiod)]);
    if trust {
        per_cluster.push(Task::Restart);
    }
    // A single cluster has no peer to give its secret to.
    if mesh.clusters.len() > 1 {
        per_cluster.push(Task::BuildRemoteSecret);
    }
    Plan {
        batches: vec![
            Batch {
                title: "install istio-base and istiod in every cluster".into(),
                chains: chains(mesh, &per_cluster),
            },
            Batch {
                title: "give every cluster the remote secrets of all the others".into(),
                chains: chains(mesh, &[Task::Link]),
            },
        ],
    }
}

/// Build each cluster's remote secret, then apply them everywhere.
pub fn link(mesh: &Mesh) -> Plan {
    let mut batches = Vec::new();
    if mesh.clusters.len() > 1 {
        batches.push(Batch {
            title: "build each cluster's remote secret from its own context".into(),
            chains: chains(mesh, &[Task::BuildRemoteSecret]),
        });
    }
    batches.push(Batch {
        title: "give every cluster the remote secrets of all the others".into(),
        chains: chains(mesh, &[Task::Link]),
    });
    Plan { batches }
}

/// The install reversed, per cluster: remote secrets, istiod, istio-base, the namespace (and
/// the CRDs with `purge_crds`).
pub fn uninstall(mesh: &Mesh, purge_crds: bool) -> Plan {
    let mut tasks = vec![
        Task::Unlink,
        Task::Uninstall(Chart::Istiod),
        Task::Uninstall(Chart::Base),
        Task::DeleteNamespace,
    ];
    if purge_crds {
        tasks.push(Task::PurgeCrds);
    }
    Plan {
        batches: vec![Batch {
            title: "remove the mesh from every cluster".into(),
            chains: chains(mesh, &tasks),
        }],
    }
}

/// The namespace manifest, labelled with the cluster's network.
pub fn namespace_manifest(mesh: &Mesh, cluster: &Cluster) -> String {
    let mut namespace = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": mesh.namespace },
    });
    if let Some(network) = &cluster.network {
        namespace["metadata"]["labels"] = json!({ "topology.istio.io/network": network });
    }
    serde_yaml::to_string(&namespace).expect("plain JSON is valid YAML")
}

/// The namespace step.
pub fn namespace_step(mesh: &Mesh, cluster: &Cluster, target: &Target, timeout: Duration) -> Step {
    let manifest = namespace_manifest(mesh, cluster);
    kubectl::apply(target, Sensitive::new(manifest.into_bytes()), timeout)
}

/// The release name of a chart in this mesh.
pub fn release_name(mesh: &Mesh, chart: Chart) -> String {
    match chart {
        Chart::Base => "istio-base".to_string(),
        Chart::Istiod => mesh.istiod_release(),
    }
}

/// The `helm upgrade --install` step of a chart, with its values file below `values_dir`.
pub fn release_step(
    mesh: &Mesh,
    chart: Chart,
    target: &Target,
    values_dir: &Path,
    timeout: Duration,
) -> Step {
    let (base_file, istiod_file) = values::paths(values_dir, &target.cluster);
    let file = match chart {
        Chart::Base => base_file,
        Chart::Istiod => istiod_file,
    };
    let release = helm::Release {
        name: &release_name(mesh, chart),
        chart,
        charts: &mesh.charts,
        version: mesh.version.as_deref(),
        namespace: &mesh.namespace,
        values_file: &file,
    };
    helm::upgrade_install(target, &release, timeout)
}

/// What `script` needs besides the mesh and the plan.
pub struct ScriptOptions<'a> {
    /// The mesh flags meshup was given (`--mesh-id`, `--cluster`, ...), repeated for the
    /// commands the script runs.
    pub mesh_flags: &'a [String],
    pub values_dir: &'a Path,
    pub kubeconfig: Option<&'a Path>,
    pub timeout: Duration,
}

/// The plan as a bash script a person could run. No key material or token appears: the
/// cacerts step reads the files, the remote secrets come through a pipe.
pub fn script(mesh: &Mesh, plan: &Plan, options: &ScriptOptions) -> String {
    let mut out = String::new();
    let kubeconfig_flag = options
        .kubeconfig
        .map(|k| format!(" --kubeconfig {}", shell_quote(&k.display().to_string())))
        .unwrap_or_default();
    let mut source_flag = if mesh.source == "flags" {
        String::new()
    } else {
        format!(" -f {}", shell_quote(&mesh.source))
    };
    for flag in options.mesh_flags {
        source_flag.push(' ');
        source_flag.push_str(&shell_quote(flag));
    }
    out.push_str("#!/usr/bin/env bash\n");
    out.push_str(&format!(
        "# meshup plan for mesh `{}`: {} cluster(s), namespace `{}`.\n",
        mesh.mesh_id,
        mesh.clusters.len(),
        mesh.namespace
    ));
    out.push_str("# `meshup install` runs these steps itself, clusters in parallel, skipping what is already\n# in place. Nothing here contains a token or a key.\nset -euo pipefail\n\n");
    out.push_str("# Values files (deterministic; commit and diff them).\n");
    out.push_str(&format!(
        "meshup render{source_flag} --out {}\n",
        shell_quote(&options.values_dir.display().to_string())
    ));
    if mesh.trust.mode == TrustMode::Generate {
        out.push_str(&format!(
            "# Shared root of trust: a root CA and one intermediate per cluster under {}.\nmeshup certs{source_flag}\n",
            shell_quote(&mesh.trust.dir.display().to_string())
        ));
    }
    for (i, batch) in plan.batches.iter().enumerate() {
        out.push_str(&format!("\n# Phase {}: {}.\n", i + 1, batch.title));
        for chain in &batch.chains {
            let Some(cluster) = mesh.cluster(&chain.cluster) else {
                continue;
            };
            let target = Target {
                cluster: cluster.name.clone(),
                context: cluster.context.clone(),
                kubeconfig: options.kubeconfig.map(Path::to_path_buf),
            };
            out.push_str(&format!(
                "\n## {} (context {})\n",
                cluster.name, cluster.context
            ));
            for task in &chain.tasks {
                out.push_str(&task_script(
                    mesh,
                    cluster,
                    &target,
                    *task,
                    options,
                    &kubeconfig_flag,
                ));
            }
        }
    }
    out
}

fn task_script(
    mesh: &Mesh,
    cluster: &Cluster,
    target: &Target,
    task: Task,
    options: &ScriptOptions,
    kubeconfig_flag: &str,
) -> String {
    let timeout = options.timeout;
    let ns = &mesh.namespace;
    match task {
        Task::Namespace => format!(
            "{} <<'EOF'\n{}EOF\n",
            namespace_step(mesh, cluster, target, timeout).command_line(),
            namespace_manifest(mesh, cluster)
        ),
        Task::Cacerts => {
            let dir = mesh.trust.dir.join(&cluster.name);
            let files: Vec<(&str, String)> = crate::trust::CLUSTER_FILES
                .iter()
                .map(|key| (*key, dir.join(key).display().to_string()))
                .collect();
            format!(
                "# cacerts: the intermediate CA of {} from {} (kubectl reads the key; it is never shown).\n{} \\\n  | {}\n",
                cluster.name,
                shell_quote(&dir.display().to_string()),
                kubectl::secret_from_files(target, "cacerts", ns, &files, timeout).command_line(),
                kubectl::apply(target, Sensitive::default(), timeout).command_line()
            )
        }
        Task::Release(chart) => format!(
            "{}\n",
            release_step(mesh, chart, target, options.values_dir, timeout).command_line()
        ),
        Task::Restart => format!(
            "# Only if istiod ran before cacerts existed: {}\n",
            kubectl::rollout_restart(target, &mesh.istiod_deployment(), ns, timeout).command_line()
        ),
        Task::BuildRemoteSecret => String::new(),
        Task::Link => {
            let mut text = String::new();
            for peer in mesh.clusters.iter().filter(|p| p.name != cluster.name) {
                let server = if peer.server_overridden {
                    format!(" --server {}", shell_quote(&peer.server))
                } else {
                    String::new()
                };
                text.push_str(&format!(
                    "meshup remote-secret{kubeconfig_flag} --context {} --name {} --namespace {ns}{server} \\\n  | {}\n",
                    shell_quote(&peer.context),
                    peer.name,
                    kubectl::apply(target, Sensitive::default(), timeout).command_line()
                ));
            }
            if text.is_empty() {
                text.push_str("# (a single cluster has no peers)\n");
            }
            text.push_str("# meshup link also deletes remote secrets here that meshup made for clusters no longer in the mesh.\n");
            text
        }
        Task::Unlink => format!(
            "{}\n",
            kubectl::delete_selected(
                target,
                "secrets",
                &remote_secret::managed_selector(),
                ns,
                timeout
            )
            .command_line()
        ),
        Task::Uninstall(chart) => format!(
            "{}\n",
            helm::uninstall(target, &release_name(mesh, chart), ns, timeout).command_line()
        ),
        Task::DeleteNamespace => format!(
            "{}\n",
            kubectl::delete(target, "namespace", std::slice::from_ref(ns), None, timeout)
                .command_line()
        ),
        Task::PurgeCrds => {
            "# Delete every CustomResourceDefinition named *.istio.io:\n".to_string()
                + &format!(
                    "kubectl get crd --context {}{kubeconfig_flag} -o name | grep '\\.istio\\.io$' | xargs -r kubectl delete --context {}{kubeconfig_flag}\n",
                    shell_quote(&cluster.context),
                    shell_quote(&cluster.context)
                )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::mesh;

    #[test]
    fn install_runs_each_cluster_chain_before_linking() {
        let plan = install(&mesh(2, TrustMode::Generate));
        assert_eq!(plan.batches.len(), 2);
        assert_eq!(
            plan.batches[0].chains[0].tasks,
            [
                Task::Namespace,
                Task::Cacerts,
                Task::Release(Chart::Base),
                Task::Release(Chart::Istiod),
                Task::Restart,
                Task::BuildRemoteSecret
            ]
        );
        assert_eq!(plan.batches[1].chains.len(), 2);
        assert_eq!(plan.batches[1].chains[1].tasks, [Task::Link]);
    }

    #[test]
    fn a_single_cluster_builds_no_remote_secret_and_trust_none_no_cacerts() {
        let plan = install(&mesh(1, TrustMode::None));
        assert_eq!(
            plan.batches[0].chains[0].tasks,
            [
                Task::Namespace,
                Task::Release(Chart::Base),
                Task::Release(Chart::Istiod)
            ]
        );
    }

    #[test]
    fn uninstall_reverses_the_install() {
        let plan = uninstall(&mesh(2, TrustMode::None), true);
        assert_eq!(
            plan.batches[0].chains[0].tasks,
            [
                Task::Unlink,
                Task::Uninstall(Chart::Istiod),
                Task::Uninstall(Chart::Base),
                Task::DeleteNamespace,
                Task::PurgeCrds
            ]
        );
    }

    #[test]
    fn the_script_pipes_every_ordered_pair() {
        let m = mesh(3, TrustMode::Generate);
        let text = script(
            &m,
            &install(&m),
            &ScriptOptions {
                values_dir: Path::new("meshup-values"),
                mesh_flags: &[],
                kubeconfig: None,
                timeout: Duration::from_secs(300),
            },
        );
        let pipes: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("meshup remote-secret"))
            .collect();
        assert_eq!(pipes.len(), 6, "{text}");
        assert!(text.contains("meshup remote-secret --context kind-cluster1 --name cluster1 --namespace istio-system --server https://172.18.0.2:6443 \\\n  | kubectl apply --server-side --force-conflicts --field-manager meshup --filename - --context kind-cluster2"), "{text}");
        // Base before istiod in each cluster.
        let base = text.find("upgrade --install istio-base base").unwrap();
        let istiod = text.find("upgrade --install istiod istiod").unwrap();
        assert!(base < istiod);
        assert!(text.starts_with("#!/usr/bin/env bash\n"));
        assert!(text.contains("set -euo pipefail"));
    }

    #[test]
    fn a_mesh_from_flags_is_repeated_as_flags_in_the_script() {
        let mut m = mesh(2, TrustMode::None);
        m.source = "flags".into();
        let flags: Vec<String> = [
            "--mesh-id",
            "mesh1",
            "--cluster",
            "cluster1=kind-cluster1",
            "--cluster",
            "cluster2=kind-cluster2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let text = script(
            &m,
            &install(&m),
            &ScriptOptions {
                values_dir: Path::new("v"),
                mesh_flags: &flags,
                kubeconfig: None,
                timeout: Duration::from_secs(60),
            },
        );
        assert!(text.contains(
            "meshup render --mesh-id mesh1 --cluster cluster1=kind-cluster1 --cluster cluster2=kind-cluster2 --out v\n"
        ), "{text}");
    }

    #[test]
    fn install_script_snapshot() {
        let m = mesh(2, TrustMode::Generate);
        insta::assert_snapshot!(script(
            &m,
            &install(&m),
            &ScriptOptions {
                values_dir: Path::new("meshup-values"),
                mesh_flags: &[],
                kubeconfig: Some(Path::new("/home/op/kubeconfig")),
                timeout: Duration::from_secs(300),
            }
        ));
    }

    #[test]
    fn uninstall_script_snapshot() {
        let m = mesh(2, TrustMode::None);
        insta::assert_snapshot!(script(
            &m,
            &uninstall(&m, true),
            &ScriptOptions {
                values_dir: Path::new("meshup-values"),
                mesh_flags: &[],
                kubeconfig: None,
                timeout: Duration::from_secs(60),
            }
        ));
    }
}
