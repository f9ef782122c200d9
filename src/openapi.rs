//! The OpenAPI document and what is derived from it.
//!
//! Routes registered through [`crate::routes::register`] are collected into the document by
//! utoipa-actix-web, so it cannot miss one. The same document gives the table the fallback
//! handler uses to tell "no such route" (404) from "no such method on this route" (405).

use actix_web::dev::ResourceDef;
use actix_web::http::Method;
use actix_web::{web, HttpRequest};
use utoipa::openapi::path::PathItem;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::OpenApi;

use crate::error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "observe",
        description = "Self-hostable developer observability: product analytics, errors, API request logs, custom metrics and uptime monitors."
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail, crate::error::FieldError)),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Liveness and readiness probes"),
        (name = "operations", description = "Operating observe itself"),
        (name = "auth", description = "Accounts and sessions"),
        (name = "projects", description = "Projects and their API keys"),
        (name = "monitors", description = "Uptime monitors of a project"),
        (name = "analytics", description = "Product analytics of a project: events"),
        (name = "errors", description = "Errors of a project, grouped into issues"),
        (name = "api-monitoring", description = "API requests of a project"),
        (name = "billing", description = "Plans paid through Squad: checkout, webhook, renewals, cancellation"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme the dashboard routes name (an access token from login) and the
/// `api_key` scheme of the ingest routes.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut OpenApiDoc) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        // The ingest routes take a project API key (`Authorization: Bearer obs_...` works too).
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
                utoipa::openapi::security::ApiKeyValue::new("X-API-Key"),
            )),
        );
    }
}

/// Path templates of the API and the methods each answers.
pub struct RouteTable(Vec<(ResourceDef, Vec<Method>)>);

impl RouteTable {
    pub fn from_doc(doc: &OpenApiDoc) -> Self {
        let routes = doc
            .paths
            .paths
            .iter()
            .map(|(path, item)| (ResourceDef::new(path.as_str()), methods(item)))
            .collect();
        Self(routes)
    }

    /// Adds a route served outside the document (the document itself, the docs page).
    pub fn with(mut self, path: &str, method: Method) -> Self {
        self.0.push((ResourceDef::new(path), vec![method]));
        self
    }

    /// The methods allowed on `path`, or `None` when no route has that path.
    pub fn allowed(&self, path: &str) -> Option<Vec<Method>> {
        let mut found: Option<Vec<Method>> = None;
        for (def, methods) in &self.0 {
            if def.is_match(path) {
                found
                    .get_or_insert_with(Vec::new)
                    .extend(methods.iter().cloned());
            }
        }
        found
    }
}

fn methods(item: &PathItem) -> Vec<Method> {
    let mut out = Vec::new();
    let ops = [
        (&item.get, Method::GET),
        (&item.post, Method::POST),
        (&item.put, Method::PUT),
        (&item.patch, Method::PATCH),
        (&item.delete, Method::DELETE),
        (&item.head, Method::HEAD),
        (&item.options, Method::OPTIONS),
        (&item.trace, Method::TRACE),
    ];
    for (op, method) in ops {
        if op.is_some() {
            out.push(method);
        }
    }
    out
}

/// Answers requests no route took: 405 with `Allow` when the path exists, else 404.
pub async fn fallback(req: HttpRequest, table: web::Data<RouteTable>) -> Result<(), ApiError> {
    Err(match table.allowed(req.path()) {
        Some(methods) if !methods.contains(req.method()) => ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            allowed: methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        },
        _ => ApiError::NotFound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::PathsBuilder;

    #[test]
    fn tells_unknown_paths_from_wrong_methods() {
        let mut doc = ApiDoc::openapi();
        doc.paths = PathsBuilder::new()
            .path(
                "/projects/{id}",
                PathItem::new(HttpMethod::Get, OperationBuilder::new().build()),
            )
            .build();
        let table = RouteTable::from_doc(&doc);
        assert_eq!(table.allowed("/projects/42"), Some(vec![Method::GET]));
        assert_eq!(table.allowed("/projects"), None);
        assert_eq!(table.allowed("/projects/42/x"), None);
    }
}
