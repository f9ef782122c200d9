//! The HTTP routes, one module per area. [`register`] is the single list of everything the
//! server serves; routes registered through it are collected into the OpenAPI document.

use utoipa_actix_web::service_config::ServiceConfig;

pub mod admin;
pub mod api_requests;
pub mod auth;
pub mod billing;
pub mod dashboard;
pub mod error_groups;
pub mod events;
pub mod github;
pub mod health;
pub mod ingest;
pub mod metrics;
pub mod monitors;
pub mod projects;
pub mod sdk;
pub mod sentry;
pub mod series;
pub mod stats;

/// Registers every documented route.
pub fn register(cfg: &mut ServiceConfig) {
    // The router tries services in order, and ingestion is the hot path: first.
    cfg.service(
        utoipa_actix_web::scope("/ingest")
            .wrap(ingest::cors())
            .service(ingest::events)
            .service(ingest::identify)
            .service(ingest::errors)
            .service(ingest::requests)
            .service(ingest::metrics),
    )
    // Sentry SDKs (`SENTRY_DSN`): their envelopes into the same ingestion.
    .service(
        utoipa_actix_web::scope("/api")
            .wrap(sentry::cors())
            .service(sentry::envelope)
            .service(sentry::store),
    )
    .service(sdk::snippet)
    .service(health::live)
    .service(health::ready)
    .service(metrics::metrics)
    .service(admin::stats)
    .service(auth::register)
    .service(auth::login)
    .service(auth::refresh)
    .service(auth::logout)
    .service(auth::me)
    .service(auth::change_password)
    .service(auth::delete_account)
    .service(auth::forgot_password)
    .service(auth::reset_password)
    .service(auth::change_email)
    .service(auth::confirm_email)
    .service(dashboard::features)
    .service(github::github_login)
    .service(github::github_callback)
    .service(projects::list_projects)
    .service(projects::create_project)
    .service(projects::get_project)
    .service(projects::delete_project)
    .service(projects::list_api_keys)
    .service(projects::create_api_key)
    .service(projects::revoke_api_key)
    .service(monitors::list_monitors)
    .service(monitors::create_monitor)
    .service(monitors::get_monitor)
    .service(monitors::update_monitor)
    .service(monitors::pause_monitor)
    .service(monitors::delete_monitor)
    .service(stats::project_stats)
    .service(stats::api_stats)
    .service(events::list_events)
    .service(error_groups::list_error_groups)
    .service(error_groups::get_error_group)
    .service(error_groups::resolve_error_group)
    .service(error_groups::unresolve_error_group)
    .service(api_requests::list_api_requests)
    .service(series::metrics_query)
    .service(series::metrics_export)
    .service(series::costs)
    .service(billing::initiate)
    .service(billing::webhook)
    .service(billing::cancel)
    .service(billing::subscription)
    .service(billing::events);
}
