//! The upstream side's plumbing: the HTTP client for workers (scoring and
//! their metrics), what a request carries upstream
//! ([`Outgoing`]), a worker's answer ([`Answer`]), and the response body
//! that keeps a request's guards alive until it has been sent
//! ([`Guarded`]). Which worker is called, and the retry, are the forward
//! stage's ([`crate::stages::forward`]).
//!
//! With the workers' CA (`--worker-ca-file`), the client dials every worker
//! over TLS: rustls trusting only that CA (reloaded when its file changes),
//! verifying the name the worker's deployment gives it
//! ([`crate::balance::Worker::server_name`]: `<service>.<namespace>.svc`),
//! else the worker's IP address. A worker whose certificate does not verify
//! (another CA, another service's name) or that speaks plain HTTP fails the
//! handshake, before any request byte is sent, and counts as a connection
//! that could not be opened. Connections are pooled per worker as in plain
//! mode: one handshake per connection, not per request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use medembed_api::tls::tokio_rustls::rustls::pki_types::ServerName;
use tokio::time::Instant;

use medembed_api::tls::ReloadingCa;
use medembed_api::ResponseFormat;

use crate::balance::{self, Registry};

/// The HTTP/1.1 client for workers: plain HTTP, or TLS to every worker when
/// the gateway has the workers' CA.
#[derive(Clone, derive_more::Debug)]
#[debug("HttpClient {{ scheme: {scheme:?} }}")]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    scheme: &'static str,
}

impl HttpClient {
    /// Sends `req` on a pooled connection (opened, and over TLS verified,
    /// when none is idle).
    pub fn request(&self, req: Request<Full<Bytes>>) -> ResponseFuture {
        self.inner.request(req)
    }

    /// The URL of `path` on the worker at `authority` (`https` in TLS mode).
    pub fn url(&self, authority: &str, path: &str) -> String {
        format!("{}://{authority}{path}", self.scheme)
    }

    /// Whether workers are dialled over TLS.
    pub fn is_tls(&self) -> bool {
        self.scheme == "https"
    }
}

/// The name a worker's certificate must carry: the one its deployment gives
/// it, else its IP address.
fn server_name(
    registry: &Registry,
    uri: &Uri,
) -> Result<ServerName<'static>, Box<dyn std::error::Error + Send + Sync>> {
    let authority = uri.authority().ok_or("a worker URL without an address")?;
    let name = registry
        .server_name(authority.as_str())
        .unwrap_or_else(|| authority.host().trim_matches(['[', ']']).to_string());
    Ok(ServerName::try_from(name)?)
}

/// Builds the upstream client: over TLS with `tls` (the workers' CA, and the
/// registry naming each worker's server name), else plain HTTP.
pub fn http_client(
    connect_timeout: Duration,
    tls: Option<(Arc<ReloadingCa>, Arc<Registry>)>,
) -> anyhow::Result<HttpClient> {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(connect_timeout));
    c.set_nodelay(true);
    c.enforce_http(false);
    let (connector, scheme) = match tls {
        Some((ca, registry)) => (
            HttpsConnectorBuilder::new()
                .with_tls_config(ca.client_config()?)
                .https_only()
                .with_server_name_resolver(move |uri: &Uri| server_name(&registry, uri))
                .enable_http1()
                .wrap_connector(c),
            "https",
        ),
        None => (
            // Plain HTTP only: a client config that trusts nothing, for a
            // scheme never used.
            HttpsConnectorBuilder::new()
                .with_tls_config(
                    medembed_api::tls::tokio_rustls::rustls::ClientConfig::builder_with_provider(
                        medembed_api::tls::provider(),
                    )
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(
                        medembed_api::tls::tokio_rustls::rustls::RootCertStore::empty(),
                    )
                    .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .wrap_connector(c),
            "http",
        ),
    };
    let inner = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build(connector);
    Ok(HttpClient { inner, scheme })
}

/// GETs `url` and returns its body as text (a worker's metrics), within
/// `timeout` and refusing a body over `max_bytes`: what a worker answers is
/// read into memory, so it is bounded like everything else.
pub async fn get_text(
    client: &HttpClient,
    url: &str,
    timeout: Duration,
    max_bytes: usize,
) -> anyhow::Result<String> {
    let req = Request::get(url).body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(timeout, client.request(req)).await??;
    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
    let body = http_body_util::Limited::new(resp.into_body(), max_bytes);
    let body = tokio::time::timeout(timeout, body.collect())
        .await?
        .map_err(|e| anyhow::anyhow!("body: {e}"))?;
    Ok(String::from_utf8(body.to_bytes().to_vec())?)
}

/// What a request carries upstream besides its body.
#[derive(Clone)]
pub struct Outgoing {
    /// The body, as received.
    pub body: Bytes,
    /// `Content-Type` of the request.
    pub content_type: Option<HeaderValue>,
    /// `traceparent` for the worker.
    pub traceparent: String,
    /// The request's id, for the worker's logs.
    pub request_id: HeaderValue,
    /// The endpoint's response format.
    pub response_format: ResponseFormat,
    /// When the endpoint's budget runs out.
    pub deadline: Instant,
}

impl std::fmt::Debug for Outgoing {
    // The body is patient data: its size only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("body_bytes", &self.body.len())
            .field("content_type", &self.content_type)
            .field("traceparent", &self.traceparent)
            .field("request_id", &self.request_id)
            .field("response_format", &self.response_format)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// A worker's response, with the worker that gave it.
#[derive(Debug)]
pub struct Answer {
    /// The response (body not yet read).
    pub response: Response<Incoming>,
    /// The worker's in-flight guard: keep it until the body is read.
    pub in_flight: balance::InFlight,
}

/// A response body that holds guards (in-flight counts, a concurrency slot)
/// until it has been sent or dropped.
pub type Guarded<B> = medembed_api::serve::Guarded<B, Box<dyn Send + Sync>>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use hyper::body::Body;

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn guards_live_as_long_as_the_body() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let body = Guarded::new(
            Full::new(Bytes::from_static(b"abc")),
            Box::new(Counted(dropped.clone())),
        );
        assert_eq!(body.size_hint().exact(), Some(3));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abc");
        // Collected, hence dropped: the guard went with it.
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        let unsent = Guarded::new(
            Full::new(Bytes::from_static(b"abc")),
            Box::new(Counted(dropped.clone())),
        );
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        drop(unsent);
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn debug_shows_no_body() {
        let out = Outgoing {
            body: Bytes::from_static(b"iVBORw0KGgo patient"),
            content_type: None,
            traceparent: "00-x".into(),
            request_id: HeaderValue::from_static("r"),
            response_format: ResponseFormat::default(),
            deadline: Instant::now(),
        };
        let d = format!("{out:?}");
        assert!(!d.contains("iVBOR") && !d.contains("patient"), "{d}");
        assert!(d.contains("body_bytes: 19"), "{d}");
    }
}
