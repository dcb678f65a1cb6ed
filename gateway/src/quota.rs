//! Per-client quotas: requests, images and body bytes per minute (GCRA),
//! concurrent requests, and the headers of a 429.
//!
//! Rates use the Generic Cell Rate Algorithm (ITU-T I.371; as in `governor`
//! and Redis' `redis-cell`): each client and dimension keeps one "theoretical
//! arrival time" (TAT). A limit of N per minute has an emission interval
//! T = 60 s / N and a burst of N; a request costing c units is admitted when
//! `max(TAT, now) + c·T − 60 s ≤ now`, and then moves TAT to
//! `max(TAT, now) + c·T`. The three dimensions of one request are checked
//! together and committed only if all admit it, so a request refused for its
//! images does not use up request quota.
//!
//! Where the state lives:
//! - [`LocalStore`] (default): in this replica's memory. With `--replicas N`
//!   every per-minute and concurrency limit is divided by N (rounded up), on
//!   the assumption that the load balancer in front spreads each client's
//!   connections evenly; limits are then approximate cluster-wide.
//! - [`RedisStore`] (`--redis-url`): one Lua script per request checks and
//!   commits all dimensions atomically on Redis' clock, so per-minute limits
//!   are exact across replicas. Concurrency stays per replica. The connection
//!   ([`crate::redis_client`]) reconnects by itself, may use a password and
//!   TLS, and bounds every check (`--redis-timeout-ms`). When Redis cannot be
//!   reached or does not answer in time the gateway admits the request (fails
//!   open) and counts a `quota_store_error` rejection in dry-run.
//!
//! Headers on a 429 follow the IETF draft "RateLimit header fields for HTTP"
//! (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy:
//! "requests";q=100;w=60` for every limit of the client, and `RateLimit:
//! "images";r=0;t=12` for the limit that refused, plus `Retry-After` in
//! seconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

pub use crate::redis_client::{RedisError, RedisSettings};

use crate::redis_client::RedisClient;
use crate::table::ClientQuota;

/// The window every rate is expressed over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// A rate-limited dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    /// Requests.
    Requests,
    /// Rows carrying an image.
    Images,
    /// Request-body bytes.
    Bytes,
}

impl Dimension {
    /// Policy name in headers and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::Images => "images",
            Dimension::Bytes => "bytes",
        }
    }
    /// Every dimension, in the order of [`Rates::per_minute`].
    pub const ALL: [Dimension; 3] = [Dimension::Requests, Dimension::Images, Dimension::Bytes];
}

/// The per-minute limits in force for one client on this replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    /// Limit per dimension (requests, images, bytes).
    pub per_minute: [Option<u64>; 3],
}

impl Rates {
    /// The rates of a quota, divided across `replicas` (rounded up).
    pub fn from_quota(q: &ClientQuota, replicas: u32) -> Self {
        let div = |v: Option<u64>| v.map(|v| v.div_ceil(u64::from(replicas.max(1))).max(1));
        Rates {
            per_minute: [
                div(q.requests_per_minute),
                div(q.images_per_minute),
                div(q.bytes_per_minute),
            ],
        }
    }

    /// These rates in `dims` only (the others unlimited).
    pub fn only(&self, dims: &[Dimension]) -> Rates {
        let mut out = Rates::default();
        for (i, d) in Dimension::ALL.iter().enumerate() {
            if dims.contains(d) {
                out.per_minute[i] = self.per_minute[i];
            }
        }
        out
    }

    /// Whether any rate is limited.
    pub fn any(&self) -> bool {
        self.per_minute.iter().any(Option::is_some)
    }
}

/// What one request costs, per dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// Requests, images, bytes.
    pub units: [u64; 3],
}

impl Cost {
    /// One request, before its content is known (images and bytes zero).
    pub fn request() -> Self {
        Cost { units: [1, 0, 0] }
    }

    /// One request with `images` images and `bytes` bytes.
    pub fn new(images: u64, bytes: u64) -> Self {
        Cost {
            units: [1, images, bytes],
        }
    }
}

/// A dimension's state after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyState {
    /// Which dimension.
    pub dimension: Dimension,
    /// Its limit per window.
    pub limit: u64,
    /// Units left now.
    pub remaining: u64,
    /// Seconds until the quota is whole again.
    pub reset_s: u64,
}

/// The verdict of a rate check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Admitted (and committed).
    pub allowed: bool,
    /// The dimension that refused (when refused).
    pub refused_by: Option<Dimension>,
    /// How long until the request would be admitted (when refused).
    pub retry_after: Duration,
    /// Every limited dimension's state.
    pub policies: Vec<PolicyState>,
}

impl Decision {
    fn allow_all() -> Self {
        Decision {
            allowed: true,
            refused_by: None,
            retry_after: Duration::ZERO,
            policies: Vec::new(),
        }
    }

    /// `Retry-After`, `RateLimit-Policy` and `RateLimit` header values.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        let secs = self.retry_after.as_millis().div_ceil(1000).max(1);
        h.push(("retry-after", secs.to_string()));
        let policy = self
            .policies
            .iter()
            .map(|p| {
                format!(
                    "\"{}\";q={};w={}",
                    p.dimension.as_str(),
                    p.limit,
                    WINDOW.as_secs()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        if !policy.is_empty() {
            h.push(("ratelimit-policy", policy));
        }
        if let Some(p) = self
            .policies
            .iter()
            .find(|p| Some(p.dimension) == self.refused_by)
        {
            h.push((
                "ratelimit",
                format!(
                    "\"{}\";r={};t={}",
                    p.dimension.as_str(),
                    p.remaining,
                    p.reset_s.max(1)
                ),
            ));
        }
        h
    }
}

/// GCRA on one dimension in nanoseconds: returns (new TAT, admitted?, wait).
fn gcra(tat: u128, now: u128, limit: u64, cost: u64) -> (u128, bool, u128) {
    let window = WINDOW.as_nanos();
    let t = window / u128::from(limit.max(1));
    let base = tat.max(now);
    let new_tat = base + t * u128::from(cost);
    let allow_at = new_tat.saturating_sub(window);
    if allow_at <= now {
        (new_tat, true, 0)
    } else {
        (tat, false, allow_at - now)
    }
}

fn state_of(tat: u128, now: u128, limit: u64) -> (u64, u64) {
    let window = WINDOW.as_nanos();
    let t = window / u128::from(limit.max(1));
    let used = tat.saturating_sub(now);
    let remaining = window.saturating_sub(used) / t.max(1);
    let reset = used.div_ceil(1_000_000_000);
    (remaining.min(u128::from(limit)) as u64, reset as u64)
}

/// Rate state in this replica's memory.
#[derive(Debug)]
pub struct LocalStore {
    epoch: Instant,
    tats: Mutex<HashMap<String, [u128; 3]>>,
}

impl Default for LocalStore {
    fn default() -> Self {
        LocalStore {
            epoch: Instant::now(),
            tats: Mutex::new(HashMap::new()),
        }
    }
}

impl LocalStore {
    /// Checks and, when admitted, commits a request's cost.
    pub fn check(&self, key: &str, rates: &Rates, cost: &Cost) -> Decision {
        if !rates.any() {
            return Decision::allow_all();
        }
        let now = Instant::now().duration_since(self.epoch).as_nanos();
        let mut map = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        let tats = map.entry(key.to_string()).or_insert([0; 3]);
        let mut new = *tats;
        let mut refused_by = None;
        let mut wait = 0u128;
        for (i, d) in Dimension::ALL.iter().enumerate() {
            if let Some(limit) = rates.per_minute[i] {
                let (n, ok, w) = gcra(tats[i], now, limit, cost.units[i]);
                new[i] = n;
                if !ok && w > wait {
                    wait = w;
                    refused_by = Some(*d);
                }
            }
        }
        let allowed = refused_by.is_none();
        if allowed {
            *tats = new;
        }
        let policies = Dimension::ALL
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                rates.per_minute[i].map(|limit| {
                    let (remaining, reset_s) = state_of(tats[i], now, limit);
                    PolicyState {
                        dimension: *d,
                        limit,
                        remaining,
                        reset_s,
                    }
                })
            })
            .collect();
        Decision {
            allowed,
            refused_by,
            retry_after: Duration::from_nanos(wait.min(u128::from(u64::MAX)) as u64),
            policies,
        }
    }
}

/// The GCRA of [`LocalStore`] as one Lua script over all dimensions, in
/// microseconds on Redis' clock. KEYS: one TAT key per limited dimension.
/// ARGV: per key, the emission interval and the cost. Returns
/// `{admitted (0/1), index of the refusing key (0-based, -1), wait_us,
/// remaining_1, reset_us_1, ...}`.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = 60000000
local n = #KEYS
local tats, news = {}, {}
local refused, wait = -1, 0
for i = 1, n do
  local period = tonumber(ARGV[2 * i - 1])
  local cost = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  tats[i] = tat
  local base = tat
  if base < now then base = now end
  local new = base + period * cost
  news[i] = new
  local allow_at = new - window
  if allow_at > now and allow_at - now > wait then
    wait = allow_at - now
    refused = i - 1
  end
end
local out = {}
if refused < 0 then
  for i = 1, n do
    redis.call('SET', KEYS[i], string.format('%.0f', news[i]), 'PX', math.ceil((news[i] - now) / 1000) + 1000)
    tats[i] = news[i]
  end
  out[1] = 1
else
  out[1] = 0
end
out[2] = refused
out[3] = wait
for i = 1, n do
  local period = tonumber(ARGV[2 * i - 1])
  local used = tats[i] - now
  if used < 0 then used = 0 end
  local rem = math.floor((window - used) / period)
  if rem < 0 then rem = 0 end
  out[2 + 2 * i] = rem
  out[3 + 2 * i] = used
end
return out
"#;

/// Rate state in a shared Redis: exact across replicas.
#[derive(derive_more::Debug)]
pub struct RedisStore {
    client: RedisClient,
    #[debug(skip)]
    script: redis::Script,
    prefix: String,
}

impl RedisStore {
    /// A store on the Redis at `url` (credentials may be in the URL), with
    /// the default timeout. Needs a Tokio runtime.
    pub fn new(url: &str) -> Result<Self, RedisError> {
        Self::with_settings(RedisSettings::new(url))
    }

    /// A store on the Redis `settings` describe. Connects and loads the
    /// script in the background; until Redis answers, checks fail (and the
    /// caller admits). Needs a Tokio runtime.
    pub fn with_settings(settings: RedisSettings) -> Result<Self, RedisError> {
        let client = RedisClient::new(settings)?;
        let script = redis::Script::new(GCRA_LUA);
        tracing::info!(
            redis = %client.target(),
            tls = client.tls(),
            "per-minute quotas shared through Redis"
        );
        client.preload(&script);
        Ok(RedisStore {
            client,
            script,
            prefix: "medembed:quota:".into(),
        })
    }

    /// Checks and, when admitted, commits a request's cost.
    pub async fn check(
        &self,
        key: &str,
        rates: &Rates,
        cost: &Cost,
    ) -> Result<Decision, RedisError> {
        if !rates.any() {
            return Ok(Decision::allow_all());
        }
        let mut dims = Vec::new();
        let mut invocation = self.script.prepare_invoke();
        for (i, d) in Dimension::ALL.iter().enumerate() {
            if let Some(limit) = rates.per_minute[i] {
                dims.push((*d, limit));
                invocation
                    .key(format!("{}{}:{}", self.prefix, key, d.as_str()))
                    .arg(format!("{}", WINDOW.as_micros() as f64 / limit as f64))
                    .arg(cost.units[i]);
            }
        }
        let ints: Vec<i64> = self.client.run(&invocation).await?;
        if ints.len() != 3 + 2 * dims.len() {
            return Err(RedisError::Reply);
        }
        let allowed = ints[0] == 1;
        let refused_by = usize::try_from(ints[1])
            .ok()
            .and_then(|i| dims.get(i))
            .map(|d| d.0);
        let policies = dims
            .iter()
            .enumerate()
            .map(|(i, (d, limit))| PolicyState {
                dimension: *d,
                limit: *limit,
                remaining: ints[3 + 2 * i].max(0) as u64,
                reset_s: (ints[4 + 2 * i].max(0) as u64).div_ceil(1_000_000),
            })
            .collect();
        Ok(Decision {
            allowed,
            refused_by,
            retry_after: Duration::from_micros(ints[2].max(0) as u64),
            policies,
        })
    }
}

/// Where rate state lives.
#[derive(Debug)]
pub enum Store {
    /// This replica's memory.
    Local(LocalStore),
    /// A shared Redis.
    Redis(RedisStore),
}

impl Store {
    /// Whether every replica shares this state (per-minute limits are then
    /// exact, not divided across replicas).
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Redis(_))
    }

    /// Checks and, when admitted, commits a request's cost.
    pub async fn check(
        &self,
        key: &str,
        rates: &Rates,
        cost: &Cost,
    ) -> Result<Decision, RedisError> {
        match self {
            Store::Local(s) => Ok(s.check(key, rates, cost)),
            Store::Redis(s) => s.check(key, rates, cost).await,
        }
    }
}

/// Concurrency counters per client (always per replica).
#[derive(Debug, Default)]
pub struct Concurrency {
    counters: Mutex<HashMap<String, Arc<AtomicU32>>>,
}

/// A held concurrency slot; released on drop.
#[derive(Debug)]
pub struct Slot(Option<Arc<AtomicU32>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Concurrency {
    /// Takes a slot if fewer than `limit` are held (always, when `limit` is
    /// `None`); `Err` carries a slot anyway when `force` (dry run).
    pub fn acquire(&self, key: &str, limit: Option<u32>, force: bool) -> Result<Slot, Slot> {
        let Some(limit) = limit else {
            return Ok(Slot(None));
        };
        let counter = self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone();
        let prev = counter.fetch_add(1, Ordering::AcqRel);
        if prev < limit {
            Ok(Slot(Some(counter)))
        } else if force {
            Err(Slot(Some(counter)))
        } else {
            counter.fetch_sub(1, Ordering::AcqRel);
            Err(Slot(None))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rates(r: Option<u64>, i: Option<u64>, b: Option<u64>) -> Rates {
        Rates {
            per_minute: [r, i, b],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_burst_then_refill() {
        let s = LocalStore::default();
        let r = rates(Some(6), None, None);
        for _ in 0..6 {
            assert!(s.check("c", &r, &Cost::new(0, 0)).allowed);
        }
        let d = s.check("c", &r, &Cost::new(0, 0));
        assert!(!d.allowed);
        assert_eq!(d.refused_by, Some(Dimension::Requests));
        assert_eq!(d.retry_after, Duration::from_secs(10));
        let h = d.headers();
        assert!(h.contains(&("retry-after", "10".into())));
        assert!(h.contains(&("ratelimit-policy", "\"requests\";q=6;w=60".into())));
        assert!(h
            .iter()
            .any(|(k, v)| *k == "ratelimit" && v.starts_with("\"requests\";r=0;")));
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(!s.check("c", &r, &Cost::new(0, 0)).allowed);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(s.check("c", &r, &Cost::new(0, 0)).allowed);
        assert!(!s.check("c", &r, &Cost::new(0, 0)).allowed);
        // Another client is independent.
        assert!(s.check("d", &r, &Cost::new(0, 0)).allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn images_are_counted_and_refusal_does_not_consume_requests() {
        let s = LocalStore::default();
        let r = rates(Some(3), Some(10), None);
        assert!(s.check("c", &r, &Cost::new(8, 0)).allowed);
        let d = s.check("c", &r, &Cost::new(4, 0));
        assert!(!d.allowed);
        assert_eq!(d.refused_by, Some(Dimension::Images));
        // 2 images fit; the refused request used no request quota: 2 left.
        assert!(s.check("c", &r, &Cost::new(2, 0)).allowed);
        assert!(s.check("c", &r, &Cost::new(0, 0)).allowed);
        let d = s.check("c", &r, &Cost::new(0, 0));
        assert_eq!(d.refused_by, Some(Dimension::Requests));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(s.check("c", &r, &Cost::new(10, 0)).allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_per_minute() {
        let s = LocalStore::default();
        let r = rates(None, None, Some(1_000_000));
        assert!(s.check("c", &r, &Cost::new(0, 600_000)).allowed);
        let d = s.check("c", &r, &Cost::new(0, 600_000));
        assert_eq!(d.refused_by, Some(Dimension::Bytes));
        // 200 kB more drained after 12 s.
        assert_eq!(d.retry_after, Duration::from_secs(12));
        tokio::time::advance(Duration::from_secs(12)).await;
        assert!(s.check("c", &r, &Cost::new(0, 600_000)).allowed);
    }

    #[test]
    fn replicas_divide_limits() {
        let q = ClientQuota {
            requests_per_minute: Some(100),
            images_per_minute: Some(1),
            ..Default::default()
        };
        assert_eq!(
            Rates::from_quota(&q, 3).per_minute,
            [Some(34), Some(1), None]
        );
    }

    #[test]
    fn concurrency_slots() {
        let c = Concurrency::default();
        let a = c.acquire("c", Some(2), false).unwrap();
        let _b = c.acquire("c", Some(2), false).unwrap();
        assert!(c.acquire("c", Some(2), false).is_err());
        drop(a);
        let _c = c.acquire("c", Some(2), false).unwrap();
        // Dry run: refused, but the slot is held and counted.
        let forced = c.acquire("c", Some(2), true).unwrap_err();
        drop(forced);
        assert!(c.acquire("c", None, false).is_ok());
    }
}
