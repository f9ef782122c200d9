//! Supervision: how every observe actor is started, restarted and drained.
//!
//! **Owns:** one watcher task per supervised actor, which holds the factory that builds the
//! actor and the [`Supervised`] handle that routes use to reach its current incarnation.
//!
//! **Why not `actix::Supervisor`:** it restarts an actor after `ctx.stop()` but not after a
//! panic (the panic kills actor and supervisor together, silently), and it logs nothing. Here
//! both ends look the same: every actor holds a [`Lifeline`], and the lifeline is dropped
//! whenever the actor goes away, whether it stopped or its handler panicked (tokio drops the
//! panicked task's future, actor included). The drop sends one [`Exit`] to the watcher, which:
//!
//! - on [`Lifeline::finish`] (deliberate stop, e.g. a deleted monitor) ends quietly;
//! - otherwise logs one line `actor restarted` with `actor`, `id`, `reason` (the panic message
//!   or the reason given to [`Lifeline::fail`]) and `restarts`, increments
//!   `observe_actor_restarts_total{actor=KIND}`, waits an exponential backoff, and starts a
//!   fresh actor from the factory on the same arbiter.
//!
//! A restarted actor starts from a fresh struct: whatever it must not lose (buffered rows, a
//! failure streak) it keeps in PostgreSQL or hands over before failing, as Erlang would.
//!
//! **Mailbox:** bounded at [`SupervisedActor::MAILBOX`], set before the actor runs. Routes use
//! `try_send` and turn `SendError::Full` into 503: backpressure, not a crash.
//!
//! **Drain:** actors registered with [`Supervisor::spawn_drainable`] get a [`Drain`] message at
//! shutdown, after the HTTP server stopped taking requests, and the supervisor awaits their
//! replies (bounded by the shutdown timeout) before the process exits.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::prelude::*;
use futures_util::future::join_all;
use observe_core::metrics::Metrics;
use observe_core::telemetry;
use prometheus::IntGauge;
use tokio::sync::oneshot;

/// An actor that runs under a [`Supervisor`].
pub trait SupervisedActor: Actor<Context = Context<Self>> {
    /// The actor kind in logs and metrics, e.g. `"IngestActor"`.
    const KIND: &'static str;
    /// Mailbox capacity; a full mailbox makes `try_send` fail with `SendError::Full`.
    const MAILBOX: usize;
}

/// Asks a buffering actor to write out what it holds and reply when done (sent at shutdown).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Drain;

/// How an incarnation ended, as reported by its [`Lifeline`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Finished,
    Failed(String),
}

/// Held by every supervised actor for as long as it lives; dropping it reports the exit.
#[derive(Debug)]
pub struct Lifeline {
    tx: Option<oneshot::Sender<Exit>>,
    exit: Option<Exit>,
    mailbox: Mailbox,
}

impl Lifeline {
    fn new(tx: oneshot::Sender<Exit>, mailbox: Mailbox) -> Self {
        Self {
            tx: Some(tx),
            exit: None,
            mailbox,
        }
    }

    /// The actor took a message sent through [`Supervised::try_send`]: call it first thing in
    /// that message's handler, so `observe_actor_mailbox_depth` counts only what waits.
    pub fn took(&self) {
        self.mailbox.took();
    }

    /// The coming stop is a failure: the supervisor restarts the actor and logs `reason`.
    pub fn fail(&mut self, reason: impl Into<String>) {
        self.exit = Some(Exit::Failed(reason.into()));
    }

    /// The coming stop is deliberate: the supervisor does not restart the actor.
    pub fn finish(&mut self) {
        self.exit = Some(Exit::Finished);
    }
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        // A panicking handler never reaches `fail`. tokio drops a panicked task's future while
        // unwinding, so `panicking()` tells a panic from a plain stop, and the panic hook has
        // just stored the message on this thread.
        let panic = telemetry::take_last_panic();
        let exit = match self.exit.take() {
            Some(exit) => exit,
            None if std::thread::panicking() => Exit::Failed(format!(
                "panic: {}",
                panic.as_deref().unwrap_or("(no message)")
            )),
            None => Exit::Failed("stopped without a reason".to_string()),
        };
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(exit);
        }
    }
}

/// Restart delays: `base * 2^(n-1)` for the n-th restart in a row, capped at `max`. A run
/// longer than `reset_after` starts the count again.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// Delay before the `in_a_row`-th consecutive restart (1-based).
    pub fn delay(&self, in_a_row: u32) -> Duration {
        let exp = in_a_row.saturating_sub(1).min(20);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }
}

/// What waits in one supervised actor's mailbox, of the messages sent through its handle:
/// its own count, and its kind's `observe_actor_mailbox_depth` gauge. Messages a dying
/// incarnation leaves in its mailbox are lost with it, and taken off both.
#[derive(Debug, Clone)]
struct Mailbox {
    waiting: Arc<AtomicI64>,
    depth: IntGauge,
}

impl Mailbox {
    fn sent(&self) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.depth.inc();
    }

    fn took(&self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        self.depth.dec();
    }

    /// The incarnation is gone, and its mailbox with it.
    fn lost(&self) {
        let left = self.waiting.swap(0, Ordering::Relaxed);
        self.depth.sub(left);
    }
}

/// A handle to a supervised actor that always points at its current incarnation.
pub struct Supervised<A: Actor> {
    addr: Arc<RwLock<Addr<A>>>,
    restarts: Arc<AtomicU32>,
    finished: Arc<AtomicBool>,
    mailbox: Mailbox,
}

impl<A: Actor> Clone for Supervised<A> {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            restarts: self.restarts.clone(),
            finished: self.finished.clone(),
            mailbox: self.mailbox.clone(),
        }
    }
}

impl<A: Actor> Supervised<A> {
    /// The current address. Between a failure and the restart it is disconnected and sends
    /// fail with `MailboxError::Closed`/`SendError::Closed`: callers answer 503, never hang.
    pub fn addr(&self) -> Addr<A> {
        self.addr
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many times this actor has been restarted.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Whether the actor stopped for good ([`Lifeline::finish`]) and will not come back.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// `try_send` to the current incarnation, counted in `observe_actor_mailbox_depth` until
    /// the handler calls [`Lifeline::took`].
    pub fn try_send<M>(&self, msg: M) -> Result<(), SendError<M>>
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        // Counted before the send, so a handler quick to take it never counts below zero.
        self.mailbox.sent();
        let sent = self.addr().try_send(msg);
        if sent.is_err() {
            self.mailbox.took();
        }
        sent
    }
}

type DrainFuture = Pin<Box<dyn Future<Output = ()>>>;
type DrainFn = Box<dyn Fn() -> DrainFuture + Send + Sync>;

/// A drainable actor: its drain, and whether it has finished (then it is dropped from the list).
struct DrainEntry {
    finished: Arc<AtomicBool>,
    drain: DrainFn,
}

/// Starts actors under supervision and drains them at shutdown. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    metrics: Metrics,
    backoff: Backoff,
    stopping: Arc<AtomicBool>,
    drains: Arc<Mutex<Vec<DrainEntry>>>,
}

impl Supervisor {
    /// The registry the supervised actors report into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn new(metrics: Metrics, backoff: Backoff) -> Self {
        telemetry::install_panic_hook(false);
        Self {
            metrics,
            backoff,
            stopping: Arc::new(AtomicBool::new(false)),
            drains: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Starts `factory(lifeline)` on `arbiter` and keeps it running.
    pub fn spawn<A, F>(
        &self,
        id: impl Into<String>,
        arbiter: &ArbiterHandle,
        factory: F,
    ) -> Supervised<A>
    where
        A: SupervisedActor,
        F: Fn(Lifeline) -> A + Send + Sync + 'static,
    {
        let id = id.into();
        let factory = Arc::new(factory);
        let (tx, rx) = oneshot::channel();
        let mailbox = Mailbox {
            waiting: Arc::new(AtomicI64::new(0)),
            depth: self
                .metrics
                .actor_mailbox_depth
                .with_label_values(&[A::KIND]),
        };
        // The capacity counts while the watcher keeps an incarnation running.
        self.metrics
            .actor_mailbox_capacity
            .with_label_values(&[A::KIND])
            .add(A::MAILBOX as i64);
        // The kind's restart series exists (at 0) from its first start.
        self.metrics.actor_restarts.with_label_values(&[A::KIND]);
        let first = {
            let factory = factory.clone();
            let mailbox = mailbox.clone();
            A::start_in_arbiter(arbiter, move |ctx| {
                ctx.set_mailbox_capacity(A::MAILBOX);
                factory(Lifeline::new(tx, mailbox))
            })
        };
        let handle = Supervised {
            addr: Arc::new(RwLock::new(first)),
            restarts: Arc::new(AtomicU32::new(0)),
            finished: Arc::new(AtomicBool::new(false)),
            mailbox,
        };
        let watcher = watch(
            id,
            rx,
            factory,
            handle.clone(),
            self.metrics.clone(),
            self.backoff,
            self.stopping.clone(),
        );
        arbiter.spawn(watcher);
        handle
    }

    /// Like [`Supervisor::spawn`], and the actor gets a [`Drain`] at shutdown.
    pub fn spawn_drainable<A, F>(
        &self,
        id: impl Into<String>,
        arbiter: &ArbiterHandle,
        factory: F,
    ) -> Supervised<A>
    where
        A: SupervisedActor + Handler<Drain>,
        A::Context: ToEnvelope<A, Drain>,
        F: Fn(Lifeline) -> A + Send + Sync + 'static,
    {
        let handle = self.spawn(id, arbiter, factory);
        let target = handle.clone();
        let drain: DrainFn = Box::new(move || {
            let addr = target.addr();
            Box::pin(async move {
                // A dead incarnation has nothing left to drain.
                let _ = addr.send(Drain).await;
            })
        });
        let mut drains = self.drains.lock().unwrap_or_else(PoisonError::into_inner);
        // Actors come and go (a deleted monitor): forget those that finished for good.
        drains.retain(|entry| !entry.finished.load(Ordering::Relaxed));
        drains.push(DrainEntry {
            finished: handle.finished.clone(),
            drain,
        });
        drop(drains);
        handle
    }

    /// Stops restarting, sends [`Drain`] to every drainable actor and waits for all replies,
    /// at most `timeout`. Returns false if the timeout cut the drain short.
    pub async fn drain_all(&self, timeout: Duration) -> bool {
        self.stopping.store(true, Ordering::SeqCst);
        let pending: Vec<DrainFuture> = self
            .drains
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|entry| !entry.finished.load(Ordering::Relaxed))
            .map(|entry| (entry.drain)())
            .collect();
        let count = pending.len();
        let finished = tokio::time::timeout(timeout, join_all(pending))
            .await
            .is_ok();
        if finished {
            tracing::info!(actors = count, "actors drained");
        } else {
            tracing::error!(
                actors = count,
                timeout_ms = timeout.as_millis() as u64,
                "drain timed out"
            );
        }
        finished
    }
}

async fn watch<A, F>(
    id: String,
    mut exits: oneshot::Receiver<Exit>,
    factory: Arc<F>,
    handle: Supervised<A>,
    metrics: Metrics,
    backoff: Backoff,
    stopping: Arc<AtomicBool>,
) where
    A: SupervisedActor,
    F: Fn(Lifeline) -> A + Send + Sync + 'static,
{
    let mut started = Instant::now();
    let mut in_a_row = 0u32;
    let capacity = metrics.actor_mailbox_capacity.with_label_values(&[A::KIND]);
    let gone = || capacity.sub(A::MAILBOX as i64);
    loop {
        let exit = (&mut exits)
            .await
            .unwrap_or_else(|_| Exit::Failed("lifeline lost".to_string()));
        // Whatever waited in the ended incarnation's mailbox went with it.
        handle.mailbox.lost();
        let reason = match exit {
            Exit::Finished => {
                handle.finished.store(true, Ordering::Relaxed);
                gone();
                return;
            }
            Exit::Failed(reason) => reason,
        };
        if stopping.load(Ordering::SeqCst) {
            gone();
            return;
        }
        if started.elapsed() >= backoff.reset_after {
            in_a_row = 0;
        }
        in_a_row += 1;
        let restarts = handle.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        let delay = backoff.delay(in_a_row);
        metrics.actor_restarts.with_label_values(&[A::KIND]).inc();
        tracing::warn!(
            actor = A::KIND,
            id = %id,
            reason = %reason,
            restarts,
            backoff_ms = delay.as_millis() as u64,
            "actor restarted"
        );
        tokio::time::sleep(delay).await;
        if stopping.load(Ordering::SeqCst) {
            gone();
            return;
        }
        let (tx, rx) = oneshot::channel();
        let factory = factory.clone();
        let mailbox = handle.mailbox.clone();
        // A factory that panics (say, on bad stored state) must not take this watcher with
        // it: its lifeline, dropped while unwinding, reports the panic on `rx`, and the loop
        // retries with a longer backoff.
        let created = std::panic::catch_unwind(AssertUnwindSafe(|| {
            A::create(move |ctx| {
                ctx.set_mailbox_capacity(A::MAILBOX);
                factory(Lifeline::new(tx, mailbox))
            })
        }));
        if let Ok(addr) = created {
            *handle.addr.write().unwrap_or_else(PoisonError::into_inner) = addr;
        }
        exits = rx;
        started = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            reset_after: Duration::from_secs(60),
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(500), Duration::from_secs(1));
    }
}
