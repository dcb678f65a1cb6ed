//! Reading what a program serves on `/metrics` (the Prometheus text format),
//! for the tests of every crate.

/// The value of metric `name` summed over its series whose labels contain
/// every one of `labels` (each written as in the text: `status="200"`); 0
/// when there is none.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let base = series.split('{').next().unwrap_or("");
            base == name && labels.iter().all(|lab| series.contains(lab))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn sums_the_series_that_carry_every_label() {
        let text = "# HELP x_total Requests.\n# TYPE x_total counter\n\
                    x_total{status=\"200\",tower=\"image\"} 3\n\
                    x_total{status=\"200\",tower=\"text\"} 4\n\
                    x_total{status=\"500\",tower=\"text\"} 1\n\
                    x_total_other{status=\"200\"} 100\n\
                    y 2.5\n";
        assert_eq!(metric(text, "x_total", &[]), 8.0);
        assert_eq!(metric(text, "x_total", &["status=\"200\""]), 7.0);
        assert_eq!(
            metric(text, "x_total", &["status=\"200\"", "tower=\"text\""]),
            4.0
        );
        assert_eq!(metric(text, "y", &[]), 2.5);
        assert_eq!(metric(text, "z", &[]), 0.0);
    }
}
