//! Which istiod revisions a cluster runs, where its revision tags point, and which revision
//! injected each running proxy: what upgrades decide from and what `status` shows.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::model::version::{self, IstioVersion};
use crate::observe::manager::Manager;
use crate::tools::live::{Deployment, HelmRelease, Live, Pod};
use crate::tools::runner::StepError;

/// The label of a revision tag's webhook configuration and Service (istiod chart
/// `templates/revision-tags-mwc.yaml`, `revision-tags-svc.yaml`).
pub const TAG_LABEL: &str = "istio.io/tag";
/// The tag every `istio-injection=enabled` namespace follows.
pub const DEFAULT_TAG: &str = "default";
/// The annotation Istio's injector writes on every pod it injects, with the revision
/// (pkg/kube/inject/webhook.go, `getInjectionStatus`).
pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";

/// The label Istio's charts give istiod's Deployment with the chart's `appVersion`.
const APP_VERSION: &str = "app.kubernetes.io/version";
/// The label Istio's charts give istiod's Deployment with the chart: `istiod-1.30.0`.
const HELM_CHART: &str = "helm.sh/chart";
/// The annotation Helm gives what a release owns, naming the release.
const RELEASE_NAME: &str = "meta.helm.sh/release-name";

/// One istiod revision running in a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Revision {
    /// `istio.io/rev` of its pods: `default` for istiod installed without a revision.
    pub name: String,
    /// Its Istio version ([`Reading::version`]); `None`: unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<IstioVersion>,
    /// The version of the istiod chart it was installed from, as written (its `helm.sh/chart`
    /// label, else its Helm release's chart), when known.
    #[serde(skip)]
    pub chart: Option<String>,
    /// What was read, for messages when the version is unknown (``image `pilot:latest`, ...``).
    #[serde(skip)]
    pub found: String,
    /// Who runs its Deployment: meshup, or a fleet engine.
    #[serde(skip)]
    pub manager: Manager,
}

impl Revision {
    /// A revision of a known version.
    pub fn at(name: &str, version: IstioVersion) -> Revision {
        Revision {
            name: name.to_string(),
            version: Some(version),
            chart: Some(version.to_string()),
            found: String::new(),
            manager: Manager::Meshup,
        }
    }

    /// Its version, or `unknown`.
    pub fn version_text(&self) -> String {
        self.version
            .map_or_else(|| "unknown".to_string(), |v| v.to_string())
    }
}

/// What says which Istio an istiod runs, in the order it is asked: the tag of its image, its
/// `app.kubernetes.io/version` label, its `helm.sh/chart` label (`istiod-1.30.0`), the chart of
/// its Helm release (`istiod-1.30.0`, as helm lists it). The first that names a version
/// decides; `1.0.0` (Istio's charts before a release build stamps them) and what is no
/// version (`latest`, a digest, a private tag) say nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading<'a> {
    pub image: Option<&'a str>,
    pub app_version: Option<&'a str>,
    pub chart_label: Option<&'a str>,
    pub release_chart: Option<&'a str>,
}

impl<'a> Reading<'a> {
    /// What a Deployment says of itself (its Helm release not yet asked).
    pub fn of(d: &'a Deployment) -> Reading<'a> {
        let label = |key: &str| d.metadata.labels.get(key).map(String::as_str);
        Reading {
            image: d.image(),
            app_version: label(APP_VERSION),
            chart_label: label(HELM_CHART),
            release_chart: None,
        }
    }

    /// The version, from the first clue that names one.
    pub fn version(&self) -> Option<IstioVersion> {
        self.image
            .and_then(IstioVersion::of_image)
            .or_else(|| self.app_version.and_then(IstioVersion::stamped))
            .or_else(|| self.chart_label.and_then(IstioVersion::of_chart))
            .or_else(|| self.release_chart.and_then(IstioVersion::of_chart))
    }

    /// The istiod chart's version, as written: the label's, else the release's.
    pub fn chart(&self) -> Option<String> {
        self.chart_label
            .or(self.release_chart)
            .and_then(version::chart_version)
            .map(str::to_string)
    }

    /// Every clue that was there, for a message: ``image `pilot:latest`, chart istiod-1.0.0``.
    pub fn found(&self) -> String {
        let mut out = Vec::new();
        if let Some(image) = self.image {
            out.push(format!("image `{image}`"));
        }
        if let Some(v) = self.app_version {
            out.push(format!("{APP_VERSION} `{v}`"));
        }
        if let Some(chart) = self.chart_label.or(self.release_chart) {
            out.push(format!("chart `{chart}`"));
        }
        if out.is_empty() {
            "no image tag, version label or chart".to_string()
        } else {
            out.join(", ")
        }
    }

    fn revision(&self, name: String) -> Revision {
        Revision {
            name,
            version: self.version(),
            chart: self.chart(),
            found: self.found(),
            manager: Manager::Meshup,
        }
    }
}

/// What a cluster runs of Istio's control plane, as an upgrade sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Installed {
    /// Oldest version first.
    pub revisions: Vec<Revision>,
    /// Where each revision tag points.
    pub tags: BTreeMap<String, String>,
}

/// Where a phase of an upgrade leaves a cluster: what `meshup upgrade PHASE --wait-only` waits
/// for, and what `meshup export --upgrade PHASE` writes for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stand {
    /// Only the old revision (not started, or rolled back).
    Old,
    /// Both revisions; `default` on the old one.
    Started,
    /// Both revisions; `default` and the tags on the new one.
    Promoted,
    /// Only the new revision (finished).
    New,
}

impl Stand {
    /// What a cluster at this stand runs.
    pub fn describe(self) -> &'static str {
        match self {
            Stand::Old => "the old revision only",
            Stand::Started => "both revisions, `default` on the old one",
            Stand::Promoted => "both revisions, `default` and the tags on the new one",
            Stand::New => "the new revision only",
        }
    }
}

/// Where a cluster stands in an upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No istiod.
    Empty,
    /// One revision: no upgrade under way.
    Steady(Revision),
    /// Two revisions, `default` still on the old one.
    Started { old: Revision, new: Revision },
    /// Two revisions, `default` on the new one.
    Promoted { old: Revision, new: Revision },
    /// More than two revisions.
    Tangled(Vec<Revision>),
}

impl Installed {
    /// The revision `default` selects: its tag, else the revision-less istiod.
    pub fn default_revision(&self) -> Option<&str> {
        self.tags.get(DEFAULT_TAG).map(String::as_str).or_else(|| {
            self.revisions
                .iter()
                .find(|r| r.name == DEFAULT_TAG)
                .map(|r| r.name.as_str())
        })
    }

    pub fn phase(&self) -> Phase {
        match self.revisions.as_slice() {
            [] => Phase::Empty,
            [one] => Phase::Steady(one.clone()),
            [old, new] => {
                let (old, new) = (old.clone(), new.clone());
                if self.default_revision() == Some(new.name.as_str()) {
                    Phase::Promoted { old, new }
                } else {
                    Phase::Started { old, new }
                }
            }
            many => Phase::Tangled(many.to_vec()),
        }
    }

    /// The tags that point at `revision` (`default` first when it does).
    pub fn tags_of(&self, revision: &str) -> Vec<String> {
        let mut tags: Vec<String> = self
            .tags
            .iter()
            .filter(|(_, r)| *r == revision)
            .map(|(t, _)| t.clone())
            .collect();
        if self.default_revision() == Some(revision) && !tags.iter().any(|t| t == DEFAULT_TAG) {
            tags.insert(0, DEFAULT_TAG.to_string());
        }
        tags
    }
}

/// The revision name meshup gives Istio `version`: `1-29-0` for `1.29.0` (and for
/// `1.29.0-distroless`: a variant is no part of the version).
pub fn revision_of(version: &str) -> String {
    IstioVersion::parse(version).map_or_else(|| version.replace('.', "-"), IstioVersion::revision)
}

/// The version istiod Deployment `d` runs ([`Reading`]), asking `releases` (helm's list of
/// its namespace) only when the Deployment itself names none.
pub fn version_of(d: &Deployment, releases: &[HelmRelease]) -> Revision {
    let mut reading = Reading::of(d);
    if reading.version().is_none() {
        reading.release_chart = d
            .metadata
            .annotations
            .get(RELEASE_NAME)
            .and_then(|name| releases.iter().find(|r| r.name == *name))
            .map(|r| r.chart.as_str());
    }
    Revision {
        manager: Manager::of(&d.metadata.labels, &d.metadata.annotations),
        ..reading.revision(
            d.metadata
                .labels
                .get("istio.io/rev")
                .cloned()
                .unwrap_or_else(|| DEFAULT_TAG.to_string()),
        )
    }
}

/// The istiod revisions running in `namespace` (from their Deployments, oldest first). Helm's
/// releases are listed only when a Deployment does not say its version.
pub fn running(live: &Live, namespace: &str) -> Result<Vec<Revision>, StepError> {
    let deployments: Vec<Deployment> =
        live.list("deployments", Some(namespace), Some("app=istiod"))?;
    let deployments: Vec<&Deployment> = deployments
        .iter()
        .filter(|d| d.metadata.deletion_timestamp.is_empty())
        .collect();
    let releases = if deployments
        .iter()
        .any(|d| Reading::of(d).version().is_none())
    {
        live.helm_releases(namespace)?
    } else {
        Vec::new()
    };
    let mut revisions: Vec<Revision> = deployments
        .iter()
        .map(|d| version_of(d, &releases))
        .collect();
    oldest_first(&mut revisions);
    Ok(revisions)
}

/// Sorts revisions by version, oldest first, one entry per name.
pub fn oldest_first(revisions: &mut Vec<Revision>) {
    revisions.sort_by_key(|r| (r.version, r.name.clone()));
    revisions.dedup_by(|a, b| a.name == b.name);
}

/// Where each revision tag points (the `istio.io/rev` label of its webhook configuration).
pub fn tags(live: &Live) -> Result<BTreeMap<String, String>, StepError> {
    let hooks: Vec<Value> = live.list("mutatingwebhookconfigurations", None, Some(TAG_LABEL))?;
    Ok(hooks
        .iter()
        .filter_map(|h| {
            let labels = h.pointer("/metadata/labels")?;
            Some((
                labels.get(TAG_LABEL)?.as_str()?.to_string(),
                labels
                    .get("istio.io/rev")
                    .and_then(Value::as_str)
                    .unwrap_or(DEFAULT_TAG)
                    .to_string(),
            ))
        })
        .collect())
}

/// One cluster's revisions and tags.
pub fn installed(live: &Live, namespace: &str) -> Result<Installed, StepError> {
    Ok(Installed {
        revisions: running(live, namespace)?,
        tags: tags(live)?,
    })
}

/// Running pods with a proxy, by the revision that injected them, then namespace.
pub type Proxies = BTreeMap<String, BTreeMap<String, usize>>;

/// The revision that injected a pod's proxy, if it has one.
fn proxy_revision(pod: &Pod) -> Option<String> {
    let status: Value = serde_json::from_str(pod.metadata.annotations.get(SIDECAR_STATUS)?).ok()?;
    Some(
        status
            .get("revision")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_TAG)
            .to_string(),
    )
}

/// Whether a pod runs and is not on its way out.
fn live_pod(pod: &Pod) -> bool {
    pod.status.phase == "Running" && pod.metadata.deletion_timestamp.is_empty()
}

/// The label Istio's sidecar injection template gives every pod it injects (`istio` unless
/// the pod sets another value, e.g. `disabled`: any value is a sidecar).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// The label the gateway chart gives its pods (`istio: eastwestgateway`, `ingressgateway`):
/// the gateway injection template adds no tlsMode label, so gateways are found by this one.
pub const GATEWAY_LABEL: &str = "istio";

/// The running proxies of every revision, per namespace: only injected pods are read, never
/// every pod. Sidecars carry the tlsMode label and gateways the gateway chart's `istio` label
/// (two filtered lists, everywhere); the revision is the one `sidecar.istio.io/status`
/// names, so a labelled pod without that annotation (istiod's own, `istio: pilot`) counts
/// for none.
pub fn proxies(live: &Live) -> Result<Proxies, StepError> {
    let mut pods: Vec<Pod> = live.list_everywhere("pods", Some(TLS_MODE_LABEL))?;
    let sidecars: std::collections::BTreeSet<(String, String)> = pods
        .iter()
        .map(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()))
        .collect();
    let gateways: Vec<Pod> = live.list_everywhere("pods", Some(GATEWAY_LABEL))?;
    pods.extend(
        gateways.into_iter().filter(|p| {
            !sidecars.contains(&(p.metadata.namespace.clone(), p.metadata.name.clone()))
        }),
    );
    let mut out = Proxies::new();
    for pod in pods.iter().filter(|p| live_pod(p)) {
        if let Some(rev) = proxy_revision(pod) {
            *out.entry(rev)
                .or_default()
                .entry(pod.metadata.namespace.clone())
                .or_default() += 1;
        }
    }
    Ok(out)
}

/// `ns (N), ns (N)`.
pub fn describe(namespaces: &BTreeMap<String, usize>) -> String {
    namespaces
        .iter()
        .map(|(ns, n)| format!("{ns} ({n} pod{})", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The revision-less istiod's injector configuration, whose selectors `meshup upgrade promote`
/// sets to switch it off (an engine must leave them alone).
pub fn default_injector(namespace: &str) -> String {
    if namespace == "istio-system" {
        "istio-sidecar-injector".to_string()
    } else {
        format!("istio-sidecar-injector-{namespace}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(name: &str, version: &str) -> Revision {
        Revision::at(name, IstioVersion::parse(version).unwrap())
    }

    #[test]
    fn phases_follow_where_default_points() {
        let mut installed = Installed {
            revisions: vec![rev("default", "1.28.1")],
            tags: BTreeMap::new(),
        };
        assert_eq!(installed.phase(), Phase::Steady(rev("default", "1.28.1")));
        installed.revisions.push(rev("1-29-0", "1.29.0"));
        assert!(matches!(installed.phase(), Phase::Started { .. }));
        installed.tags.insert("default".into(), "1-29-0".into());
        assert!(matches!(installed.phase(), Phase::Promoted { .. }));
        assert_eq!(installed.tags_of("1-29-0"), ["default"]);
        assert!(installed.tags_of("default").is_empty());
    }

    #[test]
    fn a_revision_is_named_for_the_version_without_its_variant() {
        assert_eq!(revision_of("1.29.0"), "1-29-0");
        assert_eq!(revision_of("1.29.0-distroless"), "1-29-0");
        assert_eq!(revision_of("v1.29.0"), "1-29-0");
    }

    fn reading<'a>(
        image: &'a str,
        app_version: Option<&'a str>,
        chart_label: Option<&'a str>,
        release_chart: Option<&'a str>,
    ) -> Reading<'a> {
        Reading {
            image: Some(image),
            app_version,
            chart_label,
            release_chart,
        }
    }

    #[test]
    fn the_image_tag_names_the_version_first() {
        let r = reading(
            "docker.io/istio/pilot:1.30.0-distroless",
            Some("1.29.0"),
            Some("istiod-1.29.0"),
            None,
        );
        assert_eq!(r.version(), IstioVersion::parse("1.30.0"));
    }

    #[test]
    fn without_a_version_tag_the_labels_then_the_release_name_it() {
        let digest = format!("docker.io/istio/pilot@sha256:{}", "0".repeat(64));
        for image in [
            "docker.io/istio/pilot:latest",
            digest.as_str(),
            "pilot:1.0.0",
        ] {
            let r = reading(image, Some("1.30.0"), Some("istiod-1.29.0"), None);
            assert_eq!(r.version(), IstioVersion::parse("1.30.0"), "{image}");
            let r = reading(image, Some("1.0.0"), Some("istiod-1.29.0"), None);
            assert_eq!(r.version(), IstioVersion::parse("1.29.0"), "{image}");
            let r = reading(image, None, Some("istiod-1.0.0"), Some("istiod-1.28.1"));
            assert_eq!(r.version(), IstioVersion::parse("1.28.1"), "{image}");
            assert_eq!(r.chart().as_deref(), Some("1.0.0"));
        }
    }

    #[test]
    fn an_unstamped_chart_with_a_latest_tag_is_of_unknown_version() {
        let r = reading(
            "docker.io/istio/pilot:latest",
            Some("1.0.0"),
            Some("istiod-1.0.0"),
            Some("istiod-1.0.0"),
        );
        assert_eq!(r.version(), None);
        assert_eq!(r.chart().as_deref(), Some("1.0.0"));
        assert_eq!(
            r.found(),
            "image `docker.io/istio/pilot:latest`, app.kubernetes.io/version `1.0.0`, chart `istiod-1.0.0`"
        );
    }

    #[test]
    fn the_release_is_asked_only_when_the_deployment_names_no_version() {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "istiod", "labels": {"app": "istiod"},
                "annotations": {"meta.helm.sh/release-name": "istiod"}},
            "spec": {"template": {"spec": {"containers": [{"name": "discovery", "image": "pilot:latest"}]}}}
        }))
        .unwrap();
        let releases: Vec<HelmRelease> = serde_json::from_value(serde_json::json!([
            {"name": "istiod", "status": "deployed", "chart": "istiod-1.30.0"},
            {"name": "istio-base", "status": "deployed", "chart": "base-1.31.0"}
        ]))
        .unwrap();
        let r = version_of(&d, &releases);
        assert_eq!(r.name, "default");
        assert_eq!(r.version, IstioVersion::parse("1.30.0"));
        assert_eq!(version_of(&d, &[]).version, None);
    }

    #[test]
    fn revisions_sort_by_version_not_by_text() {
        let mut revisions = vec![rev("1-10-0", "1.10.0"), rev("1-9-0", "1.9.0-distroless")];
        oldest_first(&mut revisions);
        assert_eq!(revisions[0].name, "1-9-0");
    }
}
