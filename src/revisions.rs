//! Which istiod revisions a cluster runs, where its revision tags point, and which revision
//! injected each running proxy: what upgrades decide from and what `status` shows.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::live::{Deployment, Live, Pod};
use crate::runner::StepError;

/// The label of a revision tag's webhook configuration and Service (istiod chart
/// `templates/revision-tags-mwc.yaml`, `revision-tags-svc.yaml`).
pub const TAG_LABEL: &str = "istio.io/tag";
/// The tag every `istio-injection=enabled` namespace follows.
pub const DEFAULT_TAG: &str = "default";
/// The annotation Istio's injector writes on every pod it injects, with the revision
/// (pkg/kube/inject/webhook.go, `getInjectionStatus`).
pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";

/// One istiod revision running in a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Revision {
    /// `istio.io/rev` of its pods: `default` for istiod installed without a revision.
    pub name: String,
    /// Its Istio version (the tag of its image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// What a cluster runs of Istio's control plane, as an upgrade sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Installed {
    /// Oldest version first.
    pub revisions: Vec<Revision>,
    /// Where each revision tag points.
    pub tags: BTreeMap<String, String>,
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

/// The revision name meshup gives Istio `version`: `1-29-0` for `1.29.0`.
pub fn revision_of(version: &str) -> String {
    version.replace('.', "-")
}

/// (major, minor, patch) of a version such as `1.29.0` or `1.29.0-distroless`.
pub fn triple(version: &str) -> Option<(u64, u64, u64)> {
    let core: String = version
        .trim_start_matches('v')
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Minor versions from `a` to `b` (negative: `b` is older).
pub fn minors_between(a: &str, b: &str) -> Option<i64> {
    let (a, b) = (triple(a)?, triple(b)?);
    (a.0 == b.0).then(|| b.1 as i64 - a.1 as i64)
}

/// The istiod revisions running in `namespace` (from their Deployments, oldest first).
pub fn running(live: &Live, namespace: &str) -> Result<Vec<Revision>, StepError> {
    let deployments: Vec<Deployment> =
        live.list("deployments", Some(namespace), Some("app=istiod"))?;
    let mut revisions: Vec<Revision> = deployments
        .iter()
        .filter(|d| d.metadata.deletion_timestamp.is_empty())
        .map(|d| Revision {
            name: d
                .metadata
                .labels
                .get("istio.io/rev")
                .cloned()
                .unwrap_or_else(|| DEFAULT_TAG.to_string()),
            version: d
                .image_tag()
                .or_else(|| d.metadata.labels.get("app.kubernetes.io/version").cloned()),
        })
        .collect();
    oldest_first(&mut revisions);
    Ok(revisions)
}

/// Sorts revisions by version, oldest first, one entry per name.
pub fn oldest_first(revisions: &mut Vec<Revision>) {
    revisions.sort_by_key(|r| (r.version.as_deref().and_then(triple), r.name.clone()));
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

/// The running proxies of every revision, per namespace.
pub fn proxies(live: &Live) -> Result<Proxies, StepError> {
    let pods: Vec<Pod> = live.list_everywhere("pods", None)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(name: &str, version: &str) -> Revision {
        Revision {
            name: name.into(),
            version: Some(version.into()),
        }
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
    fn versions_compare_by_minor() {
        assert_eq!(revision_of("1.29.0"), "1-29-0");
        assert_eq!(triple("1.29.0-distroless"), Some((1, 29, 0)));
        assert_eq!(minors_between("1.28.1", "1.30.0"), Some(2));
        assert_eq!(minors_between("1.29.0", "1.28.3"), Some(-1));
    }
}
