//! Parse: is the body a scoring request, and what does it ask for.
//!
//! The body is checked with the worker's own parser, in its counting form
//! ([`medembed_api::count_request`]: same checks, same words, no strings
//! kept and no JSON tree built; `data` or `index` past the row cap is
//! refused as it is read), so the gateway refuses exactly what a worker
//! would before any worker sees it (400), at a cost bounded by the cap. The
//! row cap is the endpoint's, lowered by the caller's quota. What comes out
//! is what the quotas and the audit line need: rows and images. Large
//! bodies are parsed off the async threads so that one big request does not
//! stall every other connection.

use bytes::Bytes;
use medembed_api::RequestLimits;

use crate::error::GatewayError;
use crate::table::{ClientQuota, Endpoint};

/// Bodies larger than this are parsed on the blocking pool.
const PARSE_INLINE_MAX: usize = 256 * 1024;

/// What a valid request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Rows (`input_data.data` entries).
    pub rows: usize,
    /// Rows carrying an image.
    pub images: usize,
}

/// Most rows per request: the endpoint's limit, lowered by the quota.
pub fn row_cap(endpoint: &Endpoint, quota: &ClientQuota) -> usize {
    quota
        .max_rows_per_request
        .map_or(endpoint.max_rows, |q| q.min(endpoint.max_rows)) as usize
}

/// Parses `body` as a scoring request of at most `max_rows` rows.
pub async fn count(body: &Bytes, max_rows: usize) -> Result<Counts, GatewayError> {
    let limits = RequestLimits { max_rows };
    let parsed = if body.len() > PARSE_INLINE_MAX {
        let b = body.clone();
        tokio::task::spawn_blocking(move || counts(&b, &limits))
            .await
            .map_err(|_| GatewayError::Internal)?
    } else {
        counts(body, &limits)
    };
    parsed.map_err(GatewayError::InvalidRequest)
}

fn counts(body: &[u8], limits: &RequestLimits) -> Result<Counts, medembed_api::RequestError> {
    medembed_api::count_request(body, limits).map(|c| Counts {
        rows: c.rows,
        images: c.images,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use medembed_api::{ErrorCode, RequestError};

    use crate::stages::testing;

    /// `images` image rows and `texts` text rows.
    fn body(images: usize, texts: usize) -> Bytes {
        let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==";
        let mut rows: Vec<String> = (0..images).map(|_| format!(r#"["{png}",""]"#)).collect();
        rows.extend((0..texts).map(|_| r#"["","x-ray chest"]"#.to_string()));
        let index: Vec<String> = (0..rows.len()).map(|i| i.to_string()).collect();
        Bytes::from(format!(
            r#"{{"input_data":{{"columns":["image","text"],"index":[{}],"data":[{}]}}}}"#,
            index.join(","),
            rows.join(",")
        ))
    }

    #[tokio::test]
    async fn counts_rows_and_images() {
        assert_eq!(
            count(&body(3, 2), 10).await.unwrap(),
            Counts { rows: 5, images: 3 }
        );
        assert_eq!(
            count(&body(0, 1), 10).await.unwrap(),
            Counts { rows: 1, images: 0 }
        );
    }

    #[tokio::test]
    async fn a_large_body_is_parsed_off_the_async_threads_alike() {
        let big = body(3000, 0);
        assert!(big.len() > PARSE_INLINE_MAX);
        assert_eq!(
            count(&big, 4000).await.unwrap(),
            Counts {
                rows: 3000,
                images: 3000
            }
        );
        let e = count(&big, 2999).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::TooManyRows);
    }

    #[tokio::test]
    async fn parse_errors_keep_the_workers_codes() {
        let e = count(&Bytes::from_static(b"{not json"), 10)
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            GatewayError::InvalidRequest(RequestError::Json { .. })
        ));
        assert_eq!(
            (e.status().as_u16(), e.code()),
            (400, ErrorCode::InvalidJson)
        );
        assert_eq!(e.reason(), "invalid_request");
        let e = count(&Bytes::from_static(br#"{"input_data":{}}"#), 10)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidRequest);
    }

    #[tokio::test]
    async fn the_row_cap_refuses_with_max_rows() {
        let e = count(&body(2, 1), 2).await.unwrap_err();
        assert_eq!(
            e,
            GatewayError::InvalidRequest(RequestError::TooManyRows { rows: 3, max: 2 })
        );
        assert_eq!(e.reason(), "max_rows");
        assert!(count(&body(2, 1), 3).await.is_ok());
    }

    #[test]
    fn the_quota_can_only_lower_the_row_cap() {
        let e = testing::endpoint("e", |e| e.max_rows = 16);
        let q = |m| ClientQuota {
            max_rows_per_request: m,
            ..Default::default()
        };
        assert_eq!(row_cap(&e, &q(None)), 16);
        assert_eq!(row_cap(&e, &q(Some(4))), 4);
        assert_eq!(row_cap(&e, &q(Some(64))), 16);
    }
}
