//! Tests of the trust material: generated and provided CAs, fingerprints.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use x509_parser::public_key::PublicKey;

use super::ca::concat_pem;
use super::material::*;
use super::x509::{certs_in, key_matches, names_istiod, parse, signed_by};
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

fn attr(name: &x509_parser::x509::X509Name<'_>, oid: &x509_parser::der_parser::Oid<'_>) -> String {
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
    let err = crate::trust::files::write(
        &dir.join(ROOT_CERT),
        b"x",
        CERT_MODE,
        crate::trust::files::Existing::Keep,
    )
    .unwrap_err();
    assert_eq!(err.path, dir.join(ROOT_CERT));
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
    let (trust, _) = generate(tmp.path(), &[("east", "istio-system")], KeyType::Rsa4096).unwrap();
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
    assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
    assert!(!err.to_string().contains("MHcCAQEE"), "{err}");
    assert!(fingerprint("").is_err());
}
