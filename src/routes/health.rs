//! Liveness and readiness probes.
//!
//! `/health/live` answers 200 as long as the process serves HTTP. `/health/ready` checks
//! PostgreSQL and Redis concurrently, each bounded by a timeout; nothing is cached, so it
//! follows the dependencies by itself (the pools reconnect on their own).
//!
//! **Why Redis only degrades readiness.** PostgreSQL is where every answer comes from: without
//! it nothing can be stored (an ingest 202 means committed), no key or session checked, so an
//! instance that cannot reach it is not ready (503) and a load balancer should send traffic
//! elsewhere. Redis holds only what observe can do without for a while: the ingest rate-limit
//! budgets, which each instance then enforces locally (`observe_ratelimit_degraded 1`), and
//! counters that fall back as their routes document. Every instance shares the one Redis, so
//! answering 503 for it would make a load balancer (or Kubernetes) pull *every* instance at
//! once and turn a degraded service into none. So a Redis outage answers 200 with
//! `"status": "degraded"` and `checks.redis.status = "degraded"`, visible to operators (and in
//! `observe_dependency_up{dependency="redis"} 0`) without taking the service down. This
//! follows Kubernetes' guidance that readiness reports whether *this* instance can serve, not
//! the health of a dependency all replicas share.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, ToSchema)]
pub struct Live {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// `ok` when every check passed; `degraded` (still 200) when only Redis failed;
    /// `unavailable` (503) when PostgreSQL failed.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// One entry per dependency: `postgres`, `redis`.
    pub checks: BTreeMap<&'static str, Check>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    /// `ok`; for PostgreSQL `error` or `timeout`; for Redis `degraded` (observe keeps
    /// serving with per-instance limits).
    pub status: &'static str,
    /// Why a failed check failed: `error` or `timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<&'static str>,
    pub latency_ms: u64,
}

/// What a dependency's failure does to readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Without it the instance cannot serve: 503.
    Required,
    /// The instance serves without it, with less: 200, marked `degraded`.
    Degradable,
}

/// Liveness: the process is up and serving.
#[utoipa::path(tag = "health", responses((status = 200, body = Live)))]
#[get("/health/live")]
pub async fn live() -> web::Json<Live> {
    web::Json(Live { status: "ok" })
}

/// Readiness: 200 when PostgreSQL answers (with Redis `ok`, or `degraded` while Redis is
/// away: observe keeps serving with per-instance rate limits); 503 when PostgreSQL does not.
#[utoipa::path(
    tag = "health",
    responses(
        (status = 200, description = "PostgreSQL answers; `status` is `ok`, or `degraded` while Redis does not answer", body = Ready),
        (status = 503, description = "PostgreSQL does not answer", body = Ready),
    )
)]
#[get("/health/ready")]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let (checks, unavailable, degraded) = probe(&state).await;
    let status = if unavailable {
        "unavailable"
    } else if degraded {
        "degraded"
    } else {
        "ok"
    };
    let body = Ready { status, checks };
    if unavailable {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

/// Checks PostgreSQL and Redis (each bounded by [`CHECK_TIMEOUT`]) and sets
/// `observe_dependency_up` from what it found: the readiness probe's answer, and what
/// `/metrics` refreshes on every scrape so the gauge never shows a stale probe's answer.
/// Returns each check, whether a required one failed, and whether a degradable one did.
pub(crate) async fn probe(state: &AppState) -> (BTreeMap<&'static str, Check>, bool, bool) {
    let (postgres, redis) = tokio::join!(
        check(
            "postgres",
            Role::Required,
            observe_core::db::ping(&state.db)
        ),
        check(
            "redis",
            Role::Degradable,
            observe_core::redis::ping(&state.redis)
        ),
    );
    let mut checks = BTreeMap::new();
    let (mut unavailable, mut degraded) = (false, false);
    for (name, (result, role)) in [("postgres", postgres), ("redis", redis)] {
        let up = result.status == "ok";
        state
            .metrics
            .dependency_up
            .with_label_values(&[name])
            .set(i64::from(up));
        match role {
            _ if up => {}
            Role::Required => unavailable = true,
            Role::Degradable => degraded = true,
        }
        checks.insert(name, result);
    }
    (checks, unavailable, degraded)
}

/// Runs one check with a timeout. The error text goes to the log, not to the client.
async fn check<E: std::fmt::Display>(
    name: &'static str,
    role: Role,
    probe: impl Future<Output = Result<(), E>>,
) -> (Check, Role) {
    let started = Instant::now();
    let cause = match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            tracing::warn!(dependency = name, error = %e, "readiness check failed");
            Some("error")
        }
        Err(_) => {
            tracing::warn!(
                dependency = name,
                timeout_ms = CHECK_TIMEOUT.as_millis() as u64,
                "readiness check timed out"
            );
            Some("timeout")
        }
    };
    let status = match (cause, role) {
        (None, _) => "ok",
        (Some(_), Role::Degradable) => "degraded",
        (Some(cause), Role::Required) => cause,
    };
    let check = Check {
        status,
        cause,
        latency_ms: started.elapsed().as_millis() as u64,
    };
    (check, role)
}
