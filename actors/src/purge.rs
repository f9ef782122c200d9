//! `Purger`: one per instance; deletes the raw rows of deleted projects and monitors in bounded
//! batches, off the request path, and stops a deleted project's actors on this instance.
//!
//! **Owns:** a dedicated PostgreSQL connection that `LISTEN`s on
//! [`observe_core::store::purge::CHANNEL`] (a deletion's trigger announces it at commit), and
//! the purge loop. On `project:<id>` it stops the project's IngestActor (its buffered requests
//! are answered, nothing of them stored) and MonitorActors on this instance at once, and wakes
//! the loop. The loop also runs every `maintenance.purge_poll_secs`: it stops the actors of
//! every project with a pending purge (so a notification missed while not listening costs a
//! poll, not a leak), then claims pending purges one at a time (any instance may; a claim
//! lasts `maintenance.purge_claim_secs` and is extended while working) and deletes their rows partition by
//! partition, `maintenance.purge_batch_rows` per statement, each statement its own
//! transaction. Nothing is kept in memory that a restart would lose: what is left to purge is
//! in `purges` ([`observe_core::store::purge`]).
//!
//! **Mailbox:** 16; it only receives `Drain`. **Restarts:** when the listening connection fails
//! the actor reports it and stops; the supervisor restarts it with backoff. A failed purge step
//! is logged and retried at the next poll. **Drain:** stops the loop after its current
//! statement and gives its claim back, so another instance (or the next start) takes the purge
//! up at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use observe_core::config::Settings;
use observe_core::db::PgPool;
use observe_core::metrics::Metrics;
use observe_core::store::purge::{self as store, Deleted, Purge, Settled};
use observe_core::store::{GenericClient, StoreError};
use tokio::sync::{mpsc, Notify};

use crate::ingest::IngestRegistry;
use crate::monitor::MonitorControl;
use crate::supervisor::{Drain, Lifeline, Supervised, SupervisedActor, Supervisor};

/// What the Purger's two loops share.
#[derive(Clone)]
struct Shared {
    pool: PgPool,
    settings: Arc<Settings>,
    metrics: Metrics,
    ingest: IngestRegistry,
    monitors: MonitorControl,
    /// This instance in `purges.claimed_by`.
    instance: Arc<str>,
    wake: Arc<Notify>,
    stopping: Arc<AtomicBool>,
    /// The purge claimed now, to give back at a drain.
    current: Arc<Mutex<Option<i64>>>,
}

impl Shared {
    /// How long a claim on a purge lasts unless extended: an instance that died mid-purge
    /// delays it by at most this.
    fn hold(&self) -> Duration {
        Duration::from_secs(self.settings.maintenance.purge_claim_secs.max(1))
    }

    /// Stops a deleted project's actors on this instance.
    fn project_deleted(&self, project_id: uuid::Uuid) {
        self.ingest.stop_project(project_id);
        self.monitors.project_deleted(project_id);
    }

    fn set_current(&self, id: Option<i64>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = id;
    }

    /// One round: the actors of deleted projects stopped, then every claimable purge done.
    async fn round(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        for project_id in store::deleted_projects(&client).await? {
            self.project_deleted(project_id);
        }
        while !self.stopping.load(Ordering::Relaxed) {
            let hold = self.hold();
            let Some(purge) = store::claim(&client, &self.instance, hold).await? else {
                break;
            };
            self.set_current(Some(purge.id));
            let done = self.purge(&client, &purge).await;
            self.set_current(None);
            if let Err(e) = done {
                // Given back to be retried at the next poll, by any instance.
                let retry = Duration::from_secs(self.settings.maintenance.purge_poll_secs);
                let _ = store::release(&client, &self.instance, purge.id, retry).await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes everything of `purge`, batch by batch, then settles it.
    async fn purge(&self, client: &impl GenericClient, purge: &Purge) -> Result<(), StoreError> {
        let batch = self.settings.maintenance.purge_batch_rows.max(1);
        let started = Instant::now();
        let mut extended = Instant::now();
        let mut pending: i64 = 0;
        let mut total: i64 = 0;
        for (table, column) in purge.targets() {
            for partition in store::partitions(client, table).await? {
                loop {
                    if self.stopping.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let n =
                        store::delete_batch(client, &partition, column, purge.key(), batch).await?;
                    self.metrics.purge.batches.inc();
                    self.metrics
                        .purge
                        .rows
                        .with_label_values(&[table])
                        .inc_by(n);
                    let n = i64::try_from(n).unwrap_or(i64::MAX);
                    pending += n;
                    total += n;
                    if extended.elapsed() >= self.hold() / 3 {
                        if !store::extend(client, &self.instance, purge.id, self.hold(), pending)
                            .await?
                        {
                            // Taken over (this instance stalled past its claim): leave it.
                            return Ok(());
                        }
                        pending = 0;
                        extended = Instant::now();
                    }
                    if n < batch {
                        break;
                    }
                }
            }
        }
        if pending > 0 {
            store::extend(client, &self.instance, purge.id, self.hold(), pending).await?;
        }
        let settle = Duration::from_secs(self.settings.maintenance.purge_settle_secs);
        let settled = store::settle(client, &self.instance, purge.id, settle).await?;
        if total > 0 || settled == Settled::Finished {
            tracing::info!(
                actor = Purger::KIND,
                project_id = %purge.project_id,
                monitor_id = ?purge.monitor_id,
                rows = total,
                took_ms = started.elapsed().as_millis() as u64,
                finished = settled == Settled::Finished,
                "raw rows of a deleted {} purged",
                if purge.monitor_id.is_some() { "monitor" } else { "project" }
            );
        }
        Ok(())
    }

    /// Rounds until stopped: at once, then whenever woken or every poll interval.
    async fn run(self) {
        let every = Duration::from_secs(self.settings.maintenance.purge_poll_secs.max(1));
        while !self.stopping.load(Ordering::Relaxed) {
            if let Err(e) = self.round().await {
                tracing::warn!(actor = Purger::KIND, error = %e, "purging deleted data failed; retried at the next poll");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

pub struct Purger {
    lifeline: Lifeline,
    shared: Shared,
}

impl SupervisedActor for Purger {
    const KIND: &'static str = "Purger";
    const MAILBOX: usize = 16;
}

impl Actor for Purger {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Deleted>();
        let database = self.shared.settings.database.clone();
        let listen = async move { store::listen(&database, tx).await };
        ctx.spawn(
            actix::fut::wrap_future(listen).map(|result, act: &mut Self, ctx| {
                let reason = match result {
                    Ok(()) => "purge listener ended".to_string(),
                    Err(e) => e.to_string(),
                };
                act.lifeline.fail(reason);
                ctx.stop();
            }),
        );
        let shared = self.shared.clone();
        ctx.spawn(actix::fut::wrap_future(async move {
            while let Some(deleted) = rx.recv().await {
                if let Deleted::Project(project_id) = deleted {
                    shared.project_deleted(project_id);
                }
                shared.wake.notify_one();
            }
        }));
        ctx.spawn(actix::fut::wrap_future(self.shared.clone().run()));
    }
}

impl Handler<Drain> for Purger {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        self.shared.stopping.store(true, Ordering::Relaxed);
        self.lifeline.finish();
        ctx.stop();
        let shared = self.shared.clone();
        Box::pin(async move {
            let current = *shared
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(id) = current {
                let give_back = async {
                    let client = shared.pool.get().await?;
                    store::release(&client, &shared.instance, id, Duration::ZERO).await
                };
                match tokio::time::timeout(Duration::from_secs(2), give_back).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(actor = Purger::KIND, error = %e, "purge claim not given back; it runs out instead")
                    }
                    Err(_) => {
                        tracing::warn!(
                            actor = Purger::KIND,
                            "purge claim not given back in time; it runs out instead"
                        )
                    }
                }
            }
        })
    }
}

/// Starts the Purger under supervision on `arbiter` (drained at shutdown).
pub fn start(
    supervisor: &Supervisor,
    arbiter: &ArbiterHandle,
    settings: Arc<Settings>,
    pool: PgPool,
    metrics: Metrics,
    ingest: IngestRegistry,
    monitors: MonitorControl,
) -> Supervised<Purger> {
    let instance: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
    supervisor.spawn_drainable("purger", arbiter, move |lifeline| Purger {
        lifeline,
        shared: Shared {
            pool: pool.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            ingest: ingest.clone(),
            monitors: monitors.clone(),
            instance: instance.clone(),
            wake: Arc::new(Notify::new()),
            stopping: Arc::new(AtomicBool::new(false)),
            current: Arc::new(Mutex::new(None)),
        },
    })
}
