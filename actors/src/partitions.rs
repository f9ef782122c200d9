//! `PartitionKeeper`: keeps the daily partitions of the partitioned tables created ahead of time.
//!
//! **Owns:** nothing but its timer. At start and every hour it runs
//! [`observe_core::store::partitions::ensure`] (idempotent; safe from several instances at
//! once), which creates each missing partition in a transaction of its own, waiting at most
//! `maintenance.partition_lock_timeout_ms` for its table's lock. A partition skipped because its
//! table was busy is logged and tried again after [`RETRY_SKIPPED`], so one busy table neither
//! blocks ingestion into the others nor waits an hour. The DEFAULT partitions catch anything
//! meanwhile, so a missed run never fails a write.
//!
//! **Mailbox:** 16; it receives nothing. **Restarts:** errors are logged and retried at the
//! next tick; only a panic restarts it. **Drain:** none needed.

use std::time::Duration;

use actix::prelude::*;
use observe_core::db::PgPool;
use observe_core::store::partitions::ensure;
use observe_core::store::StoreError;

use crate::supervisor::{Lifeline, Supervised, SupervisedActor, Supervisor};

const EVERY: Duration = Duration::from_secs(3600);
/// A run that skipped partitions (their table was locked) is repeated this much later.
pub const RETRY_SKIPPED: Duration = Duration::from_secs(60);

pub struct PartitionKeeper {
    _lifeline: Lifeline,
    pool: PgPool,
    days_ahead: u32,
    lock_timeout: Duration,
    /// A retry of skipped partitions is scheduled.
    retry_armed: bool,
}

impl SupervisedActor for PartitionKeeper {
    const KIND: &'static str = "PartitionKeeper";
    const MAILBOX: usize = 16;
}

impl Actor for PartitionKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.keep(ctx);
        ctx.run_interval(EVERY, |act, ctx| act.keep(ctx));
    }
}

impl PartitionKeeper {
    fn keep(&self, ctx: &mut Context<Self>) {
        let (pool, days, lock_timeout) = (self.pool.clone(), self.days_ahead, self.lock_timeout);
        let run = async move {
            let mut client = pool.get().await.map_err(StoreError::from)?;
            ensure(&mut client, days, lock_timeout).await
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(run).map(|result, act, ctx| match result {
                Ok(report) => {
                    if !report.created.is_empty() {
                        tracing::info!(
                            actor = Self::KIND,
                            created = report.created.len(),
                            "partitions created"
                        );
                    }
                    for skipped in &report.skipped {
                        tracing::warn!(
                            actor = Self::KIND,
                            partition = %skipped.partition,
                            reason = %skipped.reason,
                            "partition not created; retried later"
                        );
                    }
                    if !report.skipped.is_empty() && !act.retry_armed {
                        act.retry_armed = true;
                        ctx.run_later(RETRY_SKIPPED, |act, ctx| {
                            act.retry_armed = false;
                            act.keep(ctx);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(actor = Self::KIND, error = %e, "partitions not checked; retried in an hour")
                }
            }),
        );
    }
}

/// Starts the keeper under supervision on `arbiter`.
pub fn start(
    supervisor: &Supervisor,
    arbiter: &ArbiterHandle,
    pool: PgPool,
    days_ahead: u32,
    lock_timeout: Duration,
) -> Supervised<PartitionKeeper> {
    supervisor.spawn("partition-keeper", arbiter, move |lifeline| {
        PartitionKeeper {
            _lifeline: lifeline,
            pool: pool.clone(),
            days_ahead,
            lock_timeout,
            retry_armed: false,
        }
    })
}
