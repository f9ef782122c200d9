//! Ingest rate limits (GCRA) against real Redis: shared by instances, and enforced per
//! instance while Redis is away, recovering by itself.

use std::time::Duration;

use observe_core::gcra::Limiter;
use observe_core::metrics::Metrics;
use secrecy::SecretString;

use crate::health::OwnRedis;
use crate::helpers::{eventually, free_port, test_settings};

fn limiter(redis_url: String, prefix: &str, metrics: Metrics) -> Limiter {
    let mut settings = test_settings().redis;
    settings.url = SecretString::from(redis_url);
    settings.connect_timeout_secs = 1;
    let pool = observe_core::redis::pool(&settings).unwrap();
    Limiter::new(pool, prefix, metrics)
}

async fn allowed(limiter: &Limiter, key: &str, n: usize) -> usize {
    let mut count = 0;
    for _ in 0..n {
        if limiter.check(key, 5, Duration::from_secs(60)).await.allowed {
            count += 1;
        }
    }
    count
}

#[actix_web::test]
async fn two_instances_share_one_budget_through_redis() {
    let url = test_settings().redis.url;
    let url = secrecy::ExposeSecret::expose_secret(&url).to_string();
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let a = limiter(url.clone(), &prefix, Metrics::new().unwrap());
    let b = limiter(url, &prefix, Metrics::new().unwrap());
    assert_eq!(allowed(&a, "key-1", 3).await, 3);
    assert_eq!(
        allowed(&b, "key-1", 5).await,
        2,
        "the other instance sees the same budget"
    );
    let denied = a.check("key-1", 5, Duration::from_secs(60)).await;
    assert!(!denied.allowed);
    assert_eq!(denied.remaining, 0);
    assert!(denied.retry_after > Duration::ZERO && denied.retry_after <= Duration::from_secs(12));
    assert_eq!(allowed(&a, "key-2", 1).await, 1, "keys are independent");
    assert!(!a.degraded() && !b.degraded());
}

/// Limits of 200 or more are spent from blocks of tokens taken ahead from Redis: two instances
/// hammering one key concurrently still never pass more than the shared budget (plus what the
/// rate refills meanwhile), and lose at most a block each to it.
#[actix_web::test]
async fn leased_blocks_keep_the_shared_limit_across_instances() {
    let url = test_settings().redis.url;
    let url = secrecy::ExposeSecret::expose_secret(&url).to_string();
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let a = limiter(url.clone(), &prefix, Metrics::new().unwrap());
    let b = limiter(url, &prefix, Metrics::new().unwrap());
    // 6000 per hour: blocks of 60, one token earned back every 600 ms.
    let (limit, period) = (6_000u32, Duration::from_secs(3_600));
    let block = observe_core::gcra::lease_block(limit);
    assert_eq!(block, 60);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let limiter = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::task::spawn_local(async move {
            let mut allowed = 0u32;
            for _ in 0..500 {
                let d = limiter.check_n("key-lease", limit, period, 1).await;
                if d.allowed {
                    allowed += 1;
                    assert!(d.remaining < limit, "{d:?}");
                } else {
                    assert!(d.retry_after > Duration::ZERO, "{d:?}");
                }
            }
            allowed
        }));
    }
    let started = std::time::Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let refilled = (started.elapsed().as_millis() / 600) as u32 + 1;
    assert!(total <= limit + refilled, "{total} passed, limit {limit}");
    assert!(
        total >= limit - 2 * block,
        "{total} passed: more than a block per instance was lost"
    );
    // Spent: both instances now hear 429 for the rest.
    assert!(!a.check_n("key-lease", limit, period, 100).await.allowed);
    assert!(!b.check_n("key-lease", limit, period, 100).await.allowed);
}

#[actix_web::test]
async fn without_redis_limits_hold_per_instance_and_recover_when_it_returns() {
    let logs = observe_core::telemetry::capture();
    let port = free_port();
    let metrics = Metrics::new().unwrap();
    let limiter = limiter(
        format!("redis://127.0.0.1:{port}/"),
        "test:down:",
        metrics.clone(),
    );

    assert_eq!(
        allowed(&limiter, "key", 8).await,
        5,
        "still limited while Redis is down"
    );
    assert!(limiter.degraded());
    assert!(metrics
        .render()
        .unwrap()
        .contains("observe_ratelimit_degraded 1"));
    let warnings = logs
        .json_lines()
        .iter()
        // Only this test's limiter logs outside a request span (under `cargo test` every
        // test shares one capture, and ingest tests' outages log inside requests).
        .filter(|l| {
            l["message"] == "Redis unavailable: rate limits enforced per instance until it returns"
                && l["spans"].as_array().is_none_or(|spans| spans.is_empty())
        })
        .count();
    assert_eq!(warnings, 1, "one warning per outage, not per request");

    let _redis = OwnRedis::start(port);
    assert!(
        eventually(15, || async {
            limiter
                .check("other", 5, Duration::from_secs(60))
                .await
                .allowed
                && !limiter.degraded()
        })
        .await,
        "did not return to Redis"
    );
    assert!(metrics
        .render()
        .unwrap()
        .contains("observe_ratelimit_degraded 0"));
}

/// Item 10: a Redis that accepts the connection and the pool's health check but never answers
/// the script must not hang the request: the limiter gives up on it and counts per instance.
#[actix_web::test]
async fn a_stalled_redis_does_not_hang_the_limiter() {
    let stalled = crate::support::stalled_redis::StalledRedis::start().await;
    let limiter = limiter(stalled.url(), "test:stalled:", Metrics::new().unwrap());
    // The bound here only tells a hang from an answer; it measures nothing.
    let decision = tokio::time::timeout(
        Duration::from_secs(20),
        limiter.check("key", 5, Duration::from_secs(60)),
    )
    .await
    .expect("the limiter hung on a stalled Redis");
    assert!(decision.allowed);
    assert!(
        stalled.scripts_received() >= 1,
        "the script never reached the stalled Redis, so the stall was not tested"
    );
    assert!(limiter.degraded(), "a stalled Redis must count as down");
    assert_eq!(allowed(&limiter, "key", 8).await, 4, "limited per instance");
}
