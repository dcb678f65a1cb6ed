//! The HTTP server: routing, body limits, admission, readiness and shutdown.
//!
//! Routes:
//! * `POST /score` – the managed endpoint's scoring API. The answer's JSON
//!   shape is the worker's `--response-format` unless the gateway's
//!   `x-medembed-response-format` header names the endpoint's.
//! * `GET /livez` (and `GET /`, which the managed inference server answers
//!   with "Healthy") – the process is up.
//! * `GET /readyz` – 200 once the model is loaded and one warm-up inference per
//!   tower has run; 503 before, and again while draining after SIGTERM so the
//!   Service stops routing here.
//! * `GET /metrics` – Prometheus text format.
//!
//! Bodies are limited twice: per request (`Content-Length` checked before
//! reading, and a streaming limit for chunked bodies; 413) and across requests
//! (a byte budget for everything buffered at once), so a burst of large
//! requests cannot exhaust memory. The budget is taken as bytes arrive, not
//! for the declared length up front, so a connection that declares 32 MB and
//! stalls holds only what it sent. When the budget has no room for the next
//! bytes, the request waits, unread, until earlier ones are answered (or its
//! deadline passes): the queue of waiting work then costs socket buffers, not
//! heap. While a body is read, the request's deadline and a minimum transfer
//! rate (averaged over the body, after a grace period; time waiting for budget
//! does not count) apply: a stalled or trickling body is refused with 408 and
//! its share of the budget freed. Bodies that each hold part of the budget
//! and all wait for more would wait for each other until their deadlines; so
//! the first to wait may take the one overdraft token and finish from a
//! reserve of one body's size (bounding what is buffered at the budget plus
//! `--max-body-bytes`). The rest of a refused body is read and
//! dropped (bounded) before the 413 goes out, so clients read the answer.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use medembed_api::serve::{PlainTcp, ServeConfig};
use medembed_api::tls::TlsHandshake;
use medembed_api::{
    ErrorCode, RequestLimits, ResponseFormat, CLIENT_REQUEST_ID_HEADER, REQUEST_ID_HEADER,
    RESPONSE_FORMAT_HEADER, TIMEOUT_HEADER,
};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::batch::Admission;
use crate::config::WorkerConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::score::Scorer;

/// Bodies above this size are parsed and serialised on a blocking thread.
const INLINE_JSON_BYTES: usize = 256 * 1024;

/// Shared state of one worker.
pub struct AppState {
    /// Configuration.
    pub config: WorkerConfig,
    /// Metrics.
    pub metrics: Metrics,
    /// Set once the model is loaded and warmed up.
    pub scorer: OnceLock<Arc<Scorer>>,
    /// Set on SIGTERM: readiness turns false while in-flight work drains.
    pub draining: AtomicBool,
    requests: Arc<Admission>,
    /// The byte budget for request bodies, in KiB permits (see the module's
    /// doc); public so that tests can fill it.
    pub body_budget: Semaphore,
    /// Held by the one body allowed to draw on [`AppState::overdraft`].
    overdraft_token: Semaphore,
    /// One body's worth (`--max-body-bytes`) beyond the budget, in KiB, for
    /// the holder of the token: see [`read_body`].
    overdraft: Semaphore,
    /// Large JSON parses and serialisations running at once on blocking
    /// threads: as many as there are cores. Unbounded, a burst of big bodies
    /// starts one thread each, and every thread's allocator arena keeps its
    /// peak (hundreds of MiB at 64 clients) for no gain in speed.
    json_work: Semaphore,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

/// Budget units are KiB so a 256 MiB budget fits a semaphore comfortably.
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl AppState {
    /// State for a configuration; the scorer is set later.
    pub fn new(config: WorkerConfig, metrics: Metrics) -> Arc<Self> {
        let requests = Admission::new(config.max_concurrent_requests, metrics.in_flight.clone());
        let body_budget = Semaphore::new(kib(config.max_buffered_bytes) as usize);
        let json_work = Semaphore::new(config.decode_threads());
        let overdraft = Semaphore::new(kib(config.max_body_bytes) as usize);
        Arc::new(Self {
            config,
            metrics,
            scorer: OnceLock::new(),
            draining: AtomicBool::new(false),
            requests,
            body_budget,
            overdraft_token: Semaphore::new(1),
            overdraft,
            json_work,
        })
    }

    /// Ready to score: the model is loaded, the batching pipeline can serve
    /// (its decode and inference threads are alive), and not draining.
    pub fn is_ready(&self) -> bool {
        self.scorer.get().is_some_and(|s| s.pipeline.healthy())
            && !self.draining.load(Ordering::Acquire)
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Routes one request. Every answer carries `x-request-id` (the caller's
/// when usable, else a new one) and echoes `x-ms-client-request-id`.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let request_id = medembed_api::request_id::accept_or_new(
        req.headers()
            .get(REQUEST_ID_HEADER)
            .map(HeaderValue::as_bytes),
    );
    let client_request_id = req.headers().get(CLIENT_REQUEST_ID_HEADER).cloned();
    let path = req.uri().path();
    let mut resp = match (req.method(), path) {
        (&Method::POST, "/score") => {
            let started = Instant::now();
            let resp = match score(&state, req, &request_id).await {
                Ok(r) => r,
                Err(e) => e.into_response(),
            };
            state
                .metrics
                .requests
                .with_label_values(&[resp.status().as_str()])
                .inc();
            state
                .metrics
                .request_duration
                .observe(started.elapsed().as_secs_f64());
            resp
        }
        (_, "/score") => ApiError::MethodNotAllowed("POST").into_response(),
        (&Method::GET, "/livez") | (&Method::GET, "/") => text(StatusCode::OK, "Healthy"),
        (&Method::GET, "/readyz") => {
            if state.is_ready() {
                text(StatusCode::OK, "ready")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(state.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (_, "/livez" | "/readyz" | "/metrics") => ApiError::MethodNotAllowed("GET").into_response(),
        _ => ApiError::NotFound.into_response(),
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(REQUEST_ID_HEADER, v);
    }
    if let Some(v) = client_request_id {
        h.insert(CLIENT_REQUEST_ID_HEADER, v);
    }
    Ok(resp)
}

async fn score(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let received = Instant::now();
    let scorer = match state.scorer.get() {
        Some(s) if !state.draining.load(Ordering::Acquire) => s.clone(),
        Some(_) => return Err(ApiError::Unavailable("worker is shutting down")),
        None => return Err(ApiError::Unavailable("model is loading; not ready")),
    };
    let cfg = &state.config;

    // Deadline: the gateway passes the budget left; else the configured timeout.
    let budget_ms = req
        .headers()
        .get(TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .unwrap_or(cfg.request_timeout_ms);
    let deadline = received + Duration::from_millis(budget_ms);

    // The answer's shape: the endpoint's, as the gateway says, else ours.
    let format = match req.headers().get(RESPONSE_FORMAT_HEADER) {
        None => cfg.response_format,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<ResponseFormat>().ok())
            .ok_or_else(|| ApiError::Invalid {
                code: ErrorCode::InvalidRequest,
                message: format!("header {RESPONSE_FORMAT_HEADER} must be PerRow or Documented"),
            })?,
    };

    // A declared oversized body is refused before it costs a permit.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if declared.is_some_and(|len| len > cfg.max_body_bytes) {
        if !expects_continue {
            discard(req.into_body()).await;
        }
        return Err(ApiError::TooLarge {
            limit: cfg.max_body_bytes,
        });
    }

    let _request_permit = state
        .requests
        .try_acquire(1)
        .ok_or(ApiError::Overloaded("too many concurrent requests"))?;
    state
        .metrics
        .utilization
        .set((state.requests.used() * 100 / state.requests.capacity().max(1)) as i64);

    // The body is read as it arrives, each part taking its share of the byte
    // budget first (see the module's doc). The permit is held until the
    // answer, because the parsed images live until then.
    let pace = Pace {
        deadline,
        budget_ms,
        min_rate: cfg.min_body_rate,
        grace: Duration::from_millis(cfg.body_rate_grace_ms),
    };
    let (body, _body_permits) = read_body(state, req.into_body(), cfg.max_body_bytes, pace).await?;

    let limits = RequestLimits {
        max_rows: cfg.max_rows,
    };
    let parsed = if body.len() > INLINE_JSON_BYTES {
        let _cpu = state
            .json_work
            .acquire()
            .await
            .map_err(|_| ApiError::Internal)?;
        tokio::task::spawn_blocking(move || medembed_api::parse_request(&body, &limits))
            .await
            .map_err(|_| ApiError::Internal)?
    } else {
        medembed_api::parse_request(&body, &limits)
    }?;
    let (rows, images, texts) = (parsed.rows.len(), parsed.image_count(), parsed.text_count());

    let answer = scorer.score(parsed, deadline, budget_ms).await?;
    let bytes = if images + texts > 64 {
        let _cpu = state
            .json_work
            .acquire()
            .await
            .map_err(|_| ApiError::Internal)?;
        tokio::task::spawn_blocking(move || answer.to_json(format))
            .await
            .map_err(|_| ApiError::Internal)?
    } else {
        answer.to_json(format)
    }
    .map_err(|_| ApiError::Internal)?;
    tracing::debug!(
        request_id,
        format = format.as_str(),
        rows,
        images,
        texts,
        elapsed_ms = received.elapsed().as_millis() as u64,
        "scored"
    );
    Ok(json(StatusCode::OK, bytes))
}

/// Most bytes read and thrown away after refusing an oversized body.
const DISCARD_BYTES: usize = 256 * 1024 * 1024;
/// Longest time spent doing so.
const DISCARD_TIME: Duration = Duration::from_secs(10);

/// The time rules of reading one body.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// The request's deadline.
    deadline: Instant,
    /// Its budget, for the 408's message.
    budget_ms: u64,
    /// Slowest average rate in bytes per second once `grace` has passed
    /// (0 = none).
    min_rate: u64,
    /// Time before the rate applies.
    grace: Duration,
}

impl Pace {
    /// When a body that started (not counting budget waits) at `start` and
    /// has sent `received` bytes falls below the minimum rate, if ever.
    fn too_slow_at(&self, start: Instant, received: usize) -> Option<Instant> {
        (self.min_rate > 0).then(|| {
            let earned = Duration::from_secs_f64(received as f64 / self.min_rate as f64);
            start + self.grace.max(earned)
        })
    }
}

/// The budget a body holds until its request is answered.
#[derive(Debug, Default)]
struct BodyPermits<'a> {
    /// From the body budget.
    budget: Option<SemaphorePermit<'a>>,
    /// The overdraft token, once this body has taken it.
    token: Option<SemaphorePermit<'a>>,
    /// Drawn on the overdraft.
    overdraft: Option<SemaphorePermit<'a>>,
}

impl BodyPermits<'_> {
    /// KiB held.
    fn kib(&self) -> usize {
        self.budget.as_ref().map_or(0, |p| p.num_permits())
            + self.overdraft.as_ref().map_or(0, |p| p.num_permits())
    }
}

/// Adds `p` to what `slot` holds.
fn merge<'a>(slot: &mut Option<SemaphorePermit<'a>>, p: SemaphorePermit<'a>) {
    match slot.as_mut() {
        Some(h) => h.merge(p),
        None => *slot = Some(p),
    }
}

/// Takes `more` KiB for a body holding `held`: from the budget, waiting
/// (until the deadline) for room or, if the body already holds part of the
/// budget, for the overdraft token, whichever comes first. With the token,
/// from the overdraft, which holds one whole body, so its holder never waits
/// and finishes: bodies holding parts of a full budget cannot wait for each
/// other until their deadlines. (A body that holds nothing waits for room
/// only: it keeps nobody waiting.)
async fn take_budget<'a>(
    state: &'a AppState,
    held: &mut BodyPermits<'a>,
    more: u32,
    pace: &Pace,
) -> Result<(), ApiError> {
    let timeout = |_| ApiError::BodyTimeout(pace.budget_ms);
    let closed = |_| ApiError::Internal;
    if held.token.is_none() {
        if let Ok(p) = state.body_budget.try_acquire_many(more) {
            merge(&mut held.budget, p);
            return Ok(());
        }
        let may_overdraw = held.budget.is_some();
        let wait = async {
            tokio::select! {
                biased;
                p = state.body_budget.acquire_many(more) => p.map(Ok),
                t = state.overdraft_token.acquire(), if may_overdraw => t.map(Err),
            }
        };
        match tokio::time::timeout_at(pace.deadline.into(), wait)
            .await
            .map_err(timeout)?
            .map_err(closed)?
        {
            Ok(p) => {
                merge(&mut held.budget, p);
                return Ok(());
            }
            Err(token) => held.token = Some(token),
        }
    }
    let p = tokio::time::timeout_at(pace.deadline.into(), state.overdraft.acquire_many(more))
        .await
        .map_err(timeout)?
        .map_err(closed)?;
    merge(&mut held.overdraft, p);
    Ok(())
}

/// Reads the body up to `limit` bytes, taking the byte budget for every KiB
/// before it is kept (waiting, unread, for room: see the module's doc), and
/// refusing a body that misses the deadline or the minimum rate (408). Past
/// the limit, the rest is discarded (bounded) before answering 413, so a
/// client still sending reads the answer instead of a reset connection
/// (nginx's "lingering close"). Returns the body and its budget permits; on
/// failure, the budget taken is released.
async fn read_body<'a>(
    state: &'a AppState,
    mut body: Incoming,
    limit: usize,
    pace: Pace,
) -> Result<(Bytes, BodyPermits<'a>), ApiError> {
    let mut buf = Vec::new();
    let mut held = BodyPermits::default();
    // The body's start, moved later by the time spent waiting for budget
    // (the client is not to blame for that).
    let mut start = Instant::now();
    loop {
        let slow_at = pace.too_slow_at(start, buf.len());
        let until = slow_at.map_or(pace.deadline, |t| t.min(pace.deadline));
        let frame = match tokio::time::timeout_at(until.into(), body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) if until < pace.deadline => {
                return Err(ApiError::SlowBody {
                    min_rate: pace.min_rate,
                })
            }
            Err(_) => return Err(ApiError::BodyTimeout(pace.budget_ms)),
        };
        let Ok(frame) = frame else {
            return Err(ApiError::Invalid {
                code: ErrorCode::InvalidBody,
                message: "request body could not be read".into(),
            });
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = buf.len() + data.len();
        if len > limit {
            drop((buf, held));
            discard(body).await;
            return Err(ApiError::TooLarge { limit });
        }
        let more = (kib(len) as usize).saturating_sub(held.kib());
        if more > 0 {
            let more = u32::try_from(more).unwrap_or(u32::MAX);
            let waited = Instant::now();
            let free = state.body_budget.available_permits();
            take_budget(state, &mut held, more, &pace).await?;
            if free < more as usize {
                state
                    .metrics
                    .body_wait
                    .observe(waited.elapsed().as_secs_f64());
                start += waited.elapsed();
            }
        }
        buf.extend_from_slice(&data);
    }
    Ok((Bytes::from(buf), held))
}

/// Reads and drops what is left of a refused body, within
/// [`DISCARD_BYTES`] and [`DISCARD_TIME`]; memory stays flat.
async fn discard(mut body: Incoming) {
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen > DISCARD_BYTES {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
}

/// Accepts connections until `shutdown` resolves (through the shared accept
/// loop, `medembed_api::serve`), then turns not ready (`/readyz` 503, so the
/// Service stops routing here), stops accepting, and lets in-flight requests
/// finish within `grace`.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    tls: Option<TlsHandshake>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    let config = ServeConfig {
        shutdown_grace: grace,
        ..ServeConfig::default()
    };
    let draining = state.clone();
    let shutdown = async move {
        shutdown.await;
        draining.draining.store(true, Ordering::Release);
        draining.metrics.ready.set(0);
        tracing::info!("shutting down: finishing accepted requests");
    };
    let svc = service_fn(move |req| handle(state.clone(), req));
    match tls {
        Some(tls) => medembed_api::serve::serve(listener, config, tls, svc, shutdown).await,
        None => medembed_api::serve::serve(listener, config, PlainTcp, svc, shutdown).await,
    }
    tracing::info!("connections closed");
}
