//! observe-core: the bottom layer of observe.
//!
//! Everything here is plain library code with no actors and no HTTP: typed configuration
//! ([`config`]), the PostgreSQL pool and schema migrations ([`db`], [`migrate`]), the Redis pool
//! ([`redis`]), the Prometheus registry ([`metrics`]) and logging ([`telemetry`]); the batching
//! policy every buffering actor shares, and the process-wide byte budget ([`batch`]). The actor
//! crate builds on it, and the HTTP layer builds on both; nothing here may depend on either.

pub mod auth;
pub mod batch;
pub mod cache;
pub mod check;
pub mod check_slots;
pub mod config;
pub mod db;
pub mod fingerprint;
pub mod gcra;
pub mod github;
pub mod ingest;
pub mod keys;
pub mod mail;
pub mod metrics;
pub mod migrate;
pub mod monitor;
pub mod outbox;
pub mod ratelimit;
pub mod redis;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod tiers;
