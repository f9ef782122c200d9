//! `GET /admin/stats`: operator-wide figures, guarded by the `x-admin-token` header.
//!
//! Without a configured `ADMIN_TOKEN` the route does not exist (404), so a deployment that
//! never set one exposes nothing. The token is compared in constant time.

use actix_web::{get, web, HttpRequest};
use observe_core::store::admin;
use secrecy::ExposeSecret;
use serde::Serialize;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminStats {
    pub users: i64,
    pub organisations: OrganisationCounts,
    pub projects: i64,
    pub api_keys: KeyCounts,
    /// Monthly recurring revenue in kobo: the monthly amounts of the subscriptions still paying
    /// (active or in grace, not cancelled at period end). A tier set by hand earns nothing.
    pub mrr_kobo: i64,
    /// Subscriptions by state.
    pub subscriptions: SubscriptionCounts,
    pub emails: EmailCounts,
    /// Items ingested this calendar month (UTC), all organisations.
    pub ingested_this_month: IngestedCounts,
    /// Items of the last 24 hours, all projects (closed hours from rollups, the rest from raw
    /// rows, so the figures are live).
    pub last_24h: IngestedCounts,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IngestedCounts {
    pub events: i64,
    pub errors: i64,
    pub api_requests: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrganisationCounts {
    pub total: i64,
    pub hobby: i64,
    pub pro: i64,
    pub team: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionCounts {
    pub active: i64,
    pub grace: i64,
    pub ended: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCounts {
    pub active: i64,
    pub revoked: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmailCounts {
    pub pending: i64,
    pub sent: i64,
    pub failed: i64,
}

/// Whether `given` is the configured admin token; 404 when none is configured.
fn check_token(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let expected = state.settings.admin.token.expose_secret();
    if expected.is_empty() {
        return Err(ApiError::NotFound);
    }
    let given = req
        .headers()
        .get("x-admin-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(given.ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized {
            code: "invalid_admin_token",
            message: "send the configured admin token in the x-admin-token header",
        })
    }
}

/// Users, organisations by tier, projects, API keys, MRR, the email outbox, this month's
/// ingested items and the last 24 hours' events, errors and API requests.
#[utoipa::path(
    tag = "operations",
    params(("x-admin-token" = String, Header, description = "the configured ADMIN_TOKEN")),
    responses(
        (status = 200, body = AdminStats),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody, description = "no admin token is configured"),
    )
)]
#[get("/admin/stats")]
pub async fn stats(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<web::Json<AdminStats>, ApiError> {
    check_token(&req, &state)?;
    let client = state.db.get().await?;
    let c = admin::counts(&client).await?;
    let day = admin::last_24h(&client, chrono::Utc::now()).await?;
    let (by_state, mrr) = observe_core::store::billing::totals(&client).await?;
    let in_state = |name: &str| {
        by_state
            .iter()
            .find(|(state, _)| state == name)
            .map_or(0, |(_, n)| *n)
    };
    Ok(web::Json(AdminStats {
        users: c.users,
        organisations: OrganisationCounts {
            total: c.organisations_hobby + c.organisations_pro + c.organisations_team,
            hobby: c.organisations_hobby,
            pro: c.organisations_pro,
            team: c.organisations_team,
        },
        projects: c.projects,
        api_keys: KeyCounts {
            active: c.api_keys_active,
            revoked: c.api_keys_revoked,
        },
        mrr_kobo: mrr,
        subscriptions: SubscriptionCounts {
            active: in_state("active"),
            grace: in_state("grace"),
            ended: in_state("ended"),
        },
        emails: EmailCounts {
            pending: c.emails_pending,
            sent: c.emails_sent,
            failed: c.emails_failed,
        },
        ingested_this_month: IngestedCounts {
            events: c.events_this_month,
            errors: c.errors_this_month,
            api_requests: c.api_requests_this_month,
        },
        last_24h: IngestedCounts {
            events: day.events,
            errors: day.errors,
            api_requests: day.api_requests,
        },
    }))
}
