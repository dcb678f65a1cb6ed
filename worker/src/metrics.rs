//! Prometheus metrics of one worker, in one registry (no globals, so several
//! workers can run in one test process).
//!
//! Names carry their units; labels are bounded (status codes, tower names,
//! error kinds) and never carry request content. `medembed_worker_utilization`
//! is what the autoscaler reads: (requests in flight) / (configured
//! concurrency), the managed router's `(busy + queued) / capacity`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The worker's metric families.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
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
    /// Requests being processed.
    pub in_flight: IntGauge,
    /// In-flight requests over the concurrency limit, in percent (for autoscaling).
    pub utilization: IntGauge,
    /// 1 once the model is loaded and warmed up.
    pub ready: IntGauge,
    /// Constant 1 with the model's name, version and the execution provider.
    pub model_info: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn secs(name: &str, help: &str, buckets: Vec<f64>) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(buckets)
}

const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("medembed_worker".into()), None).expect("valid prefix");
        let lat = LATENCY_BUCKETS.to_vec();
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Scoring requests answered, by HTTP status.",
            ),
            &["status"],
        )
        .expect("valid metric");
        let request_duration = Histogram::with_opts(secs(
            "request_duration_seconds",
            "Scoring request duration, from body received to response ready.",
            lat.clone(),
        ))
        .expect("valid metric");
        let decode_duration = Histogram::with_opts(secs(
            "decode_duration_seconds",
            "Time to decode and preprocess one image.",
            lat.clone(),
        ))
        .expect("valid metric");
        let body_wait = Histogram::with_opts(secs(
            "body_wait_seconds",
            "Time a request waited, unread, for room in the buffered-bytes budget (requests that waited).",
            lat.clone(),
        ))
        .expect("valid metric");
        let queue_duration = HistogramVec::new(
            secs(
                "queue_duration_seconds",
                "Time from admission to the start of the item's inference.",
                lat.clone(),
            ),
            &["tower"],
        )
        .expect("valid metric");
        let inference_duration = HistogramVec::new(
            secs(
                "inference_duration_seconds",
                "Duration of one batched inference call.",
                lat,
            ),
            &["tower"],
        )
        .expect("valid metric");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("batch_size", "Items per inference call.")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            &["tower"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new("queue_depth", "Items admitted and not yet answered."),
            &["tower"],
        )
        .expect("valid metric");
        let items = IntCounterVec::new(Opts::new("items_total", "Items embedded."), &["tower"])
            .expect("valid metric");
        let dropped = IntCounterVec::new(
            Opts::new(
                "dropped_items_total",
                "Items dropped before inference (client gone or deadline passed).",
            ),
            &["tower", "reason"],
        )
        .expect("valid metric");
        let decode_errors = IntCounterVec::new(
            Opts::new(
                "decode_errors_total",
                "Images refused by the decoder, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new("in_flight_requests", "Scoring requests being processed.")
            .expect("valid metric");
        let utilization = IntGauge::new(
            "utilization_percent",
            "Requests in flight over the concurrency limit, in percent; the autoscaling signal.",
        )
        .expect("valid metric");
        let ready = IntGauge::new("ready", "1 once the model is loaded and warmed up.")
            .expect("valid metric");
        let model_info = IntGaugeVec::new(
            Opts::new("model_info", "The model served (constant 1)."),
            &["name", "version", "provider"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(decode_duration.clone()),
            Box::new(body_wait.clone()),
            Box::new(queue_duration.clone()),
            Box::new(inference_duration.clone()),
            Box::new(batch_size.clone()),
            Box::new(queue_depth.clone()),
            Box::new(items.clone()),
            Box::new(dropped.clone()),
            Box::new(decode_errors.clone()),
            Box::new(in_flight.clone()),
            Box::new(utilization.clone()),
            Box::new(ready.clone()),
            Box::new(model_info.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            requests,
            request_duration,
            decode_duration,
            body_wait,
            queue_duration,
            inference_duration,
            batch_size,
            queue_depth,
            items,
            dropped,
            decode_errors,
            in_flight,
            utilization,
            ready,
            model_info,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
