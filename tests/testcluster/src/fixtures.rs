//! The fixture charts at another Istio version, for tests that install one version and
//! upgrade to another, and the Gateway API CRDs Istio's ambient mode needs.

use std::path::{Path, PathBuf};

/// Where the fixture charts live in this repository (`tests/fixtures/charts`).
pub fn charts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/charts")
}

/// The Istio builds the suite installs: Istio's own charts from the `istio.io/istio` module,
/// stamped as a release build stamps them (`scripts/pins.env`, `ISTIO_BUILDS`), one minor
/// version apart. Tests install [`ISTIO_FROM`] and upgrade to [`ISTIO_TO`].
pub const ISTIO_FROM: &str = "1.30.0";
/// The newer of the two Istio builds (see [`ISTIO_FROM`]).
pub const ISTIO_TO: &str = "1.31.0";

/// The directory holding Istio's own charts (`base`, `istiod`, `gateway`, `cni`, `ztunnel`)
/// of Istio `version`, as `scripts/istio-charts.sh` stamps them into `.tools/istio/VERSION`.
/// Panics, saying how to get them, when they are missing.
pub fn istio_charts(version: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools/istio")
        .join(version);
    let dir = dir.canonicalize().unwrap_or(dir);
    assert!(
        dir.join("istiod/Chart.yaml").is_file(),
        "Istio's charts of {version} are missing from {}; run scripts/istio-charts.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// The Gateway API release whose CRDs `tests/fixtures/gateway-api-crds.yaml` holds (its
/// `gateway.networking.k8s.io/bundle-version` annotation).
pub const GATEWAY_API_FIXTURE_VERSION: &str = "v1.4.0";

/// Where the fixture Gateway API CRDs live (`tests/fixtures/gateway-api-crds.yaml`): the
/// standard-channel GatewayClass, Gateway, HTTPRoute, GRPCRoute and ReferenceGrant, for
/// `kubectl apply --server-side -f`.
pub fn gateway_api_crds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gateway-api-crds.yaml")
}

/// The Gateway API release an Istio minor version is built against (`sigs.k8s.io/gateway-api`
/// in the `go.mod` of its release tags: 1.26 a v1.3.0 pre-release, 1.27 v1.3.0, 1.28 and 1.29
/// v1.4.0, 1.30 v1.5.1, 1.31 v1.6.0); `None` for versions not checked. `version` is
/// `MAJOR.MINOR[.PATCH...]`.
pub fn gateway_api_for_istio(version: &str) -> Option<&'static str> {
    let minor: Vec<&str> = version.trim_start_matches('v').split('.').take(2).collect();
    match minor.as_slice() {
        ["1", "27"] => Some("v1.3.0"),
        ["1", "28"] | ["1", "29"] => Some("v1.4.0"),
        ["1", "30"] => Some("v1.5.1"),
        ["1", "31"] => Some("v1.6.0"),
        _ => None,
    }
}

/// A copy of the fixture charts (`base`, `istiod`, `gateway`, `cni`, `ztunnel`, each its own
/// directory) in a new temporary directory, standing in for Istio `version` (e.g. `1.29.0`):
/// each `Chart.yaml`'s `version` and `appVersion`, and the image tag of each `values.yaml`
/// (`global.tag`, or a top-level `tag` as the ztunnel chart has; istiod's is the tag from which
/// the emulated istiod takes its behaviour), are `version`. The directory goes when the
/// returned value is dropped.
pub fn charts_at(version: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("charts-{version}-"))
        .tempdir()
        .expect("a temporary directory");
    copy_tree(&charts_dir(), dir.path()).expect("copy the fixture charts");
    for chart in std::fs::read_dir(dir.path()).expect("the copied charts") {
        let chart = chart.expect("a chart directory").path();
        let meta = chart.join("Chart.yaml");
        if let Ok(text) = std::fs::read_to_string(&meta) {
            std::fs::write(&meta, with_chart_version(&text, version)).expect("write Chart.yaml");
        }
        let values = chart.join("values.yaml");
        if let Ok(text) = std::fs::read_to_string(&values) {
            std::fs::write(&values, with_global_tag(&text, version)).expect("write values.yaml");
        }
    }
    dir
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// `Chart.yaml` with its top-level `version` and `appVersion` set.
fn with_chart_version(text: &str, version: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("version:") {
                format!("version: {version}")
            } else if l.starts_with("appVersion:") {
                format!("appVersion: {version}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// `values.yaml` with the `tag` directly under the top-level `global:`, and a top-level `tag`,
/// set; other files as they are.
fn with_global_tag(text: &str, version: &str) -> String {
    let mut in_global = false;
    let mut out: Vec<String> = Vec::new();
    for l in text.lines() {
        if !l.starts_with(' ') && !l.starts_with('#') && !l.is_empty() {
            in_global = l.trim_end() == "global:";
        }
        if l.starts_with("tag:") {
            out.push(format!("tag: {version}"));
        } else if in_global && l.starts_with("  tag:") {
            out.push(format!("  tag: {version}"));
        } else {
            out.push(l.to_string());
        }
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_names_the_version_in_charts_and_the_istiod_tag() {
        let dir = charts_at("1.29.0");
        for chart in ["base", "istiod", "gateway", "cni", "ztunnel"] {
            let meta = std::fs::read_to_string(dir.path().join(chart).join("Chart.yaml")).unwrap();
            assert!(meta.contains("\nversion: 1.29.0\n"), "{chart}: {meta}");
            assert!(meta.contains("\nappVersion: 1.29.0\n"), "{chart}: {meta}");
            assert!(dir.path().join(chart).join("templates").is_dir());
        }
        let values =
            std::fs::read_to_string(dir.path().join("istiod").join("values.yaml")).unwrap();
        assert!(values.contains("\n  tag: 1.29.0\n"), "{values}");
        assert!(!values.contains("1.28.1"), "{values}");
        for (chart, tag) in [("cni", "\n  tag: 1.29.0\n"), ("ztunnel", "\ntag: 1.29.0\n")] {
            let values =
                std::fs::read_to_string(dir.path().join(chart).join("values.yaml")).unwrap();
            assert!(values.contains(tag), "{chart}: {values}");
            assert!(!values.contains("1.28.1"), "{chart}: {values}");
        }
    }

    #[test]
    fn the_gateway_api_fixture_carries_the_version_istio_1_28_and_1_29_use() {
        let text = std::fs::read_to_string(gateway_api_crds()).unwrap();
        let docs: Vec<serde_yaml::Value> = text
            .split("\n---\n")
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect();
        let names: Vec<&str> = docs
            .iter()
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"gateways.gateway.networking.k8s.io"));
        assert!(names.contains(&"gatewayclasses.gateway.networking.k8s.io"));
        for d in &docs {
            assert_eq!(
                d["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"].as_str(),
                Some(GATEWAY_API_FIXTURE_VERSION)
            );
        }
        assert_eq!(
            gateway_api_for_istio("1.28.1"),
            Some(GATEWAY_API_FIXTURE_VERSION)
        );
        assert_eq!(
            gateway_api_for_istio("1.29"),
            Some(GATEWAY_API_FIXTURE_VERSION)
        );
        assert_eq!(gateway_api_for_istio("1.30.0"), Some("v1.5.1"));
    }

    #[test]
    fn the_istio_builds_are_the_ones_the_pins_file_stamps() {
        let pins = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pins.env"),
        )
        .unwrap();
        let builds = pins
            .lines()
            .find_map(|l| l.strip_prefix("ISTIO_BUILDS="))
            .expect("ISTIO_BUILDS in scripts/pins.env");
        let versions: Vec<&str> = builds
            .trim_matches('"')
            .split_whitespace()
            .map(|b| b.split('=').next().unwrap())
            .collect();
        assert_eq!(versions, [ISTIO_FROM, ISTIO_TO]);
        for version in versions {
            let chart =
                std::fs::read_to_string(istio_charts(version).join("istiod/Chart.yaml")).unwrap();
            assert!(
                chart.contains(&format!("\nversion: {version}\n")),
                "{chart}"
            );
        }
    }

    #[test]
    fn only_the_global_tag_changes() {
        let text = "global:\n  hub: h\n  tag: 1.28.1\nother:\n  tag: keep\n";
        assert_eq!(
            with_global_tag(text, "1.29.0"),
            "global:\n  hub: h\n  tag: 1.29.0\nother:\n  tag: keep\n"
        );
    }
}
