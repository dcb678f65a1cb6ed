//! The operator's metrics, in one registry (no globals): reconciles, errors by
//! bounded reason, reconcile duration, and leadership.

use std::time::Duration;

use medembed_api::metrics::Families;
use prometheus::{HistogramVec, IntCounterVec, IntGauge};

/// The operator's metric families.
#[derive(Clone, derive_more::Debug)]
#[debug("Metrics")]
pub struct Metrics {
    families: Families,
    /// Reconciles by controller.
    pub reconciles: IntCounterVec,
    /// Failed reconciles by controller and reason.
    pub errors: IntCounterVec,
    /// Reconcile duration by controller.
    pub duration: HistogramVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
}

impl Metrics {
    /// Creates and registers the families.
    pub fn new() -> Result<Self, prometheus::Error> {
        let f = Families::new();
        let controller = &["controller"];
        Ok(Metrics {
            reconciles: f.counter(
                "medembed_operator_reconciles_total",
                "Reconciles run, by controller.",
                controller,
            )?,
            errors: f.counter(
                "medembed_operator_reconcile_errors_total",
                "Reconciles that failed, by controller and reason.",
                &["controller", "reason"],
            )?,
            duration: f.histograms(
                "medembed_operator_reconcile_duration_seconds",
                "Time one reconcile took, in seconds.",
                &[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
                controller,
            )?,
            leader: f.gauge(
                "medembed_operator_leader",
                "1 while this replica holds the leader Lease, else 0.",
            )?,
            families: f,
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
        String::from_utf8_lossy(&self.families.render()).into_owned()
    }
}
