//! Forward: one worker of the chosen deployment answers, with at most one
//! retry on another once the request reached a worker.
//!
//! A request goes to the worker [`crate::balance::pick`] chooses. It is
//! retried once, on another worker, when the first gave no answer to use
//! ([`next_step`]): the connection was refused (or timed out opening), the
//! worker answered 503 (a medembed worker answers 503 only while loading or
//! draining, before any inference) and another worker exists, or the
//! connection broke before a response came (the worker was killed or
//! crashed mid-request). Scoring is a pure function of the request, so
//! running it a second time is safe; it costs at most one more inference,
//! and one retry in all bounds what a request that somehow kills workers can
//! take down. A refused connection delivered nothing, so it does not use up
//! that retry: up to [`MAX_REFUSED`] workers that refuse are skipped (when a
//! deployment scales in, several workers stop at once, before the gateway
//! hears of it). Nothing is retried once response headers have arrived, nor
//! after the deadline. Workers that answer 429/503, refuse a connection or
//! break one are penalised ([`penalizes`]). The time left of the endpoint's
//! budget goes to the worker in [`medembed_api::TIMEOUT_HEADER`], and the
//! gateway stops waiting at the same deadline (408).
//!
//! Dropping the future of a request (the client went away) drops the
//! upstream request, which closes its connection: the worker sees the
//! cancellation and drops the work before it costs GPU time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{header, Method, Request, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;

use crate::balance::{self, Worker};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::proxy::{Answer, HttpClient, Outgoing};
use crate::server::Gateway;
use crate::stages::choose::Mirror;
use crate::stages::respond::Facts;
use crate::table::{Deployment, Endpoint};

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

/// What one attempt on one worker came to (before the deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived with this status.
    Answered(StatusCode),
    /// The connection could not be opened.
    ConnectFailed,
    /// The connection broke before response headers arrived.
    Broken,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Pass this answer on.
    Answer,
    /// Try another worker, counting `cause`; when this was the last
    /// attempt, or no other worker exists, fail with `error`.
    Retry {
        /// The `cause` label of the retries metric.
        cause: &'static str,
        /// The error if no further attempt answers.
        error: UpstreamError,
    },
}

/// Whether an outcome puts the worker on the penalty bench.
pub fn penalizes(outcome: Outcome) -> bool {
    match outcome {
        Outcome::Answered(s) => {
            s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::SERVICE_UNAVAILABLE
        }
        Outcome::ConnectFailed | Outcome::Broken => true,
    }
}

/// The retry rule. A 503 is retried only on the first attempt and when
/// another worker exists; otherwise it is the answer. A failed connection
/// is always worth another worker.
pub fn next_step(outcome: Outcome, first_attempt: bool, another_worker: bool) -> Next {
    match outcome {
        Outcome::Answered(s)
            if s == StatusCode::SERVICE_UNAVAILABLE && first_attempt && another_worker =>
        {
            Next::Retry {
                cause: "unavailable",
                error: UpstreamError::Unreachable,
            }
        }
        Outcome::Answered(_) => Next::Answer,
        Outcome::ConnectFailed => Next::Retry {
            cause: "connect",
            error: UpstreamError::Unreachable,
        },
        Outcome::Broken => Next::Retry {
            cause: "reset",
            error: UpstreamError::Broken,
        },
    }
}

/// What goes upstream: the body as received, the client's content type,
/// the request's trace context and id, and the endpoint's response format.
pub fn outgoing(
    head: &Parts,
    body: Bytes,
    facts: &Facts,
    endpoint: &Endpoint,
    deadline: Instant,
) -> Outgoing {
    Outgoing {
        body,
        content_type: head.headers.get(header::CONTENT_TYPE).cloned(),
        traceparent: facts.trace.header(),
        request_id: facts.request_id.clone(),
        response_format: endpoint.response_format,
        deadline,
    }
}

/// Calls the deployment: times the call, tells the mirror how the live call
/// went, and turns a failure into the gateway's error.
pub async fn forward(
    gw: &Gateway,
    endpoint: &Endpoint,
    deployment: &Deployment,
    out: &Outgoing,
    mirror: Option<Mirror>,
) -> Result<Answer, GatewayError> {
    let started = Instant::now();
    let penalty = Duration::from_millis(gw.config.penalty_ms);
    let result = call(
        &gw.http,
        &gw.metrics,
        &endpoint.id,
        deployment,
        out,
        penalty,
    )
    .await;
    let took = started.elapsed();
    gw.metrics
        .upstream_duration
        .with_label_values(&[&endpoint.id, &deployment.name])
        .observe(took.as_secs_f64());
    if let Some(m) = mirror {
        m.live_outcome(result.as_ref().ok().map(|a| a.response.status()), took);
    }
    result.map_err(|error| GatewayError::Upstream {
        error,
        budget: endpoint.timeout,
    })
}

/// The request for one attempt on `worker`, with the budget left at `now`.
fn request(
    client: &HttpClient,
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
        .uri(client.url(&worker.authority, "/score"))
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

/// Refused connections that do not count as the request's one retry.
pub const MAX_REFUSED: usize = 2;

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
    let mut failed: Vec<Arc<Worker>> = Vec::new();
    let mut last_err = UpstreamError::NoWorkers;
    let (mut attempt, mut refused) = (0, 0);
    while attempt < 2 {
        let Some(worker) = balance::pick(&deployment.workers, &failed) else {
            return Err(last_err);
        };
        let in_flight = worker.begin();
        let req = request(client, &worker, out, Instant::now())?;
        let (outcome, response) =
            match tokio::time::timeout_at(out.deadline, client.request(req)).await {
                Err(_) => return Err(UpstreamError::Timeout),
                Ok(Ok(r)) => (Outcome::Answered(r.status()), Some(r)),
                Ok(Err(e)) if e.is_connect() => (Outcome::ConnectFailed, None),
                Ok(Err(_)) => (Outcome::Broken, None),
            };
        if penalizes(outcome) {
            worker.penalize(penalty);
        }
        let another = deployment
            .workers
            .iter()
            .any(|w| !Arc::ptr_eq(w, &worker) && !failed.iter().any(|f| Arc::ptr_eq(w, f)));
        match (next_step(outcome, attempt == 0, another), response) {
            (Next::Answer, Some(response)) => {
                return Ok(Answer {
                    response,
                    in_flight,
                })
            }
            (Next::Retry { cause, error }, _) => {
                last_err = error;
                if attempt == 0 {
                    metrics
                        .retries
                        .with_label_values(&[endpoint, &deployment.name, cause])
                        .inc();
                }
            }
            // An answer needs a response; `next_step` gives one only then.
            (Next::Answer, None) => return Err(UpstreamError::Broken),
        }
        drop(in_flight);
        failed.push(worker);
        if outcome == Outcome::ConnectFailed && refused < MAX_REFUSED {
            refused += 1;
        } else {
            attempt += 1;
        }
    }
    Err(last_err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::HeaderValue;
    use http_body_util::BodyExt;
    use hyper::body::Incoming;

    use crate::balance::Registry;
    use crate::stages::testing;

    #[test]
    fn retry_rules() {
        use Outcome::*;
        let ok = Answered(StatusCode::OK);
        let busy = Answered(StatusCode::TOO_MANY_REQUESTS);
        let down = Answered(StatusCode::SERVICE_UNAVAILABLE);
        let bad = Answered(StatusCode::BAD_REQUEST);
        // Answers are passed on, 503 too when it is the last word.
        for (o, first, another) in [
            (ok, true, true),
            (busy, true, true),
            (bad, true, true),
            (down, false, true),
            (down, true, false),
        ] {
            assert_eq!(next_step(o, first, another), Next::Answer, "{o:?}");
        }
        // A 503 with another worker to ask, on the first attempt.
        assert_eq!(
            next_step(down, true, true),
            Next::Retry {
                cause: "unavailable",
                error: UpstreamError::Unreachable
            }
        );
        // No connection, or a broken one: always another worker.
        for (first, another) in [(true, true), (true, false), (false, true)] {
            assert_eq!(
                next_step(ConnectFailed, first, another),
                Next::Retry {
                    cause: "connect",
                    error: UpstreamError::Unreachable
                }
            );
            assert_eq!(
                next_step(Broken, first, another),
                Next::Retry {
                    cause: "reset",
                    error: UpstreamError::Broken
                }
            );
        }
    }

    #[test]
    fn penalties() {
        assert!(penalizes(Outcome::Answered(StatusCode::TOO_MANY_REQUESTS)));
        assert!(penalizes(Outcome::Answered(
            StatusCode::SERVICE_UNAVAILABLE
        )));
        assert!(penalizes(Outcome::ConnectFailed));
        assert!(penalizes(Outcome::Broken));
        assert!(!penalizes(Outcome::Answered(StatusCode::OK)));
        assert!(!penalizes(Outcome::Answered(StatusCode::BAD_REQUEST)));
        assert!(!penalizes(Outcome::Answered(
            StatusCode::INTERNAL_SERVER_ERROR
        )));
    }

    /// An in-process worker answering `status` (0: close the connection
    /// without answering), counting requests.
    async fn worker(status: u16) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let s2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let seen = s2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            seen.fetch_add(1, Ordering::SeqCst);
                            let _ = req.into_body().collect().await;
                            if status == 0 {
                                return Err("drop");
                            }
                            let mut r = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                            *r.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, &str>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    fn dead_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.1:{}", l.local_addr().unwrap().port())
    }

    struct Setup {
        http: HttpClient,
        metrics: Metrics,
        registry: Registry,
    }

    impl Setup {
        fn new() -> Self {
            Setup {
                http: crate::proxy::http_client(Duration::from_millis(500), None).unwrap(),
                metrics: Metrics::new().unwrap(),
                registry: Registry::default(),
            }
        }

        fn deployment(&self, authorities: &[String]) -> Deployment {
            Deployment {
                name: "blue".into(),
                workers: authorities
                    .iter()
                    .map(|a| self.registry.worker(a))
                    .collect(),
            }
        }

        async fn call(&self, d: &Deployment, out: &Outgoing) -> Result<Answer, UpstreamError> {
            call(
                &self.http,
                &self.metrics,
                "chest",
                d,
                out,
                Duration::from_secs(60),
            )
            .await
        }

        fn retries(&self, cause: &str) -> u64 {
            self.metrics
                .retries
                .with_label_values(&["chest", "blue", cause])
                .get()
        }
    }

    #[tokio::test]
    async fn a_503_is_retried_once_on_another_worker_and_penalised() {
        let s = Setup::new();
        let (down, down_seen) = worker(503).await;
        let (up, up_seen) = worker(200).await;
        let d = s.deployment(&[down.to_string(), up.to_string()]);
        for _ in 0..20 {
            let a = s.call(&d, &testing::outgoing()).await.unwrap();
            assert_eq!(a.response.status(), 200);
        }
        // Penalised after its first 503, then avoided.
        assert_eq!(down_seen.load(Ordering::SeqCst), 1);
        assert_eq!(up_seen.load(Ordering::SeqCst), 20);
        assert_eq!(s.retries("unavailable"), 1);
    }

    /// A deployment scaled in: two of its three workers stopped before the
    /// gateway heard of it. Refused connections delivered nothing and do
    /// not use up the retry: every request is answered by the one left.
    #[tokio::test]
    async fn workers_that_refuse_are_skipped_beyond_the_one_retry() {
        let (up, up_seen) = worker(200).await;
        for _ in 0..20 {
            // A new registry each time: no penalty remembered, so the
            // first request may meet both stopped workers.
            let s = Setup::new();
            let d = s.deployment(&[dead_port(), dead_port(), up.to_string()]);
            let a = s.call(&d, &testing::outgoing()).await.unwrap();
            assert_eq!(a.response.status(), 200);
        }
        assert_eq!(up_seen.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn a_lone_503_is_the_answer() {
        let s = Setup::new();
        let (down, seen) = worker(503).await;
        let d = s.deployment(&[down.to_string()]);
        let a = s.call(&d, &testing::outgoing()).await.unwrap();
        assert_eq!(a.response.status(), 503);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert_eq!(s.retries("unavailable"), 0);
    }

    #[tokio::test]
    async fn refused_and_broken_connections_fail_over_then_give_up() {
        let s = Setup::new();
        let (up, _) = worker(200).await;
        let d = s.deployment(&[dead_port(), up.to_string()]);
        for _ in 0..5 {
            assert_eq!(
                s.call(&d, &testing::outgoing())
                    .await
                    .unwrap()
                    .response
                    .status(),
                200
            );
        }
        assert!(s.retries("connect") <= 1);
        // Nowhere to connect.
        let d = s.deployment(&[dead_port()]);
        let e = s.call(&d, &testing::outgoing()).await.unwrap_err();
        assert_eq!(e, UpstreamError::Unreachable);
        // Two workers that break the connection: exactly two attempts.
        let (a, a_seen) = worker(0).await;
        let (b, b_seen) = worker(0).await;
        let d = s.deployment(&[a.to_string(), b.to_string()]);
        let e = s.call(&d, &testing::outgoing()).await.unwrap_err();
        assert_eq!(e, UpstreamError::Broken);
        assert_eq!(
            a_seen.load(Ordering::SeqCst) + b_seen.load(Ordering::SeqCst),
            2
        );
        assert_eq!(s.retries("reset"), 1);
    }

    #[tokio::test]
    async fn no_workers_and_a_spent_budget() {
        let s = Setup::new();
        let e = s
            .call(&s.deployment(&[]), &testing::outgoing())
            .await
            .unwrap_err();
        assert_eq!(e, UpstreamError::NoWorkers);
        let (up, seen) = worker(200).await;
        let mut late = testing::outgoing();
        late.deadline = Instant::now();
        let e = s
            .call(&s.deployment(&[up.to_string()]), &late)
            .await
            .unwrap_err();
        assert_eq!(e, UpstreamError::Timeout);
        assert_eq!(seen.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn outgoing_carries_what_the_worker_needs() {
        let e = testing::endpoint("chest", |e| {
            e.response_format = medembed_api::ResponseFormat::Documented
        });
        let req = Request::post("/score")
            .header("content-type", "application/json")
            .header("authorization", "Bearer secret-key")
            .header("x-request-id", "req-9")
            .body(())
            .unwrap();
        let (head, ()) = req.into_parts();
        let ids = crate::stages::respond::RequestIds::of(&head.headers);
        let facts = Facts::new(&e, &head.headers, &ids);
        let at = Instant::now();
        let out = outgoing(&head, Bytes::from_static(b"{}"), &facts, &e, at);
        assert_eq!(out.content_type.unwrap(), "application/json");
        assert_eq!(out.request_id, "req-9");
        assert_eq!(
            out.response_format,
            medembed_api::ResponseFormat::Documented
        );
        assert!(out
            .traceparent
            .starts_with(&format!("00-{}-", facts.trace.trace_id)));
        assert_eq!(out.deadline, at);
    }

    #[test]
    fn the_request_carries_budget_trace_id_and_format() {
        let r = Registry::default();
        let w = r.worker("10.0.0.1:8080");
        let mut out = testing::outgoing();
        out.content_type = Some(HeaderValue::from_static("application/json"));
        let now = Instant::now();
        out.deadline = now + Duration::from_millis(1500);
        let req = request(
            &crate::proxy::http_client(Duration::from_millis(500), None).unwrap(),
            &w,
            &out,
            now,
        )
        .unwrap();
        assert_eq!(req.uri(), "http://10.0.0.1:8080/score");
        let h = req.headers();
        assert_eq!(h[medembed_api::TIMEOUT_HEADER], "1500");
        assert_eq!(h[medembed_api::REQUEST_ID_HEADER], "req-1");
        assert_eq!(h[medembed_api::RESPONSE_FORMAT_HEADER], "PerRow");
        assert_eq!(h["content-type"], "application/json");
        assert!(h["traceparent"].to_str().unwrap().starts_with("00-"));
    }
}
