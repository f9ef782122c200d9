//! Per-key rate limits for ingestion: GCRA (the generic cell rate algorithm), enforced across
//! instances in Redis and per instance while Redis is away.
//!
//! GCRA keeps one number per key, the theoretical arrival time (TAT): when the key's budget
//! would be whole again. A request is allowed if the TAT is at most one burst ahead of now;
//! each allowed request pushes the TAT by one emission interval (period / limit). So a key may
//! send `limit` at once, and after that one request per interval: the sustained rate is
//! `limit` per `period`, and over any stretch of time `d` at most `limit + d / interval` pass
//! (from idle, a burst plus a minute's refill can reach twice the limit in the first minute).
//! There are no window edges to game, and it needs a single read-modify-write: done atomically
//! in a Lua script that takes Redis's own clock, so instances with skewed clocks agree.
//!
//! Asking Redis on every request would cost a round trip and a script run per request, which
//! at thousands of requests a second is more CPU than the rest of ingestion. So for limits of
//! 200 or more per period an instance takes tokens in blocks (a hundredth of the limit, at most
//! 1000: [`lease_block`]) together with the request that needed them, and spends them locally
//! until they run out or go stale ([`lease_lifetime`]: about as long as the key takes to earn a
//! block back). Only one refill per key runs at a time. The shared limit still holds across
//! instances: tokens are taken in Redis before they are spent; at worst an instance lets a
//! block expire unspent, which leaves others that much less for a moment, never more. When a
//! whole block no longer fits, the request asks for exactly its own cost, so the last tokens of
//! a budget are not lost to rounding. Small limits (most tiers' error limits) ask every time.
//!
//! When Redis fails, [`Limiter`] keeps enforcing the same limits per instance (so N instances
//! allow up to N × the limit), logs one warning per outage, sets
//! `observe_ratelimit_degraded` to 1, and returns to Redis by itself when it answers again. A
//! Redis that answers nothing counts as failed: every script gets [`SCRIPT_TIMEOUT`] (the
//! client library's own per-command timeout is a default of its, not a choice of ours). The
//! per-instance state is bounded ([`LOCAL_MAX_KEYS`], least recently used out first), so an
//! outage under a flood of distinct keys costs bounded memory and constant time per request.
//!
//! A cost of 0 ([`Limiter::check_n`]) is a pure look: it says what is left and writes nothing.
//! Budgets that count failures only (sign-ins, key lookups) are spent *before* the attempt and
//! given back by [`Limiter::refund`] when it succeeds: spending after a failure would let a
//! burst of parallel attempts all pass a check made before any of them had failed.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lru::LruCache;

use crate::metrics::Metrics;
use crate::redis::RedisPool;

/// The outcome of one request against a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    /// Requests still allowed right now.
    pub remaining: u32,
    /// Until the budget is whole again (`X-RateLimit-Reset`).
    pub reset_after: Duration,
    /// When denied, until the next request would be allowed (`Retry-After`).
    pub retry_after: Duration,
}

/// One GCRA step for a single request; see [`step_n`].
pub fn step(
    tat_ms: Option<u64>,
    now_ms: u64,
    limit: u32,
    period_ms: u64,
) -> (Decision, Option<u64>) {
    step_n(tat_ms, now_ms, limit, period_ms, 1)
}

/// One GCRA step for `cost` units at once (a batch of items): the decision at `now_ms` and
/// the TAT to store if allowed. `tat_ms` is the stored TAT (`None`: never seen, or expired).
/// A batch is allowed whole or not at all; one larger than `limit` is never allowed, and its
/// `retry_after` is a whole period.
pub fn step_n(
    tat_ms: Option<u64>,
    now_ms: u64,
    limit: u32,
    period_ms: u64,
    cost: u32,
) -> (Decision, Option<u64>) {
    let limit = limit.max(1);
    let interval = (period_ms / u64::from(limit)).max(1);
    // A burst of `limit` fits: the TAT may run up to this far ahead of now.
    let capacity = interval * u64::from(limit);
    let tat = tat_ms.unwrap_or(now_ms).max(now_ms);
    let new_tat = tat + interval * u64::from(cost);
    if new_tat - now_ms > capacity {
        let retry = if cost > limit {
            period_ms
        } else {
            new_tat - now_ms - capacity
        };
        return (
            Decision {
                allowed: false,
                limit,
                remaining: ((capacity.saturating_sub(tat - now_ms)) / interval) as u32,
                reset_after: Duration::from_millis(tat - now_ms),
                retry_after: Duration::from_millis(retry),
            },
            None,
        );
    }
    let ahead = new_tat - now_ms;
    let remaining = ((capacity - ahead) / interval) as u32;
    (
        Decision {
            allowed: true,
            limit,
            remaining,
            reset_after: Duration::from_millis(ahead),
            retry_after: Duration::ZERO,
        },
        Some(new_tat),
    )
}

/// The same step in Redis, atomically, on Redis's clock. Returns
/// `{allowed, remaining, reset_ms, retry_ms}`.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = math.max(tonumber(ARGV[1]), 1)
local period = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local interval = math.max(math.floor(period / limit), 1)
local capacity = interval * limit
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
if new_tat - now > capacity then
  local retry = new_tat - now - capacity
  if cost > limit then retry = period end
  return {0, math.floor(math.max(capacity - (tat - now), 0) / interval), tat - now, retry}
end
local ahead = new_tat - now
if cost > 0 then
  redis.call('SET', KEYS[1], new_tat, 'PX', math.max(ahead, 1))
end
return {1, math.floor((capacity - ahead) / interval), ahead, 0}
";

/// Gives `cost` units back to a key (an attempt that was spent up front and succeeded): moves
/// its TAT back by as many intervals, never before now (a budget is never more than whole).
const REFUND_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = math.max(tonumber(ARGV[1]), 1)
local period = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local interval = math.max(math.floor(period / limit), 1)
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local new_tat = tat - interval * cost
if new_tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
end
return 1
";

/// [`REFUND_SCRIPT`]'s step: the TAT to keep after giving `cost` units back (`None`: the
/// budget is whole, nothing to keep).
pub fn refund_step(
    tat_ms: Option<u64>,
    now_ms: u64,
    limit: u32,
    period_ms: u64,
    cost: u32,
) -> Option<u64> {
    let interval = (period_ms / u64::from(limit.max(1))).max(1);
    let new_tat = tat_ms?.saturating_sub(interval * u64::from(cost));
    (new_tat > now_ms).then_some(new_tat)
}

/// Tokens taken from Redis at once for a key limited to `limit` per period: a hundredth of
/// the limit, at most 1000; 0 (ask Redis every time) when that is under 2.
pub fn lease_block(limit: u32) -> u32 {
    let block = (limit / 100).min(1000);
    if block < 2 {
        0
    } else {
        block
    }
}

/// How long a block stays usable: the time the key takes to earn it back (`block` emission
/// intervals), within 50 ms and 1 s. Longer, and a quiet instance could spend old tokens on top
/// of a fresh burst.
pub fn lease_lifetime(block: u32, limit: u32, period: Duration) -> Duration {
    let earn_back = period.saturating_mul(block) / limit.max(1);
    earn_back.clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Tokens of one key this instance took from Redis and has not spent yet.
#[derive(Debug, Default)]
struct Lease {
    tokens: u32,
    /// The key's budget left in Redis right after they were taken.
    remote_remaining: u32,
    /// Until the key's budget in Redis was whole again, as of `taken_at`.
    reset_after: Duration,
    taken_at: Option<Instant>,
    expires_at: Option<Instant>,
}

impl Lease {
    fn take(&mut self, cost: u32, limit: u32, now: Instant) -> Option<Decision> {
        let (taken_at, expires_at) = (self.taken_at?, self.expires_at?);
        if now >= expires_at || self.tokens < cost {
            return None;
        }
        self.tokens -= cost;
        Some(Decision {
            allowed: true,
            limit: limit.max(1),
            remaining: self.remote_remaining.saturating_add(self.tokens),
            reset_after: self.reset_after.saturating_sub(now - taken_at),
            retry_after: Duration::ZERO,
        })
    }

    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now >= at)
    }
}

/// A key's lease, and the lock that lets one request at a time refill it.
#[derive(Default)]
struct KeyLease {
    lease: Mutex<Lease>,
    refill: tokio::sync::Mutex<()>,
}

impl KeyLease {
    fn take(&self, cost: u32, limit: u32) -> Option<Decision> {
        self.lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(cost, limit, Instant::now())
    }
}

/// Rate limits shared through Redis, with a per-instance fallback.
#[derive(Clone)]
pub struct Limiter {
    redis: RedisPool,
    prefix: String,
    script: Arc<redis::Script>,
    refund_script: Arc<redis::Script>,
    leases: Arc<Mutex<HashMap<String, Arc<KeyLease>>>>,
    /// Each key's TAT while Redis is away.
    local: Arc<Mutex<LruCache<String, u64>>>,
    degraded: Arc<AtomicBool>,
    /// When Redis was last probed during an outage (ms since the epoch).
    last_probe_ms: Arc<AtomicU64>,
    metrics: Metrics,
}

/// How often, during an outage, a background probe asks whether Redis is back.
const PROBE_EVERY_MS: u64 = 1_000;

/// The longest one script (or the probe's `PING`) may take before Redis counts as down. Redis
/// answers these in well under a millisecond; a second covers a busy moment and the reload of
/// a script after a Redis restart (`EVALSHA`, then `EVAL`), and is still no hang for a sign-in.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Keys the per-instance fallback keeps at most (least recently used out first): about 100
/// bytes each, so 10 MB. A client's own key is touched by each of its requests, so a flood of
/// other keys pushes out idle keys, never the flooder's.
pub const LOCAL_MAX_KEYS: usize = 100_000;

fn lru(keys: usize) -> LruCache<String, u64> {
    LruCache::new(NonZeroUsize::new(keys).unwrap_or(NonZeroUsize::MIN))
}

impl Limiter {
    pub fn new(redis: RedisPool, prefix: impl Into<String>, metrics: Metrics) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
            script: Arc::new(redis::Script::new(SCRIPT)),
            refund_script: Arc::new(redis::Script::new(REFUND_SCRIPT)),
            leases: Arc::default(),
            local: Arc::new(Mutex::new(lru(LOCAL_MAX_KEYS))),
            degraded: Arc::default(),
            last_probe_ms: Arc::default(),
            metrics,
        }
    }

    /// The same limiter keeping at most `keys` keys per instance while Redis is away.
    pub fn with_local_capacity(mut self, keys: usize) -> Self {
        self.local = Arc::new(Mutex::new(lru(keys)));
        self
    }

    /// Counts one request of `key` against `limit` per `period`. During a Redis outage no
    /// request waits on Redis: they are counted locally while a background probe (at most
    /// once a second) watches for Redis to come back.
    pub async fn check(&self, key: &str, limit: u32, period: Duration) -> Decision {
        self.check_n(key, limit, period, 1).await
    }

    /// Counts `cost` units (a batch's items) of `key` at once: all allowed, or none. A cost of
    /// 0 only looks (`remaining` says what is left) and writes nothing (in Redis, and in the
    /// per-instance state while Redis is away).
    pub async fn check_n(&self, key: &str, limit: u32, period: Duration, cost: u32) -> Decision {
        let full_key = format!("{}rl:{key}", self.prefix);
        if self.degraded() {
            self.probe_in_background();
            return self.locally(&full_key, limit, period, cost);
        }
        let block = lease_block(limit);
        let decision = if block == 0 {
            self.in_redis(&full_key, limit, period, cost).await
        } else {
            self.leased(&full_key, limit, period, cost, block).await
        };
        match decision {
            Ok(decision) => decision,
            Err(e) => {
                self.enter_degraded(&e);
                self.locally(&full_key, limit, period, cost)
            }
        }
    }

    /// Gives back `cost` units of `key` that a [`check_n`](Self::check_n) spent (an attempt
    /// that was paid for up front and turned out to count for nothing, e.g. a right
    /// password). Where it is given back: Redis, or the per-instance state while Redis is away.
    /// Meant for small budgets spent one at a time; units of a lease are not given back to it.
    pub async fn refund(&self, key: &str, limit: u32, period: Duration, cost: u32) {
        let full_key = format!("{}rl:{key}", self.prefix);
        if !self.degraded() {
            match self.refund_in_redis(&full_key, limit, period, cost).await {
                Ok(()) => return,
                Err(e) => self.enter_degraded(&e),
            }
        }
        self.probe_in_background();
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = local.peek(&full_key).copied();
        match refund_step(tat, now_ms(), limit, period.as_millis() as u64, cost) {
            Some(tat) => {
                local.put(full_key, tat);
            }
            None => {
                local.pop(&full_key);
            }
        }
    }

    async fn refund_in_redis(
        &self,
        key: &str,
        limit: u32,
        period: Duration,
        cost: u32,
    ) -> Result<(), String> {
        let mut conn = self.redis.get().await.map_err(|e| e.to_string())?;
        let mut invocation = self.refund_script.key(key);
        invocation
            .arg(limit)
            .arg(period.as_millis() as u64)
            .arg(cost);
        let invocation = invocation.invoke_async::<i64>(&mut *conn);
        match tokio::time::timeout(SCRIPT_TIMEOUT, invocation).await {
            Ok(answer) => answer.map(drop).map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {SCRIPT_TIMEOUT:?}")),
        }
    }

    fn enter_degraded(&self, error: &str) {
        if !self.degraded.swap(true, Ordering::SeqCst) {
            tracing::warn!(error = %error, "Redis unavailable: rate limits enforced per instance until it returns");
            self.metrics.ratelimit_degraded.set(1);
            self.last_probe_ms.store(now_ms(), Ordering::SeqCst);
        }
    }

    fn probe_in_background(&self) {
        let now = now_ms();
        let last = self.last_probe_ms.load(Ordering::SeqCst);
        if now.saturating_sub(last) < PROBE_EVERY_MS
            || self
                .last_probe_ms
                .compare_exchange(last, now, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return;
        }
        let limiter = self.clone();
        tokio::spawn(async move {
            let answered =
                tokio::time::timeout(SCRIPT_TIMEOUT, crate::redis::ping(&limiter.redis)).await;
            if matches!(answered, Ok(Ok(()))) && limiter.degraded.swap(false, Ordering::SeqCst) {
                tracing::info!("rate limits shared through Redis again");
                limiter.metrics.ratelimit_degraded.set(0);
                // Local state is stale by now; Redis holds the truth again.
                limiter
                    .local
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
            }
        });
    }

    /// Whether limits are currently per instance (Redis unavailable).
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::SeqCst)
    }

    /// Spends from this instance's lease of `key`, refilling it from Redis when it runs dry.
    async fn leased(
        &self,
        key: &str,
        limit: u32,
        period: Duration,
        cost: u32,
        block: u32,
    ) -> Result<Decision, String> {
        let entry = self.lease_of(key);
        if let Some(decision) = entry.take(cost, limit) {
            return Ok(decision);
        }
        let _refilling = entry.refill.lock().await;
        // Another request may have refilled it while this one waited.
        if let Some(decision) = entry.take(cost, limit) {
            return Ok(decision);
        }
        let taken = self
            .in_redis(key, limit, period, cost.saturating_add(block))
            .await?;
        if !taken.allowed {
            // No room for a whole block: this request alone, exactly.
            return self.in_redis(key, limit, period, cost).await;
        }
        let now = Instant::now();
        *entry.lease.lock().unwrap_or_else(PoisonError::into_inner) = Lease {
            tokens: block,
            remote_remaining: taken.remaining,
            reset_after: taken.reset_after,
            taken_at: Some(now),
            expires_at: Some(now + lease_lifetime(block, limit, period)),
        };
        Ok(Decision {
            remaining: taken.remaining.saturating_add(block),
            ..taken
        })
    }

    fn lease_of(&self, key: &str) -> Arc<KeyLease> {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = leases.get(key) {
            return entry.clone();
        }
        // Drop stale leases nobody is using, so the map holds only active keys.
        if leases.len() > 10_000 {
            let now = Instant::now();
            leases.retain(|_, e| {
                Arc::strong_count(e) > 1
                    || !e
                        .lease
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .expired(now)
            });
        }
        leases.entry(key.to_string()).or_default().clone()
    }

    async fn in_redis(
        &self,
        key: &str,
        limit: u32,
        period: Duration,
        cost: u32,
    ) -> Result<Decision, String> {
        let mut conn = self.redis.get().await.map_err(|e| e.to_string())?;
        // EVALSHA; the script is loaded on first use (and again after a Redis restart).
        let mut invocation = self.script.key(key);
        invocation
            .arg(limit)
            .arg(period.as_millis() as u64)
            .arg(cost);
        let invocation = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut *conn);
        let answer = tokio::time::timeout(SCRIPT_TIMEOUT, invocation)
            .await
            .map_err(|_| format!("no answer within {SCRIPT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        Ok(decision_from(answer, limit))
    }

    fn locally(&self, key: &str, limit: u32, period: Duration, cost: u32) -> Decision {
        let now = now_ms();
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        // A look neither stores nor reorders; a spend marks the key as recently used.
        let tat = if cost == 0 {
            local.peek(key).copied()
        } else {
            local.get(key).copied()
        };
        let (decision, new_tat) = step_n(tat, now, limit, period.as_millis() as u64, cost);
        if let Some(tat) = new_tat.filter(|_| cost > 0) {
            local.put(key.to_string(), tat);
        }
        decision
    }
}

/// A decision from a script's `{allowed, remaining, reset_ms, retry_ms}`.
fn decision_from(
    (allowed, remaining, reset_ms, retry_ms): (i64, i64, i64, i64),
    limit: u32,
) -> Decision {
    let ms = |v: i64| Duration::from_millis(v.max(0) as u64);
    Decision {
        allowed: allowed == 1,
        limit: limit.max(1),
        remaining: remaining.max(0) as u32,
        reset_after: ms(reset_ms),
        retry_after: ms(retry_ms),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTE: u64 = 60_000;

    /// Runs requests at the given times; returns how many were allowed.
    fn run(times: &[u64], limit: u32, period: u64) -> usize {
        let mut tat = None;
        let mut allowed = 0;
        for &t in times {
            let (d, new_tat) = step(tat, t, limit, period);
            if d.allowed {
                allowed += 1;
                tat = new_tat;
            }
        }
        allowed
    }

    #[test]
    fn a_full_burst_then_one_per_interval() {
        // 100 per minute: 100 at once, then one every 600 ms.
        let burst = vec![0u64; 150];
        assert_eq!(run(&burst, 100, MINUTE), 100);
        let (d, _) = step(Some(60_000), 0, 100, MINUTE);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(600));
        assert_eq!(d.remaining, 0);
        let (d, _) = step(Some(60_000), 600, 100, MINUTE);
        assert!(d.allowed, "one interval later, one more");
    }

    #[test]
    fn a_look_tells_what_is_left_and_a_refund_gives_one_back() {
        let (d, tat) = step(None, 0, 2, MINUTE);
        assert!(d.allowed);
        let (look, kept) = step_n(tat, 0, 2, MINUTE, 0);
        assert_eq!((look.allowed, look.remaining, kept), (true, 1, tat));
        let (_, tat) = step(tat, 0, 2, MINUTE);
        assert_eq!(step_n(tat, 0, 2, MINUTE, 0).0.remaining, 0);
        assert!(!step(tat, 0, 2, MINUTE).0.allowed);
        // One unit back: one more fits again.
        let back = refund_step(tat, 0, 2, MINUTE, 1);
        assert_eq!(back, Some(30_000));
        assert!(step(back, 0, 2, MINUTE).0.allowed);
        // Never more than whole: what the rate refilled meanwhile is not given twice.
        assert_eq!(refund_step(tat, 45_000, 2, MINUTE, 1), None);
        assert_eq!(refund_step(tat, 10_000, 2, MINUTE, 2), None);
        assert_eq!(refund_step(None, 0, 2, MINUTE, 1), None);
    }

    fn offline_limiter() -> Limiter {
        let mut settings = crate::config::Settings::load_from(|_| None).unwrap().redis;
        // Never reached: these tests drive the per-instance fallback only.
        settings.url = secrecy::SecretString::from("redis://127.0.0.1:1/");
        let pool = crate::redis::pool(&settings).unwrap();
        Limiter::new(pool, "test:", Metrics::new().unwrap())
    }

    #[tokio::test]
    async fn the_fallback_keeps_a_bounded_number_of_keys_the_recent_ones() {
        let limiter = offline_limiter().with_local_capacity(100);
        let window = Duration::from_secs(900);
        for i in 0..300 {
            assert!(
                limiter
                    .locally(&format!("client-{i}"), 5, window, 1)
                    .allowed
            );
        }
        let held = limiter.local.lock().unwrap().len();
        assert!(
            held <= 100,
            "the fallback grew to {held} keys past its bound of 100"
        );
        // The most recent keys are still counted.
        for _ in 0..4 {
            assert!(limiter.locally("client-299", 5, window, 1).allowed);
        }
        assert!(!limiter.locally("client-299", 5, window, 1).allowed);
    }

    #[tokio::test]
    async fn while_redis_is_away_refunds_are_made_locally() {
        let limiter = offline_limiter();
        limiter.degraded.store(true, Ordering::SeqCst);
        let window = Duration::from_secs(60);
        assert!(limiter.check("k", 1, window).await.allowed);
        assert!(!limiter.check("k", 1, window).await.allowed);
        limiter.refund("k", 1, window, 1).await;
        assert!(
            limiter.check("k", 1, window).await.allowed,
            "not given back"
        );
        assert!(!limiter.check("k", 1, window).await.allowed);
    }

    #[tokio::test]
    async fn a_look_at_cost_zero_spends_and_stores_nothing() {
        let limiter = offline_limiter();
        let window = Duration::from_secs(60);
        let look = limiter.locally("k", 2, window, 0);
        assert_eq!((look.allowed, look.remaining), (true, 2));
        assert_eq!(
            limiter.local.lock().unwrap().len(),
            0,
            "a look stored a key"
        );
        assert!(limiter.locally("k", 2, window, 1).allowed);
        assert_eq!(limiter.locally("k", 2, window, 0).remaining, 1);
        assert!(limiter.locally("k", 2, window, 1).allowed);
        let look = limiter.locally("k", 2, window, 0);
        assert_eq!(look.remaining, 0, "{look:?}");
        assert!(!limiter.locally("k", 2, window, 1).allowed);
    }

    #[test]
    fn blocks_are_a_hundredth_of_large_limits_only() {
        assert_eq!(lease_block(100), 0);
        assert_eq!(lease_block(199), 0);
        assert_eq!(lease_block(200), 2);
        assert_eq!(lease_block(5_000), 50);
        assert_eq!(lease_block(u32::MAX), 1_000);
        // 5000 a minute earns a block of 50 back in 600 ms.
        assert_eq!(
            lease_lifetime(50, 5_000, Duration::from_secs(60)),
            Duration::from_millis(600)
        );
        assert_eq!(
            lease_lifetime(1_000, u32::MAX, Duration::from_secs(60)),
            Duration::from_millis(50)
        );
        assert_eq!(
            lease_lifetime(2, 200, Duration::from_secs(3_600)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_lease_spends_its_tokens_until_they_run_out_or_expire() {
        let now = Instant::now();
        let mut lease = Lease::default();
        assert_eq!(lease.take(1, 100, now), None, "an empty lease has nothing");
        lease = Lease {
            tokens: 3,
            remote_remaining: 10,
            reset_after: Duration::from_secs(5),
            taken_at: Some(now),
            expires_at: Some(now + Duration::from_millis(500)),
        };
        let d = lease
            .take(2, 100, now + Duration::from_secs(1) / 10)
            .unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 11);
        assert_eq!(d.reset_after, Duration::from_millis(4_900));
        assert_eq!(lease.take(2, 100, now), None, "one token left, two asked");
        assert_eq!(lease.take(1, 100, now).map(|d| d.remaining), Some(10));
        lease.tokens = 5;
        assert_eq!(lease.take(1, 100, now + Duration::from_millis(500)), None);
        assert!(lease.expired(now + Duration::from_millis(500)));
    }

    #[test]
    fn remaining_counts_down_from_the_limit() {
        let (first, tat) = step(None, 1_000, 5, MINUTE);
        assert!(first.allowed);
        assert_eq!(first.remaining, 4);
        assert_eq!(first.reset_after, Duration::from_millis(12_000));
        let (second, _) = step(tat, 1_000, 5, MINUTE);
        assert_eq!(second.remaining, 3);
    }

    #[test]
    fn batches_count_their_items_and_pass_whole_or_not_at_all() {
        let (d, tat) = step_n(None, 0, 100, MINUTE, 60);
        assert!(d.allowed);
        assert_eq!(d.remaining, 40);
        let (d, _) = step_n(tat, 0, 100, MINUTE, 41);
        assert!(!d.allowed, "41 more do not fit in the 40 left");
        assert_eq!(d.remaining, 40, "a denied batch takes nothing");
        assert_eq!(d.retry_after, Duration::from_millis(600));
        let (d, _) = step_n(tat, 0, 100, MINUTE, 40);
        assert!(d.allowed);
        let (d, _) = step_n(None, 0, 100, MINUTE, 101);
        assert!(!d.allowed, "bigger than the limit never fits");
        assert_eq!(d.retry_after, Duration::from_millis(MINUTE));
    }

    proptest! {
        #[test]
        fn batches_never_pass_more_items_than_burst_plus_refill(
            limit in 1u32..500,
            mut requests in proptest::collection::vec((0u64..MINUTE, 1u32..50), 1..500),
        ) {
            requests.sort_unstable();
            let interval = (MINUTE / u64::from(limit)).max(1);
            let span = requests[requests.len() - 1].0 - requests[0].0;
            let mut tat = None;
            let mut items = 0u64;
            for (t, cost) in requests {
                let (d, new_tat) = step_n(tat, t, limit, MINUTE, cost);
                if d.allowed {
                    items += u64::from(cost);
                    tat = new_tat;
                }
            }
            prop_assert!(items <= u64::from(limit) + span / interval);
        }

        #[test]
        fn never_more_than_the_burst_plus_what_the_rate_refilled(
            limit in 1u32..500,
            mut times in proptest::collection::vec(0u64..MINUTE, 1..1500),
        ) {
            times.sort_unstable();
            let interval = (MINUTE / u64::from(limit)).max(1);
            let span = times[times.len() - 1] - times[0];
            let bound = limit as usize + (span / interval) as usize;
            prop_assert!(run(&times, limit, MINUTE) <= bound);
        }

        #[test]
        fn at_once_never_more_than_the_limit(limit in 1u32..500, n in 1usize..1500) {
            prop_assert_eq!(run(&vec![5_000; n], limit, MINUTE), n.min(limit as usize));
        }

        #[test]
        fn evenly_spaced_requests_at_the_rate_are_all_allowed(limit in 1u32..1000, n in 1usize..2000) {
            let interval = MINUTE / u64::from(limit);
            let times: Vec<u64> = (0..n as u64).map(|i| i * interval).collect();
            prop_assert_eq!(run(&times, limit, MINUTE), n);
        }

        #[test]
        fn over_any_long_run_the_rate_holds(
            limit in 1u32..200,
            mut times in proptest::collection::vec(0u64..(10 * MINUTE), 1..3000),
        ) {
            times.sort_unstable();
            // Over ten periods: at most the burst plus one per interval.
            let bound = limit as usize + (10 * MINUTE / (MINUTE / u64::from(limit)).max(1)) as usize;
            prop_assert!(run(&times, limit, MINUTE) <= bound);
        }

        #[test]
        fn a_denied_request_is_allowed_after_retry_after(limit in 1u32..100, burst in 1usize..300) {
            let mut tat = None;
            let mut last = None;
            for _ in 0..burst {
                let (d, new_tat) = step(tat, 0, limit, MINUTE);
                if d.allowed { tat = new_tat; } else { last = Some(d); }
            }
            if let Some(denied) = last {
                let later = denied.retry_after.as_millis() as u64;
                let (d, _) = step(tat, later, limit, MINUTE);
                prop_assert!(d.allowed);
            }
        }
    }
}
