//! Uptime monitors: one supervised MonitorActor per monitor, the CheckWriter that batches their
//! results, and the ShardManager whose leases decide which instance runs which monitor.
//!
//! ```text
//! ShardManager (1, main arbiter)      leases shards, starts/stops MonitorActors, polls changes
//! ├── MonitorActor × monitor          timer, streak, open incident; spread over K arbiters
//! └── CheckWriter (1, main arbiter)   check rows → one INSERT … unnest per batch
//! ```
//!
//! - [`actor`]: the MonitorActor (checks, streak, incidents, alerts).
//! - [`writer`]: the CheckWriter.
//! - [`shards`]: the ShardManager.
//! - [`MonitorControl`]: the handle routes use to tell the engine a monitor changed.
//!
//! MonitorActors run on `K = min(cores, 4)` arbiters of their own (by monitor id), each with
//! one awc client shared by its actors, so checks of 10,000 monitors spread over the cores.
//! Every actor runs under the [`Supervisor`]. At shutdown the ShardManager is drained: it stops
//! the MonitorActors (letting those writing a check's state finish), then drains the
//! CheckWriter (their rows), then releases its shards.
//!
//! **Exactly one instance per monitor:** a monitor runs only on the instance holding its
//! shard's lease; actors of a shard are stopped before its lease is released, and before it
//! can run out: at the start of the last successful renewal plus 2/3 of `lease_secs`, by a
//! watchdog timer, whether or not the renewal in flight ever returns ([`shards::LeaseClock`]).
//! State writes are fenced in PostgreSQL on the shard's lease, so a write from an instance
//! that lost the shard writes nothing (and stops its actor). A restarted MonitorActor that its
//! ShardManager no longer lists finishes at once (generation check in the registry).
//!
//! **Check slots:** every check takes a slot of its organisation and one of the instance
//! ([`observe_core::check_slots`]) before its timeout (capped at `monitors.max_timeout_secs`)
//! starts, so one tenant's hanging targets delay only that tenant.
//!
//! `monitors.interval_divisor` (tests and benchmarks only) divides every interval; timeouts
//! and the retry delay are used as configured.

pub mod actor;
pub mod shards;
pub mod writer;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use observe_core::check_slots::CheckSlots;
use observe_core::config::{MonitorSettings, Settings};
use observe_core::db::PgPool;
use observe_core::metrics::Metrics;
use observe_core::store::monitor_runs::{AlertPolicy, Loaded};
use observe_core::tiers::TierPolicy;
use uuid::Uuid;

use self::actor::{MonitorActor, Preload, Stop, Update};
use self::shards::{EntryView, Reload, ShardManager};
use self::writer::{CheckSink, CheckWriter};
use crate::mailer::Mailer;
use crate::supervisor::{Supervised, Supervisor};

/// What every part of the engine shares. Cheap to clone; `Send`.
#[derive(Clone)]
pub(crate) struct Engine {
    settings: Arc<MonitorSettings>,
    pool: PgPool,
    metrics: Metrics,
    writer: Supervised<CheckWriter>,
    /// Where MonitorActors hand their check rows (waiting when the writer is full).
    checks: CheckSink,
    mailer: Supervised<Mailer>,
    alerts: AlertPolicy,
    supervisor: Supervisor,
    arbiters: Arc<Vec<ArbiterHandle>>,
    /// State writes are failing (one warning per outage, not one per monitor).
    saves_failing: Arc<AtomicBool>,
    /// Checks in flight, per instance and per organisation.
    slots: CheckSlots,
}

impl Engine {
    /// A monitor's interval as run: divided by `monitors.interval_divisor`.
    fn interval(&self, seconds: u32) -> Duration {
        let divisor = u64::from(self.settings.interval_divisor.max(1));
        Duration::from_millis(u64::from(seconds.max(1)) * 1000 / divisor)
            .max(Duration::from_millis(10))
    }

    fn arbiter_for(&self, id: Uuid) -> Option<&ArbiterHandle> {
        let n = self.arbiters.len() as u128;
        if n == 0 {
            return None;
        }
        self.arbiters.get((id.as_u128() % n) as usize)
    }
}

/// One running MonitorActor, as the registry knows it.
pub(crate) struct Running {
    handle: Supervised<MonitorActor>,
    project_id: Uuid,
    shard: i32,
    updated_at: DateTime<Utc>,
    generation: u64,
    /// When this entry was made (a listing older than that does not know it).
    since: std::time::Instant,
}

struct Inner {
    instance: String,
    owned: BTreeSet<i32>,
    actors: HashMap<Uuid, Running>,
    next_generation: u64,
}

/// The shards and MonitorActors of this instance; outlives ShardManager incarnations.
#[derive(Clone)]
pub(crate) struct Registry(Arc<Mutex<Inner>>);

impl Registry {
    fn new() -> Self {
        let instance = Uuid::new_v4().to_string();
        Self(Arc::new(Mutex::new(Inner {
            instance,
            owned: BTreeSet::new(),
            actors: HashMap::new(),
            next_generation: 0,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn instance(&self) -> String {
        self.lock().instance.clone()
    }

    fn owned(&self) -> BTreeSet<i32> {
        self.lock().owned.clone()
    }

    fn set_owned(&self, owned: BTreeSet<i32>) {
        self.lock().owned = owned;
    }

    fn running(&self) -> usize {
        self.lock().actors.len()
    }

    fn updated_at(&self, id: Uuid) -> Option<DateTime<Utc>> {
        self.lock().actors.get(&id).map(|r| r.updated_at)
    }

    /// Whether `generation` is the running incarnation line of monitor `id`.
    fn is_current(&self, id: Uuid, generation: u64) -> bool {
        self.lock()
            .actors
            .get(&id)
            .is_some_and(|r| r.generation == generation)
    }

    /// Stops (for good) and forgets the actors `pred` selects; returns their handles.
    fn stop_where(&self, pred: impl Fn(&EntryView) -> bool) -> Vec<Supervised<MonitorActor>> {
        let mut inner = self.lock();
        let ids: Vec<Uuid> = inner
            .actors
            .iter()
            .filter(|(id, r)| {
                pred(&EntryView {
                    id: **id,
                    project_id: r.project_id,
                    shard: r.shard,
                    since: r.since,
                })
            })
            .map(|(id, _)| *id)
            .collect();
        let mut stopped = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(running) = inner.actors.remove(&id) {
                // A closed mailbox is an incarnation between restarts: the next one finds
                // itself out of the registry and finishes.
                let _ = running.handle.addr().try_send(Stop);
                stopped.push(running.handle);
            }
        }
        stopped
    }

    /// Stops (for good) and forgets monitor `id`'s actor, if it runs.
    fn stop_one(&self, id: Uuid) {
        if let Some(running) = self.lock().actors.remove(&id) {
            let _ = running.handle.addr().try_send(Stop);
        }
    }

    /// Starts an actor for `m`, or hands the running one its new configuration.
    fn ensure_running(&self, engine: &Engine, m: Loaded) {
        let id = m.config.id;
        let mut inner = self.lock();
        if let Some(running) = inner.actors.get_mut(&id) {
            if !running.handle.finished() {
                if running.updated_at != m.config.updated_at {
                    let updated_at = m.config.updated_at;
                    match running.handle.addr().try_send(Update(m.config)) {
                        Ok(()) | Err(SendError::Closed(_)) => running.updated_at = updated_at,
                        // Left for the next poll.
                        Err(SendError::Full(_)) => {}
                    }
                }
                return;
            }
            inner.actors.remove(&id);
        }
        let Some(arbiter) = engine.arbiter_for(id).cloned() else {
            return;
        };
        let generation = inner.next_generation;
        inner.next_generation += 1;
        let updated_at = m.config.updated_at;
        let shard = m.shard;
        let project_id = m.config.project_id;
        let preload: Preload = Arc::new(Mutex::new(Some(m)));
        let (engine_c, registry) = (engine.clone(), self.clone());
        let handle = engine
            .supervisor
            .spawn(format!("monitor:{id}"), &arbiter, move |lifeline| {
                MonitorActor::new(
                    lifeline,
                    id,
                    generation,
                    engine_c.clone(),
                    registry.clone(),
                    &preload,
                )
            });
        inner.actors.insert(
            id,
            Running {
                handle,
                project_id,
                shard,
                updated_at,
                generation,
                since: std::time::Instant::now(),
            },
        );
    }
}

/// What the HTTP layer tells the monitor engine of this instance.
#[derive(Clone, Default)]
pub struct MonitorControl {
    manager: Option<Supervised<ShardManager>>,
    registry: Option<Registry>,
}

impl MonitorControl {
    /// A handle that reaches no engine (tests of other parts, tools).
    pub fn disconnected() -> Self {
        Self::default()
    }

    /// A monitor was created, updated, paused, resumed or deleted through the API (its row is
    /// committed): the engine reloads it and starts, updates or stops its actor at once if
    /// this instance runs its shard. Never waits; a full mailbox leaves it to the next poll.
    pub fn changed(&self, monitor_id: Uuid) {
        let Some(manager) = &self.manager else {
            return;
        };
        if let Err(e) = manager.addr().try_send(Reload(monitor_id)) {
            let reason = match e {
                SendError::Full(_) => "mailbox full",
                SendError::Closed(_) => "engine restarting",
            };
            tracing::debug!(monitor_id = %monitor_id, reason, "monitor change left to the next poll");
        }
    }

    /// Project `project_id` was deleted (here or on another instance): its MonitorActors on
    /// this instance stop at once (a check talking to its target is dropped; a state write
    /// under way finishes, and changes nothing, its row being gone).
    pub fn project_deleted(&self, project_id: Uuid) {
        if let Some(registry) = &self.registry {
            registry.stop_where(|entry| entry.project_id == project_id);
        }
    }

    /// MonitorActors running on this instance.
    pub fn running(&self) -> usize {
        self.registry.as_ref().map_or(0, Registry::running)
    }

    /// Shards this instance holds.
    pub fn owned_shards(&self) -> usize {
        self.registry.as_ref().map_or(0, |r| r.owned().len())
    }

    /// This instance's id in `monitor_shards.owner`.
    pub fn instance(&self) -> Option<String> {
        self.registry.as_ref().map(Registry::instance)
    }
}

/// Starts the engine: the CheckWriter and the ShardManager on `arbiter` (both drained at
/// shutdown), and the arbiters its MonitorActors will run on.
pub fn start(
    supervisor: &Supervisor,
    arbiter: &ArbiterHandle,
    settings: &Settings,
    pool: PgPool,
    metrics: Metrics,
    tiers: TierPolicy,
    mailer: Supervised<Mailer>,
) -> MonitorControl {
    let monitor_settings = Arc::new(settings.monitors.clone());
    // Not drainable by itself: the ShardManager drains it after its MonitorActors stopped.
    let (writer, checks) = writer::start(
        supervisor,
        arbiter,
        monitor_settings.clone(),
        pool.clone(),
        metrics.clone(),
    );
    let k = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let arbiters: Vec<ArbiterHandle> = (0..k).map(|_| Arbiter::new().handle()).collect();
    let engine = Engine {
        settings: monitor_settings,
        pool,
        metrics,
        writer,
        checks,
        mailer,
        alerts: AlertPolicy {
            tiers,
            projects_link: settings.dashboard_link("/projects"),
        },
        supervisor: supervisor.clone(),
        arbiters: Arc::new(arbiters),
        saves_failing: Arc::new(AtomicBool::new(false)),
        slots: CheckSlots::new(
            settings.monitors.max_concurrent_checks,
            settings.monitors.max_concurrent_checks_per_organisation,
        ),
    };
    let registry = Registry::new();
    let manager = {
        let (engine, registry) = (engine.clone(), registry.clone());
        supervisor.spawn_drainable("shard-manager", arbiter, move |lifeline| {
            ShardManager::new(lifeline, engine.clone(), registry.clone())
        })
    };
    MonitorControl {
        manager: Some(manager),
        registry: Some(registry),
    }
}
