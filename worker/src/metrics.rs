//! Prometheus metrics of one worker, in one registry (no globals, so several
//! workers can run in one test process).
//!
//! Names carry their units; labels are bounded (status codes, tower names,
//! error kinds) and never carry request content. `medembed_worker_utilization`
//! is what the autoscaler reads: (requests in flight) / (configured
//! concurrency), the managed router's `(busy + queued) / capacity`.

use medembed_api::metrics::Families;
use prometheus::{Histogram, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec};

/// The worker's metric families.
#[derive(Clone, derive_more::Debug)]
#[debug("Metrics")]
pub struct Metrics {
    families: Families,
    /// Requests answered, by HTTP status code.
    pub requests: IntCounterVec,
    /// End-to-end request duration.
    pub request_duration: Histogram,
    /// Per-image decode + preprocess time.
    pub decode_duration: Histogram,
    /// Time requests waited, unread, for room in the body byte budget (only
    /// requests that had to wait).
    pub body_wait: Histogram,
    /// Time from admission to the start of the item's inference, by tower.
    pub queue_duration: HistogramVec,
    /// Duration of one batched inference call, by tower.
    pub inference_duration: HistogramVec,
    /// Items per inference call, by tower.
    pub batch_size: HistogramVec,
    /// Items admitted and not yet answered, by tower.
    pub queue_depth: IntGaugeVec,
    /// Items embedded, by tower.
    pub items: IntCounterVec,
    /// Items dropped before inference, by tower and reason (cancelled, expired).
    pub dropped: IntCounterVec,
    /// Images refused by the decoder, by reason.
    pub decode_errors: IntCounterVec,
    /// Panics caught in the image pipeline, by stage: `decode` and `resize`
    /// (the item is answered with an error), `thread` (a decode thread died
    /// and was replaced), `inference` (the batch is answered with an error).
    pub panics: IntCounterVec,
    /// Bytes of decoded image rasters held (the decoded-bytes budget's use).
    pub decoded_bytes: IntGauge,
    /// Time decodes waited for room in the decoded-bytes budget (only those
    /// that waited).
    pub decoded_wait: Histogram,
    /// Requests being processed.
    pub in_flight: IntGauge,
    /// In-flight requests over the concurrency limit, in percent (for autoscaling).
    pub utilization: IntGauge,
    /// 1 once the model is loaded and warmed up.
    pub ready: IntGauge,
    /// Constant 1 with the model's name, version and the execution provider.
    pub model_info: IntGaugeVec,
}

const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

impl Metrics {
    /// Creates and registers every family (names prefixed `medembed_worker_`).
    pub fn new() -> Self {
        Self::try_new().expect("the worker's metric families are valid and registered once")
    }

    fn try_new() -> Result<Self, prometheus::Error> {
        let f = Families::with_prefix("medembed_worker")?;
        let lat = &LATENCY_BUCKETS;
        let tower = &["tower"];
        Ok(Self {
            requests: f.counter(
                "requests_total",
                "Scoring requests answered, by HTTP status.",
                &["status"],
            )?,
            request_duration: f.histogram(
                "request_duration_seconds",
                "Scoring request duration, from body received to response ready.",
                lat,
            )?,
            decode_duration: f.histogram(
                "decode_duration_seconds",
                "Time to decode and preprocess one image.",
                lat,
            )?,
            body_wait: f.histogram(
                "body_wait_seconds",
                "Time a request waited, unread, for room in the buffered-bytes budget (requests that waited).",
                lat,
            )?,
            queue_duration: f.histograms(
                "queue_duration_seconds",
                "Time from admission to the start of the item's inference.",
                lat,
                tower,
            )?,
            inference_duration: f.histograms(
                "inference_duration_seconds",
                "Duration of one batched inference call.",
                lat,
                tower,
            )?,
            batch_size: f.histograms(
                "batch_size",
                "Items per inference call.",
                &BATCH_BUCKETS,
                tower,
            )?,
            queue_depth: f.gauges(
                "queue_depth",
                "Items admitted and not yet answered.",
                tower,
            )?,
            items: f.counter("items_total", "Items embedded.", tower)?,
            dropped: f.counter(
                "dropped_items_total",
                "Items dropped before inference (client gone or deadline passed).",
                &["tower", "reason"],
            )?,
            decode_errors: f.counter(
                "decode_errors_total",
                "Images refused by the decoder, by reason.",
                &["reason"],
            )?,
            panics: f.counter(
                "panics_total",
                "Panics caught in the image pipeline, by stage (decode, resize, thread, inference).",
                &["stage"],
            )?,
            decoded_bytes: f.gauge(
                "decoded_bytes",
                "Bytes of decoded image rasters held (the decoded-bytes budget's use).",
            )?,
            decoded_wait: f.histogram(
                "decoded_wait_seconds",
                "Time a decode waited for room in the decoded-bytes budget (decodes that waited).",
                lat,
            )?,
            in_flight: f.gauge("in_flight_requests", "Scoring requests being processed.")?,
            utilization: f.gauge(
                "utilization_percent",
                "Requests in flight over the concurrency limit, in percent; the autoscaling signal.",
            )?,
            ready: f.gauge("ready", "1 once the model is loaded and warmed up.")?,
            model_info: f.gauges(
                "model_info",
                "The model served (constant 1).",
                &["name", "version", "provider"],
            )?,
            families: f,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        self.families.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
