//! Making and loading certificate authorities: the root (checked when read) and each
//! cluster's intermediate CA signed by it.

use std::fmt;
use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::public_key::PublicKey;

use super::error::TrustError;
use super::material::{ClusterCa, INTERMEDIATE_VALIDITY_DAYS, KeyType, ROOT_VALIDITY_DAYS};
use super::x509::{check_ca, check_current, key_matches, parse, parse_key, signed_by, single_cert};
use crate::trust::sensitive::Sensitive;

/// Certificates are dated this far back so that a cluster whose clock runs a little behind
/// this machine's does not see them as not yet valid.
const BACKDATE: Duration = Duration::hours(1);

/// The root CA: its certificate as read or written, and its key when there is one.
pub(super) struct Root {
    pub(super) cert_pem: String,
    pub(super) der: Vec<u8>,
    pub(super) path: PathBuf,
    pub(super) key: Option<Sensitive<KeyPair>>,
}

impl Root {
    pub(super) fn x509(&self) -> X509Certificate<'_> {
        parse(&self.der)
    }

    pub(super) fn is_rsa(&self) -> bool {
        matches!(self.x509().public_key().parsed(), Ok(PublicKey::RSA(_)))
    }
}

/// Parses and checks a root certificate (one self-signed CA, valid now) and its key.
pub(super) fn load_root(
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

pub(super) fn root_params() -> CertificateParams {
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

pub(super) fn ca_key_usages() -> Vec<KeyUsagePurpose> {
    vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ]
}

/// Signs a new intermediate CA for `cluster` with the root's key.
pub(super) fn issue_intermediate(
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

pub(super) fn new_key(key_type: KeyType, what: &str) -> Result<KeyPair, TrustError> {
    match key_type {
        KeyType::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_4096),
    }
    .map_err(|e| sign_error(what, e))
}

pub(super) fn sign_error(what: &str, e: impl fmt::Display) -> TrustError {
    TrustError::Sign {
        what: what.to_string(),
        reason: format!("{e}; please report this as a meshup bug"),
    }
}

pub(super) fn concat_pem(first: &str, second: &str) -> String {
    let mut out = first.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(second);
    out
}
