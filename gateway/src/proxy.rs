//! The upstream side's plumbing: the HTTP client for workers (and for key
//! sets and worker metrics), what a request carries upstream
//! ([`Outgoing`]), a worker's answer ([`Answer`]), and the response body
//! that keeps a request's guards alive until it has been sent
//! ([`Guarded`]). Which worker is called, and the retry, are the forward
//! stage's ([`crate::stages::forward`]).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use medembed_api::ResponseFormat;

use crate::balance;

/// The HTTP/1.1 client used for workers (plain HTTP inside the cluster).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the upstream client.
pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(connect_timeout));
    c.set_nodelay(true);
    c.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build(c)
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
