//! Liveness and readiness, including dependency outages and recovery without a restart.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::helpers::{eventually, free_port, spawn_app, spawn_app_with, TestApp};

#[actix_web::test]
async fn live_and_ready_answer_200_when_dependencies_are_up() {
    let app = spawn_app().await;
    let (status, body) = app.get_json("/health/live").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");

    let (status, body) = app.get_json("/health/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["checks"]["postgres"]["status"], "ok");
    assert_eq!(body["checks"]["redis"]["status"], "ok");
}

/// A redis-server of the test's own, killed when dropped.
pub(crate) struct OwnRedis(std::process::Child);

impl OwnRedis {
    pub(crate) fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by `make services`)");
        Self(child)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn ready_status(app: &TestApp) -> (u16, serde_json::Value) {
    app.get_json("/health/ready").await
}

/// Redis holds only what observe can do without for a while (shared rate-limit budgets), so its
/// outage degrades readiness instead of failing it: taking every instance out of the load
/// balancer for a dependency they all share would turn a degraded service into no service.
#[actix_web::test]
async fn redis_outage_keeps_ready_200_marking_redis_degraded_and_it_recovers_by_itself() {
    let port = free_port();
    let redis = OwnRedis::start(port);
    let app = spawn_app_with(
        |s| {
            s.redis.url = SecretString::from(format!("redis://127.0.0.1:{port}/"));
            s.redis.connect_timeout_secs = 1;
        },
        None,
    )
    .await;
    // Up, with a pooled connection in hand.
    assert!(
        eventually(15, || async { ready_status(&app).await.0 == 200 }).await,
        "ready with our Redis up: {:?}",
        ready_status(&app).await
    );

    // Redis stops: still ready (200), Redis marked degraded; still live.
    drop(redis);
    let reply = crate::helpers::send(
        app.req(awc::http::Method::GET, "/health/ready")
            .insert_header(("X-Request-Id", "ready-while-down")),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["postgres"]["status"], "ok");
    assert_eq!(app.get_json("/health/live").await.0, 200);
    // The failed check was logged inside the request, with its id.
    let lines = app.lines_of_request("ready-while-down");
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "readiness check failed" && l["dependency"] == "redis"),
        "{lines:?}"
    );
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains("observe_dependency_up{dependency=\"redis\"} 0"),
        "{metrics}"
    );

    // Redis comes back on the same port: fully ready again without restarting observe.
    let _redis = OwnRedis::start(port);
    assert!(
        eventually(15, || async {
            let (status, body) = ready_status(&app).await;
            status == 200 && body["status"] == "ok" && body["checks"]["redis"]["status"] == "ok"
        })
        .await,
        "ready did not recover: {:?}",
        ready_status(&app).await
    );
    assert_eq!(app.get_json("/health/live").await.0, 200);
}

/// A TCP forwarder to PostgreSQL that a test can cut and restore, to simulate an outage of
/// the database without touching the shared server.
pub(crate) struct CuttableProxy {
    pub(crate) port: u16,
    cut: Arc<Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
    target: u16,
}

impl CuttableProxy {
    pub(crate) async fn start(target: u16) -> Self {
        let port = free_port();
        let mut proxy = Self {
            port,
            cut: Arc::new(Notify::new()),
            task: None,
            target,
        };
        proxy.open().await;
        proxy
    }

    pub(crate) async fn open(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind proxy");
        let cut = Arc::new(Notify::new());
        self.cut = cut.clone();
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = cut.notified() => break,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        connections.spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                }
            }
            // Dropping the set aborts every forwarded connection; dropping the listener
            // refuses new ones.
            connections.abort_all();
        }));
    }

    pub(crate) async fn cut(&mut self) {
        self.cut.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

#[actix_web::test]
async fn postgres_outage_makes_ready_503_naming_postgres_and_it_recovers_by_itself() {
    let settings = crate::helpers::test_settings();
    let real_db = crate::helpers::fresh_database(&settings.database).await;
    let pg_port = crate::support::proxy::pg_port(&real_db);
    let mut proxy = CuttableProxy::start(pg_port).await;
    let proxied = real_db.replacen(&format!(":{pg_port}/"), &format!(":{}/", proxy.port), 1);
    let app = spawn_app_with(
        move |s| {
            s.database.url = SecretString::from(proxied);
            s.database.connect_timeout_secs = 1;
            s.database.acquire_timeout_secs = 1;
        },
        None,
    )
    .await;
    assert_eq!(ready_status(&app).await.0, 200);

    proxy.cut().await;
    let (status, body) = ready_status(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_ne!(body["checks"]["postgres"]["status"], "ok");
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "ok");
    assert_eq!(app.get_json("/health/live").await.0, 200);
    // Other routes keep answering too.
    assert_eq!(app.get_text("/metrics").await.0, 200);

    proxy.open().await;
    assert!(
        eventually(15, || async { ready_status(&app).await.0 == 200 }).await,
        "ready did not recover: {:?}",
        ready_status(&app).await
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}
