//! observe-actors: the middle layer, where supervised actors own each concern.
//!
//! Every actor runs under the [`supervisor`]: it is restarted with backoff when it fails
//! (a stop it reports as failure, or a panic in a handler), each restart is logged and counted,
//! its mailbox is bounded, and buffering actors are drained at shutdown. Actors are thin shells
//! over plain async functions in `observe-core`, which tests call directly.
//!
//! This crate depends on `observe-core` and never on the HTTP layer above it.
//!
//! # Layout
//!
//! - [`supervisor`]: how every actor is started, restarted, drained; [`wake`]: the one timer
//!   discipline of the buffering actors.
//! - [`ingest`]: one `IngestActor` per project (group commit) and their registry.
//! - [`monitor`]: the `ShardManager`, one `MonitorActor` per monitor, the `CheckWriter`.
//! - [`jobs`]: one `JobRunner` per background job, owning its cron schedule and its claims;
//!   [`aggregator`]: the Aggregator's two rollup jobs on it; [`retention`]: the daily
//!   Retention job on it; [`billing`]: the `Billing` actor (Squad's webhooks) and the daily
//!   renewals job on it.
//! - [`mailer`]: the outbox sender; [`keys`]: the `KeyWatcher` keeping key and session caches
//!   honest; [`partitions`]: the `PartitionKeeper`; [`purge`]: the `Purger` of deleted
//!   projects' rows.

pub mod aggregator;
pub mod billing;
pub mod ingest;
pub mod jobs;
pub mod keys;
pub mod mailer;
pub mod monitor;
pub mod partitions;
pub mod purge;
pub mod retention;
pub mod supervisor;
pub mod wake;

pub use supervisor::{Backoff, Drain, Exit, Lifeline, Supervised, SupervisedActor, Supervisor};
