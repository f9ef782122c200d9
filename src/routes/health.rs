//! Liveness and readiness probes.
//!
//! `/health/live` answers 200 as long as the process serves HTTP. `/health/ready` checks
//! PostgreSQL and Redis concurrently, each bounded by a timeout, and answers 503 naming the
//! failed dependency; nothing is cached, so it turns 200 again by itself once the dependency
//! is back (the pools reconnect on their own).

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
    /// `ok` when every check passed, else `unavailable`.
    pub status: &'static str,
    /// One entry per dependency: `postgres`, `redis`.
    pub checks: BTreeMap<&'static str, Check>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    /// `ok`, `error` or `timeout`.
    pub status: &'static str,
    pub latency_ms: u64,
}

/// Liveness: the process is up and serving.
#[utoipa::path(tag = "health", responses((status = 200, body = Live)))]
#[get("/health/live")]
pub async fn live() -> web::Json<Live> {
    web::Json(Live { status: "ok" })
}

/// Readiness: PostgreSQL and Redis both answer.
#[utoipa::path(
    tag = "health",
    responses(
        (status = 200, description = "every dependency answers", body = Ready),
        (status = 503, description = "at least one dependency does not", body = Ready),
    )
)]
#[get("/health/ready")]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let (postgres, redis) = tokio::join!(
        check("postgres", observe_core::db::ping(&state.db)),
        check("redis", observe_core::redis::ping(&state.redis)),
    );
    let mut checks = BTreeMap::new();
    for (name, result) in [("postgres", postgres), ("redis", redis)] {
        state
            .metrics
            .dependency_up
            .with_label_values(&[name])
            .set(i64::from(result.status == "ok"));
        checks.insert(name, result);
    }
    let all_ok = checks.values().all(|c| c.status == "ok");
    let body = Ready {
        status: if all_ok { "ok" } else { "unavailable" },
        checks,
    };
    if all_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Runs one check with a timeout. The error text goes to the log, not to the client.
async fn check<E: std::fmt::Display>(
    name: &'static str,
    probe: impl Future<Output = Result<(), E>>,
) -> Check {
    let started = Instant::now();
    let status = match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(dependency = name, error = %e, "readiness check failed");
            "error"
        }
        Err(_) => {
            tracing::warn!(
                dependency = name,
                timeout_ms = CHECK_TIMEOUT.as_millis() as u64,
                "readiness check timed out"
            );
            "timeout"
        }
    };
    Check {
        status,
        latency_ms: started.elapsed().as_millis() as u64,
    }
}
