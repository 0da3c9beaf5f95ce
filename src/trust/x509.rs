//! Reading and checking certificates and keys: parsing PEM, signature and key checks, CA
//! constraints, validity, fingerprints.

use std::path::Path;

use rcgen::KeyPair;
use x509_parser::certificate::X509Certificate;
use x509_parser::parse_x509_certificate;
use x509_parser::pem::Pem;

use super::error::TrustError;
use crate::trust::sensitive::Sensitive;

/// PEM text that holds no usable certificate; the reason completes "the text ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotCertificate(pub String);

/// The SHA-256 fingerprint of the first certificate in `cert_pem`, as uppercase hex pairs
/// joined by `:` (the form `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint(cert_pem: &str) -> Result<String, NotCertificate> {
    let ders = certs_in(cert_pem).map_err(NotCertificate)?;
    Ok(der_fingerprint(&ders[0]))
}

/// Parses DER that [`certs_in`] has already parsed once.
pub(super) fn parse(der: &[u8]) -> X509Certificate<'_> {
    parse_x509_certificate(der)
        .expect("certificates are parsed when read")
        .1
}

/// The DER of every `CERTIFICATE` block in `pem`, each checked to parse; at least one.
/// The error completes "the file ...".
pub(super) fn certs_in(pem: &str) -> Result<Vec<Vec<u8>>, String> {
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
pub(super) fn single_cert(pem: &str, path: &Path) -> Result<Vec<u8>, TrustError> {
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

pub(super) fn parse_key(pem: &Sensitive<String>, path: &Path) -> Result<KeyPair, TrustError> {
    KeyPair::from_pem(pem.expose()).map_err(|_| TrustError::BadKey {
        path: path.to_path_buf(),
    })
}

pub(super) fn key_matches(key: &KeyPair, cert: &X509Certificate<'_>) -> bool {
    key.public_key_raw() == cert.public_key().subject_public_key.data.as_ref()
}

/// Whether `parent` issued `child`: the names match byte for byte (as Go's verifier
/// requires) and the signature verifies.
pub(super) fn signed_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == parent.subject().as_raw()
        && child.verify_signature(Some(parent.public_key())).is_ok()
}

pub(super) fn check_ca(cert: &X509Certificate<'_>, path: &Path) -> Result<(), TrustError> {
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

pub(super) fn check_current(cert: &X509Certificate<'_>, path: &Path) -> Result<(), TrustError> {
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

/// Whether a CA certificate names `istiod.<namespace>.svc` among its DNS SANs.
pub(super) fn names_istiod(ca_cert_pem: &str, namespace: &str) -> bool {
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

pub(super) fn der_fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
