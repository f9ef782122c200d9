//! `make bench-ingest`: how fast `POST /ingest/events` stores events, end to end, on this
//! machine (a benchmark, not a test: it prints numbers; it fails only when PostgreSQL does not
//! hold exactly the items that were answered 202, or when setup fails).
//!
//! What it does: drops and re-creates the database `observe_bench` on the cluster of
//! `DATABASE_URL`, starts the release `observe serve` as a child process on a free loopback port
//! (its own Redis key prefix, a `team` tier made unlimited, every `OBSERVE__INGEST__*` variable of
//! this environment passed through; its log goes to `target/bench-ingest-observe.log`), makes an
//! account, a project and an API key through the HTTP API, then drives load from this process
//! (separate from the server) over loopback, with `BENCH_CONCURRENCY` (default 256) concurrent
//! connections split over `BENCH_THREADS` (default 2) OS threads, for `BENCH_SECS` (default 15)
//! seconds per phase after `BENCH_WARMUP_SECS` (default 1) of warm-up:
//!
//! - `(a)`   single-event requests, closed loop: each connection sends its next request as soon
//!   as the previous one is answered;
//! - `(a/2)` single-event requests, open loop at half the rate `(a)` reached: each connection
//!   sends on a fixed schedule, and latency is counted from the scheduled send time, so a slow
//!   server cannot hide its queueing (no coordinated omission);
//! - `(b)`   `BENCH_BATCH`-event batches (default 100), closed loop;
//! - `copy`  the raw rate of `COPY events … FROM STDIN BINARY` (`BinaryCopyInWriter`) of the same
//!   rows into the same table, on one connection: `BENCH_COPY_ROWS` rows (default 500,000) in
//!   chunks of `BENCH_COPY_CHUNK` (default 10,000) rows per COPY + commit, under a project id of
//!   its own, deleted afterwards. It runs twice: before the HTTP phases, on the empty table,
//!   and right after `(b)`, on the table `(b)` wrote into; `(b)` is compared with the mean of
//!   the two (on this machine either alone varied by half from run to run);
//! - `(e)`   single-error requests to `/ingest/errors`, closed loop, and
//! - `(s)`   the same error as a Sentry SDK sends it: an envelope of one event to
//!   `/api/{numeric_id}/envelope/` with `X-Sentry-Auth`, closed loop — `(s) ÷ (e)` is what the
//!   Sentry path (envelope parsing and mapping) costs next to observe's own (`BENCH_SENTRY=0`
//!   skips both).
//!
//! Traces: with `BENCH_TRACE_RATIO` set (e.g. `0.01`), observe exports traces
//! (`OTEL_TRACES_SAMPLER=parentbased_traceidratio` at that ratio) to an OTLP/HTTP sink in this
//! process, which answers every export and counts them; the report names the ratio and what
//! the sink received. Run once without and once with it to see what tracing costs.
//!
//! How to read the table: `req/s` counts 202 answers per second and `items/s` the items they
//! accepted, over the measured window only (closed loop: requests completed in the window; open
//! loop: requests scheduled in it). `p50/p95/p99` are latencies of 202 answers in milliseconds.
//! `srv CPU` is the observe process's CPU (utime + stime from `/proc/<pid>/stat` over wall time;
//! 100% = one core), `pg CPU` the same summed over every `postgres` process of the machine and
//! `gen CPU` this load generator's own; `srv RSS` is observe's peak RSS during the phase
//! (`VmHWM` from `/proc/<pid>/status`, reset at the start of each phase through `clear_refs`).
//! `answers` counts every answer of the phase (warm-up included) by status; `error:` entries are
//! requests that got no HTTP answer. Under the table: each target with PASS/MISS, and the rows
//! of the bench project in `events` against the sum of the `accepted` numbers of every 202.

#[path = "common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use anyhow::{anyhow, bail, Context as _};
use futures_util::future::join_all;
use serde_json::json;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use uuid::Uuid;

use common::{
    connect, env_num, env_var, fresh_database, log_path, make_account, mib, pct, post_json,
    read_hwm, thousands, verdict, Account, CpuSample, CpuUse, Server, ServerConfig,
};

const BENCH_DB: &str = "observe_bench";
const TARGET_REQ_PER_S: f64 = 15_000.0;
const TARGET_P99_HALF_MS: f64 = 50.0;
const TARGET_COPY_SHARE: f64 = 0.60;
const TARGET_RSS_BYTES: u64 = 200 * 1024 * 1024;

fn main() -> anyhow::Result<()> {
    actix_rt::System::new().block_on(run())
}

/// The knobs, from the environment.
struct Knobs {
    concurrency: usize,
    threads: usize,
    secs: u64,
    warmup_secs: u64,
    batch: usize,
    copy_rows: usize,
    copy_chunk: usize,
    /// Whether to run the `(e)` and `(s)` phases.
    sentry: bool,
    /// The trace sampling ratio, if traces are on (`BENCH_TRACE_RATIO`).
    trace_ratio: Option<f64>,
}

impl Knobs {
    fn from_env() -> anyhow::Result<Self> {
        let knobs = Knobs {
            concurrency: env_num("BENCH_CONCURRENCY", 256)?,
            threads: env_num("BENCH_THREADS", 2)?,
            secs: env_num("BENCH_SECS", 15)?,
            warmup_secs: env_num("BENCH_WARMUP_SECS", 1)?,
            batch: env_num("BENCH_BATCH", 100)?,
            copy_rows: env_num("BENCH_COPY_ROWS", 500_000)?,
            copy_chunk: env_num("BENCH_COPY_CHUNK", 10_000)?,
            sentry: env_num("BENCH_SENTRY", 1)? != 0,
            trace_ratio: match env_var("BENCH_TRACE_RATIO") {
                None => None,
                Some(v) => Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|r| (0.0..=1.0).contains(r))
                        .ok_or_else(|| anyhow!("BENCH_TRACE_RATIO must be a number in [0, 1]"))?,
                ),
            },
        };
        if knobs.concurrency == 0
            || knobs.threads == 0
            || knobs.secs == 0
            || knobs.batch == 0
            || knobs.copy_chunk == 0
        {
            bail!("BENCH_CONCURRENCY, BENCH_THREADS, BENCH_SECS, BENCH_BATCH and BENCH_COPY_CHUNK must be > 0");
        }
        Ok(knobs)
    }
}

async fn run() -> anyhow::Result<()> {
    let knobs = Knobs::from_env()?;
    let database_url = env_var("DATABASE_URL")
        .context("DATABASE_URL is not set (run `make services`, or source .env)")?;
    let redis_url = env_var("REDIS_URL")
        .context("REDIS_URL is not set (run `make services`, or source .env)")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // A fresh database of our own.
    let bench_url = fresh_database(&database_url, BENCH_DB).await?;

    let mut env = vec![(
        "OBSERVE__DATABASE__POOL_MAX_SIZE".to_string(),
        "16".to_string(),
    )];
    for kind in ["EVENTS", "ERRORS", "API_REQUESTS"] {
        env.push((
            format!("OBSERVE__TIERS__TEAM__{kind}_PER_MONTH"),
            "unlimited".to_string(),
        ));
        env.push((
            format!("OBSERVE__TIERS__TEAM__{kind}_PER_MINUTE"),
            "4000000000".to_string(),
        ));
    }
    // Traces to a sink of ours, or off (whatever OTEL_* this environment holds).
    let sink = match knobs.trace_ratio {
        Some(ratio) => {
            let sink = TraceSink::start()?;
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), sink.url.clone()));
            env.push((
                "OTEL_TRACES_SAMPLER".into(),
                "parentbased_traceidratio".into(),
            ));
            env.push(("OTEL_TRACES_SAMPLER_ARG".into(), ratio.to_string()));
            Some(sink)
        }
        None => {
            env.push(("OTEL_SDK_DISABLED".into(), "true".into()));
            None
        }
    };
    let mut server = Server::start(ServerConfig {
        bench: "ingest",
        db_url: &bench_url,
        redis_url: &redis_url,
        pass_prefix: "OBSERVE__INGEST__",
        env,
    })?;
    let base = format!("http://{}", server.addr);
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    server.wait_ready(&client, &base).await?;

    let db = connect(&bench_url).await?;
    let (project_id, api_key, dsn) = make_project(&client, &base, &db).await?;
    let ingest_url = format!("{base}/ingest/events");

    // The first use of the key (after the tier change). A 404 here: no ingest route yet.
    let probe = client
        .post(&ingest_url)
        .insert_header(("x-api-key", api_key.as_str()))
        .insert_header(("content-type", "application/json"))
        .send_body(single_body(0))
        .await;
    let mut accepted_total = 0_u64;
    match probe {
        Ok(mut res) => {
            let status = res.status().as_u16();
            let body = res.body().await.unwrap_or_default();
            if status != 202 {
                bail!(
                    "POST /ingest/events answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            accepted_total += accepted_of(&body).unwrap_or(0);
        }
        Err(e) => bail!("POST /ingest/events failed: {e}"),
    }

    // Raw COPY first, on the empty table; its rows are deleted afterwards.
    let mut copy_db = connect(&bench_url).await?;
    let copy = copy_rate(&mut copy_db, knobs.copy_rows, knobs.copy_chunk).await?;

    let target = Arc::new(Target::new(&base, api_key, &dsn)?);
    let pid = server.pid;

    let a = run_phase(&knobs, &target, pid, Load::Single, None).await?;
    accepted_total += a.total_items;
    let half_rate = a.req_per_s() / 2.0;
    let half = if half_rate >= 1.0 {
        let r = run_phase(&knobs, &target, pid, Load::Single, Some(half_rate)).await?;
        accepted_total += r.total_items;
        Some(r)
    } else {
        None
    };
    let b = run_phase(&knobs, &target, pid, Load::Batch(knobs.batch), None).await?;
    accepted_total += b.total_items;
    // Raw COPY again, into the table as (b) left it.
    let copy_after = copy_rate(&mut copy_db, knobs.copy_rows, knobs.copy_chunk).await?;

    // One error a request: observe's own endpoint, then a Sentry SDK's envelope.
    let (mut errors, mut sentry) = (None, None);
    if knobs.sentry {
        errors = Some(run_phase(&knobs, &target, pid, Load::SingleError, None).await?);
        sentry = Some(run_phase(&knobs, &target, pid, Load::SentryError, None).await?);
    }
    let errors_accepted: u64 = [&errors, &sentry]
        .into_iter()
        .flatten()
        .map(|p| p.total_items)
        .sum();
    let mut error_rows = count_error_rows(&db, project_id).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while error_rows != errors_accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        error_rows = count_error_rows(&db, project_id).await?;
    }

    // Every 202 is committed (ack = commit); with ack = enqueue the rows may trail a moment.
    let mut rows = count_rows(&db, project_id).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while rows != accepted_total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rows = count_rows(&db, project_id).await?;
    }

    let stopped = server.stop();
    if let Some(sink) = &sink {
        println!(
            "traces: sampled at {} (parentbased_traceidratio); the sink received {} exports, {} bytes",
            knobs.trace_ratio.unwrap_or_default(),
            thousands(sink.exports.load(std::sync::atomic::Ordering::Relaxed) as f64),
            thousands(sink.bytes.load(std::sync::atomic::Ordering::Relaxed) as f64),
        );
    } else {
        println!("traces: off");
    }

    print_report(&Report {
        knobs: &knobs,
        cores,
        a: &a,
        half: half.as_ref(),
        b: &b,
        copy: &copy,
        copy_after: &copy_after,
        rows,
        accepted_total,
        errors: errors.as_ref(),
        sentry: sentry.as_ref(),
        error_rows,
        errors_accepted,
    });
    match stopped {
        Ok(status) if status.success() => {}
        Ok(status) => println!(
            "note: observe exited with {status} (log: {})",
            log_path("ingest").display()
        ),
        Err(e) => println!("note: stopping observe: {e:#}"),
    }
    if rows != accepted_total {
        bail!("PostgreSQL holds {rows} rows of the bench project, but {accepted_total} items were answered 202");
    }
    if error_rows != errors_accepted {
        bail!("PostgreSQL holds {error_rows} errors of the bench project, but {errors_accepted} were answered 202 or 200");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Account, project, key.

/// Registers an account, creates a project, makes its organisation `team` (unlimited here) and
/// creates an API key. Returns the project id, the key and its DSN.
async fn make_project(
    client: &awc::Client,
    base: &str,
    db: &tokio_postgres::Client,
) -> anyhow::Result<(Uuid, String, String)> {
    let Account { token, project_id } = make_account(client, base, db).await?;

    let (status, body) = post_json(
        client,
        &format!("{base}/projects/{project_id}/api-keys"),
        Some(&token),
        json!({"name": "bench"}),
    )
    .await?;
    if status != 201 {
        bail!("POST /projects/{project_id}/api-keys answered {status}: {body}");
    }
    let key = body["key"]
        .as_str()
        .context("create api key: no key")?
        .to_string();
    let dsn = body["dsn"]
        .as_str()
        .context("create api key: no dsn")?
        .to_string();
    Ok((project_id, key, dsn))
}

async fn count_rows(db: &tokio_postgres::Client, project_id: Uuid) -> anyhow::Result<u64> {
    count_in(db, "events", project_id).await
}

async fn count_error_rows(db: &tokio_postgres::Client, project_id: Uuid) -> anyhow::Result<u64> {
    count_in(db, "errors", project_id).await
}

async fn count_in(
    db: &tokio_postgres::Client,
    table: &str,
    project_id: Uuid,
) -> anyhow::Result<u64> {
    let row = db
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE project_id = $1"),
            &[&project_id],
        )
        .await
        .with_context(|| format!("count the bench rows in {table}"))?;
    let n: i64 = row.get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// Raw COPY.

struct CopyResult {
    rows: usize,
    chunk: usize,
    secs: f64,
}

impl CopyResult {
    fn rows_per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.rows as f64 / self.secs
        } else {
            0.0
        }
    }
}

async fn copy_rate(
    db: &mut tokio_postgres::Client,
    rows: usize,
    chunk: usize,
) -> anyhow::Result<CopyResult> {
    let project = Uuid::new_v4();
    let properties = json!({"plan": "pro"});
    let url = Some("https://example.com/a");
    let none: Option<&str> = None;
    let types = [
        Type::UUID,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::JSONB,
    ];
    let started = Instant::now();
    let mut done = 0;
    while done < rows {
        let n = chunk.min(rows - done);
        let tx = db.transaction().await?;
        let sink = tx
            .copy_in(
                "COPY events (project_id, ts, received_at, name, visitor_id, user_id, url, \
                 referrer, properties) FROM STDIN BINARY",
            )
            .await
            .context("start COPY")?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
        let now = chrono::Utc::now();
        for i in 0..n {
            let visitor = format!("v-{}", (done + i) % 256);
            writer
                .as_mut()
                .write(&[
                    &project,
                    &now,
                    &now,
                    &"page_view",
                    &visitor,
                    &none,
                    &url,
                    &none,
                    &properties,
                ])
                .await
                .context("COPY row")?;
        }
        writer.as_mut().finish().await.context("finish COPY")?;
        tx.commit().await.context("commit COPY")?;
        done += n;
    }
    let secs = started.elapsed().as_secs_f64();
    db.execute("DELETE FROM events WHERE project_id = $1", &[&project])
        .await
        .context("delete the COPY rows")?;
    db.batch_execute("VACUUM ANALYZE events")
        .await
        .context("vacuum events")?;
    Ok(CopyResult { rows, chunk, secs })
}

// ---------------------------------------------------------------------------------------------
// Load.

/// Where the phases send: observe's own endpoints with the key, and the Sentry endpoint with
/// the key's DSN.
struct Target {
    events_url: String,
    errors_url: String,
    key: String,
    sentry_url: String,
    sentry_auth: String,
}

impl Target {
    fn new(base: &str, key: String, dsn: &str) -> anyhow::Result<Self> {
        // `{scheme}://{dsn_key}@{host}/{numeric_id}`
        let (_, rest) = dsn.split_once("://").context("DSN without a scheme")?;
        let (dsn_key, host) = rest.split_once('@').context("DSN without a key")?;
        let number = host.rsplit('/').next().context("DSN without a project")?;
        Ok(Self {
            events_url: format!("{base}/ingest/events"),
            errors_url: format!("{base}/ingest/errors"),
            key,
            sentry_url: format!("{base}/api/{number}/envelope/"),
            sentry_auth: format!("Sentry sentry_key={dsn_key}, sentry_version=7"),
        })
    }
}

#[derive(Clone, Copy)]
enum Load {
    Single,
    Batch(usize),
    /// One error to `/ingest/errors`.
    SingleError,
    /// The same error in a Sentry envelope.
    SentryError,
}

fn event(visitor: &str) -> serde_json::Value {
    json!({
        "event": "page_view",
        "visitor_id": visitor,
        "url": "https://example.com/a",
        "properties": {"plan": "pro"},
    })
}

fn single_body(conn: usize) -> Bytes {
    Bytes::from(event(&format!("v-{conn}")).to_string())
}

/// One error as observe's SDKs send it: a few in-app frames, a user, tags.
fn error_body(conn: usize) -> Bytes {
    Bytes::from(
        json!({
            "type": "KeyError",
            "message": format!("sku-{conn} is not in stock"),
            "stack_trace": error_frames(),
            "user_id": format!("u-{conn}"),
            "environment": "production",
            "release": "shop@1.4.2",
            "tags": {"region": "eu-west-1"},
        })
        .to_string(),
    )
}

/// The same error as the Python SDK sends it: an envelope of one event.
fn sentry_body(conn: usize) -> Bytes {
    let event = json!({
        "event_id": Uuid::new_v4().simple().to_string(),
        "platform": "python",
        "level": "error",
        "environment": "production",
        "release": "shop@1.4.2",
        "tags": {"region": "eu-west-1"},
        "user": {"id": format!("u-{conn}")},
        "exception": {"values": [{
            "type": "KeyError",
            "value": format!("sku-{conn} is not in stock"),
            "stacktrace": {"frames": error_frames()},
        }]},
    })
    .to_string();
    let header = json!({"event_id": Uuid::new_v4().simple().to_string()});
    let item = json!({"type": "event", "content_type": "application/json", "length": event.len()});
    Bytes::from(format!("{header}\n{item}\n{event}\n"))
}

fn error_frames() -> serde_json::Value {
    json!([
        {"function": "app", "module": "starlette.routing", "filename": "starlette/routing.py", "lineno": 73, "in_app": false},
        {"function": "create_order", "module": "shop.api", "filename": "shop/api.py", "lineno": 41, "in_app": true},
        {"function": "reserve", "module": "shop.inventory", "filename": "shop/inventory.py", "lineno": 27, "in_app": true},
    ])
}

fn batch_body(conn: usize, n: usize) -> Bytes {
    let items: Vec<_> = (0..n).map(|i| event(&format!("v-{conn}-{i}"))).collect();
    Bytes::from(json!({ "batch": items }).to_string())
}

#[derive(serde::Deserialize)]
struct Accepted {
    accepted: u64,
}

fn accepted_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Accepted>(body)
        .ok()
        .map(|a| a.accepted)
}

/// What one phase's schedule is, shared by the generator threads.
struct Plan {
    load: Load,
    /// Open loop: total requests per second; `None`: closed loop.
    rate: Option<f64>,
    concurrency: usize,
    start: Instant,
    window_start: Instant,
    end: Instant,
}

/// What a generator thread (and then the whole phase) saw.
#[derive(Default)]
struct Tally {
    /// Latencies (µs) of 202 answers in the measured window.
    latencies_us: Vec<u32>,
    /// 202 answers in the window, and the items they accepted.
    window_accepted_reqs: u64,
    window_items: u64,
    /// Items accepted by every 202 of the phase, warm-up included.
    total_items: u64,
    /// Every answer of the phase by status (or `error: …`).
    answers: BTreeMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.window_accepted_reqs += other.window_accepted_reqs;
        self.window_items += other.window_items;
        self.total_items += other.total_items;
        for (k, v) in other.answers {
            *self.answers.entry(k).or_default() += v;
        }
    }
}

struct PhaseResult {
    label: String,
    concurrency: usize,
    secs: f64,
    tally: Tally,
    total_items: u64,
    server_cpu: Option<f64>,
    pg_cpu: Option<f64>,
    gen_cpu: Option<f64>,
    /// Peak RSS (bytes) of observe, and whether it is the phase's own (reset worked).
    server_hwm: Option<(u64, bool)>,
}

impl PhaseResult {
    fn req_per_s(&self) -> f64 {
        self.tally.window_accepted_reqs as f64 / self.secs
    }
    fn items_per_s(&self) -> f64 {
        self.tally.window_items as f64 / self.secs
    }
    fn percentile_ms(&self, p: f64) -> Option<f64> {
        percentile(&self.tally.latencies_us, p).map(|us| f64::from(us) / 1000.0)
    }
}

/// Nearest-rank percentile of a sorted slice.
fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

async fn run_phase(
    knobs: &Knobs,
    target: &Arc<Target>,
    server_pid: u32,
    load: Load,
    rate: Option<f64>,
) -> anyhow::Result<PhaseResult> {
    let label = match (load, rate) {
        (Load::Single, None) => "(a)   single events".to_string(),
        (Load::Single, Some(r)) => format!("(a/2) single, {} req/s", thousands(r)),
        (Load::Batch(n), _) => format!("(b)   {n}-event batches"),
        (Load::SingleError, _) => "(e)   single errors".to_string(),
        (Load::SentryError, _) => "(s)   Sentry envelopes".to_string(),
    };
    eprintln!("bench: running {label} ...");
    let hwm_reset = std::fs::write(format!("/proc/{server_pid}/clear_refs"), "5").is_ok();

    let start = Instant::now() + Duration::from_millis(200);
    let window_start = start + Duration::from_secs(knobs.warmup_secs);
    let end = window_start + Duration::from_secs(knobs.secs);
    let plan = Arc::new(Plan {
        load,
        rate,
        concurrency: knobs.concurrency,
        start,
        window_start,
        end,
    });

    let threads = knobs.threads.min(knobs.concurrency);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        // Connections t, t + threads, t + 2·threads, … belong to thread t.
        let conns: Vec<usize> = (t..knobs.concurrency).step_by(threads).collect();
        let plan = Arc::clone(&plan);
        let target = Arc::clone(target);
        handles.push(
            std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || actix_rt::System::new().block_on(generate(plan, target, conns)))
                .context("spawn a load generator thread")?,
        );
    }

    tokio::time::sleep_until(tokio::time::Instant::from_std(window_start)).await;
    let cpu_before = CpuSample::take(server_pid);
    tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
    let cpu_after = CpuSample::take(server_pid);
    let hwm = read_hwm(server_pid);

    let mut tally = Tally::default();
    for h in handles {
        let part = h
            .join()
            .map_err(|_| anyhow!("a load generator thread panicked"))??;
        tally.merge(part);
    }
    tally.latencies_us.sort_unstable();
    let secs = (end - window_start).as_secs_f64();
    let cpu = CpuUse::between(&cpu_before, &cpu_after);
    let total_items = tally.total_items;
    Ok(PhaseResult {
        label,
        concurrency: knobs.concurrency,
        secs,
        total_items,
        server_cpu: cpu.server,
        gen_cpu: cpu.own,
        pg_cpu: cpu.postgres,
        server_hwm: hwm.map(|h| (h, hwm_reset)),
        tally,
    })
}

/// One generator thread: an actix System, an awc client without a connection limit, and one
/// request loop per connection it owns.
async fn generate(
    plan: Arc<Plan>,
    target: Arc<Target>,
    conns: Vec<usize>,
) -> anyhow::Result<Tally> {
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .timeout(Duration::from_secs(60))
        .finish();
    let tally = RefCell::new(Tally::default());
    join_all(
        conns
            .iter()
            .map(|&conn| request_loop(&client, &plan, &target, conn, &tally)),
    )
    .await;
    Ok(tally.into_inner())
}

async fn request_loop(
    client: &awc::Client,
    plan: &Plan,
    target: &Target,
    conn: usize,
    tally: &RefCell<Tally>,
) {
    let body = match plan.load {
        Load::Single => single_body(conn),
        Load::Batch(n) => batch_body(conn, n),
        Load::SingleError => error_body(conn),
        Load::SentryError => sentry_body(conn),
    };
    // Open loop: this connection sends every `interval`, staggered across connections.
    let schedule = plan.rate.map(|rate| {
        let interval = plan.concurrency as f64 / rate;
        let offset = interval * conn as f64 / plan.concurrency as f64;
        (interval, offset)
    });
    let mut k: u32 = 0;
    loop {
        let scheduled = match schedule {
            None => Instant::now(),
            Some((interval, offset)) => {
                let at = plan.start + Duration::from_secs_f64(offset + interval * f64::from(k));
                if at >= plan.end {
                    break;
                }
                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                at
            }
        };
        if scheduled >= plan.end {
            break;
        }
        k = k.saturating_add(1);

        let outcome = send(client, target, plan.load, body.clone()).await;
        let done = Instant::now();
        let in_window = match schedule {
            None => done >= plan.window_start && done < plan.end,
            Some(_) => scheduled >= plan.window_start,
        };
        let mut t = tally.borrow_mut();
        match outcome {
            Ok((status @ (202 | 200), items)) => {
                *t.answers.entry(status.to_string()).or_default() += 1;
                t.total_items += items;
                if in_window {
                    t.window_accepted_reqs += 1;
                    t.window_items += items;
                    let us = done.duration_since(scheduled).as_micros();
                    t.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
            Ok((status, _)) => *t.answers.entry(status.to_string()).or_default() += 1,
            Err(e) => *t.answers.entry(format!("error: {e}")).or_default() += 1,
        }
    }
}

/// Sends one request; the status and, for a 202 (200 from the Sentry endpoint), the items it
/// accepted.
async fn send(
    client: &awc::Client,
    target: &Target,
    load: Load,
    body: Bytes,
) -> Result<(u16, u64), String> {
    let req = match load {
        Load::SentryError => client
            .post(&target.sentry_url)
            .insert_header(("x-sentry-auth", target.sentry_auth.as_str()))
            .insert_header(("content-type", "application/x-sentry-envelope")),
        Load::SingleError => client
            .post(&target.errors_url)
            .insert_header(("x-api-key", target.key.as_str()))
            .insert_header(("content-type", "application/json")),
        Load::Single | Load::Batch(_) => client
            .post(&target.events_url)
            .insert_header(("x-api-key", target.key.as_str()))
            .insert_header(("content-type", "application/json")),
    };
    let mut res = req
        .send_body(body)
        .await
        .map_err(|e| short(&e.to_string()))?;
    let status = res.status().as_u16();
    let bytes = res.body().await.map_err(|e| short(&e.to_string()))?;
    match status {
        202 => match accepted_of(&bytes) {
            Some(n) => Ok((202, n)),
            None => Err("202 without {\"accepted\": N}".into()),
        },
        // A Sentry envelope of one event, committed.
        200 => Ok((200, 1)),
        _ => Ok((status, 0)),
    }
}

fn short(s: &str) -> String {
    s.chars().take(48).collect()
}

// ---------------------------------------------------------------------------------------------
// The report.

struct Report<'a> {
    knobs: &'a Knobs,
    cores: usize,
    a: &'a PhaseResult,
    half: Option<&'a PhaseResult>,
    b: &'a PhaseResult,
    copy: &'a CopyResult,
    copy_after: &'a CopyResult,
    rows: u64,
    accepted_total: u64,
    errors: Option<&'a PhaseResult>,
    sentry: Option<&'a PhaseResult>,
    error_rows: u64,
    errors_accepted: u64,
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

fn print_report(r: &Report<'_>) {
    let mut out = String::new();
    let ingest_env: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OBSERVE__INGEST__"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "observe ingest benchmark: {} cores; {} connections per phase over {} generator thread(s); \
         {} s per phase after {} s warm-up",
        r.cores,
        r.knobs.concurrency,
        r.knobs.threads.min(r.knobs.concurrency),
        r.knobs.secs,
        r.knobs.warmup_secs
    );
    let _ = writeln!(
        out,
        "ingest settings from the environment: {}",
        if ingest_env.is_empty() {
            "none (config/default.toml)".to_string()
        } else {
            ingest_env.join(" ")
        }
    );
    let rule = "-".repeat(128);
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(
        out,
        "{:<28} {:>5} {:>8} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10}  answers",
        "phase",
        "conns",
        "req/s",
        "items/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "srv CPU",
        "pg CPU",
        "gen CPU",
        "srv RSS"
    );
    let mut peak_rss: Option<u64> = None;
    let mut rss_is_per_phase = true;
    for p in [Some(r.a), r.half, Some(r.b), r.errors, r.sentry]
        .into_iter()
        .flatten()
    {
        let rss = match p.server_hwm {
            Some((bytes, own)) => {
                peak_rss = Some(peak_rss.map_or(bytes, |m| m.max(bytes)));
                rss_is_per_phase &= own;
                format!("{}{}", mib(bytes), if own { "" } else { "*" })
            }
            None => "-".into(),
        };
        let answers: Vec<String> = p
            .tally
            .answers
            .iter()
            .map(|(k, v)| format!("{k} ×{}", thousands(*v as f64)))
            .collect();
        let _ = writeln!(
            out,
            "{:<28} {:>5} {:>8} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10}  {}",
            p.label,
            p.concurrency,
            thousands(p.req_per_s()),
            thousands(p.items_per_s()),
            ms(p.percentile_ms(50.0)),
            ms(p.percentile_ms(95.0)),
            ms(p.percentile_ms(99.0)),
            pct(p.server_cpu),
            pct(p.pg_cpu),
            pct(p.gen_cpu),
            rss,
            answers.join(", ")
        );
    }
    if r.half.is_none() {
        let _ = writeln!(
            out,
            "{:<28} skipped: (a) accepted nothing",
            "(a/2) single, half rate"
        );
    }
    for (label, copy) in [
        ("copy  raw, before (a)", r.copy),
        ("copy  raw, after (b)", r.copy_after),
    ] {
        let _ = writeln!(
            out,
            "{:<28} {:>5} {:>8} {:>9}  raw COPY … FROM STDIN BINARY: {} rows, {} per COPY + commit, {:.2} s",
            label,
            1,
            "-",
            thousands(copy.rows_per_s()),
            thousands(copy.rows as f64),
            thousands(copy.chunk as f64),
            copy.secs
        );
    }
    let copy_rate = (r.copy.rows_per_s() + r.copy_after.rows_per_s()) / 2.0;
    let _ = writeln!(out, "{rule}");

    let share = if copy_rate > 0.0 {
        r.b.items_per_s() / copy_rate
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "{:<44} {:>24}  {:<18} verdict",
        "target", "result", "goal"
    );
    let _ = writeln!(
        out,
        "{:<44} {:>24}  {:<18} {}",
        "(b) items/s ÷ mean raw COPY rows/s",
        format!(
            "{:.1}% ({} / {})",
            share * 100.0,
            thousands(r.b.items_per_s()),
            thousands(copy_rate)
        ),
        format!("≥ {:.0}%", TARGET_COPY_SHARE * 100.0),
        verdict(share >= TARGET_COPY_SHARE)
    );
    let _ = writeln!(
        out,
        "{:<44} {:>24}  {:<18} {}",
        "(a) single-event requests/s",
        thousands(r.a.req_per_s()),
        format!("≥ {}", thousands(TARGET_REQ_PER_S)),
        verdict(r.a.req_per_s() >= TARGET_REQ_PER_S)
    );
    match r.half {
        Some(h) => {
            let p99 = h.percentile_ms(99.0);
            let _ = writeln!(
                out,
                "{:<44} {:>24}  {:<18} {}",
                format!("(a/2) p99 at {} req/s", thousands(h.req_per_s())),
                format!("{} ms", ms(p99)),
                format!("< {TARGET_P99_HALF_MS:.0} ms"),
                verdict(p99.is_some_and(|v| v < TARGET_P99_HALF_MS))
            );
        }
        None => {
            let _ = writeln!(
                out,
                "{:<44} {:>24}  {:<18} MISS",
                "(a/2) p99 at half rate",
                "not run",
                format!("< {TARGET_P99_HALF_MS:.0} ms")
            );
        }
    }
    let _ = writeln!(
        out,
        "{:<44} {:>24}  {:<18} {}",
        "observe peak RSS",
        peak_rss.map_or("-".into(), mib),
        format!("< {}", mib(TARGET_RSS_BYTES)),
        verdict(peak_rss.is_some_and(|b| b < TARGET_RSS_BYTES))
    );
    if let (Some(e), Some(s)) = (r.errors, r.sentry) {
        let ratio = if e.req_per_s() > 0.0 {
            s.req_per_s() / e.req_per_s()
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "{:<44} {:>24}  {:<18} -",
            "(s) Sentry envelopes/s ÷ (e) errors/s",
            format!(
                "{:.0}% ({} / {})",
                ratio * 100.0,
                thousands(s.req_per_s()),
                thousands(e.req_per_s())
            ),
            "for comparison"
        );
        let _ = writeln!(
            out,
            "{:<44} {:>24}  {:<18} {}",
            "rows in errors = errors answered 202 or 200",
            format!(
                "{} = {}",
                thousands(r.error_rows as f64),
                thousands(r.errors_accepted as f64)
            ),
            "equal",
            if r.error_rows == r.errors_accepted {
                "PASS"
            } else {
                "FAIL (not equal)"
            }
        );
    }
    let equal = r.rows == r.accepted_total;
    let _ = writeln!(
        out,
        "{:<44} {:>24}  {:<18} {}",
        "rows in events = items answered 202",
        format!(
            "{} = {}",
            thousands(r.rows as f64),
            thousands(r.accepted_total as f64)
        ),
        "equal",
        if equal { "PASS" } else { "FAIL (not equal)" }
    );
    let _ = writeln!(out, "{rule}");
    if !rss_is_per_phase {
        let _ = writeln!(
            out,
            "* clear_refs could not reset VmHWM: the RSS shown is the peak since observe started"
        );
    }
    let _ = writeln!(
        out,
        "CPU: 100% = one core ({} cores = {}%). observe's log: {}",
        r.cores,
        r.cores * 100,
        log_path("ingest").display()
    );
    print!("{out}");
}

/// An OTLP/HTTP sink on loopback, on a thread of its own: it answers every trace export with
/// an empty success and counts the exports and their bytes.
struct TraceSink {
    url: String,
    exports: Arc<std::sync::atomic::AtomicU64>,
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl TraceSink {
    fn start() -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the trace sink")?;
        let url = format!("http://{}", listener.local_addr()?);
        let exports = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (e, b) = (exports.clone(), bytes.clone());
        std::thread::Builder::new()
            .name("trace-sink".into())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let server = actix_web::HttpServer::new(move || {
                        let (e, b) = (e.clone(), b.clone());
                        actix_web::App::new()
                            .app_data(actix_web::web::PayloadConfig::new(64 * 1024 * 1024))
                            .default_service(actix_web::web::to(move |body: Bytes| {
                                e.fetch_add(1, Ordering::Relaxed);
                                b.fetch_add(body.len() as u64, Ordering::Relaxed);
                                async {
                                    actix_web::HttpResponse::Ok()
                                        .content_type("application/x-protobuf")
                                        .finish()
                                }
                            }))
                    })
                    .workers(1)
                    .disable_signals()
                    .listen(listener);
                    if let Ok(server) = server {
                        let _ = server.run().await;
                    }
                })
            })
            .context("start the trace sink")?;
        Ok(Self {
            url,
            exports,
            bytes,
        })
    }
}
