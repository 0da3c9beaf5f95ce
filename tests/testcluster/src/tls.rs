//! Certificates and TLS: each cluster's own CA, its serving certificate for 127.0.0.1 and
//! `localhost`, the rustls server configuration, and a small HTTPS client that verifies a
//! server against a given CA (for istiod's probe of its peers and for tests).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A cluster's CA and the certificate it serves with.
pub struct Pki {
    /// The CA certificate (PEM): what kubeconfigs and token secrets carry as `ca.crt`.
    pub ca_pem: String,
    /// rustls configuration serving the certificate signed by the CA, ALPN `http/1.1`.
    pub server: Arc<rustls::ServerConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Pki {
    /// A new CA named after the cluster and a serving certificate signed by it.
    pub fn new(cluster: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("generate the CA key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("testcluster-{cluster}-ca"),
        );
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = rcgen::Issuer::new(ca, ca_key);

        let key = rcgen::KeyPair::generate().expect("generate the serving key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("serving params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &issuer)
            .expect("sign the serving cert");

        let chain = vec![cert.der().clone(), ca_cert.der().clone()];
        let key = PrivateKeyDer::try_from(key.serialize_der()).expect("serving key DER");
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("serving certificate");
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Pki {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }
}

/// What an HTTPS request got back.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why an HTTPS request got no answer.
#[derive(Debug)]
pub enum Failure {
    /// The CA bundle holds no certificate.
    BadCa(String),
    /// TCP connect, TLS handshake (including a certificate that does not verify), or I/O.
    Io(std::io::Error),
    /// No answer within the time allowed.
    Timeout,
    /// An answer that is not HTTP/1.1.
    Malformed,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::BadCa(e) => write!(f, "bad CA: {e}"),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Timeout => write!(f, "timed out"),
            Failure::Malformed => write!(f, "malformed HTTP answer"),
        }
    }
}

/// An HTTP request: method, path with query, bearer token and JSON body.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub token: Option<&'a str>,
    pub body: Option<&'a [u8]>,
}

/// One HTTP/1.1 request over TLS to `127.0.0.1:port`, verifying the server as `host` against
/// `ca_pem`, with `Connection: close`; the answer is read to the end.
pub async fn request(
    port: u16,
    host: &str,
    ca_pem: &[u8],
    call: Call<'_>,
    timeout: Duration,
) -> Result<Reply, Failure> {
    let Call {
        method,
        path,
        token,
        body,
    } = call;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| Failure::BadCa(e.to_string()))?;
        roots.add(cert).map_err(|e| Failure::BadCa(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(Failure::BadCa("no certificate in the CA data".into()));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| Failure::Io(std::io::Error::other(e.to_string())))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head += &format!("Authorization: Bearer {t}\r\n");
    }
    if let Some(b) = body {
        head += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    }
    head += "\r\n";
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(Failure::Io)?;
        let mut tls = connector.connect(name, tcp).await.map_err(Failure::Io)?;
        tls.write_all(head.as_bytes()).await.map_err(Failure::Io)?;
        if let Some(b) = body {
            tls.write_all(b).await.map_err(Failure::Io)?;
        }
        tls.flush().await.map_err(Failure::Io)?;
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw).await {
            Ok(_) => {}
            // The server may close without close_notify once it has sent the answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(Failure::Io(e)),
        }
        parse(&raw)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    }
}

fn parse(raw: &[u8]) -> Result<Reply, Failure> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(Failure::Malformed)?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| Failure::Malformed)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(Failure::Malformed)?;
    let mut body = raw[end + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or(Failure::Malformed)?;
    }
    Ok(Reply { status, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).ok()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_answers_are_joined() {
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let reply = parse(raw).unwrap();
        assert_eq!((reply.status, reply.body), (200, b"abcde".to_vec()));
    }
}
