//! The events explorer (SPEC §7): a project's raw events, newest first, filtered by name,
//! visitor, person and URL prefix within a time range, a keyset page at a time
//! ([`observe_core::store::raw_rows`]). Scoped like every project route: another
//! organisation's project is a 404.

use actix_web::{get, web};
use chrono::{DateTime, Utc};
use observe_core::store::raw_rows::{self, EventFilter, EventRow, RowCursor, RowList};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;
use crate::query::{checked, keyset_page, readable_project, text_filter, PageQuery, RangeQuery};
use crate::routes::projects::List;
use crate::session::Session;
use crate::state::AppState;
use crate::validate::Problems;

/// The longest filter value: names and ids are stored at most 200 characters long.
const MAX_FILTER: usize = 200;
/// URLs are stored at most 2048 characters long.
const MAX_URL: usize = 2048;

/// Filters of the explorer; each one given narrows the list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventFilters {
    /// The event name, exactly (`$pageview` for page views).
    #[param(example = "signup")]
    pub name: Option<String>,
    pub visitor_id: Option<String>,
    /// A person: events sent with this user id, and every event of a visitor identified as
    /// this user.
    pub user_id: Option<String>,
    /// Events whose URL starts with this (a plain prefix: `%` and `_` are no wildcards).
    #[param(example = "https://shop.example.com/checkout")]
    pub url: Option<String>,
}

/// One stored event.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// `null` for events stored before events had ids.
    pub id: Option<Uuid>,
    /// When it happened (the SDK's `timestamp`, else when it was received).
    pub timestamp: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    #[schema(example = "$pageview")]
    pub name: String,
    pub visitor_id: String,
    pub user_id: Option<String>,
    pub url: Option<String>,
    pub referrer: Option<String>,
    #[schema(value_type = Object)]
    pub properties: serde_json::Value,
}

impl From<EventRow> for EventView {
    fn from(e: EventRow) -> Self {
        Self {
            id: e.id,
            timestamp: e.ts,
            received_at: e.received_at,
            name: e.name,
            visitor_id: e.visitor_id,
            user_id: e.user_id,
            url: e.url,
            referrer: e.referrer,
            properties: e.properties,
        }
    }
}

/// The project's events, newest first. Pages hold every event once, however many share a
/// timestamp; events stored after the first page are newer than it and come in no later page.
#[utoipa::path(
    tag = "analytics",
    security(("bearer" = [])),
    params(RangeQuery, PageQuery, EventFilters),
    responses(
        (status = 200, body = List<EventView>),
        (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody, description = "`validation_failed`: `details` name every bad parameter"),
    )
)]
#[get("/projects/{project_id}/events")]
pub async fn list_events(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
    range: web::Query<RangeQuery>,
    page: web::Query<PageQuery>,
    filters: web::Query<EventFilters>,
) -> Result<web::Json<List<EventView>>, ApiError> {
    let client = state.db.get().await?;
    let (project, tier) = readable_project(&client, &session, path.into_inner()).await?;
    let mut problems = Problems::default();
    let range = range.check(&state, tier, &mut problems);
    let (limit, cursor) = page.check(|c| RowCursor::decode(c, RowList::Events), &mut problems);
    let filter = EventFilter {
        name: text_filter(&mut problems, "name", &filters.name, MAX_FILTER),
        visitor_id: text_filter(&mut problems, "visitor_id", &filters.visitor_id, MAX_FILTER),
        user_id: text_filter(&mut problems, "user_id", &filters.user_id, MAX_FILTER),
        url_prefix: text_filter(&mut problems, "url", &filters.url, MAX_URL),
    };
    problems.finish()?;
    let mut range = checked(range)?;
    if let Some(c) = &cursor {
        range = range.starting_at(c.from);
    }
    let rows = raw_rows::events(
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
            list: RowList::Events,
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
