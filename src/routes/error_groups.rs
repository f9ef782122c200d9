//! Errors grouped into issues (SPEC §7): the list with each group's occurrences and affected
//! users within a time range next to its totals, one group's detail (trend over the range,
//! recent occurrences with stack traces, tags, people, regressions), and resolving
//! ([`observe_core::store::error_groups`]). Scoped like every project route: another
//! organisation's project, or a group of another project, is a 404.

use actix_web::{get, post, web};
use chrono::{DateTime, Utc};
use observe_core::range::GroupBy;
use observe_core::store::error_groups::{
    self, ErrorGroup, ErrorGroupId, GroupCursor, ListedGroup, Occurrence, Sort, StatusFilter,
};
use observe_core::store::projects;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;
use crate::query::{checked, keyset_page, readable_project, text_filter, PageQuery, RangeQuery};
use crate::routes::projects::List;
use crate::session::Session;
use crate::state::AppState;
use crate::validate::Problems;

/// How many of a group's newest occurrences its detail shows.
const RECENT_OCCURRENCES: i64 = 20;
/// Values shown per tag key, and tag keys shown (the most frequent).
const TAG_VALUES: i64 = 10;
const TAG_KEYS: i64 = 30;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GroupFilters {
    /// `unresolved` (default), `resolved` or `all` (ignored groups too).
    #[param(example = "unresolved")]
    pub status: Option<String>,
    /// `last_seen` (default), `count` (occurrences within the range) or `first_seen`; each
    /// newest or largest first.
    #[param(example = "last_seen")]
    pub sort: Option<String>,
}

/// An error group and its totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorGroupView {
    pub id: Uuid,
    pub fingerprint: String,
    #[serde(rename = "type")]
    #[schema(example = "TypeError")]
    pub error_type: String,
    pub message: String,
    #[schema(example = "error")]
    pub level: String,
    /// `unresolved`, `resolved` or `ignored`.
    #[schema(example = "unresolved")]
    pub status: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Every occurrence stored.
    pub occurrences: i64,
    /// Distinct people it ever reached (the user id, else the visitor id).
    pub affected_users: i64,
    /// Times a new occurrence reopened it after it was resolved.
    pub regressions: i32,
    pub regressed_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
}

impl From<&ErrorGroup> for ErrorGroupView {
    fn from(g: &ErrorGroup) -> Self {
        Self {
            id: g.id.0,
            fingerprint: g.fingerprint.clone(),
            error_type: g.error_type.clone(),
            message: g.message.clone(),
            level: g.level.clone(),
            status: g.status.clone(),
            first_seen: g.first_seen,
            last_seen: g.last_seen,
            occurrences: g.occurrences,
            affected_users: g.affected_people,
            regressions: g.regressions,
            regressed_at: g.regressed_at,
            resolved_at: g.resolved_at,
        }
    }
}

/// A group of the list: its totals and its figures within the range.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorGroupItem {
    #[serde(flatten)]
    pub group: ErrorGroupView,
    pub occurrences_in_range: i64,
    pub affected_users_in_range: i64,
}

impl From<ListedGroup> for ErrorGroupItem {
    fn from(l: ListedGroup) -> Self {
        Self {
            group: (&l.group).into(),
            occurrences_in_range: l.range_occurrences,
            affected_users_in_range: l.range_people,
        }
    }
}

/// The range a detail covers, as resolved, and the group's figures in it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RangeView {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    #[schema(example = "Africa/Lagos")]
    pub tz: String,
    #[schema(example = "hour")]
    pub group_by: String,
    pub occurrences: i64,
    pub affected_users: i64,
}

/// One bucket of a trend: occurrences from `start` to the next bucket's start.
#[derive(Debug, Serialize, ToSchema)]
pub struct BucketView {
    pub start: DateTime<Utc>,
    pub count: i64,
}

/// One stored occurrence, with its stack trace as the SDK sent it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OccurrenceView {
    pub timestamp: DateTime<Utc>,
    #[serde(rename = "type")]
    pub error_type: String,
    pub message: String,
    /// A string, or frames `{function, module|filename, lineno, in_app}`.
    #[schema(value_type = Option<Object>)]
    pub stack_trace: Option<serde_json::Value>,
    pub level: String,
    pub environment: Option<String>,
    pub release: Option<String>,
    pub url: Option<String>,
    pub user_id: Option<String>,
    pub visitor_id: Option<String>,
    #[schema(value_type = Object)]
    pub tags: serde_json::Value,
    /// What else the occurrence carried: `breadcrumbs`, `contexts`, `request`, `exceptions`
    /// (the rest of a chain), `sdk`, … (Sentry SDKs send these); absent when nothing was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub context: Option<serde_json::Value>,
}

impl From<Occurrence> for OccurrenceView {
    fn from(o: Occurrence) -> Self {
        Self {
            timestamp: o.ts,
            error_type: o.error_type,
            message: o.message,
            stack_trace: o.stack_trace,
            level: o.level,
            environment: o.environment,
            release: o.release,
            url: o.url,
            user_id: o.user_id,
            visitor_id: o.visitor_id,
            tags: o.tags,
            context: o.context,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TagValueView {
    pub value: String,
    pub count: i64,
}

/// A tag key within the range: how many occurrences carried it, and its top values.
#[derive(Debug, Serialize, ToSchema)]
pub struct TagView {
    #[schema(example = "browser")]
    pub key: String,
    pub total: i64,
    pub top: Vec<TagValueView>,
}

/// A group with its trend, recent occurrences, tags and people over the range.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorGroupDetail {
    #[serde(flatten)]
    pub group: ErrorGroupView,
    /// The latest occurrence ever, whatever the range.
    #[schema(value_type = Object)]
    pub last_occurrence: serde_json::Value,
    pub range: RangeView,
    /// Zero-filled, one bucket per `group_by` (default `hour`) in the range's zone.
    pub trend: Vec<BucketView>,
    /// The newest occurrences within the range (at most 20), newest first.
    pub recent_occurrences: Vec<OccurrenceView>,
    /// Tags within the range, the most frequent keys first; `environment`, `release` and
    /// `level` count as tags.
    pub tags: Vec<TagView>,
}

fn parse_or<T: std::str::FromStr<Err = String>>(
    problems: &mut Problems,
    field: &str,
    value: &Option<String>,
    default: T,
) -> T {
    match text_filter(problems, field, value, 32).map(|v| v.parse::<T>()) {
        None => default,
        Some(Ok(v)) => v,
        Some(Err(reason)) => {
            problems.add(field, reason);
            default
        }
    }
}

/// The project's error groups that occurred within the range.
#[utoipa::path(
    tag = "errors",
    security(("bearer" = [])),
    params(RangeQuery, GroupFilters, PageQuery),
    responses(
        (status = 200, body = List<ErrorGroupItem>),
        (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody, description = "`validation_failed`: `details` name every bad parameter"),
    )
)]
#[get("/projects/{project_id}/errors")]
pub async fn list_error_groups(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
    range: web::Query<RangeQuery>,
    filters: web::Query<GroupFilters>,
    page: web::Query<PageQuery>,
) -> Result<web::Json<List<ErrorGroupItem>>, ApiError> {
    let client = state.db.get().await?;
    let (project, tier) = readable_project(&client, &session, path.into_inner()).await?;
    let mut problems = Problems::default();
    let range = range.check(&state, tier, &mut problems);
    let status = parse_or(
        &mut problems,
        "status",
        &filters.status,
        StatusFilter::Unresolved,
    );
    let sort = parse_or(&mut problems, "sort", &filters.sort, Sort::LastSeen);
    let (limit, cursor) = page.check(GroupCursor::decode, &mut problems);
    if cursor.is_some_and(|c| c.sort != sort) {
        problems.add(
            "cursor",
            "was made for another sort; start again without one",
        );
    }
    problems.finish()?;
    let mut range = checked(range)?;
    if let Some(c) = &cursor {
        range = range.starting_at(c.from);
    }
    let rows = error_groups::list(
        &client,
        project.id,
        (range.from, range.to),
        status,
        sort,
        cursor.map(|c| (c.key, c.id)),
        limit + 1,
    )
    .await?;
    let from = range.from;
    let (rows, next_cursor) = keyset_page(rows, limit, |g| {
        GroupCursor {
            sort,
            key: g.key(sort),
            id: g.group.id.0,
            from,
        }
        .encode()
    });
    Ok(web::Json(List {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// One error group over the range: its hourly (or daily) trend, newest occurrences with
/// stack traces, tags and affected users, next to its totals, first and last seen and
/// regressions.
#[utoipa::path(
    tag = "errors",
    security(("bearer" = [])),
    params(RangeQuery),
    responses(
        (status = 200, body = ErrorGroupDetail),
        (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody, description = "`validation_failed`: `details` name every bad parameter"),
    )
)]
#[get("/projects/{project_id}/errors/{group_id}")]
pub async fn get_error_group(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<(Uuid, Uuid)>,
    range: web::Query<RangeQuery>,
) -> Result<web::Json<ErrorGroupDetail>, ApiError> {
    let (project_id, group_id) = path.into_inner();
    let client = state.db.get().await?;
    let (project, tier) = readable_project(&client, &session, project_id).await?;
    let group = error_groups::get(&client, project.id, ErrorGroupId(group_id))
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut problems = Problems::default();
    let range = range.check(&state, tier, &mut problems);
    problems.finish()?;
    let range = checked(range)?;
    let by = range.group_by.unwrap_or(GroupBy::Hour);
    let span = (range.from, range.to);
    let fingerprint = group.fingerprint.as_str();

    let boundaries = range.boundaries(by);
    let counts = error_groups::trend(&client, project.id, fingerprint, span, &boundaries).await?;
    let figures = error_groups::figures(&client, project.id, fingerprint, span).await?;
    let recent =
        error_groups::recent(&client, project.id, fingerprint, span, RECENT_OCCURRENCES).await?;
    let tags =
        error_groups::tags(&client, project.id, fingerprint, span, TAG_VALUES, TAG_KEYS).await?;
    let mut tags: Vec<TagView> = tags
        .into_iter()
        .map(|(key, tag)| TagView {
            key,
            total: tag.total,
            top: tag
                .top
                .into_iter()
                .map(|v| TagValueView {
                    value: v.value,
                    count: v.count,
                })
                .collect(),
        })
        .collect();
    tags.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.key.cmp(&b.key)));

    Ok(web::Json(ErrorGroupDetail {
        group: (&group).into(),
        last_occurrence: group.last_occurrence.clone(),
        range: RangeView {
            from: range.from,
            to: range.to,
            tz: range.tz.name().to_string(),
            group_by: by.to_string(),
            occurrences: figures.occurrences,
            affected_users: figures.people,
        },
        trend: boundaries
            .iter()
            .zip(counts)
            .map(|(start, count)| BucketView {
                start: *start,
                count,
            })
            .collect(),
        recent_occurrences: recent.into_iter().map(Into::into).collect(),
        tags,
    }))
}

async fn set_resolved(
    session: &Session,
    state: &AppState,
    (project_id, group_id): (Uuid, Uuid),
    resolved: bool,
) -> Result<web::Json<ErrorGroupView>, ApiError> {
    let client = state.db.get().await?;
    let project = projects::get(&client, session.org_id, project_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let group = error_groups::set_resolved(&client, project.id, ErrorGroupId(group_id), resolved)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(web::Json((&group).into()))
}

/// Marks a group resolved. A new occurrence reopens it and counts a regression.
#[utoipa::path(
    tag = "errors",
    security(("bearer" = [])),
    responses((status = 200, body = ErrorGroupView), (status = 404, body = crate::error::ErrorBody))
)]
#[post("/projects/{project_id}/errors/{group_id}/resolve")]
pub async fn resolve_error_group(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<web::Json<ErrorGroupView>, ApiError> {
    set_resolved(&session, &state, path.into_inner(), true).await
}

/// Marks a group unresolved again (no regression is counted).
#[utoipa::path(
    tag = "errors",
    security(("bearer" = [])),
    responses((status = 200, body = ErrorGroupView), (status = 404, body = crate::error::ErrorBody))
)]
#[post("/projects/{project_id}/errors/{group_id}/unresolve")]
pub async fn unresolve_error_group(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<web::Json<ErrorGroupView>, ApiError> {
    set_resolved(&session, &state, path.into_inner(), false).await
}
