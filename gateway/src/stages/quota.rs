//! Quota: the caller's per-minute limits (requests, images, body bytes).
//!
//! Checked in two steps: requests per minute before the body is read
//! ([`BEFORE_BODY`], so a throttled client cannot make the gateway read its
//! body), images and bytes once the body is parsed ([`AFTER_PARSE`]). A
//! request admitted by the first step and refused by the second has used
//! its request.
//!
//! The arithmetic and the state live in [`crate::quota`]; this stage decides
//! what a verdict means for the request. The rates are the quota's, divided
//! across replicas unless the store is shared ([`Store::is_shared`]). A
//! refusal is a 429 carrying `Retry-After`, `RateLimit-Policy` and
//! `RateLimit` ([`GatewayError::Quota`]); in dry run it is only counted. A
//! shared store that cannot answer in time either admits the request (fails
//! open, the default) or refuses it with 503 and `Retry-After` (fails
//! closed), as configured ([`StoreFailure`]); both count
//! [`GatewayError::QuotaStoreUnavailable`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::StoreFailure;
use crate::error::{Admitted, GatewayError};
use crate::quota::{Cost, Decision, Dimension, Rates, Store};
use crate::stages::auth::Caller;

/// The dimension checked before the body is read.
pub const BEFORE_BODY: [Dimension; 1] = [Dimension::Requests];

/// The dimensions checked once the body is parsed.
pub const AFTER_PARSE: [Dimension; 2] = [Dimension::Images, Dimension::Bytes];

/// The caller's rates on this replica.
pub fn rates(store: &Store, caller: &Caller, replicas: u32) -> Rates {
    let share = if store.is_shared() { 1 } else { replicas };
    Rates::from_quota(&caller.quota, share)
}

/// Checks the caller's rates in `dims` and, when admitted, commits the
/// request's `cost`; `on_failure` says what a store failure means.
pub async fn check(
    store: &Store,
    caller: &Caller,
    replicas: u32,
    dims: &[Dimension],
    cost: &Cost,
    on_failure: StoreFailure,
) -> Result<Admitted<()>, GatewayError> {
    let rates = rates(store, caller, replicas).only(dims);
    match store.check(&caller.quota_key, &rates, cost).await {
        Ok(decision) => verdict(decision, caller.dry_run),
        Err(e) => {
            STORE_DOWN.warn(&e, on_failure);
            match on_failure {
                StoreFailure::Closed if !caller.dry_run => Err(GatewayError::QuotaStoreUnavailable),
                _ => Ok(Admitted::waiving((), GatewayError::QuotaStoreUnavailable)),
            }
        }
    }
}

/// At most one warning per [`WARN_EVERY`] while the shared store is
/// unreachable: during an outage every request fails open, and one line per
/// request would flood the log (the metric counts each).
static STORE_DOWN: Throttled = Throttled::new();

/// The least time between two "quota store unavailable" warnings.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A warning logged at most once per [`WARN_EVERY`], with the count of those
/// left out since the last.
struct Throttled {
    last: Mutex<Option<Instant>>,
    skipped: AtomicU64,
}

impl Throttled {
    const fn new() -> Self {
        Throttled {
            last: Mutex::new(None),
            skipped: AtomicU64::new(0),
        }
    }

    fn warn(&self, e: &dyn std::fmt::Display, on_failure: StoreFailure) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        let skipped = self.skipped.swap(0, Ordering::Relaxed);
        match on_failure {
            StoreFailure::Open => {
                tracing::warn!(error = %e, skipped, "quota store unavailable; admitting (fails open)")
            }
            StoreFailure::Closed => {
                tracing::warn!(error = %e, skipped, "quota store unavailable; refusing (fails closed)")
            }
        }
    }
}

/// What a store's decision means for the request.
pub fn verdict(decision: Decision, dry_run: bool) -> Result<Admitted<()>, GatewayError> {
    if decision.allowed {
        return Ok(Admitted::clean(()));
    }
    let refusal = GatewayError::Quota(Box::new(decision));
    if dry_run {
        Ok(Admitted::waiving((), refusal))
    } else {
        Err(refusal)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use std::time::Duration;

    use crate::quota::LocalStore;
    use crate::table::ClientQuota;

    fn caller(quota: ClientQuota, dry_run: bool) -> Caller {
        Caller {
            id: "c".into(),
            quota,
            dry_run,
            quota_key: "c".into(),
        }
    }

    /// One check on one replica, failing open.
    async fn open(
        store: &Store,
        c: &Caller,
        dims: &[Dimension],
        cost: &Cost,
    ) -> Result<Admitted<()>, GatewayError> {
        check(store, c, 1, dims, cost, StoreFailure::Open).await
    }

    fn header(e: &GatewayError, name: &str) -> String {
        e.headers()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    #[test]
    fn local_rates_are_divided_across_replicas() {
        let c = caller(
            ClientQuota {
                requests_per_minute: Some(100),
                ..Default::default()
            },
            false,
        );
        let local = Store::Local(LocalStore::default());
        assert_eq!(rates(&local, &c, 3).per_minute, [Some(34), None, None]);
        assert_eq!(rates(&local, &c, 1).per_minute, [Some(100), None, None]);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_then_429_with_headers() {
        let store = Store::Local(LocalStore::default());
        let c = caller(
            ClientQuota {
                requests_per_minute: Some(3),
                ..Default::default()
            },
            false,
        );
        for _ in 0..3 {
            let a = open(&store, &c, &Dimension::ALL, &Cost::new(0, 10))
                .await
                .unwrap();
            assert!(a.waived.is_none());
        }
        let e = open(&store, &c, &Dimension::ALL, &Cost::new(0, 10))
            .await
            .unwrap_err();
        assert_eq!(e.status(), 429);
        assert_eq!(e.reason(), "requests_per_minute");
        assert_eq!(header(&e, "retry-after"), "20");
        assert_eq!(header(&e, "ratelimit-policy"), "\"requests\";q=3;w=60");
        assert!(header(&e, "ratelimit").starts_with("\"requests\";r=0;t="));
        // Time refills it.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(open(&store, &c, &Dimension::ALL, &Cost::new(0, 10))
            .await
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn images_and_bytes_name_their_dimension() {
        let store = Store::Local(LocalStore::default());
        let c = caller(
            ClientQuota {
                images_per_minute: Some(10),
                bytes_per_minute: Some(1000),
                ..Default::default()
            },
            false,
        );
        assert!(open(&store, &c, &Dimension::ALL, &Cost::new(8, 100))
            .await
            .is_ok());
        let e = open(&store, &c, &Dimension::ALL, &Cost::new(4, 100))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "images_per_minute");
        assert!(header(&e, "ratelimit").starts_with("\"images\";r=2;"));
        let e = open(&store, &c, &Dimension::ALL, &Cost::new(0, 950))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "bytes_per_minute");
        assert!(header(&e, "ratelimit-policy").contains("\"bytes\";q=1000;w=60"));
    }

    /// The request count is checked before the body (with a request's
    /// cost only), images and bytes after the parse; each step sees only
    /// its own dimensions.
    #[tokio::test(start_paused = true)]
    async fn the_two_steps_check_their_own_dimensions() {
        let store = Store::Local(LocalStore::default());
        let c = caller(
            ClientQuota {
                requests_per_minute: Some(1),
                images_per_minute: Some(1),
                ..Default::default()
            },
            false,
        );
        assert!(open(&store, &c, &BEFORE_BODY, &Cost::request())
            .await
            .is_ok());
        let e = open(&store, &c, &BEFORE_BODY, &Cost::request())
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "requests_per_minute");
        // The request dimension is spent, yet images still have room.
        assert!(open(&store, &c, &AFTER_PARSE, &Cost::new(1, 10))
            .await
            .is_ok());
        let e = open(&store, &c, &AFTER_PARSE, &Cost::new(1, 10))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "images_per_minute");
    }

    #[test]
    fn dry_run_admits_and_names_the_waived_refusal() {
        let refused = Decision {
            allowed: false,
            refused_by: Some(Dimension::Images),
            retry_after: Duration::from_secs(3),
            policies: Vec::new(),
        };
        let a = verdict(refused.clone(), true).unwrap();
        assert_eq!(a.waived.unwrap().reason(), "images_per_minute");
        assert!(verdict(refused, false).is_err());
        let allowed = Decision {
            allowed: true,
            refused_by: None,
            retry_after: Duration::ZERO,
            policies: Vec::new(),
        };
        assert!(verdict(allowed, false).unwrap().waived.is_none());
    }

    #[tokio::test]
    async fn an_unreachable_shared_store_fails_open_and_is_counted() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = Store::Redis(
            crate::quota::RedisStore::new(&format!("redis://127.0.0.1:{port}")).unwrap(),
        );
        let c = caller(
            ClientQuota {
                requests_per_minute: Some(1),
                ..Default::default()
            },
            false,
        );
        // Shared: the full rate on every replica.
        assert_eq!(rates(&store, &c, 3).per_minute, [Some(1), None, None]);
        for _ in 0..3 {
            let a = check(
                &store,
                &c,
                3,
                &Dimension::ALL,
                &Cost::new(0, 10),
                StoreFailure::Open,
            )
            .await
            .unwrap();
            assert_eq!(a.waived, Some(GatewayError::QuotaStoreUnavailable));
        }
        // Failing closed: refused with 503 and Retry-After; a dry-run client
        // is still only counted.
        let e = check(
            &store,
            &c,
            3,
            &Dimension::ALL,
            &Cost::new(0, 10),
            StoreFailure::Closed,
        )
        .await
        .unwrap_err();
        assert_eq!(e, GatewayError::QuotaStoreUnavailable);
        assert_eq!(e.status(), 503);
        assert_eq!(header(&e, "retry-after"), "1");
        let dry = caller(c.quota.clone(), true);
        let a = check(
            &store,
            &dry,
            3,
            &Dimension::ALL,
            &Cost::new(0, 10),
            StoreFailure::Closed,
        )
        .await
        .unwrap();
        assert_eq!(a.waived, Some(GatewayError::QuotaStoreUnavailable));
    }

    /// A store answering garbage (a reply starting with CRLF once panicked a
    /// hand-written parser) is a store failure, not a crash.
    #[tokio::test]
    async fn a_garbled_store_reply_is_a_store_failure() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0
                            || s.write_all(b"\r\n\r\n$-7\r\n*99999999999\r\n")
                                .await
                                .is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        let store = Store::Redis(
            crate::quota::RedisStore::new(&format!("redis://127.0.0.1:{port}")).unwrap(),
        );
        let c = caller(
            ClientQuota {
                requests_per_minute: Some(5),
                ..Default::default()
            },
            false,
        );
        for on_failure in [StoreFailure::Open, StoreFailure::Closed] {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                check(
                    &store,
                    &c,
                    1,
                    &Dimension::ALL,
                    &Cost::new(0, 10),
                    on_failure,
                ),
            )
            .await
            .expect("a store failure is answered within the timeout");
            match on_failure {
                StoreFailure::Open => {
                    assert_eq!(r.unwrap().waived, Some(GatewayError::QuotaStoreUnavailable))
                }
                StoreFailure::Closed => {
                    assert_eq!(r.unwrap_err(), GatewayError::QuotaStoreUnavailable)
                }
            }
        }
    }

    #[tokio::test]
    async fn no_limits_admit_everything() {
        let store = Store::Local(LocalStore::default());
        let c = caller(ClientQuota::default(), false);
        for _ in 0..1000 {
            assert!(open(&store, &c, &Dimension::ALL, &Cost::new(100, 1 << 20))
                .await
                .unwrap()
                .waived
                .is_none());
        }
    }

    #[test]
    fn store_outage_warnings_are_throttled() {
        let t = Throttled::new();
        for _ in 0..3 {
            t.warn(&"connection refused", StoreFailure::Open);
        }
        assert_eq!(t.skipped.load(Ordering::Relaxed), 2);
    }
}
