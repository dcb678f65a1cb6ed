//! One audit line per request, as JSON: when, who, where to, what came of it,
//! how much and how long, and the trace id. Never the payload, never the
//! credentials.
//!
//! Lines go through a bounded queue to one writer task, so a slow disk or
//! pipe never delays a request; when the queue is full the line is dropped
//! and counted (`medembed_gateway_audit_dropped_lines`).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// One request's audit record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// RFC 3339 time the request arrived (UTC).
    pub time: String,
    /// Client name (`anonymous` on unauthenticated endpoints, `-` when
    /// authentication failed).
    pub client: String,
    /// Endpoint id (`-` when no endpoint matched).
    pub endpoint: String,
    /// Deployment that answered (`-` when none).
    pub deployment: String,
    /// HTTP status sent.
    pub status: u16,
    /// Rows in the request (0 when not parsed).
    pub rows: usize,
    /// Images in the request.
    pub images: usize,
    /// Request-body bytes.
    pub bytes: u64,
    /// Milliseconds from arrival to response headers.
    pub latency_ms: f64,
    /// W3C trace id.
    pub trace_id: String,
    /// Why the gateway refused it, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// Formats a system time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The sending side of the audit log.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: Option<mpsc::Sender<AuditRecord>>,
    metrics: Metrics,
}

impl AuditLog {
    /// Opens the destination (`-` standard output, `off`, or a file path) and
    /// starts the writer task.
    pub fn open(dest: &str, metrics: Metrics) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match dest {
            "off" | "" => return Ok(AuditLog { tx: None, metrics }),
            "-" => Box::new(std::io::stdout()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, mut rx) = mpsc::channel::<AuditRecord>(8192);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                while let Some(rec) = rx.blocking_recv() {
                    fn push(buf: &mut Vec<u8>, r: &AuditRecord) {
                        if serde_json::to_writer(&mut *buf, r).is_ok() {
                            buf.push(b'\n');
                        }
                    }
                    push(&mut buf, &rec);
                    while let Ok(more) = rx.try_recv() {
                        push(&mut buf, &more);
                        if buf.len() > 60 * 1024 {
                            break;
                        }
                    }
                    let _ = out.write_all(&buf).and_then(|_| out.flush());
                    buf.clear();
                }
            })?;
        Ok(AuditLog {
            tx: Some(tx),
            metrics,
        })
    }

    /// Queues one line (dropped, and counted, if the writer is behind).
    pub fn record(&self, rec: AuditRecord) {
        if let Some(tx) = &self.tx {
            if tx.try_send(rec).is_err() {
                self.metrics.audit_dropped.inc();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_588_600_123);
        assert_eq!(rfc3339(t), "2025-12-01T11:30:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
