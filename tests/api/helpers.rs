//! `spawn_app()`: the real server on a random port, with its own fresh database, the shared
//! test Redis, and logs captured in memory. Plus the small tools tests share.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::web;
use observe::startup::{Application, ExtraRoutes};
use observe::state::AppState;
use observe_core::config::{DatabaseSettings, Settings};
use observe_core::telemetry::{self, LogCapture};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::NoTls;

pub struct TestApp {
    pub address: String,
    pub state: AppState,
    pub logs: LogCapture,
    pub client: awc::Client,
    /// The app's database, for a second instance sharing it.
    pub db_url: String,
    /// Stops the server as SIGTERM would.
    pub server: ServerHandle,
    /// Resolves once the server stopped and the actors drained.
    pub stopped: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
}

impl TestApp {
    /// A request to `path` on this app.
    pub fn req(&self, method: awc::http::Method, path: &str) -> awc::ClientRequest {
        self.client
            .request(method, format!("{}{path}", self.address))
    }

    /// The body of `GET path` as text, with its status.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let res = send(self.req(awc::http::Method::GET, path), None).await;
        (res.status, res.text)
    }

    /// The body of `GET path` as JSON, with its status.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let res = send(self.req(awc::http::Method::GET, path), None).await;
        (res.status, res.json())
    }

    /// Log lines (JSON) whose request span carries `request_id`.
    pub fn lines_of_request(&self, request_id: &str) -> Vec<serde_json::Value> {
        self.logs
            .json_lines()
            .into_iter()
            .filter(|l| {
                l["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|s| s["request_id"] == request_id))
            })
            .collect()
    }
}

/// What a test needs of a response.
pub struct Reply {
    pub status: u16,
    pub headers: awc::http::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// Sends `req` (with `body` if given) and reads the whole reply.
pub async fn send(req: awc::ClientRequest, body: Option<Vec<u8>>) -> Reply {
    let mut res = match body {
        Some(body) => req.send_body(body).await,
        None => req.send().await,
    }
    .expect("request failed");
    let bytes = res.body().limit(16 * 1024 * 1024).await.expect("body");
    Reply {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// The value of one series (`name` or `name{labels}`, as written) in a `/metrics` text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A variable from the environment, else from the `.env` that `make services` writes.
pub fn env_var(name: &str) -> Option<String> {
    if let Ok(v) = std::env::var(name) {
        return Some(v);
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".env");
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| {
            // Values are single-quoted shell words (`'\''` for a quote inside).
            let v = v.trim();
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v);
            v.replace("'\\''", "'")
        })
}

/// Test settings: the environment's services, a random port, one worker.
pub fn test_settings() -> Settings {
    let mut settings = Settings::load_from(env_var).expect("settings load");
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.workers = 1;
    settings.server.shutdown_timeout_secs = 5;
    settings.server.startup_timeout_secs = 10;
    // Cheap hashing: tests check behaviour, not cost.
    settings.auth.argon2_memory_kib = 1024;
    settings.auth.argon2_iterations = 1;
    // Every app its own Redis keys (rate limits), so parallel tests never share a bucket;
    // and room for a test's own flow (the rate-limit test sets the real limit).
    settings.redis.key_prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    settings.auth.rate_limit_attempts = 1000;
    // Background jobs (Aggregator, Retention) would work on the test's data behind its back;
    // the tests of jobs start them themselves.
    settings.jobs.enabled = false;
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}, None).await
}

/// Starts the server with a fresh database; `tweak` adjusts settings first, `extra` adds
/// routes next to the API.
pub async fn spawn_app_with(
    tweak: impl FnOnce(&mut Settings),
    extra: Option<ExtraRoutes>,
) -> TestApp {
    let logs = telemetry::capture();
    let mut settings = test_settings();
    let db_url = fresh_database(&settings.database).await;
    settings.database.url = SecretString::from(db_url);
    tweak(&mut settings);
    let db_url = settings.database.url.expose_secret().to_string();
    settings.validate().expect("valid test settings");
    let app = Application::build_with(settings, extra)
        .await
        .expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    let server = app.handle();
    let stopped = actix_web::rt::spawn(app.run_until_stopped(false));
    TestApp {
        db_url,
        address,
        state,
        logs,
        server,
        stopped,
        // Redirects are what some tests check, so they are not followed.
        client: awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .disable_redirects()
            .finish(),
    }
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let prefix = match base.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or(rest)),
        None => base.to_string(),
    };
    format!("{prefix}/{name}{query}")
}

async fn admin_client(base: &DatabaseSettings) -> tokio_postgres::Client {
    let url = with_database(base.url.expose_secret(), "postgres");
    let (client, conn) = tokio_postgres::connect(&url, NoTls)
        .await
        .expect("connect to postgres database");
    actix_web::rt::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// An empty database (no migrations), dropped by the next `make test`.
pub async fn empty_database(base: &DatabaseSettings) -> String {
    let admin = admin_client(base).await;
    let name = format!("observe_test_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create database");
    with_database(base.url.expose_secret(), &name)
}

/// A fresh, migrated database, cloned from a template made once per migration set.
pub async fn fresh_database(base: &DatabaseSettings) -> String {
    let admin = admin_client(base).await;
    let migrations = observe_core::migrate::embedded().expect("migrations");
    let all: String = migrations.iter().map(|m| m.checksum.as_str()).collect();
    let template = format!(
        "observe_tpl_{}",
        &observe_core::migrate::checksum(&all)[..16]
    );

    // One process builds the template; the others wait on the lock, then find it.
    admin
        .execute(
            "SELECT pg_advisory_lock(hashtext('observe_test_template'))",
            &[],
        )
        .await
        .expect("lock");
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
        .await
        .expect("query")
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE \"{template}\""))
            .await
            .expect("create template");
        let mut settings = base.clone();
        settings.url = SecretString::from(with_database(base.url.expose_secret(), &template));
        observe_core::db::migrate(&settings)
            .await
            .expect("migrate template");
    }
    admin
        .execute(
            "SELECT pg_advisory_unlock(hashtext('observe_test_template'))",
            &[],
        )
        .await
        .expect("unlock");

    let name = format!("observe_test_{}", uuid::Uuid::new_v4().simple());
    let mut attempt = 0;
    loop {
        match admin
            .batch_execute(&format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
            ))
            .await
        {
            Ok(()) => break,
            // "source database is being accessed by other users": a moment's contention.
            Err(e) if attempt < 50 => {
                attempt += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create test database: {e}"),
        }
    }
    with_database(base.url.expose_secret(), &name)
}

/// A free local port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `check` every 100 ms until it returns true, at most `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Routes the tests add next to the API, to reach the extractors and failure paths through
/// real HTTP.
pub fn test_routes() -> ExtraRoutes {
    #[derive(serde::Deserialize)]
    struct Page {
        #[allow(dead_code)]
        limit: u32,
    }
    Arc::new(|cfg: &mut web::ServiceConfig| {
        cfg.route(
            "/__test/echo",
            web::post().to(|body: web::Json<serde_json::Value>| async move {
                web::Json(body.into_inner())
            }),
        )
        .route(
            "/__test/page",
            web::get().to(|_: web::Query<Page>| async { "ok" }),
        )
        .route(
            "/__test/items/{id}",
            web::get().to(|id: web::Path<u32>| async move { id.to_string() }),
        )
        .route(
            "/__test/whoami",
            web::get()
                .to(|key: observe::session::ApiKey| async move { key.0.project_id.to_string() }),
        )
        .route(
            "/__test/slow",
            web::get().to(|| async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                "slow done"
            }),
        )
        .route(
            "/__test/panic",
            web::get().to(|| async {
                if std::hint::black_box(true) {
                    panic!("secret internal detail: disk 7 is corrupt");
                }
                "unreachable"
            }),
        );
    })
}

/// A request with an optional bearer token and JSON body.
pub async fn call(
    app: &TestApp,
    method: awc::http::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Reply {
    let mut req = app.req(method, path);
    if let Some(token) = token {
        req = req.insert_header(("Authorization", format!("Bearer {token}")));
    }
    match body {
        Some(body) => {
            send(
                req.insert_header(("content-type", "application/json")),
                Some(body.to_string().into_bytes()),
            )
            .await
        }
        None => send(req, None).await,
    }
}

/// The value of cookie `name` set by a reply, if it set one.
pub fn set_cookie(reply: &Reply, name: &str) -> Option<(String, String)> {
    reply
        .headers
        .get_all("set-cookie")
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let value = v[name.len() + 1..]
                .split(';')
                .next()
                .unwrap_or("")
                .to_string();
            (value, v.to_string())
        })
}

/// A signed-in account: its access token and refresh cookie value.
pub struct Account {
    pub email: String,
    pub token: String,
    pub refresh: String,
}

/// Registers an account with a fresh email and a fixed password.
pub async fn register(app: &TestApp) -> Account {
    let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
    let reply = call(
        app,
        awc::http::Method::POST,
        "/auth/register",
        None,
        Some(serde_json::json!({"email": email, "password": TEST_PASSWORD, "name": "Test User"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    Account {
        email,
        token: reply.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_string(),
        refresh: set_cookie(&reply, "refresh_token")
            .expect("refresh cookie")
            .0,
    }
}

pub const TEST_PASSWORD: &str = "correct horse battery staple";

/// Creates a project and returns its id.
pub async fn create_project(app: &TestApp, token: &str, name: &str) -> String {
    let reply = call(
        app,
        awc::http::Method::POST,
        "/projects",
        Some(token),
        Some(serde_json::json!({"name": name})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json()["id"].as_str().expect("id").to_string()
}

/// An account with a project and an API key for it: what an SDK needs.
pub struct Sdk {
    pub account: Account,
    pub project: String,
    pub key_id: String,
    pub key: String,
    /// The key's DSN for Sentry SDKs.
    pub dsn: String,
}

/// Registers an account, creates a project and an API key.
pub async fn sdk(app: &TestApp) -> Sdk {
    let account = register(app).await;
    let project = create_project(app, &account.token, "sdk").await;
    let reply = call(
        app,
        awc::http::Method::POST,
        &format!("/projects/{project}/api-keys"),
        Some(&account.token),
        Some(serde_json::json!({"name": "sdk"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let body = reply.json();
    Sdk {
        account,
        project,
        key_id: body["id"].as_str().expect("key id").to_string(),
        key: body["key"].as_str().expect("key").to_string(),
        dsn: body["dsn"].as_str().expect("dsn").to_string(),
    }
}

/// `POST /ingest/{kind}` with `key` and a JSON body.
pub async fn ingest(app: &TestApp, key: &str, kind: &str, body: serde_json::Value) -> Reply {
    send(
        app.req(awc::http::Method::POST, &format!("/ingest/{kind}"))
            .insert_header(("X-API-Key", key))
            .insert_header(("content-type", "application/json")),
        Some(body.to_string().into_bytes()),
    )
    .await
}

/// Sets the tier of the organisation owning `project`, straight in the database (billing
/// comes later). Call it before the project's key is first used: keys cache their tier.
pub async fn set_tier(app: &TestApp, project: &str, tier: &str) {
    let conn = app.state.db.get().await.expect("db");
    let project: uuid::Uuid = project.parse().expect("project id");
    let n = conn
        .execute(
            "UPDATE organisations SET tier = $2
             WHERE id = (SELECT organisation_id FROM projects WHERE id = $1)",
            &[&project, &tier],
        )
        .await
        .expect("set tier");
    assert_eq!(n, 1);
}

/// A count from the app's database (`sql` returns one bigint).
pub async fn count(app: &TestApp, sql: &str, project: &str) -> i64 {
    let conn = app.state.db.get().await.expect("db");
    let project: uuid::Uuid = project.parse().expect("project id");
    conn.query_one(sql, &[&project])
        .await
        .expect("count query")
        .get(0)
}

/// The token of the last `{path}?token=` link the log mailer wrote (no mail provider
/// configured; development keeps links whole in the log).
pub fn token_in_log(app: &TestApp, path: &str) -> Option<String> {
    let marker = format!("{path}?token=");
    app.logs.json_lines().iter().rev().find_map(|l| {
        let body = l["fields"]["body"].as_str().or(l["body"].as_str())?;
        let (_, rest) = body.split_once(&marker)?;
        Some(
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect(),
        )
    })
}

/// `POST /auth/refresh` with a refresh cookie.
pub async fn refresh_with(app: &TestApp, cookie: &str) -> Reply {
    send(
        app.req(awc::http::Method::POST, "/auth/refresh")
            .insert_header(("Cookie", format!("refresh_token={cookie}"))),
        None,
    )
    .await
}

/// `POST /auth/login`, optionally as if from `forwarded_for` (behind a configured proxy).
pub async fn login_from(
    app: &TestApp,
    email: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> Reply {
    let mut req = app
        .req(awc::http::Method::POST, "/auth/login")
        .insert_header(("content-type", "application/json"));
    if let Some(ip) = forwarded_for {
        req = req.insert_header(("X-Forwarded-For", ip));
    }
    send(
        req,
        Some(
            serde_json::json!({"email": email, "password": password})
                .to_string()
                .into_bytes(),
        ),
    )
    .await
}

/// `POST /auth/change-password` as the session of `token` (its refresh cookie too).
pub async fn change_password(app: &TestApp, account: &Account, current: &str, new: &str) -> Reply {
    send(
        app.req(awc::http::Method::POST, "/auth/change-password")
            .insert_header(("Authorization", format!("Bearer {}", account.token)))
            .insert_header(("Cookie", format!("refresh_token={}", account.refresh)))
            .insert_header(("content-type", "application/json")),
        Some(
            serde_json::json!({"current_password": current, "new_password": new})
                .to_string()
                .into_bytes(),
        ),
    )
    .await
}

/// Waits until `n` instances sharing `app`'s log capture listen for key and session changes,
/// so what a test does next is carried by NOTIFY, not by a listener's start forgetting all.
pub async fn listeners_up(app: &TestApp, n: usize) -> bool {
    eventually(10, || async {
        app.logs
            .contents()
            .matches("listening for API key changes")
            .count()
            >= n
    })
    .await
}

/// Per-minute and monthly event limits no test load comes near, for tests about something
/// else (durability, faults), where a 429 would only blur what they check.
pub fn roomy_limits(s: &mut Settings) {
    s.tiers.hobby.events_per_minute = 1_000_000;
    s.tiers.hobby.events_per_month = observe_core::config::Limit::Unlimited;
}
