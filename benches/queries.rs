//! `make bench-queries`: how fast the dashboard's read routes answer over a large project, and
//! what the rollups buy against computing the same answers from the raw rows (a benchmark, not a
//! test: it prints numbers, and fails only when setup fails).
//!
//! What it does: drops and re-creates the database `observe_bench_queries`; starts the release
//! `observe serve` (background jobs off: the bench runs the Aggregator's work itself, so it can
//! time it); registers an account and a project on the `team` tier (a year's retention); creates
//! the daily partitions of the last 91 days; loads with `COPY … BINARY`, spread evenly over the
//! last 90 days, `BENCH_EVENTS` events (10,000,000; 200,000 visitors, a third of them
//! identified, 60% page views over 200 pages and 20 referrers), `BENCH_REQUESTS` API requests
//! (1,000,000 over 40 routes, long-tailed durations, 3% 4xx and 1% 5xx), `BENCH_ERRORS` errors
//! (100,000 in 500 groups) and `BENCH_METRICS` metric points (1,000,000 over 10 series, LLM
//! usage included); marks every hour dirty as the flushes would have; runs the Aggregator over
//! it all (timed); then loads `BENCH_TICK_EVENTS` (100,000) more events into one closed hour and
//! times the tick that rolls that hour up.
//!
//! Then, for every read route and the ranges 24 h, 30 d and 90 d, it sends `BENCH_READS` (30)
//! requests one after the other (after 3 unmeasured) and prints the p50 and p95 latency, the
//! answer's size and, measured in the same run, the time PostgreSQL takes to compute the same
//! answer straight from the raw rows (`raw`, 3 runs, median): the ratio is what the rollups buy.
//! Routes not served yet by this build are listed as such. observe's peak RSS over the reads is
//! `VmHWM`, reset before them.
//!
//! Targets (issue 11): every read p95 < 30 ms for 30 days and < 60 ms for 90 days; the tick over
//! one hour of 100,000 events < 2 s; peak RSS < 300 MiB.

#[path = "common/mod.rs"]
mod common;

use std::pin::pin;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use observe_core::store::ingest::hour_of;
use observe_core::store::rollups::{aggregate, Kind};
use serde_json::json;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, ToSql, Type};
use uuid::Uuid;

use common::{
    connect, env_num, env_var, fresh_database, make_account, mib, read_hwm, thousands, verdict,
    Server, ServerConfig,
};

const DAYS: i64 = 90;
const CHUNK: usize = 100_000;

fn main() -> anyhow::Result<()> {
    actix_rt::System::new().block_on(run())
}

/// xorshift64*: deterministic data, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An instant of the last 90 days (closed hours only), evenly spread.
fn spread(rng: &mut Rng, now: DateTime<Utc>) -> DateTime<Utc> {
    let span = DAYS * 86_400 - 3_600;
    hour_of(now) - chrono::Duration::seconds(3_600 + rng.below(span as u64) as i64)
}

async fn copy_rows(
    db: &tokio_postgres::Client,
    sql: &str,
    types: &[Type],
    total: usize,
    mut row: impl FnMut(&mut Vec<Box<dyn ToSql + Sync + Send>>),
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut done = 0;
    while done < total {
        let n = CHUNK.min(total - done);
        let sink = db.copy_in(sql).await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, types));
        let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(types.len());
        for _ in 0..n {
            values.clear();
            row(&mut values);
            let refs: Vec<&(dyn ToSql + Sync)> = values
                .iter()
                .map(|v| v.as_ref() as &(dyn ToSql + Sync))
                .collect();
            writer.as_mut().write(&refs).await?;
        }
        writer.finish().await?;
        done += n;
    }
    Ok(started.elapsed())
}

struct Read {
    route: &'static str,
    /// A cursor-paginated list: later pages are timed too.
    list: bool,
    /// The same answer from raw rows, for the range `[$2, $3)` of project `$1`.
    raw: &'static [&'static str],
}

const READS: &[Read] = &[
    Read {
        route: "/stats",
        list: false,
        raw: &[
            "SELECT count(*), count(*) FILTER (WHERE name = '$pageview'),
                    count(DISTINCT coalesce('u:' || coalesce(e.user_id, i.user_id), 'v:' || e.visitor_id)),
                    count(DISTINCT coalesce(e.user_id, i.user_id))
             FROM events e LEFT JOIN identities i ON i.project_id = e.project_id AND i.visitor_id = e.visitor_id
             WHERE e.project_id = $1 AND e.ts >= $2 AND e.ts < $3",
            "SELECT date_trunc('day', ts, 'UTC'), count(*), count(DISTINCT visitor_id)
             FROM events WHERE project_id = $1 AND ts >= $2 AND ts < $3 GROUP BY 1",
            "SELECT url, count(*) FROM events WHERE project_id = $1 AND ts >= $2 AND ts < $3
             AND name = '$pageview' GROUP BY url ORDER BY 2 DESC LIMIT 10",
        ],
    },
    Read {
        route: "/api-stats",
        list: false,
        raw: &["SELECT method, route, count(*), avg(duration_ms),
                       percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms)
                FROM requests WHERE project_id = $1 AND ts >= $2 AND ts < $3 GROUP BY 1, 2"],
    },
    Read {
        route: "/events",
        list: true,
        raw: &[],
    },
    Read {
        route: "/errors",
        list: true,
        raw: &[],
    },
    Read {
        route: "/api-requests",
        list: true,
        raw: &[],
    },
    Read {
        route: "/metrics/query?name=queue.depth&agg=avg",
        list: false,
        raw: &["SELECT date_trunc('day', ts, 'UTC'), sum(value) / count(*) FROM metrics
                WHERE project_id = $1 AND name = 'queue.depth' AND ts >= $2 AND ts < $3
                GROUP BY 1"],
    },
    Read {
        route: "/metrics/export?format=csv&name=revenue",
        list: false,
        raw: &["SELECT labels, date_trunc('day', ts, 'UTC'), count(*), sum(value), min(value),
                       max(value)
                FROM metrics WHERE project_id = $1 AND name = 'revenue' AND ts >= $2 AND ts < $3
                GROUP BY 1, 2"],
    },
    Read {
        route: "/costs",
        list: false,
        raw: &["SELECT labels->>'model', date_trunc('day', ts, 'UTC'), name, sum(value)
                FROM metrics WHERE project_id = $1 AND name LIKE 'llm.%' AND ts >= $2 AND ts < $3
                GROUP BY 1, 2, 3"],
    },
];

/// One GET with the bearer token: milliseconds to the whole body, status, body.
async fn get_timed(
    client: &awc::Client,
    url: &str,
    token: &str,
) -> anyhow::Result<(f64, u16, Vec<u8>)> {
    let started = Instant::now();
    let mut res = client
        .get(url)
        .insert_header(("Authorization", format!("Bearer {token}")))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    let body = res
        .body()
        .limit(64 * 1024 * 1024)
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    Ok((
        started.elapsed().as_secs_f64() * 1000.0,
        res.status().as_u16(),
        body.to_vec(),
    ))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

async fn run() -> anyhow::Result<()> {
    let events: usize = env_num("BENCH_EVENTS", 10_000_000)?;
    let requests: usize = env_num("BENCH_REQUESTS", 1_000_000)?;
    let errors: usize = env_num("BENCH_ERRORS", 100_000)?;
    let metrics: usize = env_num("BENCH_METRICS", 1_000_000)?;
    let tick_events: usize = env_num("BENCH_TICK_EVENTS", 100_000)?;
    let reads: usize = env_num("BENCH_READS", 30)?;
    let database_url = env_var("DATABASE_URL").context("DATABASE_URL (make services)")?;
    let redis_url = env_var("REDIS_URL").context("REDIS_URL (make services)")?;

    let db_url = fresh_database(&database_url, "observe_bench_queries").await?;
    let mut server = Server::start(ServerConfig {
        bench: "queries",
        db_url: &db_url,
        redis_url: &redis_url,
        pass_prefix: "OBSERVE__",
        env: vec![
            ("OBSERVE__JOBS__ENABLED".into(), "false".into()),
            ("OBSERVE__TIERS__TEAM__RETENTION_DAYS".into(), "365".into()),
        ],
    })?;
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(120))
        .finish();
    let base = format!("http://{}", server.addr);
    server.wait_ready(&client, &base).await?;
    let db = connect(&db_url).await?;
    let account = make_account(&client, &base, &db).await?;
    let project = account.project_id;
    let now = Utc::now();

    eprintln!(
        "bench: creating partitions of the last {} days ...",
        DAYS + 1
    );
    for table in ["events", "errors", "requests", "metrics"] {
        for d in 0..=DAYS {
            let day = (now - chrono::Duration::days(d)).date_naive();
            let next = day + chrono::Days::new(1);
            let name = observe_core::store::partitions::partition_name(table, day);
            db.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS \"{name}\" PARTITION OF \"{table}\" \
                 FOR VALUES FROM ('{day}T00:00:00Z') TO ('{next}T00:00:00Z')"
            ))
            .await?;
        }
    }

    let mut rng = Rng(0x0b5e_57e5_1234_5678);
    eprintln!("bench: loading {} events ...", thousands(events as f64));
    let pages: Vec<String> = (0..200)
        .map(|i| format!("https://shop.example/p/{i}"))
        .collect();
    let referrers: Vec<String> = (0..20)
        .map(|i| format!("https://ref{i}.example/"))
        .collect();
    let names = ["signup", "add_to_cart", "checkout", "search", "share"];
    let events_sql = "COPY events (project_id, id, ts, received_at, name, visitor_id, user_id, url, referrer, properties) FROM STDIN BINARY";
    let events_types = [
        Type::UUID,
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
    let event_row = |rng: &mut Rng,
                     at: DateTime<Utc>,
                     visitors: u64,
                     v: &mut Vec<Box<dyn ToSql + Sync + Send>>| {
        let visitor = rng.below(visitors);
        let page = rng.unit() < 0.6;
        v.push(Box::new(project));
        v.push(Box::new(Uuid::now_v7()));
        v.push(Box::new(at));
        v.push(Box::new(at));
        v.push(Box::new(if page {
            "$pageview".to_string()
        } else {
            names[rng.below(5) as usize].to_string()
        }));
        v.push(Box::new(format!("visitor-{visitor}")));
        v.push(Box::new(
            (visitor % 3 == 0).then(|| format!("user-{}", visitor / 3)),
        ));
        v.push(Box::new(
            page.then(|| pages[rng.below(200) as usize].clone()),
        ));
        v.push(Box::new(
            (page && rng.unit() < 0.3).then(|| referrers[rng.below(20) as usize].clone()),
        ));
        v.push(Box::new(Json(json!({"plan": "pro"}))));
    };
    let took = copy_rows(&db, events_sql, &events_types, events, |v| {
        let at = spread(&mut rng, now);
        event_row(&mut rng, at, 200_000, v)
    })
    .await?;
    eprintln!("bench: events loaded in {:.1} s", took.as_secs_f64());
    // Identities: a third of the visitors are users (as their events say).
    db.execute(
        "INSERT INTO identities (project_id, visitor_id, user_id, first_seen, last_seen)
         SELECT $1, 'visitor-' || v, 'user-' || (v / 3), now(), now()
         FROM generate_series(0, 199999, 3) v",
        &[&project],
    )
    .await?;

    eprintln!(
        "bench: loading {} API requests ...",
        thousands(requests as f64)
    );
    let took = copy_rows(
        &db,
        "COPY requests (project_id, id, ts, received_at, method, route, status_code, duration_ms) FROM STDIN BINARY",
        &[Type::UUID, Type::UUID, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ, Type::TEXT, Type::TEXT, Type::INT4, Type::FLOAT8],
        requests,
        |v| {
            let at = spread(&mut rng, now);
            let route = rng.below(40);
            let roll = rng.unit();
            v.push(Box::new(project));
            v.push(Box::new(Uuid::now_v7()));
            v.push(Box::new(at));
            v.push(Box::new(at));
            v.push(Box::new(if route % 4 == 0 { "POST" } else { "GET" }.to_string()));
            v.push(Box::new(format!("/api/v1/resource{route}/{{id}}")));
            v.push(Box::new(if roll < 0.01 { 500i32 } else if roll < 0.04 { 404 } else { 200 }));
            v.push(Box::new(10f64.powf(rng.unit() * 3.5)));
        },
    )
    .await?;
    eprintln!("bench: requests loaded in {:.1} s", took.as_secs_f64());

    eprintln!("bench: loading {} errors ...", thousands(errors as f64));
    copy_rows(
        &db,
        "COPY errors (project_id, ts, received_at, fingerprint, type, message, level, tags) FROM STDIN BINARY",
        &[Type::UUID, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::JSONB],
        errors,
        |v| {
            let at = spread(&mut rng, now);
            let group = rng.below(500);
            v.push(Box::new(project));
            v.push(Box::new(at));
            v.push(Box::new(at));
            v.push(Box::new(format!("fp-{group}")));
            v.push(Box::new(format!("Error{}", group % 20)));
            v.push(Box::new(format!("something failed in step {group}")));
            v.push(Box::new("error".to_string()));
            v.push(Box::new(Json(json!({"env": "prod"}))));
        },
    )
    .await?;
    db.execute(
        "INSERT INTO error_groups (project_id, fingerprint, type, message, level, first_seen,
                                   last_seen, occurrences, last_occurrence)
         SELECT $1, fingerprint, min(type), min(message), 'error', min(ts), max(ts), count(*), '{}'
         FROM errors WHERE project_id = $1 GROUP BY fingerprint",
        &[&project],
    )
    .await?;

    eprintln!(
        "bench: loading {} metric points ...",
        thousands(metrics as f64)
    );
    copy_rows(
        &db,
        "COPY metrics (project_id, ts, received_at, name, kind, value, labels) FROM STDIN BINARY",
        &[
            Type::UUID,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::TEXT,
            Type::FLOAT8,
            Type::JSONB,
        ],
        metrics,
        |v| {
            let at = spread(&mut rng, now);
            let series = rng.below(10);
            let (name, kind, labels) = match series {
                0..=3 => (
                    "queue.depth",
                    "gauge",
                    json!({"queue": format!("q{series}")}),
                ),
                4..=6 => (
                    "revenue",
                    "counter",
                    json!({"plan": format!("plan{series}")}),
                ),
                7 => ("llm.cost_usd", "counter", json!({"model": "gpt-4o"})),
                8 => ("llm.tokens.input", "counter", json!({"model": "gpt-4o"})),
                _ => ("render.seconds", "histogram", json!({"page": "home"})),
            };
            v.push(Box::new(project));
            v.push(Box::new(at));
            v.push(Box::new(at));
            v.push(Box::new(name.to_string()));
            v.push(Box::new(kind.to_string()));
            v.push(Box::new(rng.unit() * 100.0));
            v.push(Box::new(Json(labels)));
        },
    )
    .await?;

    // Every hour that holds rows is dirty, as the flushes would have marked it.
    db.execute(
        "INSERT INTO rollup_dirty (kind, project_id, hour)
         SELECT k, $1, h FROM unnest(ARRAY['events', 'requests', 'metrics']) k,
              generate_series(date_trunc('hour', $2::timestamptz, 'UTC') - interval '90 days',
                              date_trunc('hour', $2::timestamptz, 'UTC') - interval '1 hour',
                              interval '1 hour') h
         ON CONFLICT DO NOTHING",
        &[&project, &now],
    )
    .await?;
    db.batch_execute("ANALYZE").await?;

    let mut settings = observe_core::config::Settings::load_from(|k| {
        (k == "DATABASE_URL")
            .then(|| db_url.clone())
            .or_else(|| env_var(k))
    })
    .map_err(|e| anyhow::anyhow!("settings: {e:?}"))?;
    settings.database.statement_timeout_ms = 0;
    let pool = observe_core::db::pool(&settings.database).map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!("bench: running the Aggregator over every hour ...");
    let started = Instant::now();
    let rows = aggregate(
        &pool,
        &[Kind::Events, Kind::Metrics, Kind::Requests],
        Utc::now(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("aggregate: {e}"))?;
    let aggregate_all = started.elapsed();

    // One closed hour with `tick_events` more events, then the tick that rolls it up.
    let tick_hour = hour_of(now) - chrono::Duration::hours(2);
    copy_rows(&db, events_sql, &events_types, tick_events, |v| {
        let at = tick_hour + chrono::Duration::milliseconds(rng.below(3_600_000) as i64);
        event_row(&mut rng, at, 50_000, v)
    })
    .await?;
    db.execute(
        "INSERT INTO rollup_dirty (kind, project_id, hour) VALUES ('events', $1, $2)",
        &[&project, &tick_hour],
    )
    .await?;
    let started = Instant::now();
    aggregate(&pool, &[Kind::Events], Utc::now())
        .await
        .map_err(|e| anyhow::anyhow!("tick: {e}"))?;
    let tick = started.elapsed();

    // Reads.
    let _ = std::fs::write(format!("/proc/{}/clear_refs", server.pid), "5");
    let mut lines = Vec::new();
    let mut misses = Vec::new();
    for read in READS {
        for (label, from, days) in [("24h", "24h", 1), ("30d", "30d", 30), ("90d", "90d", 90)] {
            let sep = if read.route.contains('?') { '&' } else { '?' };
            let first = format!("{base}/projects/{project}{}{sep}from={from}", read.route);
            // Lists are read a page further too: the third page, by the cursors of the first two.
            let mut pages = vec![(read.route.to_string(), first.clone(), true)];
            if read.list {
                let mut url = first.clone();
                for _ in 0..2 {
                    let (_, _, body) = get_timed(&client, &url, &account.token).await?;
                    let page: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    match page["next_cursor"].as_str() {
                        Some(cursor) => url = format!("{first}&cursor={cursor}"),
                        None => break,
                    }
                }
                if url != first {
                    pages.push((format!("{} (page 3)", read.route), url, false));
                }
            }
            for (shown, url, is_first) in pages {
                let mut latencies = Vec::with_capacity(reads);
                let (mut size, mut status) = (0usize, 0u16);
                for i in 0..reads + 3 {
                    let (took, code, body) = get_timed(&client, &url, &account.token).await?;
                    status = code;
                    size = body.len();
                    if i >= 3 {
                        latencies.push(took);
                    }
                }
                if status == 404 {
                    lines.push(format!("{shown:<48} {label:>4}   not served by this build"));
                    break;
                }
                latencies.sort_by(f64::total_cmp);
                let (p50, p95) = (percentile(&latencies, 0.5), percentile(&latencies, 0.95));
                let mut raw = String::from("-");
                if is_first && !read.raw.is_empty() {
                    let to = Utc::now();
                    let from_at = to - chrono::Duration::days(days);
                    let mut runs = Vec::new();
                    for _ in 0..3 {
                        let started = Instant::now();
                        for sql in read.raw {
                            db.query(*sql, &[&project, &from_at, &to]).await?;
                        }
                        runs.push(started.elapsed().as_secs_f64() * 1000.0);
                    }
                    runs.sort_by(f64::total_cmp);
                    raw = format!("{:.0} ms ({:.0}×)", runs[1], runs[1] / p50.max(0.001));
                }
                let target = match label {
                    "30d" => Some(30.0),
                    "90d" => Some(60.0),
                    _ => None,
                };
                if let Some(t) = target {
                    if p95 >= t {
                        misses.push(format!("{shown} {label}: p95 {p95:.1} ms ≥ {t} ms"));
                    }
                }
                lines.push(format!(
                    "{shown:<48} {label:>4} {status:>4} {p50:>8.1} {p95:>8.1} {:>10} {raw:>18}",
                    format!("{} B", thousands(size as f64)),
                ));
            }
        }
    }
    let rss = read_hwm(server.pid).unwrap_or(0);
    server.stop()?;

    println!();
    println!(
        "observe read benchmark: one project, {} events, {} API requests, {} errors, {} metric points over {DAYS} days",
        thousands(events as f64),
        thousands(requests as f64),
        thousands(errors as f64),
        thousands(metrics as f64)
    );
    println!(
        "Aggregator over all {} hours: {:.1} s, {} rollup rows; tick over one hour of {} events: {:.2} s",
        DAYS * 24,
        aggregate_all.as_secs_f64(),
        thousands(rows as f64),
        thousands(tick_events as f64),
        tick.as_secs_f64()
    );
    println!("{}", "-".repeat(104));
    println!(
        "{:<48} {:>4} {:>4} {:>8} {:>8} {:>10} {:>18}",
        "route", "from", "code", "p50 ms", "p95 ms", "answer", "raw (÷ p50)"
    );
    for line in &lines {
        println!("{line}");
    }
    println!("{}", "-".repeat(104));
    println!(
        "reads p95 < 30 ms (30 d) and < 60 ms (90 d)      {}",
        if misses.is_empty() {
            verdict(true).to_string()
        } else {
            format!("{}: {}", verdict(false), misses.join("; "))
        }
    );
    println!(
        "tick over one hour of {} events < 2 s        {:.2} s {}",
        thousands(tick_events as f64),
        tick.as_secs_f64(),
        verdict(tick < Duration::from_secs(2))
    );
    println!(
        "observe peak RSS during the reads < 300 MiB      {} {}",
        mib(rss),
        verdict(rss < 300 * 1024 * 1024)
    );
    Ok(())
}
