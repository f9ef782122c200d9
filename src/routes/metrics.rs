//! `GET /metrics`: the Prometheus text exposition of observe's own metrics.

use actix_web::{get, web, HttpResponse};

use crate::error::ApiError;
use crate::state::AppState;

/// Prometheus metrics: HTTP requests by route template, DB pool, actor restarts.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4"))
)]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // `observe_dependency_up` as of this scrape, not of the last readiness probe.
    super::health::probe(&state).await;
    let pool = observe_core::db::pool_status(&state.db);
    for (state_label, value) in [
        ("size", pool.size),
        ("available", pool.available),
        ("max", pool.max),
        ("waiting", pool.waiting),
    ] {
        state
            .metrics
            .db_pool
            .with_label_values(&[state_label])
            .set(value);
    }
    let text = state
        .metrics
        .render()
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}
