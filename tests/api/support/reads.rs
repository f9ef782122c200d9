//! Reading back what was ingested: a project on a chosen tier with its key and its owner's
//! token, typed calls to its read routes, every page of a list followed to the end, and rows
//! written straight into the raw tables where ingestion cannot make them (rows older than the
//! retention, rows stored before ids were given).

use awc::http::Method;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::Value;

use crate::helpers::{call, ingest, sdk, set_tier, Reply, Sdk, TestApp};

/// A project of its own organisation, on `tier`, with an API key.
pub struct Reader<'a> {
    pub app: &'a TestApp,
    pub sdk: Sdk,
}

impl<'a> Reader<'a> {
    pub async fn new(app: &'a TestApp, tier: &str) -> Self {
        let sdk = sdk(app).await;
        // Before the key's first use: keys cache their tier.
        set_tier(app, &sdk.project, tier).await;
        Self { app, sdk }
    }

    /// `POST /ingest/{kind}` with these items; they must be stored.
    pub async fn ingest(&self, kind: &str, items: Vec<Value>) {
        for chunk in items.chunks(1000) {
            let reply = ingest(self.app, &self.sdk.key, kind, Value::Array(chunk.to_vec())).await;
            assert_eq!(reply.status, 202, "{kind}: {}", reply.text);
        }
    }

    /// `GET /projects/{project}{suffix}` as the project's owner.
    pub async fn get(&self, suffix: &str) -> Reply {
        self.call(Method::GET, suffix).await
    }

    pub async fn call(&self, method: Method, suffix: &str) -> Reply {
        let path = format!("/projects/{}{suffix}", self.sdk.project);
        call(self.app, method, &path, Some(&self.sdk.account.token), None).await
    }

    /// `GET …{suffix}` answered 200, as JSON.
    pub async fn ok(&self, suffix: &str) -> Value {
        let reply = self.get(suffix).await;
        assert_eq!(reply.status, 200, "GET {suffix}: {}", reply.text);
        reply.json()
    }

    /// Every item of a list, page by page (`limit` each), and the number of pages.
    /// `between` runs after the first page (to write rows while a client pages).
    pub async fn all_pages<F, Fut>(
        &self,
        suffix: &str,
        limit: u32,
        between: F,
    ) -> (Vec<Value>, usize)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let sep = if suffix.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        let mut between = Some(between);
        loop {
            let mut path = format!("{suffix}{sep}limit={limit}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.ok(&path).await;
            let got = page["items"].as_array().expect("items").clone();
            assert!(got.len() <= limit as usize, "{page}");
            pages += 1;
            items.extend(got);
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
            if let Some(f) = between.take() {
                f().await;
            }
            assert!(pages < 1000, "pages never end");
        }
        (items, pages)
    }

    /// The 422 of `GET …{suffix}`: the fields its details name, in order.
    pub async fn refused(&self, suffix: &str) -> Vec<String> {
        let reply = self.get(suffix).await;
        assert_eq!(reply.status, 422, "GET {suffix}: {}", reply.text);
        let body = reply.json();
        assert_eq!(body["error"]["code"], "validation_failed", "{body}");
        body["error"]["details"]
            .as_array()
            .expect("details")
            .iter()
            .map(|d| d["field"].as_str().expect("field").to_string())
            .collect()
    }

    /// Writes events straight into `events` (`id` NULL: as stored before migration 0008).
    pub async fn insert_events(&self, rows: &[(DateTime<Utc>, Option<uuid::Uuid>, &str, Value)]) {
        let conn = self.app.state.db.get().await.expect("db");
        let project: uuid::Uuid = self.sdk.project.parse().expect("project id");
        for (ts, id, name, properties) in rows {
            conn.execute(
                "INSERT INTO events (project_id, id, ts, received_at, name, visitor_id, properties)
                 VALUES ($1, $2, $3, $3, $4, 'legacy-visitor', $5)",
                &[&project, id, ts, name, properties],
            )
            .await
            .expect("insert event");
        }
    }

    /// The id of the project's error group of this message (fingerprints are stored hashed).
    pub async fn group_id(&self, message: &str) -> String {
        let conn = self.app.state.db.get().await.expect("db");
        let project: uuid::Uuid = self.sdk.project.parse().expect("project id");
        let row = conn
            .query_one(
                "SELECT id FROM error_groups WHERE project_id = $1 AND message = $2",
                &[&project, &message],
            )
            .await
            .expect("group");
        row.get::<_, uuid::Uuid>(0).to_string()
    }
}

/// Now, to the whole second (RFC 3339 round trips exactly).
pub fn now_s() -> DateTime<Utc> {
    Utc::now()
        .duration_trunc(TimeDelta::seconds(1))
        .expect("truncate")
}

pub fn rfc(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

/// `value` percent-encoded for a query string (everything but unreserved characters).
pub fn enc(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The values of `field` of each item, as text (`null` for none).
pub fn column(items: &[Value], field: &str) -> Vec<String> {
    items
        .iter()
        .map(|i| match &i[field] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}
