//! IngestActor: one per project, buffering accepted items and writing them with group commit.
//!
//! **Owns:** the project's buffer: validated requests waiting for, or in, a flush, each with
//! the channel its HTTP request waits on. A flush takes whole requests from the front of the
//! buffer (at most `ingest.flush_max_items` items) and hands them to
//! [`observe_core::store::ingest::write`]: one transaction, one COPY per raw table, one commit,
//! shared by every request in it. Only after the commit does each request hear `Stored` (or
//! `OverQuota`, when its organisation's monthly cap had no room): with `ingest.ack = "commit"`
//! a 202 means committed. With `"enqueue"`, requests are answered when buffered.
//!
//! **When it flushes:** when the buffer holds `ingest.flush_items` items, when its oldest item
//! has waited `ingest.flush_interval_ms`, and right after a flush if the buffer meanwhile
//! filled up. One flush runs at a time, so requests arriving during a flush gather into the
//! next one: the busier the project, the bigger the batches.
//!
//! **Backpressure:** the mailbox holds [`MAILBOX`] messages and routes `try_send` into it (full:
//! 503). The buffer holds `ingest.buffer_items` items; a request that does not fit is answered
//! `BufferFull` (503) at once. Nothing queues without bound.
//!
//! **Database trouble:** a failed flush puts its requests back at the front of the buffer and
//! is retried with backoff (50 ms doubling to 2 s). When the connection broke while COMMIT was
//! in flight, the flush may have committed: before anything is retried, the transaction's id is
//! looked up (`txid_status`) once the database answers, and if it committed, its requests are
//! answered from the verdicts it committed instead of being written twice. A request waits at most
//! `ingest.retry_deadline_ms` from its arrival; past that it is answered `Unavailable` (503 with
//! `Retry-After`) and dropped from the buffer, nothing of it stored. One warning per outage.
//!
//! **Lifecycle:** started on demand by [`IngestRegistry`] for a project's first request;
//! after `ingest.idle_stop_secs` with an empty buffer it removes itself from the registry and
//! stops for good ([`Lifeline::finish`]). A panic restarts it under the supervisor with an
//! empty buffer: the requests it held hear nothing, their channels close, and they are
//! answered 503: nothing acknowledged is lost.
//!
//! **Drain:** [`Drain`] (at shutdown, after the HTTP server stopped) flushes everything without
//! waiting for size or age, retrying while requests' deadlines allow, and replies once the
//! buffer is empty.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, NaiveDate, Utc};
use observe_core::config::{Ack, IngestSettings, Limit};
use observe_core::db::PgPool;
use observe_core::ingest::{Category, Items};
use observe_core::metrics::Metrics;
use observe_core::store::ingest::{self as store, Request, Verdict, WriteError};
use observe_core::store::StoreError;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::supervisor::{Drain, Lifeline, Supervised, SupervisedActor, Supervisor};

/// Mailbox capacity of one IngestActor. Handling a message only moves it into the buffer, so
/// the mailbox fills only when the actor's thread is starved.
pub const MAILBOX: usize = 1024;

/// First retry delay after a failed flush; doubles up to [`RETRY_MAX`].
const RETRY_BASE: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What a request hears back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its items are committed (or, with `ack = "enqueue"`, buffered); the count sent.
    Stored(usize),
    /// The organisation's monthly cap for the category has no room for it.
    OverQuota,
    /// The database stayed unavailable past the request's deadline.
    Unavailable,
    /// The project's buffer has no room for it.
    BufferFull,
    /// The project was deleted while the request waited: nothing of it was stored.
    ProjectGone,
}

/// One request's validated items for the project's buffer.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Ingest {
    pub items: Items,
    pub received_at: DateTime<Utc>,
    /// The organisation's monthly cap for the items' category.
    pub cap: Limit,
    pub reply: oneshot::Sender<Outcome>,
}

/// A buffered request.
struct Pending {
    items: Items,
    received_at: DateTime<Utc>,
    cap: Limit,
    /// `None` once answered (`ack = "enqueue"` answers on arrival).
    reply: Option<oneshot::Sender<Outcome>>,
    arrived: Instant,
    /// This actor's number for the request, to find it again after an uncertain commit.
    seq: u64,
}

/// A flush whose COMMIT was interrupted: it may have committed.
struct Uncertain {
    txid: i64,
    month: NaiveDate,
    /// Its requests (by `seq`, in order) and what the transaction decided for each.
    verdicts: Vec<(u64, Verdict)>,
}

impl Pending {
    fn answer(&mut self, outcome: Outcome) {
        if let Some(reply) = self.reply.take() {
            // The request may have gone (client disconnected): nothing to do then.
            let _ = reply.send(outcome);
        }
    }
}

/// Months whose cap an organisation has reached, so routes can answer 429 without a flush.
/// Entries are hints that expire: the usage row in PostgreSQL decides.
#[derive(Clone, Default)]
pub struct QuotaHints(Arc<Mutex<HashMap<(Uuid, Category), ReachedAt>>>);

/// The month whose cap was reached, and when that was seen.
type ReachedAt = (NaiveDate, Instant);

/// How long a "cap reached" hint is trusted (an upgrade takes effect within it).
const QUOTA_HINT_TTL: Duration = Duration::from_secs(30);

impl QuotaHints {
    pub fn exhausted(&self, organisation_id: Uuid, category: Category, month: NaiveDate) -> bool {
        let hints = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(hints.get(&(organisation_id, category)),
            Some((m, at)) if *m == month && at.elapsed() < QUOTA_HINT_TTL)
    }

    fn note(&self, organisation_id: Uuid, category: Category, month: NaiveDate) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((organisation_id, category), (month, Instant::now()));
    }
}

pub struct IngestActor {
    lifeline: Lifeline,
    project_id: Uuid,
    organisation_id: Uuid,
    /// Which registry entry is this actor's (a later actor for the project gets a new one).
    generation: u64,
    registry: IngestRegistry,
    settings: Arc<IngestSettings>,
    pool: PgPool,
    metrics: Metrics,
    buffer: VecDeque<Pending>,
    buffered_items: usize,
    flushing: bool,
    /// A timer will look at the buffer again (age trigger or retry).
    timer_armed: bool,
    /// Flushes failed in a row (0: healthy).
    failures: u32,
    /// The last failed flush, if its commit outcome is unknown.
    uncertain: Option<Uncertain>,
    next_seq: u64,
    last_activity: Instant,
    draining: bool,
    drain_waiters: Vec<oneshot::Sender<()>>,
    /// The project was deleted: stop once the flush in flight (if any) ends.
    stopping: bool,
}

impl IngestActor {
    fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.settings.flush_interval_ms)
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.settings.retry_deadline_ms)
    }

    /// Flushes if the buffer is due, else makes sure a timer looks again when it will be.
    fn consider_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.buffer.is_empty() {
            self.notify_drained();
            return;
        }
        if self.failures > 0 {
            // A retry is scheduled; it flushes.
            return;
        }
        let age = self
            .buffer
            .front()
            .map(|p| p.arrived.elapsed())
            .unwrap_or_default();
        if self.draining
            || self.buffered_items >= self.settings.flush_items
            || age >= self.flush_interval()
        {
            self.flush(ctx);
        } else if !self.timer_armed {
            self.timer_armed = true;
            ctx.run_later(self.flush_interval() - age, |act, ctx| {
                act.timer_armed = false;
                act.consider_flush(ctx);
            });
        }
    }

    /// Starts a flush of whole requests from the front of the buffer.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let mut batch = Vec::new();
        let mut items = 0;
        while let Some(front) = self.buffer.front() {
            let n = front.items.len();
            if !batch.is_empty() && items + n > self.settings.flush_max_items {
                break;
            }
            items += n;
            if let Some(p) = self.buffer.pop_front() {
                batch.push(p);
            }
        }
        if batch.is_empty() {
            return;
        }
        self.flushing = true;
        let (pool, project_id, organisation_id) =
            (self.pool.clone(), self.project_id, self.organisation_id);
        let started = Instant::now();
        let write = async move {
            let month = store::month_of(Utc::now());
            let result = async {
                let mut client = pool.get().await.map_err(StoreError::from)?;
                let requests: Vec<Request<'_>> = batch
                    .iter()
                    .map(|p| Request {
                        received_at: p.received_at,
                        items: &p.items,
                        cap: p.cap,
                    })
                    .collect();
                store::write(&mut client, project_id, organisation_id, month, &requests).await
            }
            .await;
            (batch, items, month, result)
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(write).map(
            move |(batch, items, month, result), act, ctx| {
                act.flushing = false;
                match result {
                    Ok((verdicts, _written)) => {
                        act.metrics
                            .ingest
                            .flush_seconds
                            .observe(started.elapsed().as_secs_f64());
                        act.metrics.ingest.batch_items.observe(items as f64);
                        act.flushed(batch, &verdicts, month);
                    }
                    Err(WriteError::Failed(e)) => act.flush_failed(batch, e, ctx),
                    Err(WriteError::Uncertain {
                        txid,
                        verdicts,
                        error,
                    }) => {
                        act.uncertain = Some(Uncertain {
                            txid,
                            month,
                            verdicts: batch.iter().map(|p| p.seq).zip(verdicts).collect(),
                        });
                        act.flush_failed(batch, error, ctx);
                    }
                }
                if act.stopping {
                    act.stop_for_deleted_project(ctx);
                    return;
                }
                act.consider_flush(ctx);
            },
        ));
    }

    fn flushed(&mut self, batch: Vec<Pending>, verdicts: &[Verdict], month: NaiveDate) {
        if self.failures > 0 {
            tracing::info!(
                actor = Self::KIND,
                project_id = %self.project_id,
                failed_flushes = self.failures,
                "ingest flushes succeed again"
            );
            self.failures = 0;
        }
        for (mut pending, verdict) in batch.into_iter().zip(verdicts) {
            let n = pending.items.len();
            let kind = pending.items.kind();
            self.buffered_items -= n;
            self.metrics.ingest.buffer_items.sub(n as i64);
            match verdict {
                Verdict::Stored => {
                    self.metrics.ingest.accepted(kind.as_str(), n);
                    pending.answer(Outcome::Stored(n));
                }
                Verdict::OverQuota => {
                    self.registry
                        .quota
                        .note(self.organisation_id, kind.category(), month);
                    self.metrics
                        .ingest
                        .rejected(kind.as_str(), "quota_exceeded", n);
                    if pending.reply.is_none() {
                        // Acknowledged on arrival (`ack = "enqueue"`), dropped now.
                        tracing::warn!(
                            project_id = %self.project_id,
                            kind = kind.as_str(),
                            items = n,
                            "monthly quota reached: enqueued items dropped"
                        );
                    }
                    pending.answer(Outcome::OverQuota);
                }
            }
        }
    }

    fn flush_failed(&mut self, batch: Vec<Pending>, error: StoreError, ctx: &mut Context<Self>) {
        self.failures += 1;
        if self.failures == 1 {
            tracing::warn!(
                actor = Self::KIND,
                project_id = %self.project_id,
                error = %error,
                "ingest flush failed; retrying while requests can wait"
            );
        }
        // Back to the front, in their order, for the retry.
        for pending in batch.into_iter().rev() {
            self.buffer.push_front(pending);
        }
        self.expire_overdue();
        self.schedule_retry(ctx);
    }

    fn schedule_retry(&mut self, ctx: &mut Context<Self>) {
        let delay = RETRY_BASE
            .saturating_mul(1 << self.failures.min(8))
            .min(RETRY_MAX);
        ctx.run_later(delay, |act, ctx| {
            act.expire_overdue();
            if act.flushing {
                return;
            }
            if act.uncertain.is_some() {
                act.resolve_uncertain(ctx);
            } else if !act.buffer.is_empty() {
                act.flush(ctx);
            } else {
                // Nothing left to retry: start afresh with the next request.
                act.failures = 0;
                act.consider_flush(ctx);
            }
        });
    }

    /// Asks PostgreSQL whether the uncertain flush committed: if so its requests are answered
    /// from its verdicts; if not, they are flushed again; if it cannot tell yet, later.
    fn resolve_uncertain(&mut self, ctx: &mut Context<Self>) {
        let Some(txid) = self.uncertain.as_ref().map(|u| u.txid) else {
            return;
        };
        self.flushing = true;
        let pool = self.pool.clone();
        let ask = async move {
            let client = pool.get().await.map_err(StoreError::from)?;
            store::committed(&client, txid).await
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(ask).map(|answer, act, ctx| {
                act.flushing = false;
                match answer {
                    Ok(Some(true)) => {
                        if let Some(uncertain) = act.uncertain.take() {
                            act.answer_committed(uncertain);
                        }
                        act.consider_flush(ctx);
                    }
                    Ok(Some(false)) => {
                        act.uncertain = None;
                        act.flush(ctx);
                    }
                    Ok(None) | Err(_) => {
                        act.failures += 1;
                        act.schedule_retry(ctx);
                    }
                }
            }),
        );
    }

    /// The uncertain flush did commit: its requests still waiting get their verdicts.
    fn answer_committed(&mut self, uncertain: Uncertain) {
        let verdict_of: HashMap<u64, Verdict> = uncertain.verdicts.into_iter().collect();
        let mut batch = Vec::new();
        let mut verdicts = Vec::new();
        let mut kept = VecDeque::with_capacity(self.buffer.len());
        for pending in self.buffer.drain(..) {
            match verdict_of.get(&pending.seq) {
                Some(verdict) => {
                    verdicts.push(*verdict);
                    batch.push(pending);
                }
                None => kept.push_back(pending),
            }
        }
        self.buffer = kept;
        tracing::info!(
            actor = Self::KIND,
            project_id = %self.project_id,
            requests = batch.len(),
            "an interrupted commit had committed: its requests are answered, not written again"
        );
        self.flushed(batch, &verdicts, uncertain.month);
    }

    /// Answers `Unavailable` to buffered requests past their deadline, and drops them.
    fn expire_overdue(&mut self) {
        let deadline = self.deadline();
        let mut kept = VecDeque::with_capacity(self.buffer.len());
        for mut pending in self.buffer.drain(..) {
            if pending.arrived.elapsed() < deadline {
                kept.push_back(pending);
                continue;
            }
            let n = pending.items.len();
            self.buffered_items -= n;
            self.metrics.ingest.buffer_items.sub(n as i64);
            self.metrics
                .ingest
                .rejected(pending.items.kind().as_str(), "unavailable", n);
            if pending.reply.is_none() {
                tracing::error!(
                    project_id = %self.project_id,
                    items = n,
                    "database unavailable past the deadline: enqueued items dropped"
                );
            }
            pending.answer(Outcome::Unavailable);
        }
        self.buffer = kept;
    }

    fn notify_drained(&mut self) {
        if self.buffer.is_empty() && !self.flushing {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// The project is gone: every buffered request hears so, and the actor stops for good as
    /// soon as no flush is in flight (a flush already sent commits or fails on its own).
    fn stop_for_deleted_project(&mut self, ctx: &mut Context<Self>) {
        self.stopping = true;
        for mut pending in self.buffer.drain(..) {
            let n = pending.items.len();
            self.buffered_items -= n;
            self.metrics.ingest.buffer_items.sub(n as i64);
            pending.answer(Outcome::ProjectGone);
        }
        self.uncertain = None;
        if !self.flushing {
            self.registry.forget(self.project_id, self.generation);
            self.lifeline.finish();
            self.notify_drained();
            ctx.stop();
        }
    }

    fn stop_if_idle(&mut self, ctx: &mut Context<Self>) {
        let idle = Duration::from_secs(self.settings.idle_stop_secs);
        if self.buffer.is_empty()
            && !self.flushing
            && !self.draining
            && self.last_activity.elapsed() >= idle
        {
            self.registry.forget(self.project_id, self.generation);
            self.lifeline.finish();
            ctx.stop();
        }
    }
}

impl Actor for IngestActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.metrics.ingest.actors.inc();
        let every = Duration::from_secs(self.settings.idle_stop_secs.clamp(1, 10));
        ctx.run_interval(every, |act, ctx| act.stop_if_idle(ctx));
    }
}

impl Drop for IngestActor {
    // Not `stopped()`: a panicking actor is dropped without it.
    fn drop(&mut self) {
        self.metrics.ingest.actors.dec();
        self.metrics
            .ingest
            .buffer_items
            .sub(self.buffered_items as i64);
    }
}

impl SupervisedActor for IngestActor {
    const KIND: &'static str = "IngestActor";
    const MAILBOX: usize = MAILBOX;
}

impl Handler<Ingest> for IngestActor {
    type Result = ();

    fn handle(&mut self, msg: Ingest, ctx: &mut Context<Self>) {
        self.last_activity = Instant::now();
        let n = msg.items.len();
        if self.buffered_items + n > self.settings.buffer_items {
            self.metrics
                .ingest
                .rejected(msg.items.kind().as_str(), "buffer_full", n);
            let _ = msg.reply.send(Outcome::BufferFull);
            return;
        }
        let mut pending = Pending {
            items: msg.items,
            received_at: msg.received_at,
            cap: msg.cap,
            reply: Some(msg.reply),
            arrived: Instant::now(),
            seq: self.next_seq,
        };
        self.next_seq += 1;
        if self.settings.ack == Ack::Enqueue {
            pending.answer(Outcome::Stored(n));
        }
        self.buffered_items += n;
        self.metrics.ingest.buffer_items.add(n as i64);
        self.buffer.push_back(pending);
        self.consider_flush(ctx);
    }
}

/// The project was deleted: answer what is buffered and stop (see
/// [`IngestRegistry::stop_project`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct StopProject;

impl Handler<StopProject> for IngestActor {
    type Result = ();

    fn handle(&mut self, _: StopProject, ctx: &mut Context<Self>) {
        self.stop_for_deleted_project(ctx);
    }
}

impl Handler<Drain> for IngestActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        let (tx, rx) = oneshot::channel();
        self.drain_waiters.push(tx);
        self.consider_flush(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// Sending to a project's IngestActor failed; the request was not buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// The actor's mailbox is full.
    MailboxFull,
    /// No actor could take it (restarting after a failure).
    NoActor,
}

struct Entry {
    generation: u64,
    handle: Supervised<IngestActor>,
}

/// The running IngestActors of this instance, by project; starts them on demand.
#[derive(Clone)]
pub struct IngestRegistry {
    actors: Arc<Mutex<HashMap<Uuid, Entry>>>,
    next_generation: Arc<std::sync::atomic::AtomicU64>,
    supervisor: Supervisor,
    arbiter: ArbiterHandle,
    settings: Arc<IngestSettings>,
    pool: PgPool,
    metrics: Metrics,
    /// Caps known to be reached this month.
    pub quota: QuotaHints,
}

impl IngestRegistry {
    /// IngestActors will run on `arbiter`, under `supervisor`, drained at shutdown.
    pub fn new(
        supervisor: Supervisor,
        arbiter: ArbiterHandle,
        settings: Arc<IngestSettings>,
        pool: PgPool,
        metrics: Metrics,
    ) -> Self {
        Self {
            actors: Arc::default(),
            next_generation: Arc::default(),
            supervisor,
            arbiter,
            settings,
            pool,
            metrics,
            quota: QuotaHints::default(),
        }
    }

    /// Hands `msg` to the project's IngestActor, starting one if none runs. Never waits for
    /// mailbox room: a full mailbox is [`SendFailure::MailboxFull`].
    pub async fn send(
        &self,
        project_id: Uuid,
        organisation_id: Uuid,
        mut msg: Ingest,
    ) -> Result<(), SendFailure> {
        // A closed mailbox means the actor just stopped: idle (it left the registry, so the
        // next lookup starts a fresh one) or failed (the supervisor restarts it shortly).
        for attempt in 0..5u32 {
            let addr = self.addr(project_id, organisation_id);
            match addr.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(SendError::Full(_)) => return Err(SendFailure::MailboxFull),
                Err(SendError::Closed(back)) => {
                    msg = back;
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                }
            }
        }
        Err(SendFailure::NoActor)
    }

    fn addr(&self, project_id: Uuid, organisation_id: Uuid) -> Addr<IngestActor> {
        let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = actors.get(&project_id) {
            if !entry.handle.finished() {
                return entry.handle.addr();
            }
        }
        let generation = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let registry = self.clone();
        let handle = self.supervisor.spawn_drainable(
            format!("ingest:{project_id}"),
            &self.arbiter,
            move |lifeline| IngestActor {
                lifeline,
                project_id,
                organisation_id,
                generation,
                registry: registry.clone(),
                settings: registry.settings.clone(),
                pool: registry.pool.clone(),
                metrics: registry.metrics.clone(),
                buffer: VecDeque::new(),
                buffered_items: 0,
                flushing: false,
                timer_armed: false,
                failures: 0,
                uncertain: None,
                next_seq: 0,
                last_activity: Instant::now(),
                draining: false,
                drain_waiters: Vec::new(),
                stopping: false,
            },
        );
        let addr = handle.addr();
        actors.insert(project_id, Entry { generation, handle });
        addr
    }

    /// Removes the project's entry if it is still `generation`'s (an idle actor leaving).
    fn forget(&self, project_id: Uuid, generation: u64) {
        let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        if actors
            .get(&project_id)
            .is_some_and(|e| e.generation == generation)
        {
            actors.remove(&project_id);
        }
    }

    /// Stops the project's IngestActor on this instance, if one runs: its buffered requests
    /// are answered [`Outcome::ProjectGone`] at once (nothing of them is stored). For a
    /// deleted project; a later request would start a fresh actor, but a deleted project's
    /// keys no longer authenticate.
    pub fn stop_project(&self, project_id: Uuid) {
        let entry = self
            .actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&project_id);
        if let Some(entry) = entry {
            // `do_send`: a control message must arrive even when the mailbox is full.
            entry.handle.addr().do_send(StopProject);
        }
    }

    /// IngestActors running now.
    pub fn running(&self) -> usize {
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
