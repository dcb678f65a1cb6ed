//! A minimal HTTP/1.0 GET client over loopback TCP, used for readiness probes
//! and by tests to reach pods at their pod IPs. Deliberately tiny: no
//! keep-alive, no redirects; the body is read until the server closes.
//!
//! [`get_tls`] does the same over TLS without verifying the server's
//! certificate, as the kubelet's `scheme: HTTPS` probes do (a probe checks
//! that the server answers, not who it is).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, Error, SignatureScheme};

/// An HTTP response: status code and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code (e.g. 200).
    pub status: u16,
    /// The body, as text (lossy UTF-8).
    pub body: String,
}

/// GETs `path` from `addr` within `timeout`.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Response> {
    within(timeout, async {
        let s = TcpStream::connect(addr).await?;
        exchange(s, addr, path).await
    })
    .await
}

/// GETs `path` from `addr` over TLS within `timeout`, accepting any
/// certificate (as the kubelet's HTTPS probes do).
pub async fn get_tls(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Response> {
    within(timeout, async {
        let s = TcpStream::connect(addr).await?;
        let provider = Arc::new(ring::default_provider());
        let cfg = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate::new(provider)))
            .with_no_client_auth();
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, s)
            .await?;
        exchange(tls, addr, path).await
    })
    .await
}

async fn within<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP GET timed out"))?
}

/// One GET on an open stream, read until the server closes.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    addr: SocketAddr,
    path: &str,
) -> std::io::Result<Response> {
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: medembed-node-agent\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    // A TLS server may close without close_notify after the answer: what
    // was read is the answer.
    if let Err(e) = s.read_to_end(&mut buf).await {
        if buf.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(e);
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response")
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok(Response { status, body })
}

/// Accepts every certificate, checking only that the handshake's signatures
/// are valid for the presented one, and records the last certificate shown
/// (for tests of which certificate a server serves).
#[derive(Debug)]
pub struct AnyCertificate {
    provider: Arc<CryptoProvider>,
    seen: Mutex<Option<Vec<u8>>>,
}

impl AnyCertificate {
    /// A verifier checking signatures with `provider`'s algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        AnyCertificate {
            provider,
            seen: Mutex::new(None),
        }
    }

    /// The DER of the last end-entity certificate shown, if any.
    pub fn last_seen(&self) -> Option<Vec<u8>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(end_entity.as_ref().to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
