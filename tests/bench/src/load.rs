//! A closed-loop HTTP load generator: `concurrency` clients, each sending the
//! next request as soon as the previous one is answered, for a warm-up and
//! then a measured window.
//!
//! Closed loop is how an embedding pipeline drives a scoring endpoint (a fixed
//! pool of client threads). Only requests that start after the warm-up and
//! finish inside the window count; every answer is checked (status 200 and the
//! right number of embeddings of the right size), so a server that answers
//! fast but wrong shows up as errors, not as speed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use medembed_api::{RowResponse, ScoreResponse};

/// The HTTP client every load run uses: keep-alive connections, pooled (a
/// server that closes them after each answer gets a new one per request).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the pooled client.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector)
}

/// What one run sends.
#[derive(Clone)]
pub struct LoadSpec {
    /// Scoring URL.
    pub url: Uri,
    /// Request bodies, sent round-robin.
    pub bodies: Vec<Bytes>,
    /// Images per request (for images/s).
    pub images_per_request: usize,
    /// Texts per request (checked in the answer).
    pub texts_per_request: usize,
    /// Embedding size (checked in the answer).
    pub dim: usize,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Time before the window opens (answers then are not counted).
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// Longest one request may take before it counts as an error.
    pub timeout: Duration,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Requests answered correctly inside the window.
    pub ok: usize,
    /// Images embedded by those requests.
    pub images: usize,
    /// Images embedded by every correct answer of the run, warm-up included
    /// (what the server's CPU time over the whole run paid for).
    pub images_all_run: usize,
    /// Length of the window in seconds.
    pub window_s: f64,
    /// Latencies of the counted requests, sorted, in seconds.
    pub latencies: Vec<f64>,
    /// Failed requests inside the window, by kind.
    pub errors: BTreeMap<String, usize>,
}

impl LoadResult {
    /// Images per second over the window.
    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.window_s
    }

    /// Latency quantile in milliseconds (nearest rank), NaN when nothing counted.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile(&self.latencies, q) * 1e3
    }

    /// Total failed requests in the window.
    pub fn error_count(&self) -> usize {
        self.errors.values().sum()
    }

    /// One line for the progress log: throughput, p50, p99 and errors.
    pub fn summary(&self) -> String {
        format!(
            "{:.1} images/s, p50 {:.1} ms, p99 {:.1} ms, {} errors",
            self.images_per_s(),
            self.quantile_ms(0.5),
            self.quantile_ms(0.99),
            self.error_count()
        )
    }
}

/// Nearest-rank quantile of sorted values; NaN when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Checks one answer body, in the live shape (a list with one object per
/// row): the right count of embeddings, each of `dim` finite floats.
pub fn check_answer(body: &[u8], images: usize, texts: usize, dim: usize) -> Result<(), String> {
    let rows: Vec<RowResponse> =
        serde_json::from_slice(body).map_err(|_| "bad json".to_string())?;
    let a = ScoreResponse::from_rows(rows);
    let ok = |v: &Option<Vec<Vec<f32>>>, n: usize| match v {
        None => n == 0,
        Some(rows) => {
            rows.len() == n
                && rows
                    .iter()
                    .all(|r| r.len() == dim && r.iter().all(|x| x.is_finite()))
        }
    };
    if !ok(&a.image_features, images) {
        return Err("wrong image_features".into());
    }
    if !ok(&a.text_features, texts) {
        return Err("wrong text_features".into());
    }
    Ok(())
}

/// Sends one scoring request and returns the answer body, or an error kind
/// (any status but 200 is one).
pub async fn post(
    client: &HttpClient,
    url: &Uri,
    body: Bytes,
    timeout: Duration,
) -> Result<Bytes, String> {
    match send(client, url, body, &[], timeout).await? {
        (StatusCode::OK, bytes) => Ok(bytes),
        (status, _) => Err(format!("status {}", status.as_u16())),
    }
}

/// Sends one scoring request with extra headers and returns the status and
/// the answer body, whatever the status; an error kind when no answer came.
pub async fn send(
    client: &HttpClient,
    url: &Uri,
    body: Bytes,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let mut req = Request::post(url.clone()).header(http::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let fut = async {
        let resp = client
            .request(req)
            .await
            .map_err(|_| "connection".to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|_| "body".to_string())?
            .to_bytes();
        Ok((status, bytes))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err("timeout".into()),
    }
}

/// Runs the load and returns what the window measured.
pub async fn run(client: &HttpClient, spec: &LoadSpec) -> LoadResult {
    let start = Instant::now();
    let open = start + spec.warmup;
    let close = open + spec.duration;
    let mut tasks = Vec::with_capacity(spec.concurrency);
    for id in 0..spec.concurrency {
        let client = client.clone();
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut answered = 0usize;
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            let mut k = id;
            while Instant::now() < close {
                let body = spec.bodies[k % spec.bodies.len()].clone();
                k += spec.concurrency;
                let t0 = Instant::now();
                let r = post(&client, &spec.url, body, spec.timeout).await;
                let t1 = Instant::now();
                let r = r.and_then(|b| {
                    check_answer(
                        &b,
                        spec.images_per_request,
                        spec.texts_per_request,
                        spec.dim,
                    )
                });
                let counted = t0 >= open && t1 <= close;
                if r.is_ok() {
                    answered += 1;
                }
                match r {
                    Ok(()) if counted => latencies.push((t1 - t0).as_secs_f64()),
                    Ok(()) => {}
                    Err(kind) => {
                        if counted {
                            *errors.entry(kind).or_default() += 1;
                        }
                        // Do not spin on a server that refuses instantly.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (latencies, answered, errors)
        }));
    }
    let mut result = LoadResult {
        window_s: spec.duration.as_secs_f64(),
        ..LoadResult::default()
    };
    for t in tasks {
        match t.await {
            Ok((lat, answered, errs)) => {
                result.latencies.extend(lat);
                result.images_all_run += answered * spec.images_per_request;
                for (k, v) in errs {
                    *result.errors.entry(k).or_default() += v;
                }
            }
            Err(_) => *result.errors.entry("client task".into()).or_default() += 1,
        }
    }
    result.latencies.sort_by(f64::total_cmp);
    result.ok = result.latencies.len();
    result.images = result.ok * spec.images_per_request;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v[..1], 0.99), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn answers_are_checked() {
        let good =
            serde_json::json!([{"image_features": [[0.5, 0.5, 0.5, 0.5]], "scaling_factor": 4.5}]);
        let body = serde_json::to_vec(&good).expect("json");
        assert!(check_answer(&body, 1, 0, 4).is_ok());
        assert!(check_answer(&body, 1, 1, 4).is_err());
        assert!(check_answer(&body, 1, 0, 8).is_err());
        assert!(check_answer(b"{", 1, 0, 4).is_err());
    }
}
