//! Concurrency: how many requests a client may have in flight at once.
//!
//! The limit is the quota's `concurrentRequests`, divided across the
//! gateway's replicas (rounded up, at least one): concurrency is always
//! counted per replica, even with a shared quota store. A slot is taken
//! before the body is read, so a client at its limit costs no body buffer,
//! and it is held until the answer has been sent ([`crate::quota::Slot`]
//! travels with the response body). In dry run a refused request still
//! takes its slot and counts the refusal.

use crate::error::{Admitted, GatewayError};
use crate::quota::{Concurrency, Slot};
use crate::stages::auth::Caller;
use crate::table::ClientQuota;

/// The concurrency limit on this replica, if any.
pub fn limit(quota: &ClientQuota, replicas: u32) -> Option<u32> {
    quota
        .concurrent_requests
        .map(|c| c.div_ceil(replicas.max(1)).max(1))
}

/// Takes one of the caller's slots.
pub fn slot(
    concurrency: &Concurrency,
    caller: &Caller,
    replicas: u32,
) -> Result<Admitted<Slot>, GatewayError> {
    let limit = limit(&caller.quota, replicas);
    match (
        concurrency.acquire(&caller.quota_key, limit, caller.dry_run),
        limit,
    ) {
        (Ok(slot), _) => Ok(Admitted::clean(slot)),
        // Refusals only happen under a limit.
        (Err(slot), Some(limit)) if caller.dry_run => Ok(Admitted::waiving(
            slot,
            GatewayError::TooManyConcurrent { limit },
        )),
        (Err(_), limit) => Err(GatewayError::TooManyConcurrent {
            limit: limit.unwrap_or(0),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn caller(limit: Option<u32>, dry_run: bool) -> Caller {
        Caller {
            id: "c".into(),
            quota: ClientQuota {
                concurrent_requests: limit,
                ..Default::default()
            },
            dry_run,
            quota_key: "c".into(),
        }
    }

    #[test]
    fn limits_are_divided_across_replicas() {
        let q = |c| ClientQuota {
            concurrent_requests: Some(c),
            ..Default::default()
        };
        assert_eq!(limit(&q(10), 1), Some(10));
        assert_eq!(limit(&q(10), 3), Some(4));
        assert_eq!(limit(&q(1), 3), Some(1));
        assert_eq!(limit(&q(5), 0), Some(5));
        assert_eq!(limit(&ClientQuota::default(), 3), None);
    }

    #[test]
    fn slots_are_held_until_dropped() {
        let conc = Concurrency::default();
        let c = caller(Some(2), false);
        let a = slot(&conc, &c, 1).unwrap().value;
        let _b = slot(&conc, &c, 1).unwrap().value;
        let e = slot(&conc, &c, 1).unwrap_err();
        assert_eq!(e, GatewayError::TooManyConcurrent { limit: 2 });
        assert_eq!(e.status(), 429);
        drop(a);
        assert!(slot(&conc, &c, 1).unwrap().waived.is_none());
        // Two replicas: one slot each.
        let conc = Concurrency::default();
        let _one = slot(&conc, &c, 2).unwrap();
        assert!(slot(&conc, &c, 2).is_err());
    }

    #[test]
    fn dry_run_admits_and_names_the_waived_refusal() {
        let conc = Concurrency::default();
        let c = caller(Some(1), true);
        let first = slot(&conc, &c, 1).unwrap();
        assert!(first.waived.is_none());
        let second = slot(&conc, &c, 1).unwrap();
        assert_eq!(
            second.waived,
            Some(GatewayError::TooManyConcurrent { limit: 1 })
        );
        // The waived request holds its slot too.
        drop(first);
        assert!(slot(&conc, &caller(Some(1), false), 1).is_err());
    }

    #[test]
    fn no_limit_never_refuses() {
        let conc = Concurrency::default();
        let c = caller(None, false);
        let held: Vec<_> = (0..100).map(|_| slot(&conc, &c, 1).unwrap()).collect();
        assert!(held.iter().all(|a| a.waived.is_none()));
    }
}
