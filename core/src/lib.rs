//! observe-core: the bottom layer of observe.
//!
//! Everything here is plain library code with no actors and no HTTP. The actor crate builds on
//! it, and the HTTP layer builds on both; nothing here may depend on either.
//!
//! # Layout
//!
//! - Foundation: [`config`] (typed settings), [`db`] (PostgreSQL pool, connection bounds),
//!   [`migrate`] (schema migrations), [`redis`], [`metrics`] (the Prometheus registry),
//!   [`telemetry`] (logs, panic hook), [`trace`] (OpenTelemetry spans, OTLP export, trace
//!   context in and out, trace ids in log lines).
//! - Accounts: [`auth`] (passwords, access tokens, secrets), [`sessions`] (the per-request
//!   session check), [`keys`] (API-key authentication and the change channel), [`cache`] (the
//!   bounded single-flight cache both use), [`ratelimit`] (auth and key-lookup budgets),
//!   [`gcra`] (the one rate limiter, Redis with a per-instance fallback), [`github`] (OAuth),
//!   [`tiers`] (tier questions).
//! - Ingestion: [`ingest`] (payloads and validation), [`fingerprint`] (error grouping),
//!   [`batch`] (the batching policy buffering actors share, the process-wide byte budget),
//!   [`sentry`] (Sentry envelopes and events turned into observe's items).
//! - Monitors: [`monitor`] (configuration and the streak rules), [`check`] (one HTTP check and
//!   the SSRF guard), [`check_slots`] (per-organisation concurrency).
//! - Background jobs: [`jobs`] (cron schedules, catch-up at start).
//! - Read side: [`sketch`] (mergeable unique-count and latency sketches kept in rollups),
//!   [`blocks`] (the 1–24-hour blocks long ranges are read from).
//! - Billing: [`billing`] (subscriptions, renewals, grace and downgrades; card tokens sealed at
//!   rest), [`squad`] (Squad's API and its webhook signature); rows in `store::billing`.
//! - Email: [`mail`] (messages, templates, providers), [`outbox`] (the durable outbox).
//! - Reading: [`range`] (the `from`/`to`/`tz`/`group_by` of read routes, buckets in a zone).
//! - Metric reads: [`series`] (query parameters, merged cells, aggregations, bucket
//!   boundaries), [`export`] (CSV, Prometheus text and JSON, series by series).
//! - Retention: [`retention`] (what is past each tier's retention, the tables it covers and
//!   the hook for rollups, the per-run budget); the work itself is in `store::retention`.
//! - Storage: [`store`], one module per kind of row (accounts, sessions, tokens, projects,
//!   API keys, ingest writes, monitors and their runs, partitions, purges, admin counts, raw-row
//!   pages and error groups as the dashboard reads them).

pub mod auth;
pub mod batch;
pub mod billing;
pub mod blocks;
pub mod cache;
pub mod check;
pub mod check_slots;
pub mod config;
pub mod db;
pub mod export;
pub mod fingerprint;
pub mod gcra;
pub mod github;
pub mod ingest;
pub mod jobs;
pub mod keys;
pub mod mail;
pub mod metrics;
pub mod migrate;
pub mod monitor;
pub mod outbox;
pub mod range;
pub mod ratelimit;
pub mod redis;
pub mod retention;
pub mod sentry;
pub mod series;
pub mod sessions;
pub mod sketch;
pub mod squad;
pub mod store;
pub mod telemetry;
pub mod tiers;
pub mod trace;
