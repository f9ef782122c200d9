//! The `observe` binary as a process: it refuses bad configuration with a clear message, logs
//! JSON on stdout, and on SIGTERM stops accepting, drains and exits 0 within its timeout.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::{env_var, fresh_database, test_settings};

fn observe() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_observe"));
    // Only what the test sets: no secret, service URL or log setting leaks in from the
    // developer's environment.
    for (name, _) in std::env::vars() {
        let ours = name.starts_with("OBSERVE")
            || name.starts_with("OTEL_")
            || matches!(
                name.as_str(),
                "SECRET_KEY" | "DATABASE_URL" | "REDIS_URL" | "RUST_LOG"
            );
        if ours {
            cmd.env_remove(name);
        }
    }
    cmd.kill_on_drop(true);
    cmd
}

#[actix_web::test]
async fn production_without_a_secret_key_refuses_to_start() {
    let out = observe()
        .arg("serve")
        .env("OBSERVE_ENV", "production")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SECRET_KEY is missing in production mode"),
        "{stderr}"
    );
    assert!(stderr.contains("at least 32"), "{stderr}");

    let out = observe()
        .arg("serve")
        .env("OBSERVE_BIND", "not-an-address")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OBSERVE_BIND"));

    let out = observe().arg("frobnicate").output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: observe"));
}

#[actix_web::test]
async fn sigterm_drains_and_exits_cleanly_within_the_timeout() {
    let settings = test_settings();
    // The private cluster trusts local connections, so a password is accepted and ignored:
    // a canary that must not appear in any log line.
    let db_url = fresh_database(&settings.database).await.replacen(
        "://observe@",
        "://observe:pw-canary-4f2a@",
        1,
    );
    assert!(
        db_url.contains("pw-canary-4f2a"),
        "the test database URL has the expected form"
    );
    let secret = "test-secret-key-0123456789-abcdefghijklmnop";
    let mut child = observe()
        .arg("serve")
        .env("DATABASE_URL", &db_url)
        .env("REDIS_URL", env_var("REDIS_URL").expect("REDIS_URL"))
        .env("OBSERVE_BIND", "127.0.0.1:0")
        .env("OBSERVE_SHUTDOWN_TIMEOUT_SECS", "5")
        .env("SECRET_KEY", secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();

    // Wait for the "observe listening" line and read the port from it.
    let port = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            seen.push(line);
            if v["message"] == "observe listening" {
                return v["port"].as_u64().unwrap() as u16;
            }
        }
        panic!("observe exited before listening: {seen:?}");
    })
    .await
    .expect("observe started within 60 s");

    let client = awc::Client::default();
    let res = client
        .get(format!("http://127.0.0.1:{port}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);

    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within the shutdown timeout")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");

    while let Ok(Some(line)) = lines.next_line().await {
        seen.push(line);
    }
    let json: Vec<serde_json::Value> = seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(json.iter().any(|l| l["message"]
        == "shutdown requested: no new connections, finishing requests"
        && l["signal"] == "SIGTERM"));
    assert!(json
        .iter()
        .any(|l| l["message"] == "shutdown complete" && l["drained"] == true));
    assert!(
        !seen.iter().any(|l| l.contains(secret)),
        "the secret key reached the logs"
    );
    assert!(
        !seen.iter().any(|l| l.contains("pw-canary-4f2a")),
        "the database password reached the logs"
    );
    // After exit nothing listens there any more.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
