//! The real `observe` binary as an operator starts it, with its stdout (JSON log lines) kept
//! for the test, and what a fresh install needs to receive data: an account, a project, a key.

use std::cell::RefCell;
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{env_var, TEST_PASSWORD};

/// The `observe` binary, started as an operator would, its stdout drained in the background
/// (a full pipe would block its logging, and with it the server).
pub struct Observe {
    pub child: tokio::process::Child,
    pub port: u16,
    pub lines: Rc<RefCell<Vec<String>>>,
}

impl Observe {
    pub async fn start(db_url: &str) -> Self {
        Self::start_with(db_url, &[]).await
    }

    /// As [`Observe::start`], with more environment variables (`env` wins).
    pub async fn start_with(db_url: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_observe"));
        // Only what the test sets: nothing leaks in from the developer's environment.
        for (name, _) in std::env::vars() {
            if name.starts_with("OBSERVE")
                || name.starts_with("OTEL_")
                || matches!(
                    name.as_str(),
                    "SECRET_KEY" | "DATABASE_URL" | "REDIS_URL" | "RUST_LOG"
                )
            {
                cmd.env_remove(name);
            }
        }
        let mut child = cmd
            .arg("serve")
            .env("DATABASE_URL", db_url)
            .env("REDIS_URL", env_var("REDIS_URL").expect("REDIS_URL"))
            .env("SECRET_KEY", "durability-test-secret-0123456789abcdef")
            .env("OBSERVE_BIND", "127.0.0.1:0")
            // Its own rate-limit keys in the shared Redis.
            .env(
                "OBSERVE__REDIS__KEY_PREFIX",
                format!("test:{}:", uuid::Uuid::new_v4().simple()),
            )
            // The durable mode is what is under test (it is also the default).
            .env("OBSERVE__INGEST__ACK", "commit")
            .env("OBSERVE__TIERS__HOBBY__EVENTS_PER_MINUTE", "1000000")
            .env("OBSERVE__TIERS__HOBBY__EVENTS_PER_MONTH", "unlimited")
            .env("OBSERVE__TIERS__HOBBY__ERRORS_PER_MINUTE", "1000000")
            .env("OBSERVE__TIERS__HOBBY__ERRORS_PER_MONTH", "unlimited")
            .env("OBSERVE__AUTH__RATE_LIMIT_ATTEMPTS", "1000")
            .env("OBSERVE__AUTH__ARGON2_MEMORY_KIB", "1024")
            .env("OBSERVE__AUTH__ARGON2_ITERATIONS", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start observe");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut seen = Vec::new();
        let port = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                seen.push(line);
                if v["message"] == "observe listening" {
                    return v["port"].as_u64().expect("port") as u16;
                }
            }
            panic!("observe exited before listening: {seen:#?}");
        })
        .await
        .expect("observe listening within 60 s");
        let kept = Rc::new(RefCell::new(seen));
        let sink = kept.clone();
        actix_web::rt::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.borrow_mut().push(line);
            }
        });
        Self {
            child,
            port,
            lines: kept,
        }
    }

    /// Its warning and error log lines, for assertion messages.
    pub fn complaints(&self) -> Vec<String> {
        self.lines
            .borrow()
            .iter()
            .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
            .cloned()
            .collect()
    }
}

/// `POST url` with a JSON body (and a bearer token): status and JSON answer.
pub async fn post_json(
    client: &awc::Client,
    url: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut req = client.post(url);
    if let Some(token) = token {
        req = req.insert_header(("Authorization", format!("Bearer {token}")));
    }
    let mut res = req.send_json(&body).await.expect("request");
    let status = res.status().as_u16();
    let json = res.json::<Value>().await.unwrap_or(Value::Null);
    (status, json)
}

/// What [`crate::helpers::sdk`] does, against any base URL: an account, a project and an API
/// key for it. Returns the project id, the key and its DSN.
pub async fn sdk_with_dsn_at(client: &awc::Client, base: &str) -> (String, String, String) {
    let email = format!("kill-{}@example.com", uuid::Uuid::new_v4().simple());
    let (status, body) = post_json(
        client,
        &format!("{base}/auth/register"),
        None,
        json!({"email": email, "password": TEST_PASSWORD, "name": "Durability"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = body["access_token"].as_str().expect("access_token");
    let (status, body) = post_json(
        client,
        &format!("{base}/projects"),
        Some(token),
        json!({"name": "durability"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let project = body["id"].as_str().expect("project id").to_string();
    let (status, body) = post_json(
        client,
        &format!("{base}/projects/{project}/api-keys"),
        Some(token),
        json!({"name": "sdk"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    (
        project,
        body["key"].as_str().expect("key").to_string(),
        body["dsn"].as_str().expect("dsn").to_string(),
    )
}
