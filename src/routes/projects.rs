//! Projects and their API keys (SPEC §7). Every handler scopes by the caller's organisation:
//! another organisation's project is indistinguishable from one that does not exist (404).

use actix_web::{delete, get, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use observe_core::auth::{new_api_key, new_dsn_key};
use observe_core::config::Settings;
use observe_core::keys::{self, Scope};
use observe_core::store::api_keys::{self, ApiKey};
use observe_core::store::projects::{self, CreateError, Project};
use observe_core::store::{page, Cursor};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;
use crate::session::Session;
use crate::state::AppState;
use crate::validate::Problems;

pub(crate) const DEFAULT_LIMIT: u32 = 50;
pub(crate) const MAX_LIMIT: u32 = 200;

/// Cursor pagination: `?limit=&cursor=` (SPEC §10).
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// 1 to 200; default 50.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl ListQuery {
    /// The page size (1 to 200, default 50) and the cursor, as every list route takes them.
    pub(crate) fn parse(&self) -> Result<(usize, Option<Cursor>), ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::InvalidQuery(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )));
        }
        let cursor = match &self.cursor {
            Some(c) => Some(Cursor::decode(c).ok_or_else(|| {
                ApiError::InvalidQuery("cursor is not one this server issued".into())
            })?),
            None => None,
        };
        Ok((limit as usize, cursor))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateProject {
    #[schema(example = "Web shop")]
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectView {
    pub id: Uuid,
    /// The numeric id Sentry SDKs need in a DSN (`/api/{numeric_id}/envelope/`).
    #[schema(example = 42)]
    pub numeric_id: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// The Sentry DSN of the project's newest key that is not revoked (project detail only;
    /// null when it has none). Every key's DSN is in the key list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dsn: Option<String>,
}

impl From<Project> for ProjectView {
    fn from(p: Project) -> Self {
        Self {
            id: p.id,
            numeric_id: p.numeric_id,
            name: p.name,
            created_at: p.created_at,
            dsn: None,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateApiKey {
    #[schema(example = "production backend")]
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: Uuid,
    pub name: String,
    /// The start of the key, to tell keys apart; the key itself is never shown again.
    #[schema(example = "obs_3kT9xQ2a")]
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key's DSN for Sentry SDKs (`SENTRY_DSN`): not a secret, like Sentry's own DSNs;
    /// it only sends into this project, and revoking the key ends it.
    #[schema(example = "http://3f2a9c0d1e4b5a6978c8d7e6f5a4b3c2@127.0.0.1:8000/42")]
    pub dsn: String,
}

impl ApiKeyView {
    fn new(k: ApiKey, settings: &Settings, numeric_id: i64) -> Self {
        Self {
            dsn: settings.dsn(&k.dsn_key, numeric_id),
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    /// The secret: shown only in this response. Send it as `Authorization: Bearer <key>` or
    /// `X-API-Key: <key>`.
    pub key: String,
    /// The key's DSN for Sentry SDKs (also in the key list).
    pub dsn: String,
    pub created_at: DateTime<Utc>,
}

/// The caller's organisation's projects.
#[utoipa::path(
    tag = "projects",
    security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = List<ProjectView>), (status = 401, body = crate::error::ErrorBody))
)]
#[get("/projects")]
pub async fn list_projects(
    session: Session,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<List<ProjectView>>, ApiError> {
    let (limit, after) = query.parse()?;
    let client = state.db.get().await?;
    let rows = projects::list(&client, session.org_id, limit, after).await?;
    let (rows, next_cursor) = page(rows, limit, Project::cursor);
    Ok(web::Json(List {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// Creates a project, within the organisation tier's project limit.
#[utoipa::path(
    tag = "projects",
    security(("bearer" = [])),
    request_body = CreateProject,
    responses(
        (status = 201, body = ProjectView),
        (status = 403, body = crate::error::ErrorBody, description = "`tier_limit`: the tier's project limit is reached; `details.limit` says it"),
        (status = 422, body = crate::error::ErrorBody),
    )
)]
#[post("/projects")]
pub async fn create_project(
    session: Session,
    state: web::Data<AppState>,
    body: web::Json<CreateProject>,
) -> Result<HttpResponse, ApiError> {
    let mut problems = Problems::default();
    let name = problems.name("name", &body.name, 100);
    problems.finish()?;
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    let project =
        match projects::create_within_limit(&tx, &state.tiers, session.org_id, &name).await {
            Ok(p) => p,
            Err(CreateError::Limit(limit)) => return Err(ApiError::TierLimit(limit)),
            Err(CreateError::NoOrganisation) => return Err(ApiError::unauthorized()),
            Err(CreateError::Store(e)) => return Err(e.into()),
        };
    tx.commit().await?;
    Ok(HttpResponse::Created().json(ProjectView::from(project)))
}

/// One project of the caller's organisation.
#[utoipa::path(
    tag = "projects",
    security(("bearer" = [])),
    responses((status = 200, body = ProjectView), (status = 404, body = crate::error::ErrorBody))
)]
#[get("/projects/{project_id}")]
pub async fn get_project(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
) -> Result<web::Json<ProjectView>, ApiError> {
    let client = state.db.get().await?;
    let project = projects::get(&client, session.org_id, path.into_inner())
        .await?
        .ok_or(ApiError::NotFound)?;
    let newest = api_keys::newest_active(&client, project.id).await?;
    let dsn = newest.map(|k| state.settings.dsn(&k.dsn_key, project.numeric_id));
    Ok(web::Json(ProjectView {
        dsn,
        ..project.into()
    }))
}

/// Deletes a project with its keys, monitors and data. Answers once the project is gone: its
/// keys stop authenticating and its monitors and ingestion stop on every instance at once; its
/// raw rows (events, errors, requests, metrics, checks) are purged in the background, in
/// bounded batches, so the answer does not wait for them however large the project is.
#[utoipa::path(
    tag = "projects",
    security(("bearer" = [])),
    responses((status = 204, description = "deleted"), (status = 404, body = crate::error::ErrorBody))
)]
#[delete("/projects/{project_id}")]
pub async fn delete_project(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let project_id = path.into_inner();
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    // The delete also records the pending purge and announces it to every instance (a trigger).
    if !projects::delete(&tx, session.org_id, project_id).await? {
        return Err(ApiError::NotFound);
    }
    keys::announce(&tx, Scope::Project(project_id)).await?;
    tx.commit().await?;
    state.keys.forget(Scope::Project(project_id));
    // This instance stops them before answering; the others when the announcement reaches
    // their Purger.
    state.ingest.stop_project(project_id);
    state.monitors.project_deleted(project_id);
    Ok(HttpResponse::NoContent().finish())
}

/// 404 unless the project belongs to the caller's organisation.
async fn own_project(
    client: &impl observe_core::store::GenericClient,
    session: &Session,
    project_id: Uuid,
) -> Result<Project, ApiError> {
    projects::get(client, session.org_id, project_id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// The project's API keys (revoked ones included, with `revoked_at`).
#[utoipa::path(
    tag = "projects",
    security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = List<ApiKeyView>), (status = 404, body = crate::error::ErrorBody))
)]
#[get("/projects/{project_id}/api-keys")]
pub async fn list_api_keys(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<List<ApiKeyView>>, ApiError> {
    let (limit, after) = query.parse()?;
    let client = state.db.get().await?;
    let project = own_project(&client, &session, path.into_inner()).await?;
    let rows = api_keys::list(&client, session.org_id, project.id, limit, after).await?;
    let (rows, next_cursor) = page(rows, limit, ApiKey::cursor);
    Ok(web::Json(List {
        items: rows
            .into_iter()
            .map(|k| ApiKeyView::new(k, &state.settings, project.numeric_id))
            .collect(),
        next_cursor,
    }))
}

/// Creates an API key. Its secret is in this response only; observe stores a hash.
#[utoipa::path(
    tag = "projects",
    security(("bearer" = [])),
    request_body = CreateApiKey,
    responses(
        (status = 201, body = CreatedApiKey),
        (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody),
    )
)]
#[post("/projects/{project_id}/api-keys")]
pub async fn create_api_key(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
    body: web::Json<CreateApiKey>,
) -> Result<HttpResponse, ApiError> {
    let mut problems = Problems::default();
    let name = problems.name("name", &body.name, 100);
    problems.finish()?;
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    // Locked, so the project cannot be deleted between this check and the insert.
    let project = projects::get_locked(&tx, session.org_id, path.into_inner())
        .await?
        .ok_or(ApiError::NotFound)?;
    let (key, shown) = new_api_key();
    let created =
        api_keys::create(&tx, project.id, &name, &shown, &key.hash, &new_dsn_key()).await?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(CreatedApiKey {
        dsn: state.settings.dsn(&created.dsn_key, project.numeric_id),
        id: created.id,
        name: created.name,
        prefix: created.prefix,
        key: key.secret,
        created_at: created.created_at,
    }))
}

/// Revokes an API key: it stops authenticating at once.
#[utoipa::path(
    tag = "projects",
    security(("bearer" = [])),
    responses((status = 204, description = "revoked"), (status = 404, body = crate::error::ErrorBody))
)]
#[delete("/projects/{project_id}/api-keys/{key_id}")]
pub async fn revoke_api_key(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (project_id, key_id) = path.into_inner();
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    if !api_keys::revoke(&tx, session.org_id, project_id, key_id).await? {
        return Err(ApiError::NotFound);
    }
    // Other instances hear of it when this commits; this one forgets the key right away.
    keys::announce(&tx, Scope::Key(key_id)).await?;
    tx.commit().await?;
    state.keys.forget(Scope::Key(key_id));
    Ok(HttpResponse::NoContent().finish())
}
