//! The Prometheus registry observe exposes at `/metrics`.
//!
//! One [`Metrics`] value is made at start and shared (it is cheap to clone); every layer records
//! into it. It is not a process-wide global, so tests that run several servers in one process
//! each see only their own numbers.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use prometheus::core::Collector;
pub use prometheus::Error as PrometheusError;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The name of every metric family ever registered (every [`Metrics`] registers the same):
/// what `/metrics` exports once a family has a value. Dashboards and alert rules are checked
/// against it (`tests/api/operability.rs`), so they never name a series observe does not have.
static NAMES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// The names of every metric family observe registers, exported or not yet.
pub fn registered_names() -> BTreeSet<String> {
    NAMES.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

fn note_names(collector: &dyn Collector) {
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    for desc in collector.desc() {
        names.insert(desc.fq_name.clone());
    }
}

/// Registers a metric, noting its name.
fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: &C,
) -> Result<(), prometheus::Error> {
    note_names(collector);
    registry.register(Box::new(collector.clone()))
}

/// Request duration buckets, in seconds: from sub-millisecond ingest acks to slow queries.
const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub actor_restarts: IntCounterVec,
    /// Messages sent through supervised handles and not yet taken, summed per actor kind.
    pub actor_mailbox_depth: IntGaugeVec,
    /// Mailbox capacity of the running actors, summed per actor kind.
    pub actor_mailbox_capacity: IntGaugeVec,
    pub db_pool: IntGaugeVec,
    /// How long each pool checkout waited for a connection (its count: checkouts).
    pub db_pool_wait: prometheus::Histogram,
    /// Checkouts that gave up after `database.acquire_timeout_secs`.
    pub db_pool_timeouts: prometheus::IntCounter,
    pub dependency_up: IntGaugeVec,
    pub api_key_lookups: IntCounterVec,
    pub ratelimit_degraded: prometheus::IntGauge,
    pub ingest: IngestMetrics,
    pub monitors: MonitorMetrics,
    pub purge: PurgeMetrics,
    pub jobs: JobMetrics,
    pub mail: MailMetrics,
}

/// The Mailer's outbox.
#[derive(Clone)]
pub struct MailMetrics {
    /// Emails in the outbox not yet sent (the whole table: every instance reports the same
    /// backlog), as of the Mailer's last pass.
    pub outbox_pending: prometheus::IntGauge,
    /// Delivery attempts by outcome: `sent`, `retry` (failed for now, due again later),
    /// `failed` (refused for good or out of attempts).
    pub deliveries: IntCounterVec,
}

impl MailMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let outbox_pending = prometheus::IntGauge::new(
            "observe_mail_outbox_pending",
            "Emails in the outbox not yet sent, as of the Mailer's last pass",
        )?;
        let deliveries = IntCounterVec::new(
            Opts::new(
                "observe_mail_deliveries_total",
                "Email delivery attempts by outcome (sent, retry, failed)",
            ),
            &["outcome"],
        )?;
        // Present from the start, so a rate over them is 0 rather than absent.
        for outcome in ["sent", "retry", "failed"] {
            deliveries.with_label_values(&[outcome]);
        }
        register(registry, &outbox_pending)?;
        register(registry, &deliveries)?;
        Ok(Self {
            outbox_pending,
            deliveries,
        })
    }

    /// Counts what one pass or delivery did.
    pub fn delivered(&self, sent: usize, retried: usize, failed: usize) {
        for (outcome, n) in [("sent", sent), ("retry", retried), ("failed", failed)] {
            if n > 0 {
                self.deliveries
                    .with_label_values(&[outcome])
                    .inc_by(n as u64);
            }
        }
    }
}

/// The background jobs on cron ticks.
#[derive(Clone)]
pub struct JobMetrics {
    /// Runs by job and result (`ok`, `failed`).
    pub runs: IntCounterVec,
    /// How long runs took, by job.
    pub seconds: HistogramVec,
    /// When each job last succeeded (Unix seconds).
    pub last_success: prometheus::GaugeVec,
}

impl JobMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let runs = IntCounterVec::new(
            Opts::new(
                "observe_job_runs_total",
                "Runs of background jobs on this instance, by job and result (ok, failed)",
            ),
            &["job", "result"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "observe_job_duration_seconds",
                "Duration of background job runs, by job",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
            ]),
            &["job"],
        )?;
        let last_success = prometheus::GaugeVec::new(
            Opts::new(
                "observe_job_last_success_timestamp_seconds",
                "When each background job last finished successfully on this instance (Unix time)",
            ),
            &["job"],
        )?;
        register(registry, &runs)?;
        register(registry, &seconds)?;
        register(registry, &last_success)?;
        Ok(Self {
            runs,
            seconds,
            last_success,
        })
    }
}

/// The purges of deleted projects' and monitors' raw rows.
#[derive(Clone)]
pub struct PurgeMetrics {
    /// Rows deleted, by table.
    pub rows: IntCounterVec,
    /// Delete statements run (each at most `maintenance.purge_batch_rows` rows).
    pub batches: prometheus::IntCounter,
}

impl PurgeMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let rows = IntCounterVec::new(
            Opts::new(
                "observe_purge_rows_total",
                "Raw rows of deleted projects and monitors purged, by table",
            ),
            &["table"],
        )?;
        let batches = prometheus::IntCounter::new(
            "observe_purge_batches_total",
            "Purge delete statements run (each bounded by maintenance.purge_batch_rows)",
        )?;
        // Series exist from the start (at 0): a dashboard panel shows 0 rather than no data,
        // and the first increment is a step `rate()` sees.
        for table in crate::store::purge::PROJECT_TABLES {
            rows.with_label_values(&[table]);
        }
        register(registry, &rows)?;
        register(registry, &batches)?;
        Ok(Self { rows, batches })
    }
}

/// The uptime monitors' figures.
#[derive(Clone)]
pub struct MonitorMetrics {
    /// Checks run (after their retry), by result: `ok` or the failure kind.
    pub checks: IntCounterVec,
    /// Time a check took, from its start to its verdict (the retry included).
    pub check_seconds: prometheus::Histogram,
    /// Actual start minus scheduled start of each check.
    pub lateness_seconds: prometheus::Histogram,
    /// MonitorActors running on this instance.
    pub running: prometheus::IntGauge,
    /// Open incidents of the monitors this instance runs.
    pub open_incidents: prometheus::IntGauge,
    /// Shards this instance holds a lease on.
    pub shards_owned: prometheus::IntGauge,
    /// Check rows dropped because the CheckWriter could not take or keep them.
    pub rows_dropped: prometheus::IntCounter,
    /// Check slots that passed without a check: while no instance ran the monitor (an outage,
    /// a shard between owners), or when one fell more than a slot behind.
    pub missed: prometheus::IntCounter,
}

impl MonitorMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let checks = IntCounterVec::new(
            Opts::new(
                "observe_monitor_checks_total",
                "Uptime checks run, by result (ok, dns, connect, tls, timeout, status, keyword)",
            ),
            &["result"],
        )?;
        checks.with_label_values(&["ok"]);
        for kind in crate::monitor::FailureKind::ALL {
            checks.with_label_values(&[kind.as_str()]);
        }
        let check_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "observe_monitor_check_duration_seconds",
                "Time an uptime check took, its quick retry included",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )?;
        let lateness_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "observe_monitor_check_lateness_seconds",
                "Actual start minus scheduled start of uptime checks",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
            ]),
        )?;
        let running = prometheus::IntGauge::new(
            "observe_monitors_running",
            "MonitorActors running on this instance",
        )?;
        let open_incidents = prometheus::IntGauge::new(
            "observe_monitor_open_incidents",
            "Open incidents of the monitors this instance runs",
        )?;
        let shards_owned = prometheus::IntGauge::new(
            "observe_monitor_shards_owned",
            "Monitor shards this instance holds a lease on",
        )?;
        let rows_dropped = prometheus::IntCounter::new(
            "observe_monitor_check_rows_dropped_total",
            "Check rows dropped (CheckWriter mailbox or buffer full)",
        )?;
        register(registry, &checks)?;
        register(registry, &check_seconds)?;
        register(registry, &lateness_seconds)?;
        register(registry, &running)?;
        register(registry, &open_incidents)?;
        register(registry, &shards_owned)?;
        register(registry, &rows_dropped)?;
        let missed = prometheus::IntCounter::new(
            "observe_monitor_checks_missed_total",
            "Check slots that passed without a check (no instance ran the monitor, or it fell more than a slot behind)",
        )?;
        register(registry, &missed)?;
        Ok(Self {
            missed,
            checks,
            check_seconds,
            lateness_seconds,
            running,
            open_incidents,
            shards_owned,
            rows_dropped,
        })
    }
}

/// The states of buffered ingest requests: `waiting` for a flush; `flushing` (in a flush
/// now); `retrying` (waiting after failed flushes, PostgreSQL away or slow); `uncertain` (their
/// flush's COMMIT answer was lost: held until PostgreSQL says whether it committed).
pub const BUFFER_STATES: [&str; 4] = ["waiting", "flushing", "retrying", "uncertain"];

/// The ingest path's figures.
#[derive(Clone)]
pub struct IngestMetrics {
    /// Items by endpoint kind, outcome (`accepted`, `rejected`) and reason (`none` when
    /// accepted). A body rejected as a whole (malformed, too large) counts as one item.
    pub items: IntCounterVec,
    pub batch_items: prometheus::Histogram,
    pub flush_seconds: prometheus::Histogram,
    /// Items held by IngestActors, by state ([`BUFFER_STATES`]).
    pub buffer_items: prometheus::IntGaugeVec,
    /// Bytes (request bodies, decompressed) held by IngestActors' buffers, by state.
    pub buffer_bytes: prometheus::IntGaugeVec,
    /// Bytes of ingest bodies in flight in this process (the process-wide budget in use).
    pub inflight_bytes: prometheus::IntGauge,
    /// Flushes whose COMMIT answer was lost, by what they turned out to be.
    pub uncertain_commits: IntCounterVec,
    pub actors: prometheus::IntGauge,
    /// Flush attempts that failed and whose requests went back to be written again.
    pub flush_retries: prometheus::IntCounter,
    /// Items of Sentry envelopes by item type and outcome (`accepted`: became observe items;
    /// `dropped`: sessions, client reports, attachments, non-HTTP transactions, unknown types).
    pub sentry_items: IntCounterVec,
}

impl IngestMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let items = IntCounterVec::new(
            Opts::new(
                "observe_ingest_items_total",
                "Ingested items, by kind, outcome (accepted, rejected) and reason",
            ),
            &["kind", "outcome", "reason"],
        )?;
        let batch_items = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "observe_ingest_flush_items",
                "Items written per flush (one COPY and one commit)",
            )
            .buckets(vec![
                1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0,
            ]),
        )?;
        let flush_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "observe_ingest_flush_duration_seconds",
                "Time from a flush's start to its commit",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let buffer_items = prometheus::IntGaugeVec::new(
            Opts::new(
                "observe_ingest_buffer_items",
                "Items buffered in IngestActors, by state (waiting, flushing, retrying, uncertain)",
            ),
            &["state"],
        )?;
        let buffer_bytes = prometheus::IntGaugeVec::new(
            Opts::new(
                "observe_ingest_buffer_bytes",
                "Bytes (decompressed request bodies) buffered in IngestActors, by state",
            ),
            &["state"],
        )?;
        // Every state is exported from the start (at 0), so a query for one always has a series.
        for state in BUFFER_STATES {
            buffer_items.with_label_values(&[state]);
            buffer_bytes.with_label_values(&[state]);
        }
        let inflight_bytes = prometheus::IntGauge::new(
            "observe_ingest_inflight_bytes",
            "Bytes of ingest request bodies held in this process, read or buffered (bounded by ingest.max_inflight_bytes)",
        )?;
        let uncertain_commits = IntCounterVec::new(
            Opts::new(
                "observe_ingest_uncertain_commits_total",
                "Flushes whose COMMIT answer was lost, by outcome (committed, aborted, unknown)",
            ),
            &["outcome"],
        )?;
        for outcome in ["committed", "aborted", "unknown"] {
            uncertain_commits.with_label_values(&[outcome]);
        }
        let actors = prometheus::IntGauge::new(
            "observe_ingest_actors",
            "IngestActors running on this instance (one per active project)",
        )?;
        let sentry_items = IntCounterVec::new(
            Opts::new(
                "observe_sentry_items_total",
                "Items of Sentry envelopes, by item type and outcome (accepted, dropped)",
            ),
            &["type", "outcome"],
        )?;
        register(registry, &sentry_items)?;
        let flush_retries = prometheus::IntCounter::new(
            "observe_ingest_flush_retries_total",
            "Ingest flush attempts that failed (PostgreSQL away or slow) and were retried",
        )?;
        register(registry, &flush_retries)?;
        register(registry, &items)?;
        register(registry, &batch_items)?;
        register(registry, &flush_seconds)?;
        register(registry, &buffer_items)?;
        register(registry, &buffer_bytes)?;
        register(registry, &inflight_bytes)?;
        register(registry, &uncertain_commits)?;
        register(registry, &actors)?;
        Ok(Self {
            items,
            batch_items,
            flush_seconds,
            buffer_items,
            buffer_bytes,
            inflight_bytes,
            uncertain_commits,
            actors,
            sentry_items,
            flush_retries,
        })
    }

    pub fn accepted(&self, kind: &str, n: usize) {
        self.items
            .with_label_values(&[kind, "accepted", "none"])
            .inc_by(n as u64);
    }

    pub fn rejected(&self, kind: &str, reason: &str, n: usize) {
        self.items
            .with_label_values(&[kind, "rejected", reason])
            .inc_by(n as u64);
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "observe_http_requests_total",
                "HTTP requests served, by route template, method and status class",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "observe_http_request_duration_seconds",
                "HTTP request duration, by route template, method and status class",
            )
            .buckets(HTTP_BUCKETS.to_vec()),
            &["route", "method", "status"],
        )?;
        let actor_restarts = IntCounterVec::new(
            Opts::new(
                "observe_actor_restarts_total",
                "Restarts of supervised actors after a failure, by actor kind",
            ),
            &["actor"],
        )?;
        let actor_mailbox_depth = IntGaugeVec::new(
            Opts::new(
                "observe_actor_mailbox_depth",
                "Messages waiting in supervised actors' mailboxes (those sent through their handles), summed per actor kind",
            ),
            &["actor"],
        )?;
        let actor_mailbox_capacity = IntGaugeVec::new(
            Opts::new(
                "observe_actor_mailbox_capacity",
                "Mailbox capacity of the running supervised actors, summed per actor kind",
            ),
            &["actor"],
        )?;
        register(&registry, &actor_mailbox_depth)?;
        register(&registry, &actor_mailbox_capacity)?;
        let db_pool = IntGaugeVec::new(
            Opts::new(
                "observe_db_pool_connections",
                "PostgreSQL pool connections: state=size (open), available (idle), max, and waiting (requests waiting for one)",
            ),
            &["state"],
        )?;
        let db_pool_wait = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "observe_db_pool_wait_seconds",
                "Time a PostgreSQL pool checkout waited for a connection (opening one included)",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let db_pool_timeouts = prometheus::IntCounter::new(
            "observe_db_pool_timeouts_total",
            "PostgreSQL pool checkouts that gave up waiting (database.acquire_timeout_secs)",
        )?;
        register(&registry, &db_pool_wait)?;
        register(&registry, &db_pool_timeouts)?;
        let dependency_up = IntGaugeVec::new(
            Opts::new(
                "observe_dependency_up",
                "1 when the last readiness check of a dependency succeeded, else 0",
            ),
            &["dependency"],
        )?;
        let api_key_lookups = IntCounterVec::new(
            Opts::new(
                "observe_api_key_lookups_total",
                "API key authentications, by where the answer came from: cache, database, shared (a query another request ran), or refused (the client's lookup budget was spent)",
            ),
            &["source"],
        )?;
        register(&registry, &api_key_lookups)?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "observe_build_info",
                "1, labelled with the version and the commit observe was built from",
            ),
            &["version", "commit"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("OBSERVE_COMMIT")])
            .set(1);
        register(&registry, &build_info)?;
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, …
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            note_names(&process);
            registry.register(Box::new(process))?;
        }
        let ratelimit_degraded = prometheus::IntGauge::new(
            "observe_ratelimit_degraded",
            "1 while Redis is unavailable and rate limits are enforced per instance",
        )?;
        register(&registry, &ratelimit_degraded)?;
        register(&registry, &http_requests)?;
        register(&registry, &http_duration)?;
        register(&registry, &actor_restarts)?;
        register(&registry, &db_pool)?;
        register(&registry, &dependency_up)?;
        let ingest = IngestMetrics::new(&registry)?;
        let monitors = MonitorMetrics::new(&registry)?;
        let purge = PurgeMetrics::new(&registry)?;
        let jobs = JobMetrics::new(&registry)?;
        let mail = MailMetrics::new(&registry)?;
        Ok(Self {
            purge,
            jobs,
            mail,
            ingest,
            monitors,
            registry,
            http_requests,
            http_duration,
            actor_restarts,
            actor_mailbox_depth,
            actor_mailbox_capacity,
            db_pool,
            db_pool_wait,
            db_pool_timeouts,
            dependency_up,
            api_key_lookups,
            ratelimit_degraded,
        })
    }

    /// Records one served request. `route` must be a template (`/projects/{id}`), never a raw
    /// path, so the label set stays bounded.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let class = status_class(status);
        self.http_requests
            .with_label_values(&[route, method, class])
            .inc();
        self.http_duration
            .with_label_values(&[route, method, class])
            .observe(seconds);
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// `2xx`, `4xx`, ...: the status label, so each code does not get its own series.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_request_and_restart_series() {
        let m = Metrics::new().unwrap();
        m.observe_request("/projects/{id}", "GET", 404, 0.002);
        m.actor_restarts.with_label_values(&["IngestActor"]).inc();
        let text = m.render().unwrap();
        assert!(text.contains(
            r#"observe_http_requests_total{method="GET",route="/projects/{id}",status="4xx"} 1"#
        ));
        assert!(text.contains(r#"observe_actor_restarts_total{actor="IngestActor"} 1"#));
        assert!(text.contains("observe_http_request_duration_seconds_bucket"));
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(302), "3xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(101), "1xx");
    }
}
