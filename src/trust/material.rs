//! What the trust material is: the mesh's root, each cluster's CA, the files they live in.

use std::collections::BTreeMap;
use std::fmt;

use crate::trust::sensitive::Sensitive;

/// How long a generated root CA is valid: ten years, as in Istio's reference Makefiles.
pub const ROOT_VALIDITY_DAYS: i64 = 3650;

/// How long a generated intermediate CA is valid: five years, cut short to the root's own
/// expiry. Shorter than the root so that a cluster's CA can be replaced (delete
/// `<dir>/<cluster>/` and re-run) long before the root must be.
pub const INTERMEDIATE_VALIDITY_DAYS: i64 = 1825;

pub(super) const ROOT_CERT: &str = "root-cert.pem";
pub(super) const ROOT_KEY: &str = "root-key.pem";
pub(super) const CA_CERT: &str = "ca-cert.pem";
pub(super) const CA_KEY: &str = "ca-key.pem";
pub(super) const CERT_CHAIN: &str = "cert-chain.pem";

/// The four files of one cluster's set, in the order an error names the first missing one.
pub const CLUSTER_FILES: [&str; 4] = [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN];

/// The key in a `cacerts` Secret (and the file) that holds the root certificate.
pub const ROOT_CERT_KEY: &str = ROOT_CERT;

pub(super) const KEY_MODE: u32 = 0o600;
pub(super) const CERT_MODE: u32 = 0o644;
pub(super) const DIR_MODE: u32 = 0o700;

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
