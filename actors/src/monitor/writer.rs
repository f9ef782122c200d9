//! CheckWriter: one per instance, writing the MonitorActors' check rows in batches.
//!
//! **Owns:** a buffer of check rows. MonitorActors `try_send` it one [`Record`] per check; it
//! writes the buffer with one `INSERT … SELECT FROM unnest(…)` when it holds
//! `monitors.write_batch_rows` rows or its oldest row has waited `monitors.write_interval_ms`,
//! one write at a time (rows arriving meanwhile gather into the next batch).
//!
//! **Database trouble:** a failed write keeps its rows at the front of the buffer and is retried
//! with backoff (100 ms doubling to 5 s). The buffer holds at most [`MAX_BUFFERED`] rows; beyond
//! that the oldest are dropped and counted in `observe_monitor_check_rows_dropped_total`. Check
//! rows are history, not state: the state that restarts depend on (streaks, incidents) is
//! written by the MonitorActors at once, not here.
//!
//! **Mailbox:** [`MAILBOX`] rows; a full mailbox drops the row (counted), never blocks a check.
//!
//! **Restart:** a panic loses the buffered rows (at most a few seconds of history); the
//! supervisor restarts the writer with backoff.
//!
//! **Drain:** [`Drain`] at shutdown writes everything buffered (retrying while the shutdown
//! budget lasts) and replies once the buffer is empty.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use observe_core::config::MonitorSettings;
use observe_core::db::PgPool;
use observe_core::metrics::Metrics;
use observe_core::store::monitor_runs::{self as store, CheckRow};
use observe_core::store::StoreError;
use tokio::sync::oneshot;

use crate::supervisor::{Drain, Lifeline, Supervised, SupervisedActor, Supervisor};

/// Mailbox capacity of the CheckWriter.
pub const MAILBOX: usize = 16_384;
/// Rows buffered at most (beyond, the oldest are dropped).
pub const MAX_BUFFERED: usize = 200_000;
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// One check's row, to be written.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Record(pub CheckRow);

pub struct CheckWriter {
    _lifeline: Lifeline,
    settings: Arc<MonitorSettings>,
    pool: PgPool,
    metrics: Metrics,
    buffer: VecDeque<(CheckRow, Instant)>,
    writing: bool,
    timer_armed: bool,
    failures: u32,
    draining: bool,
    drain_waiters: Vec<oneshot::Sender<()>>,
}

impl CheckWriter {
    fn interval(&self) -> Duration {
        Duration::from_millis(self.settings.write_interval_ms)
    }

    fn consider(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.buffer.is_empty() {
            self.notify_drained();
            return;
        }
        if self.failures > 0 {
            return;
        }
        let age = self
            .buffer
            .front()
            .map(|(_, at)| at.elapsed())
            .unwrap_or_default();
        if self.draining
            || self.buffer.len() >= self.settings.write_batch_rows
            || age >= self.interval()
        {
            self.write(ctx);
        } else if !self.timer_armed {
            self.timer_armed = true;
            ctx.run_later(self.interval().saturating_sub(age), |act, ctx| {
                act.timer_armed = false;
                act.consider(ctx);
            });
        }
    }

    fn write(&mut self, ctx: &mut Context<Self>) {
        let n = self
            .buffer
            .len()
            .min(self.settings.write_batch_rows.max(1) * 4);
        let batch: Vec<(CheckRow, Instant)> = self.buffer.drain(..n).collect();
        if batch.is_empty() {
            return;
        }
        self.writing = true;
        let pool = self.pool.clone();
        let fut = async move {
            let result: Result<u64, StoreError> = async {
                let client = pool.get().await?;
                let rows: Vec<CheckRow> = batch.iter().map(|(r, _)| r.clone()).collect();
                store::write_checks(&client, &rows).await
            }
            .await;
            (batch, result)
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(fut).map(|(batch, result), act, ctx| {
                act.writing = false;
                match result {
                    Ok(_) => {
                        if act.failures > 0 {
                            tracing::info!(actor = CheckWriter::KIND, "check rows written again");
                            act.failures = 0;
                        }
                        act.consider(ctx);
                    }
                    Err(e) => {
                        act.failures += 1;
                        if act.failures == 1 {
                            tracing::warn!(
                                actor = CheckWriter::KIND,
                                error = %e,
                                rows = batch.len(),
                                "writing check rows failed; retrying"
                            );
                        }
                        for row in batch.into_iter().rev() {
                            act.buffer.push_front(row);
                        }
                        act.trim();
                        let delay = RETRY_BASE
                            .saturating_mul(1 << act.failures.min(8))
                            .min(RETRY_MAX);
                        ctx.run_later(delay, |act, ctx| {
                            if !act.writing && !act.buffer.is_empty() {
                                act.write(ctx);
                            } else {
                                act.failures = 0;
                                act.consider(ctx);
                            }
                        });
                    }
                }
            }),
        );
    }

    fn trim(&mut self) {
        while self.buffer.len() > MAX_BUFFERED {
            self.buffer.pop_front();
            self.metrics.monitors.rows_dropped.inc();
        }
    }

    fn notify_drained(&mut self) {
        if self.buffer.is_empty() && !self.writing {
            for w in self.drain_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

impl Actor for CheckWriter {
    type Context = Context<Self>;
}

impl SupervisedActor for CheckWriter {
    const KIND: &'static str = "CheckWriter";
    const MAILBOX: usize = MAILBOX;
}

impl Handler<Record> for CheckWriter {
    type Result = ();

    fn handle(&mut self, msg: Record, ctx: &mut Context<Self>) {
        self.buffer.push_back((msg.0, Instant::now()));
        self.trim();
        self.consider(ctx);
    }
}

impl Handler<Drain> for CheckWriter {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        let (tx, rx) = oneshot::channel();
        self.drain_waiters.push(tx);
        self.consider(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// Starts the CheckWriter under `supervisor` on `arbiter`. The ShardManager sends it [`Drain`]
/// at shutdown, once the MonitorActors have stopped (so their last rows are in).
pub fn start(
    supervisor: &Supervisor,
    arbiter: &ArbiterHandle,
    settings: Arc<MonitorSettings>,
    pool: PgPool,
    metrics: Metrics,
) -> Supervised<CheckWriter> {
    supervisor.spawn("check-writer", arbiter, move |lifeline| CheckWriter {
        _lifeline: lifeline,
        settings: settings.clone(),
        pool: pool.clone(),
        metrics: metrics.clone(),
        buffer: VecDeque::new(),
        writing: false,
        timer_armed: false,
        failures: 0,
        draining: false,
        drain_waiters: Vec::new(),
    })
}
