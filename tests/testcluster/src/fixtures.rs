//! What the tests install: Istio's own charts of the pinned builds (one minor version apart,
//! for upgrades), and the Gateway API CRDs each build is built against, both put into
//! `.tools/` by `scripts/istio-charts.sh`. Nothing here is hand-written.

use std::path::{Path, PathBuf};

/// The Istio builds the suite installs: Istio's own charts from the `istio.io/istio` module,
/// stamped as a release build stamps them (`scripts/pins.env`, `ISTIO_BUILDS`), one minor
/// version apart. Tests install [`ISTIO_FROM`] and upgrade to [`ISTIO_TO`].
pub const ISTIO_FROM: &str = "1.30.0";
/// The newer of the two Istio builds (see [`ISTIO_FROM`]).
pub const ISTIO_TO: &str = "1.31.0";

/// The revision meshup gives [`ISTIO_TO`] in a canary upgrade.
pub const ISTIO_TO_REVISION: &str = "1-31-0";

/// A copy of Istio's charts of build `version` ([`istio_charts`]) stamped `stamp` instead:
/// Chart.yaml's `version` and `appVersion`, and every values `tag: VERSION`, become `stamp`.
/// It stands in for an Istio release the Go module proxy does not serve (a version guard
/// reads only the stamp); the templates are Istio's. Gone when the value is dropped.
pub fn istio_charts_as(version: &str, stamp: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("istio-{stamp}-"))
        .tempdir()
        .expect("a temporary directory");
    copy_tree(&istio_charts(version), dir.path()).expect("copy Istio's charts");
    for chart in ["base", "istiod", "gateway", "cni", "ztunnel"] {
        let chart = dir.path().join(chart);
        let meta = chart.join("Chart.yaml");
        let text = std::fs::read_to_string(&meta).expect("Chart.yaml");
        std::fs::write(&meta, with_chart_version(&text, stamp)).expect("write Chart.yaml");
        let values = chart.join("values.yaml");
        let text = std::fs::read_to_string(&values).expect("values.yaml");
        let text = text.replace(&format!("tag: {version}\n"), &format!("tag: {stamp}\n"));
        std::fs::write(&values, text).expect("write values.yaml");
    }
    dir
}

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

/// The Gateway API CRDs (standard channel, from the `sigs.k8s.io/gateway-api` module) of the
/// release Istio `version` is built against ([`gateway_api_for_istio`]), as
/// `scripts/istio-charts.sh` writes them into `.tools/gateway-api/RELEASE/standard-crds.yaml`.
/// Panics, saying how to get them, when they are missing.
pub fn istio_gateway_api_crds(version: &str) -> PathBuf {
    let release = gateway_api_for_istio(version)
        .unwrap_or_else(|| panic!("no Gateway API release is known for Istio {version}"));
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools/gateway-api")
        .join(release)
        .join("standard-crds.yaml");
    let file = file.canonicalize().unwrap_or(file);
    assert!(
        file.is_file(),
        "the Gateway API {release} CRDs are missing from {}; run scripts/istio-charts.sh (scripts/test.sh does)",
        file.display()
    );
    file
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_restamped_copy_names_only_the_new_version() {
        assert_eq!(ISTIO_TO_REVISION, ISTIO_TO.replace('.', "-"));
        let dir = istio_charts_as(ISTIO_TO, "1.32.0");
        let meta = std::fs::read_to_string(dir.path().join("istiod/Chart.yaml")).unwrap();
        assert!(meta.contains("\nversion: 1.32.0\n"), "{meta}");
        assert!(meta.contains("\nappVersion: 1.32.0\n"), "{meta}");
        let values = std::fs::read_to_string(dir.path().join("istiod/values.yaml")).unwrap();
        assert!(values.contains("tag: 1.32.0\n"), "{values}");
        assert!(!values.contains(ISTIO_TO), "{values}");
    }

    #[test]
    fn each_build_gets_the_gateway_api_crds_it_is_built_against() {
        for version in [ISTIO_FROM, ISTIO_TO] {
            let release = gateway_api_for_istio(version).unwrap();
            let text = std::fs::read_to_string(istio_gateway_api_crds(version)).unwrap();
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
                assert_eq!(d["kind"].as_str(), Some("CustomResourceDefinition"));
                assert_eq!(
                    d["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"]
                        .as_str(),
                    Some(release),
                    "{version}"
                );
            }
        }
    }
}
