//! `trust.mode: provided`: the user's own PKI, read from the trust directory and checked.

use std::collections::BTreeMap;
use std::path::Path;

use super::ca::{issue_intermediate, load_root};
use super::error::TrustError;
use super::material::{KeyType, ROOT_CERT, ROOT_KEY, Trust};
use super::sets::{SetState, check_set, read_set, write_set};
use crate::trust::files::read_optional;
use crate::trust::sensitive::Sensitive;

/// Reads the user's own PKI from `dir` and checks it; `clusters` holds each cluster's name
/// and istiod namespace.
///
/// Each cluster needs either a complete set of the four files in `<dir>/<cluster>/` or, when
/// `<dir>/root-key.pem` exists, nothing at all: meshup then signs an intermediate for it
/// with the root (an ECDSA P-256 key under an ECDSA root, RSA 4096 under an RSA root) and
/// writes it there. That is the only write this function ever makes, and only after every
/// cluster has been checked.
///
/// Checks: every set is complete (an error names the first missing file); each key matches
/// its certificate; `ca-cert.pem` is a CA, valid now; `cert-chain.pem` starts with it and each
/// certificate is signed by the next, ending in the root; every `root-cert.pem` is the same
/// self-signed CA (`<dir>/root-cert.pem` when it exists, else the first cluster's).
pub fn load_provided(dir: &Path, clusters: &[(&str, &str)]) -> Result<Trust, TrustError> {
    if !dir.is_dir() {
        return Err(TrustError::MissingDir {
            dir: dir.to_path_buf(),
        });
    }
    let root_cert_path = dir.join(ROOT_CERT);
    let root_key_path = dir.join(ROOT_KEY);
    let top_cert = read_optional(&root_cert_path)?;
    let top_key = read_optional(&root_key_path)?.map(Sensitive::new);
    if top_key.is_some() && top_cert.is_none() {
        return Err(TrustError::RootIncomplete {
            present: root_key_path,
            missing: root_cert_path,
        });
    }

    let mut sets = Vec::new();
    for &(cluster, namespace) in clusters {
        let cluster_dir = dir.join(cluster);
        match read_set(&cluster_dir)? {
            SetState::Partial { missing } => {
                return Err(TrustError::IncompleteSet {
                    cluster: cluster.to_string(),
                    missing,
                });
            }
            SetState::Empty if top_key.is_none() => {
                return Err(TrustError::NoClusterCa {
                    cluster: cluster.to_string(),
                    dir: cluster_dir,
                    root_key: root_key_path,
                });
            }
            state => sets.push((cluster, namespace, cluster_dir, state)),
        }
    }

    let root = match top_cert {
        Some(pem) => load_root(
            pem,
            root_cert_path,
            top_key.as_ref().map(|k| (k, root_key_path)),
        )?,
        None => {
            let first = sets
                .iter()
                .find_map(|(_, _, cluster_dir, state)| match state {
                    SetState::Complete(raw) => {
                        Some((raw.root_cert.clone(), cluster_dir.join(ROOT_CERT)))
                    }
                    _ => None,
                });
            let Some((pem, path)) = first else {
                return Err(TrustError::NoRoot {
                    path: root_cert_path,
                });
            };
            load_root(pem, path, None)?
        }
    };

    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    for (cluster, namespace, cluster_dir, state) in sets {
        match state {
            SetState::Complete(raw) => {
                let ca = check_set(cluster, &cluster_dir, raw, &root)?;
                out.insert(cluster.to_string(), ca);
            }
            SetState::Empty | SetState::Partial { .. } => {
                missing.push((cluster, namespace, cluster_dir))
            }
        }
    }
    let key_type = if root.is_rsa() {
        KeyType::Rsa4096
    } else {
        KeyType::EcdsaP256
    };
    let mut written = Vec::new();
    for (cluster, namespace, cluster_dir) in missing {
        let ca = issue_intermediate(cluster, namespace, &root, key_type)?;
        write_set(&cluster_dir, &ca, &mut written)?;
        out.insert(cluster.to_string(), ca);
    }
    Ok(Trust {
        root_cert_pem: root.cert_pem,
        clusters: out,
    })
}
