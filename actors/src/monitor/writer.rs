//! CheckWriter: one per instance, writing the MonitorActors' check rows in batches.
//!
//! **Owns:** a buffer of check rows. The batching policy — a write when the buffer holds
//! `monitors.write_batch_rows` rows or its oldest row has waited `monitors.write_interval_ms`,
//! one write at a time, backoff after a failure — is [`observe_core::batch::Batcher`]'s, the
//! same plain type the IngestActors use; this actor keeps only its timers and futures.
//!
//! **Backpressure, never loss:** MonitorActors hand rows over through a [`CheckSink`], which
//! holds `monitors.writer_buffer_rows` places. A row takes a place before it is sent and gives
//! it back once it is written, so the buffer can never outgrow its bound; when every place is
//! taken (PostgreSQL away for minutes), a MonitorActor waits for one before its check counts
//! as done, and its next check waits with it. Rows do not expire: a failed write is retried
//! (100 ms doubling to 5 s) until it succeeds. Check rows are history; the state that restarts
//! depend on (streaks, incidents) is written by the MonitorActors at once, not here.
//!
//! **Mailbox:** [`MAILBOX`]; senders wait for room (`send`), never drop.
//!
//! **Restart:** a panic loses the rows buffered at that moment (their places are given back);
//! the supervisor restarts the writer with backoff.
//!
//! **Drain:** [`Drain`] at shutdown writes everything buffered (retrying while the shutdown
//! budget lasts) and replies once the buffer is empty.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use observe_core::batch::{Backoff, Batcher, Due, Entry, Policy, Weigh};
use observe_core::config::MonitorSettings;
use observe_core::db::PgPool;
use observe_core::metrics::Metrics;
use observe_core::store::monitor_runs::{self as store, CheckRow};
use observe_core::store::StoreError;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::supervisor::{Drain, Lifeline, Supervised, SupervisedActor, Supervisor};
use crate::wake::Wakes;

/// Mailbox capacity of the CheckWriter: at least as many as the sink's places, so a row that
/// holds a place always finds mailbox room (`monitors.writer_buffer_rows` is capped to it).
pub const MAILBOX: usize = 262_144;
const BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_secs(5),
};
/// Attempts to hand a row to a writer that is restarting before it is given up (logged and
/// counted): about a second, while the supervisor's first restarts take 100–400 ms.
const HANDOFF_ATTEMPTS: u64 = 10;

/// One check's row, with the place it holds in the writer's buffer.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Record {
    pub row: CheckRow,
    _place: OwnedSemaphorePermit,
}

impl Weigh for Record {
    fn items(&self) -> usize {
        1
    }

    fn bytes(&self) -> usize {
        std::mem::size_of::<CheckRow>() + self.row.error.as_ref().map_or(0, String::len)
    }
}

/// How MonitorActors hand their rows to the CheckWriter: waiting for a place when the buffer
/// is full, instead of dropping the row.
#[derive(Clone)]
pub struct CheckSink {
    writer: Supervised<CheckWriter>,
    places: Arc<Semaphore>,
    metrics: Metrics,
}

impl CheckSink {
    /// Hands `row` over once the buffer has a place for it.
    pub async fn put(&self, row: CheckRow) {
        let Ok(place) = self.places.clone().acquire_owned().await else {
            return; // Never closed.
        };
        let mut record = Record { row, _place: place };
        for attempt in 1..=HANDOFF_ATTEMPTS {
            match self.writer.try_send(record) {
                Ok(()) => return,
                // Restarting (closed), or squeezed by control messages (full): try again.
                Err(SendError::Closed(back) | SendError::Full(back)) => record = back,
            }
            tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
        }
        self.metrics.monitors.rows_dropped.inc();
        tracing::error!(
            actor = CheckWriter::KIND,
            monitor_id = %record.row.monitor_id,
            "the CheckWriter stayed away: a check row was dropped"
        );
    }

    /// Places free now (for tests and gauges).
    pub fn free_places(&self) -> usize {
        self.places.available_permits()
    }
}

pub struct CheckWriter {
    lifeline: Lifeline,
    pool: PgPool,
    batcher: Batcher<Record>,
    wake_at: Option<Instant>,
    drain_waiters: Vec<oneshot::Sender<()>>,
}

/// The batching policy of `settings`: no deadline (rows wait for the database, the sink's
/// places bound them).
fn policy(settings: &MonitorSettings) -> Policy {
    Policy {
        flush_items: settings.write_batch_rows.max(1),
        max_wait: Duration::from_millis(settings.write_interval_ms),
        max_batch_items: settings.write_batch_rows.max(1) * 4,
        capacity_items: usize::MAX,
        capacity_bytes: usize::MAX,
        backoff: BACKOFF,
        deadline: None,
    }
}

impl CheckWriter {
    fn look(&mut self, ctx: &mut Context<Self>) {
        match self.batcher.due(Instant::now()) {
            Due::Now => self.write(ctx),
            Due::At(at) => self.wake(ctx, at),
            Due::Idle => {}
        }
        if self.batcher.drained() {
            for w in self.drain_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn write(&mut self, ctx: &mut Context<Self>) {
        let batch = self.batcher.take();
        if batch.is_empty() {
            return;
        }
        let pool = self.pool.clone();
        let fut = async move {
            let result = write_rows(&pool, &batch).await;
            (batch, result)
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(fut).map(|(batch, result), act, ctx| {
                act.written(batch, result);
                act.tick(ctx);
            }),
        );
    }

    fn written(&mut self, batch: Vec<Entry<Record>>, result: Result<u64, StoreError>) {
        match result {
            Ok(_) => {
                if self.batcher.failures() > 0 {
                    tracing::info!(actor = CheckWriter::KIND, "check rows written again");
                }
                // The batch is dropped here: its rows' places go back to the sink.
                self.batcher.done();
            }
            Err(e) => {
                if self.batcher.failures() == 0 {
                    tracing::warn!(
                        actor = CheckWriter::KIND,
                        error = %e,
                        rows = batch.len(),
                        "writing check rows failed; retrying"
                    );
                }
                self.batcher.failed(batch, Instant::now());
            }
        }
    }
}

/// Writes a batch with one statement. Should PostgreSQL refuse a row for what it holds (it
/// would on every retry, and with no deadline the writer would retry it forever while every
/// monitor waits), the rows are written one by one and only the refused ones are dropped,
/// logged and counted.
async fn write_rows(pool: &PgPool, batch: &[Entry<Record>]) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    let rows: Vec<CheckRow> = batch.iter().map(|e| e.value.row.clone()).collect();
    match store::write_checks(&client, &rows).await {
        Err(e) if e.refusal().is_some() => {
            let mut written = 0;
            for row in rows {
                match store::write_checks(&client, std::slice::from_ref(&row)).await {
                    Ok(n) => written += n,
                    Err(e) => match e.refusal() {
                        Some((_, sqlstate)) => tracing::error!(
                            actor = CheckWriter::KIND,
                            monitor_id = %row.monitor_id,
                            sqlstate = %sqlstate,
                            "PostgreSQL refused a check row: it is dropped"
                        ),
                        None => return Err(e),
                    },
                }
            }
            Ok(written)
        }
        other => other,
    }
}

impl Wakes for CheckWriter {
    fn wake_slot(&mut self) -> &mut Option<Instant> {
        &mut self.wake_at
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.look(ctx);
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
        self.lifeline.took();
        // The policy has no capacity of its own (the sink's places are the bound).
        if self.batcher.push(msg, Instant::now()).is_ok() {
            self.tick(ctx);
        }
    }
}

impl Handler<Drain> for CheckWriter {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        self.batcher.drain();
        let (tx, rx) = oneshot::channel();
        self.drain_waiters.push(tx);
        self.tick(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// Starts the CheckWriter under `supervisor` on `arbiter`, and the sink MonitorActors hand
/// their rows to. The ShardManager sends the writer [`Drain`] at shutdown, once the
/// MonitorActors have stopped (so their last rows are in).
pub fn start(
    supervisor: &Supervisor,
    arbiter: &ArbiterHandle,
    settings: Arc<MonitorSettings>,
    pool: PgPool,
    metrics: Metrics,
) -> (Supervised<CheckWriter>, CheckSink) {
    let places = settings.writer_buffer_rows.clamp(1, MAILBOX);
    let writer = supervisor.spawn("check-writer", arbiter, {
        let settings = settings.clone();
        move |lifeline| CheckWriter {
            lifeline,
            batcher: Batcher::new(policy(&settings)),
            pool: pool.clone(),
            wake_at: None,
            drain_waiters: Vec::new(),
        }
    });
    let sink = CheckSink {
        writer: writer.clone(),
        places: Arc::new(Semaphore::new(places)),
        metrics,
    };
    (writer, sink)
}
