//! Body: reading the request body, within its limits.
//!
//! Every limit on a body comes from [`BodyLimits`], built in one place
//! ([`BodyLimits::new`]) from the endpoint, the caller's quota and the
//! request's deadline; a limit shared across requests (a global byte budget)
//! belongs there too. The body is refused as soon as it is known to be too
//! large: from `Content-Length` before a byte is read, else while it streams
//! in, so a client cannot make the gateway buffer more than the limit. It
//! must arrive before the endpoint's deadline (408).

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::table::{ClientQuota, Endpoint};

/// Largest buffer reserved up front from a declared length; a larger body
/// grows the buffer as it arrives.
const MAX_RESERVE: usize = 16 << 20;

/// The limits one body is read under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Most bytes: the endpoint's limit, lowered by the caller's quota.
    pub max_bytes: u64,
    /// When the whole body must have arrived.
    pub deadline: Instant,
}

impl BodyLimits {
    /// The limits of a request to `endpoint` under `quota`, due by
    /// `deadline`.
    pub fn new(endpoint: &Endpoint, quota: &ClientQuota, deadline: Instant) -> Self {
        BodyLimits {
            max_bytes: quota
                .max_body_bytes
                .map_or(endpoint.max_body_bytes, |q| q.min(endpoint.max_body_bytes)),
            deadline,
        }
    }
}

/// The `Content-Length` the client declared, if any and valid.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Reads the whole body (whose request carried `headers`) within `limits`.
pub async fn read<B>(
    body: B,
    headers: &HeaderMap,
    limits: &BodyLimits,
) -> Result<Bytes, GatewayError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > limits.max_bytes) {
        return Err(GatewayError::BodyTooLarge {
            limit: limits.max_bytes,
        });
    }
    let hint = declared.unwrap_or(0).min(limits.max_bytes) as usize;
    tokio::time::timeout_at(limits.deadline, collect(body, limits.max_bytes, hint))
        .await
        .map_err(|_| GatewayError::BodyTimeout)?
}

async fn collect<B>(mut body: B, limit: u64, hint: usize) -> Result<Bytes, GatewayError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut buf = BytesMut::with_capacity(hint.min(MAX_RESERVE));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| GatewayError::BodyUnreadable)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() as u64 + data.len() as u64 > limit {
                return Err(GatewayError::BodyTooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use std::convert::Infallible;
    use std::time::Duration;

    use futures::{stream, StreamExt};
    use http::HeaderValue;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    use crate::stages::testing;

    fn limits(max_bytes: u64) -> BodyLimits {
        BodyLimits {
            max_bytes,
            deadline: Instant::now() + Duration::from_secs(5),
        }
    }

    fn length(n: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        h
    }

    /// A body streamed in `chunks` chunks of `size` bytes, with no length.
    fn chunked(
        chunks: usize,
        size: usize,
    ) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Unpin> {
        StreamBody::new(stream::iter(
            (0..chunks).map(move |_| Ok(Frame::data(Bytes::from(vec![b' '; size])))),
        ))
    }

    #[test]
    fn the_quota_can_only_lower_the_endpoints_limit() {
        let e = testing::endpoint("e", |e| e.max_body_bytes = 1000);
        let at = Instant::now();
        let q = |m| ClientQuota {
            max_body_bytes: m,
            ..Default::default()
        };
        assert_eq!(BodyLimits::new(&e, &q(None), at).max_bytes, 1000);
        assert_eq!(BodyLimits::new(&e, &q(Some(10)), at).max_bytes, 10);
        assert_eq!(BodyLimits::new(&e, &q(Some(5000)), at).max_bytes, 1000);
        assert_eq!(BodyLimits::new(&e, &q(None), at).deadline, at);
    }

    #[tokio::test]
    async fn within_the_limit() {
        let b = read(Full::new(Bytes::from_static(b"{}")), &length(2), &limits(2))
            .await
            .unwrap();
        assert_eq!(&b[..], b"{}");
        let b = read(chunked(4, 512), &HeaderMap::new(), &limits(2048))
            .await
            .unwrap();
        assert_eq!(b.len(), 2048);
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_unread() {
        // The body itself is never polled: an endless one would hang.
        let endless = StreamBody::new(stream::pending::<Result<Frame<Bytes>, Infallible>>());
        let e = read(endless, &length(2049), &limits(2048))
            .await
            .unwrap_err();
        assert_eq!(e, GatewayError::BodyTooLarge { limit: 2048 });
        assert_eq!(e.status(), 413);
    }

    #[tokio::test]
    async fn a_streamed_body_over_the_limit_is_refused_as_it_arrives() {
        let e = read(chunked(10, 512), &HeaderMap::new(), &limits(2048))
            .await
            .unwrap_err();
        assert_eq!(e, GatewayError::BodyTooLarge { limit: 2048 });
        // A body longer than it declared is refused too.
        let e = read(chunked(10, 512), &length(100), &limits(2048))
            .await
            .unwrap_err();
        assert_eq!(e, GatewayError::BodyTooLarge { limit: 2048 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_past_the_deadline_times_out() {
        let stalled = StreamBody::new(
            stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"{")))])
                .chain(stream::pending()),
        );
        let l = limits(2048);
        let t = Instant::now();
        let e = read(stalled, &HeaderMap::new(), &l).await.unwrap_err();
        assert_eq!(e, GatewayError::BodyTimeout);
        assert_eq!(e.status(), 408);
        assert_eq!(Instant::now() - t, Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_broken_body_is_unreadable() {
        let broken = StreamBody::new(stream::iter([
            Ok(Frame::data(Bytes::from_static(b"{"))),
            Err(std::io::Error::other("reset")),
        ]));
        let e = read(broken, &HeaderMap::new(), &limits(2048))
            .await
            .unwrap_err();
        assert_eq!(e, GatewayError::BodyUnreadable);
        assert_eq!(e.status(), 400);
    }
}
