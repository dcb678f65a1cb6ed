//! W3C Trace Context (`traceparent`): the gateway keeps a caller's trace id,
//! or starts a trace, and passes `traceparent` on to the worker with its own
//! span id as the parent, so a worker's logs join the caller's trace. The
//! trace id is in every audit line.

use rand::RngCore;

/// A request's trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// The gateway's span id (16 hex digits), the worker's parent.
    pub span_id: String,
    /// Trace flags (2 hex digits).
    pub flags: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl TraceContext {
    /// Continues the trace of an incoming `traceparent`, or starts one.
    pub fn from_header(value: Option<&str>) -> Self {
        let span_id = random_hex(8);
        if let Some(v) = value {
            let parts: Vec<&str> = v.trim().split('-').collect();
            if parts.len() >= 4
                && is_hex(parts[0], 2)
                && parts[0] != "ff"
                && is_hex(parts[1], 32)
                && parts[1] != "0".repeat(32)
                && is_hex(parts[2], 16)
                && is_hex(parts[3], 2)
            {
                return TraceContext {
                    trace_id: parts[1].to_string(),
                    span_id,
                    flags: parts[3].to_string(),
                };
            }
        }
        TraceContext {
            trace_id: random_hex(16),
            span_id,
            flags: "01".into(),
        }
    }

    /// The `traceparent` to send upstream.
    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn continues_or_starts() {
        let t = TraceContext::from_header(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert!(t
            .header()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        let n = TraceContext::from_header(Some("garbage"));
        assert_eq!(n.trace_id.len(), 32);
        assert_eq!(TraceContext::from_header(None).header().len(), 55);
    }
}
