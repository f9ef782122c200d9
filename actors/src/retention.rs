//! Retention (SPEC §3, §8): daily at 02:00 UTC (`jobs.retention`), once per cluster, a
//! [`JobRunner`](crate::jobs::JobRunner) runs [`observe_core::store::retention::run`]: data
//! past each tier's retention goes (old partitions dropped whole, shorter tiers' rows deleted in
//! bounded batches), with rollups, stale sessions and spent tokens. A run is bounded per table;
//! what it leaves, the next tick finishes.

use std::sync::Arc;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use futures_util::future::LocalBoxFuture;
use observe_core::config::{RetentionSettings, Settings};
use observe_core::db::PgPool;
use observe_core::jobs::{Ran, Schedule, ScheduleError};
use observe_core::metrics::Metrics;
use observe_core::store::retention;
use observe_core::tiers::TierPolicy;

use crate::jobs::{self, Job, JobError};
use crate::supervisor::Supervisor;

/// The Retention job.
pub struct Retention {
    pool: PgPool,
    tiers: TierPolicy,
    settings: Arc<RetentionSettings>,
}

impl Job for Retention {
    fn name(&self) -> &'static str {
        "retention"
    }

    fn run(&self, _tick: DateTime<Utc>) -> LocalBoxFuture<'static, Result<Ran, JobError>> {
        let (pool, tiers, settings) =
            (self.pool.clone(), self.tiers.clone(), self.settings.clone());
        Box::pin(async move {
            let mut client = pool.get().await?;
            let report = retention::run(&mut client, &tiers, &settings, Utc::now()).await?;
            for table in report.tables.iter().filter(|t| t.error.is_some()) {
                tracing::warn!(job = "retention", table = %table.table, error = ?table.error, "retention of a table failed; the next run retries it");
            }
            if !report.finished() {
                tracing::info!(
                    job = "retention",
                    "retention left work for the next run (bounded per table)"
                );
            }
            Ok(Ran {
                rows: report.rows(),
            })
        })
    }
}

/// Starts the Retention job's runner.
pub fn start(
    supervisor: &Supervisor,
    arbiter: &ArbiterHandle,
    settings: &Settings,
    tiers: TierPolicy,
    pool: PgPool,
    metrics: Metrics,
) -> Result<(), ScheduleError> {
    let job = Arc::new(Retention {
        pool: pool.clone(),
        tiers,
        settings: Arc::new(settings.retention.clone()),
    });
    jobs::start(
        supervisor,
        arbiter,
        job,
        Schedule::parse(&settings.jobs.retention)?,
        pool,
        Arc::new(settings.jobs.clone()),
        metrics,
    );
    Ok(())
}
