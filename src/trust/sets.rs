//! One cluster's set of four files under the trust directory: reading it, checking it
//! against the root, writing it.

use std::path::{Path, PathBuf};

use super::ca::Root;
use super::error::TrustError;
use super::material::{
    CA_CERT, CA_KEY, CERT_CHAIN, CERT_MODE, CLUSTER_FILES, ClusterCa, DIR_MODE, KEY_MODE, ROOT_CERT,
};
use super::x509::{
    certs_in, check_ca, check_current, der_fingerprint, key_matches, parse, parse_key, signed_by,
    single_cert,
};
use crate::trust::files::{self, Existing, read_optional};
use crate::trust::sensitive::Sensitive;

pub(super) enum SetState {
    Empty,
    Partial { missing: PathBuf },
    Complete(RawSet),
}

/// The four files of a complete set, as read.
pub(super) struct RawSet {
    pub(super) ca_cert: String,
    pub(super) ca_key: Sensitive<String>,
    pub(super) root_cert: String,
    pub(super) cert_chain: String,
}

pub(super) fn read_set(cluster_dir: &Path) -> Result<SetState, TrustError> {
    let mut found = Vec::with_capacity(CLUSTER_FILES.len());
    for file in CLUSTER_FILES {
        found.push(read_optional(&cluster_dir.join(file))?);
    }
    if found.iter().all(Option::is_none) {
        return Ok(SetState::Empty);
    }
    if let Some(i) = found.iter().position(Option::is_none) {
        return Ok(SetState::Partial {
            missing: cluster_dir.join(CLUSTER_FILES[i]),
        });
    }
    let mut found = found.into_iter().flatten();
    let mut next = || found.next().expect("all four files were read");
    Ok(SetState::Complete(RawSet {
        ca_cert: next(),
        ca_key: Sensitive::new(next()),
        root_cert: next(),
        cert_chain: next(),
    }))
}

/// Checks a complete set against the root and returns it unchanged.
pub(super) fn check_set(
    cluster: &str,
    cluster_dir: &Path,
    raw: RawSet,
    root: &Root,
) -> Result<ClusterCa, TrustError> {
    let ca_path = cluster_dir.join(CA_CERT);
    let key_path = cluster_dir.join(CA_KEY);
    let root_path = cluster_dir.join(ROOT_CERT);
    let chain_path = cluster_dir.join(CERT_CHAIN);

    let ca_der = single_cert(&raw.ca_cert, &ca_path)?;
    let ca = parse(&ca_der);
    check_ca(&ca, &ca_path)?;
    check_current(&ca, &ca_path)?;
    let key = parse_key(&raw.ca_key, &key_path)?;
    if !key_matches(&key, &ca) {
        return Err(TrustError::KeyMismatch {
            key: key_path,
            cert: ca_path,
        });
    }

    let root_der = single_cert(&raw.root_cert, &root_path)?;
    if root_der != root.der {
        return Err(TrustError::RootMismatch {
            path: root_path,
            found: der_fingerprint(&root_der),
            expected_path: root.path.clone(),
            expected: der_fingerprint(&root.der),
        });
    }

    let chain = certs_in(&raw.cert_chain).map_err(|reason| TrustError::BadCertificate {
        path: chain_path.clone(),
        reason,
    })?;
    if chain[0] != ca_der {
        return Err(TrustError::BrokenChain {
            path: chain_path,
            reason: "does not start with the certificate in ca-cert.pem".to_string(),
        });
    }
    for (i, pair) in chain.windows(2).enumerate() {
        let (child, parent) = (parse(&pair[0]), parse(&pair[1]));
        if !signed_by(&child, &parent) {
            return Err(TrustError::BrokenChain {
                path: chain_path,
                reason: format!(
                    "breaks at certificate {} (`{}`): it is not signed by certificate {} (`{}`)",
                    i + 1,
                    child.subject(),
                    i + 2,
                    parent.subject()
                ),
            });
        }
    }
    let last = chain.last().expect("certs_in returns at least one");
    if *last != root.der {
        let reason = if signed_by(&parse(last), &root.x509()) {
            "does not end with the root certificate; append root-cert.pem to it".to_string()
        } else {
            format!(
                "does not lead up to the root in `{}` (fingerprint {}): its last certificate \
                 (`{}`) is not signed by it",
                root.path.display(),
                der_fingerprint(&root.der),
                parse(last).subject()
            )
        };
        return Err(TrustError::BrokenChain {
            path: chain_path,
            reason,
        });
    }

    Ok(ClusterCa {
        cluster: cluster.to_string(),
        ca_cert_pem: raw.ca_cert,
        ca_key_pem: raw.ca_key,
        root_cert_pem: raw.root_cert,
        cert_chain_pem: raw.cert_chain,
    })
}

pub(super) fn write_set(
    cluster_dir: &Path,
    ca: &ClusterCa,
    written: &mut Vec<PathBuf>,
) -> Result<(), TrustError> {
    files::ensure_dir(cluster_dir, DIR_MODE)?;
    let contents = [
        (CA_KEY, ca.ca_key_pem.expose().as_str(), KEY_MODE),
        (CA_CERT, ca.ca_cert_pem.as_str(), CERT_MODE),
        (ROOT_CERT, ca.root_cert_pem.as_str(), CERT_MODE),
        (CERT_CHAIN, ca.cert_chain_pem.as_str(), CERT_MODE),
    ];
    for (file, text, mode) in contents {
        let path = cluster_dir.join(file);
        files::write(&path, text.as_bytes(), mode, Existing::Replace)?;
        written.push(path);
    }
    Ok(())
}
