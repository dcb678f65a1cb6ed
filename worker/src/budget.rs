//! The byte budget for decoded image rasters.
//!
//! A PNG of a few kilobytes can declare 6000×6000 pixels; decoding it
//! allocates over 100 MB. The request-body budget does not see that, so the
//! decode threads take their decoded size from this budget first, computed
//! from the image header before the decoder allocates ([`crate::raster::Footprint`]),
//! and give it back as the raster shrinks (after the resize) and is consumed
//! into a batch. Decode threads are OS threads, so waiting blocks (on a
//! condition variable), bounded by the item's deadline.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntGauge;

/// Why no room was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// More than the whole budget: it can never fit.
    Never,
    /// The deadline passed while waiting.
    Expired,
    /// The caller gave up while waiting (its client is gone).
    Abandoned,
}

/// A counting byte budget that blocks for room.
#[derive(Debug)]
pub struct MemoryBudget {
    total: u64,
    used: Mutex<u64>,
    freed: Condvar,
    gauge: IntGauge,
}

/// Bytes held from a [`MemoryBudget`]; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

/// How often a waiter checks whether its caller is still there.
const RECHECK: Duration = Duration::from_millis(50);

impl MemoryBudget {
    /// A budget of `total` bytes, its use mirrored into `gauge`.
    pub fn new(total: u64, gauge: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            total,
            used: Mutex::new(0),
            freed: Condvar::new(),
            gauge,
        })
    }

    /// The budget's size.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        *self.lock()
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `bytes`, waiting for room until `deadline` while `gone()` is
    /// false.
    pub fn acquire(
        self: &Arc<Self>,
        bytes: u64,
        deadline: Instant,
        gone: &dyn Fn() -> bool,
    ) -> Result<Reservation, NoRoom> {
        if bytes > self.total {
            return Err(NoRoom::Never);
        }
        let mut used = self.lock();
        while *used + bytes > self.total {
            let now = Instant::now();
            if now >= deadline {
                return Err(NoRoom::Expired);
            }
            if gone() {
                return Err(NoRoom::Abandoned);
            }
            let wait = (deadline - now).min(RECHECK);
            used = self
                .freed
                .wait_timeout(used, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *used += bytes;
        self.gauge.set(i64::try_from(*used).unwrap_or(i64::MAX));
        Ok(Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut used = self.lock();
        *used = used.saturating_sub(bytes);
        self.gauge.set(i64::try_from(*used).unwrap_or(i64::MAX));
        drop(used);
        self.freed.notify_all();
    }
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives back all but `bytes` (no-op when already at most that).
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(total: u64) -> Arc<MemoryBudget> {
        MemoryBudget::new(total, IntGauge::new("g", "g").unwrap())
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn takes_shrinks_and_gives_back() {
        let b = budget(100);
        let mut r = b.acquire(60, later(), &|| false).unwrap();
        assert_eq!((b.used(), b.gauge.get()), (60, 60));
        r.shrink_to(10);
        assert_eq!((r.bytes(), b.used()), (10, 10));
        let s = b.acquire(90, later(), &|| false).unwrap();
        drop(r);
        drop(s);
        assert_eq!((b.used(), b.gauge.get()), (0, 0));
        assert_eq!(
            b.acquire(101, later(), &|| false).unwrap_err(),
            NoRoom::Never
        );
    }

    #[test]
    fn waits_for_room_until_the_deadline_or_the_caller_leaves() {
        let b = budget(100);
        let held = b.acquire(80, later(), &|| false).unwrap();
        let started = Instant::now();
        let soon = started + Duration::from_millis(200);
        assert_eq!(b.acquire(30, soon, &|| false).unwrap_err(), NoRoom::Expired);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(
            b.acquire(30, later(), &|| true).unwrap_err(),
            NoRoom::Abandoned
        );

        // Room freed by another thread wakes the waiter.
        let waiter = std::thread::spawn({
            let b = b.clone();
            move || b.acquire(30, later(), &|| false).map(|r| r.bytes())
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        assert_eq!(waiter.join().unwrap(), Ok(30));
        assert_eq!(b.used(), 0);
    }
}
