//! Reading the user's kubeconfig: which contexts exist and which API server each points at.
//! Only names and server addresses are read; credentials are never kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::input::InputError;

/// The contexts of the merged kubeconfig files, each with its API server address.
#[derive(Debug, Clone, Default)]
pub struct Kubeconfig {
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// Context name → API server address.
    pub servers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    clusters: Option<Vec<Named<ClusterEntry>>>,
    #[serde(default)]
    contexts: Option<Vec<Named<ContextEntry>>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(flatten)]
    body: T,
}

#[derive(Deserialize)]
struct ClusterEntry {
    cluster: Option<ClusterBody>,
}

#[derive(Deserialize)]
struct ClusterBody {
    server: Option<String>,
}

#[derive(Deserialize)]
struct ContextEntry {
    context: Option<ContextBody>,
}

#[derive(Deserialize)]
struct ContextBody {
    cluster: Option<String>,
}

impl Kubeconfig {
    /// Finds and reads the kubeconfig the way kubectl does: the `--kubeconfig` flag, else the
    /// files in `$KUBECONFIG` (merged, first one wins), else `~/.kube/config`.
    pub fn load(flag: Option<&Path>) -> Result<Self, InputError> {
        let files: Vec<PathBuf> = match (flag, std::env::var_os("KUBECONFIG")) {
            (Some(path), _) => vec![path.to_path_buf()],
            (None, Some(list)) if !list.is_empty() => std::env::split_paths(&list)
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
            _ => std::env::var_os("HOME")
                .map(|home| vec![PathBuf::from(home).join(".kube").join("config")])
                .unwrap_or_default(),
        };
        let mut config = Kubeconfig::default();
        for path in &files {
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                // kubectl skips missing files in $KUBECONFIG; an explicit flag must exist.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && flag.is_none() => continue,
                Err(e) => {
                    return Err(InputError::new(
                        path.display().to_string(),
                        format!("cannot read the kubeconfig: {e}; fix --kubeconfig or $KUBECONFIG"),
                    ));
                }
            };
            config.merge(path, &text)?;
            config.files.push(path.clone());
        }
        Ok(config)
    }

    /// Parses one kubeconfig file's text; entries already known win, as in kubectl.
    pub fn merge(&mut self, path: &Path, text: &str) -> Result<(), InputError> {
        let file: File = serde_yaml::from_str(text).map_err(|e| {
            InputError::new(
                path.display().to_string(),
                format!("is not a valid kubeconfig: {e}"),
            )
        })?;
        let servers: BTreeMap<String, String> = file
            .clusters
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| Some((c.name, c.body.cluster?.server?)))
            .collect();
        for context in file.contexts.unwrap_or_default() {
            let server = context
                .body
                .context
                .and_then(|c| c.cluster)
                .and_then(|cluster| servers.get(&cluster).cloned())
                .unwrap_or_default();
            self.servers.entry(context.name).or_insert(server);
        }
        Ok(())
    }

    /// Where the contexts came from, for messages.
    pub fn describe(&self) -> String {
        match self.files.as_slice() {
            [] => "no kubeconfig file was found".to_string(),
            files => files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: kind-east
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: AAAA
- name: west
  cluster:
    server: https://10.0.0.2:6443
contexts:
- name: kind-east
  context: {cluster: kind-east, user: kind-east}
- name: west-admin
  context: {cluster: west, user: admin}
users:
- name: admin
  user: {token: not-kept}
"#;

    #[test]
    fn contexts_resolve_to_their_cluster_servers() {
        let mut config = Kubeconfig::default();
        config.merge(Path::new("k"), TWO).unwrap();
        assert_eq!(config.servers["kind-east"], "https://127.0.0.1:6443");
        assert_eq!(config.servers["west-admin"], "https://10.0.0.2:6443");
        assert_eq!(config.servers.len(), 2);
    }

    #[test]
    fn the_first_file_wins_when_merging() {
        let mut config = Kubeconfig::default();
        config.merge(Path::new("a"), TWO).unwrap();
        let other = TWO.replace("10.0.0.2", "10.9.9.9");
        config.merge(Path::new("b"), &other).unwrap();
        assert_eq!(config.servers["west-admin"], "https://10.0.0.2:6443");
    }

    #[test]
    fn malformed_files_name_the_file() {
        let mut config = Kubeconfig::default();
        let err = config
            .merge(Path::new("/tmp/broken"), "contexts: [")
            .unwrap_err();
        assert!(err.to_string().starts_with("/tmp/broken: "), "{err}");
    }
}
