//! IngestActor: one per project, buffering accepted items and writing them with group commit.
//!
//! **Owns:** the project's buffer: validated requests waiting for, or in, a flush, each with
//! the channel its HTTP request waits on. The policy — when a flush is due, how big it is, how
//! failures back off, when a request has waited too long, how much may be held — is
//! [`observe_core::batch::Batcher`]'s, a plain type tested without actix; this actor keeps
//! only its timers and futures. A flush takes whole requests from the front of the buffer and
//! hands them to [`observe_core::store::ingest::flush`]: one transaction, one COPY per raw
//! table, one commit, shared by every request in it. Only after the commit does each request
//! hear `Stored` (or `OverQuota`, when its organisation's monthly cap had no room): with
//! `ingest.ack = "commit"` a 202 means committed. With `"enqueue"`, requests are answered
//! when buffered.
//!
//! **When it flushes:** when the buffer holds `ingest.flush_items` items, when its oldest item
//! has waited `ingest.flush_interval_ms`, and right after a flush if the buffer meanwhile
//! filled up. One flush runs at a time, so requests arriving during a flush gather into the
//! next one: the busier the project, the bigger the batches.
//!
//! **Backpressure:** the mailbox holds [`MAILBOX`] messages and routes `try_send` into it (full:
//! 503). The buffer holds `ingest.buffer_items` items and `ingest.buffer_bytes` bytes of
//! bodies; a request that does not fit is answered `BufferFull` (503) at once. Nothing queues
//! without bound.
//!
//! **One bad request never holds the others:** when PostgreSQL refuses a request's data
//! (SQLSTATE class 22, 23 or 54: it would refuse it on every retry) the flush isolates it by
//! halving the batch, answers it `Refused` (422 or 500) and commits the rest at once.
//!
//! **Database trouble:** a flush attempt is bounded by `ingest.flush_timeout_ms` (a silent
//! connection never errors by itself). What it could not write goes back to the front of the
//! buffer and is retried with backoff (50 ms doubling to 2 s) through a fresh connection; a
//! transaction it left open on the server is ended first (`pg_terminate_backend`), so its row
//! locks cannot hold the retry back. A request waits at most `ingest.retry_deadline_ms` from
//! its arrival; past that it is answered `Unavailable` (503 with `Retry-After`), nothing of it
//! stored. One warning per outage.
//!
//! **Uncertain commits:** when the connection broke while COMMIT was in flight, the flush may
//! have committed, so its requests are never answered `Unavailable`. The transaction is looked
//! up (`txid_status`) until PostgreSQL answers — and ended if it is still open, so the answer
//! becomes final — each look bounded by the flush timeout; if it committed its requests get
//! their verdicts, if not they are written again. No other flush starts meanwhile (they would
//! race the uncertain one). If PostgreSQL stays away for `ingest.outcome_deadline_ms`, they
//! are answered `OutcomeUnknown` (503 `outcome_unknown`), never "nothing was stored".
//!
//! **Lifecycle:** started on demand by [`IngestRegistry`] for a project's first request;
//! after `ingest.idle_stop_secs` with an empty buffer it removes itself from the registry and
//! stops for good ([`Lifeline::finish`]). [`IngestRegistry::stop_project`] stops it at once
//! for a deleted project. A panic restarts it under the supervisor with an empty buffer: the
//! requests it held hear nothing, their channels close, and they are answered 503: nothing
//! acknowledged is lost.
//!
//! **Drain:** [`Drain`] (at shutdown, after the HTTP server stopped) flushes everything without
//! waiting for size or age, retrying while requests' deadlines allow, and replies once the
//! buffer is empty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, NaiveDate, Utc};
use observe_core::batch::{
    Backoff, Batcher, ByteBudget, Due, Entry, Full, Policy, Reservation, Weigh,
};
use observe_core::config::{Ack, IngestSettings, Limit};
use observe_core::db::PgPool;
use observe_core::ingest::{Category, Items};
use observe_core::metrics::{Metrics, BUFFER_STATES};
use observe_core::store::ingest::{
    self as store, Backend, Fate, FlushReport, Job, Request, Settled, Verdict,
};
use observe_core::store::Refusal;
use observe_core::trace::Parent;
use prometheus::IntGauge;
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use crate::supervisor::{Drain, Lifeline, Supervised, SupervisedActor, Supervisor};
use crate::wake::Wakes;

/// Mailbox capacity of one IngestActor. Handling a message only moves it into the buffer, so
/// the mailbox fills only when the actor's thread is starved.
pub const MAILBOX: usize = 1024;

/// Backoff between failed flushes, and between looks at an uncertain commit.
const BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(50),
    max: Duration::from_secs(2),
};

/// What a request hears back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its items are committed (or, with `ack = "enqueue"`, buffered); the count sent.
    Stored(usize),
    /// The organisation's monthly cap for the category has no room for it.
    OverQuota,
    /// The database stayed unavailable past the request's deadline: nothing of it stored.
    Unavailable,
    /// The project's buffer has no room for it.
    BufferFull,
    /// The project was deleted while the request waited: nothing of it was stored.
    ProjectGone,
    /// PostgreSQL refused its data; nothing of it was stored, and a retry would be refused too.
    Refused { refusal: Refusal, sqlstate: String },
    /// Its COMMIT was sent but PostgreSQL never said whether it happened: it may be stored.
    OutcomeUnknown,
}

/// One request's validated items for the project's buffer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ingest {
    pub items: Items,
    pub received_at: DateTime<Utc>,
    /// The organisation's monthly cap for the items' category.
    pub cap: Limit,
    /// Its body's bytes, taken from the process-wide budget; held while it is buffered.
    pub reservation: Reservation,
    pub reply: oneshot::Sender<Outcome>,
    /// The request's place in its trace: the flush that commits it is its child or links to it.
    pub trace: Parent,
}

/// A buffered request.
struct Pending {
    items: Items,
    received_at: DateTime<Utc>,
    cap: Limit,
    /// `None` once answered (`ack = "enqueue"` answers on arrival).
    reply: Option<oneshot::Sender<Outcome>>,
    /// This actor's number for the request: its place in the order of arrival.
    seq: u64,
    reservation: Reservation,
    trace: Parent,
}

impl Weigh for Pending {
    fn items(&self) -> usize {
        self.items.len()
    }

    fn bytes(&self) -> usize {
        self.reservation.bytes()
    }
}

impl Pending {
    fn answer(&mut self, outcome: Outcome) {
        if let Some(reply) = self.reply.take() {
            // The request may have gone (client disconnected): nothing to do then.
            let _ = reply.send(outcome);
        }
    }
}

/// A flush whose COMMIT answer was lost: it may have committed.
struct Uncertain {
    backend: Backend,
    /// When its outcome became unknown (the hard bound counts from here).
    since: Instant,
    /// Its requests, with what the transaction decided for each if it committed.
    entries: Vec<(Entry<Pending>, Verdict)>,
    /// Requests of the same flush that were not written (the flush stopped at the lost
    /// connection): written again once this one is settled.
    unwritten: Vec<Entry<Pending>>,
    /// Items and bytes it holds (kept current as `unwritten` shrinks).
    weight: (usize, usize),
    /// Looks at the transaction so far, and when the next may start.
    looks: u32,
    next_look: Instant,
    /// A look is running.
    looking: bool,
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
    batcher: Batcher<Pending>,
    /// The earliest instant a timer will look at the buffer again, if one is set.
    wake_at: Option<Instant>,
    /// A timer will look at the buffer when its oldest request reaches its deadline.
    expiry_armed: bool,
    /// The last flush whose commit outcome is unknown, until it is settled.
    uncertain: Option<Uncertain>,
    /// A transaction an earlier flush left open on the server: ended before the next write.
    abandoned: Option<Backend>,
    next_seq: u64,
    last_activity: Instant,
    drain_waiters: Vec<oneshot::Sender<()>>,
    /// The project was deleted: stop once the flush in flight (if any) ends.
    stopping: bool,
    /// The buffer gauges (items, bytes) of each of [`BUFFER_STATES`], looked up once.
    gauges: [(IntGauge, IntGauge); 4],
    /// What the buffer gauges last got from this actor: (items, bytes) per [`BUFFER_STATES`].
    published: [(i64, i64); 4],
}

/// The batching policy of `settings`.
pub fn policy(settings: &IngestSettings) -> Policy {
    Policy {
        flush_items: settings.flush_items,
        max_wait: Duration::from_millis(settings.flush_interval_ms),
        max_batch_items: settings.flush_max_items,
        capacity_items: settings.buffer_items,
        capacity_bytes: settings.buffer_bytes,
        backoff: BACKOFF,
        deadline: Some(Duration::from_millis(settings.retry_deadline_ms)),
    }
}

impl IngestActor {
    fn flush_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.flush_timeout_ms)
    }

    fn outcome_deadline(&self) -> Duration {
        Duration::from_millis(self.settings.outcome_deadline_ms)
    }

    /// Looks at the buffer: answers what waited too long, settles or flushes what is due, and
    /// sets a timer for the next time anything will be due.
    fn look(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        self.expire(now);
        if self.uncertain.is_some() {
            self.settle_uncertain(ctx, now);
        } else {
            match self.batcher.due(now) {
                Due::Now => self.flush(ctx),
                Due::At(at) => self.wake(ctx, at),
                Due::Idle => {}
            }
        }
        if let Some(at) = self.batcher.next_expiry() {
            self.arm_expiry(ctx, at);
        }
        self.publish_weight();
        self.notify_drained();
    }

    /// Makes sure the buffer is looked at when its oldest request reaches its deadline. One
    /// such timer at most: actix polls every timer of a context each time the actor wakes, so
    /// one per request or per flush would cost every message (measured: a third more CPU per
    /// request). A timer armed for an older front fires no later than needed; a batch put back
    /// after a failure is looked at by the retry's own tick.
    fn arm_expiry(&mut self, ctx: &mut Context<Self>, at: Instant) {
        if self.expiry_armed {
            return;
        }
        self.expiry_armed = true;
        ctx.run_later(at.saturating_duration_since(Instant::now()), |act, ctx| {
            act.expiry_armed = false;
            act.tick(ctx);
        });
    }

    /// Starts a flush of whole requests from the front of the buffer.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let batch = self.batcher.take();
        if batch.is_empty() {
            return;
        }
        let job = Job {
            project_id: self.project_id,
            organisation_id: self.organisation_id,
            month: store::month_of(Utc::now()),
        };
        let (pool, fence, timeout) = (
            self.pool.clone(),
            self.abandoned.take(),
            self.flush_timeout(),
        );
        let started = Instant::now();
        let span = flush_span(self.project_id, &batch);
        let traced = span.clone();
        let write = async move {
            let requests: Vec<Request<'_>> = batch
                .iter()
                .map(|e| Request {
                    received_at: e.value.received_at,
                    items: &e.value.items,
                    cap: e.value.cap,
                })
                .collect();
            let report = store::flush(&pool, &job, &requests, fence, timeout).await;
            drop(requests);
            (batch, report)
        }
        .instrument(span);
        ctx.spawn(actix::fut::wrap_future::<_, Self>(write).map(
            move |(batch, report), act, ctx| {
                traced.record("rows", report.rows);
                traced.record("transactions", report.transactions);
                traced.record("commit_ms", report.commit_seconds * 1000.0);
                if let Some(error) = &report.error {
                    traced.record("error", tracing::field::display(error));
                }
                act.flushed(batch, report, job.month, started);
                if act.stopping {
                    act.stop_for_deleted_project(ctx);
                    return;
                }
                act.tick(ctx);
            },
        ));
    }

    /// Answers what a flush decided and puts back what it could not write.
    fn flushed(
        &mut self,
        batch: Vec<Entry<Pending>>,
        report: FlushReport,
        month: NaiveDate,
        started: Instant,
    ) {
        let now = Instant::now();
        if report.abandoned.is_some() {
            self.abandoned = report.abandoned;
        }
        let items: usize = batch.iter().map(|e| e.value.items.len()).sum();
        let mut unwritten = Vec::new();
        let mut uncertain = Vec::new();
        for (mut entry, fate) in batch.into_iter().zip(report.fates) {
            match fate {
                Fate::Stored => self.answer_verdict(&mut entry.value, Verdict::Stored, month),
                Fate::OverQuota => self.answer_verdict(&mut entry.value, Verdict::OverQuota, month),
                Fate::Refused { refusal, sqlstate } => {
                    let kind = entry.value.items.kind();
                    tracing::warn!(
                        actor = Self::KIND,
                        project_id = %self.project_id,
                        kind = kind.as_str(),
                        items = entry.value.items.len(),
                        sqlstate = %sqlstate,
                        "PostgreSQL refused a request's data: it alone is answered with an error"
                    );
                    self.metrics
                        .ingest
                        .rejected(kind.as_str(), "refused", entry.value.items.len());
                    entry.value.answer(Outcome::Refused { refusal, sqlstate });
                }
                Fate::Retry => unwritten.push(entry),
                Fate::Uncertain(verdict) => uncertain.push((entry, verdict)),
            }
        }
        if unwritten.is_empty() && uncertain.is_empty() {
            self.metrics
                .ingest
                .flush_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics.ingest.batch_items.observe(items as f64);
        }
        let error = report.error.map(|e| e.to_string()).unwrap_or_default();
        if let (Some(backend), false) = (report.uncertain, uncertain.is_empty()) {
            tracing::warn!(
                actor = Self::KIND,
                project_id = %self.project_id,
                requests = uncertain.len(),
                error = %error,
                "a flush's COMMIT answer was lost: its requests wait until PostgreSQL tells whether it committed"
            );
            let weight = weigh(
                uncertain
                    .iter()
                    .map(|(e, _)| &e.value)
                    .chain(unwritten.iter().map(|e| &e.value)),
            );
            self.uncertain = Some(Uncertain {
                backend,
                weight,
                since: now,
                entries: uncertain,
                unwritten,
                looks: 0,
                next_look: now,
                looking: false,
            });
            return;
        }
        if unwritten.is_empty() {
            if self.batcher.failures() > 0 {
                tracing::info!(
                    actor = Self::KIND,
                    project_id = %self.project_id,
                    failed_flushes = self.batcher.failures(),
                    "ingest flushes succeed again"
                );
            }
            self.batcher.done();
        } else {
            if self.batcher.failures() == 0 {
                tracing::warn!(
                    actor = Self::KIND,
                    project_id = %self.project_id,
                    error = %error,
                    "ingest flush failed; retrying while requests can wait"
                );
            }
            self.metrics.ingest.flush_retries.inc();
            self.batcher.failed(unwritten, now);
        }
    }

    fn answer_verdict(&mut self, pending: &mut Pending, verdict: Verdict, month: NaiveDate) {
        let n = pending.items.len();
        let kind = pending.items.kind();
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

    /// Looks at the uncertain flush's transaction (one look at a time, with backoff), or gives
    /// up on it once the outcome deadline has passed.
    fn settle_uncertain(&mut self, ctx: &mut Context<Self>, now: Instant) {
        let deadline = self.outcome_deadline();
        let Some(u) = self.uncertain.as_mut() else {
            return;
        };
        if u.looking {
            return;
        }
        let give_up_at = u.since + deadline;
        if now >= give_up_at {
            self.give_up_uncertain(now);
            self.tick(ctx);
            return;
        }
        if now < u.next_look {
            let at = u.next_look.min(give_up_at);
            self.wake(ctx, at);
            return;
        }
        u.looking = true;
        u.looks += 1;
        let (pool, backend, timeout) = (self.pool.clone(), u.backend, self.flush_timeout());
        let look = async move { store::look_up(&pool, backend, timeout).await };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(look).map(|answer, act, ctx| {
                let now = Instant::now();
                match answer {
                    Ok(Settled::Committed) => act.uncertain_committed(),
                    Ok(Settled::Aborted) => act.uncertain_aborted(now),
                    // Still open (told to end) or PostgreSQL still away: look again later.
                    Ok(Settled::Pending) | Err(_) => {
                        if let Some(u) = act.uncertain.as_mut() {
                            u.looking = false;
                            u.next_look = now + BACKOFF.delay(u.looks);
                        }
                    }
                }
                if act.stopping {
                    act.stop_for_deleted_project(ctx);
                    return;
                }
                act.tick(ctx);
            }),
        );
    }

    /// The uncertain flush did commit: its requests get their verdicts, and what it did not
    /// write is written next.
    fn uncertain_committed(&mut self) {
        let Some(u) = self.uncertain.take() else {
            return;
        };
        self.metrics
            .ingest
            .uncertain_commits
            .with_label_values(&["committed"])
            .inc();
        tracing::info!(
            actor = Self::KIND,
            project_id = %self.project_id,
            requests = u.entries.len(),
            "an interrupted commit had committed: its requests are answered, not written again"
        );
        let month = store::month_of(Utc::now());
        for (mut entry, verdict) in u.entries {
            self.answer_verdict(&mut entry.value, verdict, month);
        }
        self.batcher.failed(u.unwritten, Instant::now());
    }

    /// The uncertain flush did not commit: all of it is written again, in order.
    fn uncertain_aborted(&mut self, now: Instant) {
        let Some(u) = self.uncertain.take() else {
            return;
        };
        self.metrics
            .ingest
            .uncertain_commits
            .with_label_values(&["aborted"])
            .inc();
        tracing::info!(
            actor = Self::KIND,
            project_id = %self.project_id,
            requests = u.entries.len(),
            "an interrupted commit had not committed: its requests are written again"
        );
        let mut again: Vec<Entry<Pending>> = u.entries.into_iter().map(|(e, _)| e).collect();
        again.extend(u.unwritten);
        again.sort_by_key(|e| e.value.seq);
        self.batcher.failed(again, now);
    }

    /// PostgreSQL stayed away past the outcome deadline: the uncertain requests are told so
    /// (they may be stored), and the transaction is ended before anything else is written.
    fn give_up_uncertain(&mut self, now: Instant) {
        let Some(u) = self.uncertain.take() else {
            return;
        };
        self.metrics
            .ingest
            .uncertain_commits
            .with_label_values(&["unknown"])
            .inc();
        tracing::error!(
            actor = Self::KIND,
            project_id = %self.project_id,
            requests = u.entries.len(),
            "PostgreSQL never told whether a flush committed: its requests are answered outcome_unknown"
        );
        for (mut entry, _) in u.entries {
            let kind = entry.value.items.kind();
            self.metrics
                .ingest
                .rejected(kind.as_str(), "outcome_unknown", entry.value.items.len());
            entry.value.answer(Outcome::OutcomeUnknown);
        }
        self.abandoned = Some(u.backend);
        self.batcher.failed(u.unwritten, now);
    }

    /// Answers `Unavailable` to buffered requests past their deadline, and drops them; the
    /// unwritten part of an uncertain flush keeps its deadline too.
    fn expire(&mut self, now: Instant) {
        let mut expired = self.batcher.expire(now);
        if let (Some(u), Some(deadline)) = (self.uncertain.as_mut(), self.batcher.policy().deadline)
        {
            let (late, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut u.unwritten)
                .into_iter()
                .partition(|e| now.saturating_duration_since(e.arrived) >= deadline);
            u.unwritten = kept;
            if !late.is_empty() {
                let all = u.entries.iter().map(|(e, _)| &e.value);
                u.weight = weigh(all.chain(u.unwritten.iter().map(|e| &e.value)));
            }
            expired.extend(late.into_iter().map(|e| e.value));
        }
        for mut pending in expired {
            let n = pending.items.len();
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
    }

    /// Keeps the buffer gauges in step with what this actor holds.
    fn publish_weight(&mut self) {
        let held = self.batcher.held();
        let queued = self.batcher.queued();
        // A flush whose COMMIT answer was lost stays "in flight" in the batcher until it is
        // settled; its requests are counted as `uncertain` then, not as flushing.
        let flushing = if self.uncertain.is_some() {
            (0, 0)
        } else {
            (held.items - queued.items, held.bytes - queued.bytes)
        };
        let queued = (queued.items, queued.bytes);
        let (waiting, retrying) = if self.batcher.failures() > 0 {
            ((0, 0), queued)
        } else {
            (queued, (0, 0))
        };
        let uncertain = self.uncertain.as_ref().map_or((0, 0), |u| u.weight);
        let now = [waiting, flushing, retrying, uncertain].map(|(i, b)| (i as i64, b as i64));
        for (((items, bytes), now), before) in self.gauges.iter().zip(now).zip(self.published) {
            if now != before {
                items.add(now.0 - before.0);
                bytes.add(now.1 - before.1);
            }
        }
        self.published = now;
    }

    fn idle(&self) -> bool {
        self.batcher.drained() && self.uncertain.is_none()
    }

    fn notify_drained(&mut self) {
        if self.idle() {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// The project is gone: every buffered request hears so, and the actor stops for good as
    /// soon as no flush is in flight (a flush already sent commits or fails on its own).
    fn stop_for_deleted_project(&mut self, ctx: &mut Context<Self>) {
        self.stopping = true;
        let mut gone: Vec<Pending> = self.batcher.take_all();
        if let Some(u) = self.uncertain.as_mut() {
            if !u.looking {
                if let Some(u) = self.uncertain.take() {
                    gone.extend(u.entries.into_iter().map(|(e, _)| e.value));
                    gone.extend(u.unwritten.into_iter().map(|e| e.value));
                    // Its flight ends here: the project's rows are purged whatever it did.
                    self.batcher.done();
                }
            }
        }
        for mut pending in gone {
            pending.answer(Outcome::ProjectGone);
        }
        self.publish_weight();
        if !self.batcher.in_flight() && self.uncertain.is_none() {
            self.registry.forget(self.project_id, self.generation);
            self.lifeline.finish();
            self.notify_drained();
            ctx.stop();
        }
    }

    fn stop_if_idle(&mut self, ctx: &mut Context<Self>) {
        let idle = Duration::from_secs(self.settings.idle_stop_secs);
        if self.idle() && !self.batcher.draining() && self.last_activity.elapsed() >= idle {
            self.registry.forget(self.project_id, self.generation);
            self.lifeline.finish();
            ctx.stop();
        }
    }
}

/// The span of one flush, for traces (at `debug`: not built when traces are off). It is the
/// child of the first sampled request it commits, so that request's trace shows the flush and
/// its statements, and links to the other sampled ones (up to [`FLUSH_LINKS`]).
fn flush_span(project_id: Uuid, batch: &[Entry<Pending>]) -> tracing::Span {
    let items: usize = batch.iter().map(|e| e.value.items.len()).sum();
    let span = tracing::debug_span!(
        "ingest.flush",
        project_id = %project_id,
        requests = batch.len(),
        items,
        rows = tracing::field::Empty,
        transactions = tracing::field::Empty,
        commit_ms = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let parent = batch
        .iter()
        .position(|e| e.value.trace.is_sampled())
        .unwrap_or(0);
    if let Some(first) = batch.get(parent) {
        first.value.trace.adopt(&span);
    }
    let others = batch
        .iter()
        .enumerate()
        .filter(|(i, e)| *i != parent && e.value.trace.is_sampled())
        .take(FLUSH_LINKS);
    for (_, entry) in others {
        entry.value.trace.link(&span);
    }
    span
}

/// At most this many requests of a flush are linked from its span besides its parent.
const FLUSH_LINKS: usize = 32;

/// Items and bytes of `pending`.
fn weigh<'a>(pending: impl Iterator<Item = &'a Pending>) -> (usize, usize) {
    pending.fold((0, 0), |(i, b), p| (i + p.items(), b + p.bytes()))
}

impl Wakes for IngestActor {
    fn wake_slot(&mut self) -> &mut Option<Instant> {
        &mut self.wake_at
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.look(ctx);
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
        for ((items, bytes), published) in self.gauges.iter().zip(self.published) {
            items.sub(published.0);
            bytes.sub(published.1);
        }
    }
}

impl SupervisedActor for IngestActor {
    const KIND: &'static str = "IngestActor";
    const MAILBOX: usize = MAILBOX;
}

impl Handler<Ingest> for IngestActor {
    type Result = ();

    fn handle(&mut self, msg: Ingest, ctx: &mut Context<Self>) {
        self.lifeline.took();
        self.last_activity = Instant::now();
        let n = msg.items.len();
        let kind = msg.items.kind();
        let pending = Pending {
            items: msg.items,
            received_at: msg.received_at,
            cap: msg.cap,
            reply: Some(msg.reply),
            seq: self.next_seq,
            reservation: msg.reservation,
            trace: msg.trace,
        };
        self.next_seq += 1;
        if self.stopping {
            // A route that found this actor just before its project was deleted.
            let mut pending = pending;
            pending.answer(Outcome::ProjectGone);
            return;
        }
        match self.batcher.push(pending, Instant::now()) {
            Ok(()) => {
                if self.settings.ack == Ack::Enqueue {
                    // The entry just pushed is the last one; answer it now.
                    if let Some(pending) = self.batcher.last_mut() {
                        pending.answer(Outcome::Stored(n));
                    }
                }
                self.tick(ctx);
            }
            Err(Full(mut pending)) => {
                self.metrics
                    .ingest
                    .rejected(kind.as_str(), "buffer_full", n);
                pending.answer(Outcome::BufferFull);
            }
        }
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
        self.batcher.drain();
        let (tx, rx) = oneshot::channel();
        self.drain_waiters.push(tx);
        self.tick(ctx);
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

struct Running {
    generation: u64,
    handle: Supervised<IngestActor>,
}

/// The running IngestActors of this instance, by project; starts them on demand.
#[derive(Clone)]
pub struct IngestRegistry {
    actors: Arc<Mutex<HashMap<Uuid, Running>>>,
    next_generation: Arc<std::sync::atomic::AtomicU64>,
    supervisor: Supervisor,
    arbiter: ArbiterHandle,
    settings: Arc<IngestSettings>,
    pool: PgPool,
    metrics: Metrics,
    /// Caps known to be reached this month.
    pub quota: QuotaHints,
    /// Bytes of ingest bodies this process may hold (`ingest.max_inflight_bytes`).
    pub budget: ByteBudget,
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
            pool,
            budget: ByteBudget::new(
                settings.max_inflight_bytes,
                metrics.ingest.inflight_bytes.clone(),
            ),
            settings,
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
            let actor = self.actor(project_id, organisation_id);
            match actor.try_send(msg) {
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

    fn actor(&self, project_id: Uuid, organisation_id: Uuid) -> Supervised<IngestActor> {
        let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = actors.get(&project_id) {
            if !entry.handle.finished() {
                return entry.handle.clone();
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
                batcher: Batcher::new(policy(&registry.settings)),
                wake_at: None,
                expiry_armed: false,
                uncertain: None,
                abandoned: None,
                next_seq: 0,
                last_activity: Instant::now(),
                drain_waiters: Vec::new(),
                stopping: false,
                gauges: BUFFER_STATES.map(|state| {
                    let ingest = &registry.metrics.ingest;
                    (
                        ingest.buffer_items.with_label_values(&[state]),
                        ingest.buffer_bytes.with_label_values(&[state]),
                    )
                }),
                published: [(0, 0); 4],
            },
        );
        actors.insert(
            project_id,
            Running {
                generation,
                handle: handle.clone(),
            },
        );
        handle
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
