//! Body: reading the request body, within its limits.
//!
//! Every limit on a body comes from [`BodyLimits`], built in one place
//! ([`BodyLimits::new`]) from the endpoint, the caller's quota, the
//! request's deadline and the gateway's [`BodyBudget`]. The body is refused
//! as soon as it is known to be too large: from `Content-Length` before a
//! byte is read, else while it streams in, so a client cannot make the
//! gateway buffer more than the limit. It must arrive before the endpoint's
//! deadline (408).
//!
//! The budget bounds the bytes of all bodies held at once, across every
//! connection, so the gateway's memory is bounded by its settings, not by
//! what clients send. A body takes its share before its bytes are kept: all
//! of a declared length at once, before a byte is read (until there is room
//! it waits unread, in the connection's buffers: TCP back-pressure), else
//! as its buffer grows. The share travels with the body's [`Bytes`] and is
//! given back when the last copy is dropped (after the worker's answer, and
//! any mirror's). No room before the deadline: 503 with `Retry-After`
//! ([`GatewayError::BodyBudget`]); a body larger than the whole budget:
//! 413.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::table::{ClientQuota, Endpoint};

/// The bytes of request bodies the gateway may hold at once, shared by
/// every connection. Counted in KiB, so a budget of terabytes fits the
/// semaphore.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    bytes: u64,
}

fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl BodyBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        BodyBudget {
            kib: Arc::new(Semaphore::new(kib(bytes) as usize)),
            bytes,
        }
    }

    /// The whole budget, in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes held by bodies now (to the KiB).
    pub fn held(&self) -> u64 {
        u64::from(kib(self.bytes)).saturating_sub(self.kib.available_permits() as u64) * 1024
    }

    /// A share of `bytes`, waiting for room until `deadline`.
    async fn take(&self, bytes: u64, deadline: Instant) -> Result<Share, GatewayError> {
        let n = kib(bytes);
        let permit = match self.kib.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => tokio::time::timeout_at(deadline, self.kib.clone().acquire_many_owned(n))
                .await
                .map_err(|_| GatewayError::BodyBudget)?
                .map_err(|_| GatewayError::Internal)?,
        };
        Ok(Share {
            permit,
            kib: u64::from(n),
        })
    }
}

/// Part of the budget, given back when dropped.
#[derive(Debug)]
struct Share {
    permit: OwnedSemaphorePermit,
    kib: u64,
}

impl Share {
    /// Grows the share to cover `bytes`, waiting for room until `deadline`.
    async fn grow_to(
        &mut self,
        budget: &BodyBudget,
        bytes: u64,
        deadline: Instant,
    ) -> Result<(), GatewayError> {
        let want = bytes.div_ceil(1024);
        if want > self.kib {
            let more = budget.take((want - self.kib) * 1024, deadline).await?;
            self.kib += more.kib;
            self.permit.merge(more.permit);
        }
        Ok(())
    }
}

/// A body's bytes with the share of the budget they hold.
struct Budgeted {
    buf: Vec<u8>,
    _share: Share,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

/// The limits one body is read under.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Most bytes: the endpoint's limit, lowered by the caller's quota.
    pub max_bytes: u64,
    /// When the whole body must have arrived.
    pub deadline: Instant,
    /// The budget shared by all bodies.
    pub budget: BodyBudget,
}

impl BodyLimits {
    /// The limits of a request to `endpoint` under `quota`, due by
    /// `deadline`, held within `budget`.
    pub fn new(
        endpoint: &Endpoint,
        quota: &ClientQuota,
        deadline: Instant,
        budget: &BodyBudget,
    ) -> Self {
        BodyLimits {
            max_bytes: quota
                .max_body_bytes
                .map_or(endpoint.max_body_bytes, |q| q.min(endpoint.max_body_bytes)),
            deadline,
            budget: budget.clone(),
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
/// The answer holds its share of the budget until its last copy is dropped.
pub async fn read<B>(
    body: B,
    headers: &HeaderMap,
    limits: &BodyLimits,
) -> Result<Bytes, GatewayError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let declared = declared_length(headers);
    let budget = &limits.budget;
    // The most this body may hold: a body larger than the whole budget
    // could never fit.
    let limit = limits.max_bytes.min(budget.bytes());
    if declared.is_some_and(|n| n > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    // A declared length takes its whole share before a byte is read.
    let first = declared.unwrap_or(0);
    let share = budget.take(first, limits.deadline).await?;
    let buf = Vec::with_capacity(first as usize);
    tokio::time::timeout_at(
        limits.deadline,
        collect(body, buf, share, budget, limit, limits.deadline),
    )
    .await
    .map_err(|_| GatewayError::BodyTimeout)?
}

async fn collect<B>(
    mut body: B,
    mut buf: Vec<u8>,
    mut share: Share,
    budget: &BodyBudget,
    limit: u64,
    deadline: Instant,
) -> Result<Bytes, GatewayError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| GatewayError::BodyUnreadable)?;
        if let Ok(data) = frame.into_data() {
            let len = buf.len() as u64 + data.len() as u64;
            if len > limit {
                return Err(GatewayError::BodyTooLarge { limit });
            }
            if len > buf.capacity() as u64 {
                // Grow by doubling (within the limit), the share first.
                let cap = len.max(2 * buf.capacity() as u64).min(limit);
                share.grow_to(budget, cap, deadline).await?;
                buf.reserve_exact(cap as usize - buf.len());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from_owner(Budgeted { buf, _share: share }))
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
            budget: BodyBudget::new(1 << 30),
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
        let b = BodyBudget::new(1 << 20);
        assert_eq!(BodyLimits::new(&e, &q(None), at, &b).max_bytes, 1000);
        assert_eq!(BodyLimits::new(&e, &q(Some(10)), at, &b).max_bytes, 10);
        assert_eq!(BodyLimits::new(&e, &q(Some(5000)), at, &b).max_bytes, 1000);
        assert_eq!(BodyLimits::new(&e, &q(None), at, &b).deadline, at);
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

    fn limits_in(max_bytes: u64, budget: &BodyBudget, within: Duration) -> BodyLimits {
        BodyLimits {
            max_bytes,
            deadline: Instant::now() + within,
            budget: budget.clone(),
        }
    }

    /// The budget is shared: a declared body takes its share before it is
    /// read and holds it as long as any copy of its bytes lives; a body
    /// that finds no room waits, unread, and goes on once room is given
    /// back.
    #[tokio::test(start_paused = true)]
    async fn bodies_share_the_budget_and_wait_for_room() {
        let budget = BodyBudget::new(4096);
        let l = limits_in(4096, &budget, Duration::from_secs(5));
        let first = read(chunked(3, 1024), &length(3072), &l).await.unwrap();
        assert_eq!(budget.held(), 3072);
        let copy = first.clone();
        drop(first);
        assert_eq!(budget.held(), 3072, "a copy still holds the share");
        // The second body does not fit: it waits without being polled.
        let polled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let p = polled.clone();
        let second = StreamBody::new(stream::poll_fn(move |_| {
            p.store(true, std::sync::atomic::Ordering::SeqCst);
            std::task::Poll::Ready(None::<Result<Frame<Bytes>, Infallible>>)
        }));
        let (l2, h) = (l.clone(), length(2048));
        let waiting = tokio::spawn(async move { read(second, &h, &l2).await.map(|b| b.len()) });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        assert!(!polled.load(std::sync::atomic::Ordering::SeqCst));
        drop(copy);
        assert_eq!(waiting.await.unwrap().unwrap(), 0);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_room_before_the_deadline_is_503_and_too_big_for_the_budget_is_413() {
        let budget = BodyBudget::new(4096);
        let l = limits_in(1 << 20, &budget, Duration::from_secs(2));
        let held = read(chunked(4, 1024), &length(4096), &l).await.unwrap();
        let t = Instant::now();
        let e = read(chunked(1, 10), &length(10), &l).await.unwrap_err();
        assert_eq!(e, GatewayError::BodyBudget);
        assert_eq!((e.status().as_u16(), e.reason()), (503, "body_budget"));
        assert_eq!(Instant::now() - t, Duration::from_secs(2));
        // A chunked body waits for room as it grows, too.
        let l = limits_in(1 << 20, &budget, Duration::from_secs(2));
        let e = read(chunked(2, 512), &HeaderMap::new(), &l)
            .await
            .unwrap_err();
        assert_eq!(e, GatewayError::BodyBudget);
        drop(held);
        // Larger than the whole budget: refused at once, declared or not.
        let e = read(chunked(1, 10), &length(5000), &l).await.unwrap_err();
        assert_eq!(e, GatewayError::BodyTooLarge { limit: 4096 });
        let e = read(chunked(5, 1024), &HeaderMap::new(), &l)
            .await
            .unwrap_err();
        assert_eq!(e, GatewayError::BodyTooLarge { limit: 4096 });
        assert_eq!(budget.held(), 0, "refused bodies give their share back");
    }

    /// A chunked body's share follows its buffer's capacity, never more
    /// than the body's limit.
    #[tokio::test]
    async fn a_chunked_body_takes_its_share_as_it_grows() {
        let budget = BodyBudget::new(1 << 20);
        let l = limits_in(10_000, &budget, Duration::from_secs(5));
        let b = read(chunked(9, 1024), &HeaderMap::new(), &l).await.unwrap();
        assert_eq!(b.len(), 9216);
        assert!(
            budget.held() >= 9216 && budget.held() <= 10_240,
            "{}",
            budget.held()
        );
        drop(b);
        assert_eq!(budget.held(), 0);
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
