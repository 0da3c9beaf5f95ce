//! Charts as data: where helm finds Istio's charts (`istio.charts`), and one [`Chart`] as a
//! release installs it. A release is (name, chart, values), so a gateway chart, a remote
//! profile or a second istiod revision is a value, not a new code path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml::Value;

/// Istio's public Helm chart repository, the default `istio.charts`.
pub const DEFAULT_CHARTS: &str = "https://istio-release.storage.googleapis.com/charts";

/// Where helm finds the charts.
#[derive(Debug, Clone, PartialEq)]
pub enum Charts {
    /// An https:// chart repository, used with `--repo` (the user's helm repos are untouched).
    Repo(String),
    /// An oci:// prefix; charts are at PREFIX/NAME.
    Oci(String),
    /// Local chart directories or archives, for air-gapped installs: the ones the mesh needs,
    /// found when the mesh was validated.
    Local {
        dir: PathBuf,
        found: BTreeMap<String, LocalChart>,
    },
}

/// A chart found in a local directory.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalChart {
    /// `dir/NAME` (a chart directory) or `dir/NAME-VERSION.tgz`.
    pub path: PathBuf,
    /// The chart's own version (from Chart.yaml or the archive name).
    pub version: Option<String>,
}

/// How helm addresses one chart.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    /// `NAME --repo URL`.
    Repo(String),
    /// `oci://PREFIX/NAME`.
    Oci(String),
    /// A chart directory or archive.
    Local(PathBuf),
}

/// One chart, as a release installs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Its name in Istio's repository: `base`, `istiod`, `gateway`.
    pub name: String,
    pub location: Location,
    /// The version to install and to expect deployed: `istio.version` from a repository, the
    /// chart's own version from a local directory; `None` means the newest.
    pub version: Option<String>,
}

impl Charts {
    /// Chart `name` at `version` (`istio.version`; a local chart is the version it is). A
    /// local chart must have been resolved by [`resolve`].
    pub fn chart(&self, name: &str, version: Option<&str>) -> Chart {
        let (location, version) = match self {
            Charts::Repo(url) => (Location::Repo(url.clone()), version.map(str::to_string)),
            Charts::Oci(prefix) => (
                Location::Oci(format!("{prefix}/{name}")),
                version.map(str::to_string),
            ),
            Charts::Local { dir, found } => match found.get(name) {
                Some(local) => (Location::Local(local.path.clone()), local.version.clone()),
                None => (Location::Local(dir.join(name)), None),
            },
        };
        Chart {
            name: name.to_string(),
            location,
            version,
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Charts::Local { .. })
    }
}

impl Chart {
    /// Whether `helm list`'s `chart` field (e.g. `istiod-1.28.1`) is this chart at the version
    /// meshup installs (a leading `v` is ignored on both sides); any version when unpinned.
    pub fn is_listed_as(&self, listed: &str) -> bool {
        let Some(version) = &self.version else {
            return true;
        };
        listed
            .strip_prefix(self.name.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|v| v.trim_start_matches('v') == version.trim_start_matches('v'))
    }
}

/// Resolves `istio.charts` (`text`, relative to `base_dir`) for the charts `names`. A local
/// directory must hold every one of them, all of one version. The error completes
/// "`istio.charts`: ...".
pub fn resolve(
    text: &str,
    base_dir: &Path,
    version: Option<&str>,
    names: &[&str],
) -> Result<Charts, String> {
    if text.starts_with("https://") || text.starts_with("http://") {
        return Ok(Charts::Repo(text.trim_end_matches('/').to_string()));
    }
    if let Some(rest) = text.strip_prefix("oci://") {
        if rest.is_empty() {
            return Err(format!("`{text}` names no registry"));
        }
        return Ok(Charts::Oci(text.trim_end_matches('/').to_string()));
    }
    if text.contains("://") {
        return Err(format!(
            "`{text}` is neither an https:// repository, an oci:// prefix nor a local directory"
        ));
    }
    let dir = base_dir.join(text);
    if !dir.is_dir() {
        return Err(format!(
            "`{text}` is not a directory (looked at {}); give an https:// repository, an oci:// prefix or a directory holding the charts (`base`, `istiod`, ...)",
            dir.display()
        ));
    }
    let mut found = BTreeMap::new();
    for name in names {
        found.insert(name.to_string(), local_chart(&dir, name, version)?);
    }
    let versions: BTreeSet<Option<&str>> = found.values().map(|c| c.version.as_deref()).collect();
    if versions.len() > 1 {
        return Err(format!(
            "the local charts differ in version ({}); use one Istio release",
            found
                .iter()
                .map(|(name, c)| format!("{name} {}", c.version.as_deref().unwrap_or("unknown")))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(Charts::Local { dir, found })
}

/// Finds chart `name` in `dir`: a chart directory `dir/name`, or one archive `dir/name-V.tgz`
/// (the one for `version` when several are there).
fn local_chart(dir: &Path, name: &str, version: Option<&str>) -> Result<LocalChart, String> {
    let chart_dir = dir.join(name);
    if chart_dir.join("Chart.yaml").is_file() {
        let chart_yaml = chart_dir.join("Chart.yaml");
        let text = std::fs::read_to_string(&chart_yaml)
            .map_err(|e| format!("cannot read {}: {e}", chart_yaml.display()))?;
        let found = chart_yaml_version(&text);
        if let (Some(want), Some(have)) = (version, &found)
            && want.trim_start_matches('v') != have.trim_start_matches('v')
        {
            return Err(format!(
                "{} is version {have} but `istio.version` is {want}",
                chart_dir.display()
            ));
        }
        return Ok(LocalChart {
            path: chart_dir,
            version: found,
        });
    }
    let prefix = format!("{name}-");
    let mut archives: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let file = path.file_name()?.to_str()?.to_string();
            let version = file
                .strip_prefix(&prefix)?
                .strip_suffix(".tgz")?
                .to_string();
            // `istiod-remote-1.2.tgz` is not `istiod`.
            version
                .starts_with(|c: char| c.is_ascii_digit() || c == 'v')
                .then_some((path, version))
        })
        .collect();
    archives.sort();
    if let Some(want) = version {
        archives.retain(|(_, v)| v.trim_start_matches('v') == want.trim_start_matches('v'));
    }
    match archives.len() {
        1 => {
            let (path, version) = archives.remove(0);
            Ok(LocalChart {
                path,
                version: Some(version),
            })
        }
        0 => Err(format!(
            "{} holds no chart `{name}` (a directory `{name}/` with Chart.yaml, or `{name}-<version>.tgz`{})",
            dir.display(),
            version
                .map(|v| format!(" for version {v}"))
                .unwrap_or_default()
        )),
        _ => Err(format!(
            "{} holds several `{name}` archives ({}); set `istio.version` to pick one",
            dir.display(),
            archives
                .iter()
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn chart_yaml_version(text: &str) -> Option<String> {
    let value: Value = serde_yaml::from_str(text).ok()?;
    match value.get("version")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["base", "istiod"];

    #[test]
    fn local_charts_are_found_as_directories_or_archives() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("base")).unwrap();
        std::fs::write(
            dir.path().join("base/Chart.yaml"),
            "name: base\nversion: 1.28.1\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("istiod-1.28.1.tgz"), b"x").unwrap();
        std::fs::write(dir.path().join("istiod-1.27.0.tgz"), b"x").unwrap();
        let charts = resolve(
            dir.path().to_str().unwrap(),
            Path::new(""),
            Some("1.28.1"),
            NAMES,
        )
        .unwrap();
        assert_eq!(
            charts,
            Charts::Local {
                dir: dir.path().to_path_buf(),
                found: BTreeMap::from([
                    (
                        "base".to_string(),
                        LocalChart {
                            path: dir.path().join("base"),
                            version: Some("1.28.1".into()),
                        }
                    ),
                    (
                        "istiod".to_string(),
                        LocalChart {
                            path: dir.path().join("istiod-1.28.1.tgz"),
                            version: Some("1.28.1".into()),
                        }
                    ),
                ]),
            }
        );
        let err = resolve(dir.path().to_str().unwrap(), Path::new(""), None, NAMES).unwrap_err();
        assert!(
            err.contains("several `istiod` archives (1.27.0, 1.28.1)"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_chart_directory_is_reported() {
        let err = resolve("./no-such-dir", Path::new(""), None, NAMES).unwrap_err();
        assert!(err.contains("`./no-such-dir` is not a directory"), "{err}");
    }

    #[test]
    fn local_charts_of_different_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base-1.28.1.tgz"), b"x").unwrap();
        std::fs::write(dir.path().join("istiod-1.27.0.tgz"), b"x").unwrap();
        let err = resolve(dir.path().to_str().unwrap(), Path::new(""), None, NAMES).unwrap_err();
        assert!(
            err.contains("differ in version (base 1.28.1, istiod 1.27.0)"),
            "{err}"
        );
    }

    #[test]
    fn listed_charts_compare_by_name_and_version() {
        let repo = Charts::Repo("https://charts.example".into());
        let istiod = repo.chart("istiod", Some("1.28.1"));
        assert!(istiod.is_listed_as("istiod-1.28.1"));
        assert!(istiod.is_listed_as("istiod-v1.28.1"));
        assert!(!istiod.is_listed_as("istiod-1.27.0"));
        assert!(!istiod.is_listed_as("base-1.28.1"));
        assert!(repo.chart("base", None).is_listed_as("base-1.0.0"));
    }

    #[test]
    fn oci_charts_are_addressed_under_the_prefix() {
        let oci = Charts::Oci("oci://gcr.io/istio-release/charts".into());
        assert_eq!(
            oci.chart("gateway", Some("1.28.1")).location,
            Location::Oci("oci://gcr.io/istio-release/charts/gateway".into())
        );
    }
}
