//! TLS termination with rustls: the certificate chain and key come from PEM
//! files (a mounted Kubernetes TLS Secret is such a pair of files, updated in
//! place by the kubelet) and are reloaded when either file changes, without
//! dropping connections: each new handshake uses the current certificate.
//! [`TlsHandshake`] plugs the acceptor into the shared accept loop
//! ([`medembed_api::serve`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::ring::sign::any_supported_type;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Serves whatever certificate was loaded last.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Reads a PEM chain and key into a rustls certified key.
pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<CertifiedKey> {
    let cert_pem = std::fs::read(cert_path)?;
    let key_pem = std::fs::read(key_path)?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<_, _>>()?;
    anyhow::ensure!(
        !chain.is_empty(),
        "no certificate in {}",
        cert_path.display()
    );
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| anyhow::anyhow!("no usable private key in {}", key_path.display()))?;
    let signer = any_supported_type(&key)?;
    Ok(CertifiedKey::new(chain, signer))
}

impl ReloadingCert {
    /// Loads the pair once (failing if it cannot).
    pub fn new(cert_path: PathBuf, key_path: PathBuf) -> anyhow::Result<Arc<Self>> {
        let ck = load(&cert_path, &key_path)?;
        Ok(Arc::new(ReloadingCert {
            current: RwLock::new(Arc::new(ck)),
            cert_path,
            key_path,
        }))
    }

    /// Polls both files every `every`, swapping the certificate when they
    /// change and load cleanly (a half-written pair is retried next time).
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut seen = (mtime(&me.cert_path), mtime(&me.key_path));
            loop {
                tokio::time::sleep(every).await;
                let now = (mtime(&me.cert_path), mtime(&me.key_path));
                if now == seen {
                    continue;
                }
                match load(&me.cert_path, &me.key_path) {
                    Ok(ck) => {
                        *me.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
                        seen = now;
                        tracing::info!("TLS certificate reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate changed but cannot be loaded yet")
                    }
                }
            }
        })
    }

    /// A TLS acceptor serving this certificate (HTTP/2 and HTTP/1.1 by ALPN).
    pub fn acceptor(self: &Arc<Self>) -> anyhow::Result<TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(cfg)))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The TLS handshake of the scoring API's listener.
#[derive(Clone)]
pub struct TlsHandshake(pub TlsAcceptor);

impl std::fmt::Debug for TlsHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsHandshake")
    }
}

impl medembed_api::serve::Handshake for TlsHandshake {
    type Io = TlsStream<TcpStream>;

    fn handshake(
        &self,
        tcp: TcpStream,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send {
        self.0.accept(tcp)
    }
}
