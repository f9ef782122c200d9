//! Uptime monitors of a project (SPEC §7): create, list, detail, update, pause/resume,
//! delete. Scoped like every project route: another organisation's project or monitor is
//! indistinguishable from one that does not exist (404). Every committed change is told to
//! this instance's monitor engine ([`observe_actors::monitor::MonitorControl::changed`]);
//! other instances see it through `updated_at`.

use std::collections::BTreeMap;

use actix_web::{delete, get, patch, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use observe_core::config::Limit;
use observe_core::monitor::{self, MonitorSpec, StatusRange};
use observe_core::store::monitors::{self, Check, Incident, Monitor};
use observe_core::store::{page, projects};
use observe_core::tiers::{Resource, Tier};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, FieldError};
use crate::routes::projects::{List, ListQuery};
use crate::session::Session;
use crate::state::AppState;

/// How many of the last checks and incidents the detail shows.
const RECENT_CHECKS: i64 = 50;
const RECENT_INCIDENTS: i64 = 20;

/// An expected status: one code (`200`) or an inclusive range (`"200-399"`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ExpectedStatus {
    #[schema(example = 200)]
    Code(u16),
    #[schema(example = "200-399")]
    Range(String),
}

impl From<&StatusRange> for ExpectedStatus {
    fn from(r: &StatusRange) -> Self {
        if r.from == r.to {
            ExpectedStatus::Code(r.from)
        } else {
            ExpectedStatus::Range(r.to_string())
        }
    }
}

/// A new monitor. Only `name` and `url` are required. Unknown fields are refused.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // the handler validates the JSON field by field; this documents it
pub struct CreateMonitor {
    /// 1 to 200 characters.
    #[schema(example = "Shop front")]
    pub name: String,
    /// `http://` or `https://`, with a host; at most 2048 characters. A literal private,
    /// loopback or link-local address is refused unless the server sets
    /// `monitors.allow_private_targets` (a host name is checked at every check instead).
    #[schema(example = "https://shop.example.com/health")]
    pub url: String,
    /// GET (default), HEAD, POST, PUT, PATCH, DELETE or OPTIONS.
    #[schema(example = "GET")]
    pub method: Option<String>,
    /// 60, 300 or 900, at least the tier's minimum; default: the shortest the tier allows.
    #[schema(example = 300)]
    pub interval_seconds: Option<u32>,
    /// At least 1, under `interval_seconds` and at most `monitors.max_timeout_secs` (30);
    /// default 30 (or the interval less one).
    #[schema(example = 30)]
    pub timeout_seconds: Option<u32>,
    /// Codes and ranges a healthy answer has; default `["200-399"]`.
    pub expected_status: Option<Vec<ExpectedStatus>>,
    /// Text the body must contain (at most 1024 characters); `null` for none.
    pub keyword: Option<String>,
    /// `true`: the keyword must NOT appear. Default `false`.
    pub keyword_absent: Option<bool>,
    /// Request headers, name → value: at most 20, no CR or LF.
    pub headers: Option<BTreeMap<String, String>>,
    /// `true`: checks carry W3C trace context (`traceparent`) when observe exports traces,
    /// so the checked service's traces show the probe. Default `false`.
    pub send_traceparent: Option<bool>,
}

/// Changes to a monitor: only the fields given change (`"keyword": null` removes the
/// keyword). Same rules as [`CreateMonitor`].
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation of the JSON the handler validates
pub struct UpdateMonitor {
    pub name: Option<String>,
    pub url: Option<String>,
    pub method: Option<String>,
    pub interval_seconds: Option<u32>,
    pub timeout_seconds: Option<u32>,
    pub expected_status: Option<Vec<ExpectedStatus>>,
    pub keyword: Option<String>,
    pub keyword_absent: Option<bool>,
    pub headers: Option<BTreeMap<String, String>>,
    pub send_traceparent: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PauseMonitor {
    /// `true` pauses the monitor (no checks), `false` resumes it.
    pub paused: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MonitorView {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub url: String,
    pub method: String,
    pub interval_seconds: u32,
    pub timeout_seconds: u32,
    pub expected_status: Vec<ExpectedStatus>,
    pub keyword: Option<String>,
    pub keyword_absent: bool,
    pub headers: BTreeMap<String, String>,
    pub send_traceparent: bool,
    pub paused: bool,
    /// `pending` (not checked yet), `up`, `down`, or `paused`.
    #[schema(example = "up")]
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_checked_at: Option<DateTime<Utc>>,
}

impl From<Monitor> for MonitorView {
    fn from(m: Monitor) -> Self {
        let c = m.config;
        Self {
            status: if c.paused {
                "paused".to_string()
            } else {
                m.status.as_str().to_string()
            },
            id: c.id,
            project_id: c.project_id,
            name: c.name,
            url: c.url,
            method: c.method,
            interval_seconds: c.interval_seconds,
            timeout_seconds: c.timeout_seconds,
            expected_status: c.expected_status.iter().map(Into::into).collect(),
            keyword: c.keyword,
            keyword_absent: c.keyword_absent,
            headers: c.headers,
            send_traceparent: c.send_traceparent,
            paused: c.paused,
            created_at: m.created_at,
            updated_at: c.updated_at,
            last_checked_at: m.last_checked_at,
        }
    }
}

/// Percent of successful checks per window (3 decimals); `null` without checks in it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UptimeView {
    #[serde(rename = "24h")]
    #[schema(example = 99.931)]
    pub day: Option<f64>,
    #[serde(rename = "7d")]
    pub week: Option<f64>,
    #[serde(rename = "30d")]
    pub month: Option<f64>,
}

/// Response times of the successful checks of the last 24 hours, in ms (1 decimal).
#[derive(Debug, Serialize, ToSchema)]
pub struct ResponseTimesView {
    #[schema(example = 182.5)]
    pub avg: Option<f64>,
    pub p95: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckView {
    pub started_at: DateTime<Utc>,
    pub ok: bool,
    pub status_code: Option<i32>,
    pub response_ms: Option<i32>,
    /// Why it failed: `dns`, `connect`, `tls`, `timeout`, `status` or `keyword`.
    pub failure: Option<String>,
    pub error: Option<String>,
}

impl From<Check> for CheckView {
    fn from(c: Check) -> Self {
        Self {
            started_at: c.started_at,
            ok: c.ok,
            status_code: c.status_code,
            response_ms: c.response_ms,
            failure: c.failure,
            error: c.error,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentView {
    pub id: Uuid,
    pub started_at: DateTime<Utc>,
    /// `null` while it is open.
    pub resolved_at: Option<DateTime<Utc>>,
    /// The failure kind of the check that opened it.
    pub cause: String,
    pub error: Option<String>,
}

impl From<Incident> for IncidentView {
    fn from(i: Incident) -> Self {
        Self {
            id: i.id,
            started_at: i.started_at,
            resolved_at: i.resolved_at,
            cause: i.cause,
            error: i.error,
        }
    }
}

/// A monitor with its uptime, response times, last 50 checks and last 20 incidents.
#[derive(Debug, Serialize, ToSchema)]
pub struct MonitorDetail {
    #[serde(flatten)]
    pub monitor: MonitorView,
    pub uptime: UptimeView,
    pub response_ms: ResponseTimesView,
    /// Newest first.
    pub recent_checks: Vec<CheckView>,
    /// Newest first.
    pub incidents: Vec<IncidentView>,
}

/// The 422 of invalid monitor input.
fn invalid(problems: Vec<monitor::InputProblem>) -> ApiError {
    ApiError::Validation(
        problems
            .into_iter()
            .map(|p| FieldError::new(p.field, p.reason))
            .collect(),
    )
}

/// What a monitor's input is held to on this server, for an organisation on `tier`.
fn input_rules(state: &AppState, tier: Tier) -> monitor::InputRules {
    let settings = &state.settings.monitors;
    monitor::InputRules {
        default_interval_secs: monitor::default_interval(
            state.tiers.min_monitor_interval_secs(tier),
        ),
        max_timeout_secs: settings.max_timeout_secs,
        allow_private_targets: settings.allow_private_targets,
    }
}

/// 403 when the monitor's interval is shorter than the tier allows.
fn check_interval(state: &AppState, tier: Tier, spec: &MonitorSpec) -> Result<(), ApiError> {
    let minimum_secs = state.tiers.min_monitor_interval_secs(tier);
    if spec.interval_seconds < minimum_secs {
        return Err(ApiError::IntervalBelowTier { tier, minimum_secs });
    }
    Ok(())
}

/// The project's monitors, oldest first.
#[utoipa::path(
    tag = "monitors",
    security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = List<MonitorListItem>), (status = 404, body = crate::error::ErrorBody))
)]
#[get("/projects/{project_id}/monitors")]
pub async fn list_monitors(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<List<MonitorListItem>>, ApiError> {
    let (limit, after) = query.parse()?;
    let project_id = path.into_inner();
    let client = state.db.get().await?;
    projects::get(&client, session.org_id, project_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let rows = monitors::list(&client, session.org_id, project_id, limit, after).await?;
    let (rows, next_cursor) = page(rows, limit, Monitor::cursor);
    // The last 24 hours, hour by hour: the current hour and the 23 before it.
    let now = chrono::Utc::now();
    let current =
        chrono::DurationRound::duration_trunc(now, chrono::Duration::hours(1)).unwrap_or(now);
    let first = current - chrono::Duration::hours(23);
    let ids: Vec<Uuid> = rows.iter().map(|m| m.config.id).collect();
    let counts: std::collections::HashMap<(Uuid, DateTime<Utc>), (i64, i64)> =
        monitors::hourly_checks(&client, project_id, &ids, first)
            .await?
            .into_iter()
            .map(|(id, hour, n, ok)| ((id, hour), (n, ok)))
            .collect();
    let items = rows
        .into_iter()
        .map(|m| {
            let id = m.config.id;
            let last_24h = (0..24)
                .map(|i| {
                    let start = first + chrono::Duration::hours(i);
                    let (checks, ok) = counts.get(&(id, start)).copied().unwrap_or((0, 0));
                    HourUptime { start, checks, ok }
                })
                .collect();
            MonitorListItem {
                monitor: m.into(),
                last_24h,
            }
        })
        .collect();
    Ok(web::Json(List { items, next_cursor }))
}

/// One hour of a monitor's bar.
#[derive(Debug, Serialize, ToSchema)]
pub struct HourUptime {
    pub start: DateTime<Utc>,
    /// Checks made in the hour.
    pub checks: i64,
    /// Of which succeeded.
    pub ok: i64,
}

/// A monitor of the list, with its last 24 hours (oldest first) for the uptime bar.
#[derive(Debug, Serialize, ToSchema)]
pub struct MonitorListItem {
    #[serde(flatten)]
    pub monitor: MonitorView,
    pub last_24h: Vec<HourUptime>,
}

/// Creates a monitor, within the organisation tier's monitor count and minimum interval.
#[utoipa::path(
    tag = "monitors",
    security(("bearer" = [])),
    request_body = CreateMonitor,
    responses(
        (status = 201, body = MonitorView),
        (status = 403, body = crate::error::ErrorBody, description = "`tier_limit`: the tier's monitor limit is reached (`details.resource` is `monitors`), or the interval is under the tier's minimum (`monitor_interval`); `details.limit` says the limit"),
        (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody, description = "`validation_failed`: `details` lists every invalid field"),
    )
)]
#[post("/projects/{project_id}/monitors")]
pub async fn create_monitor(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let project_id = path.into_inner();
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    // The organisation first (the order deleting an organisation locks in), then the project:
    // it cannot be deleted before the monitor is in.
    let tier = monitors::lock_organisation(&tx, session.org_id)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    projects::get_locked(&tx, session.org_id, project_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let spec = monitor::validate_input(&body, None, &input_rules(&state, tier)).map_err(invalid)?;
    check_interval(&state, tier, &spec)?;
    // Unlimited tiers skip the count: creating thousands of monitors stays linear.
    if !matches!(state.tiers.limits(tier).monitors, Limit::Unlimited) {
        let current = monitors::count_in_organisation(&tx, session.org_id).await?;
        state
            .tiers
            .may_add(tier, Resource::Monitors, current)
            .map_err(ApiError::TierLimit)?;
    }
    let created = monitors::insert(&tx, project_id, &spec).await?;
    tx.commit().await?;
    state.monitors.changed(created.config.id);
    Ok(HttpResponse::Created().json(MonitorView::from(created)))
}

/// One monitor: its status, uptime over 24 h / 7 d / 30 d, response times over 24 h, last
/// checks and incidents.
#[utoipa::path(
    tag = "monitors",
    security(("bearer" = [])),
    responses((status = 200, body = MonitorDetail), (status = 404, body = crate::error::ErrorBody))
)]
#[get("/projects/{project_id}/monitors/{monitor_id}")]
pub async fn get_monitor(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<web::Json<MonitorDetail>, ApiError> {
    let (project_id, monitor_id) = path.into_inner();
    let client = state.db.get().await?;
    let found = monitors::get(&client, session.org_id, project_id, monitor_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let summary = monitors::summary(&client, project_id, monitor_id).await?;
    let checks = monitors::recent_checks(&client, project_id, monitor_id, RECENT_CHECKS).await?;
    let incidents =
        monitors::recent_incidents(&client, project_id, monitor_id, RECENT_INCIDENTS).await?;
    Ok(web::Json(MonitorDetail {
        monitor: found.into(),
        uptime: UptimeView {
            day: summary.uptime.day,
            week: summary.uptime.week,
            month: summary.uptime.month,
        },
        response_ms: ResponseTimesView {
            avg: summary.response_ms.avg,
            p95: summary.response_ms.p95,
        },
        recent_checks: checks.into_iter().map(Into::into).collect(),
        incidents: incidents.into_iter().map(Into::into).collect(),
    }))
}

/// Changes a monitor: only the fields given. Its status, failure streak and open incident are
/// kept; the change reaches the running check at once.
#[utoipa::path(
    tag = "monitors",
    security(("bearer" = [])),
    request_body = UpdateMonitor,
    responses(
        (status = 200, body = MonitorView),
        (status = 403, body = crate::error::ErrorBody, description = "`tier_limit`: the new interval is under the tier's minimum"),
        (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody),
    )
)]
#[patch("/projects/{project_id}/monitors/{monitor_id}")]
pub async fn update_monitor(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<serde_json::Value>,
) -> Result<web::Json<MonitorView>, ApiError> {
    let (project_id, monitor_id) = path.into_inner();
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    let current = monitors::get_for_update(&tx, session.org_id, project_id, monitor_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let tier = monitors::organisation_tier(&tx, session.org_id)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let base = MonitorSpec::of(&current.config);
    let spec =
        monitor::validate_input(&body, Some(&base), &input_rules(&state, tier)).map_err(invalid)?;
    // A monitor whose interval a downgrade left under the minimum may still be renamed; a
    // new interval must be allowed.
    if spec.interval_seconds != base.interval_seconds {
        check_interval(&state, tier, &spec)?;
    }
    let updated = monitors::update(&tx, monitor_id, &spec).await?;
    tx.commit().await?;
    state.monitors.changed(monitor_id);
    Ok(web::Json(updated.into()))
}

/// Pauses (`{"paused": true}`: no more checks) or resumes (`{"paused": false}`) a monitor.
#[utoipa::path(
    tag = "monitors",
    security(("bearer" = [])),
    request_body = PauseMonitor,
    responses(
        (status = 200, body = MonitorView),
        (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody),
    )
)]
#[patch("/projects/{project_id}/monitors/{monitor_id}/pause")]
pub async fn pause_monitor(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<PauseMonitor>,
) -> Result<web::Json<MonitorView>, ApiError> {
    let (project_id, monitor_id) = path.into_inner();
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    if !body.paused {
        // Resuming counts against the tier like creating: after a downgrade paused the
        // monitors beyond the limit, a resume must not undo it.
        let tier = monitors::lock_organisation(&tx, session.org_id)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        if !matches!(state.tiers.limits(tier).monitors, Limit::Unlimited) {
            let running =
                monitors::count_running_in_organisation(&tx, session.org_id, monitor_id).await?;
            state
                .tiers
                .may_add(tier, Resource::Monitors, running)
                .map_err(ApiError::TierLimit)?;
        }
    }
    let updated = monitors::set_paused(&tx, session.org_id, project_id, monitor_id, body.paused)
        .await?
        .ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    state.monitors.changed(monitor_id);
    Ok(web::Json(updated.into()))
}

/// Deletes a monitor with its incidents; its checks stop at once, and its stored check results
/// are purged in the background (bounded batches), so the answer never waits for them.
#[utoipa::path(
    tag = "monitors",
    security(("bearer" = [])),
    responses((status = 204, description = "deleted"), (status = 404, body = crate::error::ErrorBody))
)]
#[delete("/projects/{project_id}/monitors/{monitor_id}")]
pub async fn delete_monitor(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (project_id, monitor_id) = path.into_inner();
    let client = state.db.get().await?;
    if !monitors::delete(&client, session.org_id, project_id, monitor_id).await? {
        return Err(ApiError::NotFound);
    }
    state.monitors.changed(monitor_id);
    Ok(HttpResponse::NoContent().finish())
}
