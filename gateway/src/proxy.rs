//! Calling workers: the upstream HTTP client, one request with its deadline,
//! the single retry, and the response body that keeps its guards alive.
//!
//! A request goes to the worker [`crate::balance::pick`] chooses. It is
//! retried once, on another worker, when the first gave no answer to use:
//! the connection was refused (or timed out opening), the worker answered
//! 503 (a medembed worker answers 503 only while loading or draining, before
//! any inference), or the connection broke before a response came (the
//! worker was killed or crashed mid-request). Scoring is a pure function of
//! the request, so running it a second time is safe; it costs at most one
//! more inference, and one retry in all bounds what a request that somehow
//! kills workers can take down. Nothing is retried once response headers
//! have arrived, nor after the deadline. Workers that answer 429/503, refuse
//! a connection or break one are penalised. The time left of the endpoint's budget goes to
//! the worker in [`medembed_api::TIMEOUT_HEADER`], and the gateway stops
//! waiting at the same deadline (408).
//!
//! Dropping the future of a request (the client went away) drops the
//! upstream request, which closes its connection: the worker sees the
//! cancellation and drops the work before it costs GPU time.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use medembed_api::{ErrorCode, ResponseFormat};

use crate::balance::{self, Worker};
use crate::metrics::Metrics;
use crate::table::Deployment;

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

/// GETs `url` and returns its body as text (JWKS, worker metrics).
pub async fn get_text(client: &HttpClient, url: &str, timeout: Duration) -> anyhow::Result<String> {
    let req = Request::get(url).body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(timeout, client.request(req)).await??;
    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
    let body = tokio::time::timeout(timeout, resp.into_body().collect()).await??;
    Ok(String::from_utf8(body.to_bytes().to_vec())?)
}

/// Why no worker response could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The deployment has no workers.
    #[error("no worker is available for this deployment")]
    NoWorkers,
    /// Every attempt failed to connect.
    #[error("no worker could be reached")]
    Unreachable,
    /// The worker closed the connection or broke the protocol.
    #[error("the worker failed to answer")]
    Broken,
    /// The endpoint's time budget ran out.
    #[error("the request timed out")]
    Timeout,
}

impl UpstreamError {
    /// Stable code for the error body and reason label; its status is the
    /// client's.
    pub fn code(self) -> ErrorCode {
        match self {
            UpstreamError::NoWorkers => ErrorCode::NoWorkers,
            UpstreamError::Unreachable => ErrorCode::UpstreamUnreachable,
            UpstreamError::Broken => ErrorCode::UpstreamFailed,
            UpstreamError::Timeout => ErrorCode::Timeout,
        }
    }
}

/// What a request carries upstream besides its body.
#[derive(Debug, Clone)]
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

/// A worker's response, with the worker that gave it.
#[derive(Debug)]
pub struct Answer {
    /// The response (body not yet read).
    pub response: Response<Incoming>,
    /// The worker's in-flight guard: keep it until the body is read.
    pub in_flight: balance::InFlight,
}

fn build(
    worker: &Worker,
    out: &Outgoing,
    now: Instant,
) -> Result<Request<Full<Bytes>>, UpstreamError> {
    let left = out.deadline.saturating_duration_since(now);
    if left.is_zero() {
        return Err(UpstreamError::Timeout);
    }
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/score", worker.authority))
        .header(
            medembed_api::TIMEOUT_HEADER,
            left.as_millis().max(1).to_string(),
        )
        .header("traceparent", &out.traceparent)
        .header(medembed_api::REQUEST_ID_HEADER, &out.request_id)
        .header(
            medembed_api::RESPONSE_FORMAT_HEADER,
            out.response_format.as_str(),
        );
    if let Some(ct) = &out.content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    req.body(Full::new(out.body.clone()))
        .map_err(|_| UpstreamError::Broken)
}

/// Sends a request to one worker of `deployment`, retrying once on another
/// worker when the first gave no usable answer (see the module's doc).
pub async fn call(
    client: &HttpClient,
    metrics: &Metrics,
    endpoint: &str,
    deployment: &Deployment,
    out: &Outgoing,
    penalty: Duration,
) -> Result<Answer, UpstreamError> {
    let mut failed: Option<Arc<Worker>> = None;
    let mut last_err = UpstreamError::NoWorkers;
    for attempt in 0..2 {
        let Some(worker) = balance::pick(&deployment.workers, failed.as_ref()) else {
            return Err(last_err);
        };
        let in_flight = worker.begin();
        let req = build(&worker, out, Instant::now())?;
        let result = tokio::time::timeout_at(out.deadline, client.request(req)).await;
        let cause = match result {
            Err(_) => return Err(UpstreamError::Timeout),
            Ok(Ok(response)) => {
                let status = response.status();
                if status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::SERVICE_UNAVAILABLE
                {
                    worker.penalize(penalty);
                }
                if status != StatusCode::SERVICE_UNAVAILABLE || attempt == 1 {
                    return Ok(Answer {
                        response,
                        in_flight,
                    });
                }
                // Is there another worker to try? If not, answer this 503.
                if balance::pick(&deployment.workers, Some(&worker)).is_none() {
                    return Ok(Answer {
                        response,
                        in_flight,
                    });
                }
                last_err = UpstreamError::Unreachable;
                "unavailable"
            }
            Ok(Err(e)) if e.is_connect() => {
                worker.penalize(penalty);
                last_err = UpstreamError::Unreachable;
                "connect"
            }
            Ok(Err(_)) => {
                worker.penalize(penalty);
                last_err = UpstreamError::Broken;
                "reset"
            }
        };
        drop(in_flight);
        if attempt == 0 {
            metrics
                .retries
                .with_label_values(&[endpoint, &deployment.name, cause])
                .inc();
        }
        failed = Some(worker);
    }
    Err(last_err)
}

/// A response body that holds guards (in-flight counts, a concurrency slot)
/// until it has been sent or dropped.
pub struct Guarded<B> {
    inner: B,
    _guards: Box<dyn Send + Sync>,
}

impl<B> Guarded<B> {
    /// Wraps `inner`, keeping `guards` alive with it.
    pub fn new(inner: B, guards: Box<dyn Send + Sync>) -> Self {
        Guarded {
            inner,
            _guards: guards,
        }
    }
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
