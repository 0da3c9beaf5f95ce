//! The mesh as Flux runs it: a chart source, a `HelmRelease` (helm.toolkit.fluxcd.io/v2) per
//! cluster and release, and the plain manifests, each cluster's in its own folder.
//!
//! - Order: each release `dependsOn` the one before it in meshup's install order (istio-base,
//!   istiod, the node agents, the gateway); the plain manifests are a second Kustomization
//!   that `dependsOn` the releases' (`wait: true`), since their kinds come from istio-base.
//! - Names: `releaseName` and `storageNamespace` are the names meshup installs and reads, so
//!   `status`, `verify` and the upgrade guards find the releases.
//! - Drift detection on; ignored: the fields istiod patches at run time (the webhooks'
//!   `caBundle`, the validator's `failurePolicy`) and the selectors `meshup upgrade` sets on
//!   the revision-less injector to switch it off.
//! - Trust first: every release of a primary reads the trust gate ConfigMap (`valuesFrom`,
//!   not optional; its `values.yaml` is `{}`), which meshup writes only once the namespace
//!   and `cacerts` are in place. helm-controller does not install a release whose
//!   `valuesFrom` is missing.
//! - Istio's CRDs are istio-base's templates with `helm.sh/resource-policy: keep`: helm
//!   leaves them on uninstall.
//! - Layouts: Flux in every cluster (`<cluster>/`: point that cluster's Flux at it), or a hub
//!   (`hub/`) reaching each cluster through `kubeConfig.secretRef`.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::fleet::parts::{
    ClusterHandoff, Export, Layout, Options, ReleasePart, Row, chart_source, kubeconfig_secret,
    kustomization, trust_gate, write_manifests, yaml, yaml_all,
};
use crate::model::mesh::Mesh;
use crate::observe::revisions::default_injector;

/// The helm chart layer's media type, which an OCIRepository must select to hand helm-controller
/// the chart.
const HELM_CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";

/// Writes the Flux layout.
pub fn write(mesh: &Mesh, parts: &[ClusterHandoff], options: &Options) -> Export {
    let mut export = Export::default();
    let hub = options.layout == Layout::Hub;
    let mut hub_releases = Vec::new();
    let mut hub_kustomizations = Vec::new();
    if hub {
        hub_kustomizations.push(kustomization_object(
            "meshup-releases",
            &format!("{}/hub/releases", options.path),
            None,
            &[],
            options,
        ));
    }
    for part in parts {
        let c = &part.cluster;
        let prefix = if hub { format!("{c}-") } else { String::new() };
        let releases_dir = if hub {
            PathBuf::from("hub/releases")
        } else {
            PathBuf::from(c).join("releases")
        };
        let mut listed = Vec::new();
        if !hub {
            export.files.insert(
                releases_dir.join("sources.yaml"),
                yaml_all(&sources(part, options)),
            );
            listed.push("sources.yaml".to_string());
        }
        let mut before: Option<String> = None;
        for release in &part.releases {
            let name = format!("{prefix}{}", release.name);
            let object = helm_release(mesh, part, release, &name, before.as_deref(), options);
            let file = format!("{name}.yaml");
            export.files.insert(releases_dir.join(&file), yaml(&object));
            export.rows.push(Row {
                cluster: c.clone(),
                object: format!(
                    "Helm release `{}` (chart {} {})",
                    release.name,
                    release.chart.name,
                    release.chart.version.as_deref().unwrap_or("newest")
                ),
                owner: "Flux".into(),
                how: format!(
                    "HelmRelease `{name}`: {}",
                    releases_dir.join(&file).display()
                ),
            });
            listed.push(file);
            before = Some(name);
        }
        if hub {
            hub_releases.extend(listed);
        } else {
            export.files.insert(
                releases_dir.join("kustomization.yaml"),
                kustomization(&listed),
            );
        }
        let objects_dir = PathBuf::from(c).join("objects");
        let objects_listed = write_manifests(&mut export, part, "Flux");
        let mut kustomizations = Vec::new();
        if !hub {
            kustomizations.push(kustomization_object(
                "meshup-releases",
                &format!("{}/{c}/releases", options.path),
                None,
                &[],
                options,
            ));
        }
        if !objects_listed.is_empty() {
            export.files.insert(
                objects_dir.join("kustomization.yaml"),
                kustomization(&objects_listed),
            );
            let object = kustomization_object(
                &format!("{prefix}meshup-objects"),
                &format!("{}/{c}/objects", options.path),
                hub.then(|| kubeconfig_secret(c)),
                &["meshup-releases"],
                options,
            );
            if hub {
                hub_kustomizations.push(object);
            } else {
                kustomizations.push(object);
            }
        }
        if !hub {
            export.files.insert(
                PathBuf::from(c).join("flux.yaml"),
                yaml_all(&kustomizations),
            );
            export.files.insert(
                PathBuf::from(c).join("kustomization.yaml"),
                kustomization(&["flux.yaml".to_string()]),
            );
        }
    }
    if hub {
        let mut listed = vec!["sources.yaml".to_string()];
        listed.extend(hub_releases);
        let all_sources: Vec<Value> = parts
            .first()
            .map(|p| sources(p, options))
            .unwrap_or_default();
        export.files.insert(
            PathBuf::from("hub/releases/sources.yaml"),
            yaml_all(&all_sources),
        );
        export.files.insert(
            PathBuf::from("hub/releases/kustomization.yaml"),
            kustomization(&listed),
        );
        export.files.insert(
            PathBuf::from("hub/flux.yaml"),
            yaml_all(&hub_kustomizations),
        );
        export.files.insert(
            PathBuf::from("hub/kustomization.yaml"),
            kustomization(&["flux.yaml".to_string()]),
        );
    }
    export
}

/// The chart sources a cluster's releases read: one HelmRepository for an https repository,
/// one OCIRepository per chart for an OCI registry.
fn sources(part: &ClusterHandoff, options: &Options) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for release in &part.releases {
        let (kind, url) = chart_source(&release.chart);
        let object = match kind {
            "oci" => json!({
                "apiVersion": "source.toolkit.fluxcd.io/v1",
                "kind": "OCIRepository",
                "metadata": {"name": oci_source(&release.chart.name), "namespace": options.namespace},
                "spec": {
                    "interval": options.interval,
                    "url": url,
                    "ref": {"tag": release.chart.version},
                    "layerSelector": {"mediaType": HELM_CHART_LAYER, "operation": "copy"},
                },
            }),
            _ => json!({
                "apiVersion": "source.toolkit.fluxcd.io/v1",
                "kind": "HelmRepository",
                "metadata": {"name": "istio", "namespace": options.namespace},
                "spec": {"interval": options.interval, "url": url},
            }),
        };
        if !out.contains(&object) {
            out.push(object);
        }
    }
    out
}

fn oci_source(chart: &str) -> String {
    format!("istio-{chart}")
}

/// One release as a HelmRelease.
fn helm_release(
    mesh: &Mesh,
    part: &ClusterHandoff,
    release: &ReleasePart,
    name: &str,
    after: Option<&str>,
    options: &Options,
) -> Value {
    let (kind, _) = chart_source(&release.chart);
    let mut spec = json!({
        "interval": options.interval,
        "releaseName": release.name,
        "targetNamespace": release.namespace,
        "storageNamespace": release.namespace,
        "install": {"remediation": {"retries": 3}},
        "upgrade": {"remediation": {"retries": 3}},
        "driftDetection": {"mode": "enabled", "ignore": drift_ignored(&mesh.namespace)},
        "values": release.values,
    });
    if kind == "oci" {
        spec["chartRef"] = json!({
            "kind": "OCIRepository",
            "name": oci_source(&release.chart.name),
            "namespace": options.namespace,
        });
    } else {
        spec["chart"] = json!({"spec": {
            "chart": release.chart.name,
            "version": release.chart.version,
            "sourceRef": {"kind": "HelmRepository", "name": "istio", "namespace": options.namespace},
            "interval": options.interval,
        }});
    }
    if let Some(after) = after {
        spec["dependsOn"] = json!([{"name": after}]);
    }
    // Every release of a cluster that signs with `cacerts`: istiod must not start before it,
    // and istio-base not either (failing on a namespace `install --only trust` makes would
    // spend its install retries and stall the release until its spec changes).
    if part.releases.iter().any(|r| r.istiod) {
        spec["valuesFrom"] = json!([{"kind": "ConfigMap", "name": trust_gate(&part.cluster)}]);
    }
    if options.layout == Layout::Hub {
        spec["kubeConfig"] =
            json!({"secretRef": {"name": kubeconfig_secret(&part.cluster), "key": "value"}});
    }
    json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": {"name": name, "namespace": options.namespace},
        "spec": spec,
    })
}

/// The fields drift detection leaves alone: what istiod patches into its webhook
/// configurations at run time, and the selectors `meshup upgrade promote` sets to switch the
/// revision-less injector off. Istio's injector has at most four webhooks, its validator one.
fn drift_ignored(namespace: &str) -> Value {
    let each = |fields: &[&str]| -> Vec<String> {
        (0..4)
            .flat_map(|i| fields.iter().map(move |f| format!("/webhooks/{i}/{f}")))
            .collect()
    };
    let injector = default_injector(namespace);
    json!([
        {"paths": each(&["clientConfig/caBundle", "failurePolicy"]),
         "target": {"kind": "ValidatingWebhookConfiguration"}},
        {"paths": each(&["clientConfig/caBundle"]),
         "target": {"kind": "MutatingWebhookConfiguration"}},
        {"paths": each(&["namespaceSelector", "objectSelector"]),
         "target": {"kind": "MutatingWebhookConfiguration", "name": injector}},
    ])
}

/// A Flux Kustomization applying `path` of the export's source.
fn kustomization_object(
    name: &str,
    path: &str,
    kubeconfig: Option<String>,
    depends_on: &[&str],
    options: &Options,
) -> Value {
    let (kind, source) = options
        .source
        .split_once('/')
        .unwrap_or(("GitRepository", options.source.as_str()));
    let mut spec = json!({
        "interval": options.interval,
        "path": path,
        "prune": true,
        "wait": true,
        "sourceRef": {"kind": kind, "name": source},
    });
    if !depends_on.is_empty() {
        spec["dependsOn"] = json!(
            depends_on
                .iter()
                .map(|d| json!({"name": d}))
                .collect::<Vec<_>>()
        );
    }
    if let Some(secret) = kubeconfig {
        spec["kubeConfig"] = json!({"secretRef": {"name": secret, "key": "value"}});
    }
    json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": name, "namespace": options.namespace},
        "spec": spec,
    })
}
