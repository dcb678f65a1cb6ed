//! Reads the worker's own `/metrics` (Prometheus text format) around a run,
//! so the report can say where a request's time went: decoding and
//! preprocessing, waiting for a batch, or inference, and what batch sizes the
//! worker formed (the bare-session comparison runs at those sizes).

use std::collections::HashMap;

/// One scrape: series (name plus labels, as written) to value.
#[derive(Debug, Clone, Default)]
pub struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// Parses the text format, skipping comments and anything unparsable.
    pub fn parse(text: &str) -> Scrape {
        let mut map = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((series, value)) = line.rsplit_once(' ') {
                if let Ok(v) = value.trim().parse::<f64>() {
                    map.insert(series.trim().to_string(), v);
                }
            }
        }
        Scrape(map)
    }

    /// A series' value, 0 when absent.
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }
}

/// Mean of a histogram over the interval between two scrapes: (Δsum, Δcount).
pub fn mean_between(before: &Scrape, after: &Scrape, name: &str, labels: &str) -> (f64, f64) {
    let series = |suffix: &str| {
        if labels.is_empty() {
            format!("{name}_{suffix}")
        } else {
            format!("{name}_{suffix}{{{labels}}}")
        }
    };
    let sum = after.get(&series("sum")) - before.get(&series("sum"));
    let count = after.get(&series("count")) - before.get(&series("count"));
    (sum, count)
}

/// Per-stage figures of the worker over one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stages {
    /// Mean decode + preprocess time per image, ms.
    pub decode_ms: f64,
    /// Mean time an image waited from admission to the start of its inference, ms.
    pub image_queue_ms: f64,
    /// Mean duration of one image inference call, ms.
    pub image_infer_ms: f64,
    /// Mean image batch size.
    pub image_batch: f64,
    /// Mean duration of one text inference call, ms (0 without texts).
    pub text_infer_ms: f64,
    /// Mean text batch size (0 without texts).
    pub text_batch: f64,
    /// Mean request duration as the worker measured it, ms.
    pub request_ms: f64,
}

impl Stages {
    /// Computes the stage figures between two scrapes.
    pub fn between(before: &Scrape, after: &Scrape) -> Stages {
        let p = "medembed_worker_";
        let mean = |name: &str, labels: &str, scale: f64| {
            let (s, c) = mean_between(before, after, &format!("{p}{name}"), labels);
            if c > 0.0 {
                s / c * scale
            } else {
                0.0
            }
        };
        Stages {
            decode_ms: mean("decode_duration_seconds", "", 1e3),
            image_queue_ms: mean("queue_duration_seconds", "tower=\"image\"", 1e3),
            image_infer_ms: mean("inference_duration_seconds", "tower=\"image\"", 1e3),
            image_batch: mean("batch_size", "tower=\"image\"", 1.0),
            text_infer_ms: mean("inference_duration_seconds", "tower=\"text\"", 1e3),
            text_batch: mean("batch_size", "tower=\"text\"", 1.0),
            request_ms: mean("request_duration_seconds", "", 1e3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_means_from_two_scrapes() {
        let a = Scrape::parse(
            "# HELP x\nmedembed_worker_batch_size_sum{tower=\"image\"} 10\n\
             medembed_worker_batch_size_count{tower=\"image\"} 5\n\
             medembed_worker_decode_duration_seconds_sum 1\n\
             medembed_worker_decode_duration_seconds_count 100\n",
        );
        let b = Scrape::parse(
            "medembed_worker_batch_size_sum{tower=\"image\"} 40\n\
             medembed_worker_batch_size_count{tower=\"image\"} 15\n\
             medembed_worker_decode_duration_seconds_sum 3\n\
             medembed_worker_decode_duration_seconds_count 200\n",
        );
        let s = Stages::between(&a, &b);
        assert!((s.image_batch - 3.0).abs() < 1e-9);
        assert!((s.decode_ms - 20.0).abs() < 1e-9);
        assert_eq!(s.text_batch, 0.0);
    }
}
