//! The raw API request log (SPEC §7): a project's requests, newest first, filtered by route,
//! method, status (a code or a class like `5xx`) and minimum duration within a time range, a
//! keyset page at a time ([`observe_core::store::raw_rows`]). Scoped like every project route.

use actix_web::{get, web};
use chrono::{DateTime, Utc};
use observe_core::store::raw_rows::{self, RequestFilter, RequestRow, RowCursor, RowList};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;
use crate::query::{checked, keyset_page, readable_project, text_filter, PageQuery, RangeQuery};
use crate::routes::projects::List;
use crate::session::Session;
use crate::state::AppState;
use crate::validate::Problems;

/// Routes are stored at most 2048 characters long.
const MAX_ROUTE: usize = 2048;

/// Filters of the log; each one given narrows it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RequestFilters {
    /// The route template, exactly.
    #[param(example = "/users/{id}")]
    pub route: Option<String>,
    /// The HTTP method (any case).
    #[param(example = "GET")]
    pub method: Option<String>,
    /// A status code (`404`) or a class (`5xx`, `4xx`, …).
    #[param(example = "5xx")]
    pub status: Option<String>,
    /// Only requests that took at least this long (milliseconds).
    #[param(example = 500)]
    pub min_duration_ms: Option<String>,
}

/// One stored API request.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestView {
    /// `null` for requests stored before requests had ids.
    pub id: Option<Uuid>,
    pub timestamp: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    #[schema(example = "GET")]
    pub method: String,
    #[schema(example = "/users/{id}")]
    pub route: String,
    #[schema(example = 200)]
    pub status_code: i32,
    pub duration_ms: f64,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub request_size: Option<i64>,
    pub response_size: Option<i64>,
}

impl From<RequestRow> for RequestView {
    fn from(r: RequestRow) -> Self {
        Self {
            id: r.id,
            timestamp: r.ts,
            received_at: r.received_at,
            method: r.method,
            route: r.route,
            status_code: r.status_code,
            duration_ms: r.duration_ms,
            user_agent: r.user_agent,
            ip: r.ip,
            request_size: r.request_size,
            response_size: r.response_size,
        }
    }
}

/// The filters as the store takes them; each bad one is added to `problems`.
fn filter_of(f: &RequestFilters, problems: &mut Problems) -> RequestFilter {
    let method = text_filter(problems, "method", &f.method, 16).and_then(|m| {
        if m.bytes().all(|b| b.is_ascii_alphabetic()) {
            Some(m.to_ascii_uppercase())
        } else {
            problems.add("method", "must be an HTTP method like GET");
            None
        }
    });
    let status = text_filter(problems, "status", &f.status, 3).and_then(|s| match s.parse() {
        Ok(status) => Some(status),
        Err(reason) => {
            problems.add("status", reason);
            None
        }
    });
    let min_duration_ms = text_filter(problems, "min_duration_ms", &f.min_duration_ms, 32)
        .and_then(|d| match d.parse::<f64>() {
            Ok(ms) if ms.is_finite() && ms >= 0.0 => Some(ms),
            _ => {
                problems.add(
                    "min_duration_ms",
                    "must be a number of milliseconds, 0 or more",
                );
                None
            }
        });
    RequestFilter {
        route: text_filter(problems, "route", &f.route, MAX_ROUTE),
        method,
        status,
        min_duration_ms,
    }
}

/// The project's API requests, newest first. Pages hold every request once, however many
/// share a timestamp.
#[utoipa::path(
    tag = "api-monitoring",
    security(("bearer" = [])),
    params(RangeQuery, PageQuery, RequestFilters),
    responses(
        (status = 200, body = List<RequestView>),
        (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody, description = "`validation_failed`: `details` name every bad parameter"),
    )
)]
#[get("/projects/{project_id}/api-requests")]
pub async fn list_api_requests(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
    range: web::Query<RangeQuery>,
    page: web::Query<PageQuery>,
    filters: web::Query<RequestFilters>,
) -> Result<web::Json<List<RequestView>>, ApiError> {
    let client = state.db.get().await?;
    let (project, tier) = readable_project(&client, &session, path.into_inner()).await?;
    let mut problems = Problems::default();
    let range = range.check(&state, tier, &mut problems);
    let (limit, cursor) = page.check(|c| RowCursor::decode(c, RowList::Requests), &mut problems);
    let filter = filter_of(&filters, &mut problems);
    problems.finish()?;
    let mut range = checked(range)?;
    if let Some(c) = &cursor {
        range = range.starting_at(c.from);
    }
    let rows = raw_rows::requests(
        &client,
        project.id,
        (range.from, range.to),
        &filter,
        cursor.map(|c| c.after),
        limit + 1,
    )
    .await?;
    let from = range.from;
    let (rows, next_cursor) = keyset_page(rows, limit, |r| {
        RowCursor {
            list: RowList::Requests,
            after: r.position,
            from,
        }
        .encode()
    });
    Ok(web::Json(List {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}
