//! What the benchmarks (`benches/ingest.rs`, `benches/monitors.rs`) share: the environment, a
//! fresh database, the release `observe serve` as a child process, the account and project
//! they make through the HTTP API, CPU and memory from `/proc`, and the report's formatting.
//!
//! Each bench includes this file as its own module, so a bench that does not use an item
//! would warn about it: hence the `allow(dead_code)`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::json;
use tokio_postgres::NoTls;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The environment.

/// A number from the environment, or `default` when the variable is unset or empty.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a valid number")),
        _ => Ok(default),
    }
}

/// A variable from the environment, else from the `.env` that `make services` writes.
pub fn env_var(name: &str) -> Option<String> {
    if let Ok(v) = std::env::var(name) {
        return Some(v);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".env");
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v);
            v.replace("'\\''", "'")
        })
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL.

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

/// A client whose connection task runs on the current actix System.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connect to PostgreSQL ({})", redact(url)))?;
    actix_rt::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.split_once("://"), url.find('@')) {
        (Some((scheme, rest)), Some(_)) => match rest.split_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

/// Drops and re-creates the database `name` on the cluster of `database_url`; its URL.
pub async fn fresh_database(database_url: &str, name: &str) -> anyhow::Result<String> {
    let admin = connect(&with_database(database_url, "postgres")).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .context("drop the bench database")?;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .context("create the bench database")?;
    drop(admin);
    Ok(with_database(database_url, name))
}

// ---------------------------------------------------------------------------------------------
// The observe process.

/// How to start observe for a bench.
pub struct ServerConfig<'a> {
    /// The bench's name: the log goes to `target/bench-<bench>-observe.log`.
    pub bench: &'a str,
    pub db_url: &'a str,
    pub redis_url: &'a str,
    /// `OBSERVE*` variables of this environment are not passed to observe, except those that
    /// start with this prefix (the bench's own tuning knobs, e.g. `OBSERVE__INGEST__`).
    pub pass_prefix: &'a str,
    /// What the bench sets on top (wins over a passed-through variable of the same name).
    pub env: Vec<(String, String)>,
}

/// The release `observe serve`, a child process on a free loopback port.
pub struct Server {
    child: Child,
    pub pid: u32,
    pub addr: String,
    log: PathBuf,
}

/// Where a bench's observe writes its log.
pub fn log_path(bench: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench-{bench}-observe.log"))
}

fn observe_binary() -> PathBuf {
    match std::env::var_os("OBSERVE_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_observe")),
    }
}

impl Server {
    pub fn start(config: ServerConfig<'_>) -> anyhow::Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .context("find a free port")?;
        let addr = format!("127.0.0.1:{port}");
        let log_path = log_path(config.bench);
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let log_err = log.try_clone().context("clone the log file handle")?;

        let mut cmd = Command::new(observe_binary());
        cmd.arg("serve");
        // Only what the bench sets, plus the bench's tuning variables of this environment.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            let ours = (name.starts_with("OBSERVE") && !name.starts_with(config.pass_prefix))
                || matches!(
                    name.as_str(),
                    "SECRET_KEY" | "DATABASE_URL" | "REDIS_URL" | "RUST_LOG"
                );
            if ours {
                cmd.env_remove(&name);
            }
        }
        let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        cmd.env("DATABASE_URL", config.db_url)
            .env("REDIS_URL", config.redis_url)
            .env("OBSERVE_BIND", &addr)
            .env("OBSERVE_LOG_LEVEL", "warn")
            .env("OBSERVE_SHUTDOWN_TIMEOUT_SECS", "10")
            .env("SECRET_KEY", secret)
            .env(
                "OBSERVE__REDIS__KEY_PREFIX",
                format!("bench:{}:", std::process::id()),
            );
        for (name, value) in &config.env {
            cmd.env(name, value);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", observe_binary().display()))?;
        let pid = child.id();
        Ok(Server {
            child,
            pid,
            addr,
            log: log_path,
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last 30 lines of observe's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub async fn wait_ready(&mut self, client: &awc::Client, base: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "observe exited ({status}) before it was ready; its log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(res) = client.get(format!("{base}/health/ready")).send().await {
                if res.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "observe was not ready within 90 s; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then wait (at most 30 s) for it to exit.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("run kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!("observe did not exit within 30 s of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP API: account and project.

/// POSTs a JSON body (with a bearer token if given); the status and the JSON answer (`Null`
/// when the answer is not JSON).
pub async fn post_json(
    client: &awc::Client,
    url: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut req = client
        .post(url)
        .insert_header(("content-type", "application/json"));
    if let Some(token) = token {
        req = req.insert_header(("authorization", format!("Bearer {token}")));
    }
    let mut res = req
        .send_body(body.to_string())
        .await
        .map_err(|e| anyhow!("POST {url}: {e}"))?;
    let status = res.status().as_u16();
    let bytes = res
        .body()
        .await
        .map_err(|e| anyhow!("POST {url}: body: {e}"))?;
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// What [`make_account`] made.
pub struct Account {
    /// The access token (`Authorization: Bearer …`).
    pub token: String,
    pub project_id: Uuid,
}

/// Registers an account, creates a project and makes its organisation `team` (which the bench
/// configures as it needs, e.g. unlimited).
pub async fn make_account(
    client: &awc::Client,
    base: &str,
    db: &tokio_postgres::Client,
) -> anyhow::Result<Account> {
    let email = format!("bench-{}@example.com", Uuid::new_v4().simple());
    let (status, body) = post_json(
        client,
        &format!("{base}/auth/register"),
        None,
        json!({"email": email, "password": "bench password 0123456789", "name": "Bench"}),
    )
    .await?;
    if status != 201 {
        bail!("POST /auth/register answered {status}: {body}");
    }
    let token = body["access_token"]
        .as_str()
        .context("register: no access_token")?
        .to_string();

    let (status, body) = post_json(
        client,
        &format!("{base}/projects"),
        Some(&token),
        json!({"name": "bench"}),
    )
    .await?;
    if status != 201 {
        bail!("POST /projects answered {status}: {body}");
    }
    let project_id: Uuid = body["id"]
        .as_str()
        .context("create project: no id")?
        .parse()
        .context("create project: id is not a UUID")?;

    let updated = db
        .execute(
            "UPDATE organisations SET tier = 'team' \
             WHERE id = (SELECT organisation_id FROM projects WHERE id = $1)",
            &[&project_id],
        )
        .await
        .context("set the organisation's tier")?;
    if updated != 1 {
        bail!("setting the tier updated {updated} organisations");
    }
    Ok(Account { token, project_id })
}

// ---------------------------------------------------------------------------------------------
// /proc.

/// CPU time (clock ticks) of observe, of this process and of every `postgres` process, at one
/// moment.
pub struct CpuSample {
    pub at: Instant,
    pub server: Option<u64>,
    pub own: Option<u64>,
    pub postgres: HashMap<u32, u64>,
}

impl CpuSample {
    pub fn take(server_pid: u32) -> CpuSample {
        let mut postgres = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some((comm, ticks)) = proc_stat(&format!("/proc/{pid}/stat")) {
                    if comm == "postgres" {
                        postgres.insert(pid, ticks);
                    }
                }
            }
        }
        CpuSample {
            at: Instant::now(),
            server: proc_stat(&format!("/proc/{server_pid}/stat")).map(|(_, t)| t),
            own: proc_stat("/proc/self/stat").map(|(_, t)| t),
            postgres,
        }
    }
}

/// CPU % (100% = one core) of observe, PostgreSQL (all its processes) and this process between
/// two samples.
pub struct CpuUse {
    pub server: Option<f64>,
    pub postgres: Option<f64>,
    pub own: Option<f64>,
}

impl CpuUse {
    pub fn between(before: &CpuSample, after: &CpuSample) -> CpuUse {
        let wall = after.at.duration_since(before.at).as_secs_f64();
        let tick = clock_ticks_per_sec();
        let pct = |before: Option<u64>, after: Option<u64>| match (before, after) {
            (Some(b), Some(a)) if wall > 0.0 => {
                Some(a.saturating_sub(b) as f64 / tick / wall * 100.0)
            }
            _ => None,
        };
        let postgres = if wall > 0.0 {
            let ticks: u64 = after
                .postgres
                .iter()
                .map(|(pid, t)| t.saturating_sub(*before.postgres.get(pid).unwrap_or(&0)))
                .sum();
            Some(ticks as f64 / tick / wall * 100.0)
        } else {
            None
        };
        CpuUse {
            server: pct(before.server, after.server),
            postgres,
            own: pct(before.own, after.own),
        }
    }
}

/// The command name and utime + stime (clock ticks) of a `/proc/<pid>/stat`.
pub fn proc_stat(path: &str) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // After "pid (comm) ": field 3 (state) is index 0, so utime (14) is 11 and stime (15) 12.
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// A `Vm…:` line of `/proc/<pid>/status`, in bytes.
fn read_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// VmHWM (peak RSS) of a process, in bytes.
pub fn read_hwm(pid: u32) -> Option<u64> {
    read_status_kib(pid, "VmHWM:")
}

/// VmRSS (current RSS) of a process, in bytes.
pub fn read_rss(pid: u32) -> Option<u64> {
    read_status_kib(pid, "VmRSS:")
}

pub fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------------------------
// The report.

/// `x` rounded, with thousands separators.
pub fn thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}%"))
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}
