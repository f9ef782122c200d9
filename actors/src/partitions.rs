//! `PartitionKeeper`: keeps the raw tables' daily partitions created ahead of time.
//!
//! **Owns:** nothing but its timer. At start and every hour it runs
//! [`observe_core::store::ingest::ensure_partitions`] (idempotent; safe from several
//! instances at once), so ingestion writes into a day's partition that already exists. The
//! raw tables' DEFAULT partitions catch anything else, so a missed run never fails a write.
//!
//! **Mailbox:** 16; it receives nothing. **Restarts:** errors are logged and retried at the
//! next tick; only a panic restarts it. **Drain:** none needed.

use std::time::Duration;

use actix::prelude::*;
use observe_core::db::PgPool;
use observe_core::store::ingest::ensure_partitions;

use crate::supervisor::{Lifeline, Supervised, SupervisedActor, Supervisor};

const EVERY: Duration = Duration::from_secs(3600);

pub struct PartitionKeeper {
    _lifeline: Lifeline,
    pool: PgPool,
    days_ahead: u32,
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
        let (pool, days) = (self.pool.clone(), self.days_ahead);
        ctx.spawn(actix::fut::wrap_future(async move {
            let result = match pool.get().await {
                Ok(client) => ensure_partitions(&client, days).await,
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(0) => {}
                Ok(created) => tracing::info!(created, "raw table partitions created"),
                Err(e) => {
                    tracing::warn!(error = %e, "partitions not checked; retried in an hour")
                }
            }
        }));
    }
}

/// Starts the keeper under supervision on `arbiter`.
pub fn start(
    supervisor: &Supervisor,
    arbiter: &ArbiterHandle,
    pool: PgPool,
    days_ahead: u32,
) -> Supervised<PartitionKeeper> {
    supervisor.spawn("partition-keeper", arbiter, move |lifeline| {
        PartitionKeeper {
            _lifeline: lifeline,
            pool: pool.clone(),
            days_ahead,
        }
    })
}
