//! The Redis connection pool and its health check.
//!
//! Built unchecked, so observe starts while Redis is down; a checked-out connection is pinged
//! first, so a Redis that went away and came back is picked up again by the next request.

use std::time::Duration;

use bb8_redis::{bb8, redis, RedisConnectionManager};
use secrecy::ExposeSecret;

use crate::config::RedisSettings;

pub type RedisPool = bb8::Pool<RedisConnectionManager>;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid REDIS_URL: {0}")]
    Config(String),
    #[error("redis unavailable: {0}")]
    Unavailable(String),
}

/// Builds the pool without connecting.
pub fn pool(settings: &RedisSettings) -> Result<RedisPool, RedisError> {
    let manager = RedisConnectionManager::new(settings.url.expose_secret())
        .map_err(|e| RedisError::Config(e.to_string()))?;
    Ok(bb8::Pool::builder()
        .max_size(settings.pool_max_size)
        .connection_timeout(Duration::from_secs(settings.connect_timeout_secs))
        .build_unchecked(manager))
}

/// One `PING` through the pool.
pub async fn ping(pool: &RedisPool) -> Result<(), RedisError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| RedisError::Unavailable(e.to_string()))?;
    let _: String = redis::cmd("PING")
        .query_async(&mut *conn)
        .await
        .map_err(|e| RedisError::Unavailable(e.to_string()))?;
    Ok(())
}
