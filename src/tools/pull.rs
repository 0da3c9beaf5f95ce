//! Charts once per run. Before any cluster is changed, each chart the mesh needs is resolved to
//! one version (the newest, for an unpinned mesh: then pinned for every cluster, and said so),
//! pulled once into meshup's cache (`$XDG_CACHE_HOME/meshup/charts/`, keyed by repository,
//! name and version, checked against the repository's digest), and every cluster installs from
//! that archive: one index read and one download per chart per run, none on a warm cache, and
//! the same chart bytes everywhere.
//!
//! helm does the network part with a private repository configuration under the cache, so the
//! user's proxies and certificates apply and their `helm repo list` is not touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::chart::{Charts, LocalChart};
use crate::tools::helm::{self, RepoConfig};
use crate::tools::reporter::Reporter;
use crate::tools::runner::{Runner, StepError, run_ok};
use crate::trust::files::{self, Existing, FileError};

/// What a run installs from.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The local archives every cluster installs.
    pub charts: Charts,
    /// The version chosen for a mesh without `istio.version`.
    pub pinned: Option<String>,
}

/// Why the charts could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Step(#[from] StepError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{0}")]
    Chart(String),
}

/// meshup's chart cache: `$XDG_CACHE_HOME/meshup/charts`, else `~/.cache/meshup/charts`.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("meshup").join("charts")
}

/// Resolves and pulls the charts `names` from `charts` (a local directory is used as it is).
pub fn fetch(
    runner: &dyn Runner,
    reporter: &Reporter,
    charts: &Charts,
    version: Option<&str>,
    names: &[&str],
    cache: &Path,
) -> Result<Fetched, PullError> {
    match charts {
        Charts::Local { .. } => Ok(Fetched {
            charts: charts.clone(),
            pinned: None,
        }),
        Charts::Repo(url) => from_repo(runner, reporter, url, version, names, cache),
        Charts::Oci(prefix) => from_oci(runner, prefix, version, names, cache),
    }
}

/// What `plan` shows for the charts: the pulls, and the archives the installs then use. `None`
/// for a local directory, and for an unpinned mesh (its version is only known at install).
pub fn planned(
    charts: &Charts,
    version: Option<&str>,
    names: &[&str],
    cache: &Path,
) -> Option<(Vec<crate::tools::step::Step>, Charts)> {
    let version = version?.trim_start_matches('v');
    let (dir, mut steps) = match charts {
        Charts::Local { .. } => return None,
        Charts::Repo(url) => {
            let key = short_hash(url);
            let dir = cache.join(format!("repo-{key}"));
            let (config, index) = (dir.join("repositories.yaml"), dir.join("index"));
            let repos = RepoConfig {
                config: &config,
                cache: &index,
            };
            let repo = format!("meshup-{key}");
            let mut steps = vec![helm::repo_add(&repo, url, &repos)];
            for name in names {
                steps.push(helm::pull(
                    &format!("{repo}/{name}"),
                    Some(version),
                    &dir,
                    Some(&repos),
                ));
            }
            (dir, steps)
        }
        Charts::Oci(prefix) => {
            let dir = cache.join(format!("oci-{}", short_hash(prefix)));
            let steps = names
                .iter()
                .map(|name| helm::pull(&format!("{prefix}/{name}"), Some(version), &dir, None))
                .collect();
            (dir, steps)
        }
    };
    let found = names
        .iter()
        .map(|name| {
            (
                name.to_string(),
                LocalChart {
                    path: dir.join(format!("{name}-{version}.tgz")),
                    version: Some(version.to_string()),
                },
            )
        })
        .collect();
    steps.shrink_to_fit();
    Some((steps, Charts::Local { dir, found }))
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    entries: BTreeMap<String, Vec<IndexEntry>>,
}

#[derive(Debug, Deserialize)]
struct IndexEntry {
    version: String,
    #[serde(default)]
    digest: String,
}

fn from_repo(
    runner: &dyn Runner,
    reporter: &Reporter,
    url: &str,
    version: Option<&str>,
    names: &[&str],
    cache: &Path,
) -> Result<Fetched, PullError> {
    let key = short_hash(url);
    let dir = cache.join(format!("repo-{key}"));
    files::ensure_dir(&dir, 0o755)?;
    // A pinned version whose archives are all here, whole: nothing to fetch.
    if let Some(version) = version
        && let Some(found) = cached(&dir, names, version)?
    {
        return Ok(Fetched {
            charts: Charts::Local { dir, found },
            pinned: None,
        });
    }
    let (config, repo_cache) = (dir.join("repositories.yaml"), dir.join("index"));
    let repos = RepoConfig {
        config: &config,
        cache: &repo_cache,
    };
    let repo = format!("meshup-{key}");
    run_ok(runner, &helm::repo_add(&repo, url, &repos))?;
    let index_file = repo_cache.join(format!("{repo}-index.yaml"));
    let text =
        std::fs::read_to_string(&index_file).map_err(FileError::about("read", &index_file))?;
    let index: Index = serde_yaml::from_str(&text)
        .map_err(|e| PullError::Chart(format!("the index of {url} cannot be read: {e}")))?;
    let chosen = match version {
        Some(v) => v.trim_start_matches('v').to_string(),
        None => newest_common(&index, names).ok_or_else(|| {
            PullError::Chart(format!(
                "{url} has no release that holds all of {}; set `istio.version`",
                names.join(", ")
            ))
        })?,
    };
    if version.is_none() {
        reporter.warn(&format!(
            "`istio.version` is not set: installing {chosen}, the newest in {url}, in every cluster; pin it (or pass --istio-version) so the next run does not move"
        ));
    }
    let mut found = BTreeMap::new();
    for name in names {
        let entry = index
            .entries
            .get(*name)
            .into_iter()
            .flatten()
            .find(|e| e.version.trim_start_matches('v') == chosen)
            .ok_or_else(|| {
                PullError::Chart(format!(
                    "{url} has no chart `{name}` version {chosen}; check `istio.version`"
                ))
            })?;
        let archive = dir.join(format!("{name}-{chosen}.tgz"));
        let digest_file = digest_path(&archive);
        let have = files::read_optional(&digest_file)?;
        let whole = have.as_deref().map(str::trim) == Some(entry.digest.as_str())
            && sha256_file(&archive).as_deref() == Some(entry.digest.as_str());
        if !whole {
            let tmp = tempfile::Builder::new()
                .prefix(".pull-")
                .tempdir_in(&dir)
                .map_err(FileError::about("create a directory in", &dir))?;
            run_ok(
                runner,
                &helm::pull(
                    &format!("{repo}/{name}"),
                    Some(&entry.version),
                    tmp.path(),
                    Some(&repos),
                ),
            )?;
            let pulled = single_archive(tmp.path(), name)?;
            let digest = sha256_file(&pulled).unwrap_or_default();
            if !entry.digest.is_empty() && digest != entry.digest {
                return Err(PullError::Chart(format!(
                    "chart `{name}` {chosen} from {url} has digest {digest}, but the repository's index says {}; the download was damaged or the repository changed it — do not install it",
                    entry.digest
                )));
            }
            std::fs::rename(&pulled, &archive).map_err(FileError::about("write", &archive))?;
            files::write(&digest_file, digest.as_bytes(), 0o644, Existing::Replace)?;
        }
        found.insert(
            name.to_string(),
            LocalChart {
                path: archive,
                version: Some(chosen.clone()),
            },
        );
    }
    Ok(Fetched {
        charts: Charts::Local { dir, found },
        pinned: version.is_none().then_some(chosen),
    })
}

fn from_oci(
    runner: &dyn Runner,
    prefix: &str,
    version: Option<&str>,
    names: &[&str],
    cache: &Path,
) -> Result<Fetched, PullError> {
    let dir = cache.join(format!("oci-{}", short_hash(prefix)));
    files::ensure_dir(&dir, 0o755)?;
    if let Some(version) = version
        && let Some(found) = cached(&dir, names, version)?
    {
        return Ok(Fetched {
            charts: Charts::Local { dir, found },
            pinned: None,
        });
    }
    let mut chosen = version.map(|v| v.trim_start_matches('v').to_string());
    let mut found = BTreeMap::new();
    for name in names {
        let tmp = tempfile::Builder::new()
            .prefix(".pull-")
            .tempdir_in(&dir)
            .map_err(FileError::about("create a directory in", &dir))?;
        let output = run_ok(
            runner,
            &helm::pull(
                &format!("{prefix}/{name}"),
                chosen.as_deref(),
                tmp.path(),
                None,
            ),
        )?;
        let pulled = single_archive(tmp.path(), name)?;
        let pulled_version = archive_version(&pulled, name).unwrap_or_default();
        chosen.get_or_insert(pulled_version.clone());
        let archive = dir.join(format!("{name}-{pulled_version}.tgz"));
        std::fs::rename(&pulled, &archive).map_err(FileError::about("write", &archive))?;
        // The registry's manifest digest, as helm printed it, for the record.
        let said = format!("{}{}", output.stdout, output.stderr);
        let registry_digest = said
            .lines()
            .find_map(|l| l.trim().strip_prefix("Digest: "))
            .unwrap_or_default();
        let digest = sha256_file(&archive).unwrap_or_default();
        files::write(
            &digest_path(&archive),
            digest.as_bytes(),
            0o644,
            Existing::Replace,
        )?;
        if !registry_digest.is_empty() {
            files::write(
                &archive.with_extension("tgz.oci-digest"),
                registry_digest.as_bytes(),
                0o644,
                Existing::Replace,
            )?;
        }
        found.insert(
            name.to_string(),
            LocalChart {
                path: archive,
                version: Some(pulled_version),
            },
        );
    }
    Ok(Fetched {
        charts: Charts::Local { dir, found },
        pinned: if version.is_none() { chosen } else { None },
    })
}

/// The archives of `names` at `version` under `dir`, when every one is there and matches the
/// digest recorded when it was pulled.
fn cached(
    dir: &Path,
    names: &[&str],
    version: &str,
) -> Result<Option<BTreeMap<String, LocalChart>>, FileError> {
    let version = version.trim_start_matches('v');
    let mut found = BTreeMap::new();
    for name in names {
        let archive = dir.join(format!("{name}-{version}.tgz"));
        let Some(recorded) = files::read_optional(&digest_path(&archive))? else {
            return Ok(None);
        };
        if sha256_file(&archive).as_deref() != Some(recorded.trim()) {
            return Ok(None);
        }
        found.insert(
            name.to_string(),
            LocalChart {
                path: archive,
                version: Some(version.to_string()),
            },
        );
    }
    Ok(Some(found))
}

fn digest_path(archive: &Path) -> PathBuf {
    archive.with_extension("tgz.sha256")
}

/// The one `NAME-*.tgz` helm pulled into `dir`.
fn single_archive(dir: &Path, name: &str) -> Result<PathBuf, PullError> {
    let entries = std::fs::read_dir(dir).map_err(FileError::about("read", dir))?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| archive_version(p, name).is_some())
        .ok_or_else(|| PullError::Chart(format!("helm pulled no archive of chart `{name}`")))
}

/// `1.28.1` of `.../istiod-1.28.1.tgz`.
fn archive_version(path: &Path, name: &str) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let version = file
        .strip_prefix(&format!("{name}-"))?
        .strip_suffix(".tgz")?;
    version
        .starts_with(|c: char| c.is_ascii_digit() || c == 'v')
        .then(|| version.to_string())
}

/// The newest release (no pre-release) that every chart of `names` has.
fn newest_common(index: &Index, names: &[&str]) -> Option<String> {
    let versions = |name: &str| -> Vec<String> {
        index
            .entries
            .get(name)
            .into_iter()
            .flatten()
            .map(|e| e.version.trim_start_matches('v').to_string())
            .filter(|v| !v.contains('-'))
            .collect()
    };
    let first = versions(names.first()?);
    first
        .into_iter()
        .filter(|v| names[1..].iter().all(|n| versions(n).contains(v)))
        .max_by_key(|v| semver_key(v))
}

fn semver_key(version: &str) -> Vec<u64> {
    version
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

fn sha256_file(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    Some(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

fn short_hash(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(yaml: &str) -> Index {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_newest_release_every_chart_has_wins() {
        let idx = index(
            "entries:\n  base:\n  - {version: 1.28.1}\n  - {version: 1.29.0}\n  - {version: 1.30.0-beta.1}\n  istiod:\n  - {version: 1.28.1}\n  - {version: 1.29.0}\n  - {version: 1.9.9}\n  gateway:\n  - {version: 1.28.1}\n",
        );
        assert_eq!(
            newest_common(&idx, &["base", "istiod"]).as_deref(),
            Some("1.29.0")
        );
        assert_eq!(
            newest_common(&idx, &["base", "istiod", "gateway"]).as_deref(),
            Some("1.28.1")
        );
        assert_eq!(newest_common(&idx, &["nothing"]), None);
    }

    #[test]
    fn a_cached_archive_counts_only_while_its_digest_matches() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("base-1.28.1.tgz");
        std::fs::write(&archive, b"chart bytes").unwrap();
        assert!(cached(dir.path(), &["base"], "1.28.1").unwrap().is_none());
        let digest = sha256_file(&archive).unwrap();
        std::fs::write(digest_path(&archive), &digest).unwrap();
        let found = cached(dir.path(), &["base"], "v1.28.1").unwrap().unwrap();
        assert_eq!(found["base"].path, archive);
        std::fs::write(&archive, b"damaged").unwrap();
        assert!(cached(dir.path(), &["base"], "1.28.1").unwrap().is_none());
    }

    #[test]
    fn archive_names_give_their_version() {
        assert_eq!(
            archive_version(Path::new("/c/istiod-1.28.1.tgz"), "istiod").as_deref(),
            Some("1.28.1")
        );
        assert_eq!(
            archive_version(Path::new("/c/istiod-remote-1.tgz"), "istiod"),
            None
        );
    }
}
