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
mod error;
pub mod files;
mod generate;
mod material;
mod provided;
pub mod sensitive;
mod sets;
mod x509;

pub use error::TrustError;
pub use generate::generate;
pub use material::{
    CLUSTER_FILES, ClusterCa, INTERMEDIATE_VALIDITY_DAYS, KeyType, ROOT_CERT_KEY,
    ROOT_VALIDITY_DAYS, Trust, TrustMode,
};
pub use provided::load_provided;
pub use x509::fingerprint;

#[cfg(test)]
mod tests;
