//! The operator's metrics, in one registry (no globals): reconciles, errors by
//! bounded reason, reconcile duration, and leadership.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// The operator's metric families.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by controller.
    pub reconciles: IntCounterVec,
    /// Failed reconciles by controller and reason.
    pub errors: IntCounterVec,
    /// Reconcile duration by controller.
    pub duration: HistogramVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Creates and registers the families.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "medembed_operator_reconciles_total",
                "Reconciles run, by controller.",
            ),
            &["controller"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "medembed_operator_reconcile_errors_total",
                "Reconciles that failed, by controller and reason.",
            ),
            &["controller", "reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "medembed_operator_reconcile_duration_seconds",
                "Time one reconcile took, in seconds.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["controller"],
        )?;
        let leader = IntGauge::new(
            "medembed_operator_leader",
            "1 while this replica holds the leader Lease, else 0.",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Metrics {
            registry,
            reconciles,
            errors,
            duration,
            leader,
        })
    }

    /// Records one reconcile.
    pub fn observe(&self, controller: &str, took: Duration, error: Option<&'static str>) {
        self.reconciles.with_label_values(&[controller]).inc();
        self.duration
            .with_label_values(&[controller])
            .observe(took.as_secs_f64());
        if let Some(reason) = error {
            self.errors.with_label_values(&[controller, reason]).inc();
        }
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        let enc = prometheus::TextEncoder::new();
        if enc.encode_utf8(&self.registry.gather(), &mut buf).is_err() {
            buf.clear();
        }
        buf
    }
}
