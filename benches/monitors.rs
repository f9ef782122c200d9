//! `make bench-monitors`: can one observe instance on this machine run `BENCH_MONITORS` uptime
//! monitors (default 10,000) at a 1-minute interval without missing or delaying a check? (A
//! benchmark, not a test: it prints numbers, and fails only when setup fails.)
//!
//! What it does: drops and re-creates the database `observe_bench_monitors` on the cluster of
//! `DATABASE_URL`; starts, inside this process, a **target** HTTP server on a loopback port (its
//! own thread and actix System); starts the release `observe serve` as a child process on a free
//! loopback port (log level warn, its own Redis key prefix, monitors allowed to target private
//! addresses, a `team` tier with unlimited monitors and a 60 s minimum interval, every
//! `OBSERVE__MONITORS__*` variable of this environment passed through; its log goes to
//! `target/bench-monitors-observe.log`); registers an account and a project through the HTTP
//! API; creates the monitors through `POST /projects/{id}/monitors`, `BENCH_CREATE_CONCURRENCY`
//! (default 32) requests at once, each `GET http://<target>/m/<i>` every 60 s with a 10 s
//! timeout; then lets observe run them for `BENCH_SECS` (default 200; 180 at least for a real
//! result), stops observe (SIGTERM) and measures.
//!
//! The target answers monitor `i` (path `/m/<i>`) by a fixed pattern of `i % 100`, and counts
//! the requests ("hits") of every path:
//!
//! - `0, 1` **fail always** (500): each such monitor opens one incident at its third check
//!   (each failed check is one hit plus the engine's one quick retry) and never recovers;
//! - `2, 3` **fail, then recover**: 500 for the first `2 × failures_to_open` hits (three checks
//!   with their retries), 200 after: one incident opened at the third check and closed by the
//!   fourth;
//! - `4..=13` **slow**: 200 after 200–1,500 ms (fixed per monitor), well under the timeout;
//! - `14..=23` **keyword**: 200 at once; the monitor requires a word of the body (even `i`) or
//!   the absence of another (odd `i`);
//! - the rest **fast**: 200 at once, a small body.
//!
//! How the figures are made (all from PostgreSQL after observe stopped, so every check the
//! engine finished is written and nothing changes under the queries):
//!
//! - **checks due vs done**, in the window `[start + interval + 10 s, end − 10 s)` where `start`
//!   is when the last monitor was created and `end` is `start + BENCH_SECS`: the engine spreads
//!   each monitor's first check over its first interval, so by the window's start every monitor
//!   has had one. Each monitor's own schedule is the grid `s0 + k × interval` anchored at its
//!   first `scheduled_at`. A check row sits on slot `k` when its `scheduled_at` is within 1 s of
//!   it, else it is **off-grid** (the schedule drifted); two rows on one slot are
//!   **duplicates**. `due` = slots of the grid inside the window (the grid extends backwards
//!   too, so a monitor whose first check came late is missing the slots before it), `done` =
//!   rows whose `scheduled_at` is in the window, `missed` = due slots without a row. A monitor
//!   with no row at all misses `window / interval` slots.
//! - **lateness** p50/p99/max: `started_at − scheduled_at` over every check row of the run
//!   (`percentile_cont` in PostgreSQL).
//! - **check results**: each row's `ok` against the target's pattern (the `j`-th check of a
//!   fail-then-recover monitor fails while `j < failures_to_open`).
//! - **incidents**: from each monitor's `c` recorded checks, fail-always should have opened one
//!   once `c ≥ failures_to_open`, fail-then-recover should have opened one then and closed it
//!   once `c > failures_to_open`, every other monitor none. A monitor whose incidents (opened,
//!   closed) differ from that counts as a difference; the verdict wants none.
//! - **target hits** against what the recorded checks explain: one per passing check, two per
//!   failing one (the quick retry). A few more are normal: checks cut short by the stop.
//! - **rows/s**: check rows per second scheduled in the window, and over the whole run.
//! - **CPU** of observe, of PostgreSQL (all `postgres` processes) and of this process (the
//!   target and the measuring) over the run (`/proc/<pid>/stat`, 100% = one core); observe's
//!   **peak RSS** is `VmHWM` since it started (monitor creation included).
//!
//! Knobs: `BENCH_MONITORS` (10000), `BENCH_SECS` (200), `BENCH_CREATE_CONCURRENCY` (32);
//! `OBSERVE__MONITORS__*` are passed to the server (`FAILURES_TO_OPEN` and `INTERVAL_DIVISOR`
//! are read here too). `BENCH_TARGET_ONLY=1` starts only the target and serves it for
//! `BENCH_SECS` (to point monitors at it by hand).

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::{anyhow, bail, Context as _};
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde_json::json;
use uuid::Uuid;

use common::{
    connect, env_num, env_var, fresh_database, make_account, mib, pct, read_hwm, read_rss,
    thousands, verdict, Account, CpuSample, CpuUse, Server, ServerConfig,
};

const BENCH_DB: &str = "observe_bench_monitors";
const INTERVAL_SECS: i64 = 60;
const TIMEOUT_SECS: i64 = 10;
/// A row within this of a slot of its monitor's grid sits on that slot.
const SLOT_TOLERANCE_MS: i64 = 1_000;
/// The window starts this long after the first interval, and ends this long before the end.
const WINDOW_MARGIN_MS: i64 = 10_000;
const MIN_REAL_SECS: u64 = 180;
const TARGET_LATENESS_P99_MS: f64 = 2_000.0;
const TARGET_RSS_BYTES: u64 = 300 * 1024 * 1024;
/// What the target's body holds, what keyword monitors look for, and what must be absent.
const TARGET_BODY: &str = "observe bench target: all good";
const KEYWORD_PRESENT: &str = "all good";
const KEYWORD_ABSENT: &str = "maintenance";

fn main() -> anyhow::Result<()> {
    actix_rt::System::new().block_on(run())
}

/// The knobs, from the environment.
struct Knobs {
    monitors: usize,
    secs: u64,
    create_concurrency: usize,
    /// observe's `monitors.failures_to_open` (passed through, else the default 3).
    failures_to_open: usize,
    /// observe's `monitors.interval_divisor` (tests only; 1 for a real result).
    interval_divisor: u32,
}

impl Knobs {
    fn from_env() -> anyhow::Result<Self> {
        let knobs = Knobs {
            monitors: env_num("BENCH_MONITORS", 10_000)?,
            secs: env_num("BENCH_SECS", 200)?,
            create_concurrency: env_num("BENCH_CREATE_CONCURRENCY", 32)?,
            failures_to_open: env_num("OBSERVE__MONITORS__FAILURES_TO_OPEN", 3)?,
            interval_divisor: env_num("OBSERVE__MONITORS__INTERVAL_DIVISOR", 1)?,
        };
        if knobs.monitors == 0
            || knobs.secs == 0
            || knobs.create_concurrency == 0
            || knobs.failures_to_open == 0
            || knobs.interval_divisor == 0
        {
            bail!("BENCH_MONITORS, BENCH_SECS, BENCH_CREATE_CONCURRENCY, OBSERVE__MONITORS__FAILURES_TO_OPEN and OBSERVE__MONITORS__INTERVAL_DIVISOR must be > 0");
        }
        Ok(knobs)
    }

    /// The interval the engine really uses, in milliseconds.
    fn interval_ms(&self) -> i64 {
        (INTERVAL_SECS * 1000 / i64::from(self.interval_divisor)).max(1)
    }

    /// Hits of a fail-then-recover monitor that fail: its first `failures_to_open` checks,
    /// each tried twice.
    fn fail_hits(&self) -> u32 {
        u32::try_from(2 * self.failures_to_open).unwrap_or(u32::MAX)
    }
}

// ---------------------------------------------------------------------------------------------
// The target's pattern.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Fast,
    Keyword,
    Slow,
    FailAlways,
    FailThenRecover,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Fast,
        Kind::Keyword,
        Kind::Slow,
        Kind::FailAlways,
        Kind::FailThenRecover,
    ];

    fn of(i: usize) -> Kind {
        match i % 100 {
            0 | 1 => Kind::FailAlways,
            2 | 3 => Kind::FailThenRecover,
            4..=13 => Kind::Slow,
            14..=23 => Kind::Keyword,
            _ => Kind::Fast,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Fast => "fast",
            Kind::Keyword => "keyword",
            Kind::Slow => "slow",
            Kind::FailAlways => "fail always",
            Kind::FailThenRecover => "fail, then recover",
        }
    }
}

/// How long the target takes to answer slow monitor `i`: 200–1,500 ms.
fn slow_ms(i: usize) -> u64 {
    200 + (i as u64).wrapping_mul(7919) % 1301
}

// ---------------------------------------------------------------------------------------------
// The target server.

struct TargetState {
    /// Requests per monitor index.
    hits: Vec<AtomicU32>,
    /// Requests to paths that are no monitor's.
    unknown: AtomicU64,
    fail_hits: u32,
}

struct Target {
    addr: SocketAddr,
    state: Arc<TargetState>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

async fn target_hit(path: web::Path<usize>, state: web::Data<TargetState>) -> HttpResponse {
    let i = path.into_inner();
    let Some(counter) = state.hits.get(i) else {
        state.unknown.fetch_add(1, Ordering::Relaxed);
        return HttpResponse::NotFound().body("no such monitor");
    };
    let hit = counter.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    let ok = HttpResponse::Ok()
        .content_type("text/plain")
        .body(TARGET_BODY);
    match Kind::of(i) {
        Kind::Fast | Kind::Keyword => ok,
        Kind::Slow => {
            actix_rt::time::sleep(Duration::from_millis(slow_ms(i))).await;
            ok
        }
        Kind::FailAlways => HttpResponse::InternalServerError().body("bench: failing"),
        Kind::FailThenRecover if hit <= state.fail_hits => {
            HttpResponse::InternalServerError().body("bench: failing for now")
        }
        Kind::FailThenRecover => ok,
    }
}

async fn target_unknown(state: web::Data<TargetState>) -> HttpResponse {
    state.unknown.fetch_add(1, Ordering::Relaxed);
    HttpResponse::NotFound().body("no such monitor")
}

impl Target {
    /// Starts the target on a loopback port, on a thread (and actix System) of its own.
    fn start(monitors: usize, fail_hits: u32) -> anyhow::Result<Target> {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("bind the target's port")?;
        let addr = listener.local_addr().context("the target's address")?;
        let state = Arc::new(TargetState {
            hits: (0..monitors).map(|_| AtomicU32::new(0)).collect(),
            unknown: AtomicU64::new(0),
            fail_hits,
        });
        let data = web::Data::from(Arc::clone(&state));
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bench-target".into())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .route("/health", web::get().to(HttpResponse::Ok))
                            .route("/m/{i}", web::route().to(target_hit))
                            .default_service(web::to(target_unknown))
                    })
                    .workers(1)
                    .backlog(4096)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .listen(listener)?
                    .run();
                    let _ = tx.send(server.handle());
                    server.await
                })
            })
            .context("spawn the target's thread")?;
        let handle = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("the target server did not start"))?;
        Ok(Target {
            addr,
            state,
            handle,
            thread: Some(thread),
        })
    }

    fn url(&self, i: usize) -> String {
        format!("http://{}/m/{i}", self.addr)
    }

    fn hits(&self, i: usize) -> u64 {
        self.state
            .hits
            .get(i)
            .map_or(0, |h| u64::from(h.load(Ordering::Relaxed)))
    }

    fn total_hits(&self) -> u64 {
        (0..self.state.hits.len()).map(|i| self.hits(i)).sum()
    }

    async fn stop(&mut self) {
        self.handle.stop(false).await;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

async fn run() -> anyhow::Result<()> {
    let knobs = Knobs::from_env()?;
    if std::env::var("BENCH_TARGET_ONLY").is_ok_and(|v| v == "1") {
        return target_only(&knobs).await;
    }
    let database_url = env_var("DATABASE_URL")
        .context("DATABASE_URL is not set (run `make services`, or source .env)")?;
    let redis_url = env_var("REDIS_URL")
        .context("REDIS_URL is not set (run `make services`, or source .env)")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if knobs.secs < MIN_REAL_SECS {
        eprintln!(
            "bench: BENCH_SECS={} is under {MIN_REAL_SECS}: a smoke run, not a benchmark result",
            knobs.secs
        );
    }

    let mut target = Target::start(knobs.monitors, knobs.fail_hits())?;
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let probe = client
        .get(format!("http://{}/health", target.addr))
        .send()
        .await
        .map_err(|e| anyhow!("the target server does not answer: {e}"))?;
    if probe.status().as_u16() != 200 {
        bail!("the target server answered {} to /health", probe.status());
    }

    let bench_url = fresh_database(&database_url, BENCH_DB).await?;
    let env = vec![
        (
            "OBSERVE__MONITORS__ALLOW_PRIVATE_TARGETS".to_string(),
            "true".to_string(),
        ),
        (
            "OBSERVE__TIERS__TEAM__MONITORS".to_string(),
            "unlimited".to_string(),
        ),
        (
            "OBSERVE__TIERS__TEAM__MIN_MONITOR_INTERVAL_SECS".to_string(),
            INTERVAL_SECS.to_string(),
        ),
    ];
    let mut server = Server::start(ServerConfig {
        bench: "monitors",
        db_url: &bench_url,
        redis_url: &redis_url,
        pass_prefix: "OBSERVE__MONITORS__",
        env,
    })?;
    let base = format!("http://{}", server.addr);
    server.wait_ready(&client, &base).await?;
    let pid = server.pid;

    let db = connect(&bench_url).await?;
    let account = make_account(&client, &base, &db).await?;

    // Create the monitors.
    eprintln!(
        "bench: creating {} monitors, {} at once ...",
        thousands(knobs.monitors as f64),
        knobs.create_concurrency
    );
    let cpu_create = CpuSample::take(pid);
    let created_at = Instant::now();
    let create = create_monitors(&client, &base, &account, &target, &knobs).await?;
    let create_secs = created_at.elapsed().as_secs_f64();
    let create_cpu = CpuUse::between(&cpu_create, &CpuSample::take(pid));
    let index = monitor_index(&db, account.project_id).await?;
    if index.len() != knobs.monitors {
        bail!(
            "{} monitors were created but the bench project has {} monitors pointing at the target",
            knobs.monitors,
            index.len()
        );
    }
    eprintln!(
        "bench: created {} monitors in {create_secs:.1} s; running for {} s ...",
        thousands(knobs.monitors as f64),
        knobs.secs
    );

    // Run.
    let start = Instant::now();
    let start_wall = Utc::now();
    let end = start + Duration::from_secs(knobs.secs);
    let cpu_before = CpuSample::take(pid);
    let mut peak_rss_seen = read_rss(pid).unwrap_or(0);
    let mut exited_during_run = None;
    let mut next_report = start + Duration::from_secs(20);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let nap = end.min(now + Duration::from_secs(2)) - now;
        tokio::time::sleep(nap).await;
        if let Some(rss) = read_rss(pid) {
            peak_rss_seen = peak_rss_seen.max(rss);
        }
        if exited_during_run.is_none() && !server.running() {
            let at = start.elapsed().as_secs();
            eprintln!(
                "bench: observe exited {at} s into the run; its log:\n{}",
                server.log_tail()
            );
            exited_during_run = Some(at);
        }
        if Instant::now() >= next_report && Instant::now() < end {
            next_report += Duration::from_secs(20);
            progress(&db, account.project_id, &target, start, pid).await;
        }
    }
    let cpu_after = CpuSample::take(pid);
    let hwm = read_hwm(pid);
    let rss_end = read_rss(pid);
    let metrics = fetch_metrics(&client, &base).await;
    let start_ms = start_wall.timestamp_millis();
    let end_ms = start_ms + ms_of(end - start);
    let run_cpu = CpuUse::between(&cpu_before, &cpu_after);

    // Stop observe, so that every finished check is written and nothing moves under the queries.
    eprintln!("bench: stopping observe and measuring ...");
    let stopped = server.stop();

    let window = Window {
        start_ms: start_ms + knobs.interval_ms() + WINDOW_MARGIN_MS,
        end_ms: end_ms - WINDOW_MARGIN_MS,
    };
    let measured = measure(&db, account.project_id, &index).await?;
    let hits: Vec<u64> = (0..knobs.monitors).map(|i| target.hits(i)).collect();
    let unknown_hits = target.state.unknown.load(Ordering::Relaxed);
    target.stop().await;

    let analysis = analyse(&measured, &index, &hits, &knobs, &window, start_ms, end_ms);
    print_report(&Report {
        knobs: &knobs,
        cores,
        create: &create,
        create_secs,
        create_cpu: &create_cpu,
        window: &window,
        start_ms,
        a: &analysis,
        lateness: &measured.lateness,
        unknown_hits,
        run_cpu: &run_cpu,
        hwm,
        rss_end,
        peak_rss_seen,
        metrics: &metrics,
        log: server.log_path().display().to_string(),
    });
    if let Some(at) = exited_during_run {
        println!("note: observe exited {at} s into the run");
    }
    match stopped {
        Ok(status) if status.success() => {}
        Ok(status) => println!(
            "note: observe exited with {status} (log: {})",
            server.log_path().display()
        ),
        Err(e) => println!("note: stopping observe: {e:#}"),
    }
    Ok(())
}

fn ms_of(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `BENCH_TARGET_ONLY=1`: the target alone, for `BENCH_SECS`.
async fn target_only(knobs: &Knobs) -> anyhow::Result<()> {
    let mut target = Target::start(knobs.monitors, knobs.fail_hits())?;
    println!(
        "target: http://{}/m/<i> (monitor i = 0..{}), serving for {} s",
        target.addr, knobs.monitors, knobs.secs
    );
    tokio::time::sleep(Duration::from_secs(knobs.secs)).await;
    let mut by_kind: BTreeMap<Kind, u64> = BTreeMap::new();
    for i in 0..knobs.monitors {
        *by_kind.entry(Kind::of(i)).or_default() += target.hits(i);
    }
    for (kind, n) in by_kind {
        println!("target: {} hits to {} monitors", n, kind.label());
    }
    println!(
        "target: {} hits to other paths",
        target.state.unknown.load(Ordering::Relaxed)
    );
    target.stop().await;
    Ok(())
}

/// What creating the monitors took.
#[derive(Default)]
struct Created {
    /// Answers that were retried (429, 5xx, no answer), by status.
    retried: BTreeMap<String, u64>,
}

/// The creation body of monitor `i`.
fn monitor_body(target: &Target, i: usize) -> serde_json::Value {
    let kind = Kind::of(i);
    let mut body = json!({
        "name": format!("bench {i} ({})", kind.label()),
        "url": target.url(i),
        "method": "GET",
        "interval_seconds": INTERVAL_SECS,
        "timeout_seconds": TIMEOUT_SECS,
        "headers": {"x-observe-bench": "1"},
    });
    if kind == Kind::Keyword {
        if i % 2 == 0 {
            body["keyword"] = json!(KEYWORD_PRESENT);
        } else {
            body["keyword"] = json!(KEYWORD_ABSENT);
            body["keyword_absent"] = json!(true);
        }
    }
    body
}

/// Creates the monitors through the API, `create_concurrency` requests at once. A 429, a 5xx
/// or a request without an answer is retried (at most 5 times); any other answer than 201 is a
/// setup failure.
async fn create_monitors(
    client: &awc::Client,
    base: &str,
    account: &Account,
    target: &Target,
    knobs: &Knobs,
) -> anyhow::Result<Created> {
    let url = format!("{base}/projects/{}/monitors", account.project_id);
    let next = Rc::new(std::cell::Cell::new(0_usize));
    let created = Rc::new(std::cell::RefCell::new(Created::default()));
    let workers = (0..knobs.create_concurrency.min(knobs.monitors)).map(|_| {
        let next = Rc::clone(&next);
        let created = Rc::clone(&created);
        let url = url.clone();
        async move {
            loop {
                let i = next.get();
                if i >= knobs.monitors {
                    return Ok::<(), anyhow::Error>(());
                }
                next.set(i + 1);
                let body = monitor_body(target, i);
                let mut attempt = 0_u32;
                loop {
                    attempt += 1;
                    let outcome =
                        common::post_json(client, &url, Some(&account.token), body.clone()).await;
                    let retry = match outcome {
                        Ok((201, _)) => break,
                        Ok((status, _)) if status == 429 || status >= 500 => status.to_string(),
                        Ok((status, answer)) => bail!(
                            "POST /projects/{}/monitors answered {status}: {answer}",
                            account.project_id
                        ),
                        Err(e) => format!("error: {}", e.root_cause()),
                    };
                    if attempt > 5 {
                        bail!("POST /projects/{}/monitors (monitor {i}) failed 6 times, last: {retry}", account.project_id);
                    }
                    *created.borrow_mut().retried.entry(retry).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                }
                let done = i + 1;
                if done % 2_000 == 0 {
                    eprintln!("bench: ... {} created", thousands(done as f64));
                }
            }
        }
    });
    for outcome in join_all(workers).await {
        outcome?;
    }
    let created = std::mem::take(&mut *created.borrow_mut());
    Ok(created)
}

/// Monitor id → its index `i` (from the URL it checks).
async fn monitor_index(
    db: &tokio_postgres::Client,
    project_id: Uuid,
) -> anyhow::Result<HashMap<Uuid, usize>> {
    let rows = db
        .query(
            "SELECT id, url FROM monitors WHERE project_id = $1",
            &[&project_id],
        )
        .await
        .context("read the bench monitors")?;
    let mut index = HashMap::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = row.get(0);
        let url: String = row.get(1);
        if let Some(i) = url
            .rsplit_once("/m/")
            .and_then(|(_, i)| i.parse::<usize>().ok())
        {
            index.insert(id, i);
        }
    }
    Ok(index)
}

/// A line on stderr every 20 s of the run.
async fn progress(
    db: &tokio_postgres::Client,
    project_id: Uuid,
    target: &Target,
    start: Instant,
    pid: u32,
) {
    let counts = db
        .query_one(
            "SELECT (SELECT count(*) FROM monitor_checks WHERE project_id = $1), \
                    (SELECT count(*) FROM incidents WHERE project_id = $1), \
                    (SELECT count(*) FROM incidents WHERE project_id = $1 AND resolved_at IS NULL)",
            &[&project_id],
        )
        .await;
    let (checks, incidents, open) = match counts {
        Ok(row) => (
            row.get::<_, i64>(0).to_string(),
            row.get::<_, i64>(1).to_string(),
            row.get::<_, i64>(2).to_string(),
        ),
        Err(_) => ("?".into(), "?".into(), "?".into()),
    };
    eprintln!(
        "bench: {:>4} s: {checks} check rows, {} target hits, {incidents} incidents ({open} open), observe RSS {}",
        start.elapsed().as_secs(),
        target.total_hits(),
        read_rss(pid).map_or("-".into(), mib)
    );
}

/// The `observe_monitor*` samples of `/metrics` (histogram buckets left out).
async fn fetch_metrics(client: &awc::Client, base: &str) -> Vec<String> {
    let text = match client.get(format!("{base}/metrics")).send().await {
        Ok(mut res) if res.status().as_u16() == 200 => match res.body().limit(8 << 20).await {
            Ok(body) => String::from_utf8_lossy(&body).into_owned(),
            Err(e) => return vec![format!("(reading /metrics: {e})")],
        },
        Ok(res) => return vec![format!("(/metrics answered {})", res.status())],
        Err(e) => return vec![format!("(/metrics: {e})")],
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            name.starts_with("observe_monitor") && !name.ends_with("_bucket")
        })
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Measuring.

/// The due/done window, in epoch milliseconds: `[start_ms, end_ms)`.
struct Window {
    start_ms: i64,
    end_ms: i64,
}

impl Window {
    fn len_ms(&self) -> i64 {
        (self.end_ms - self.start_ms).max(0)
    }
}

/// One check row.
struct CheckRow {
    scheduled_ms: i64,
    started_ms: i64,
    ok: bool,
}

#[derive(Default)]
struct Lateness {
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    checks: i64,
}

/// What the database holds after the run.
struct Measured {
    /// Check rows per monitor, in `scheduled_at` order.
    checks: HashMap<Uuid, Vec<CheckRow>>,
    /// Incidents per monitor: (opened, closed).
    incidents: HashMap<Uuid, (u64, u64)>,
    /// Check rows of monitors that are not the bench's.
    stray_rows: u64,
    lateness: Lateness,
}

async fn measure(
    db: &tokio_postgres::Client,
    project_id: Uuid,
    index: &HashMap<Uuid, usize>,
) -> anyhow::Result<Measured> {
    let rows = db
        .query(
            "SELECT monitor_id, scheduled_at, started_at, ok FROM monitor_checks \
             WHERE project_id = $1 ORDER BY monitor_id, scheduled_at, started_at",
            &[&project_id],
        )
        .await
        .context("read the check rows")?;
    let mut checks: HashMap<Uuid, Vec<CheckRow>> = HashMap::with_capacity(index.len());
    let mut stray_rows = 0;
    for row in rows {
        let id: Uuid = row.get(0);
        if !index.contains_key(&id) {
            stray_rows += 1;
            continue;
        }
        let scheduled: DateTime<Utc> = row.get(1);
        let started: DateTime<Utc> = row.get(2);
        checks.entry(id).or_default().push(CheckRow {
            scheduled_ms: scheduled.timestamp_millis(),
            started_ms: started.timestamp_millis(),
            ok: row.get(3),
        });
    }

    let row = db
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lateness_ms), \
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY lateness_ms), \
                    max(lateness_ms), count(*) \
             FROM (SELECT (extract(epoch FROM started_at - scheduled_at) * 1000)::float8 \
                          AS lateness_ms \
                   FROM monitor_checks WHERE project_id = $1) AS c",
            &[&project_id],
        )
        .await
        .context("lateness percentiles")?;
    let lateness = Lateness {
        p50_ms: row.get(0),
        p99_ms: row.get(1),
        max_ms: row.get(2),
        checks: row.get(3),
    };

    let rows = db
        .query(
            "SELECT monitor_id, count(*), count(resolved_at) FROM incidents \
             WHERE project_id = $1 GROUP BY monitor_id",
            &[&project_id],
        )
        .await
        .context("read the incidents")?;
    let incidents = rows
        .iter()
        .map(|r| {
            let opened: i64 = r.get(1);
            let closed: i64 = r.get(2);
            (
                r.get::<_, Uuid>(0),
                (
                    u64::try_from(opened).unwrap_or(0),
                    u64::try_from(closed).unwrap_or(0),
                ),
            )
        })
        .collect();
    Ok(Measured {
        checks,
        incidents,
        stray_rows,
        lateness,
    })
}

/// The schedule of one monitor against the window.
#[derive(Default, Debug, PartialEq, Eq)]
struct Slots {
    due: u64,
    done: u64,
    missed: u64,
    off_grid: u64,
    duplicates: u64,
    /// Its first check came after the window opened.
    first_late: bool,
}

/// `rows` (in `scheduled_at` order) against the grid `s0 + k × interval` anchored at the first
/// row's `scheduled_at`, over `[ws, we)` (epoch ms).
fn slots(rows: &[CheckRow], interval_ms: i64, ws: i64, we: i64) -> Slots {
    let mut out = Slots::default();
    let Some(first) = rows.first() else {
        let due = u64::try_from((we - ws).max(0) / interval_ms).unwrap_or(0);
        out.due = due;
        out.missed = due;
        return out;
    };
    let s0 = first.scheduled_ms;
    out.first_late = s0 >= ws;
    let mut on_grid = std::collections::BTreeSet::new();
    for row in rows {
        if row.scheduled_ms >= ws && row.scheduled_ms < we {
            out.done += 1;
        }
        let d = row.scheduled_ms - s0;
        let k = (d + interval_ms / 2).div_euclid(interval_ms);
        if (d - k * interval_ms).abs() > SLOT_TOLERANCE_MS {
            out.off_grid += 1;
        } else if !on_grid.insert(k) {
            out.duplicates += 1;
        }
    }
    if we > ws {
        // Slots k with ws ≤ s0 + k·interval < we.
        let k_lo = ceil_div(ws - s0, interval_ms);
        let k_hi = ceil_div(we - s0, interval_ms) - 1;
        if k_hi >= k_lo {
            out.due = u64::try_from(k_hi - k_lo + 1).unwrap_or(0);
            let present = on_grid.range(k_lo..=k_hi).count() as u64;
            out.missed = out.due - present;
        }
    }
    out
}

fn ceil_div(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

/// What the pattern says monitor `kind` should show after `c` checks: whether check `j` passes.
fn check_should_pass(kind: Kind, j: usize, failures_to_open: usize) -> bool {
    match kind {
        Kind::FailAlways => false,
        Kind::FailThenRecover => j >= failures_to_open,
        _ => true,
    }
}

/// Incidents (opened, closed) monitor `kind` should have after `c` checks.
fn expected_incidents(kind: Kind, c: usize, failures_to_open: usize) -> (u64, u64) {
    match kind {
        Kind::FailAlways => (u64::from(c >= failures_to_open), 0),
        Kind::FailThenRecover => (
            u64::from(c >= failures_to_open),
            u64::from(c > failures_to_open),
        ),
        _ => (0, 0),
    }
}

/// Target hits `c` checks of monitor `kind` explain: one per passing check, two per failing.
fn expected_hits(kind: Kind, c: usize, failures_to_open: usize) -> u64 {
    (0..c)
        .map(|j| {
            if check_should_pass(kind, j, failures_to_open) {
                1
            } else {
                2
            }
        })
        .sum()
}

/// Figures per monitor kind.
#[derive(Default, Clone)]
struct KindTally {
    monitors: u64,
    checks: u64,
    unexpected_results: u64,
    hits: u64,
    hits_expected: u64,
    opened: u64,
    closed: u64,
    opened_expected: u64,
    closed_expected: u64,
    /// Monitors whose incidents differ from the expectation.
    differ: u64,
}

#[derive(Default)]
struct Analysis {
    slots: Slots,
    never_checked: u64,
    first_late: u64,
    /// When the last monitor had its first check, after the run's start (ms).
    last_first_check_ms: Option<i64>,
    by_kind: BTreeMap<Kind, KindTally>,
    /// Monitors whose incidents differ, and of them those checked in the last 15 s of the run.
    differ: u64,
    differ_recent: u64,
    /// The first few of them, described.
    differ_examples: Vec<String>,
    rows_in_run: u64,
    stray_rows: u64,
}

fn analyse(
    m: &Measured,
    index: &HashMap<Uuid, usize>,
    hits: &[u64],
    knobs: &Knobs,
    window: &Window,
    start_ms: i64,
    end_ms: i64,
) -> Analysis {
    let f = knobs.failures_to_open;
    let mut a = Analysis {
        stray_rows: m.stray_rows,
        ..Analysis::default()
    };
    for kind in Kind::ALL {
        a.by_kind.insert(kind, KindTally::default());
    }
    let empty = Vec::new();
    for (id, &i) in index {
        let kind = Kind::of(i);
        let rows = m.checks.get(id).unwrap_or(&empty);
        let s = slots(rows, knobs.interval_ms(), window.start_ms, window.end_ms);
        a.slots.due += s.due;
        a.slots.done += s.done;
        a.slots.missed += s.missed;
        a.slots.off_grid += s.off_grid;
        a.slots.duplicates += s.duplicates;
        a.first_late += u64::from(s.first_late);
        match rows.first() {
            None => a.never_checked += 1,
            Some(first) => {
                let after = first.started_ms - start_ms;
                a.last_first_check_ms = Some(a.last_first_check_ms.map_or(after, |m| m.max(after)));
            }
        }
        a.rows_in_run += rows
            .iter()
            .filter(|r| r.started_ms >= start_ms && r.started_ms < end_ms)
            .count() as u64;

        let c = rows.len();
        let t = a.by_kind.entry(kind).or_default();
        t.monitors += 1;
        t.checks += c as u64;
        t.unexpected_results += rows
            .iter()
            .enumerate()
            .filter(|(j, r)| r.ok != check_should_pass(kind, *j, f))
            .count() as u64;
        t.hits += hits.get(i).copied().unwrap_or(0);
        t.hits_expected += expected_hits(kind, c, f);
        let expected = expected_incidents(kind, c, f);
        let actual = m.incidents.get(id).copied().unwrap_or((0, 0));
        t.opened += actual.0;
        t.closed += actual.1;
        t.opened_expected += expected.0;
        t.closed_expected += expected.1;
        if actual != expected {
            t.differ += 1;
            a.differ += 1;
            let last = rows.last().map(|r| r.started_ms - end_ms);
            if last.is_some_and(|ms| ms >= -15_000) {
                a.differ_recent += 1;
            }
            if a.differ_examples.len() < 5 {
                a.differ_examples.push(format!(
                    "monitor {i} ({}, {id}): {c} checks, the last at end {}; incidents opened/closed {}/{}, expected {}/{}",
                    kind.label(),
                    last.map_or("-".into(), |ms| format!("{:+.1} s", ms as f64 / 1000.0)),
                    actual.0,
                    actual.1,
                    expected.0,
                    expected.1
                ));
            }
        }
    }
    a
}

// ---------------------------------------------------------------------------------------------
// The report.

struct Report<'a> {
    knobs: &'a Knobs,
    cores: usize,
    create: &'a Created,
    create_secs: f64,
    create_cpu: &'a CpuUse,
    window: &'a Window,
    start_ms: i64,
    a: &'a Analysis,
    lateness: &'a Lateness,
    unknown_hits: u64,
    run_cpu: &'a CpuUse,
    hwm: Option<u64>,
    rss_end: Option<u64>,
    peak_rss_seen: u64,
    metrics: &'a [String],
    log: String,
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v.abs() < 10.0 => format!("{v:.1} ms"),
        Some(v) => format!("{} ms", thousands(v)),
        None => "-".into(),
    }
}

fn n(x: u64) -> String {
    thousands(x as f64)
}

fn print_report(r: &Report<'_>) {
    let k = r.knobs;
    let a = r.a;
    // VmHWM can trail VmRSS a little (the kernel syncs its counters lazily).
    let peak_rss = r.hwm.map(|h| h.max(r.peak_rss_seen));
    let mut out = String::new();
    let monitor_env: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OBSERVE__MONITORS__"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let interval_s = k.interval_ms() as f64 / 1000.0;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "observe monitors benchmark: {} cores; {} monitors every {interval_s} s (timeout {TIMEOUT_SECS} s) \
         against a loopback target; run of {} s{}",
        r.cores,
        n(k.monitors as u64),
        k.secs,
        if k.secs < MIN_REAL_SECS {
            format!(" (under {MIN_REAL_SECS} s: a smoke run, not a result)")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "monitor settings from the environment (besides allow_private_targets=true): {}",
        if monitor_env.is_empty() {
            "none (config/default.toml)".to_string()
        } else {
            monitor_env.join(" ")
        }
    );
    let pattern: Vec<String> = a
        .by_kind
        .iter()
        .filter(|(_, t)| t.monitors > 0)
        .map(|(kind, t)| format!("{} {}", n(t.monitors), kind.label()))
        .collect();
    let _ = writeln!(
        out,
        "target pattern: {} (slow: 200–1,500 ms; fail, then recover: the first {} hits fail)",
        pattern.join(", "),
        k.fail_hits()
    );
    let rule = "-".repeat(110);
    let _ = writeln!(out, "{rule}");
    let line = |out: &mut String, what: &str, value: String| {
        let _ = writeln!(out, "{what:<36} {value}");
    };
    let retried: Vec<String> = r
        .create
        .retried
        .iter()
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect();
    line(
        &mut out,
        "monitors created",
        format!(
            "{} in {:.1} s ({}/s, {} at once); observe CPU {}, PostgreSQL CPU {}{}",
            n(k.monitors as u64),
            r.create_secs,
            thousands(k.monitors as f64 / r.create_secs.max(1e-9)),
            k.create_concurrency,
            pct(r.create_cpu.server),
            pct(r.create_cpu.postgres),
            if retried.is_empty() {
                String::new()
            } else {
                format!("; retried: {}", retried.join(", "))
            }
        ),
    );
    line(
        &mut out,
        "first checks",
        match a.last_first_check_ms {
            Some(ms) if a.never_checked == 0 => format!(
                "every monitor had its first check by start {:+.1} s",
                ms as f64 / 1000.0
            ),
            Some(ms) => format!(
                "{} monitors never checked; the others by start {:+.1} s",
                n(a.never_checked),
                ms as f64 / 1000.0
            ),
            None => "no monitor was ever checked".to_string(),
        },
    );
    let ws = (r.window.start_ms - r.start_ms) as f64 / 1000.0;
    let we = (r.window.end_ms - r.start_ms) as f64 / 1000.0;
    line(
        &mut out,
        "window (scheduled_at)",
        if r.window.len_ms() > 0 {
            format!(
                "[start + {ws:.0} s, start + {we:.0} s) = {:.0} s, start = when the last monitor was created",
                r.window.len_ms() as f64 / 1000.0
            )
        } else {
            format!("empty: the run is too short (it starts at start + {ws:.0} s and ends 10 s before the end)")
        },
    );
    line(&mut out, "checks due in the window", n(a.slots.due));
    line(
        &mut out,
        "checks done in the window",
        format!("{} (rows scheduled in the window)", n(a.slots.done)),
    );
    line(
        &mut out,
        "missed checks",
        format!(
            "{} ({} monitors never checked, {} first checked after the window opened)",
            n(a.slots.missed),
            n(a.never_checked),
            n(a.first_late)
        ),
    );
    line(
        &mut out,
        "off-grid / duplicate checks",
        format!(
            "{} / {} (scheduled_at more than {} ms off the monitor's {interval_s} s grid / two on one slot)",
            n(a.slots.off_grid),
            n(a.slots.duplicates),
            SLOT_TOLERANCE_MS
        ),
    );
    line(
        &mut out,
        "lateness p50 / p99 / max",
        format!(
            "{} / {} / {} (started_at − scheduled_at, all {} checks)",
            ms(r.lateness.p50_ms),
            ms(r.lateness.p99_ms),
            ms(r.lateness.max_ms),
            thousands(r.lateness.checks as f64)
        ),
    );
    let rows_s = |rows: u64, span_ms: i64| {
        if span_ms > 0 {
            format!("{:.1}", rows as f64 / (span_ms as f64 / 1000.0))
        } else {
            "-".into()
        }
    };
    line(
        &mut out,
        "rows/s into monitor_checks",
        format!(
            "{} in the window; {} over the run ({} rows started in it){}",
            rows_s(a.slots.done, r.window.len_ms()),
            rows_s(a.rows_in_run, i64::try_from(k.secs).unwrap_or(0) * 1000),
            n(a.rows_in_run),
            if a.stray_rows > 0 {
                format!("; {} rows of unknown monitors", n(a.stray_rows))
            } else {
                String::new()
            }
        ),
    );
    line(
        &mut out,
        "observe CPU / PostgreSQL CPU",
        format!(
            "{} / {} over the run (bench process, target included: {})",
            pct(r.run_cpu.server),
            pct(r.run_cpu.postgres),
            pct(r.run_cpu.own)
        ),
    );
    line(
        &mut out,
        "observe RSS",
        format!(
            "peak {} (VmHWM since start: {}; highest VmRSS sampled every 2 s: {}); {} at the end",
            peak_rss.map_or("-".into(), mib),
            r.hwm.map_or("-".into(), mib),
            mib(r.peak_rss_seen),
            r.rss_end.map_or("-".into(), mib)
        ),
    );
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(
        out,
        "{:<20} {:>8} {:>8} {:>11} {:>22} {:>15} {:>15} {:>7}",
        "monitors",
        "count",
        "checks",
        "unexpected",
        "target hits / expect.",
        "opened/expect.",
        "closed/expect.",
        "differ"
    );
    let mut total = KindTally::default();
    for (kind, t) in &a.by_kind {
        if t.monitors == 0 {
            continue;
        }
        kind_line(&mut out, kind.label(), t);
        total.monitors += t.monitors;
        total.checks += t.checks;
        total.unexpected_results += t.unexpected_results;
        total.hits += t.hits;
        total.hits_expected += t.hits_expected;
        total.opened += t.opened;
        total.closed += t.closed;
        total.opened_expected += t.opened_expected;
        total.closed_expected += t.closed_expected;
        total.differ += t.differ;
    }
    kind_line(&mut out, "all", &total);
    let _ = writeln!(
        out,
        "(unexpected: check results other than the pattern's; expected hits: 1 per passing check, \
         2 per failing one, and a few more are checks cut short by the stop; {} hits to other paths)",
        n(r.unknown_hits)
    );
    let _ = writeln!(out, "{rule}");

    let _ = writeln!(
        out,
        "{:<36} {:>30}  {:<14} verdict",
        "target", "result", "goal"
    );
    let _ = writeln!(
        out,
        "{:<36} {:>30}  {:<14} {}",
        "missed checks",
        format!("{} of {} due", n(a.slots.missed), n(a.slots.due)),
        "0",
        verdict(a.slots.missed == 0 && a.slots.due > 0)
    );
    let p99 = r.lateness.p99_ms;
    let _ = writeln!(
        out,
        "{:<36} {:>30}  {:<14} {}",
        "lateness p99",
        ms(p99),
        format!("< {} ms", thousands(TARGET_LATENESS_P99_MS)),
        verdict(p99.is_some_and(|v| v < TARGET_LATENESS_P99_MS))
    );
    let _ = writeln!(
        out,
        "{:<36} {:>30}  {:<14} {}",
        "observe peak RSS",
        peak_rss.map_or("-".into(), mib),
        format!("< {}", mib(TARGET_RSS_BYTES)),
        verdict(peak_rss.is_some_and(|b| b < TARGET_RSS_BYTES))
    );
    let _ = writeln!(
        out,
        "{:<36} {:>30}  {:<14} {}",
        "incidents opened / closed",
        format!(
            "{}/{} vs {}/{}",
            n(total.opened),
            n(total.closed),
            n(total.opened_expected),
            n(total.closed_expected)
        ),
        "as expected",
        verdict(a.differ == 0 && total.checks > 0)
    );
    let _ = writeln!(out, "{rule}");
    if a.differ > 0 {
        let _ = writeln!(
            out,
            "incidents: {} monitors differ from the pattern ({} of them had their last check in the last 15 s of the run, \
             which the stop may have cut short):",
            n(a.differ),
            n(a.differ_recent)
        );
        for example in &a.differ_examples {
            let _ = writeln!(out, "  {example}");
        }
    }
    if !r.metrics.is_empty() {
        let _ = writeln!(out, "observe's /metrics at the end of the run:");
        for l in r.metrics.iter().take(40) {
            let _ = writeln!(out, "  {l}");
        }
    }
    let _ = writeln!(
        out,
        "CPU: 100% = one core ({} cores = {}%). observe's log: {}",
        r.cores,
        r.cores * 100,
        r.log
    );
    print!("{out}");
}

fn kind_line(out: &mut String, label: &str, t: &KindTally) {
    let _ = writeln!(
        out,
        "{:<20} {:>8} {:>8} {:>11} {:>22} {:>15} {:>15} {:>7}",
        label,
        n(t.monitors),
        n(t.checks),
        n(t.unexpected_results),
        format!("{} / {}", n(t.hits), n(t.hits_expected)),
        format!("{} / {}", n(t.opened), n(t.opened_expected)),
        format!("{} / {}", n(t.closed), n(t.closed_expected)),
        n(t.differ)
    );
}
