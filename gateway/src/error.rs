//! Every refusal of the gateway as one type, [`GatewayError`], and the one
//! mapping from it to what the client and the dashboards see: the API error
//! code (and with it the HTTP status), the extra headers, and the `reason`
//! label of `medembed_gateway_rejections_total` and of the audit line.
//!
//! Why one type: a stage says *what* went wrong and nothing else; how that
//! is answered is decided here, once, so two stages cannot answer the same
//! condition differently. Codes and statuses are [`ErrorCode`]'s, the list
//! the worker answers with too. The body is [`medembed_api::ErrorBody`].
//!
//! No variant carries request content or credentials: only limits, counts,
//! bounded reason words and the quota decision. Messages and `Debug` output
//! are therefore safe to log.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use medembed_api::{ErrorCode, RequestError};

use crate::auth::AuthError;
use crate::quota::{Decision, Dimension};
use crate::server::{full, Body};
use crate::stages::forward::UpstreamError;

/// Why the gateway answers a request itself instead of with a worker's
/// answer (or, for [`GatewayError::QuotaStoreUnavailable`], what it counts
/// while admitting).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No endpoint serves the host and path (404).
    #[error("no endpoint serves this host and path")]
    NoRoute,
    /// The scoring route takes POST only (405, `Allow: POST`).
    #[error("use POST")]
    MethodNotAllowed,
    /// Missing or bad credentials (401, `WWW-Authenticate: Bearer`), or a
    /// client not allowed on the endpoint (403).
    #[error("{0}")]
    Auth(AuthError),
    /// The client has `limit` requests in flight already (429).
    #[error("too many concurrent requests for this client")]
    TooManyConcurrent {
        /// The client's concurrency limit on this replica.
        limit: u32,
    },
    /// The body is larger than allowed, declared or as it streamed in (413).
    #[error("the request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The body could not be read (the connection failed mid-body; 400).
    #[error("the request body could not be read")]
    BodyUnreadable,
    /// The body did not arrive within the request's budget (408).
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The bodies held across all connections fill the gateway's byte
    /// budget, and no room came before the request's deadline (503 with
    /// `Retry-After`).
    #[error("the gateway is holding as many request bodies as it may; retry shortly")]
    BodyBudget,
    /// The body is not a valid scoring request, or has too many rows (400).
    #[error("{0}")]
    InvalidRequest(RequestError),
    /// A per-minute quota refused the request (429 with `Retry-After`,
    /// `RateLimit-Policy` and `RateLimit`).
    #[error("quota exceeded ({})", quota_reason(.0))]
    Quota(Box<Decision>),
    /// The shared quota store could not be asked (503 when the gateway fails
    /// closed; counted while admitting when it fails open).
    #[error("the quota store is unavailable")]
    QuotaStoreUnavailable,
    /// The pin header names no deployment of the endpoint (404).
    #[error("the deployment named in azureml-model-deployment does not exist on this endpoint")]
    DeploymentNotFound,
    /// The endpoint sends live traffic nowhere (503).
    #[error("this endpoint routes no traffic to any deployment")]
    NoTraffic,
    /// The traffic split names a deployment the endpoint does not have (503).
    #[error("no such deployment")]
    UnknownDeployment,
    /// No worker answered usefully (502/503), or the request's budget ran
    /// out while waiting (408).
    #[error("{}", upstream_message(.error, .budget))]
    Upstream {
        /// What went wrong upstream.
        error: UpstreamError,
        /// The endpoint's time budget (named in the timeout message).
        budget: Duration,
    },
    /// A fault of the gateway's own (500).
    #[error("internal error")]
    Internal,
}

fn quota_reason(d: &Decision) -> &'static str {
    match d.refused_by {
        Some(Dimension::Images) => "images_per_minute",
        Some(Dimension::Bytes) => "bytes_per_minute",
        Some(Dimension::Requests) | None => "requests_per_minute",
    }
}

fn upstream_message(error: &UpstreamError, budget: &Duration) -> String {
    match error {
        UpstreamError::Timeout => format!(
            "the request did not complete within {} ms",
            budget.as_millis()
        ),
        other => other.to_string(),
    }
}

impl GatewayError {
    /// The API error code; its HTTP status is [`ErrorCode::status`].
    pub fn code(&self) -> ErrorCode {
        match self {
            GatewayError::NoRoute => ErrorCode::NotFound,
            GatewayError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            GatewayError::Auth(AuthError::Forbidden) => ErrorCode::Forbidden,
            GatewayError::Auth(_) => ErrorCode::Unauthorized,
            GatewayError::TooManyConcurrent { .. } | GatewayError::Quota(_) => {
                ErrorCode::TooManyRequests
            }
            GatewayError::BodyTooLarge { .. } => ErrorCode::PayloadTooLarge,
            GatewayError::BodyUnreadable => ErrorCode::InvalidRequest,
            GatewayError::BodyTimeout => ErrorCode::Timeout,
            GatewayError::BodyBudget => ErrorCode::Unavailable,
            GatewayError::InvalidRequest(e) => e.code(),
            GatewayError::QuotaStoreUnavailable => ErrorCode::Unavailable,
            GatewayError::DeploymentNotFound => ErrorCode::DeploymentNotFound,
            GatewayError::NoTraffic => ErrorCode::NoTraffic,
            GatewayError::UnknownDeployment => ErrorCode::NoWorkers,
            GatewayError::Upstream { error, .. } => match error {
                UpstreamError::NoWorkers => ErrorCode::NoWorkers,
                UpstreamError::Unreachable => ErrorCode::UpstreamUnreachable,
                UpstreamError::Broken => ErrorCode::UpstreamFailed,
                UpstreamError::Timeout => ErrorCode::Timeout,
            },
            GatewayError::Internal => ErrorCode::Internal,
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The bounded `reason` label of metrics and audit lines.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::Auth(e) => e.reason(),
            GatewayError::TooManyConcurrent { .. } => "concurrency",
            GatewayError::BodyTooLarge { .. } => "max_body",
            GatewayError::BodyBudget => "body_budget",
            GatewayError::InvalidRequest(RequestError::TooManyRows { .. }) => "max_rows",
            GatewayError::InvalidRequest(_) => "invalid_request",
            GatewayError::Quota(d) => quota_reason(d),
            GatewayError::QuotaStoreUnavailable => "quota_store_error",
            // Everything else: the code itself.
            other => other.code().as_str(),
        }
    }

    /// Headers the answer carries besides `Content-Type`.
    pub fn headers(&self) -> Vec<(HeaderName, String)> {
        match self {
            GatewayError::MethodNotAllowed => vec![(ALLOW, "POST".into())],
            GatewayError::Auth(AuthError::Forbidden) => Vec::new(),
            GatewayError::Auth(_) => vec![(WWW_AUTHENTICATE, "Bearer".into())],
            GatewayError::TooManyConcurrent { limit } => vec![
                (RETRY_AFTER, "1".into()),
                (
                    HeaderName::from_static("ratelimit-policy"),
                    format!("\"concurrency\";q={limit}"),
                ),
                (
                    HeaderName::from_static("ratelimit"),
                    "\"concurrency\";r=0;t=1".into(),
                ),
            ],
            GatewayError::BodyBudget | GatewayError::QuotaStoreUnavailable => {
                vec![(RETRY_AFTER, "1".into())]
            }
            GatewayError::Quota(d) => d
                .headers()
                .into_iter()
                .filter_map(|(k, v)| Some((HeaderName::from_bytes(k.as_bytes()).ok()?, v)))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The answer: status, headers and the API's JSON error body.
    pub fn to_response(&self) -> Response<Body> {
        let body = medembed_api::ErrorBody::new(self.code(), self.to_string()).to_json();
        let mut r = Response::new(full(body));
        *r.status_mut() = self.status();
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in self.headers() {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
        r
    }
}

/// What a check that dry run can waive comes to: the value it yields, and
/// the refusal it waived, if any (counted with `enforced="false"`, not
/// answered).
#[derive(Debug)]
pub struct Admitted<T> {
    /// What the check yields (a concurrency slot, nothing).
    pub value: T,
    /// The refusal that would have been answered without dry run, or that
    /// the gateway counted while failing open.
    pub waived: Option<GatewayError>,
}

impl<T> Admitted<T> {
    /// Admitted with nothing waived.
    pub fn clean(value: T) -> Self {
        Admitted {
            value,
            waived: None,
        }
    }

    /// Admitted although `waived` would have refused.
    pub fn waiving(value: T, waived: GatewayError) -> Self {
        Admitted {
            value,
            waived: Some(waived),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use http_body_util::BodyExt;

    use crate::quota::PolicyState;

    fn header(r: &Response<Body>, name: &str) -> Option<String> {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    async fn body(r: Response<Body>) -> serde_json::Value {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&b).unwrap()
    }

    fn quota_refusal(d: Dimension) -> GatewayError {
        GatewayError::Quota(Box::new(Decision {
            allowed: false,
            refused_by: Some(d),
            retry_after: Duration::from_millis(12_300),
            policies: vec![PolicyState {
                dimension: d,
                limit: 10,
                remaining: 0,
                reset_s: 13,
            }],
        }))
    }

    /// Every variant, with its status, code and reason: the whole mapping
    /// at a glance.
    #[test]
    fn status_code_and_reason_of_every_variant() {
        let cases: Vec<(GatewayError, u16, &str, &str)> = vec![
            (GatewayError::NoRoute, 404, "not_found", "not_found"),
            (
                GatewayError::MethodNotAllowed,
                405,
                "method_not_allowed",
                "method_not_allowed",
            ),
            (
                GatewayError::Auth(AuthError::Missing),
                401,
                "unauthorized",
                "missing_credentials",
            ),
            (
                GatewayError::Auth(AuthError::BadKey),
                401,
                "unauthorized",
                "invalid_key",
            ),
            (
                GatewayError::Auth(AuthError::BadToken("expired")),
                401,
                "unauthorized",
                "invalid_token",
            ),
            (
                GatewayError::Auth(AuthError::Forbidden),
                403,
                "forbidden",
                "forbidden",
            ),
            (
                GatewayError::TooManyConcurrent { limit: 2 },
                429,
                "too_many_requests",
                "concurrency",
            ),
            (
                GatewayError::BodyTooLarge { limit: 10 },
                413,
                "payload_too_large",
                "max_body",
            ),
            (
                GatewayError::BodyUnreadable,
                400,
                "invalid_request",
                "invalid_request",
            ),
            (GatewayError::BodyTimeout, 408, "timeout", "timeout"),
            (GatewayError::BodyBudget, 503, "unavailable", "body_budget"),
            (
                GatewayError::InvalidRequest(RequestError::Json { line: 1, column: 2 }),
                400,
                "invalid_json",
                "invalid_request",
            ),
            (
                GatewayError::InvalidRequest(RequestError::Shape("no data".into())),
                400,
                "invalid_request",
                "invalid_request",
            ),
            (
                GatewayError::InvalidRequest(RequestError::TooManyRows { rows: 3, max: 2 }),
                400,
                "too_many_rows",
                "max_rows",
            ),
            (
                quota_refusal(Dimension::Requests),
                429,
                "too_many_requests",
                "requests_per_minute",
            ),
            (
                quota_refusal(Dimension::Images),
                429,
                "too_many_requests",
                "images_per_minute",
            ),
            (
                quota_refusal(Dimension::Bytes),
                429,
                "too_many_requests",
                "bytes_per_minute",
            ),
            (
                GatewayError::QuotaStoreUnavailable,
                503,
                "unavailable",
                "quota_store_error",
            ),
            (
                GatewayError::DeploymentNotFound,
                404,
                "deployment_not_found",
                "deployment_not_found",
            ),
            (GatewayError::NoTraffic, 503, "no_traffic", "no_traffic"),
            (
                GatewayError::UnknownDeployment,
                503,
                "no_workers",
                "no_workers",
            ),
            (
                GatewayError::Upstream {
                    error: UpstreamError::NoWorkers,
                    budget: Duration::from_secs(1),
                },
                503,
                "no_workers",
                "no_workers",
            ),
            (
                GatewayError::Upstream {
                    error: UpstreamError::Unreachable,
                    budget: Duration::from_secs(1),
                },
                503,
                "upstream_unreachable",
                "upstream_unreachable",
            ),
            (
                GatewayError::Upstream {
                    error: UpstreamError::Broken,
                    budget: Duration::from_secs(1),
                },
                502,
                "upstream_failed",
                "upstream_failed",
            ),
            (
                GatewayError::Upstream {
                    error: UpstreamError::Timeout,
                    budget: Duration::from_secs(1),
                },
                408,
                "timeout",
                "timeout",
            ),
            (GatewayError::Internal, 500, "internal", "internal"),
        ];
        for (e, status, code, reason) in cases {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert_eq!(e.code().as_str(), code, "{e:?}");
            assert_eq!(e.reason(), reason, "{e:?}");
        }
    }

    #[tokio::test]
    async fn answers_in_the_api_error_shape() {
        let r = GatewayError::BodyTooLarge { limit: 2048 }.to_response();
        assert_eq!(r.status(), 413);
        assert_eq!(header(&r, "content-type").unwrap(), "application/json");
        let b = body(r).await;
        assert_eq!(b["error"]["code"], "payload_too_large");
        assert_eq!(b["error"]["message"], "the request body exceeds 2048 bytes");
        let timeout = GatewayError::Upstream {
            error: UpstreamError::Timeout,
            budget: Duration::from_millis(700),
        };
        assert_eq!(
            timeout.to_string(),
            "the request did not complete within 700 ms"
        );
        assert_eq!(
            quota_refusal(Dimension::Images).to_string(),
            "quota exceeded (images_per_minute)"
        );
    }

    #[test]
    fn refusal_headers() {
        let r = GatewayError::MethodNotAllowed.to_response();
        assert_eq!(header(&r, "allow").unwrap(), "POST");
        let r = GatewayError::Auth(AuthError::BadKey).to_response();
        assert_eq!(header(&r, "www-authenticate").unwrap(), "Bearer");
        // 403: the caller is known; no challenge.
        let r = GatewayError::Auth(AuthError::Forbidden).to_response();
        assert_eq!(header(&r, "www-authenticate"), None);
        let r = GatewayError::TooManyConcurrent { limit: 2 }.to_response();
        assert_eq!(header(&r, "retry-after").unwrap(), "1");
        assert_eq!(
            header(&r, "ratelimit-policy").unwrap(),
            "\"concurrency\";q=2"
        );
        assert_eq!(header(&r, "ratelimit").unwrap(), "\"concurrency\";r=0;t=1");
        let r = GatewayError::BodyBudget.to_response();
        assert_eq!(header(&r, "retry-after").unwrap(), "1");
        let r = quota_refusal(Dimension::Images).to_response();
        assert_eq!(header(&r, "retry-after").unwrap(), "13");
        assert_eq!(
            header(&r, "ratelimit-policy").unwrap(),
            "\"images\";q=10;w=60"
        );
        assert_eq!(header(&r, "ratelimit").unwrap(), "\"images\";r=0;t=13");
        for quiet in [GatewayError::NoRoute, GatewayError::Internal] {
            let r = quiet.to_response();
            assert_eq!(r.headers().len(), 1, "{quiet:?}");
        }
    }
}
