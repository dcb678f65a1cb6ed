//! The HTTP side: accepting connections (plain or TLS), and one request's
//! path through the gateway:
//!
//! 1. route by host name or path prefix (404);
//! 2. authenticate and authorise ([`crate::auth`]; 401/403);
//! 3. take a concurrency slot, read the body up to the limit while it
//!    streams in (413), count its rows and images (400 when invalid), and
//!    check the per-minute quotas ([`crate::quota`]; 429);
//! 4. choose the deployment (pin header, else the traffic weights), maybe
//!    mirror a copy in the background, and call a worker
//!    ([`crate::proxy`]);
//! 5. stream the worker's answer back; count it and write the audit line.
//!
//! Errors answer in the API's JSON shape (`medembed_api::ErrorBody`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rand::Rng;
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;

use medembed_api::ErrorCode;

use crate::audit::{rfc3339, AuditLog, AuditRecord};
use crate::auth::{self, AuthError, JwksCache, Principal};
use crate::balance::Registry;
use crate::metrics::Metrics;
use crate::proxy::{self, Guarded, HttpClient, Outgoing, UpstreamError};
use crate::quota::{Concurrency, Cost, Decision, Rates, Store};
use crate::table::{Endpoint, Tables};
use crate::trace::TraceContext;
use crate::GatewayConfig;

/// The response body type.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Shared state of one gateway.
pub struct Gateway {
    /// Configuration.
    pub config: GatewayConfig,
    /// The routing table.
    pub tables: Arc<Tables>,
    /// Known workers.
    pub registry: Arc<Registry>,
    /// Upstream client.
    pub http: HttpClient,
    /// Metrics.
    pub metrics: Metrics,
    /// Audit log.
    pub audit: AuditLog,
    /// Token key sets.
    pub jwks: JwksCache,
    /// Per-minute quota state.
    pub quota: Store,
    /// Concurrency quota state.
    pub concurrency: Concurrency,
    /// Bounds mirrored requests in flight.
    pub mirror_slots: Arc<Semaphore>,
    /// Set once shutdown begins (`/readyz` turns 503).
    pub draining: AtomicBool,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON error response.
pub fn error(code: ErrorCode, message: &str) -> Response<Body> {
    let body = medembed_api::ErrorBody::new(code, message).to_json();
    let mut r = Response::new(full(body));
    *r.status_mut() = status_of(code);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The HTTP status of an error code.
fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A refusal by the gateway: status, code, message and the metric reason.
struct Refusal {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    reason: &'static str,
    headers: Vec<(&'static str, String)>,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            status: status_of(code),
            code,
            message: message.into(),
            reason: code.as_str(),
            headers: Vec::new(),
        }
    }

    fn response(&self) -> Response<Body> {
        let mut r = error(self.code, &self.message);
        for (k, v) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(v) {
                r.headers_mut().insert(*k, v);
            }
        }
        r
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::Forbidden => ErrorCode::Forbidden,
            _ => ErrorCode::Unauthorized,
        };
        let mut r = Refusal::new(code, e.to_string());
        r.reason = e.reason();
        if code == ErrorCode::Unauthorized {
            r.headers.push(("www-authenticate", "Bearer".into()));
        }
        r
    }
}

/// What the audit line and metrics need to know about a request.
struct Facts {
    arrived: Instant,
    time: SystemTime,
    trace: TraceContext,
    request_id: HeaderValue,
    endpoint: String,
    client: String,
    deployment: String,
    rows: usize,
    images: usize,
    bytes: u64,
}

/// Reads a body up to `limit` bytes as it streams in.
async fn read_limited(mut body: Incoming, limit: u64, hint: usize) -> Result<Bytes, Refusal> {
    let mut buf = BytesMut::with_capacity(hint.min(limit as usize).min(16 << 20));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            Refusal::new(
                ErrorCode::InvalidRequest,
                "the request body could not be read",
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() as u64 + data.len() as u64 > limit {
                return Err(too_large(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn too_large(limit: u64) -> Refusal {
    let mut r = Refusal::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body exceeds {limit} bytes"),
    );
    r.reason = "max_body";
    r
}

fn choose_deployment<'a>(endpoint: &'a Endpoint, pinned: Option<&str>) -> Result<&'a str, Refusal> {
    if let Some(name) = pinned {
        return endpoint
            .deployments
            .get_key_value(name)
            .map(|(k, _)| k.as_str())
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::DeploymentNotFound,
                    "the deployment named in azureml-model-deployment does not exist on this endpoint",
                )
            });
    }
    let total: u32 = endpoint.traffic.iter().map(|(_, w)| *w).sum();
    if total == 0 {
        // No split: the only deployment taking live traffic, if there is one.
        let live: Vec<&String> = endpoint
            .deployments
            .keys()
            .filter(|d| endpoint.mirror.as_ref().is_none_or(|(m, _)| m != *d))
            .collect();
        return match live.as_slice() {
            [one] => Ok(one.as_str()),
            _ => Err(Refusal::new(
                ErrorCode::NoTraffic,
                "this endpoint routes no traffic to any deployment",
            )),
        };
    }
    let mut x = rand::rng().random_range(0..total);
    for (d, w) in &endpoint.traffic {
        if x < *w {
            return Ok(d.as_str());
        }
        x -= w;
    }
    Ok(endpoint.traffic[0].0.as_str())
}

impl Gateway {
    /// Answers one request. Every answer, success or error, carries
    /// `x-request-id` (the client's own when usable, else a new UUID; the
    /// worker and the audit line get the same) and echoes
    /// `x-ms-client-request-id` when sent.
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let id = medembed_api::request_id::accept_or_new(
            req.headers()
                .get(medembed_api::REQUEST_ID_HEADER)
                .map(HeaderValue::as_bytes),
        );
        // Only ASCII letters, digits and `._:-`: always a valid header value.
        let request_id =
            HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("-"));
        let client_request_id = req
            .headers()
            .get(medembed_api::CLIENT_REQUEST_ID_HEADER)
            .cloned();
        let mut resp = self.route(req, &request_id).await;
        let h = resp.headers_mut();
        h.insert(medembed_api::REQUEST_ID_HEADER, request_id);
        if let Some(v) = client_request_id {
            h.insert(medembed_api::CLIENT_REQUEST_ID_HEADER, v);
        }
        resp
    }

    async fn route(
        self: &Arc<Self>,
        req: Request<Incoming>,
        request_id: &HeaderValue,
    ) -> Response<Body> {
        let path = req.uri().path();
        if req.method() == Method::GET {
            match path {
                "/livez" => return text(StatusCode::OK, "ok"),
                "/readyz" => {
                    return if self.draining.load(Ordering::Acquire) {
                        text(StatusCode::SERVICE_UNAVAILABLE, "draining")
                    } else {
                        text(StatusCode::OK, "ok")
                    };
                }
                "/metrics" => return self.metrics_response(),
                _ => {}
            }
        }
        let table = self.tables.get();
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host());
        let Some(endpoint) = table.route(host, path).cloned() else {
            return error(ErrorCode::NotFound, "no endpoint serves this host and path");
        };
        let mut facts = Facts {
            arrived: Instant::now(),
            time: SystemTime::now(),
            trace: TraceContext::from_header(
                req.headers()
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok()),
            ),
            request_id: request_id.clone(),
            endpoint: endpoint.id.clone(),
            client: "-".into(),
            deployment: "-".into(),
            rows: 0,
            images: 0,
            bytes: 0,
        };
        let in_flight = self.metrics.in_flight.with_label_values(&[&endpoint.id]);
        in_flight.inc();
        struct Dec(prometheus::IntGauge);
        impl Drop for Dec {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        let gauge = Dec(in_flight);
        match self
            .admit_and_forward(&table, &endpoint, req, &mut facts, gauge)
            .await
        {
            Ok(resp) => {
                self.finish(&facts, resp.status(), None);
                resp
            }
            Err(refusal) => {
                self.metrics
                    .rejections
                    .with_label_values(&[&facts.endpoint, &facts.client, refusal.reason, "true"])
                    .inc();
                self.finish(&facts, refusal.status, Some(refusal.reason));
                let mut resp = refusal.response();
                if facts.deployment != "-" {
                    if let Ok(v) = HeaderValue::from_str(&facts.deployment) {
                        resp.headers_mut()
                            .insert(medembed_api::DEPLOYMENT_HEADER, v);
                    }
                }
                resp
            }
        }
    }

    fn finish(&self, f: &Facts, status: StatusCode, reason: Option<&'static str>) {
        let elapsed = f.arrived.elapsed();
        self.metrics
            .requests
            .with_label_values(&[&f.endpoint, &f.deployment, &f.client, status.as_str()])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[&f.endpoint, &f.deployment])
            .observe(elapsed.as_secs_f64());
        self.audit.record(AuditRecord {
            time: rfc3339(f.time),
            client: f.client.clone(),
            endpoint: f.endpoint.clone(),
            deployment: f.deployment.clone(),
            status: status.as_u16(),
            rows: f.rows,
            images: f.images,
            bytes: f.bytes,
            latency_ms: (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            trace_id: f.trace.trace_id.clone(),
            request_id: f.request_id.to_str().unwrap_or("-").to_string(),
            reason,
        });
    }

    fn dry_run_note(&self, f: &Facts, reason: &'static str) {
        self.metrics
            .rejections
            .with_label_values(&[&f.endpoint, &f.client, reason, "false"])
            .inc();
    }

    async fn admit_and_forward(
        self: &Arc<Self>,
        table: &crate::table::Table,
        endpoint: &Arc<Endpoint>,
        req: Request<Incoming>,
        facts: &mut Facts,
        gauge: impl Send + Sync + 'static,
    ) -> Result<Response<Body>, Refusal> {
        if req.method() != Method::POST {
            let mut r = Refusal::new(ErrorCode::MethodNotAllowed, "use POST");
            r.headers.push(("allow", "POST".into()));
            return Err(r);
        }
        let principal: Principal = auth::authenticate(
            table,
            endpoint,
            req.headers().get(header::AUTHORIZATION),
            &self.jwks,
        )
        .await?;
        facts.client = principal.id().to_string();
        let quota = principal
            .client
            .as_ref()
            .and_then(|c| c.quota.clone())
            .or_else(|| endpoint.default_quota.clone())
            .unwrap_or_default();
        let dry_run =
            self.config.quota_dry_run || principal.client.as_ref().is_some_and(|c| c.dry_run);
        // Quota state key: the client, or the endpoint's anonymous callers.
        let key = match &principal.client {
            Some(c) if c.quota.is_some() => c.id.clone(),
            Some(c) => format!("{}@{}", c.id, endpoint.id),
            None => format!("anonymous@{}", endpoint.id),
        };

        // Concurrency (per replica).
        let replicas = self.config.replicas.max(1);
        let conc_limit = quota
            .concurrent_requests
            .map(|c| c.div_ceil(replicas).max(1));
        let slot = match self.concurrency.acquire(&key, conc_limit, dry_run) {
            Ok(s) => s,
            Err(s) if dry_run => {
                self.dry_run_note(facts, "concurrency");
                s
            }
            Err(_) => {
                let mut r = Refusal::new(
                    ErrorCode::TooManyRequests,
                    "too many concurrent requests for this client",
                );
                r.reason = "concurrency";
                r.headers.push(("retry-after", "1".into()));
                if let Some(c) = conc_limit {
                    r.headers
                        .push(("ratelimit-policy", format!("\"concurrency\";q={c}")));
                    r.headers
                        .push(("ratelimit", "\"concurrency\";r=0;t=1".into()));
                }
                return Err(r);
            }
        };

        // Body: declared size first, then while it streams in.
        let limit = quota
            .max_body_bytes
            .map_or(endpoint.max_body_bytes, |q| q.min(endpoint.max_body_bytes));
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large(limit));
        }
        let pinned = req
            .headers()
            .get(medembed_api::DEPLOYMENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let deadline = facts.arrived + endpoint.timeout;
        let body = match tokio::time::timeout_at(
            deadline,
            read_limited(req.into_body(), limit, declared.unwrap_or(0) as usize),
        )
        .await
        {
            Ok(b) => b?,
            Err(_) => {
                return Err(Refusal::new(
                    ErrorCode::Timeout,
                    "the request body did not arrive in time",
                ))
            }
        };
        facts.bytes = body.len() as u64;

        // Rows and images.
        let max_rows = quota
            .max_rows_per_request
            .map_or(endpoint.max_rows, |q| q.min(endpoint.max_rows))
            as usize;
        let limits = medembed_api::RequestLimits { max_rows };
        let parsed = if body.len() > 256 * 1024 {
            let b = body.clone();
            tokio::task::spawn_blocking(move || {
                medembed_api::parse_request(&b, &limits).map(|r| (r.rows.len(), r.image_count()))
            })
            .await
            .map_err(|_| Refusal::new(ErrorCode::Internal, "internal error"))?
        } else {
            medembed_api::parse_request(&body, &limits).map(|r| (r.rows.len(), r.image_count()))
        };
        let (rows, images) = parsed.map_err(|e| {
            let mut r = Refusal::new(e.code(), e.to_string());
            r.reason = if e.code() == ErrorCode::TooManyRows {
                "max_rows"
            } else {
                "invalid_request"
            };
            r
        })?;
        facts.rows = rows;
        facts.images = images;

        // Per-minute quotas.
        let rates = Rates::from_quota(
            &quota,
            if matches!(self.quota, Store::Redis(_)) {
                1
            } else {
                replicas
            },
        );
        let cost = Cost::new(images as u64, body.len() as u64);
        let decision: Decision = match &self.quota {
            Store::Local(s) => s.check(&key, &rates, &cost),
            Store::Redis(s) => match s.check(&key, &rates, &cost).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "quota store unavailable; admitting");
                    self.dry_run_note(facts, "quota_store_error");
                    Decision {
                        allowed: true,
                        refused_by: None,
                        retry_after: Duration::ZERO,
                        policies: Vec::new(),
                    }
                }
            },
        };
        if !decision.allowed {
            let reason = match decision.refused_by {
                Some(crate::quota::Dimension::Images) => "images_per_minute",
                Some(crate::quota::Dimension::Bytes) => "bytes_per_minute",
                _ => "requests_per_minute",
            };
            if dry_run {
                self.dry_run_note(facts, reason);
            } else {
                let mut r = Refusal::new(
                    ErrorCode::TooManyRequests,
                    format!("quota exceeded ({reason})"),
                );
                r.reason = reason;
                r.headers = decision.headers();
                return Err(r);
            }
        }
        self.metrics
            .images
            .with_label_values(&[&facts.endpoint, &facts.client])
            .inc_by(images as u64);
        self.metrics
            .request_bytes
            .with_label_values(&[&facts.endpoint, &facts.client])
            .inc_by(body.len() as u64);

        // Deployment, mirror, upstream.
        let dep_name = choose_deployment(endpoint, pinned.as_deref())?.to_string();
        facts.deployment = dep_name.clone();
        let deployment = endpoint
            .deployments
            .get(&dep_name)
            .cloned()
            .ok_or_else(|| Refusal::new(ErrorCode::NoWorkers, "no such deployment"))?;
        let out = Outgoing {
            body,
            content_type,
            traceparent: facts.trace.header(),
            request_id: facts.request_id.clone(),
            response_format: endpoint.response_format,
            deadline,
        };
        let live_tx = if pinned.is_none() {
            self.maybe_mirror(endpoint, &out)
        } else {
            None
        };
        let started = Instant::now();
        let penalty = Duration::from_millis(self.config.penalty_ms);
        let result = proxy::call(
            &self.http,
            &self.metrics,
            &endpoint.id,
            &deployment,
            &out,
            penalty,
        )
        .await;
        let upstream = started.elapsed();
        self.metrics
            .upstream_duration
            .with_label_values(&[&endpoint.id, &dep_name])
            .observe(upstream.as_secs_f64());
        let answer = match result {
            Ok(a) => a,
            Err(e) => {
                if let Some(tx) = live_tx {
                    let _ = tx.send((None, upstream));
                }
                let mut r = Refusal::new(e.code(), e.to_string());
                if e == UpstreamError::Timeout {
                    r.message = format!(
                        "the request did not complete within {} ms",
                        endpoint.timeout.as_millis()
                    );
                }
                return Err(r);
            }
        };
        if let Some(tx) = live_tx {
            let _ = tx.send((Some(answer.response.status()), upstream));
        }
        let (parts, incoming) = answer.response.into_parts();
        let mut resp = Response::from_parts(parts, ());
        strip_hop_by_hop(resp.headers_mut());
        if let Ok(v) = HeaderValue::from_str(&dep_name) {
            resp.headers_mut()
                .insert(medembed_api::DEPLOYMENT_HEADER, v);
        }
        let guards: Box<dyn Send + Sync> = Box::new((answer.in_flight, slot, gauge));
        Ok(resp.map(|_| Guarded::new(incoming, guards).boxed_unsync()))
    }

    /// Starts a mirrored copy of `out` when the endpoint mirrors and the dice
    /// say so; returns the channel on which the live outcome is to be sent.
    fn maybe_mirror(
        self: &Arc<Self>,
        endpoint: &Arc<Endpoint>,
        out: &Outgoing,
    ) -> Option<oneshot::Sender<(Option<StatusCode>, Duration)>> {
        let (shadow_name, pct) = endpoint.mirror.as_ref()?;
        if *pct == 0 || rand::rng().random_range(0..100) >= *pct {
            return None;
        }
        let shadow = endpoint.deployments.get(shadow_name)?.clone();
        let Ok(permit) = self.mirror_slots.clone().try_acquire_owned() else {
            self.metrics
                .mirror
                .with_label_values(&[&endpoint.id, shadow_name, "-", "skipped"])
                .inc();
            return None;
        };
        let (tx, rx) = oneshot::channel::<(Option<StatusCode>, Duration)>();
        let me = self.clone();
        let endpoint = endpoint.clone();
        let mut copy = out.clone();
        // The shadow gets the same budget, counted from now.
        copy.deadline = Instant::now() + endpoint.timeout;
        copy.traceparent = TraceContext::from_header(Some(&out.traceparent)).header();
        tokio::spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            let penalty = Duration::from_millis(me.config.penalty_ms);
            let result =
                proxy::call(&me.http, &me.metrics, &endpoint.id, &shadow, &copy, penalty).await;
            let shadow_status = match result {
                Ok(a) => {
                    let status = a.response.status();
                    // Read and discard the answer (keeps the connection reusable).
                    let _ =
                        tokio::time::timeout_at(copy.deadline, a.response.into_body().collect())
                            .await;
                    status.as_str().to_string()
                }
                Err(_) => "error".to_string(),
            };
            let shadow_time = started.elapsed();
            let (live_status, live_time) = match rx.await {
                Ok((Some(s), t)) => (s.as_str().to_string(), Some(t)),
                Ok((None, t)) => ("error".to_string(), Some(t)),
                Err(_) => ("cancelled".to_string(), None),
            };
            let m = &me.metrics;
            m.mirror
                .with_label_values(&[&endpoint.id, &shadow.name, &live_status, &shadow_status])
                .inc();
            m.mirror_duration
                .with_label_values(&[&endpoint.id, &shadow.name, "shadow"])
                .observe(shadow_time.as_secs_f64());
            if let Some(t) = live_time {
                m.mirror_duration
                    .with_label_values(&[&endpoint.id, &shadow.name, "live"])
                    .observe(t.as_secs_f64());
            }
        });
        Some(tx)
    }

    fn metrics_response(&self) -> Response<Body> {
        self.metrics.workers.set(self.registry.all().len() as i64);
        let mut r = Response::new(full(self.metrics.render()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        r
    }
}

fn text(status: StatusCode, s: &'static str) -> Response<Body> {
    let mut r = Response::new(full(s));
    *r.status_mut() = status;
    r
}

fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(name);
    }
    h.remove("keep-alive");
}

/// Serves connections from `listener` until `shutdown` resolves, then lets
/// in-flight requests finish for up to `grace`.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let gw2 = gw.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let gw = gw2.clone();
            async move { Ok::<_, Infallible>(gw.handle(req).await) }
        });
        let builder = builder.clone();
        match &tls {
            None => {
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    let conn = builder
                        .serve_connection(TokioIo::new(tls), service)
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                });
            }
        }
    }
    gw.draining.store(true, Ordering::Release);
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace ran out with requests still in flight");
    }
}
