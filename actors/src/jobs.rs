//! `JobRunner`: one supervised actor per background job (the Aggregator's two rollups,
//! Retention), owning the job's schedule.
//!
//! **Owns:** its [`Schedule`] and a timer for the next tick. At each tick it claims the tick in
//! `job_runs` (one instance of a cluster wins it), runs the job's work — a plain async function
//! of `observe-core` that tests also call directly — and records the run: its result, rows
//! and duration in `job_runs`, one log line (`job`, `tick`, `took_ms`, `rows`), and the
//! `observe_job_*` series in `/metrics`. Runs of one job never overlap: the next tick is set
//! once the run ends (a tick that passed meanwhile is skipped; the next run covers its work).
//!
//! **Catch-up:** at start, the last tick due is run if no instance claimed it and it is within
//! `jobs.catch_up_hours` (see [`observe_core::jobs::catch_up`]).
//!
//! **Failure:** a failed run is logged and counted; the next tick does its work, since every
//! job's work is state-driven. A database that cannot be reached for the claim skips the tick
//! the same way. **Mailbox:** 16; it receives nothing. **Restart:** a panic restarts it, and
//! the restarted runner catches up as at start. **Drain:** none: a run cut short by shutdown
//! leaves its claim unfinished, taken over after `jobs.lease_secs` (a later tick covers it first).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use futures_util::future::LocalBoxFuture;
use observe_core::config::JobSettings;
use observe_core::db::PgPool;
use observe_core::jobs::{self, Ran, Schedule};
use observe_core::metrics::Metrics;
use observe_core::store::jobs::{self as store, Outcome};
use tracing::Instrument;

use crate::supervisor::{Lifeline, Supervised, SupervisedActor, Supervisor};

/// Why a run failed, kept with its cause for the log.
pub type JobError = Box<dyn std::error::Error + Send + Sync>;

/// A background job: its name and its work for one tick.
pub trait Job: Send + Sync + 'static {
    /// The `job` label in `job_runs`, logs and `/metrics`.
    fn name(&self) -> &'static str;

    /// The work of `tick`.
    fn run(&self, tick: DateTime<Utc>) -> LocalBoxFuture<'static, Result<Ran, JobError>>;
}

pub struct JobRunner {
    _lifeline: Lifeline,
    job: Arc<dyn Job>,
    schedule: Schedule,
    pool: PgPool,
    settings: Arc<JobSettings>,
    metrics: Metrics,
    /// This instance, as it signs its claims.
    instance: Arc<str>,
}

impl SupervisedActor for JobRunner {
    const KIND: &'static str = "JobRunner";
    const MAILBOX: usize = 16;
}

impl Actor for JobRunner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (pool, name) = (self.pool.clone(), self.job.name());
        let bound = chrono::Duration::hours(
            i64::try_from(self.settings.catch_up_hours).unwrap_or(i64::MAX / 7200),
        );
        let now = Utc::now();
        // The job's run and duration series exist (at 0) from its runner's start.
        for result in ["ok", "failed"] {
            self.metrics.jobs.runs.with_label_values(&[name, result]);
        }
        self.metrics.jobs.seconds.with_label_values(&[name]);
        self.report_last_success(ctx);
        let Some(last) = self.schedule.last_at_or_before(now) else {
            self.set_next(ctx, now);
            return;
        };
        // Whether the last tick was claimed needs the database; asked once, off the thread.
        let ask = async move {
            let client = pool.get().await.ok()?;
            store::claimed(&client, name, last).await.ok()
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(ask).map(move |claimed, act, ctx| {
                let due = match claimed {
                    Some(claimed) => jobs::catch_up(&act.schedule, now, bound, |_| claimed),
                    // Unknown (database away): the next tick does the work.
                    None => None,
                };
                match due {
                    Some(tick) => {
                        tracing::info!(job = act.job.name(), tick = %tick, "catching up a tick missed while stopped");
                        act.fire(ctx, tick);
                    }
                    None => act.set_next(ctx, now),
                }
            }),
        );
    }
}

impl JobRunner {
    /// Reports the job's last success on any instance (from `job_runs`), so the gauge — and
    /// the alert on a job that has not succeeded for two periods — does not depend on which
    /// instance ran it or whether that instance restarted since.
    fn report_last_success(&self, ctx: &mut Context<Self>) {
        let (pool, name, metrics) = (self.pool.clone(), self.job.name(), self.metrics.clone());
        let ask = async move {
            let client = pool.get().await.ok()?;
            let at = store::last_success(&client, name).await.ok()??;
            let gauge = metrics.jobs.last_success.with_label_values(&[name]);
            // A run of this instance may have reported a later one meanwhile.
            if at.timestamp() as f64 > gauge.get() {
                gauge.set(at.timestamp() as f64);
            }
            Some(())
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(ask).map(|_, _, _| ()));
    }

    /// Sets the timer for the first tick after `after`.
    fn set_next(&mut self, ctx: &mut Context<Self>, after: DateTime<Utc>) {
        let Some(tick) = self.schedule.next_after(after) else {
            tracing::warn!(job = self.job.name(), "the schedule has no next tick");
            return;
        };
        let wait = (tick - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        ctx.run_later(wait, move |act, ctx| act.fire(ctx, tick));
    }

    /// Claims `tick` and, if this instance won it, runs it; then sets the next timer.
    fn fire(&mut self, ctx: &mut Context<Self>, tick: DateTime<Utc>) {
        let job = self.job.clone();
        let (pool, instance, lease) = (
            self.pool.clone(),
            self.instance.clone(),
            i64::try_from(self.settings.lease_secs).unwrap_or(i64::MAX),
        );
        let metrics = self.metrics.clone();
        // A root span per tick, for traces (not built when they are off).
        let span = tracing::debug_span!(
            "job",
            otel.name = job.name(),
            job = job.name(),
            tick = %tick,
            claimed = tracing::field::Empty,
            rows = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let traced = span.clone();
        let run = async move {
            let claimed = match pool.get().await {
                Ok(client) => store::claim(&client, job.name(), tick, &instance, lease).await,
                Err(e) => Err(e.into()),
            };
            traced.record("claimed", matches!(claimed, Ok(true)));
            match claimed {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(job = job.name(), tick = %tick, error = %e, "could not claim the tick; the next one does its work");
                    return;
                }
            }
            let started = Instant::now();
            let result = job.run(tick).await;
            let took = started.elapsed();
            let took_ms = took.as_millis() as u64;
            let outcome = match &result {
                Ok(ran) => Outcome::Ok { rows: ran.rows },
                Err(e) => Outcome::Failed {
                    error: e.to_string(),
                },
            };
            let name = job.name();
            metrics
                .jobs
                .seconds
                .with_label_values(&[name])
                .observe(took.as_secs_f64());
            match &result {
                Ok(ran) => traced.record("rows", ran.rows),
                Err(e) => traced.record("error", tracing::field::display(e)),
            };
            match &result {
                Ok(ran) => {
                    metrics.jobs.runs.with_label_values(&[name, "ok"]).inc();
                    metrics
                        .jobs
                        .last_success
                        .with_label_values(&[name])
                        .set(Utc::now().timestamp() as f64);
                    tracing::info!(job = name, tick = %tick, took_ms, rows = ran.rows, "job ran");
                }
                Err(e) => {
                    metrics.jobs.runs.with_label_values(&[name, "failed"]).inc();
                    tracing::warn!(job = name, tick = %tick, took_ms, error = %e, "job failed; the next tick does its work");
                }
            }
            let recorded = match pool.get().await {
                Ok(client) => {
                    store::finish(&client, name, tick, &instance, &outcome, took_ms).await
                }
                Err(e) => Err(e.into()),
            };
            if let Err(e) = recorded {
                tracing::warn!(job = name, tick = %tick, error = %e, "could not record the run");
            }
        }
        .instrument(span);
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(run).map(move |(), act, ctx| {
                act.set_next(ctx, Utc::now().max(tick));
            }),
        );
    }
}

/// Starts a supervised runner for `job` on `arbiter`, on `schedule`.
pub fn start(
    supervisor: &Supervisor,
    arbiter: &ArbiterHandle,
    job: Arc<dyn Job>,
    schedule: Schedule,
    pool: PgPool,
    settings: Arc<JobSettings>,
    metrics: Metrics,
) -> Supervised<JobRunner> {
    let instance: Arc<str> = Arc::from(format!(
        "{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "observe".into()),
        uuid::Uuid::new_v4().simple()
    ));
    let name = format!("job:{}", job.name());
    supervisor.spawn(name, arbiter, move |lifeline| JobRunner {
        _lifeline: lifeline,
        job: job.clone(),
        schedule: schedule.clone(),
        pool: pool.clone(),
        settings: settings.clone(),
        metrics: metrics.clone(),
        instance: instance.clone(),
    })
}
