//! Integration tests through HTTP against the real server, PostgreSQL and Redis.
//! One binary with modules, so it links once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod admin;
mod auth_limits;
mod check_writer;
mod durability;
mod email_flows;
mod errors;
mod github;
mod health;
mod helpers;
mod ingest;
mod ingest_faults;
mod isolation;
mod jobs;
mod key_auth;
mod logs;
mod mailer;
mod metrics;
mod migrations;
mod monitor_engine;
mod monitors;
mod openapi;
mod partitions;
mod process;
mod projects;
mod ratelimit;
mod retention;
mod rollups;
mod series;
mod sessions;
mod shutdown;
mod stats;
mod supervision;
mod support;
