//! TLS with rustls (ring) for every medembed server and for the gateway's
//! connections to workers (feature `tls`).
//!
//! Why here: the gateway's public listener and every worker serve a
//! certificate from PEM files that Kubernetes updates in place (a mounted
//! TLS Secret), and the gateway verifies workers against a CA file that is
//! updated the same way. Both need the same thing: material loaded from
//! files, reloaded when a file changes, with each new handshake using what
//! was loaded last and no connection dropped. One copy of that lives here:
//!
//! - [`ReloadingCert`]: a server certificate chain and key
//!   ([`ReloadingCert::acceptor`], and [`TlsHandshake`] for the shared accept
//!   loop, [`crate::serve`]);
//! - [`ReloadingCa`]: a verifier trusting only the CA certificates of one
//!   file (no system roots), for clients ([`ReloadingCa::client_config`]).
//!
//! Files are polled ([`Reloading::watch`]) rather than watched with inotify:
//! a Secret volume is updated by swapping a symlink, which polling the
//! modification time of the path sees as well. A file changed but not yet
//! loadable (half-written) is retried on the next poll; the previous
//! material stays in use. Private keys never reach a log line or a `Debug`
//! output.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::TcpStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::ring::sign::any_supported_type;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

pub use tokio_rustls;

/// The crypto provider of every medembed TLS configuration: ring (pure Rust
/// and assembly, no C toolchain beyond what ring needs, no OpenSSL).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Something loaded from files and replaced when they change: each reader
/// gets what was loaded last.
pub struct Reloading<T> {
    current: RwLock<Arc<T>>,
    paths: Vec<PathBuf>,
    load: fn(&[PathBuf]) -> anyhow::Result<Arc<T>>,
    what: &'static str,
}

impl<T> std::fmt::Debug for Reloading<T> {
    // The paths and what they hold; never the material (a private key).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish()
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl<T: Send + Sync + 'static> Reloading<T> {
    fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: fn(&[PathBuf]) -> anyhow::Result<Arc<T>>,
    ) -> anyhow::Result<Arc<Self>> {
        let first = load(&paths)?;
        Ok(Arc::new(Reloading {
            current: RwLock::new(first),
            paths,
            load,
            what,
        }))
    }

    /// What was loaded last.
    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Polls the files every `every`, swapping in what they hold when they
    /// change and load cleanly (a half-written file is retried next time).
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let stamps = |me: &Self| me.paths.iter().map(|p| mtime(p)).collect::<Vec<_>>();
            let mut seen = stamps(&me);
            loop {
                tokio::time::sleep(every).await;
                let now = stamps(&me);
                if now == seen {
                    continue;
                }
                match (me.load)(&me.paths) {
                    Ok(v) => {
                        *me.current.write().unwrap_or_else(|e| e.into_inner()) = v;
                        seen = now;
                        tracing::info!(what = me.what, "TLS material reloaded");
                    }
                    Err(e) => tracing::warn!(
                        what = me.what,
                        error = %e,
                        "TLS material changed but cannot be loaded yet"
                    ),
                }
            }
        })
    }
}

/// Reads a PEM certificate chain and private key into a rustls certified key.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> anyhow::Result<CertifiedKey> {
    let cert_pem = std::fs::read(cert_path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", cert_path.display()))?;
    let key_pem = std::fs::read(key_path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", key_path.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "no certificate in {}",
        cert_path.display()
    );
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| anyhow::anyhow!("no usable private key in {}", key_path.display()))?;
    let signer = any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("private key in {}: {e}", key_path.display()))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// A server certificate and key from PEM files, reloaded when they change.
pub type ReloadingCert = Reloading<CertifiedKey>;

impl ReloadingCert {
    /// Loads the pair once (failing if it cannot).
    pub fn from_files(cert_path: PathBuf, key_path: PathBuf) -> anyhow::Result<Arc<Self>> {
        Reloading::new("certificate", vec![cert_path, key_path], |p| {
            Ok(Arc::new(load_certified_key(&p[0], &p[1])?))
        })
    }

    /// A TLS acceptor serving this certificate (HTTP/2 and HTTP/1.1 by ALPN).
    pub fn acceptor(self: &Arc<Self>) -> anyhow::Result<TlsAcceptor> {
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(cfg)))
    }

    /// The handshake of a listener serving this certificate, for
    /// [`crate::serve::serve`].
    pub fn handshake(self: &Arc<Self>) -> anyhow::Result<TlsHandshake> {
        Ok(TlsHandshake(self.acceptor()?))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Reads every certificate of a PEM file into a root store.
pub fn load_roots(ca_path: &Path) -> anyhow::Result<RootCertStore> {
    let pem = std::fs::read(ca_path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", ca_path.display()))?;
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| anyhow::anyhow!("{}: {e}", ca_path.display()))?;
        roots
            .add(der)
            .map_err(|e| anyhow::anyhow!("{}: {e}", ca_path.display()))?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "no CA certificate in {}",
        ca_path.display()
    );
    Ok(roots)
}

/// A server certificate verifier trusting only the CA certificates of one
/// PEM file, reloaded when it changes. Names are checked as usual: the
/// certificate must be valid for the server name the client dials.
pub type ReloadingCa = Reloading<WebPkiServerVerifier>;

impl ReloadingCa {
    /// Loads the CA file once (failing if it holds no certificate).
    pub fn from_file(ca_path: PathBuf) -> anyhow::Result<Arc<Self>> {
        Reloading::new("CA", vec![ca_path], |p| {
            let roots = load_roots(&p[0])?;
            Ok(WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build()?)
        })
    }

    /// A client configuration verifying servers with this CA (no client
    /// certificate; ALPN left to the HTTP connector that uses it).
    pub fn client_config(self: &Arc<Self>) -> anyhow::Result<ClientConfig> {
        Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth())
    }
}

impl ServerCertVerifier for ReloadingCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The TLS handshake of a listener, for the shared accept loop.
#[derive(Clone)]
pub struct TlsHandshake(pub TlsAcceptor);

impl std::fmt::Debug for TlsHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsHandshake")
    }
}

impl crate::serve::Handshake for TlsHandshake {
    type Io = TlsStream<TcpStream>;

    fn handshake(
        &self,
        tcp: TcpStream,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send {
        self.0.accept(tcp)
    }
}
