//! `KeyWatcher`: keeps every instance's API-key and session caches honest.
//!
//! **Owns:** the dedicated PostgreSQL connection that `LISTEN`s for key and session changes
//! (revocations, logouts, password changes, deleted projects, users and organisations) and
//! applies them to the shared `KeyCache` and `SessionCache`, and the periodic write of
//! `last_used_at` for the keys used since the last write.
//!
//! **Mailbox:** 16; it only receives `Drain`.
//!
//! **Restarts:** when the listening connection fails (PostgreSQL restarted, network cut) the
//! actor reports the failure and stops; the supervisor restarts it with backoff, and the new
//! incarnation forgets both caches whole once it listens again, as changes may have been missed.
//!
//! **Drain:** writes the pending `last_used_at` updates, then replies.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use observe_core::config::Settings;
use observe_core::db::PgPool;
use observe_core::keys::{self, Invalidate, KeyCache};
use observe_core::sessions::SessionCache;

use crate::supervisor::{Drain, Lifeline, Supervised, SupervisedActor, Supervisor};

pub struct KeyWatcher {
    lifeline: Lifeline,
    cache: KeyCache,
    sessions: SessionCache,
    pool: PgPool,
    settings: Arc<Settings>,
}

impl SupervisedActor for KeyWatcher {
    const KIND: &'static str = "KeyWatcher";
    const MAILBOX: usize = 16;
}

impl Actor for KeyWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let caches: Vec<Arc<dyn Invalidate>> = vec![
            Arc::new(self.cache.clone()),
            Arc::new(self.sessions.clone()),
        ];
        let database = self.settings.database.clone();
        let listen = async move { keys::watch(&database, &caches).await };
        ctx.spawn(
            actix::fut::wrap_future(listen).map(|result, act: &mut Self, ctx| {
                let reason = match result {
                    Ok(()) => "key change listener ended".to_string(),
                    Err(e) => e.to_string(),
                };
                act.lifeline.fail(reason);
                ctx.stop();
            }),
        );
        let every = Duration::from_secs(self.settings.api_keys.last_used_flush_secs);
        ctx.run_interval(every, |act, ctx| {
            ctx.spawn(actix::fut::wrap_future(flush(
                act.pool.clone(),
                act.cache.clone(),
            )));
        });
    }
}

async fn flush(pool: PgPool, cache: KeyCache) {
    match keys::flush_cache_uses(&pool, &cache).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(keys = n, "API key last use written"),
        Err(e) => tracing::warn!(error = %e, "API key last use not written; kept for the next try"),
    }
}

impl Handler<Drain> for KeyWatcher {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        Box::pin(flush(self.pool.clone(), self.cache.clone()))
    }
}

/// Starts the watcher under supervision on `arbiter`.
pub fn start(
    supervisor: &Supervisor,
    arbiter: &ArbiterHandle,
    settings: Arc<Settings>,
    pool: PgPool,
    cache: KeyCache,
    sessions: SessionCache,
) -> Supervised<KeyWatcher> {
    supervisor.spawn_drainable("key-watcher", arbiter, move |lifeline| KeyWatcher {
        lifeline,
        cache: cache.clone(),
        sessions: sessions.clone(),
        pool: pool.clone(),
        settings: settings.clone(),
    })
}
