//! The mesh as Argo CD runs it: per cluster, a parent Application whose children are one
//! Application per release and one for the plain manifests, ordered by sync waves.
//!
//! Why child Applications with waves, not an ApplicationSet with progressive sync: the order
//! that matters is within a cluster (istio-base, then istiod, then the node agents and the
//! gateway), and waves order a parent's children; progressive sync orders Applications across
//! an ApplicationSet's clusters, and is off unless the controller enables it. Waves between
//! Applications hold only when Argo CD assesses an Application's health, which it stopped
//! doing by default in 1.8: `argocd-cm.yaml` restores it (merge it into your `argocd-cm`).
//!
//! Argo CD applies `helm template` output (no Helm release records): meshup reads versions
//! and revisions from the Deployments' labels. `ServerSideApply=true`, and the fields istiod
//! patches at run time are ignored (`ignoreDifferences` with `RespectIgnoreDifferences=true`,
//! so a sync does not put them back either).
//!
//! Trust first: nothing of a cluster syncs before its parent Application exists, and the
//! parent (`<cluster>/parent.yaml`) is applied by `meshup install --only trust` once `cacerts`
//! is in place — do not list it in another Application.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::fleet::parts::{
    ClusterHandoff, Export, Layout, Options, ReleasePart, Row, chart_source, write_manifests, yaml,
};
use crate::model::mesh::Mesh;
use crate::observe::revisions::default_injector;

/// The Lua health check that makes an Application's health that of its resources, so that a
/// parent's sync waves wait for each child.
const APPLICATION_HEALTH: &str = r#"hs = {}
hs.status = "Progressing"
hs.message = ""
if obj.status ~= nil and obj.status.health ~= nil then
  hs.status = obj.status.health.status
  if obj.status.health.message ~= nil then
    hs.message = obj.status.health.message
  end
end
return hs
"#;

/// Writes the Argo CD layout.
pub fn write(mesh: &Mesh, parts: &[ClusterHandoff], options: &Options) -> Export {
    let mut export = Export::default();
    let repo_url = options.repo_url.clone().unwrap_or_default();
    for part in parts {
        let c = &part.cluster;
        let apps_dir = PathBuf::from(c).join("apps");
        let destination = match options.layout {
            // Argo CD in the hub reaches the cluster registered under its name.
            Layout::Hub => json!({"name": c}),
            Layout::Every => json!({"server": "https://kubernetes.default.svc"}),
        };
        let mut wave = 0;
        for release in &part.releases {
            let name = format!("{c}-{}", release.name);
            let app = release_application(mesh, release, &name, wave, &destination, options);
            let file = format!("{}.yaml", release.name);
            export.files.insert(apps_dir.join(&file), yaml(&app));
            export.rows.push(Row {
                cluster: c.clone(),
                object: format!(
                    "Helm chart `{}` {} as `{}` (rendered by Argo CD: no Helm release record)",
                    release.chart.name,
                    release.chart.version.as_deref().unwrap_or("newest"),
                    release.name
                ),
                owner: "Argo CD".into(),
                how: format!(
                    "Application `{name}` (wave {wave}): {}",
                    apps_dir.join(&file).display()
                ),
            });
            wave += 1;
        }
        if !part.manifests.is_empty() {
            write_manifests(&mut export, part, "Argo CD");
            let name = format!("{c}-objects");
            let app = application(
                &name,
                wave,
                json!({
                    "repoURL": repo_url,
                    "targetRevision": options.revision,
                    "path": format!("{}/{c}/objects", options.path),
                }),
                destination.clone(),
                &mesh.namespace,
                options,
            );
            export
                .files
                .insert(apps_dir.join("objects.yaml"), yaml(&app));
        }
        let parent = json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Application",
            "metadata": {"name": format!("meshup-{c}"), "namespace": options.namespace},
            "spec": {
                "project": "default",
                "source": {
                    "repoURL": repo_url,
                    "targetRevision": options.revision,
                    "path": format!("{}/{c}/apps", options.path),
                },
                "destination": {"server": "https://kubernetes.default.svc", "namespace": options.namespace},
                "syncPolicy": {"automated": {"prune": true, "selfHeal": true}},
            },
        });
        export
            .files
            .insert(PathBuf::from(c).join("parent.yaml"), yaml(&parent));
        export.rows.push(Row {
            cluster: c.clone(),
            object: format!("parent Application `meshup-{c}` (applied once `cacerts` is in place)"),
            owner: "meshup".into(),
            how: "`meshup install --only trust`".into(),
        });
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": options.namespace},
        "data": {"resource.customizations.health.argoproj.io_Application": APPLICATION_HEALTH},
    });
    export
        .files
        .insert(PathBuf::from("argocd-cm.yaml"), yaml(&config));
    export
}

/// One release as an Application rendering the chart with meshup's values.
fn release_application(
    mesh: &Mesh,
    release: &ReleasePart,
    name: &str,
    wave: usize,
    destination: &Value,
    options: &Options,
) -> Value {
    let (kind, url) = chart_source(&release.chart);
    let repo = match kind {
        // Argo CD names a Helm OCI repository without the scheme (and a repository Secret
        // with `enableOCI`); the chart is the last path segment.
        "oci" => url
            .trim_start_matches("oci://")
            .trim_end_matches(&format!("/{}", release.chart.name))
            .to_string(),
        _ => url,
    };
    application(
        name,
        wave,
        json!({
            "repoURL": repo,
            "chart": release.chart.name,
            "targetRevision": release.chart.version,
            "helm": {"releaseName": release.name, "valuesObject": release.values},
        }),
        destination.clone(),
        &mesh.namespace,
        options,
    )
}

fn application(
    name: &str,
    wave: usize,
    source: Value,
    mut destination: Value,
    namespace: &str,
    options: &Options,
) -> Value {
    destination["namespace"] = json!(namespace);
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": name,
            "namespace": options.namespace,
            "annotations": {"argocd.argoproj.io/sync-wave": wave.to_string()},
            "finalizers": ["resources-finalizer.argocd.argoproj.io"],
        },
        "spec": {
            "project": "default",
            "source": source,
            "destination": destination,
            "ignoreDifferences": [
                {"group": "admissionregistration.k8s.io", "kind": "ValidatingWebhookConfiguration",
                 "jqPathExpressions": [".webhooks[]?.clientConfig.caBundle", ".webhooks[]?.failurePolicy"]},
                {"group": "admissionregistration.k8s.io", "kind": "MutatingWebhookConfiguration",
                 "jqPathExpressions": [".webhooks[]?.clientConfig.caBundle"]},
                // What `meshup upgrade promote` sets to switch the revision-less injector off.
                {"group": "admissionregistration.k8s.io", "kind": "MutatingWebhookConfiguration",
                 "name": default_injector(namespace),
                 "jqPathExpressions": [".webhooks[]?.namespaceSelector", ".webhooks[]?.objectSelector"]},
            ],
            "syncPolicy": {
                "automated": {"prune": true, "selfHeal": true},
                "syncOptions": ["ServerSideApply=true", "RespectIgnoreDifferences=true"],
            },
        },
    })
}
