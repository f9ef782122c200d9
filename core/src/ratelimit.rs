//! Fixed-window rate limiting in Redis, shared by every instance: one `INCR` per attempt,
//! the window's expiry set by the first attempt, both in one Lua script so they are atomic.

use std::time::Duration;

use bb8_redis::redis;

use crate::redis::{RedisError, RedisPool};

const SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
";

/// The outcome of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the window resets.
    pub reset_after: Duration,
}

/// Counts one attempt against `key` and decides: at most `limit` attempts per `window`.
pub async fn hit(
    pool: &RedisPool,
    key: &str,
    limit: u32,
    window: Duration,
) -> Result<Decision, RedisError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| RedisError::Unavailable(e.to_string()))?;
    let (count, ttl_ms): (u64, i64) = redis::cmd("EVAL")
        .arg(SCRIPT)
        .arg(1)
        .arg(key)
        .arg(window.as_millis() as u64)
        .query_async(&mut *conn)
        .await
        .map_err(|e| RedisError::Unavailable(e.to_string()))?;
    Ok(decide(count, ttl_ms, limit))
}

/// The decision for the `count`-th attempt in a window with `ttl_ms` left.
pub fn decide(count: u64, ttl_ms: i64, limit: u32) -> Decision {
    let allowed = count <= u64::from(limit);
    Decision {
        allowed,
        limit,
        remaining: u64::from(limit).saturating_sub(count) as u32,
        reset_after: Duration::from_millis(ttl_ms.max(0) as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_th_attempt_passes_and_the_next_does_not() {
        let d = decide(5, 1000, 5);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let d = decide(6, 900, 5);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.reset_after, Duration::from_millis(900));
        assert_eq!(decide(1, 5, 5).remaining, 4);
        assert_eq!(decide(1, -1, 5).reset_after, Duration::ZERO);
    }
}
