//! The JSON error body every medembed program answers with:
//! `{"error": {"code": "...", "message": "..."}}`.
//!
//! `code` is a short, stable, machine-readable word; `message` is for people.
//! Neither ever carries request content (image bytes or text): patient data
//! must not leak into errors, and from there into client logs.

use serde::{Deserialize, Serialize};

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
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
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
