//! Why trust material could not be made, read or checked.

use std::path::PathBuf;

use crate::trust::files::FileError;

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
