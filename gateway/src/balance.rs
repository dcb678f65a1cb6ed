//! Picking a worker: power of two choices over load, with penalties.
//!
//! For each request two distinct workers are drawn at random and the less
//! loaded one wins ("The Power of Two Choices in Randomized Load Balancing",
//! Mitzenmacher 2001; as in Finagle and tower's `p2c`). Load is the requests
//! this gateway has in flight to the worker plus the queue depth the worker
//! last reported on its `/metrics` (`medembed_worker_queue_depth`), so
//! requests sent by other gateway replicas count too.
//!
//! A worker that answered 429 or 503, or refused a connection, is avoided for
//! a short penalty. When every worker is penalised the gateway fails open and
//! picks among all of them: a penalty is a hint, not a verdict.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// One worker (an `IP:port` serving the scoring API) and what the gateway
/// knows of its load.
#[derive(Debug)]
pub struct Worker {
    /// `host:port` of the worker.
    pub authority: String,
    /// The name its TLS certificate must carry (its deployment's
    /// `<service>.<namespace>.svc`), when its deployment gives one.
    pub server_name: Option<String>,
    in_flight: AtomicU32,
    queue_depth: AtomicU32,
    /// Penalty end, in milliseconds since the registry's epoch (0 = none).
    penalty_until_ms: AtomicU64,
    epoch: Instant,
}

impl Worker {
    fn new(authority: String, server_name: Option<String>, epoch: Instant) -> Self {
        Worker {
            authority,
            server_name,
            in_flight: AtomicU32::new(0),
            queue_depth: AtomicU32::new(0),
            penalty_until_ms: AtomicU64::new(0),
            epoch,
        }
    }

    fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.epoch).as_millis() as u64
    }

    /// Requests in flight from this gateway plus the worker's reported queue.
    pub fn load(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed) + self.queue_depth.load(Ordering::Relaxed)
    }

    /// Requests in flight from this gateway.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records the queue depth the worker reported.
    pub fn set_queue_depth(&self, depth: u32) {
        self.queue_depth.store(depth, Ordering::Relaxed);
    }

    /// Avoids the worker for `d`.
    pub fn penalize(&self, d: Duration) {
        let until = self.now_ms() + d.as_millis() as u64;
        self.penalty_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether the worker is being avoided.
    pub fn penalized(&self) -> bool {
        self.penalty_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight to a worker.
#[derive(Debug)]
pub struct InFlight(Arc<Worker>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every worker known, by authority, so state survives table swaps.
#[derive(Debug)]
pub struct Registry {
    epoch: Instant,
    workers: Mutex<HashMap<String, Arc<Worker>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            epoch: Instant::now(),
            workers: Mutex::new(HashMap::new()),
        }
    }
}

impl Registry {
    /// The worker at `authority`, created on first use.
    pub fn worker(&self, authority: &str) -> Arc<Worker> {
        self.worker_named(authority, None)
    }

    /// The worker at `authority` whose TLS certificate must carry
    /// `server_name`, created on first use (and anew when the name changes:
    /// the address now belongs to another deployment).
    pub fn worker_named(&self, authority: &str, server_name: Option<&str>) -> Arc<Worker> {
        let mut map = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(authority) {
            Some(w) if w.server_name.as_deref() == server_name => w.clone(),
            _ => {
                let w = Arc::new(Worker::new(
                    authority.to_string(),
                    server_name.map(str::to_string),
                    self.epoch,
                ));
                map.insert(authority.to_string(), w.clone());
                w
            }
        }
    }

    /// The TLS server name of the worker at `authority`, if it has one.
    pub fn server_name(&self, authority: &str) -> Option<String> {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(authority)
            .and_then(|w| w.server_name.clone())
    }

    /// Forgets workers not in `keep`.
    pub fn retain(&self, keep: &HashSet<String>) {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep.contains(k));
    }

    /// All known workers.
    pub fn all(&self) -> Vec<Arc<Worker>> {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Picks a worker by power of two choices, skipping `exclude` (workers
/// that already failed this request) and, unless all are, penalised workers.
pub fn pick(workers: &[Arc<Worker>], exclude: &[Arc<Worker>]) -> Option<Arc<Worker>> {
    let candidates: Vec<&Arc<Worker>> = workers
        .iter()
        .filter(|w| !exclude.iter().any(|x| Arc::ptr_eq(w, x)))
        .collect();
    let healthy: Vec<&Arc<Worker>> = candidates
        .iter()
        .copied()
        .filter(|w| !w.penalized())
        .collect();
    let pool = if healthy.is_empty() {
        candidates
    } else {
        healthy
    };
    match pool.len() {
        0 => None,
        1 => Some(pool[0].clone()),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (wa, wb) = (pool[a], pool[b]);
            Some(if wb.load() < wa.load() { wb } else { wa }.clone())
        }
    }
}

/// Sums `medembed_worker_queue_depth` over its series in a Prometheus text
/// exposition.
pub fn parse_queue_depth(text: &str) -> Option<u32> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("medembed_worker_queue_depth") {
            if rest.starts_with('{') || rest.starts_with(' ') {
                if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                    sum += v;
                    found = true;
                }
            }
        }
    }
    found.then_some(sum.max(0.0) as u32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn workers(n: usize) -> (Registry, Vec<Arc<Worker>>) {
        let r = Registry::default();
        let ws = (0..n).map(|i| r.worker(&format!("w{i}:1"))).collect();
        (r, ws)
    }

    #[test]
    fn prefers_the_less_loaded_of_two() {
        let (_r, ws) = workers(2);
        let _busy: Vec<_> = (0..5).map(|_| ws[0].begin()).collect();
        for _ in 0..100 {
            assert_eq!(
                pick(&ws, &[]).map(|w| w.authority.clone()),
                Some("w1:1".into())
            );
        }
    }

    #[test]
    fn reported_queue_depth_counts() {
        let (_r, ws) = workers(2);
        ws[1].set_queue_depth(10);
        let _one = ws[0].begin();
        for _ in 0..50 {
            assert_eq!(pick(&ws, &[]).unwrap().authority, "w0:1");
        }
    }

    #[test]
    fn spreads_over_idle_workers() {
        let (_r, ws) = workers(4);
        let mut seen = HashSet::new();
        for _ in 0..200 {
            seen.insert(pick(&ws, &[]).unwrap().authority.clone());
        }
        assert_eq!(seen.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn penalty_avoids_then_expires_and_fails_open() {
        let (_r, ws) = workers(2);
        ws[0].penalize(Duration::from_millis(1000));
        for _ in 0..50 {
            assert_eq!(pick(&ws, &[]).unwrap().authority, "w1:1");
        }
        // Excluding the only healthy one: fail open to the penalised one.
        assert_eq!(pick(&ws, &ws[1..2]).unwrap().authority, "w0:1");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(!ws[0].penalized());
    }

    #[test]
    fn queue_depth_parses() {
        let text = "# HELP x\nmedembed_worker_queue_depth{tower=\"image\"} 3\nmedembed_worker_queue_depth{tower=\"text\"} 4\nmedembed_worker_queue_depth_other 9\n";
        assert_eq!(parse_queue_depth(text), Some(7));
        assert_eq!(parse_queue_depth("nothing 1\n"), None);
    }
}
