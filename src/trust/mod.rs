//! The shared root of trust: the certificate material that makes every cluster's istiod sign
//! workload certificates under one root, so that cross-cluster mTLS verifies. (The `cacerts`
//! Secret that carries it into a cluster is a component: `components/cacerts.rs`.)
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
//! user's own PKI and checks it. Both return a [`Trust`].

mod ca;
mod generate;
mod provided;
mod sets;
mod x509;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::files::FileError;
use crate::sensitive::Sensitive;

pub use generate::generate;
pub use provided::load_provided;
pub use x509::fingerprint;

/// How long a generated root CA is valid: ten years, as in Istio's reference Makefiles.
pub const ROOT_VALIDITY_DAYS: i64 = 3650;

/// How long a generated intermediate CA is valid: five years, cut short to the root's own
/// expiry. Shorter than the root so that a cluster's CA can be replaced (delete
/// `<dir>/<cluster>/` and re-run) long before the root must be.
pub const INTERMEDIATE_VALIDITY_DAYS: i64 = 1825;

const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";
const CA_CERT: &str = "ca-cert.pem";
const CA_KEY: &str = "ca-key.pem";
const CERT_CHAIN: &str = "cert-chain.pem";

/// The four files of one cluster's set, in the order an error names the first missing one.
pub const CLUSTER_FILES: [&str; 4] = [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN];

/// The key in a `cacerts` Secret (and the file) that holds the root certificate.
pub const ROOT_CERT_KEY: &str = ROOT_CERT;

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// Where the `cacerts` material comes from (`trust.mode` in the mesh file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// The name used on the command line.
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

impl ClusterCa {
    /// The four keys and values of the `cacerts` Secret, sorted by key as Kubernetes prints
    /// them. The key's value is the only secret among them.
    pub fn secret_values(&self) -> [(&'static str, &str); 4] {
        [
            (CA_CERT, &self.ca_cert_pem),
            (CA_KEY, self.ca_key_pem.expose()),
            (CERT_CHAIN, &self.cert_chain_pem),
            (ROOT_CERT, &self.root_cert_pem),
        ]
    }
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
/// material: they name the file and say what to do. Everything but a failed file operation
/// or a failed signature is a problem with the files the user keeps, so bad input (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Reading or writing a file or directory failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// `provided` mode and the trust directory does not exist.
    #[error(
        "trust directory `{}` does not exist; put your CA files there, or use `trust.mode: generate` to have meshup create them",
        dir.display()
    )]
    MissingDir { dir: PathBuf },
    /// Exactly one of `root-cert.pem` and `root-key.pem` exists where both are needed, or a
    /// key without its certificate.
    #[error(
        "`{}` exists but `{}` does not; restore the missing file from your backup, or move both aside to start a new root (every cluster's `cacerts` then changes and istiod and workloads must restart)",
        present.display(), missing.display()
    )]
    RootIncomplete { present: PathBuf, missing: PathBuf },
    /// A cluster directory holds some but not all of the four files.
    #[error(
        "`{}` is missing for cluster `{cluster}`: istiod needs all four of ca-cert.pem, ca-key.pem, root-cert.pem and cert-chain.pem; add the missing file, or remove the others so the cluster's CA can be signed with root-key.pem",
        missing.display()
    )]
    IncompleteSet { cluster: String, missing: PathBuf },
    /// `provided` mode: a cluster has no files and there is no root key to sign them with.
    #[error(
        "cluster `{cluster}` has no CA in `{}`; add ca-cert.pem, ca-key.pem, root-cert.pem and cert-chain.pem there, or put the root's key at `{}` so meshup can sign one",
        dir.display(), root_key.display()
    )]
    NoClusterCa {
        cluster: String,
        dir: PathBuf,
        root_key: PathBuf,
    },
    /// `provided` mode: no `root-cert.pem` anywhere.
    #[error(
        "no root certificate: `{}` does not exist and no cluster directory holds one; add your root CA certificate there",
        path.display()
    )]
    NoRoot { path: PathBuf },
    /// A file that should hold certificates does not hold the right ones.
    #[error("`{}` {reason}; replace it with the PEM certificate(s) it should hold", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    /// A private key file that cannot be parsed.
    #[error(
        "could not parse the private key in `{}`; it must be an unencrypted PEM key (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`) for ECDSA P-256/P-384 or RSA",
        path.display()
    )]
    BadKey { path: PathBuf },
    /// A private key that does not belong to the certificate beside it.
    #[error(
        "the key in `{}` does not belong to the certificate in `{}`; put the matching key or certificate in place",
        key.display(), cert.display()
    )]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    /// A certificate that should be a CA is not one.
    #[error(
        "`{}` is not a usable CA certificate: {reason}; issue it as a CA (basicConstraints CA:true, keyUsage keyCertSign)",
        path.display()
    )]
    NotCa { path: PathBuf, reason: String },
    /// A certificate outside its validity period.
    #[error(
        "`{}` is not valid now (valid from {not_before} to {not_after}); replace it with a current certificate",
        path.display()
    )]
    NotCurrent {
        path: PathBuf,
        not_before: String,
        not_after: String,
    },
    /// A root certificate that is not self-signed.
    #[error(
        "`{}` is not self-signed; root-cert.pem must hold the top of your PKI, since workloads trust it as a root",
        path.display()
    )]
    NotSelfSigned { path: PathBuf },
    /// A `cert-chain.pem` that does not lead from `ca-cert.pem` up to the root.
    #[error(
        "`{}` {reason}; it must hold ca-cert.pem, then any further intermediates, then root-cert.pem, each signed by the next",
        path.display()
    )]
    BrokenChain { path: PathBuf, reason: String },
    /// A root certificate that differs from the mesh's root.
    #[error(
        "`{}` holds root {found}, but the mesh's root in `{}` is {expected}; every cluster must share one root, so replace it with a copy of that root (and re-issue the cluster's CA under it)",
        path.display(), expected_path.display()
    )]
    RootMismatch {
        path: PathBuf,
        found: String,
        expected_path: PathBuf,
        expected: String,
    },
    /// Creating a key or signing a certificate failed.
    #[error("could not create {what}: {reason}")]
    Sign { what: String, reason: String },
}

impl TrustError {
    /// 2 when the user's files are wrong (nothing was touched), 1 when meshup could not do
    /// its part (a file operation or a signature failed).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::File(_) | Self::Sign { .. } => 1,
            _ => 2,
        }
    }
}

#[cfg(test)]
mod tests;
