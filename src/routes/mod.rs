//! The HTTP routes, one module per area. [`register`] is the single list of everything the
//! server serves; routes registered through it are collected into the OpenAPI document.

use utoipa_actix_web::service_config::ServiceConfig;

pub mod health;
pub mod metrics;

/// Registers every documented route.
pub fn register(cfg: &mut ServiceConfig) {
    cfg.service(health::live)
        .service(health::ready)
        .service(metrics::metrics);
}
