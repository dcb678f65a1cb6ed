//! Prometheus metrics (feature `metrics`): what every medembed program's
//! metric families are made with.
//!
//! Each program instance has its own registry ([`Families`]; no globals, so
//! several gateways or workers run in one test process), its families are
//! made and registered in one call each, and [`Families::render`] gives the
//! text exposition `/metrics` serves. Label values must be bounded and never
//! carry request content or credentials: that is each program's to keep.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// One program instance's registry and the constructors of its families.
#[derive(Clone, Default)]
pub struct Families {
    registry: Registry,
}

impl std::fmt::Debug for Families {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Families")
    }
}

impl Families {
    /// A registry whose family names are used as given.
    pub fn new() -> Self {
        Families::default()
    }

    /// A registry that prefixes every family name with `prefix_`.
    pub fn with_prefix(prefix: &str) -> Result<Self, prometheus::Error> {
        Ok(Families {
            registry: Registry::new_custom(Some(prefix.to_string()), None)?,
        })
    }

    fn register<C: Collector + Clone + 'static>(&self, c: C) -> Result<C, prometheus::Error> {
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    /// A counter family with `labels`.
    pub fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.register(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    /// A gauge.
    pub fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.register(IntGauge::new(name, help)?)
    }

    /// A gauge family with `labels`.
    pub fn gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    /// A histogram with `buckets`.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, prometheus::Error> {
        self.register(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        )?)
    }

    /// A histogram family with `buckets` and `labels`.
    pub fn histograms(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> Result<HistogramVec, prometheus::Error> {
        self.register(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )?)
    }

    /// The text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn families_register_once_and_render() {
        let f = Families::with_prefix("medembed_test").unwrap();
        let c = f
            .counter("requests_total", "Requests.", &["status"])
            .unwrap();
        c.with_label_values(&["200"]).inc();
        f.gauge("ready", "Ready.").unwrap().set(1);
        f.histogram("duration_seconds", "Time.", &[0.001, 0.01, 0.1])
            .unwrap()
            .observe(0.01);
        assert!(f.counter("requests_total", "Again.", &["status"]).is_err());
        let text = String::from_utf8(f.render()).unwrap();
        assert!(
            text.contains("medembed_test_requests_total{status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("medembed_test_ready 1"), "{text}");
        assert!(
            text.contains("medembed_test_duration_seconds_count 1"),
            "{text}"
        );
    }
}
