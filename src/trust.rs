//! The shared root of trust: the `cacerts` material that makes every cluster's istiod sign
//! workload certificates under one root, so that cross-cluster mTLS verifies.
//!
//! Layout of the trust directory (`trust.dir` in the mesh file), the same in both modes:
//!
//! ```text
//! <dir>/root-cert.pem            the root CA certificate
//! <dir>/root-key.pem             its key (0600; optional in `provided` mode)
//! <dir>/<cluster>/ca-cert.pem    the cluster's intermediate CA, which istiod signs with
//! <dir>/<cluster>/ca-key.pem     its key (0600)
//! <dir>/<cluster>/root-cert.pem  a copy of the root certificate
//! <dir>/<cluster>/cert-chain.pem ca-cert.pem, then any further intermediates, then the root
//! ```
//!
//! [`generate`] creates what is missing and reuses what is there; [`load_provided`] reads a
//! user's own PKI and checks it. Both return a [`Trust`]; [`cacerts_manifest`] turns one
//! cluster's part of it into the `cacerts` Secret.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize, SanType,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::parse_x509_certificate;
use x509_parser::pem::Pem;
use x509_parser::public_key::PublicKey;

use crate::sensitive::Sensitive;

/// How long a generated root CA is valid: ten years, as in Istio's reference Makefiles.
pub const ROOT_VALIDITY_DAYS: i64 = 3650;

/// How long a generated intermediate CA is valid: five years, cut short to the root's own
/// expiry. Shorter than the root so that a cluster's CA can be replaced (delete
/// `<dir>/<cluster>/` and re-run) long before the root must be.
pub const INTERMEDIATE_VALIDITY_DAYS: i64 = 1825;

/// Certificates are dated this far back so that a cluster whose clock runs a little behind
/// this machine's does not see them as not yet valid.
const BACKDATE: Duration = Duration::hours(1);

const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";
const CA_CERT: &str = "ca-cert.pem";
const CA_KEY: &str = "ca-key.pem";
const CERT_CHAIN: &str = "cert-chain.pem";

/// The four files of one cluster's set, in the order an error names the first missing one.
pub const CLUSTER_FILES: [&str; 4] = [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN];

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// Where the `cacerts` material comes from (`trust.mode` in the mesh file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustMode {
    /// meshup creates a root and one intermediate per cluster, see [`generate`].
    #[default]
    Generate,
    /// The user's own PKI, read from the trust directory, see [`load_provided`].
    Provided,
    /// No `cacerts`: every istiod makes its own self-signed root, and cross-cluster mTLS fails.
    None,
}

/// The algorithm of keys that [`generate`] creates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on NIST P-256 with SHA-256 signatures: small and fast.
    #[default]
    EcdsaP256,
    /// RSA 4096 with SHA-256 signatures, as Istio's reference Makefiles make.
    Rsa4096,
}

impl KeyType {
    /// The name used on the command line and in the mesh file.
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::Rsa4096 => "rsa4096",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyType {
    type Err = TrustError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ecdsa-p256" => Ok(Self::EcdsaP256),
            "rsa4096" => Ok(Self::Rsa4096),
            _ => Err(TrustError::UnknownKeyType {
                value: s.to_string(),
            }),
        }
    }
}

/// One cluster's `cacerts` material: the four values of the Secret, exactly as in the files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterCa {
    /// The cluster's name, also the name of its directory under the trust directory.
    pub cluster: String,
    /// `ca-cert.pem`: the intermediate CA istiod signs workload certificates with.
    pub ca_cert_pem: String,
    /// `ca-key.pem`: its private key.
    pub ca_key_pem: Sensitive<String>,
    /// `root-cert.pem`: the root every cluster shares.
    pub root_cert_pem: String,
    /// `cert-chain.pem`: the intermediate, then any further intermediates, then the root.
    pub cert_chain_pem: String,
}

/// The mesh's root of trust and every cluster's CA under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trust {
    /// The root certificate every cluster's chain ends in.
    pub root_cert_pem: String,
    /// Each cluster's material, by cluster name.
    pub clusters: BTreeMap<String, ClusterCa>,
}

/// Why the trust material could not be made, read or checked. Messages never carry key
/// material: they name the file and say what to do.
#[derive(Debug)]
pub enum TrustError {
    /// Reading or writing a file or directory failed.
    Io {
        /// What was being done, e.g. "read".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A key-type name that is neither `ecdsa-p256` nor `rsa4096`.
    UnknownKeyType {
        /// What was given.
        value: String,
    },
    /// A cluster name that cannot be a directory name.
    InvalidClusterName {
        /// The name.
        cluster: String,
    },
    /// The same cluster was listed twice.
    DuplicateCluster {
        /// The name.
        cluster: String,
    },
    /// `provided` mode and the trust directory does not exist.
    MissingDir {
        /// The trust directory.
        dir: PathBuf,
    },
    /// Exactly one of `root-cert.pem` and `root-key.pem` exists where both are needed, or
    /// a key without its certificate.
    RootIncomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that does not.
        missing: PathBuf,
    },
    /// A cluster directory holds some but not all of the four files.
    IncompleteSet {
        /// The cluster.
        cluster: String,
        /// The first missing file.
        missing: PathBuf,
    },
    /// `provided` mode: a cluster has no files and there is no root key to sign them with.
    NoClusterCa {
        /// The cluster.
        cluster: String,
        /// Its directory.
        dir: PathBuf,
        /// Where a root key would have let meshup sign one.
        root_key: PathBuf,
    },
    /// `provided` mode: no `root-cert.pem` anywhere.
    NoRoot {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file that should hold certificates does not hold the right ones.
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// PEM text given in memory (not from a file) holds no usable certificate.
    BadPem {
        /// What is wrong with it.
        reason: String,
    },
    /// A private key file that cannot be parsed.
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// A private key that does not belong to the certificate beside it.
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// A certificate that should be a CA is not one.
    NotCa {
        /// The file.
        path: PathBuf,
        /// What it lacks.
        reason: String,
    },
    /// A certificate outside its validity period.
    NotCurrent {
        /// The file.
        path: PathBuf,
        /// Its notBefore.
        not_before: String,
        /// Its notAfter.
        not_after: String,
    },
    /// A root certificate that is not self-signed.
    NotSelfSigned {
        /// The file.
        path: PathBuf,
    },
    /// A `cert-chain.pem` that does not lead from `ca-cert.pem` up to the root.
    BrokenChain {
        /// The file.
        path: PathBuf,
        /// Where it breaks.
        reason: String,
    },
    /// A root certificate that differs from the mesh's root.
    RootMismatch {
        /// The file holding the other root.
        path: PathBuf,
        /// Its SHA-256 fingerprint.
        found: String,
        /// The file holding the mesh's root.
        expected_path: PathBuf,
        /// The mesh root's SHA-256 fingerprint.
        expected: String,
    },
    /// Creating a key or signing a certificate failed.
    Sign {
        /// What was being made.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A live `cacerts` Secret that cannot be read.
    LiveSecret {
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io {
                action,
                path,
                source,
            } => write!(
                f,
                "could not {action} `{}`: {source}; check the path and its permissions",
                path.display()
            ),
            Self::UnknownKeyType { value } => write!(
                f,
                "unknown key type `{value}`; use `ecdsa-p256` or `rsa4096`"
            ),
            Self::InvalidClusterName { cluster } => write!(
                f,
                "cluster name `{cluster}` cannot be used as a directory name under the trust \
                 directory; use a name without `/`, `\\` or NUL that is not `.` or `..`"
            ),
            Self::DuplicateCluster { cluster } => write!(
                f,
                "cluster `{cluster}` is listed twice; give every cluster its own name"
            ),
            Self::MissingDir { dir } => write!(
                f,
                "trust directory `{}` does not exist; put your CA files there, or use \
                 `trust.mode: generate` to have meshup create them",
                dir.display()
            ),
            Self::RootIncomplete { present, missing } => write!(
                f,
                "`{}` exists but `{}` does not; restore the missing file from your backup, or \
                 move both aside to start a new root (every cluster's `cacerts` then changes \
                 and istiod and workloads must restart)",
                present.display(),
                missing.display()
            ),
            Self::IncompleteSet { cluster, missing } => write!(
                f,
                "`{}` is missing for cluster `{cluster}`: istiod needs all four of ca-cert.pem, \
                 ca-key.pem, root-cert.pem and cert-chain.pem; add the missing file, or remove \
                 the others so the cluster's CA can be signed with root-key.pem",
                missing.display()
            ),
            Self::NoClusterCa {
                cluster,
                dir,
                root_key,
            } => write!(
                f,
                "cluster `{cluster}` has no CA in `{}`; add ca-cert.pem, ca-key.pem, \
                 root-cert.pem and cert-chain.pem there, or put the root's key at `{}` so \
                 meshup can sign one",
                dir.display(),
                root_key.display()
            ),
            Self::NoRoot { path } => write!(
                f,
                "no root certificate: `{}` does not exist and no cluster directory holds one; \
                 add your root CA certificate there",
                path.display()
            ),
            Self::BadCertificate { path, reason } => write!(
                f,
                "`{}` {reason}; replace it with the PEM certificate(s) it should hold",
                path.display()
            ),
            Self::BadPem { reason } => {
                write!(f, "{reason}; pass a PEM `CERTIFICATE` block")
            }
            Self::BadKey { path } => write!(
                f,
                "could not parse the private key in `{}`; it must be an unencrypted PEM key \
                 (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`) for ECDSA P-256/P-384 \
                 or RSA",
                path.display()
            ),
            Self::KeyMismatch { key, cert } => write!(
                f,
                "the key in `{}` does not belong to the certificate in `{}`; put the matching \
                 key or certificate in place",
                key.display(),
                cert.display()
            ),
            Self::NotCa { path, reason } => write!(
                f,
                "`{}` is not a usable CA certificate: {reason}; issue it as a CA \
                 (basicConstraints CA:true, keyUsage keyCertSign)",
                path.display()
            ),
            Self::NotCurrent {
                path,
                not_before,
                not_after,
            } => write!(
                f,
                "`{}` is not valid now (valid from {not_before} to {not_after}); replace it \
                 with a current certificate",
                path.display()
            ),
            Self::NotSelfSigned { path } => write!(
                f,
                "`{}` is not self-signed; root-cert.pem must hold the top of your PKI, since \
                 workloads trust it as a root",
                path.display()
            ),
            Self::BrokenChain { path, reason } => write!(
                f,
                "`{}` {reason}; it must hold ca-cert.pem, then any further intermediates, \
                 then root-cert.pem, each signed by the next",
                path.display()
            ),
            Self::RootMismatch {
                path,
                found,
                expected_path,
                expected,
            } => write!(
                f,
                "`{}` holds root {found}, but the mesh's root in `{}` is {expected}; every \
                 cluster must share one root, so replace it with a copy of that root (and \
                 re-issue the cluster's CA under it)",
                path.display(),
                expected_path.display()
            ),
            Self::Sign { what, reason } => write!(f, "could not create {what}: {reason}"),
            Self::LiveSecret { reason } => write!(
                f,
                "the live `cacerts` secret {reason}; inspect it with `kubectl get secret \
                 cacerts -o yaml` and delete it if it is not yours"
            ),
        }
    }
}

impl std::error::Error for TrustError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

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
    check_cluster_names(clusters)?;
    let mut written = Vec::new();
    ensure_dir(dir)?;
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
    check_cluster_names(clusters)?;
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

/// The SHA-256 fingerprint of the first certificate in `cert_pem`, as uppercase hex pairs
/// joined by `:` (the form `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint(cert_pem: &str) -> Result<String, TrustError> {
    let ders = certs_in(cert_pem).map_err(|reason| TrustError::BadPem {
        reason: format!("the text {reason}"),
    })?;
    Ok(der_fingerprint(&ders[0]))
}

/// The `cacerts` Secret for `namespace` as YAML for `kubectl apply -f -`. It carries the CA
/// key, so it stays [`Sensitive`].
pub fn cacerts_manifest(namespace: &str, ca: &ClusterCa) -> Sensitive<String> {
    let mut yaml = [
        "apiVersion: v1",
        "kind: Secret",
        "metadata:",
        "  name: cacerts",
        &format!("  namespace: {}", yaml_string(namespace)),
        "  labels:",
        "    app.kubernetes.io/managed-by: meshup",
        "type: Opaque",
        "data:",
    ]
    .join("\n");
    yaml.push('\n');
    for (key, value) in secret_values(ca) {
        yaml.push_str(&format!("  {key}: {}\n", BASE64.encode(value)));
    }
    Sensitive::new(yaml)
}

/// The SHA-256 fingerprint of `root-cert.pem` in a live `cacerts` Secret (the object
/// `kubectl get secret cacerts -o json` prints), or `None` when it has no such key.
pub fn live_root_fingerprint(
    secret_json: &serde_json::Value,
) -> Result<Option<String>, TrustError> {
    let Some(value) = secret_json.get("data").and_then(|data| data.get(ROOT_CERT)) else {
        return Ok(None);
    };
    let encoded = value.as_str().ok_or_else(|| TrustError::LiveSecret {
        reason: format!("has a `{ROOT_CERT}` that is not a string"),
    })?;
    let decoded = BASE64.decode(encoded).map_err(|_| TrustError::LiveSecret {
        reason: format!("has a `{ROOT_CERT}` that is not valid base64"),
    })?;
    let pem = String::from_utf8(decoded).map_err(|_| TrustError::LiveSecret {
        reason: format!("has a `{ROOT_CERT}` that is not PEM text"),
    })?;
    let ders = certs_in(&pem).map_err(|reason| TrustError::LiveSecret {
        reason: format!("has a `{ROOT_CERT}` that {reason}"),
    })?;
    Ok(Some(der_fingerprint(&ders[0])))
}

/// Whether a live `cacerts` Secret (`kubectl get secret cacerts -o json`) holds exactly the
/// four values of `ca` and nothing else. Any other key (istiod prefers `tls.crt` and its
/// companions when present) makes it differ.
pub fn live_matches(secret_json: &serde_json::Value, ca: &ClusterCa) -> bool {
    let Some(data) = secret_json.get("data").and_then(|data| data.as_object()) else {
        return false;
    };
    let wanted = secret_values(ca);
    data.len() == wanted.len()
        && wanted.iter().all(|(key, value)| {
            data.get(*key)
                .and_then(|v| v.as_str())
                .and_then(|v| BASE64.decode(v).ok())
                .is_some_and(|v| v == value.as_bytes())
        })
}

/// The Secret's keys and values, sorted by key as Kubernetes prints them.
fn secret_values(ca: &ClusterCa) -> [(&'static str, &str); 4] {
    [
        (CA_CERT, &ca.ca_cert_pem),
        (CA_KEY, ca.ca_key_pem.expose()),
        (CERT_CHAIN, &ca.cert_chain_pem),
        (ROOT_CERT, &ca.root_cert_pem),
    ]
}

/// A string as a double-quoted YAML scalar (JSON's quoting is valid YAML), so that a name
/// like `true` or `123` stays a string.
fn yaml_string(value: &str) -> String {
    serde_json::Value::String(value.to_string()).to_string()
}

/// The root CA: its certificate as read or written, and its key when there is one.
struct Root {
    cert_pem: String,
    der: Vec<u8>,
    path: PathBuf,
    key: Option<Sensitive<KeyPair>>,
}

impl Root {
    fn x509(&self) -> X509Certificate<'_> {
        parse(&self.der)
    }

    fn is_rsa(&self) -> bool {
        matches!(self.x509().public_key().parsed(), Ok(PublicKey::RSA(_)))
    }
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
            write_new_file(&key_path, key.serialize_pem().as_bytes(), KEY_MODE, written)?;
            let cert_pem = cert.pem();
            write_new_file(&cert_path, cert_pem.as_bytes(), CERT_MODE, written)?;
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

/// Parses and checks a root certificate (one self-signed CA, valid now) and its key.
fn load_root(
    cert_pem: String,
    path: PathBuf,
    key: Option<(&Sensitive<String>, PathBuf)>,
) -> Result<Root, TrustError> {
    let der = single_cert(&cert_pem, &path)?;
    let cert = parse(&der);
    if !signed_by(&cert, &cert) {
        return Err(TrustError::NotSelfSigned { path });
    }
    check_ca(&cert, &path)?;
    check_current(&cert, &path)?;
    let key = match key {
        Some((pem, key_path)) => {
            let key = parse_key(pem, &key_path)?;
            if !key_matches(&key, &cert) {
                return Err(TrustError::KeyMismatch {
                    key: key_path,
                    cert: path,
                });
            }
            Some(Sensitive::new(key))
        }
        None => None,
    };
    Ok(Root {
        cert_pem,
        der,
        path,
        key,
    })
}

fn root_params() -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Istio");
    name.push(DnType::CommonName, "Root CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = ca_key_usages();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(ROOT_VALIDITY_DAYS);
    params
}

fn ca_key_usages() -> Vec<KeyUsagePurpose> {
    vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ]
}

/// Signs a new intermediate CA for `cluster` with the root's key.
fn issue_intermediate(
    cluster: &str,
    namespace: &str,
    root: &Root,
    key_type: KeyType,
) -> Result<ClusterCa, TrustError> {
    let what = format!("the intermediate CA for cluster `{cluster}`");
    let Some(root_key) = &root.key else {
        // Callers only get here with a root key; keep the failure explicit all the same.
        return Err(TrustError::Sign {
            what,
            reason: "no root key was loaded".to_string(),
        });
    };
    let key = new_key(key_type, &format!("the key for cluster `{cluster}`"))?;

    let now = OffsetDateTime::now_utc();
    let root_expiry = root.x509().validity().not_after.to_datetime();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Istio");
    name.push(DnType::CommonName, "Intermediate CA");
    name.push(DnType::LocalityName, cluster);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = ca_key_usages();
    let san = format!("istiod.{namespace}.svc")
        .try_into()
        .map_err(|e| sign_error(&what, e))?;
    params.subject_alt_names = vec![SanType::DnsName(san)];
    params.not_before = now - BACKDATE;
    params.not_after = (now + Duration::days(INTERMEDIATE_VALIDITY_DAYS)).min(root_expiry);
    params.use_authority_key_identifier_extension = true;

    let issuer = Issuer::from_ca_cert_der(&root.der.as_slice().into(), root_key.expose())
        .map_err(|e| sign_error(&what, e))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| sign_error(&what, e))?;
    // rcgen re-encodes the root's subject; a root whose name it cannot reproduce byte for
    // byte would yield a chain that Go and BoringSSL reject, so check before writing.
    if !signed_by(&parse(cert.der()), &root.x509()) {
        return Err(TrustError::Sign {
            what,
            reason: format!(
                "the result does not chain to `{}` (its subject name could not be reproduced \
                 exactly); sign the intermediate with your own tools and put it in place",
                root.path.display()
            ),
        });
    }

    let ca_cert_pem = cert.pem();
    let cert_chain_pem = concat_pem(&ca_cert_pem, &root.cert_pem);
    Ok(ClusterCa {
        cluster: cluster.to_string(),
        ca_cert_pem,
        ca_key_pem: Sensitive::new(key.serialize_pem()),
        root_cert_pem: root.cert_pem.clone(),
        cert_chain_pem,
    })
}

fn new_key(key_type: KeyType, what: &str) -> Result<KeyPair, TrustError> {
    match key_type {
        KeyType::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_4096),
    }
    .map_err(|e| sign_error(what, e))
}

fn sign_error(what: &str, e: impl fmt::Display) -> TrustError {
    TrustError::Sign {
        what: what.to_string(),
        reason: format!("{e}; please report this as a meshup bug"),
    }
}

fn concat_pem(first: &str, second: &str) -> String {
    let mut out = first.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(second);
    out
}

/// What a cluster directory holds.
enum SetState {
    Empty,
    Partial { missing: PathBuf },
    Complete(RawSet),
}

/// The four files of a complete set, as read.
struct RawSet {
    ca_cert: String,
    ca_key: Sensitive<String>,
    root_cert: String,
    cert_chain: String,
}

fn read_set(cluster_dir: &Path) -> Result<SetState, TrustError> {
    let mut files = Vec::with_capacity(CLUSTER_FILES.len());
    for file in CLUSTER_FILES {
        files.push(read_optional(&cluster_dir.join(file))?);
    }
    if files.iter().all(Option::is_none) {
        return Ok(SetState::Empty);
    }
    if let Some(i) = files.iter().position(Option::is_none) {
        return Ok(SetState::Partial {
            missing: cluster_dir.join(CLUSTER_FILES[i]),
        });
    }
    let mut files = files.into_iter().flatten();
    let mut next = || files.next().expect("all four files were read");
    Ok(SetState::Complete(RawSet {
        ca_cert: next(),
        ca_key: Sensitive::new(next()),
        root_cert: next(),
        cert_chain: next(),
    }))
}

/// Checks a complete set against the root and returns it unchanged.
fn check_set(
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

/// Whether a CA certificate names `istiod.<namespace>.svc` among its DNS SANs.
fn names_istiod(ca_cert_pem: &str, namespace: &str) -> bool {
    let wanted = format!("istiod.{namespace}.svc");
    let Ok(ders) = certs_in(ca_cert_pem) else {
        return false;
    };
    let cert = parse(&ders[0]);
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(
        |name| matches!(name, x509_parser::extensions::GeneralName::DNSName(dns) if *dns == wanted),
    )
}

fn write_set(
    cluster_dir: &Path,
    ca: &ClusterCa,
    written: &mut Vec<PathBuf>,
) -> Result<(), TrustError> {
    ensure_dir(cluster_dir)?;
    let files = [
        (CA_KEY, ca.ca_key_pem.expose().as_str(), KEY_MODE),
        (CA_CERT, ca.ca_cert_pem.as_str(), CERT_MODE),
        (ROOT_CERT, ca.root_cert_pem.as_str(), CERT_MODE),
        (CERT_CHAIN, ca.cert_chain_pem.as_str(), CERT_MODE),
    ];
    for (file, contents, mode) in files {
        write_file(&cluster_dir.join(file), contents.as_bytes(), mode, written)?;
    }
    Ok(())
}

fn check_cluster_names(clusters: &[(&str, &str)]) -> Result<(), TrustError> {
    let mut seen = std::collections::BTreeSet::new();
    for &(cluster, _) in clusters {
        let bad = cluster.is_empty()
            || cluster == "."
            || cluster == ".."
            || cluster.contains(['/', '\\', '\0']);
        if bad {
            return Err(TrustError::InvalidClusterName {
                cluster: cluster.to_string(),
            });
        }
        if !seen.insert(cluster) {
            return Err(TrustError::DuplicateCluster {
                cluster: cluster.to_string(),
            });
        }
    }
    Ok(())
}

// ---- certificates and keys ----

/// Parses DER that [`certs_in`] has already parsed once.
fn parse(der: &[u8]) -> X509Certificate<'_> {
    parse_x509_certificate(der)
        .expect("certificates are parsed when read")
        .1
}

/// The DER of every `CERTIFICATE` block in `pem`, each checked to parse; at least one.
/// The error completes "the file ...".
fn certs_in(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut ders = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| format!("is not valid PEM ({e})"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "holds a `{}` block where only certificates belong",
                block.label
            ));
        }
        if let Err(e) = parse_x509_certificate(&block.contents) {
            return Err(format!("holds a certificate that does not parse ({e})"));
        }
        ders.push(block.contents);
    }
    if ders.is_empty() {
        return Err("holds no PEM certificate".to_string());
    }
    Ok(ders)
}

/// The DER of the one certificate a file must hold.
fn single_cert(pem: &str, path: &Path) -> Result<Vec<u8>, TrustError> {
    let bad = |reason| TrustError::BadCertificate {
        path: path.to_path_buf(),
        reason,
    };
    let mut ders = certs_in(pem).map_err(bad)?;
    if ders.len() != 1 {
        return Err(bad(format!(
            "holds {} certificates where it should hold one (further intermediates belong in \
             cert-chain.pem)",
            ders.len()
        )));
    }
    Ok(ders.remove(0))
}

fn parse_key(pem: &Sensitive<String>, path: &Path) -> Result<KeyPair, TrustError> {
    KeyPair::from_pem(pem.expose()).map_err(|_| TrustError::BadKey {
        path: path.to_path_buf(),
    })
}

fn key_matches(key: &KeyPair, cert: &X509Certificate<'_>) -> bool {
    key.public_key_raw() == cert.public_key().subject_public_key.data.as_ref()
}

/// Whether `parent` issued `child`: the names match byte for byte (as Go's verifier
/// requires) and the signature verifies.
fn signed_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == parent.subject().as_raw()
        && child.verify_signature(Some(parent.public_key())).is_ok()
}

fn check_ca(cert: &X509Certificate<'_>, path: &Path) -> Result<(), TrustError> {
    let not_ca = |reason: &str| TrustError::NotCa {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => return Err(not_ca("it lacks basicConstraints CA:true")),
        Err(_) => return Err(not_ca("its basicConstraints extension does not parse")),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => Err(not_ca("its keyUsage lacks keyCertSign")),
        Ok(_) => Ok(()),
        Err(_) => Err(not_ca("its keyUsage extension does not parse")),
    }
}

fn check_current(cert: &X509Certificate<'_>, path: &Path) -> Result<(), TrustError> {
    let validity = cert.validity();
    if validity.is_valid() {
        return Ok(());
    }
    Err(TrustError::NotCurrent {
        path: path.to_path_buf(),
        not_before: validity.not_before.to_string(),
        not_after: validity.not_after.to_string(),
    })
}

fn der_fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---- files ----

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TrustError {
    let path = path.to_path_buf();
    move |source| TrustError::Io {
        action,
        path,
        source,
    }
}

/// A file's text, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, TrustError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", path)(e)),
    }
}

/// Creates `dir` (and missing parents) 0700 unless it exists.
fn ensure_dir(dir: &Path) -> Result<(), TrustError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder
        .create(dir)
        .map_err(io_error("create directory", dir))
}

/// Writes `contents` to `path` atomically (a temporary file in the same directory, renamed),
/// created with `mode` so that a key is never readable by others, not even briefly.
fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    written: &mut Vec<PathBuf>,
) -> Result<(), TrustError> {
    write_atomically(path, contents, mode, true, written)
}

/// Like [`write_file`], but fails rather than replace an existing file: the root is never
/// overwritten, not even by a second meshup creating one at the same moment.
fn write_new_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    written: &mut Vec<PathBuf>,
) -> Result<(), TrustError> {
    write_atomically(path, contents, mode, false, written)
}

fn write_atomically(
    path: &Path,
    contents: &[u8],
    mode: u32,
    replace: bool,
    written: &mut Vec<PathBuf>,
) -> Result<(), TrustError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".meshup-");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(mode));
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = builder
        .tempfile_in(dir)
        .map_err(io_error("create a file in", dir))?;
    file.write_all(contents)
        .and_then(|()| file.as_file().sync_all())
        .map_err(io_error("write", path))?;
    let persisted = if replace {
        file.persist(path)
    } else {
        file.persist_noclobber(path)
    };
    persisted.map_err(|e| io_error("write", path)(e.error))?;
    written.push(path.to_path_buf());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::oid_registry::OID_PKCS1_SHA256WITHRSA;

    const CLUSTERS: &[(&str, &str)] = &[("cluster1", "istio-system"), ("cluster2", "istio-system")];

    /// A trust directory `certs` inside a fresh temporary directory, generated with ECDSA.
    fn generated() -> (tempfile::TempDir, PathBuf, Trust) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let (trust, _) = generate(&dir, CLUSTERS, KeyType::EcdsaP256).unwrap();
        (tmp, dir, trust)
    }

    fn ders(pem: &str) -> Vec<Vec<u8>> {
        certs_in(pem).unwrap()
    }

    fn first_der(pem: &str) -> Vec<u8> {
        ders(pem).remove(0)
    }

    fn attr(
        name: &x509_parser::x509::X509Name<'_>,
        oid: &x509_parser::der_parser::Oid<'_>,
    ) -> String {
        name.iter_by_oid(oid)
            .map(|a| a.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn subject(pem: &str) -> (String, String, String) {
        use x509_parser::oid_registry::{
            OID_X509_COMMON_NAME, OID_X509_LOCALITY_NAME, OID_X509_ORGANIZATION_NAME,
        };
        let der = first_der(pem);
        let cert = parse(&der);
        let name = cert.subject();
        (
            attr(name, &OID_X509_ORGANIZATION_NAME),
            attr(name, &OID_X509_COMMON_NAME),
            attr(name, &OID_X509_LOCALITY_NAME),
        )
    }

    fn validity_days(pem: &str) -> (i64, i64) {
        let der = first_der(pem);
        let cert = parse(&der);
        let v = cert.validity();
        let length = v.not_after.timestamp() - v.not_before.timestamp();
        (length / 86_400, length % 86_400)
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    fn write(path: &Path, text: &str) {
        fs::write(path, text).unwrap();
    }

    /// A user's PKI made with openssl (`openssl ca`, valid 2000–2124): a P-256 root whose
    /// name is PrintableString, its key in SEC1 form, and an RSA 2048 intermediate for
    /// `east` whose key is PKCS#1. Test-only keys.
    fn openssl_pki(dir: &Path, with_root_key: bool) {
        fs::create_dir_all(dir.join("east")).unwrap();
        write(&dir.join(ROOT_CERT), OPENSSL_ROOT_CERT);
        if with_root_key {
            write(&dir.join(ROOT_KEY), OPENSSL_ROOT_KEY);
        }
        write(&dir.join("east").join(CA_CERT), OPENSSL_CA_CERT);
        write(&dir.join("east").join(CA_KEY), OPENSSL_CA_KEY);
        write(&dir.join("east").join(ROOT_CERT), OPENSSL_ROOT_CERT);
        write(
            &dir.join("east").join(CERT_CHAIN),
            &format!("{OPENSSL_CA_CERT}{OPENSSL_ROOT_CERT}"),
        );
    }

    const OPENSSL_ROOT_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBlDCCATugAwIBAgIBATAKBggqhkjOPQQDAjAxMRUwEwYDVQQKEwxFeGFtcGxl
IENvcnAxGDAWBgNVBAMTD0V4YW1wbGUgUm9vdCBDQTAgFw0wMDAxMDEwMDAwMDBa
GA8yMTI1MDEwMTAwMDAwMFowMTEVMBMGA1UEChMMRXhhbXBsZSBDb3JwMRgwFgYD
VQQDEw9FeGFtcGxlIFJvb3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQO
Lfy3STL00Z049mbLg2OfsjxELi0R+XC/DuZAceVolaGMLlozhpOyDIg36bgNxkBD
UOdMFmZ7dievKt8qmI0Mo0IwQDAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQE
AwIBBjAdBgNVHQ4EFgQU7lX7sF8eRZJ+pi3qyAF+08nYBSYwCgYIKoZIzj0EAwID
RwAwRAIgHVqd06MNAIX+uIgFnxkDxWRHbtwRYIlXACtMmrq0yA0CICCU6XLnR+Es
9KZgjFF78dgo9r7p8oyqTyL5xbkdW6fw
-----END CERTIFICATE-----
";

    const OPENSSL_ROOT_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIJHwhZytY2NvTlJfBfWSWm2jIjE+ZiXKEawRNECFcOTeoAoGCCqGSM49
AwEHoUQDQgAEDi38t0ky9NGdOPZmy4Njn7I8RC4tEflwvw7mQHHlaJWhjC5aM4aT
sgyIN+m4DcZAQ1DnTBZme3YnryrfKpiNDA==
-----END EC PRIVATE KEY-----
";

    const OPENSSL_CA_CERT: &str = "-----BEGIN CERTIFICATE-----
MIICvDCCAmGgAwIBAgIBAjAKBggqhkjOPQQDAjAxMRUwEwYDVQQKEwxFeGFtcGxl
IENvcnAxGDAWBgNVBAMTD0V4YW1wbGUgUm9vdCBDQTAgFw0wMDAxMDEwMDAwMDBa
GA8yMTI0MDEwMTAwMDAwMFowQjEVMBMGA1UECgwMRXhhbXBsZSBDb3JwMRowGAYD
VQQDDBFNZXNoIEludGVybWVkaWF0ZTENMAsGA1UEBwwEZWFzdDCCASIwDQYJKoZI
hvcNAQEBBQADggEPADCCAQoCggEBAKyy9KqJaJpwSn1O+OSTEjUr7DDYv1eWNoDq
rxpSbV4cKnfJNLMDO2A7pzw9MO41cVqAW8O6iBiQJ9vsfn/KKl/JHyqieKBl0Q5D
qBehtZ6PlpVJKJqGN2wkFe+PzfvFdI9dSANUsmKDaVCeazVucndJ5r0qEljSBKg5
e2axB19TUhUNknOBZXVv1i0dB2GLYOTlOCuqns/6+ViK2ez3JDSQkMJDsa8WhJW+
LKHXNYTEu5g5EE728ADYl3Z0kkpPb8xTzyxujMVROFkeUcncldUxCiG77SzHEvdC
CEKlyOVOzzpMJHyUZbsA54X5UvhtVEFZTgF1BCsqlXz2bnWykUECAwEAAaOBizCB
iDASBgNVHRMBAf8ECDAGAQH/AgEAMA4GA1UdDwEB/wQEAwIBhjAiBgNVHREEGzAZ
ghdpc3Rpb2QuaXN0aW8tc3lzdGVtLnN2YzAdBgNVHQ4EFgQUXaS0wu6xzKLggs8r
zpCTG+/24oowHwYDVR0jBBgwFoAU7lX7sF8eRZJ+pi3qyAF+08nYBSYwCgYIKoZI
zj0EAwIDSQAwRgIhAOqKwd1qGRUKdcGWynJBqX5QxHMLAViPKrCAh+zBN4pXAiEA
iXTqT18FpQSZLQ9mOoyeUY5K3y8bieZxQIySD7U417k=
-----END CERTIFICATE-----
";

    const OPENSSL_CA_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEogIBAAKCAQEArLL0qolomnBKfU745JMSNSvsMNi/V5Y2gOqvGlJtXhwqd8k0
swM7YDunPD0w7jVxWoBbw7qIGJAn2+x+f8oqX8kfKqJ4oGXRDkOoF6G1no+WlUko
moY3bCQV74/N+8V0j11IA1SyYoNpUJ5rNW5yd0nmvSoSWNIEqDl7ZrEHX1NSFQ2S
c4FldW/WLR0HYYtg5OU4K6qez/r5WIrZ7PckNJCQwkOxrxaElb4sodc1hMS7mDkQ
TvbwANiXdnSSSk9vzFPPLG6MxVE4WR5RydyV1TEKIbvtLMcS90IIQqXI5U7POkwk
fJRluwDnhflS+G1UQVlOAXUEKyqVfPZudbKRQQIDAQABAoIBAAKUrowVX1kufCh8
+4Jz8bHWeRI+TPa2vZQF3c3FhVGil15gpP9XWSXuIkjHy9FFfm8JK8XkJdhDIDtc
wIOxnlo918/D64xPFTWSvIJ05dFLqUcMF7Wec5nTvLmuoxgD+oLRdKvrEjrfZp2g
Lm83GjIO6koxpKJL6iqm6EGPu/HYVzuYBTYkdroQwI5YgN94QE4T4Hpj+SVHcxow
9bUMyXFSWfGcR8IXoickxqrCr2eWYfE+r9j5mb/yPwJYm+vE/p7jmqmIRpDJV7Rn
CbsrO70APK7i0K5bJt7GFbYYOFvETWJ6qYZ3FIJf3FA1/YRzF5mdz+IbqgbMART2
s2e29AECgYEA5Df1NBEe8Vzah6f316qNu3c8IZTsLnWlF5KRL03CRbzrTg+yDtsa
/8d7CAY4PTXTQCiAARwH0XP1uOJz/BpfdNAHbMhBonXgvqMelLfXC0jJJ0TGRlkB
hjL/x1aT/vZfXW/PE+YjrdbrgwhrjMq5JgvKVG5VTLDxjiUZjvNV0oECgYEAwbjT
iwHJkuZecrrYeeyb4SK5cXurguDcmEC/XsAksoZ3zp39uRRg39xdAT7EiNGxyv8p
AjfALGyrukDZV0Gi1VfKuIykWHASaNo8eiICKtnIt1eNb+PscCGN9oJrhgpW4hU7
8c7n6109XnWys4mWPP0WmrXowbbsPnjz8UXz3sECgYBaeSiXHJZ0vwfPMbKaZ/3K
LMnE0mITRQZO4wb1htEWjn+GMci4BPqeHfnTQ4v2ECmQTL36Mp+S1HK8eeHbNqVT
DMl0warreenACbCs6niw+4jrLWOhLdXh2sP1xYfkUs2ZoCKq09ifKQ2yo5rndNKT
l6b9c8QTJC6O2HxaZHNIgQKBgByzs7QOybzYIPpCsLwv0FClAnDL7/duNYDhZvk0
4rsIrUuRoPwBBvFkBuueTyQuXXdEIuFPPUvXtgHchdclxGhzn3eEbv0jbbbXTsqR
q1yJ8/EmKbCARpG+hvgVDrVHZuQMXVtQWpBGukb6jUWIhxf2L5kwhpHc9lezOAFx
adaBAoGAIOgYVL2iz80FlyFtXlO2DxWwGSZqePz+JuUORCW+SJycqaBVCQKh3zAC
mdXsbFawAc3bCldIxx+uBtSSqnCTj0gUdoR7mreqc+OlM+aUWoRzd4EEE4GBXJZo
TDRVdxvpmKi1+QYp5Rq4dQNccyaexepW5zBWXYRGF3AWCfJ2zrU=
-----END RSA PRIVATE KEY-----
";

    #[test]
    fn root_is_a_ten_year_istio_ca() {
        let (_tmp, _dir, trust) = generated();
        assert_eq!(
            subject(&trust.root_cert_pem),
            ("Istio".into(), "Root CA".into(), String::new())
        );
        let der = first_der(&trust.root_cert_pem);
        let root = parse(&der);
        let bc = root.basic_constraints().unwrap().unwrap();
        assert!(bc.critical);
        assert!(bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, None);
        assert!(root.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert!(signed_by(&root, &root), "the root is self-signed");
        // Ten years from now, plus the hour it is backdated by.
        assert_eq!(
            validity_days(&trust.root_cert_pem),
            (ROOT_VALIDITY_DAYS, 3600)
        );
    }

    #[test]
    fn intermediate_is_a_pathlen_zero_ca_named_for_its_cluster() {
        let (_tmp, _dir, trust) = generated();
        let ca = &trust.clusters["cluster2"];
        assert_eq!(
            subject(&ca.ca_cert_pem),
            ("Istio".into(), "Intermediate CA".into(), "cluster2".into())
        );
        let der = first_der(&ca.ca_cert_pem);
        let cert = parse(&der);
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical);
        assert!(bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
    }

    #[test]
    fn intermediate_names_istiod_in_its_namespace() {
        let tmp = tempfile::tempdir().unwrap();
        let clusters = [("east", "istio-east"), ("west", "istio-system")];
        let (trust, _) = generate(tmp.path(), &clusters, KeyType::EcdsaP256).unwrap();
        for (cluster, namespace) in clusters {
            let der = first_der(&trust.clusters[cluster].ca_cert_pem);
            let cert = parse(&der);
            let san = cert.subject_alternative_name().unwrap().unwrap();
            let wanted = format!("istiod.{namespace}.svc");
            assert_eq!(
                san.value.general_names,
                vec![GeneralName::DNSName(wanted.as_str())]
            );
        }
    }

    #[test]
    fn intermediate_is_valid_for_five_years_within_the_root() {
        let (_tmp, _dir, trust) = generated();
        let ca = &trust.clusters["cluster1"];
        assert_eq!(
            validity_days(&ca.ca_cert_pem),
            (INTERMEDIATE_VALIDITY_DAYS, 3600)
        );
        let (ca_der, root_der) = (first_der(&ca.ca_cert_pem), first_der(&trust.root_cert_pem));
        let (ca, root) = (parse(&ca_der), parse(&root_der));
        assert!(ca.validity().not_after <= root.validity().not_after);
        assert!(ca.validity().is_valid());
    }

    #[test]
    fn intermediate_signature_verifies_against_the_root() {
        let (_tmp, _dir, trust) = generated();
        let root_der = first_der(&trust.root_cert_pem);
        let root = parse(&root_der);
        for ca in trust.clusters.values() {
            let der = first_der(&ca.ca_cert_pem);
            let cert = parse(&der);
            assert_eq!(cert.issuer().as_raw(), root.subject().as_raw());
            cert.verify_signature(Some(root.public_key())).unwrap();
        }
    }

    #[test]
    fn cert_chain_is_the_intermediate_then_the_root() {
        let (_tmp, _dir, trust) = generated();
        for ca in trust.clusters.values() {
            assert_eq!(
                ders(&ca.cert_chain_pem),
                vec![first_der(&ca.ca_cert_pem), first_der(&trust.root_cert_pem)]
            );
            assert_eq!(ca.root_cert_pem, trust.root_cert_pem);
        }
    }

    #[test]
    fn keys_match_their_certificates() {
        let (_tmp, dir, trust) = generated();
        let root_key = KeyPair::from_pem(&read(&dir.join(ROOT_KEY))).unwrap();
        let root_der = first_der(&trust.root_cert_pem);
        assert!(key_matches(&root_key, &parse(&root_der)));
        for ca in trust.clusters.values() {
            let key = KeyPair::from_pem(ca.ca_key_pem.expose()).unwrap();
            assert_eq!(key.algorithm(), &PKCS_ECDSA_P256_SHA256);
            let der = first_der(&ca.ca_cert_pem);
            assert!(key_matches(&key, &parse(&der)));
            assert!(!key_matches(&root_key, &parse(&der)));
        }
    }

    #[test]
    fn generate_writes_what_it_returns_into_the_trust_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let (trust, written) = generate(&dir, CLUSTERS, KeyType::EcdsaP256).unwrap();
        let mut expected = vec![dir.join(ROOT_KEY), dir.join(ROOT_CERT)];
        for (cluster, _) in CLUSTERS {
            for file in [CA_KEY, CA_CERT, ROOT_CERT, CERT_CHAIN] {
                expected.push(dir.join(cluster).join(file));
            }
        }
        assert_eq!(written, expected);
        assert_eq!(read(&dir.join(ROOT_CERT)), trust.root_cert_pem);
        for (name, ca) in &trust.clusters {
            assert_eq!(&ca.cluster, name);
            let cluster_dir = dir.join(name);
            assert_eq!(read(&cluster_dir.join(CA_CERT)), ca.ca_cert_pem);
            assert_eq!(&read(&cluster_dir.join(CA_KEY)), ca.ca_key_pem.expose());
            assert_eq!(read(&cluster_dir.join(ROOT_CERT)), ca.root_cert_pem);
            assert_eq!(read(&cluster_dir.join(CERT_CHAIN)), ca.cert_chain_pem);
        }
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".meshup-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn second_generate_returns_the_same_bytes_and_writes_nothing() {
        let (_tmp, dir, first) = generated();
        let (second, written) = generate(&dir, CLUSTERS, KeyType::EcdsaP256).unwrap();
        assert_eq!(second, first);
        assert_eq!(
            second.clusters["cluster1"].ca_key_pem.expose(),
            first.clusters["cluster1"].ca_key_pem.expose()
        );
        assert!(written.is_empty(), "rewrote {written:?}");
    }

    #[test]
    fn root_is_never_regenerated_when_cluster_files_are_missing() {
        let (_tmp, dir, first) = generated();
        let root_key = read(&dir.join(ROOT_KEY));
        fs::remove_dir_all(dir.join("cluster1")).unwrap();
        fs::remove_file(dir.join("cluster2").join(CA_KEY)).unwrap();

        let (second, written) = generate(&dir, CLUSTERS, KeyType::EcdsaP256).unwrap();
        assert_eq!(second.root_cert_pem, first.root_cert_pem);
        assert_eq!(read(&dir.join(ROOT_KEY)), root_key);
        assert!(!written.contains(&dir.join(ROOT_KEY)));
        assert!(!written.contains(&dir.join(ROOT_CERT)));
        assert_eq!(written.len(), 8, "both clusters' sets are rewritten whole");
        for (name, ca) in &second.clusters {
            assert_ne!(ca.ca_cert_pem, first.clusters[name].ca_cert_pem);
            assert_eq!(ders(&ca.cert_chain_pem)[1], first_der(&first.root_cert_pem));
        }
    }

    #[test]
    fn existing_keys_are_kept_when_another_key_type_is_asked_for() {
        let (_tmp, dir, first) = generated();
        let (second, written) = generate(&dir, CLUSTERS, KeyType::Rsa4096).unwrap();
        assert_eq!(second, first);
        assert!(written.is_empty(), "rewrote {written:?}");
    }

    #[test]
    fn intermediate_from_another_root_is_replaced() {
        let (_tmp, dir, _) = generated();
        let (_other_tmp, other_dir, _) = generated();
        fs::remove_dir_all(dir.join("cluster1")).unwrap();
        fs::rename(other_dir.join("cluster1"), dir.join("cluster1")).unwrap();

        let (trust, written) = generate(&dir, CLUSTERS, KeyType::EcdsaP256).unwrap();
        assert!(written.contains(&dir.join("cluster1").join(CA_CERT)));
        assert!(!written.iter().any(|p| p.starts_with(dir.join("cluster2"))));
        let root_der = first_der(&trust.root_cert_pem);
        let ca_der = first_der(&trust.clusters["cluster1"].ca_cert_pem);
        assert!(signed_by(&parse(&ca_der), &parse(&root_der)));
    }

    #[test]
    fn intermediate_is_reissued_when_the_namespace_changes() {
        let (_tmp, dir, first) = generated();
        let moved = [("cluster1", "istio-other"), ("cluster2", "istio-system")];
        let (second, written) = generate(&dir, &moved, KeyType::EcdsaP256).unwrap();
        assert!(names_istiod(
            &second.clusters["cluster1"].ca_cert_pem,
            "istio-other"
        ));
        assert_eq!(second.clusters["cluster2"], first.clusters["cluster2"]);
        assert_eq!(written.len(), 4);
    }

    #[test]
    fn root_key_without_root_cert_is_an_error_and_nothing_is_written() {
        let (_tmp, dir, _) = generated();
        fs::remove_file(dir.join(ROOT_CERT)).unwrap();
        fs::remove_dir_all(dir.join("cluster2")).unwrap();
        let err = generate(&dir, CLUSTERS, KeyType::EcdsaP256).unwrap_err();
        assert!(matches!(err, TrustError::RootIncomplete { .. }), "{err:?}");
        assert!(err.to_string().contains("root-cert.pem"), "{err}");
        assert!(!dir.join(ROOT_CERT).exists());
        assert!(!dir.join("cluster2").exists());
    }

    #[test]
    fn mismatched_root_key_is_an_error() {
        let (_tmp, dir, _) = generated();
        let (_other_tmp, other_dir, _) = generated();
        fs::copy(other_dir.join(ROOT_KEY), dir.join(ROOT_KEY)).unwrap();
        let err = generate(&dir, CLUSTERS, KeyType::EcdsaP256).unwrap_err();
        assert!(matches!(err, TrustError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn root_files_are_never_overwritten() {
        let (_tmp, dir, trust) = generated();
        let err =
            write_new_file(&dir.join(ROOT_CERT), b"x", CERT_MODE, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, TrustError::Io { .. }), "{err:?}");
        assert_eq!(read(&dir.join(ROOT_CERT)), trust.root_cert_pem);
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_0600_and_directories_0700() {
        use std::os::unix::fs::PermissionsExt;
        let (_tmp, dir, _) = generated();
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.clone()), 0o700);
        assert_eq!(mode(dir.join(ROOT_KEY)), 0o600);
        for (cluster, _) in CLUSTERS {
            assert_eq!(mode(dir.join(cluster)), 0o700);
            assert_eq!(mode(dir.join(cluster).join(CA_KEY)), 0o600);
        }
    }

    #[test]
    fn rsa4096_keys_are_generated_on_request() {
        let tmp = tempfile::tempdir().unwrap();
        let (trust, _) =
            generate(tmp.path(), &[("east", "istio-system")], KeyType::Rsa4096).unwrap();
        let root_der = first_der(&trust.root_cert_pem);
        let ca = &trust.clusters["east"];
        let ca_der = first_der(&ca.ca_cert_pem);
        for der in [&root_der, &ca_der] {
            let cert = parse(der);
            let Ok(PublicKey::RSA(rsa)) = cert.public_key().parsed() else {
                panic!("not an RSA key");
            };
            assert_eq!(rsa.key_size(), 4096);
            assert_eq!(cert.signature_algorithm.algorithm, OID_PKCS1_SHA256WITHRSA);
        }
        assert!(signed_by(&parse(&ca_der), &parse(&root_der)));
        let key = KeyPair::from_pem(ca.ca_key_pem.expose()).unwrap();
        assert!(key_matches(&key, &parse(&ca_der)));
    }

    #[test]
    fn cluster_names_that_leave_the_trust_dir_are_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["..", "a/b", ""] {
            let err =
                generate(tmp.path(), &[(name, "istio-system")], KeyType::EcdsaP256).unwrap_err();
            assert!(
                matches!(err, TrustError::InvalidClusterName { .. }),
                "{err:?}"
            );
        }
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "nothing was written"
        );
    }

    #[test]
    fn provided_complete_sets_load_as_generated() {
        let (_tmp, dir, generated) = generated();
        assert_eq!(load_provided(&dir, CLUSTERS).unwrap(), generated);
    }

    #[test]
    fn provided_sets_load_without_a_top_level_root() {
        let (_tmp, dir, generated) = generated();
        fs::remove_file(dir.join(ROOT_KEY)).unwrap();
        fs::remove_file(dir.join(ROOT_CERT)).unwrap();
        assert_eq!(load_provided(&dir, CLUSTERS).unwrap(), generated);
    }

    #[test]
    fn provided_openssl_pki_with_pkcs1_and_sec1_keys_loads() {
        let tmp = tempfile::tempdir().unwrap();
        openssl_pki(tmp.path(), false);
        let trust = load_provided(tmp.path(), &[("east", "istio-system")]).unwrap();
        assert_eq!(trust.root_cert_pem, OPENSSL_ROOT_CERT);
        let east = &trust.clusters["east"];
        assert_eq!(east.ca_cert_pem, OPENSSL_CA_CERT);
        assert_eq!(east.ca_key_pem.expose(), OPENSSL_CA_KEY);
    }

    #[test]
    fn provided_partial_set_names_the_missing_file() {
        let (_tmp, dir, _) = generated();
        let missing = dir.join("cluster2").join(CERT_CHAIN);
        fs::remove_file(&missing).unwrap();
        let err = load_provided(&dir, CLUSTERS).unwrap_err();
        assert!(
            matches!(&err, TrustError::IncompleteSet { cluster, missing: m } if cluster == "cluster2" && *m == missing),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn provided_chain_signed_by_another_root_is_rejected() {
        let (_tmp, dir, _) = generated();
        let (_other_tmp, other_dir, _) = generated();
        // The cluster keeps the mesh's root-cert.pem, but its CA comes from another root.
        for file in [CA_CERT, CA_KEY, CERT_CHAIN] {
            fs::copy(
                other_dir.join("cluster2").join(file),
                dir.join("cluster2").join(file),
            )
            .unwrap();
        }
        let err = load_provided(&dir, CLUSTERS).unwrap_err();
        assert!(matches!(err, TrustError::BrokenChain { .. }), "{err:?}");
        assert!(err.to_string().contains("cert-chain.pem"), "{err}");
    }

    #[test]
    fn provided_ca_cert_not_signed_by_the_root_is_rejected() {
        let (_tmp, dir, trust) = generated();
        let (_other_tmp, other_dir, _) = generated();
        for file in [CA_CERT, CA_KEY] {
            fs::copy(
                other_dir.join("cluster2").join(file),
                dir.join("cluster2").join(file),
            )
            .unwrap();
        }
        let chain = concat_pem(
            &read(&dir.join("cluster2").join(CA_CERT)),
            &trust.root_cert_pem,
        );
        write(&dir.join("cluster2").join(CERT_CHAIN), &chain);
        let err = load_provided(&dir, CLUSTERS).unwrap_err();
        assert!(
            matches!(&err, TrustError::BrokenChain { reason, .. } if reason.contains("not signed by")),
            "{err:?}"
        );
    }

    #[test]
    fn provided_clusters_with_different_roots_are_rejected() {
        let (_tmp, dir, _) = generated();
        let (_other_tmp, other_dir, _) = generated();
        fs::remove_file(dir.join(ROOT_KEY)).unwrap();
        fs::remove_file(dir.join(ROOT_CERT)).unwrap();
        fs::remove_dir_all(dir.join("cluster2")).unwrap();
        fs::rename(other_dir.join("cluster2"), dir.join("cluster2")).unwrap();
        let err = load_provided(&dir, CLUSTERS).unwrap_err();
        assert!(
            matches!(&err, TrustError::RootMismatch { path, .. } if path.starts_with(dir.join("cluster2"))),
            "{err:?}"
        );
    }

    #[test]
    fn provided_key_not_matching_its_cert_is_rejected() {
        let (_tmp, dir, _) = generated();
        fs::copy(
            dir.join("cluster1").join(CA_KEY),
            dir.join("cluster2").join(CA_KEY),
        )
        .unwrap();
        let err = load_provided(&dir, CLUSTERS).unwrap_err();
        assert!(
            matches!(&err, TrustError::KeyMismatch { key, .. } if *key == dir.join("cluster2").join(CA_KEY)),
            "{err:?}"
        );
    }

    #[test]
    fn provided_root_key_signs_a_missing_intermediate() {
        let tmp = tempfile::tempdir().unwrap();
        openssl_pki(tmp.path(), true);
        let clusters = [("east", "istio-system"), ("west", "istio-west")];
        let trust = load_provided(tmp.path(), &clusters).unwrap();

        let west = &trust.clusters["west"];
        let root_der = first_der(OPENSSL_ROOT_CERT);
        let ca_der = first_der(&west.ca_cert_pem);
        // rcgen reproduced the openssl root's PrintableString name byte for byte.
        assert!(signed_by(&parse(&ca_der), &parse(&root_der)));
        assert!(names_istiod(&west.ca_cert_pem, "istio-west"));
        assert_eq!(ders(&west.cert_chain_pem), vec![ca_der, root_der]);
        assert_eq!(
            read(&tmp.path().join("west").join(CA_CERT)),
            west.ca_cert_pem
        );
        // A second load reads what the first wrote.
        assert_eq!(load_provided(tmp.path(), &clusters).unwrap(), trust);
    }

    #[test]
    fn provided_without_root_key_needs_every_cluster_set() {
        let tmp = tempfile::tempdir().unwrap();
        openssl_pki(tmp.path(), false);
        let err = load_provided(
            tmp.path(),
            &[("east", "istio-system"), ("west", "istio-system")],
        )
        .unwrap_err();
        assert!(
            matches!(err, TrustError::NoClusterCa { ref cluster, .. } if cluster == "west"),
            "{err:?}"
        );
        assert!(!tmp.path().join("west").exists());
    }

    #[test]
    fn provided_writes_nothing_when_any_set_is_invalid() {
        let tmp = tempfile::tempdir().unwrap();
        openssl_pki(tmp.path(), true);
        write(&tmp.path().join("east").join(CA_KEY), OPENSSL_ROOT_KEY);
        let err = load_provided(
            tmp.path(),
            &[("east", "istio-system"), ("west", "istio-system")],
        )
        .unwrap_err();
        assert!(matches!(err, TrustError::KeyMismatch { .. }), "{err:?}");
        assert!(!tmp.path().join("west").exists());
    }

    #[test]
    fn provided_missing_dir_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load_provided(&tmp.path().join("nope"), CLUSTERS).unwrap_err();
        assert!(matches!(err, TrustError::MissingDir { .. }), "{err:?}");
    }

    #[test]
    fn bad_key_error_names_the_file_but_not_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        openssl_pki(tmp.path(), false);
        // A key cut short: the text is secret material and must not be echoed.
        let truncated = &OPENSSL_CA_KEY[..200];
        let key_path = tmp.path().join("east").join(CA_KEY);
        write(&key_path, truncated);
        let err = load_provided(tmp.path(), &[("east", "istio-system")]).unwrap_err();
        let message = format!("{err} {err:?}");
        assert!(
            message.contains(&key_path.display().to_string()),
            "{message}"
        );
        assert!(!message.contains(&truncated[40..80]), "{message}");
    }

    #[test]
    fn fingerprint_matches_openssl() {
        // `openssl x509 -noout -fingerprint -sha256` of the fixture root.
        assert_eq!(
            fingerprint(OPENSSL_ROOT_CERT).unwrap(),
            "4D:34:09:7D:18:BD:F3:90:9A:E3:96:2D:07:C7:B9:84:EE:BE:B4:7A:C1:2F:F9:60:0F:07:83:B6:CA:13:11:66"
        );
    }

    #[test]
    fn fingerprint_reads_the_first_certificate_of_a_chain() {
        let chain = format!("{OPENSSL_CA_CERT}{OPENSSL_ROOT_CERT}");
        assert_eq!(
            fingerprint(&chain).unwrap(),
            fingerprint(OPENSSL_CA_CERT).unwrap()
        );
    }

    #[test]
    fn fingerprint_of_text_without_a_certificate_is_an_error() {
        let err = fingerprint(OPENSSL_ROOT_KEY).unwrap_err();
        assert!(matches!(err, TrustError::BadPem { .. }), "{err:?}");
        assert!(!err.to_string().contains("MHcCAQEE"), "{err}");
        assert!(fingerprint("").is_err());
    }

    #[test]
    fn manifest_and_cluster_ca_never_print_the_key() {
        let (_tmp, _dir, trust) = generated();
        let ca = &trust.clusters["cluster1"];
        let manifest = cacerts_manifest("istio-system", ca);
        assert_eq!(format!("{manifest}"), "<redacted>");
        assert_eq!(format!("{manifest:?}"), "<redacted>");
        let key_line = ca.ca_key_pem.expose().lines().nth(1).unwrap();
        assert!(!format!("{ca:?} {trust:?}").contains(key_line));
    }

    #[test]
    fn manifest_is_the_cacerts_secret_with_four_base64_keys() {
        let (_tmp, _dir, trust) = generated();
        let ca = &trust.clusters["cluster1"];
        let manifest = cacerts_manifest("istio-system", ca);
        let secret: serde_json::Value = serde_yaml::from_str(manifest.expose()).unwrap();
        assert_eq!(secret["apiVersion"], "v1");
        assert_eq!(secret["kind"], "Secret");
        assert_eq!(secret["type"], "Opaque");
        assert_eq!(secret["metadata"]["name"], "cacerts");
        assert_eq!(secret["metadata"]["namespace"], "istio-system");
        assert_eq!(
            secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "meshup"
        );
        let data = secret["data"].as_object().unwrap();
        let decoded = |key: &str| {
            String::from_utf8(BASE64.decode(data[key].as_str().unwrap()).unwrap()).unwrap()
        };
        assert_eq!(data.len(), 4);
        assert_eq!(decoded(CA_CERT), ca.ca_cert_pem);
        assert_eq!(&decoded(CA_KEY), ca.ca_key_pem.expose());
        assert_eq!(decoded(ROOT_CERT), ca.root_cert_pem);
        assert_eq!(decoded(CERT_CHAIN), ca.cert_chain_pem);
    }

    #[test]
    fn manifest_namespace_stays_a_string() {
        let (_tmp, _dir, trust) = generated();
        let manifest = cacerts_manifest("true", &trust.clusters["cluster1"]);
        let secret: serde_json::Value = serde_yaml::from_str(manifest.expose()).unwrap();
        assert_eq!(secret["metadata"]["namespace"], "true");
    }

    /// The live secret as `kubectl get -o json` shows what the manifest created.
    fn live_from(manifest: &Sensitive<String>) -> serde_json::Value {
        let mut secret: serde_json::Value = serde_yaml::from_str(manifest.expose()).unwrap();
        secret["metadata"]["uid"] = "3f1c".into();
        secret
    }

    #[test]
    fn live_secret_from_the_manifest_matches_and_shows_the_root() {
        let (_tmp, _dir, trust) = generated();
        let ca = &trust.clusters["cluster1"];
        let live = live_from(&cacerts_manifest("istio-system", ca));
        assert!(live_matches(&live, ca));
        assert_eq!(
            live_root_fingerprint(&live).unwrap(),
            Some(fingerprint(&trust.root_cert_pem).unwrap())
        );
    }

    #[test]
    fn live_secret_with_another_value_or_an_extra_key_does_not_match() {
        let (_tmp, _dir, trust) = generated();
        let ca = &trust.clusters["cluster1"];
        let other = &trust.clusters["cluster2"];
        let live = live_from(&cacerts_manifest("istio-system", other));
        assert!(!live_matches(&live, ca));

        let mut extra = live_from(&cacerts_manifest("istio-system", ca));
        extra["data"]["tls.crt"] = BASE64.encode("x").into();
        assert!(!live_matches(&extra, ca));

        let mut fewer = live_from(&cacerts_manifest("istio-system", ca));
        fewer["data"].as_object_mut().unwrap().remove(CA_KEY);
        assert!(!live_matches(&fewer, ca));
        assert!(!live_matches(&serde_json::json!({"kind": "Secret"}), ca));
    }

    #[test]
    fn live_root_fingerprint_is_none_without_root_cert() {
        let secret = serde_json::json!({"kind": "Secret", "data": {"ca-cert.pem": "eA=="}});
        assert_eq!(live_root_fingerprint(&secret).unwrap(), None);
        assert_eq!(live_root_fingerprint(&serde_json::json!({})).unwrap(), None);
    }

    #[test]
    fn live_root_fingerprint_rejects_a_value_that_is_not_a_certificate() {
        for value in ["not base64!", "eA=="] {
            let secret = serde_json::json!({"data": {"root-cert.pem": value}});
            let err = live_root_fingerprint(&secret).unwrap_err();
            assert!(matches!(err, TrustError::LiveSecret { .. }), "{err:?}");
        }
    }

    #[test]
    fn key_type_parses_its_command_line_names() {
        assert_eq!("ecdsa-p256".parse::<KeyType>().unwrap(), KeyType::EcdsaP256);
        assert_eq!("rsa4096".parse::<KeyType>().unwrap(), KeyType::Rsa4096);
        assert_eq!(KeyType::default(), KeyType::EcdsaP256);
        for key_type in [KeyType::EcdsaP256, KeyType::Rsa4096] {
            assert_eq!(key_type.to_string().parse::<KeyType>().unwrap(), key_type);
        }
        let err = "rsa".parse::<KeyType>().unwrap_err();
        assert!(err.to_string().contains("`rsa`"), "{err}");
    }

    #[test]
    fn trust_mode_reads_lowercase_names_and_defaults_to_generate() {
        let modes: Vec<TrustMode> = serde_yaml::from_str("[generate, provided, none]").unwrap();
        assert_eq!(
            modes,
            [TrustMode::Generate, TrustMode::Provided, TrustMode::None]
        );
        assert!(serde_yaml::from_str::<TrustMode>("Generate").is_err());
        assert_eq!(TrustMode::default(), TrustMode::Generate);
    }
}
