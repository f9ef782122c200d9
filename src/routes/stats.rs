//! `GET /projects/{id}/stats` (analytics) and `GET /projects/{id}/api-stats` (API monitoring)
//! over any range (SPEC §7): closed hours from the Aggregator's rollups, the current hour and
//! any hour not rolled up yet from raw rows, so an item ingested a second ago is counted.
//! Unique visitors and percentiles come from merged sketches (within 2%; see the README).
//! Scoped like every project route: another organisation's project is a 404.

use actix_web::{get, web};
use chrono::{DateTime, Duration, Utc};
use observe_core::range::{GroupBy, TimeRange};
use observe_core::store::stats::{self, EndpointStats, EventStats, EventsPoint, Top};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::query::{readable_project, RangeQuery};
use crate::session::Session;
use crate::state::AppState;
use crate::validate::Problems;

/// Ranges up to this long are bucketed by hour unless `group_by` says otherwise; longer, by day.
const HOURLY_UP_TO: Duration = Duration::hours(48);

/// One bucket of the series, or the totals of the range.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsPoint {
    /// The bucket's start (its first hour, or its day's midnight in `tz`); for the totals, the
    /// range's start.
    pub start: DateTime<Utc>,
    pub events: i64,
    pub pageviews: i64,
    /// Distinct people: the user of each event when known (identify applied), else its visitor.
    pub visitors: u64,
    /// Distinct identified users.
    pub people: u64,
}

impl From<EventsPoint> for StatsPoint {
    fn from(p: EventsPoint) -> Self {
        Self {
            start: p.start,
            events: p.events,
            pageviews: p.pageviews,
            visitors: p.visitors,
            people: p.people,
        }
    }
}

/// An entry of a top list.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopEntry {
    pub value: String,
    pub count: i64,
}

impl From<Top> for TopEntry {
    fn from(t: Top) -> Self {
        Self {
            value: t.value,
            count: t.count,
        }
    }
}

/// Analytics of a project over a range.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsView {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    #[schema(example = "Africa/Lagos")]
    pub tz: String,
    #[schema(example = "hour")]
    pub group_by: String,
    pub totals: StatsPoint,
    /// Every bucket of the range, zero-filled.
    pub series: Vec<StatsPoint>,
    /// Page views by URL, most first (at most 10).
    pub top_pages: Vec<TopEntry>,
    /// Page views by referrer.
    pub top_referrers: Vec<TopEntry>,
    /// Events by name.
    pub top_events: Vec<TopEntry>,
}

/// The range of a read route, or a 422 naming every bad parameter.
async fn checked_range(
    state: &AppState,
    session: &Session,
    project_id: Uuid,
    query: &RangeQuery,
) -> Result<(observe_core::db::PgClient, TimeRange), ApiError> {
    let client = state.db.get().await?;
    let (_, tier) = readable_project(&client, session, project_id).await?;
    let mut problems = Problems::default();
    let range = query.check(state, tier, &mut problems);
    problems.finish()?;
    let range = range
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("range lost")))?
        .whole_hours(query.from.as_deref());
    Ok((client, range))
}

/// Analytics over a range: series of events, page views, unique visitors (people, not
/// devices) and identified people; totals; top pages, referrers and event names.
#[utoipa::path(
    tag = "analytics",
    security(("bearer" = [])),
    params(("project_id" = Uuid, Path), RangeQuery),
    responses(
        (status = 200, body = StatsView),
        (status = 404, body = crate::error::ErrorBody),
        (status = 422, description = "A bad parameter, named in `details`", body = crate::error::ErrorBody),
    )
)]
#[get("/projects/{project_id}/stats")]
pub async fn project_stats(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
    query: web::Query<RangeQuery>,
) -> Result<web::Json<StatsView>, ApiError> {
    let project_id = path.into_inner();
    let (client, range) = checked_range(&state, &session, project_id, &query).await?;
    let by = range
        .group_by
        .unwrap_or(if range.to - range.from <= HOURLY_UP_TO {
            GroupBy::Hour
        } else {
            GroupBy::Day
        });
    let EventStats {
        totals,
        series,
        top_pages,
        top_referrers,
        top_events,
    } = stats::event_stats(&client, project_id, &range, by, Utc::now()).await?;
    Ok(web::Json(StatsView {
        from: range.from,
        to: range.to,
        tz: range.tz.name().to_string(),
        group_by: by.as_str().to_string(),
        totals: totals.into(),
        series: series.into_iter().map(Into::into).collect(),
        top_pages: top_pages.into_iter().map(Into::into).collect(),
        top_referrers: top_referrers.into_iter().map(Into::into).collect(),
        top_events: top_events.into_iter().map(Into::into).collect(),
    }))
}

/// One endpoint of the API over the range.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointView {
    #[schema(example = "GET")]
    pub method: String,
    #[schema(example = "/users/{id}")]
    pub route: String,
    pub count: i64,
    pub errors_4xx: i64,
    pub errors_5xx: i64,
    /// (4xx + 5xx) ÷ count.
    pub error_rate: f64,
    pub avg_ms: f64,
    /// Percentiles from merged DDSketches: within 1% of a duration at that rank.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl From<EndpointStats> for EndpointView {
    fn from(e: EndpointStats) -> Self {
        Self {
            method: e.method,
            route: e.route,
            count: e.count,
            errors_4xx: e.errors_4xx,
            errors_5xx: e.errors_5xx,
            error_rate: e.error_rate,
            avg_ms: e.avg_ms,
            p50_ms: e.p50_ms,
            p95_ms: e.p95_ms,
            p99_ms: e.p99_ms,
        }
    }
}

/// API monitoring over a range.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiStatsView {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Every (method, route) seen in the range, busiest first.
    pub items: Vec<EndpointView>,
}

/// Per endpoint (method and route): count, error rate, average and p50/p95/p99 latency over
/// any range.
#[utoipa::path(
    tag = "api-monitoring",
    security(("bearer" = [])),
    params(("project_id" = Uuid, Path), RangeQuery),
    responses(
        (status = 200, body = ApiStatsView),
        (status = 404, body = crate::error::ErrorBody),
        (status = 422, description = "A bad parameter, named in `details`", body = crate::error::ErrorBody),
    )
)]
#[get("/projects/{project_id}/api-stats")]
pub async fn api_stats(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
    query: web::Query<RangeQuery>,
) -> Result<web::Json<ApiStatsView>, ApiError> {
    let project_id = path.into_inner();
    let (client, range) = checked_range(&state, &session, project_id, &query).await?;
    let items = stats::endpoint_stats(&client, project_id, &range, Utc::now()).await?;
    Ok(web::Json(ApiStatsView {
        from: range.from,
        to: range.to,
        items: items.into_iter().map(Into::into).collect(),
    }))
}
