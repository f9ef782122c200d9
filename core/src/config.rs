//! Typed settings, read once at start.
//!
//! Sources, later ones winning: the defaults in `config/default.toml` (compiled into the binary,
//! so it runs from any directory), the file named by `OBSERVE_CONFIG` if set, the SPEC §9
//! environment names (`DATABASE_URL`, `SECRET_KEY`, ...), a few short `OBSERVE_*` names, and
//! finally any `OBSERVE__SECTION__KEY` variable. [`Settings::validate`] then checks the whole
//! thing and reports every problem at once, each with how to fix it.

use std::fmt;
use std::net::SocketAddr;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use rand::distr::{Alphanumeric, SampleString};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

const DEFAULTS: &str = include_str!("../../config/default.toml");

/// Shortest `SECRET_KEY` accepted: HS256 wants at least 256 bits of key.
pub const MIN_SECRET_KEY_LEN: usize = 32;

/// Environment names whose values are taken verbatim as strings (a numeric-looking secret stays
/// a string), mapped to their place in the settings tree.
const STRING_VARS: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("REDIS_URL", "redis.url"),
    ("SECRET_KEY", "auth.secret_key"),
    ("GITHUB_CLIENT_ID", "github.client_id"),
    ("GITHUB_CLIENT_SECRET", "github.client_secret"),
    ("GITHUB_REDIRECT_URI", "github.redirect_uri"),
    ("FRONTEND_URL", "frontend_url"),
    ("RESEND_API_KEY", "resend.api_key"),
    ("RESEND_FROM_EMAIL", "resend.from_email"),
    ("SQUAD_SECRET_KEY", "squad.secret_key"),
    ("SQUAD_PUBLIC_KEY", "squad.public_key"),
    ("SQUAD_BASE_URL", "squad.base_url"),
    ("ADMIN_TOKEN", "admin.token"),
    ("OBSERVE_ENV", "server.mode"),
    ("OBSERVE_BIND", "server.bind"),
    ("OBSERVE_PUBLIC_URL", "server.public_url"),
    ("OBSERVE_LOG_FORMAT", "log.format"),
    ("OBSERVE_LOG_LEVEL", "log.level"),
];

/// Environment names whose values are parsed (numbers), mapped to their place in the tree.
const PARSED_VARS: &[(&str, &str)] = &[
    (
        "ACCESS_TOKEN_EXPIRE_MINUTES",
        "auth.access_token_expire_minutes",
    ),
    (
        "REFRESH_TOKEN_EXPIRE_DAYS",
        "auth.refresh_token_expire_days",
    ),
    ("PRO_AMOUNT", "billing.pro_amount"),
    ("TEAM_AMOUNT", "billing.team_amount"),
    (
        "OBSERVE_SHUTDOWN_TIMEOUT_SECS",
        "server.shutdown_timeout_secs",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(String),
    #[error("configuration is invalid:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub frontend_url: String,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
    pub admin: AdminSettings,
    pub api_keys: ApiKeySettings,
    pub mail: MailSettings,
    pub github: GithubSettings,
    pub resend: ResendSettings,
    pub squad: SquadSettings,
    pub billing: BillingSettings,
    pub ingest: IngestSettings,
    pub monitors: MonitorSettings,
    pub maintenance: MaintenanceSettings,
    pub jobs: JobSettings,
    pub tiers: Tiers,
    pub retention: RetentionSettings,
}

/// Background jobs on cron ticks (see `[jobs]` in config/default.toml). Schedules are 6-field
/// cron expressions (seconds first), in UTC.
#[derive(Debug, Clone, Deserialize)]
pub struct JobSettings {
    /// Whether this instance runs the background jobs at all (tests turn them off to keep
    /// their data to themselves; other instances of a cluster still run them).
    pub enabled: bool,
    /// Events, identify calls and metrics → hourly rollups (SPEC §8: hourly at :00).
    pub aggregate_events: String,
    /// API requests → hourly endpoint rollups (SPEC §8: hourly at :30).
    pub aggregate_requests: String,
    /// Retention (SPEC §8: daily at 02:00 UTC).
    pub retention: String,
    /// Billing renewals, grace periods and downgrades (SPEC §8: daily at 00:00 UTC).
    pub renewals: String,
    /// A claimed tick whose run never finished (its instance died) may be taken over after this.
    pub lease_secs: u64,
    /// At start, the last tick missed while observe was down is run if it is this recent.
    pub catch_up_hours: u64,
    /// When a visitor turns out to be a user (identify), their events of this many days back
    /// are rolled up again as that person.
    pub identify_lookback_days: u32,
}

/// When an ingest request is answered 202.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    /// Once its items are committed to PostgreSQL (durable; the default).
    Commit,
    /// Once its items are in the project's buffer (faster; a crash loses the buffer).
    Enqueue,
}

/// The ingest path: buffers, flushes, limits (see `[ingest]` in config/default.toml).
#[derive(Debug, Clone, Deserialize)]
pub struct IngestSettings {
    pub ack: Ack,
    /// Largest body accepted, after decompression.
    pub max_body_bytes: usize,
    /// A project's buffer is flushed once it holds this many items...
    pub flush_items: usize,
    /// ...or its oldest item has waited this long.
    pub flush_interval_ms: u64,
    /// Items one flush (one COPY, one commit) takes at most.
    pub flush_max_items: usize,
    /// Items a project's buffer holds at most; beyond, requests get 503.
    pub buffer_items: usize,
    /// Bytes (decompressed bodies) a project's buffer holds at most; beyond, 503.
    pub buffer_bytes: usize,
    /// Bytes of ingest bodies the whole process holds at most (being read, parsed or
    /// buffered); beyond, 503.
    pub max_inflight_bytes: usize,
    /// A request body must arrive within this long (slow senders get 408).
    pub body_timeout_ms: u64,
    /// One flush attempt (connection, statements, COMMIT) gives up after this long.
    pub flush_timeout_ms: u64,
    /// How long a request waits while its batch is retried against an unavailable database.
    pub retry_deadline_ms: u64,
    /// How long requests whose COMMIT answer was lost wait for PostgreSQL to tell whether it
    /// committed, before they are answered `outcome_unknown`.
    pub outcome_deadline_ms: u64,
    /// An IngestActor with nothing to do for this long stops; the next request starts one.
    pub idle_stop_secs: u64,
    /// Daily partitions of the raw tables are kept this many days ahead.
    pub partitions_ahead_days: u32,
    /// LLM prices per model, in US dollars per million tokens.
    pub llm_prices: std::collections::BTreeMap<String, LlmPrice>,
}

/// Uptime monitors: checks, incidents, shard leases (see `[monitors]` in config/default.toml).
#[derive(Debug, Clone, Deserialize)]
pub struct MonitorSettings {
    /// Lets monitors target loopback, private, link-local and metadata addresses.
    pub allow_private_targets: bool,
    /// A failed check is tried once more after this long before it counts as a failure.
    pub retry_delay_ms: u64,
    /// Consecutive failures that open an incident.
    pub failures_to_open: u32,
    /// Monitors are split into this many shards; instances lease shards.
    pub shards: u32,
    /// How long a shard lease lasts; renewed every third of it.
    pub lease_secs: u64,
    /// How often an instance looks for monitor changes made through other instances.
    pub sync_interval_secs: u64,
    /// The CheckWriter writes its rows when it holds this many...
    pub write_batch_rows: usize,
    /// ...or its oldest row has waited this long.
    pub write_interval_ms: u64,
    /// Check rows the CheckWriter holds at most; when they are all waiting (PostgreSQL away),
    /// MonitorActors wait for room instead of dropping rows.
    pub writer_buffer_rows: usize,
    /// Most body bytes read for the keyword check.
    pub max_body_bytes: usize,
    /// `User-Agent` of the checks.
    pub user_agent: String,
    /// For tests and benchmarks only: monitor intervals are divided by this (1 in production),
    /// so a 60 s interval becomes 300 ms with 200. Timeouts are not divided.
    pub interval_divisor: u32,
    /// The longest timeout a check may have: the API refuses more, the engine caps stored ones.
    pub max_timeout_secs: u32,
    /// Checks in flight at once on this instance (and HTTP connections the checks may hold).
    pub max_concurrent_checks: usize,
    /// Checks of one organisation in flight at once on this instance.
    pub max_concurrent_checks_per_organisation: usize,
}

/// Background housekeeping: partitions, purges of deleted data (see `[maintenance]` in
/// config/default.toml).
#[derive(Debug, Clone, Deserialize)]
pub struct MaintenanceSettings {
    /// How long creating one partition may wait for its table's lock before it is skipped
    /// (retried later), so partition creation never queues ingestion behind a busy table.
    pub partition_lock_timeout_ms: u64,
    /// Rows one purge statement deletes at most (each statement is its own transaction).
    pub purge_batch_rows: i64,
    /// A purge is kept this long after its request and swept once more then, for rows a flush
    /// already under way elsewhere committed after the first sweep.
    pub purge_settle_secs: u64,
    /// How often an instance looks for pending purges besides being told (`LISTEN`).
    pub purge_poll_secs: u64,
    /// How long an instance's claim on a purge lasts unless it extends it (working on it): a
    /// claim left by an instance that died delays the purge by at most this.
    pub purge_claim_secs: u64,
}

/// The daily Retention job: how it deletes what is past each tier's retention, and how much
/// one run may do (see `[retention]` in config/default.toml).
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Rows one delete statement removes at most; each statement is its own short transaction.
    pub batch_rows: i64,
    /// Rows one run deletes from one table at most; what is left waits for the next run.
    pub max_rows_per_table: i64,
    /// Partitions one run drops from one table at most.
    pub max_partitions_per_table: u32,
    /// How long dropping one partition may wait for its table's lock before it is skipped
    /// (and dropped by a later run).
    pub lock_timeout_ms: u64,
    /// Sessions that ended (past their absolute lifetime, or revoked) are kept this many days
    /// more before they go with their refresh tokens.
    pub ended_sessions_keep_days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct LlmPrice {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Development,
    Production,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub mode: Mode,
    pub bind: String,
    pub workers: usize,
    pub shutdown_timeout_secs: u64,
    pub body_limit_bytes: usize,
    pub startup_timeout_secs: u64,
    pub client_ip_header: String,
    /// Clients connect straight to observe (no proxy in front). Production requires either
    /// this or `client_ip_header`: behind an undeclared proxy every client would share the
    /// proxy's IP, and so one per-IP auth budget.
    pub direct_connections: bool,
    /// The address people and emails reach observe at (`https://observe.example`). Empty: the
    /// bound address, filled in at start (`http://127.0.0.1:8000`).
    pub public_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub pool_max_size: usize,
    pub connect_timeout_secs: u64,
    pub acquire_timeout_secs: u64,
    /// Server-side bound on one statement (`statement_timeout`; 0: none).
    pub statement_timeout_ms: u64,
    /// Server-side bound on a transaction left idle (`idle_in_transaction_session_timeout`).
    pub idle_in_transaction_timeout_ms: u64,
    /// TCP keepalive: first probe after this much silence...
    pub keepalive_idle_secs: u64,
    /// ...then one probe this often...
    pub keepalive_interval_secs: u64,
    /// ...and the connection is dropped after this many unanswered probes.
    pub keepalive_retries: u32,
    /// Data sent and not acknowledged for this long drops the connection (`TCP_USER_TIMEOUT`,
    /// Linux; 0: the kernel's default of about 15 minutes).
    pub tcp_user_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    pub url: SecretString,
    /// Put before every key observe writes, so several deployments (or test runs) can share
    /// one Redis.
    pub key_prefix: String,
    pub pool_max_size: u32,
    pub connect_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub secret_key: SecretString,
    pub access_token_expire_minutes: i64,
    pub refresh_token_expire_days: i64,
    pub password_min_length: usize,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub cookie_secure: bool,
    /// Failed attempts allowed per client IP (IPv6: per /64) in `rate_limit_window_secs`.
    pub rate_limit_attempts: u32,
    pub rate_limit_window_secs: u64,
    /// Failed attempts allowed per account in the same window, whatever IPs they come from.
    pub account_rate_limit_attempts: u32,
    /// Registrations allowed per client IP in the same window (a budget of its own).
    pub register_rate_limit_attempts: u32,
    /// Emails a client IP may ask for (password reset, email change) in the same window.
    pub email_rate_limit_attempts: u32,
    /// Password hashes (argon2id) computed at once; each holds `argon2_memory_kib`.
    pub max_concurrent_hashes: usize,
    /// How long a request waits for a hashing slot before it is answered 503.
    pub hash_wait_ms: u64,
    /// A session (refresh family) ends this long after its sign-in, refreshed or not.
    pub session_max_days: i64,
    /// A refresh token presented again within this many seconds of its rotation gets the
    /// same new pair (two tabs, a retried request); later, reuse revokes the session.
    pub refresh_reuse_grace_secs: i64,
    /// How long an instance trusts its cached state of a session (revoked or not, membership)
    /// without hearing of a change; a safety net behind LISTEN/NOTIFY.
    pub session_cache_ttl_secs: u64,
    /// Sessions cached per instance at most (least recently used ones go first).
    pub session_cache_max_entries: usize,
    /// Lets production run with `cookie_secure = false` (TLS ended somewhere that is not
    /// HTTPS to the browser, e.g. a private network). Off: production refuses to start.
    pub allow_insecure_cookie: bool,
    /// How long a browser that signed in stays a known device of the account (its device
    /// cookie): failures from it count against a budget of its own, not the account's.
    pub device_cookie_days: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiKeySettings {
    /// How long a key's owner is cached before it is looked up again.
    pub cache_ttl_secs: u64,
    /// How long "no such key" is cached.
    pub unknown_ttl_secs: u64,
    /// How often `last_used_at` is written.
    pub last_used_flush_secs: u64,
    /// Keys (and unknown keys) cached at most; the least recently used go first.
    pub cache_max_entries: usize,
    /// Lookups of unknown keys allowed per client IP (IPv6: per /64) per window...
    pub failed_lookups_per_ip: u32,
    pub failed_lookup_window_secs: u64,
    /// ...and database lookups of keys running at once, so a flood of made-up keys cannot
    /// take every pooled connection.
    pub max_concurrent_lookups: usize,
    /// "No such key" answers cached at most, in an LRU apart from valid keys, so made-up keys
    /// never push valid ones out.
    pub unknown_cache_max_entries: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MailSettings {
    pub max_attempts: u32,
    pub retry_base_secs: u64,
    pub poll_interval_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    pub token: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GithubSettings {
    pub client_id: String,
    pub client_secret: SecretString,
    pub redirect_uri: String,
    pub oauth_base_url: String,
    pub api_base_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResendSettings {
    pub api_key: SecretString,
    pub from_email: String,
    pub base_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SquadSettings {
    pub secret_key: SecretString,
    pub public_key: String,
    pub base_url: String,
}

/// Billing through Squad (see `[billing]` in config/default.toml).
#[derive(Debug, Clone, Deserialize)]
pub struct BillingSettings {
    /// Monthly prices in kobo (PRO_AMOUNT, TEAM_AMOUNT).
    pub pro_amount: u64,
    pub team_amount: u64,
    /// Days a subscription whose renewal failed stays on its plan while the charge is retried.
    pub grace_days: u32,
    /// Where Squad's checkout sends the payer back; empty: `{frontend_url}/billing`.
    pub callback_url: String,
    /// The bound of each call to Squad.
    pub request_timeout_ms: u64,
}

impl Settings {
    /// A page of the dashboard for links in emails and redirects: `{FRONTEND_URL}{path}` when
    /// a separate front end is configured, else observe's own dashboard,
    /// `{public_url}/#{path}` (its pages live in the URL's fragment, so a link's token never
    /// reaches a server log).
    pub fn dashboard_link(&self, path: &str) -> String {
        let frontend = self.frontend_url.trim_end_matches('/');
        let own = self.server.public_url.trim_end_matches('/');
        match (frontend.is_empty(), path.is_empty()) {
            (false, _) => format!("{frontend}{path}"),
            (true, true) => format!("{own}/"),
            (true, false) => format!("{own}/#{path}"),
        }
    }

    /// A key's Sentry DSN: `{scheme}://{dsn_key}@{host}[:{port}][/{path}]/{numeric_id}` from
    /// `server.public_url` (a path there is kept: SDKs put `/api/{id}/…` after it, as behind a
    /// proxy that serves observe under a prefix). A URL without a scheme is taken as `http`.
    pub fn dsn(&self, dsn_key: &str, numeric_id: i64) -> String {
        let url = self.server.public_url.trim().trim_end_matches('/');
        let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
        format!("{scheme}://{dsn_key}@{rest}/{numeric_id}")
    }
}

impl SquadSettings {
    /// Whether billing is on: it needs Squad's secret key.
    pub fn enabled(&self) -> bool {
        !self.secret_key.expose_secret().is_empty()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Tiers {
    pub hobby: TierLimits,
    pub pro: TierLimits,
    pub team: TierLimits,
}

/// One tier's limits (SPEC §5).
#[derive(Debug, Clone, Deserialize)]
pub struct TierLimits {
    pub projects: Limit,
    pub monitors: Limit,
    pub min_monitor_interval_secs: u32,
    pub events_per_month: Limit,
    pub errors_per_month: Limit,
    pub api_requests_per_month: Limit,
    pub retention_days: u32,
    pub email_alerts: bool,
    pub events_per_minute: u32,
    pub errors_per_minute: u32,
    pub api_requests_per_minute: u32,
}

/// A count limit: a number, or `"unlimited"` in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Max(u64),
    Unlimited,
}

impl Limit {
    /// Whether `used` more items still fit under the limit after `current` already counted.
    pub fn allows(self, current: u64, used: u64) -> bool {
        match self {
            Limit::Unlimited => true,
            Limit::Max(max) => current.saturating_add(used) <= max,
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(Limit::Max(n)),
            Raw::Word(w) if w.eq_ignore_ascii_case("unlimited") => Ok(Limit::Unlimited),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "expected a number or \"unlimited\", found \"{w}\""
            ))),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Development => "development",
            Mode::Production => "production",
        })
    }
}

/// Names each bad key and what it should be, without echoing the value given: that value may be
/// a secret (a numeric `SECRET_KEY` read as a number, say), and this text is printed.
fn describe(errors: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let problems = errors
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            match &e.kind {
                Kind::InvalidType(_, expected) => format!("{key}: expected {expected}"),
                Kind::InvalidValue(_, expected) => format!("{key}: expected {expected}"),
                Kind::UnknownVariant(_, expected) => {
                    format!("{key}: expected one of {}", expected.join(", "))
                }
                Kind::MissingField(field) if key.is_empty() => format!("{field}: missing"),
                Kind::MissingField(field) => format!("{key}.{field}: missing"),
                other => format!("{key}: {other}"),
            }
        })
        .collect::<Vec<_>>();
    ConfigError::Invalid(problems)
}

/// What [`Settings::validate`] did besides checking, for the caller to log once logging is up.
#[derive(Debug, Default)]
pub struct ValidationNotes {
    pub generated_secret_key: bool,
}

impl Settings {
    /// Reads defaults, the optional `OBSERVE_CONFIG` file and the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(|name| std::env::var(name).ok())
    }

    /// Like [`Settings::load`], with the named variables looked up through `env` (for tests).
    /// Generic `OBSERVE__SECTION__KEY` overrides still come from the process environment.
    pub fn load_from(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let mut figment = Figment::new().merge(Toml::string(DEFAULTS));
        if let Some(path) = set("OBSERVE_CONFIG") {
            if !std::path::Path::new(&path).is_file() {
                return Err(ConfigError::Load(format!(
                    "OBSERVE_CONFIG names {path}, which is not a readable file"
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        for (name, key) in STRING_VARS {
            if let Some(value) = set(name) {
                figment = figment.merge(Serialized::default(key, value));
            }
        }
        for (name, key) in PARSED_VARS {
            if let Some(value) = set(name) {
                let parsed: u64 = value.trim().parse().map_err(|_| {
                    ConfigError::Invalid(vec![format!(
                        "{name}={value:?} is not a whole number; set it to e.g. {name}=60"
                    )])
                })?;
                figment = figment.merge(Serialized::default(key, parsed));
            }
        }
        // OBSERVE__SECTION__KEY for everything else (values parsed: numbers, booleans).
        figment = figment.merge(Env::prefixed("OBSERVE__").split("__"));
        figment.extract().map_err(describe)
    }

    /// Checks everything and reports all problems at once. In development mode a missing
    /// `SECRET_KEY` is replaced by an ephemeral random one (noted in the returned notes).
    pub fn validate(&mut self) -> Result<ValidationNotes, ConfigError> {
        let mut problems = Vec::new();
        let mut notes = ValidationNotes::default();

        if self.server.bind.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "OBSERVE_BIND={:?} is not an address:port; use e.g. OBSERVE_BIND=127.0.0.1:8000",
                self.server.bind
            ));
        }
        let key_len = self.auth.secret_key.expose_secret().len();
        if key_len < MIN_SECRET_KEY_LEN {
            match self.server.mode {
                Mode::Production => problems.push(format!(
                    "SECRET_KEY is {} in production mode; set SECRET_KEY to at least {MIN_SECRET_KEY_LEN} random characters (e.g. `openssl rand -hex 32`)",
                    if key_len == 0 { "missing".to_string() } else { format!("only {key_len} characters") }
                )),
                Mode::Development => {
                    let key = Alphanumeric.sample_string(&mut rand::rng(), 64);
                    self.auth.secret_key = SecretString::from(key);
                    notes.generated_secret_key = true;
                }
            }
        }
        let db_url = self.database.url.expose_secret();
        if db_url.parse::<tokio_postgres::Config>().is_err() {
            problems.push(
                "DATABASE_URL is not a PostgreSQL URL; use e.g. postgres://user:password@127.0.0.1:5432/observe".into(),
            );
        }
        let redis_url = self.redis.url.expose_secret();
        if !(redis_url.starts_with("redis://") || redis_url.starts_with("rediss://")) {
            problems.push(
                "REDIS_URL must start with redis:// or rediss://, e.g. redis://127.0.0.1:6379/"
                    .into(),
            );
        }
        for (name, secs) in [
            (
                "OBSERVE__DATABASE__CONNECT_TIMEOUT_SECS",
                self.database.connect_timeout_secs,
            ),
            (
                "OBSERVE__DATABASE__ACQUIRE_TIMEOUT_SECS",
                self.database.acquire_timeout_secs,
            ),
            (
                "OBSERVE__REDIS__CONNECT_TIMEOUT_SECS",
                self.redis.connect_timeout_secs,
            ),
            (
                "OBSERVE__SERVER__STARTUP_TIMEOUT_SECS",
                self.server.startup_timeout_secs,
            ),
            (
                "OBSERVE_SHUTDOWN_TIMEOUT_SECS",
                self.server.shutdown_timeout_secs,
            ),
        ] {
            if secs == 0 {
                problems.push(format!("{name} must be at least 1 (seconds)"));
            }
        }
        for (name, value) in [
            (
                "OBSERVE__INGEST__MAX_BODY_BYTES",
                self.ingest.max_body_bytes,
            ),
            ("OBSERVE__INGEST__FLUSH_ITEMS", self.ingest.flush_items),
            (
                "OBSERVE__INGEST__FLUSH_MAX_ITEMS",
                self.ingest.flush_max_items,
            ),
            ("OBSERVE__INGEST__BUFFER_ITEMS", self.ingest.buffer_items),
            (
                "OBSERVE__INGEST__BODY_TIMEOUT_MS",
                self.ingest.body_timeout_ms as usize,
            ),
            (
                "OBSERVE__INGEST__FLUSH_TIMEOUT_MS",
                self.ingest.flush_timeout_ms as usize,
            ),
            (
                "OBSERVE__INGEST__OUTCOME_DEADLINE_MS",
                self.ingest.outcome_deadline_ms as usize,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        // One request of the largest size must fit, or no request of that size ever could.
        for (name, value) in [
            ("OBSERVE__INGEST__BUFFER_BYTES", self.ingest.buffer_bytes),
            (
                "OBSERVE__INGEST__MAX_INFLIGHT_BYTES",
                self.ingest.max_inflight_bytes,
            ),
        ] {
            if value < self.ingest.max_body_bytes {
                problems.push(format!(
                    "{name} must hold at least one body of OBSERVE__INGEST__MAX_BODY_BYTES ({})",
                    self.ingest.max_body_bytes
                ));
            }
        }

        if self.ingest.buffer_items < crate::ingest::MAX_BATCH {
            problems.push(format!(
                "OBSERVE__INGEST__BUFFER_ITEMS must hold at least one full batch ({})",
                crate::ingest::MAX_BATCH
            ));
        }
        for (model, price) in &self.ingest.llm_prices {
            if !(price.input_per_million >= 0.0 && price.output_per_million >= 0.0) {
                problems.push(format!(
                    "ingest.llm_prices.{model}: prices must be numbers of dollars, 0 or more"
                ));
            }
        }
        for (name, value) in [
            ("OBSERVE__MONITORS__SHARDS", u64::from(self.monitors.shards)),
            ("OBSERVE__MONITORS__LEASE_SECS", self.monitors.lease_secs),
            (
                "OBSERVE__MONITORS__SYNC_INTERVAL_SECS",
                self.monitors.sync_interval_secs,
            ),
            (
                "OBSERVE__MONITORS__WRITE_BATCH_ROWS",
                self.monitors.write_batch_rows as u64,
            ),
            (
                "OBSERVE__MONITORS__FAILURES_TO_OPEN",
                u64::from(self.monitors.failures_to_open),
            ),
            (
                "OBSERVE__MONITORS__INTERVAL_DIVISOR",
                u64::from(self.monitors.interval_divisor),
            ),
            (
                "OBSERVE__MONITORS__MAX_TIMEOUT_SECS",
                u64::from(self.monitors.max_timeout_secs),
            ),
            (
                "OBSERVE__MONITORS__MAX_CONCURRENT_CHECKS",
                self.monitors.max_concurrent_checks as u64,
            ),
            (
                "OBSERVE__MONITORS__MAX_CONCURRENT_CHECKS_PER_ORGANISATION",
                self.monitors.max_concurrent_checks_per_organisation as u64,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if self.monitors.max_concurrent_checks_per_organisation
            > self.monitors.max_concurrent_checks
        {
            problems.push(
                "OBSERVE__MONITORS__MAX_CONCURRENT_CHECKS_PER_ORGANISATION must not exceed OBSERVE__MONITORS__MAX_CONCURRENT_CHECKS".into(),
            );
        }
        if self.billing.request_timeout_ms == 0 {
            problems.push("OBSERVE__BILLING__REQUEST_TIMEOUT_MS must be at least 1".into());
        }
        if self.billing.pro_amount == 0 || self.billing.team_amount == 0 {
            problems.push("PRO_AMOUNT and TEAM_AMOUNT must be at least 1 (kobo)".into());
        }
        if self.maintenance.purge_batch_rows < 1 {
            problems.push("OBSERVE__MAINTENANCE__PURGE_BATCH_ROWS must be at least 1".into());
        }
        if self.maintenance.purge_poll_secs == 0 {
            problems.push("OBSERVE__MAINTENANCE__PURGE_POLL_SECS must be at least 1".into());
        }
        if self.maintenance.partition_lock_timeout_ms == 0 {
            problems.push(
                "OBSERVE__MAINTENANCE__PARTITION_LOCK_TIMEOUT_MS must be at least 1 (0 would wait for a lock forever)".into(),
            );
        }
        for (name, expression) in [
            (
                "OBSERVE__JOBS__AGGREGATE_EVENTS",
                &self.jobs.aggregate_events,
            ),
            (
                "OBSERVE__JOBS__AGGREGATE_REQUESTS",
                &self.jobs.aggregate_requests,
            ),
            ("OBSERVE__JOBS__RETENTION", &self.jobs.retention),
            ("OBSERVE__JOBS__RENEWALS", &self.jobs.renewals),
        ] {
            if let Err(e) = crate::jobs::Schedule::parse(expression) {
                problems.push(format!("{name}: {e}"));
            }
        }
        if self.jobs.lease_secs == 0 {
            problems.push("OBSERVE__JOBS__LEASE_SECS must be at least 1".into());
        }
        if self.retention.batch_rows < 1 {
            problems.push("OBSERVE__RETENTION__BATCH_ROWS must be at least 1".into());
        }
        if self.retention.max_rows_per_table < self.retention.batch_rows {
            problems.push(
                "OBSERVE__RETENTION__MAX_ROWS_PER_TABLE must be at least OBSERVE__RETENTION__BATCH_ROWS (one batch per table per run)".into(),
            );
        }
        if self.retention.max_partitions_per_table == 0 {
            problems.push(
                "OBSERVE__RETENTION__MAX_PARTITIONS_PER_TABLE must be at least 1 (else old partitions are never dropped)".into(),
            );
        }
        if self.retention.lock_timeout_ms == 0 {
            problems.push(
                "OBSERVE__RETENTION__LOCK_TIMEOUT_MS must be at least 1 (0 would wait for a lock forever)".into(),
            );
        }
        if self.database.pool_max_size == 0 {
            problems.push("OBSERVE__DATABASE__POOL_MAX_SIZE must be at least 1".into());
        }
        if self.redis.pool_max_size == 0 {
            problems.push("OBSERVE__REDIS__POOL_MAX_SIZE must be at least 1".into());
        }
        if self.auth.access_token_expire_minutes <= 0 {
            problems
                .push("ACCESS_TOKEN_EXPIRE_MINUTES must be a positive number of minutes".into());
        }
        if self.auth.refresh_token_expire_days <= 0 {
            problems.push("REFRESH_TOKEN_EXPIRE_DAYS must be a positive number of days".into());
        }
        if self.auth.password_min_length < 8 {
            problems.push("OBSERVE__AUTH__PASSWORD_MIN_LENGTH must be at least 8".into());
        }
        if argon2::Params::new(
            self.auth.argon2_memory_kib,
            self.auth.argon2_iterations,
            self.auth.argon2_parallelism,
            None,
        )
        .is_err()
        {
            problems.push(
                "OBSERVE__AUTH__ARGON2_* are not valid argon2 parameters (memory_kib >= 8 x parallelism, iterations >= 1, parallelism >= 1)".into(),
            );
        }
        if self.auth.rate_limit_attempts == 0 || self.auth.rate_limit_window_secs == 0 {
            problems.push(
                "OBSERVE__AUTH__RATE_LIMIT_ATTEMPTS and _WINDOW_SECS must be at least 1".into(),
            );
        }
        for (name, value) in [
            (
                "OBSERVE__AUTH__ACCOUNT_RATE_LIMIT_ATTEMPTS",
                u64::from(self.auth.account_rate_limit_attempts),
            ),
            (
                "OBSERVE__AUTH__REGISTER_RATE_LIMIT_ATTEMPTS",
                u64::from(self.auth.register_rate_limit_attempts),
            ),
            (
                "OBSERVE__AUTH__EMAIL_RATE_LIMIT_ATTEMPTS",
                u64::from(self.auth.email_rate_limit_attempts),
            ),
            (
                "OBSERVE__AUTH__MAX_CONCURRENT_HASHES",
                self.auth.max_concurrent_hashes as u64,
            ),
            (
                "OBSERVE__AUTH__SESSION_CACHE_MAX_ENTRIES",
                self.auth.session_cache_max_entries as u64,
            ),
            (
                "OBSERVE__API_KEYS__CACHE_MAX_ENTRIES",
                self.api_keys.cache_max_entries as u64,
            ),
            (
                "OBSERVE__API_KEYS__FAILED_LOOKUPS_PER_IP",
                u64::from(self.api_keys.failed_lookups_per_ip),
            ),
            (
                "OBSERVE__API_KEYS__FAILED_LOOKUP_WINDOW_SECS",
                self.api_keys.failed_lookup_window_secs,
            ),
            (
                "OBSERVE__API_KEYS__MAX_CONCURRENT_LOOKUPS",
                self.api_keys.max_concurrent_lookups as u64,
            ),
            (
                "OBSERVE__API_KEYS__UNKNOWN_CACHE_MAX_ENTRIES",
                self.api_keys.unknown_cache_max_entries as u64,
            ),
            (
                "OBSERVE__AUTH__DEVICE_COOKIE_DAYS",
                self.auth.device_cookie_days,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if self.auth.session_max_days <= 0 {
            problems
                .push("OBSERVE__AUTH__SESSION_MAX_DAYS must be a positive number of days".into());
        } else if self.auth.refresh_token_expire_days > self.auth.session_max_days {
            problems.push(format!(
                "REFRESH_TOKEN_EXPIRE_DAYS ({}) is longer than OBSERVE__AUTH__SESSION_MAX_DAYS ({}); a refresh token cannot outlive its session",
                self.auth.refresh_token_expire_days, self.auth.session_max_days
            ));
        }
        if !(0..=300).contains(&self.auth.refresh_reuse_grace_secs) {
            problems.push(
                "OBSERVE__AUTH__REFRESH_REUSE_GRACE_SECS must be 0 to 300 seconds (a longer window lets a stolen refresh token go unnoticed longer)".into(),
            );
        }
        if self.server.mode == Mode::Production {
            // OWASP ASVS V3.4.1: session cookies carry the Secure attribute.
            if !self.auth.cookie_secure && !self.auth.allow_insecure_cookie {
                problems.push(
                    "OBSERVE__AUTH__COOKIE_SECURE is false in production mode: the refresh-token cookie would travel over plain HTTP; serve observe behind HTTPS and set OBSERVE__AUTH__COOKIE_SECURE=true (or, if TLS really ends elsewhere, OBSERVE__AUTH__ALLOW_INSECURE_COOKIE=true)".into(),
                );
            }
            // Behind an undeclared proxy every client shares the proxy's IP, and so one auth
            // budget: a few failures would lock everyone out.
            if self.server.client_ip_header.trim().is_empty() && !self.server.direct_connections {
                problems.push(
                    "production mode needs to know how clients reach observe: behind a proxy, set OBSERVE__SERVER__CLIENT_IP_HEADER to the header it sets (e.g. X-Forwarded-For); with no proxy, set OBSERVE__SERVER__DIRECT_CONNECTIONS=true".into(),
                );
            }
        }
        if self.mail.max_attempts == 0 || self.mail.poll_interval_secs == 0 {
            problems.push(
                "OBSERVE__MAIL__MAX_ATTEMPTS and POLL_INTERVAL_SECS must be at least 1".into(),
            );
        }
        if self.server.body_limit_bytes < 1024 {
            problems.push("OBSERVE__SERVER__BODY_LIMIT_BYTES must be at least 1024".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!(
                "OBSERVE_LOG_LEVEL={:?} is not a log filter ({e}); use e.g. info or observe=debug,info",
                self.log.level
            ));
        }
        for (name, tier) in [
            ("hobby", &self.tiers.hobby),
            ("pro", &self.tiers.pro),
            ("team", &self.tiers.team),
        ] {
            if tier.retention_days == 0 {
                problems.push(format!("tiers.{name}.retention_days must be at least 1"));
            }
        }

        if problems.is_empty() {
            Ok(notes)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(|k| map.get(k).cloned())
    }

    #[test]
    fn dsns_are_built_from_the_public_url() {
        let mut s = load(&[]).unwrap();
        let key = "0123456789abcdef0123456789abcdef";
        for (public, dsn) in [
            (
                "http://127.0.0.1:8000",
                format!("http://{key}@127.0.0.1:8000/42"),
            ),
            (
                "https://observe.example/",
                format!("https://{key}@observe.example/42"),
            ),
            (
                "https://example.com/observe",
                format!("https://{key}@example.com/observe/42"),
            ),
            (
                "observe.example:9000",
                format!("http://{key}@observe.example:9000/42"),
            ),
        ] {
            s.server.public_url = public.into();
            assert_eq!(s.dsn(key, 42), dsn, "{public}");
        }
    }

    #[test]
    fn defaults_load_and_validate_in_development() {
        let mut s = load(&[]).unwrap();
        assert_eq!(s.server.mode, Mode::Development);
        assert_eq!(s.auth.access_token_expire_minutes, 60);
        assert_eq!(s.tiers.team.monitors, Limit::Unlimited);
        assert_eq!(s.tiers.hobby.events_per_month, Limit::Max(50_000));
        let notes = s.validate().unwrap();
        assert!(notes.generated_secret_key);
        assert!(s.auth.secret_key.expose_secret().len() >= MIN_SECRET_KEY_LEN);
    }

    #[test]
    fn spec_environment_names_override_defaults() {
        let s = load(&[
            ("DATABASE_URL", "postgres://a@localhost/b"),
            ("ACCESS_TOKEN_EXPIRE_MINUTES", "15"),
            ("SECRET_KEY", "12345678901234567890123456789012345"),
            ("OBSERVE_BIND", "0.0.0.0:9000"),
        ])
        .unwrap();
        assert_eq!(s.database.url.expose_secret(), "postgres://a@localhost/b");
        assert_eq!(s.auth.access_token_expire_minutes, 15);
        // A numeric-looking secret stays a string.
        assert_eq!(s.auth.secret_key.expose_secret().len(), 35);
        assert_eq!(s.server.bind, "0.0.0.0:9000");
    }

    #[test]
    fn production_refuses_missing_or_short_secret_key() {
        let mut s = load(&[("OBSERVE_ENV", "production")]).unwrap();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("SECRET_KEY is missing in production"), "{err}");

        let mut s = load(&[("OBSERVE_ENV", "production"), ("SECRET_KEY", "short")]).unwrap();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("only 5 characters"), "{err}");
    }

    fn production(vars: &[(&str, &str)]) -> Settings {
        let mut all = vec![
            ("OBSERVE_ENV", "production"),
            ("SECRET_KEY", "0123456789abcdef0123456789abcdef01"),
        ];
        all.extend_from_slice(vars);
        load(&all).unwrap()
    }

    #[test]
    fn production_refuses_an_insecure_cookie_unless_told_to_allow_it() {
        let mut s = production(&[]);
        s.server.direct_connections = true;
        s.auth.cookie_secure = false;
        let err = s
            .validate()
            .expect_err("insecure cookie accepted in production");
        assert!(
            err.to_string().contains("OBSERVE__AUTH__COOKIE_SECURE"),
            "{err}"
        );
        s.auth.allow_insecure_cookie = true;
        assert!(s.validate().is_ok());
        let mut s = production(&[]);
        s.server.direct_connections = true;
        s.auth.cookie_secure = true;
        assert!(s.validate().is_ok());
    }

    #[test]
    fn production_needs_to_know_whether_a_proxy_is_in_front() {
        let mut s = production(&[]);
        s.auth.cookie_secure = true;
        let err = s
            .validate()
            .expect_err("no proxy setting accepted in production");
        assert!(
            err.to_string()
                .contains("OBSERVE__SERVER__CLIENT_IP_HEADER"),
            "{err}"
        );
        s.server.client_ip_header = "X-Forwarded-For".into();
        assert!(s.validate().is_ok());
        s.server.client_ip_header = String::new();
        s.server.direct_connections = true;
        assert!(s.validate().is_ok());
        // Development needs neither.
        let mut s = load(&[]).unwrap();
        assert!(s.validate().is_ok());
    }

    #[test]
    fn every_problem_is_reported_with_a_fix() {
        let mut s = load(&[("OBSERVE_BIND", "nowhere"), ("REDIS_URL", "http://x")]).unwrap();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("OBSERVE_BIND=\"nowhere\""), "{err}");
        assert!(err.contains("REDIS_URL must start with redis://"), "{err}");
    }

    #[test]
    fn bad_numbers_and_modes_are_load_errors() {
        let err = load(&[("ACCESS_TOKEN_EXPIRE_MINUTES", "soon")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ACCESS_TOKEN_EXPIRE_MINUTES=\"soon\" is not a whole number"),
            "{err}"
        );
        let err = load(&[("OBSERVE_ENV", "staging")]).unwrap_err().to_string();
        assert!(
            err.contains("server.mode: expected one of development, production"),
            "{err}"
        );
    }

    #[test]
    fn retention_bounds_that_would_never_finish_or_wait_forever_are_refused() {
        let mut s = load(&[]).unwrap();
        assert_eq!(s.retention.batch_rows, 5000);
        assert!(s.validate().is_ok());
        s.retention.batch_rows = 0;
        s.retention.max_partitions_per_table = 0;
        s.retention.lock_timeout_ms = 0;
        let err = s.validate().unwrap_err().to_string();
        for name in [
            "OBSERVE__RETENTION__BATCH_ROWS",
            "OBSERVE__RETENTION__MAX_PARTITIONS_PER_TABLE",
            "OBSERVE__RETENTION__LOCK_TIMEOUT_MS",
        ] {
            assert!(err.contains(name), "{name}: {err}");
        }
        let mut s = load(&[]).unwrap();
        s.retention.max_rows_per_table = s.retention.batch_rows - 1;
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("OBSERVE__RETENTION__MAX_ROWS_PER_TABLE"),
            "{err}"
        );
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let mut s = load(&[]).unwrap();
        s.redis.connect_timeout_secs = 0;
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("OBSERVE__REDIS__CONNECT_TIMEOUT_SECS must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn type_errors_do_not_echo_the_value() {
        let err = load(&[("OBSERVE_ENV", "staging-with-secret-9f8e")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.mode"), "{err}");
        assert!(!err.contains("9f8e"), "{err}");
    }

    #[test]
    fn limits_allow_up_to_the_maximum() {
        assert!(Limit::Max(10).allows(9, 1));
        assert!(!Limit::Max(10).allows(10, 1));
        assert!(Limit::Unlimited.allows(u64::MAX, 1));
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let s = load(&[("SECRET_KEY", "a-very-secret-key-that-is-long-enough-123")]).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("a-very-secret-key"), "{shown}");
    }
}
