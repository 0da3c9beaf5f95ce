//! `trust.mode: generate`: meshup's own root and one intermediate CA per cluster, created
//! once and reused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ca::{Root, issue_intermediate, load_root, new_key, root_params, sign_error};
use super::error::TrustError;
use super::material::{CERT_MODE, DIR_MODE, KEY_MODE, KeyType, ROOT_CERT, ROOT_KEY, Trust};
use super::sets::{SetState, check_set, read_set, write_set};
use super::x509::names_istiod;
use crate::trust::files::{self, Existing, read_optional};
use crate::trust::sensitive::Sensitive;

/// Creates what is missing under `dir` and reuses what is there; `clusters` holds each
/// cluster's name and istiod namespace.
///
/// - The root (`root-key.pem`, `root-cert.pem`) is created only when neither file exists and
///   is never regenerated while they do: one without the other, an expired root or a key that
///   does not match is an error to resolve by hand.
/// - A cluster's set under `<dir>/<cluster>/` is reused, byte for byte, when all four files
///   are there, chain up to the current root, are valid now and name `istiod.<namespace>.svc`;
///   otherwise (missing, damaged, from an old root, for another namespace) the whole set is
///   replaced by a new one. The directory is meshup's, so this never touches a user's files.
/// - `key_type` applies to keys created by this call only; existing keys keep their type.
///
/// New directories are created 0700 and keys 0600 (existing ones are left as they are);
/// files are written atomically. Returns the trust material and the files written.
pub fn generate(
    dir: &Path,
    clusters: &[(&str, &str)],
    key_type: KeyType,
) -> Result<(Trust, Vec<PathBuf>), TrustError> {
    let mut written = Vec::new();
    files::ensure_dir(dir, DIR_MODE)?;
    let root = generate_root(dir, key_type, &mut written)?;

    let mut out = BTreeMap::new();
    for &(cluster, namespace) in clusters {
        let cluster_dir = dir.join(cluster);
        let reused = match read_set(&cluster_dir)? {
            SetState::Complete(raw) => check_set(cluster, &cluster_dir, raw, &root)
                .ok()
                .filter(|ca| names_istiod(&ca.ca_cert_pem, namespace)),
            SetState::Empty | SetState::Partial { .. } => None,
        };
        let ca = match reused {
            Some(ca) => ca,
            None => {
                let ca = issue_intermediate(cluster, namespace, &root, key_type)?;
                write_set(&cluster_dir, &ca, &mut written)?;
                ca
            }
        };
        out.insert(cluster.to_string(), ca);
    }
    Ok((
        Trust {
            root_cert_pem: root.cert_pem,
            clusters: out,
        },
        written,
    ))
}

/// `generate` mode's root: read and check it when both files exist, create it when neither
/// does, refuse otherwise.
fn generate_root(
    dir: &Path,
    key_type: KeyType,
    written: &mut Vec<PathBuf>,
) -> Result<Root, TrustError> {
    let cert_path = dir.join(ROOT_CERT);
    let key_path = dir.join(ROOT_KEY);
    let cert = read_optional(&cert_path)?;
    let key = read_optional(&key_path)?.map(Sensitive::new);
    match (cert, key) {
        (Some(cert), Some(key)) => load_root(cert, cert_path, Some((&key, key_path))),
        (None, None) => {
            let key = new_key(key_type, "the root CA key")?;
            let cert = root_params()
                .self_signed(&key)
                .map_err(|e| sign_error("the root CA certificate", e))?;
            // The key goes first: a root certificate without its key could never be used.
            files::write(
                &key_path,
                key.serialize_pem().as_bytes(),
                KEY_MODE,
                Existing::Keep,
            )?;
            written.push(key_path);
            let cert_pem = cert.pem();
            files::write(&cert_path, cert_pem.as_bytes(), CERT_MODE, Existing::Keep)?;
            written.push(cert_path.clone());
            Ok(Root {
                cert_pem,
                der: cert.der().to_vec(),
                path: cert_path,
                key: Some(Sensitive::new(key)),
            })
        }
        (Some(_), None) => Err(TrustError::RootIncomplete {
            present: cert_path,
            missing: key_path,
        }),
        (None, Some(_)) => Err(TrustError::RootIncomplete {
            present: key_path,
            missing: cert_path,
        }),
    }
}
