//! MonitorActor: one per running monitor, on one of the engine's arbiters.
//!
//! **Owns:** the monitor's interval timer, its consecutive-failure streak and its open
//! incident. It starts from the monitor's row (handed over by the ShardManager, or loaded from
//! PostgreSQL after a restart): the streak, the status and the open incident resume as they
//! were, and the first check is at the stored `next_check_at` when that is still ahead, so a
//! restart neither bursts nor leaves a gap. A monitor never checked gets its first check at a
//! random point within its interval; one whose check fell due while no instance ran it gets it
//! within the time it was overdue (at most one interval), so an outage's backlog is spread out
//! at the normal rate rather than fired at once.
//!
//! **A check:** a check slot of its organisation and of the instance first
//! ([`observe_core::check_slots`]; the wait is lateness, not part of the check), then
//! [`observe_core::check::run`] with the monitor's timeout (at most `monitors.max_timeout_secs`);
//! a failure is tried once more after `monitors.retry_delay_ms` (the slot given back meanwhile)
//! and only then counts. The slots are fixed
//! (`scheduled + interval`), so checks do not drift; one check runs at a time, and a slot that
//! falls due while the previous check still runs starts as soon as it ends (its lateness is
//! measured). The row goes to the CheckWriter (batched). The state change is written at once:
//! `failures_to_open` consecutive failures open an incident, the first success closes it, each
//! in one transaction with the monitor's state and the alert emails
//! ([`observe_core::store::monitor_runs`]); other checks update the monitor's row. A failed
//! write is retried by the next check (the incident decision is taken again from the streak).
//! Every write is fenced on the shard's lease: one refused because another instance holds the
//! shard now writes nothing, and the actor stops for good.
//!
//! **Messages:** [`Update`] (new configuration, rescheduled at once when the interval
//! changed), [`Stop`] (deleted, paused, shard lost, shutdown: stops for good; a check still
//! waiting for its target is dropped, one whose result is being written is finished first, and
//! its row goes to the CheckWriter only after its state is written, so rows and state agree).
//! Mailbox [`MAILBOX`].
//! All IO runs as futures on the actor's context: the arbiter thread never blocks.
//!
//! **Restart:** a panic restarts it under the supervisor; the fresh incarnation reloads the
//! monitor from PostgreSQL, unless the ShardManager no longer lists it (then it finishes).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use observe_core::check::{self, CheckOptions, HttpClient, Outcome, Transition};
use observe_core::check_slots::OrganisationSlots;
use observe_core::monitor::{MonitorConfig, MonitorState, Status};
use observe_core::store::monitor_runs::{
    self as store, CheckRow, Fence, IncidentChange, Loaded, StateError,
};
use observe_core::store::StoreError;
use tracing::Instrument;
use uuid::Uuid;

use super::{Engine, Registry};
use crate::mailer;
use crate::supervisor::{Lifeline, SupervisedActor};

/// Mailbox capacity of one MonitorActor (only control messages arrive).
pub const MAILBOX: usize = 16;

/// The monitor's configuration changed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Update(pub MonitorConfig);

/// Stop for good: the monitor was deleted or paused, or its shard went elsewhere.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Stop;

thread_local! {
    /// One HTTP client per arbiter thread, shared by its MonitorActors.
    static CLIENT: std::cell::OnceCell<HttpClient> = const { std::cell::OnceCell::new() };
}

fn client(max_connections: usize) -> HttpClient {
    CLIENT.with(|c| {
        c.get_or_init(|| check::http_client(max_connections))
            .clone()
    })
}

/// The handover from the ShardManager to the first incarnation.
pub(super) type Preload = Arc<Mutex<Option<Loaded>>>;

pub struct MonitorActor {
    lifeline: Lifeline,
    id: Uuid,
    generation: u64,
    engine: Engine,
    registry: Registry,
    preload: Option<Loaded>,
    config: Option<MonitorConfig>,
    /// Its organisation's share of the check slots (known once loaded).
    organisation: Option<OrganisationSlots>,
    /// Its state writes count only while this instance holds the monitor's shard.
    fence: Fence,
    state: MonitorState,
    client: HttpClient,
    /// The slot the next check is for.
    next_due: Option<DateTime<Utc>>,
    /// The slot of the last check started.
    last_scheduled: Option<DateTime<Utc>>,
    timer: Option<SpawnHandle>,
    in_flight: bool,
    /// The check is done and its state is being written.
    persisting: bool,
    /// Stop once the state being written is written.
    stopping: bool,
    due_while_busy: bool,
    /// Counted in the open-incidents gauge.
    incident_counted: bool,
}

impl MonitorActor {
    pub(super) fn new(
        lifeline: Lifeline,
        id: Uuid,
        generation: u64,
        engine: Engine,
        registry: Registry,
        preload: &Preload,
    ) -> Self {
        let preload = preload
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let client = client(engine.settings.max_concurrent_checks);
        let fence = Fence {
            instance: registry.instance(),
            shards: i32::try_from(engine.settings.shards).unwrap_or(i32::MAX),
        };
        Self {
            fence,
            client,
            lifeline,
            id,
            generation,
            engine,
            registry,
            preload,
            config: None,
            organisation: None,
            state: MonitorState {
                status: Status::Pending,
                failure_streak: 0,
                last_checked_at: None,
                next_check_at: None,
                open_incident: None,
            },
            next_due: None,
            last_scheduled: None,
            timer: None,
            in_flight: false,
            persisting: false,
            stopping: false,
            due_while_busy: false,
            incident_counted: false,
        }
    }

    fn interval(&self, config: &MonitorConfig) -> Duration {
        self.engine.interval(config.interval_seconds)
    }

    /// Stops for good: at once, or right after the state being written is written (a check
    /// still talking to its target is dropped: neither its row nor its state is written).
    fn stop_soon(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        if self.persisting {
            self.stopping = true;
        } else {
            self.finish(ctx);
        }
    }

    fn finish(&mut self, ctx: &mut Context<Self>) {
        self.lifeline.finish();
        ctx.stop();
    }

    fn apply(&mut self, loaded: Loaded, ctx: &mut Context<Self>) {
        let Loaded {
            config,
            state,
            organisation_id,
            ..
        } = loaded;
        self.organisation = Some(self.engine.slots.organisation(organisation_id));
        if config.paused {
            self.finish(ctx);
            return;
        }
        let now = Utc::now();
        let interval = self.interval(&config);
        let first = match state.next_check_at {
            Some(at) if at > now => {
                if at - now > to_chrono(interval) {
                    // The interval shrank since: do not wait out the old one.
                    now + to_chrono(check::jitter(interval))
                } else {
                    at
                }
            }
            Some(at) => {
                let overdue = (now - at).to_std().unwrap_or_default();
                // The slots that passed while no instance ran it; the one due now is checked.
                self.engine
                    .metrics
                    .monitors
                    .missed
                    .inc_by(missed_slots(overdue, interval));
                now + to_chrono(check::jitter(overdue.min(interval)))
            }
            None => now + to_chrono(check::jitter(interval)),
        };
        self.config = Some(config);
        self.state = state;
        self.count_incident();
        self.schedule(first, ctx);
    }

    fn count_incident(&mut self) {
        let open = self.state.open_incident.is_some();
        if open && !self.incident_counted {
            self.engine.metrics.monitors.open_incidents.inc();
        } else if !open && self.incident_counted {
            self.engine.metrics.monitors.open_incidents.dec();
        }
        self.incident_counted = open;
    }

    fn schedule(&mut self, at: DateTime<Utc>, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        if self.stopping {
            return;
        }
        self.next_due = Some(at);
        let delay = (at - Utc::now()).to_std().unwrap_or_default();
        self.timer = Some(ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            if act.in_flight {
                act.due_while_busy = true;
            } else {
                act.start_check(ctx);
            }
        }));
    }

    fn start_check(&mut self, ctx: &mut Context<Self>) {
        let (Some(config), Some(scheduled)) = (self.config.clone(), self.next_due) else {
            return;
        };
        let interval = self.interval(&config);
        let now = Utc::now();
        self.in_flight = true;
        self.last_scheduled = Some(scheduled);
        // The next slot is fixed now, whatever this check takes.
        let mut next = scheduled + to_chrono(interval);
        if next + to_chrono(interval) < now {
            // More than a slot behind (a stalled thread): start again from now; the slots in
            // between are missed (the one due now is the next check).
            let behind = (now - scheduled).to_std().unwrap_or_default();
            self.engine
                .metrics
                .monitors
                .missed
                .inc_by(missed_slots(behind, interval).saturating_sub(1));
            next = now;
        }
        self.schedule(next, ctx);

        let options = CheckOptions {
            allow_private_targets: self.engine.settings.allow_private_targets,
            max_body_bytes: self.engine.settings.max_body_bytes,
            user_agent: self.engine.settings.user_agent.clone(),
            // Monitors stored before the cap (or under a higher one) are held to it too.
            timeout: Duration::from_secs(u64::from(
                config
                    .timeout_seconds
                    .min(self.engine.settings.max_timeout_secs)
                    .max(1),
            )),
        };
        let retry_delay = Duration::from_millis(self.engine.settings.retry_delay_ms);
        let client = self.client.clone();
        let slots = self.engine.slots.clone();
        let organisation = self.organisation.clone();
        let lateness = self.engine.metrics.monitors.lateness_seconds.clone();
        // One root span per check, its attempts as children (not built when traces are off).
        let span = tracing::debug_span!(
            "monitor.check",
            monitor_id = %config.id,
            scheduled = %scheduled,
            ok = tracing::field::Empty,
            attempts = 1,
        );
        let traced = span.clone();
        let run = async move {
            // A slot first: waiting for it is not part of the check (neither of its timeout
            // nor of its response time), but it is lateness.
            let slot = match &organisation {
                Some(o) => slots.acquire(o).await,
                None => None,
            };
            let started_at = Utc::now();
            lateness.observe(
                (started_at - scheduled)
                    .to_std()
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
            let began = Instant::now();
            let mut outcome = check::run(&client, &config, &options).await;
            let mut took = began.elapsed();
            if !outcome.ok {
                // The slot is given back for the retry delay, where nothing is in flight.
                drop(slot);
                tokio::time::sleep(retry_delay).await;
                let _slot = match &organisation {
                    Some(o) => slots.acquire(o).await,
                    None => None,
                };
                let again = Instant::now();
                outcome = check::run(&client, &config, &options).await;
                took += retry_delay + again.elapsed();
                traced.record("attempts", 2);
            }
            traced.record("ok", outcome.ok);
            (outcome, took, started_at)
        }
        .instrument(span);
        ctx.spawn(actix::fut::wrap_future::<_, Self>(run).map(
            move |(outcome, took, started_at), act, ctx| {
                act.checked(scheduled, started_at, outcome, took, ctx);
            },
        ));
    }

    fn checked(
        &mut self,
        scheduled: DateTime<Utc>,
        started_at: DateTime<Utc>,
        outcome: Outcome,
        took: Duration,
        ctx: &mut Context<Self>,
    ) {
        let Some(config) = self.config.clone() else {
            return;
        };
        let m = &self.engine.metrics.monitors;
        m.checks.with_label_values(&[outcome.result_label()]).inc();
        m.check_seconds.observe(took.as_secs_f64());
        let row = CheckRow {
            monitor_id: config.id,
            project_id: config.project_id,
            scheduled_at: scheduled,
            started_at,
            ok: outcome.ok,
            status_code: outcome.status_code.map(i32::from),
            response_ms: Some(i32::try_from(outcome.response_ms).unwrap_or(i32::MAX)),
            failure: outcome.failure,
            error: outcome.error.clone(),
        };

        let (next, action) = check::transition(
            &self.state,
            outcome.ok,
            started_at,
            self.next_due,
            self.engine.settings.failures_to_open,
        );
        let pool = self.engine.pool.clone();
        let alerts = self.engine.alerts.clone();
        let id = self.id;
        let saved = next.clone();
        let fence = self.fence.clone();
        let checks = self.engine.checks.clone();
        let write = async move {
            let saved_state: Result<_, StateError> = async {
                let mut client = pool.get().await.map_err(StoreError::from)?;
                match action {
                    Transition::Save => store::save_state(&client, &fence, id, &saved)
                        .await
                        .map(|()| None),
                    Transition::Open => {
                        let cause = outcome
                            .failure
                            .unwrap_or(observe_core::monitor::FailureKind::Connect);
                        store::open_incident(
                            &mut client,
                            &fence,
                            &config,
                            &saved,
                            started_at,
                            cause,
                            outcome.error.as_deref(),
                            &alerts,
                        )
                        .await
                        .map(|c| Some((true, c)))
                    }
                    Transition::Close(incident) => store::close_incident(
                        &mut client,
                        &fence,
                        &config,
                        &saved,
                        incident,
                        Utc::now(),
                        &alerts,
                    )
                    .await
                    .map(|c| Some((false, c))),
                }
            }
            .await;
            // The row follows the state, so a check cut short by a stop leaves neither, and a
            // check whose state write was fenced (another instance owns the monitor now) leaves
            // no row to duplicate the new owner's. A full writer makes this wait (and the next
            // check with it): backpressure, not a lost row.
            if !matches!(saved_state, Err(StateError::Fenced)) {
                checks.put(row).await;
            }
            saved_state
        };
        self.state = next;
        self.persisting = true;
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(write).map(move |result, act, ctx| {
                act.persisted(result);
                act.in_flight = false;
                act.persisting = false;
                if act.stopping {
                    act.finish(ctx);
                    return;
                }
                if act.due_while_busy {
                    act.due_while_busy = false;
                    act.start_check(ctx);
                }
            }),
        );
    }

    fn persisted(&mut self, result: Result<Option<(bool, IncidentChange)>, StateError>) {
        if result.is_ok() && self.engine.saves_failing.swap(false, Ordering::Relaxed) {
            tracing::info!(actor = Self::KIND, "monitor state saved again");
        }
        match result {
            Ok(None) => {}
            Ok(Some((opened, change))) => {
                if opened {
                    self.state.open_incident = Some(change.incident_id);
                    if change.changed {
                        tracing::info!(
                            actor = Self::KIND,
                            monitor_id = %self.id,
                            incident_id = %change.incident_id,
                            alerts = change.emails.len(),
                            "incident opened"
                        );
                    }
                } else {
                    self.state.open_incident = None;
                    if change.changed {
                        tracing::info!(
                            actor = Self::KIND,
                            monitor_id = %self.id,
                            incident_id = %change.incident_id,
                            alerts = change.emails.len(),
                            "incident resolved"
                        );
                    }
                }
                self.count_incident();
                for email in change.emails {
                    mailer::deliver_soon(&self.engine.mailer, email);
                }
            }
            Err(StateError::Fenced) => {
                // Another instance holds the shard now: nothing was written, and this
                // incarnation stops for good (its ShardManager learns the same at its next
                // renewal). The check's row is still recorded: the check did run.
                tracing::warn!(
                    actor = Self::KIND,
                    monitor_id = %self.id,
                    "this instance no longer holds the monitor's shard: state not written, monitor stopped"
                );
                self.stopping = true;
            }
            Err(StateError::Store(e)) => {
                // The next check takes the decision again from the streak. One warning per
                // outage for the whole engine, not one per monitor.
                if self.engine.saves_failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!(actor = Self::KIND, monitor_id = %self.id, error = %e, "monitor state not saved");
                } else {
                    tracing::warn!(
                        actor = Self::KIND,
                        monitor_id = %self.id,
                        error = %e,
                        "monitor state not saved; each monitor's next check retries"
                    );
                }
            }
        }
    }
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero())
}

impl Actor for MonitorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.engine.metrics.monitors.running.inc();
        if !self.registry.is_current(self.id, self.generation) {
            // Stopped (or handed to another instance) while this incarnation was coming up.
            self.finish(ctx);
            return;
        }
        if let Some(loaded) = self.preload.take() {
            self.apply(loaded, ctx);
            return;
        }
        let pool = self.engine.pool.clone();
        let id = self.id;
        let total = i32::try_from(self.engine.settings.shards).unwrap_or(i32::MAX);
        let load = async move {
            let client = pool.get().await.map_err(StoreError::from)?;
            store::load(&client, id, total).await
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(load).map(|result, act, ctx| match result {
                Ok(Some(loaded)) => act.apply(loaded, ctx),
                Ok(None) => act.finish(ctx),
                Err(e) => {
                    act.lifeline.fail(format!("cannot load the monitor: {e}"));
                    ctx.stop();
                }
            }),
        );
    }
}

impl Drop for MonitorActor {
    // Not `stopped()`: a panicking actor is dropped without it.
    fn drop(&mut self) {
        self.engine.metrics.monitors.running.dec();
        if self.incident_counted {
            self.engine.metrics.monitors.open_incidents.dec();
        }
    }
}

impl SupervisedActor for MonitorActor {
    const KIND: &'static str = "MonitorActor";
    const MAILBOX: usize = MAILBOX;
}

impl Handler<Update> for MonitorActor {
    type Result = ();

    fn handle(&mut self, msg: Update, ctx: &mut Context<Self>) {
        let config = msg.0;
        if self.stopping {
            return;
        }
        if config.paused {
            self.stop_soon(ctx);
            return;
        }
        let Some(old) = self.config.replace(config.clone()) else {
            // Still loading: the load brings the newest row anyway.
            return;
        };
        let interval = self.interval(&config);
        if self.interval(&old) != interval {
            let now = Utc::now();
            let next = match self.last_scheduled {
                Some(last) => (last + to_chrono(interval)).max(now),
                None => now + to_chrono(check::jitter(interval)),
            };
            self.schedule(next, ctx);
        }
    }
}

impl Handler<Stop> for MonitorActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.stop_soon(ctx);
    }
}

/// Whole slots of `interval` within `overdue`: the checks that should have run in it.
fn missed_slots(overdue: Duration, interval: Duration) -> u64 {
    if interval.is_zero() {
        return 0;
    }
    (overdue.as_millis() / interval.as_millis()) as u64
}

#[cfg(test)]
mod tests {
    use super::missed_slots;
    use std::time::Duration;

    #[test]
    fn missed_slots_count_whole_intervals() {
        let minute = Duration::from_secs(60);
        assert_eq!(missed_slots(Duration::from_secs(59), minute), 0);
        assert_eq!(missed_slots(Duration::from_secs(60), minute), 1);
        assert_eq!(missed_slots(Duration::from_secs(605), minute), 10);
        assert_eq!(missed_slots(minute, Duration::ZERO), 0);
    }
}
