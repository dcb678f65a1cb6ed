//! The gateway's Prometheus metrics, in one registry (no globals, so several
//! gateways can run in one test process).
//!
//! Labels are bounded and never carry a key, a token or request content: the
//! endpoint's and deployment's names, the client's name (from its
//! `EmbeddingClient` or the static file, never its credentials), the status
//! code, and fixed reason words.

use medembed_api::metrics::Families;
use prometheus::{HistogramVec, IntCounterVec, IntGauge, IntGaugeVec};

/// The gateway's metric families.
#[derive(Clone, derive_more::Debug)]
#[debug("Metrics")]
pub struct Metrics {
    families: Families,
    /// Requests answered, by endpoint, deployment, client and status code.
    pub requests: IntCounterVec,
    /// End-to-end duration as the client sees it (to response headers), by endpoint and deployment.
    pub request_duration: HistogramVec,
    /// Duration of the upstream call (all attempts), by endpoint and deployment.
    pub upstream_duration: HistogramVec,
    /// Images admitted, by endpoint and client.
    pub images: IntCounterVec,
    /// Request-body bytes admitted, by endpoint and client.
    pub request_bytes: IntCounterVec,
    /// Requests refused (or, in dry run, that would have been), by endpoint,
    /// client, reason and whether enforced.
    pub rejections: IntCounterVec,
    /// Requests in flight, by endpoint.
    pub in_flight: IntGaugeVec,
    /// Upstream attempts retried on another worker, by endpoint, deployment and cause.
    pub retries: IntCounterVec,
    /// Mirrored requests by endpoint, shadow deployment, the live and the shadow status.
    pub mirror: IntCounterVec,
    /// Duration of live and shadow calls of mirrored requests, by endpoint,
    /// shadow deployment and role (`live`, `shadow`).
    pub mirror_duration: HistogramVec,
    /// Audit lines dropped because the writer fell behind.
    pub audit_dropped: IntGauge,
    /// Workers currently known.
    pub workers: IntGauge,
    /// Bytes of request bodies held now, against the body budget.
    pub body_bytes_held: IntGauge,
}

const LATENCY_BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Result<Self, prometheus::Error> {
        let f = Families::new();
        let lat = &LATENCY_BUCKETS;
        Ok(Metrics {
            requests: f.counter(
                "medembed_gateway_requests_total",
                "Requests answered, by endpoint, deployment, client and HTTP status.",
                &["endpoint", "deployment", "client", "status"],
            )?,
            request_duration: f.histograms(
                "medembed_gateway_request_duration_seconds",
                "Time from receiving a request to sending its response headers.",
                lat,
                &["endpoint", "deployment"],
            )?,
            upstream_duration: f.histograms(
                "medembed_gateway_upstream_duration_seconds",
                "Time spent waiting for workers' response headers, retries included.",
                lat,
                &["endpoint", "deployment"],
            )?,
            images: f.counter(
                "medembed_gateway_images_total",
                "Images in admitted requests.",
                &["endpoint", "client"],
            )?,
            request_bytes: f.counter(
                "medembed_gateway_request_bytes_total",
                "Request-body bytes of admitted requests.",
                &["endpoint", "client"],
            )?,
            rejections: f.counter(
                "medembed_gateway_rejections_total",
                "Requests refused by the gateway (enforced=false: dry run, counted only).",
                &["endpoint", "client", "reason", "enforced"],
            )?,
            in_flight: f.gauges(
                "medembed_gateway_in_flight_requests",
                "Requests being processed.",
                &["endpoint"],
            )?,
            retries: f.counter(
                "medembed_gateway_upstream_retries_total",
                "Requests retried on another worker, by cause.",
                &["endpoint", "deployment", "cause"],
            )?,
            mirror: f.counter(
                "medembed_gateway_mirror_requests_total",
                "Mirrored requests by the live and the shadow deployment's status (`error` when no response).",
                &["endpoint", "deployment", "live_status", "shadow_status"],
            )?,
            mirror_duration: f.histograms(
                "medembed_gateway_mirror_duration_seconds",
                "Upstream duration of mirrored requests, live and shadow.",
                lat,
                &["endpoint", "deployment", "role"],
            )?,
            audit_dropped: f.gauge(
                "medembed_gateway_audit_dropped_lines",
                "Audit lines dropped because the writer fell behind.",
            )?,
            workers: f.gauge("medembed_gateway_workers", "Workers currently known.")?,
            body_bytes_held: f.gauge(
                "medembed_gateway_body_bytes_held",
                "Bytes of request bodies held now, against the body budget (--max-buffered-bytes).",
            )?,
            families: f,
        })
    }

    /// The text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        self.families.render()
    }
}
