//! The gateway's Prometheus metrics, in one registry (no globals, so several
//! gateways can run in one test process).
//!
//! Labels are bounded and never carry a key, a token or request content: the
//! endpoint's and deployment's names, the client's name (from its
//! `EmbeddingClient` or the static file, never its credentials), the status
//! code, and fixed reason words.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The gateway's metric families.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
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
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const LATENCY_BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let requests = counter(
            "medembed_gateway_requests_total",
            "Requests answered, by endpoint, deployment, client and HTTP status.",
            &["endpoint", "deployment", "client", "status"],
        )?;
        let request_duration = histogram(
            "medembed_gateway_request_duration_seconds",
            "Time from receiving a request to sending its response headers.",
            &["endpoint", "deployment"],
        )?;
        let upstream_duration = histogram(
            "medembed_gateway_upstream_duration_seconds",
            "Time spent waiting for workers' response headers, retries included.",
            &["endpoint", "deployment"],
        )?;
        let images = counter(
            "medembed_gateway_images_total",
            "Images in admitted requests.",
            &["endpoint", "client"],
        )?;
        let request_bytes = counter(
            "medembed_gateway_request_bytes_total",
            "Request-body bytes of admitted requests.",
            &["endpoint", "client"],
        )?;
        let rejections = counter(
            "medembed_gateway_rejections_total",
            "Requests refused by the gateway (enforced=false: dry run, counted only).",
            &["endpoint", "client", "reason", "enforced"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "medembed_gateway_in_flight_requests",
                "Requests being processed.",
            ),
            &["endpoint"],
        )?;
        registry.register(Box::new(in_flight.clone()))?;
        let retries = counter(
            "medembed_gateway_upstream_retries_total",
            "Requests retried on another worker, by cause.",
            &["endpoint", "deployment", "cause"],
        )?;
        let mirror = counter(
            "medembed_gateway_mirror_requests_total",
            "Mirrored requests by the live and the shadow deployment's status (`error` when no response).",
            &["endpoint", "deployment", "live_status", "shadow_status"],
        )?;
        let mirror_duration = histogram(
            "medembed_gateway_mirror_duration_seconds",
            "Upstream duration of mirrored requests, live and shadow.",
            &["endpoint", "deployment", "role"],
        )?;
        let audit_dropped = IntGauge::new(
            "medembed_gateway_audit_dropped_lines",
            "Audit lines dropped because the writer fell behind.",
        )?;
        registry.register(Box::new(audit_dropped.clone()))?;
        let workers = IntGauge::new("medembed_gateway_workers", "Workers currently known.")?;
        registry.register(Box::new(workers.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            images,
            request_bytes,
            rejections,
            in_flight,
            retries,
            mirror,
            mirror_duration,
            audit_dropped,
            workers,
        })
    }

    /// The text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
