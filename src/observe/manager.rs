//! Who manages an object: meshup (or anything else that runs helm), Flux's helm-controller,
//! or Argo CD — read from the marks each engine leaves on what it applies.
//!
//! - helm-controller labels every object of a release with `helm.toolkit.fluxcd.io/name` and
//!   `helm.toolkit.fluxcd.io/namespace`, the HelmRelease's (its post-renderer's origin
//!   labels, helm-controller `internal/postrender`).
//! - Argo CD annotates what it syncs with `argocd.argoproj.io/tracking-id`
//!   (`APP:GROUP/KIND:NAMESPACE/NAME`; annotation tracking, the default since Argo CD 2.x's
//!   `application.resourceTrackingMethod`; argo-cd `util/argo/resource_tracking.go`).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Flux's origin labels.
pub const FLUX_NAME: &str = "helm.toolkit.fluxcd.io/name";
pub const FLUX_NAMESPACE: &str = "helm.toolkit.fluxcd.io/namespace";
/// Argo CD's tracking annotation.
pub const ARGOCD_TRACKING: &str = "argocd.argoproj.io/tracking-id";

/// Who manages an object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "engine", rename_all = "camelCase")]
pub enum Manager {
    /// No engine's mark: meshup's own (or a hand-run helm).
    #[default]
    Meshup,
    /// Flux, through the HelmRelease `namespace/name`.
    Flux { release: String },
    /// Argo CD, through the Application named.
    ArgoCd { application: String },
}

impl Manager {
    /// From an object's labels and annotations.
    pub fn of(labels: &BTreeMap<String, String>, annotations: &BTreeMap<String, String>) -> Self {
        if let Some(name) = labels.get(FLUX_NAME) {
            let namespace = labels.get(FLUX_NAMESPACE).map_or("", String::as_str);
            return Manager::Flux {
                release: format!("{namespace}/{name}"),
            };
        }
        if let Some(tracking) = annotations.get(ARGOCD_TRACKING) {
            let application = tracking.split(':').next().unwrap_or_default().to_string();
            return Manager::ArgoCd { application };
        }
        Manager::Meshup
    }

    /// An engine's, not meshup's.
    pub fn is_engine(&self) -> bool {
        !matches!(self, Manager::Meshup)
    }

    /// The engine's name.
    pub fn engine(&self) -> &'static str {
        match self {
            Manager::Meshup => "meshup",
            Manager::Flux { .. } => "Flux",
            Manager::ArgoCd { .. } => "Argo CD",
        }
    }
}

impl fmt::Display for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Manager::Meshup => f.write_str("meshup"),
            Manager::Flux { release } => write!(f, "Flux (HelmRelease {release})"),
            Manager::ArgoCd { application } => write!(f, "Argo CD (Application {application})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_engine_is_read_from_its_own_mark() {
        assert_eq!(Manager::of(&map(&[]), &map(&[])), Manager::Meshup);
        let flux = Manager::of(
            &map(&[(FLUX_NAME, "istiod"), (FLUX_NAMESPACE, "flux-system")]),
            &map(&[]),
        );
        assert_eq!(flux.to_string(), "Flux (HelmRelease flux-system/istiod)");
        let argo = Manager::of(
            &map(&[("app.kubernetes.io/instance", "istiod")]),
            &map(&[(
                ARGOCD_TRACKING,
                "east-istiod:apps/Deployment:istio-system/istiod",
            )]),
        );
        assert_eq!(argo.to_string(), "Argo CD (Application east-istiod)");
        // Helm's own instance label is not an engine's mark.
        assert!(
            !Manager::of(&map(&[("app.kubernetes.io/instance", "istiod")]), &map(&[])).is_engine()
        );
    }
}
