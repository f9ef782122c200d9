//! ShardManager: one per instance; leases monitor shards and runs their MonitorActors.
//!
//! **Owns:** this instance's shard leases (rows of `monitor_shards`) and the set of
//! MonitorActors it runs (kept in the registry, which outlives an incarnation, so a restarted
//! manager finds the actors already running instead of starting duplicates).
//!
//! **Leases:** every `monitors.lease_secs / 3` it renews its instance lease and the shards it
//! owns, counts the live instances, and claims free or expired shards up to its fair share,
//! `ceil(shards / live instances)`; above its share (another instance joined) it stops the
//! actors of the excess shards and releases them, so a second instance ends up with half. A
//! shard it no longer owns has its actors stopped. A dead instance's shards are claimed by the
//! others once their leases ran out.
//!
//! **A lease cannot be outlived** ([`LeaseClock`]): the leases a renewal writes last
//! `lease_secs` from the database's clock at the renewal, which is after the moment the renewal
//! *began* here; so this instance counts its leases valid until that beginning plus two thirds
//! of the lease, and a watchdog timer stops every actor at that instant unless a later renewal
//! succeeded, whether the renewal in flight failed, hangs, or returns late (a renewal that
//! returns after its own deadline counts for nothing). The remaining third is the margin for
//! clock drift and a stalled thread. This is the rule of Kubernetes' client-go leader election
//! (a leader gives up once its `RenewDeadline`, shorter than the lease, passes without a
//! successful renewal). Each renewal runs in one transaction with a `statement_timeout` of a
//! third of the lease, so a renewal stuck behind a lock gives up in time for the next one. The
//! actors' state writes are also fenced in PostgreSQL on the shard's lease
//! ([`observe_core::store::monitor_runs::Fence`]): a write from an instance that lost the shard
//! writes nothing, and the actor stops.
//!
//! **Changes:** [`Reload`] (from [`super::MonitorControl::changed`], after a committed API
//! change) reloads one monitor at once: started, updated, or stopped (paused, deleted). Every
//! `monitors.sync_interval_secs` it also reads the monitors whose `updated_at` moved (changes
//! made through another instance), and every renewal it lists its shards' monitors, which
//! catches deletions and anything a poll missed.
//!
//! **Mailbox:** [`MAILBOX`]; a full mailbox drops a `Reload`, which the next poll makes up for.
//!
//! **Drain:** at shutdown it stops its MonitorActors (waiting, at most `STOP_WAIT` (3 s), for those
//! writing a check's state), then drains the CheckWriter (their rows), then releases its shards
//! and its instance lease, so another instance takes them over at its next renewal rather than
//! after the lease.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use observe_core::store::monitor_runs::{self as store, Listed, Loaded};
use observe_core::store::StoreError;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Engine, Registry};
use crate::supervisor::{Drain, Lifeline, SupervisedActor};

/// Mailbox capacity of the ShardManager.
pub const MAILBOX: usize = 16_384;
/// How long the drain waits for MonitorActors to finish writing their last state.
const STOP_WAIT: Duration = Duration::from_secs(3);
/// How long [`Reload`]s are gathered before one query loads them all.
const RELOAD_GATHER: Duration = Duration::from_millis(5);
/// Changes are read again this far back, so a change committed late is not missed.
const SYNC_OVERLAP: chrono::Duration = chrono::Duration::seconds(5);

/// Monitor `id` changed through the API: reload it.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Reload(pub Uuid);

/// When this instance must consider its shard leases lost: two thirds of the lease after the
/// *start* of its last successful renewal. Plain data, driven by the caller's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseClock {
    /// How long the leases count, from the start of a renewal.
    valid_for: Duration,
    /// The start of the last renewal that succeeded in time.
    last_renewed: Option<Instant>,
}

impl LeaseClock {
    /// Leases of `lease` count for two thirds of it.
    pub fn new(lease: Duration) -> Self {
        Self {
            valid_for: lease.mul_f64(2.0 / 3.0),
            last_renewed: None,
        }
    }

    /// A renewal that began at `began` succeeded, as found at `now`. `false` when it returned
    /// too late to count (its leases may have run out meanwhile): nothing changes then.
    pub fn renewed(&mut self, began: Instant, now: Instant) -> bool {
        if now >= began + self.valid_for {
            return false;
        }
        // A renewal that began earlier than the last one counted (they overlap) adds nothing.
        if self.last_renewed.is_none_or(|last| began > last) {
            self.last_renewed = Some(began);
        }
        true
    }

    /// Until when the leases count, if they ever did.
    pub fn valid_until(&self) -> Option<Instant> {
        self.last_renewed.map(|at| at + self.valid_for)
    }

    /// Whether the leases no longer count at `now` (or never did).
    pub fn expired(&self, now: Instant) -> bool {
        self.valid_until().is_none_or(|until| now >= until)
    }
}

pub struct ShardManager {
    _lifeline: Lifeline,
    engine: Engine,
    registry: Registry,
    ticking: bool,
    syncing: bool,
    draining: bool,
    shards_ready: bool,
    leases: LeaseClock,
    /// Fires when the leases stop counting, unless a renewal moved it.
    watchdog: Option<SpawnHandle>,
    sync_since: Option<DateTime<Utc>>,
    /// Monitors to reload, gathered for a moment so a burst of changes is one query.
    reloads: Vec<Uuid>,
}

impl ShardManager {
    pub(super) fn new(lifeline: Lifeline, engine: Engine, registry: Registry) -> Self {
        let leases = LeaseClock::new(Duration::from_secs(engine.settings.lease_secs));
        Self {
            _lifeline: lifeline,
            engine,
            registry,
            ticking: false,
            syncing: false,
            draining: false,
            shards_ready: false,
            leases,
            watchdog: None,
            sync_since: None,
            reloads: Vec::new(),
        }
    }

    fn total(&self) -> i32 {
        i32::try_from(self.engine.settings.shards).unwrap_or(i32::MAX)
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.engine.settings.lease_secs)
    }

    /// Renew, rebalance and reconcile.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        // Also checked here, should the watchdog's timer have been held up.
        self.stop_if_leases_expired();
        if self.ticking || self.draining {
            return;
        }
        self.ticking = true;
        let pool = self.engine.pool.clone();
        let me = self.registry.instance().to_string();
        let total = self.total();
        let lease = self.lease();
        let ensure = !self.shards_ready;
        // A statement stuck behind a lock gives up before the next renewal is due.
        let statement_timeout_ms = (lease / 3).as_millis().max(100);
        let began = Instant::now();
        let run = async move {
            let mut client = pool.get().await?;
            // One transaction: the leases it writes all start at its beginning (`now()`),
            // which is after `began`.
            let tx = client.transaction().await?;
            tx.batch_execute(&format!(
                "SET LOCAL statement_timeout = {statement_timeout_ms}"
            ))
            .await?;
            if ensure {
                store::ensure_shards(&tx, total).await?;
            }
            let (mut held, live) = store::renew(&tx, &me, total, lease).await?;
            let fair = store::fair_share(total, live);
            let short = fair - held.len() as i64;
            if short > 0 {
                held.extend(store::claim(&tx, &me, total, short, lease).await?);
            }
            held.sort_unstable();
            let listed = store::list_shards(&tx, &held, total).await?;
            let now = store::db_now(&tx).await?;
            tx.commit().await?;
            Ok::<_, StoreError>((held, fair, listed, now))
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(run).map(move |result, act, ctx| {
                act.ticking = false;
                if act.draining {
                    return;
                }
                match result {
                    Ok((held, fair, listed, now)) => {
                        if !act.leases.renewed(began, Instant::now()) {
                            act.renew_failed("the renewal returned after its leases' deadline");
                            return;
                        }
                        act.arm_watchdog(ctx);
                        act.shards_ready = true;
                        if act.sync_since.is_none() {
                            act.sync_since = Some(now);
                        }
                        act.rebalance(held, fair, listed, began, ctx);
                    }
                    Err(e) => act.renew_failed(e),
                }
            }),
        );
    }

    /// Sets the watchdog to the instant the leases stop counting.
    fn arm_watchdog(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.watchdog.take() {
            ctx.cancel_future(handle);
        }
        let Some(until) = self.leases.valid_until() else {
            return;
        };
        let delay = until.saturating_duration_since(Instant::now());
        self.watchdog = Some(ctx.run_later(delay, |act, _| {
            act.watchdog = None;
            act.stop_if_leases_expired();
        }));
    }

    /// Stops every monitor of this instance once its leases no longer count.
    fn stop_if_leases_expired(&mut self) {
        if self.registry.owned().is_empty() || !self.leases.expired(Instant::now()) {
            return;
        }
        tracing::error!(
            actor = Self::KIND,
            lease_secs = self.engine.settings.lease_secs,
            "shard leases not renewed within two thirds of the lease: stopping this instance's monitors"
        );
        self.registry.set_owned(BTreeSet::new());
        self.registry.stop_where(|_| true);
        self.engine.metrics.monitors.shards_owned.set(0);
    }

    fn renew_failed(&mut self, error: impl std::fmt::Display) {
        tracing::warn!(
            actor = Self::KIND,
            error = %error,
            "renewing monitor shard leases failed"
        );
        self.stop_if_leases_expired();
    }

    fn rebalance(
        &mut self,
        held: Vec<i32>,
        fair: i64,
        listed: Vec<Listed>,
        listed_at: Instant,
        ctx: &mut Context<Self>,
    ) {
        let mut held: BTreeSet<i32> = held.into_iter().collect();
        let excess = held.len() as i64 - fair;
        let mut released = Vec::new();
        if excess > 0 {
            for _ in 0..excess {
                if let Some(shard) = held.pop_last() {
                    released.push(shard);
                }
            }
        }
        let before = self.registry.owned();
        let gained: Vec<i32> = held.difference(&before).copied().collect();
        self.registry.set_owned(held.clone());
        self.engine
            .metrics
            .monitors
            .shards_owned
            .set(held.len() as i64);
        // Actors of shards this instance does not own (lost or released) stop first.
        self.registry
            .stop_where(|entry| !held.contains(&entry.shard));
        if !released.is_empty() {
            tracing::info!(
                actor = Self::KIND,
                shards = released.len(),
                "releasing monitor shards above the fair share"
            );
            let pool = self.engine.pool.clone();
            let me = self.registry.instance().to_string();
            let release = async move {
                let client = pool.get().await?;
                store::release(&client, &me, Some(&released)).await
            };
            ctx.spawn(actix::fut::wrap_future::<_, Self>(release).map(|r, _, _| {
                if let Err(e) = r {
                    tracing::warn!(actor = ShardManager::KIND, error = %e, "releasing shards failed; their leases run out instead");
                }
            }));
        }
        if !gained.is_empty() {
            tracing::info!(
                actor = Self::KIND,
                gained = gained.len(),
                owned = held.len(),
                "monitor shards claimed"
            );
            self.load_shards(gained, ctx);
        }
        // Reconcile the shards owned before: deletions, pauses, anything a poll missed.
        let listed: Vec<Listed> = listed
            .into_iter()
            .filter(|l| before.contains(&l.shard) && held.contains(&l.shard))
            .collect();
        let present: std::collections::HashSet<Uuid> = listed.iter().map(|l| l.id).collect();
        self.registry.stop_where(|entry| {
            // Started after the listing: not in it, but not deleted either.
            entry.since < listed_at && before.contains(&entry.shard) && !present.contains(&entry.id)
        });
        self.consider(listed, ctx);
    }

    /// Starts, updates or stops actors for `listed` monitors of owned shards.
    fn consider(&mut self, listed: Vec<Listed>, ctx: &mut Context<Self>) {
        let owned = self.registry.owned();
        let mut reload = Vec::new();
        for l in listed {
            if !owned.contains(&l.shard) {
                continue;
            }
            if l.paused {
                self.registry.stop_one(l.id);
            } else if self.registry.updated_at(l.id) != Some(l.updated_at) {
                reload.push(l.id);
            }
        }
        if !reload.is_empty() {
            self.load_ids(reload, ctx);
        }
    }

    fn load_shards(&mut self, shards: Vec<i32>, ctx: &mut Context<Self>) {
        let pool = self.engine.pool.clone();
        let total = self.total();
        let load = async move {
            let client = pool.get().await?;
            store::load_shards(&client, &shards, total).await
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(load).map(|result, act, _| {
            match result {
                Ok(monitors) => act.run_loaded(monitors, &[]),
                Err(e) => {
                    // Claimed but not loaded: the next renewal's reconcile starts them.
                    tracing::warn!(actor = ShardManager::KIND, error = %e, "loading the monitors of claimed shards failed");
                }
            }
        }));
    }

    fn load_ids(&mut self, ids: Vec<Uuid>, ctx: &mut Context<Self>) {
        let pool = self.engine.pool.clone();
        let total = self.total();
        let load = async move {
            let client = pool.get().await?;
            let found = store::load_ids(&client, &ids, total).await?;
            Ok::<_, StoreError>((ids, found))
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(load).map(|result, act, _| {
            match result {
                Ok((ids, monitors)) => act.run_loaded(monitors, &ids),
                Err(e) => {
                    tracing::warn!(actor = ShardManager::KIND, error = %e, "reloading monitors failed; the next poll retries");
                }
            }
        }));
    }

    /// Runs `monitors` that belong here; stops those of `asked` that are gone or not ours.
    fn run_loaded(&mut self, monitors: Vec<Loaded>, asked: &[Uuid]) {
        if self.draining {
            return;
        }
        let owned = self.registry.owned();
        let found: std::collections::HashSet<Uuid> = monitors.iter().map(|m| m.config.id).collect();
        for id in asked.iter().filter(|id| !found.contains(id)) {
            // Deleted.
            self.registry.stop_one(*id);
        }
        for m in monitors {
            if m.config.paused || !owned.contains(&m.shard) {
                let id = m.config.id;
                self.registry.stop_one(id);
                continue;
            }
            self.registry.ensure_running(&self.engine, m);
        }
    }

    fn sync(&mut self, ctx: &mut Context<Self>) {
        let Some(since) = self.sync_since else {
            return;
        };
        if self.syncing || self.draining {
            return;
        }
        self.syncing = true;
        let pool = self.engine.pool.clone();
        let total = self.total();
        let run = async move {
            let client = pool.get().await?;
            let now = store::db_now(&client).await?;
            let changed = store::changed_since(&client, since - SYNC_OVERLAP, total).await?;
            Ok::<_, StoreError>((now, changed))
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(run).map(|result, act, ctx| {
            act.syncing = false;
            match result {
                Ok((now, changed)) => {
                    act.sync_since = Some(now);
                    act.consider(changed, ctx);
                }
                Err(e) => {
                    tracing::debug!(actor = ShardManager::KIND, error = %e, "polling monitor changes failed");
                }
            }
        }));
    }
}

impl Actor for ShardManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = (self.lease() / 3).max(Duration::from_millis(200));
        tracing::info!(
            actor = Self::KIND,
            instance = %self.registry.instance(),
            shards = self.engine.settings.shards,
            lease_secs = self.engine.settings.lease_secs,
            "monitor engine started"
        );
        self.tick(ctx);
        ctx.run_interval(every, |act, ctx| act.tick(ctx));
        let sync = Duration::from_secs(self.engine.settings.sync_interval_secs.max(1));
        ctx.run_interval(sync, |act, ctx| act.sync(ctx));
    }
}

impl SupervisedActor for ShardManager {
    const KIND: &'static str = "ShardManager";
    const MAILBOX: usize = MAILBOX;
}

impl Handler<Reload> for ShardManager {
    type Result = ();

    fn handle(&mut self, msg: Reload, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        if self.reloads.is_empty() {
            ctx.run_later(RELOAD_GATHER, |act, ctx| {
                let ids = std::mem::take(&mut act.reloads);
                if !ids.is_empty() && !act.draining {
                    act.load_ids(ids, ctx);
                }
            });
        }
        self.reloads.push(msg.0);
    }
}

impl Handler<Drain> for ShardManager {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        let stopped = self.registry.stop_where(|_| true);
        self.registry.set_owned(BTreeSet::new());
        self.engine.metrics.monitors.shards_owned.set(0);
        let pool = self.engine.pool.clone();
        let me = self.registry.instance().to_string();
        let writer = self.engine.writer.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let release = async move {
            // The actors finish writing the state of checks already done (not those still
            // waiting for their target), then the CheckWriter writes their rows.
            let deadline = Instant::now() + STOP_WAIT;
            while Instant::now() < deadline && stopped.iter().any(|h| !h.finished()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = writer.addr().send(Drain).await;
            match pool.get().await.map_err(StoreError::from) {
                Ok(client) => match store::release(&client, &me, None).await {
                    Ok(n) => tracing::info!(
                        actor = ShardManager::KIND,
                        shards = n,
                        "monitor shards released"
                    ),
                    Err(e) => {
                        tracing::warn!(actor = ShardManager::KIND, error = %e, "releasing monitor shards failed; their leases run out instead")
                    }
                },
                Err(e) => {
                    tracing::warn!(actor = ShardManager::KIND, error = %e, "releasing monitor shards failed; their leases run out instead")
                }
            }
            let _ = tx.send(());
        };
        actix::spawn(release);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// The registry's view of one running monitor.
pub(super) struct EntryView {
    pub id: Uuid,
    pub project_id: Uuid,
    pub shard: i32,
    pub since: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    #[test]
    fn leases_count_from_the_start_of_the_renewal_not_its_end() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(LEASE);
        assert!(clock.expired(t0), "never renewed");
        // Began at t0, returned 15 s later: still counts, until t0 + 20 s (not t0 + 35 s).
        assert!(clock.renewed(t0, t0 + Duration::from_secs(15)));
        assert_eq!(clock.valid_until(), Some(t0 + Duration::from_secs(20)));
        assert!(!clock.expired(t0 + Duration::from_millis(19_999)));
        assert!(clock.expired(t0 + Duration::from_secs(20)));
    }

    #[test]
    fn a_renewal_that_hangs_does_not_extend_anything() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(LEASE);
        assert!(clock.renewed(t0, t0 + Duration::from_millis(50)));
        // The next renewal began at t0 + 10 s and hangs: at t0 + 20 s the leases are over,
        // whether or not it ever returns.
        assert!(clock.expired(t0 + Duration::from_secs(20)));
        // It returns at t0 + 31 s, after its own deadline (t0 + 30 s): it counts for nothing.
        let began = t0 + Duration::from_secs(10);
        assert!(!clock.renewed(began, t0 + Duration::from_secs(31)));
        assert!(clock.expired(t0 + Duration::from_secs(31)));
        // Returning before its deadline, it would have counted from its start.
        let mut other = LeaseClock::new(LEASE);
        assert!(other.renewed(began, t0 + Duration::from_secs(29)));
        assert_eq!(other.valid_until(), Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn an_older_renewal_returning_late_does_not_shorten_a_newer_one() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(LEASE);
        assert!(clock.renewed(t0 + Duration::from_secs(10), t0 + Duration::from_secs(11)));
        assert!(clock.renewed(t0, t0 + Duration::from_secs(12)));
        assert_eq!(clock.valid_until(), Some(t0 + Duration::from_secs(30)));
    }
}
