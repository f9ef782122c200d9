//! The Aggregator (SPEC §3, §8): raw rows → hourly rollups, on two cron schedules of its own —
//! events, identify calls and metrics at :00 (`jobs.aggregate_events`), API requests at :30
//! (`jobs.aggregate_requests`) — each a [`JobRunner`](crate::jobs::JobRunner), so each tick
//! runs once across instances. The work is
//! [`observe_core::store::rollups::aggregate`]: every closed hour a flush marked dirty is
//! recomputed whole, so late data is folded in by the next tick and a failed tick by the one
//! after.

use std::sync::Arc;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use futures_util::future::LocalBoxFuture;
use observe_core::config::Settings;
use observe_core::db::PgPool;
use observe_core::jobs::{Ran, Schedule, ScheduleError};
use observe_core::metrics::Metrics;
use observe_core::store::rollups::{aggregate_with, Kind};

use crate::jobs::{self, Job, JobError};
use crate::supervisor::Supervisor;

/// One of the Aggregator's two jobs.
pub struct Aggregate {
    name: &'static str,
    kinds: &'static [Kind],
    pool: PgPool,
    identify_lookback: chrono::Duration,
}

impl Job for Aggregate {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&self, _tick: DateTime<Utc>) -> LocalBoxFuture<'static, Result<Ran, JobError>> {
        let (pool, kinds, lookback) = (self.pool.clone(), self.kinds, self.identify_lookback);
        Box::pin(async move {
            let rows = aggregate_with(&pool, kinds, Utc::now(), lookback).await?;
            Ok(Ran { rows })
        })
    }
}

/// Starts both of the Aggregator's job runners.
pub fn start(
    supervisor: &Supervisor,
    arbiter: &ArbiterHandle,
    settings: &Settings,
    pool: PgPool,
    metrics: Metrics,
) -> Result<(), ScheduleError> {
    let job_settings = Arc::new(settings.jobs.clone());
    for (name, kinds, schedule) in [
        (
            "aggregate_events",
            &[Kind::Events, Kind::Metrics, Kind::Errors][..],
            &settings.jobs.aggregate_events,
        ),
        (
            "aggregate_requests",
            &[Kind::Requests][..],
            &settings.jobs.aggregate_requests,
        ),
    ] {
        let job = Arc::new(Aggregate {
            name,
            kinds,
            pool: pool.clone(),
            identify_lookback: chrono::Duration::days(i64::from(
                settings.jobs.identify_lookback_days,
            )),
        });
        jobs::start(
            supervisor,
            arbiter,
            job,
            Schedule::parse(schedule)?,
            pool.clone(),
            job_settings.clone(),
            metrics.clone(),
        );
    }
    Ok(())
}
