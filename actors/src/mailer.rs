//! The Mailer: sends every outgoing email from the durable outbox.
//!
//! **Owns:** delivery of `email_outbox` rows (through Resend, or the log when no
//! `RESEND_API_KEY` is set) and one awc client, built on the Mailer's arbiter. It owns no
//! state that matters: the rows, their attempts and their next due time live in PostgreSQL,
//! and the actor is a thin shell over [`observe_core::mail::deliver_due`] and
//! [`observe_core::mail::deliver_one`].
//!
//! **Work:** routes enqueue an email in their own transaction
//! ([`observe_core::outbox::enqueue`]) and, once committed, call [`deliver_soon`] (a
//! `try_send` of [`Deliver`]). Every `mail.poll_interval_secs`, and once at start, the Mailer
//! also sends whatever is due: retries after their backoff, rows whose `Deliver` was dropped,
//! rows left by a crash or by another instance. Rows are claimed in PostgreSQL
//! (`FOR UPDATE SKIP LOCKED` plus a lease), so one row is never sent twice at once, by this
//! actor or by another instance. Everything runs in futures spawned on the actor's context:
//! the arbiter thread never blocks, at most [`MAX_IN_FLIGHT`] single deliveries and one pass
//! over the outbox run at a time.
//!
//! **Mailbox:** [`MAILBOX`] (256). A full mailbox loses nothing: the dropped `Deliver` is
//! picked up by the next periodic pass.
//!
//! **Restart:** database and provider errors never stop the actor (they are logged, and the
//! rows retried); a panic is restarted by the supervisor with backoff. A fresh incarnation
//! starts with a pass over the outbox, so nothing enqueued while it was down is lost.
//!
//! **Drain:** at shutdown, [`Drain`] stops new work, sends what is due now (at most
//! [`DRAIN_LIMIT`] rows), waits for the deliveries already running, then replies. The
//! supervisor bounds the whole drain by the shutdown timeout; a row cut short there is sent
//! after the next start, once its lease has passed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use observe_core::config::Settings;
use observe_core::db::PgPool;
use observe_core::mail::{self, HttpClient, Provider};
use observe_core::metrics::MailMetrics;
use observe_core::outbox::{self, OutboxError, Uuid};
use tokio::sync::watch;

use crate::supervisor::{Drain, Lifeline, Supervised, SupervisedActor, Supervisor};

/// Mailbox capacity of the Mailer.
pub const MAILBOX: usize = 256;
/// Rows one periodic pass sends at most (a full pass starts the next one at once).
pub const BATCH: usize = 50;
/// Rows the drain at shutdown sends at most.
pub const DRAIN_LIMIT: usize = 100;
/// Single deliveries ([`Deliver`]) running at once; more are left to the periodic pass.
pub const MAX_IN_FLIGHT: usize = 8;

/// Send outbox row `id` now (sent by routes after the transaction that enqueued it committed).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub id: Uuid,
}

/// Starts a pass over the due rows of the outbox (also what the interval does).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Poll;

pub struct Mailer {
    /// Reports this incarnation's end to the supervisor. The Mailer has no reason to stop
    /// on its own: errors are retried, so it only goes away by panic or at shutdown.
    lifeline: Lifeline,
    settings: Arc<Settings>,
    pool: PgPool,
    client: HttpClient,
    /// Rows with a [`Deliver`] running now.
    in_flight: HashSet<Uuid>,
    /// A pass over the outbox is running.
    polling: bool,
    /// Drained: take no new work.
    draining: bool,
    /// The last pass failed on the database (logged once, until it works again).
    outbox_down: bool,
    /// How many deliveries and passes run now; the drain waits for zero.
    busy: watch::Sender<usize>,
    metrics: MailMetrics,
}

impl Mailer {
    /// A Mailer for `settings` and `pool`. Builds its HTTP client, so call it on the arbiter
    /// the actor runs on (the supervisor's factory does).
    pub fn new(
        lifeline: Lifeline,
        settings: Arc<Settings>,
        pool: PgPool,
        metrics: MailMetrics,
    ) -> Self {
        Self {
            metrics,
            lifeline,
            settings,
            pool,
            client: mail::http_client(),
            in_flight: HashSet::new(),
            polling: false,
            draining: false,
            outbox_down: false,
            busy: watch::channel(0).0,
        }
    }

    fn begin(&self) {
        self.busy.send_modify(|n| *n += 1);
    }

    fn end(&self) {
        self.busy.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Starts a pass over the due rows unless one is running.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.polling || self.draining {
            return;
        }
        self.polling = true;
        self.begin();
        let (pool, client, settings) = (
            self.pool.clone(),
            self.client.clone(),
            self.settings.clone(),
        );
        // The pass, then the backlog it left (for `/metrics`).
        let pass = async move {
            let report = mail::deliver_due(&pool, &client, &settings, BATCH).await?;
            let pending = match pool.get().await {
                Ok(conn) => outbox::pending(&conn).await.ok(),
                Err(_) => None,
            };
            Ok::<_, OutboxError>((report, pending))
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(pass).map(|result, act, ctx| {
                act.polling = false;
                act.end();
                match result {
                    Ok((report, pending)) => {
                        act.metrics
                            .delivered(report.sent, report.retried, report.failed);
                        if let Some(pending) = pending {
                            act.metrics.outbox_pending.set(pending);
                        }
                        if act.outbox_down {
                            act.outbox_down = false;
                            tracing::info!(actor = Mailer::KIND, "email outbox reachable again");
                        }
                        if report.claimed > 0 {
                            tracing::debug!(
                                actor = Mailer::KIND,
                                claimed = report.claimed,
                                sent = report.sent,
                                retried = report.retried,
                                failed = report.failed,
                                "outbox pass"
                            );
                        }
                        // A full pass may have left more due rows behind.
                        if report.claimed >= BATCH {
                            act.poll(ctx);
                        }
                    }
                    Err(e) => {
                        if !act.outbox_down {
                            act.outbox_down = true;
                            tracing::warn!(
                                actor = Mailer::KIND,
                                error = %e,
                                "email outbox unreachable; retrying every poll interval"
                            );
                        }
                    }
                }
            }),
        );
    }
}

impl Actor for Mailer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = Duration::from_secs(self.settings.mail.poll_interval_secs.max(1));
        tracing::info!(
            actor = Self::KIND,
            provider = Provider::from_settings(&self.settings.resend).name(),
            poll_interval_secs = every.as_secs(),
            "mailer started"
        );
        ctx.run_interval(every, |act, ctx| act.poll(ctx));
        // Whatever an earlier incarnation (or instance) left is due now.
        self.poll(ctx);
    }
}

impl SupervisedActor for Mailer {
    const KIND: &'static str = "Mailer";
    const MAILBOX: usize = MAILBOX;
}

impl Handler<Deliver> for Mailer {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        self.lifeline.took();
        let id = msg.id;
        // Already on its way, or too much at once: the periodic pass has it.
        if self.draining || self.in_flight.contains(&id) || self.in_flight.len() >= MAX_IN_FLIGHT {
            return;
        }
        self.in_flight.insert(id);
        self.begin();
        let (pool, client, settings) = (
            self.pool.clone(),
            self.client.clone(),
            self.settings.clone(),
        );
        let send = async move { mail::deliver_one(&pool, &client, &settings, id).await };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(send).map(move |result, act, _| {
                act.in_flight.remove(&id);
                act.end();
                match &result {
                    Ok(Some(mail::Outcome::Sent { .. })) => act.metrics.delivered(1, 0, 0),
                    Ok(Some(mail::Outcome::Retry { .. })) => act.metrics.delivered(0, 1, 0),
                    Ok(Some(mail::Outcome::Failed { .. })) => act.metrics.delivered(0, 0, 1),
                    _ => {}
                }
                if let Err(e) = result {
                    // The row stays pending: the periodic pass sends it once the outbox is back.
                    tracing::warn!(
                        actor = Mailer::KIND,
                        outbox_id = %id,
                        error = %e,
                        "email not delivered now; left to the next pass"
                    );
                }
            }),
        );
    }
}

impl Handler<Poll> for Mailer {
    type Result = ();

    fn handle(&mut self, _: Poll, ctx: &mut Context<Self>) {
        self.poll(ctx);
    }
}

impl Handler<Drain> for Mailer {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        let mut busy = self.busy.subscribe();
        let (pool, client, settings) = (
            self.pool.clone(),
            self.client.clone(),
            self.settings.clone(),
        );
        Box::pin(actix::fut::wrap_future::<_, Self>(async move {
            match mail::deliver_due(&pool, &client, &settings, DRAIN_LIMIT).await {
                Ok(report) => tracing::info!(
                    actor = Mailer::KIND,
                    sent = report.sent,
                    retried = report.retried,
                    failed = report.failed,
                    "mailer drained"
                ),
                Err(e) => tracing::warn!(
                    actor = Mailer::KIND,
                    error = %e,
                    "mailer could not drain the outbox; pending rows wait for the next start"
                ),
            }
            // Deliveries already running finish before the reply.
            let _ = busy.wait_for(|n| *n == 0).await;
        }))
    }
}

/// Starts the Mailer under `supervisor` on `arbiter`, drained at shutdown.
pub fn start(
    supervisor: &Supervisor,
    arbiter: &ArbiterHandle,
    settings: Arc<Settings>,
    pool: PgPool,
) -> Supervised<Mailer> {
    let metrics = supervisor.metrics().mail.clone();
    supervisor.spawn_drainable("mailer", arbiter, move |lifeline| {
        // Runs on `arbiter`: the awc client (`!Send`) is built there.
        Mailer::new(lifeline, settings.clone(), pool.clone(), metrics.clone())
    })
}

/// Asks the Mailer to send row `id` now; call it after the transaction that enqueued the row
/// committed. Never fails: a full mailbox or a Mailer between restarts leaves the row to the
/// next periodic pass.
pub fn deliver_soon(mailer: &Supervised<Mailer>, id: Uuid) {
    if let Err(e) = mailer.try_send(Deliver { id }) {
        let reason = match e {
            SendError::Full(_) => "mailbox full",
            SendError::Closed(_) => "mailer restarting",
        };
        tracing::debug!(outbox_id = %id, reason, "email left to the next outbox pass");
    }
}
