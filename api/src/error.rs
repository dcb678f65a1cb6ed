//! The JSON error body every medembed program answers with:
//! `{"error": {"code": "...", "message": "..."}}`, and the one list of codes
//! ([`ErrorCode`]) the worker and the gateway share, each with its HTTP
//! status.
//!
//! `code` is a short, stable, machine-readable word; `message` is for people.
//! Neither ever carries request content (image bytes or text): patient data
//! must not leak into errors, and from there into client logs.

use serde::{Deserialize, Serialize};

/// Every error code a client can see, with its HTTP status. The worker and
/// the gateway answer only with these, so a client (and a dashboard) has one
/// list to handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The body is not JSON (400).
    InvalidJson,
    /// The JSON does not have the request's shape (400).
    InvalidRequest,
    /// More rows than allowed (400).
    TooManyRows,
    /// An image cell could not be decoded (400).
    InvalidImage,
    /// A text cell could not be tokenized (400).
    InvalidText,
    /// The body could not be read (400).
    InvalidBody,
    /// No usable credentials (401).
    Unauthorized,
    /// The caller may not call this endpoint (403).
    Forbidden,
    /// No such route or endpoint (404).
    NotFound,
    /// The deployment named in `azureml-model-deployment` does not exist (404).
    DeploymentNotFound,
    /// Wrong method (405).
    MethodNotAllowed,
    /// The request's time budget ran out (408, as the managed service answers).
    Timeout,
    /// The body is larger than allowed (413).
    PayloadTooLarge,
    /// A quota or a queue is full (429).
    TooManyRequests,
    /// A fault of ours (500).
    Internal,
    /// A worker broke the connection or the protocol (502).
    UpstreamFailed,
    /// Loading, draining or at no capacity (503).
    Unavailable,
    /// The endpoint routes no traffic to any deployment (503).
    NoTraffic,
    /// The deployment has no ready workers (503).
    NoWorkers,
    /// No worker could be reached (503).
    UpstreamUnreachable,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 20] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidRequest,
        ErrorCode::TooManyRows,
        ErrorCode::InvalidImage,
        ErrorCode::InvalidText,
        ErrorCode::InvalidBody,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::DeploymentNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Timeout,
        ErrorCode::PayloadTooLarge,
        ErrorCode::TooManyRequests,
        ErrorCode::Internal,
        ErrorCode::UpstreamFailed,
        ErrorCode::Unavailable,
        ErrorCode::NoTraffic,
        ErrorCode::NoWorkers,
        ErrorCode::UpstreamUnreachable,
    ];

    /// The code as written in the error body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::TooManyRows => "too_many_rows",
            ErrorCode::InvalidImage => "invalid_image",
            ErrorCode::InvalidText => "invalid_text",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::DeploymentNotFound => "deployment_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::Internal => "internal",
            ErrorCode::UpstreamFailed => "upstream_failed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NoTraffic => "no_traffic",
            ErrorCode::NoWorkers => "no_workers",
            ErrorCode::UpstreamUnreachable => "upstream_unreachable",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson
            | ErrorCode::InvalidRequest
            | ErrorCode::TooManyRows
            | ErrorCode::InvalidImage
            | ErrorCode::InvalidText
            | ErrorCode::InvalidBody => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound | ErrorCode::DeploymentNotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Timeout => 408,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Internal => 500,
            ErrorCode::UpstreamFailed => 502,
            ErrorCode::Unavailable
            | ErrorCode::NoTraffic
            | ErrorCode::NoWorkers
            | ErrorCode::UpstreamUnreachable => 503,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The top-level error document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code and message of an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable code such as `invalid_request` or `too_many_requests`.
    pub code: String,
    /// Human-readable explanation, never containing request content.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.as_str().to_string(),
                message: message.into(),
            },
        }
    }

    /// Serialises the body to JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising two strings cannot fail.
        serde_json::to_vec(self)
            .unwrap_or_else(|_| br#"{"error":{"code":"internal","message":"error"}}"#.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_with_error_statuses() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!((400..600).contains(&c.status()), "{c}");
        }
    }

    #[test]
    fn body_shape() {
        let b = ErrorBody::new(ErrorCode::TooManyRows, "request has 3 rows");
        assert_eq!(
            String::from_utf8(b.to_json()).unwrap(),
            r#"{"error":{"code":"too_many_rows","message":"request has 3 rows"}}"#
        );
    }
}
