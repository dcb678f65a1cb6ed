//! The worker's one mapping from failure to HTTP status and JSON error body.
//!
//! Every error a client can see is an [`ApiError`]; its message names the
//! field or row at fault and never quotes request content.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use medembed_api::{ErrorBody, ErrorCode, RequestError};

/// A client-visible failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (400).
    #[error("{message}")]
    Invalid {
        /// Stable code (one of the 400 codes).
        code: ErrorCode,
        /// Explanation naming the field or row.
        message: String,
    },
    /// The body is larger than allowed (413).
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The worker is at capacity (429).
    #[error("worker is at capacity ({0}); retry shortly")]
    Overloaded(&'static str),
    /// Not ready or shutting down (503).
    #[error("{0}")]
    Unavailable(&'static str),
    /// The deadline passed (408, as the managed service answers timeouts).
    #[error("request did not complete within its time budget of {0} ms")]
    Timeout(u64),
    /// The deadline passed while the body was still being read (408; the
    /// connection is closed, since the rest of the body is not read).
    #[error("request did not complete within its time budget of {0} ms")]
    BodyTimeout(u64),
    /// The body stalled or arrived below the minimum rate (408; the
    /// connection is closed).
    #[error("request body arrived too slowly (minimum {min_rate} bytes per second)")]
    SlowBody {
        /// The configured minimum rate.
        min_rate: u64,
    },
    /// Wrong path (404).
    #[error("no such endpoint; POST /score")]
    NotFound,
    /// Wrong method (405).
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// A fault of ours (500).
    #[error("internal error")]
    Internal,
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::Invalid {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl ApiError {
    /// The stable code of the JSON body.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Invalid { code, .. } => *code,
            ApiError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            ApiError::Overloaded(_) => ErrorCode::TooManyRequests,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Timeout(_) | ApiError::BodyTimeout(_) | ApiError::SlowBody { .. } => {
                ErrorCode::Timeout
            }
            ApiError::NotFound => ErrorCode::NotFound,
            ApiError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            ApiError::Internal => ErrorCode::Internal,
        }
    }

    /// The HTTP status: the code's.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The full HTTP response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let body = ErrorBody::new(self.code(), self.to_string()).to_json();
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            ApiError::Overloaded(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unavailable(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::BodyTimeout(_) | ApiError::SlowBody { .. } => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ApiError::MethodNotAllowed(allow) => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        resp
    }
}
