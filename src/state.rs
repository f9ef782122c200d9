//! What every handler can reach: settings, pools, metrics and the actor supervisor.

use std::sync::Arc;

use observe_actors::ingest::IngestRegistry;
use observe_actors::mailer::Mailer;
use observe_actors::monitor::MonitorControl;
use observe_actors::{Supervised, Supervisor};
use observe_core::auth::{AccessTokens, Passwords};
use observe_core::config::Settings;
use observe_core::db::PgPool;
use observe_core::gcra::Limiter;
use observe_core::keys::KeyCache;
use observe_core::metrics::Metrics;
use observe_core::redis::RedisPool;
use observe_core::tiers::TierPolicy;

/// Shared by all workers through `web::Data`; every field is a cheap handle.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: PgPool,
    pub redis: RedisPool,
    pub metrics: Metrics,
    pub supervisor: Supervisor,
    pub passwords: Passwords,
    pub tokens: AccessTokens,
    pub tiers: TierPolicy,
    /// API keys by hash, kept current by the `KeyWatcher` actor.
    pub keys: KeyCache,
    /// Every outgoing email goes through it (after its outbox row is committed).
    pub mailer: Supervised<Mailer>,
    /// Per-key ingest rate limits (Redis, with a per-instance fallback).
    pub limiter: Limiter,
    /// Sessions' state (revoked, membership) by id, kept current by the `KeyWatcher` actor.
    pub sessions: observe_core::sessions::SessionCache,
    /// The budgets of the auth endpoints and of API-key lookups (on `limiter`).
    pub auth_limits: observe_core::ratelimit::AuthLimits,
    /// The IngestActors of this instance, one per active project.
    pub ingest: IngestRegistry,
    /// Tells this instance's monitor engine about monitors changed through the API.
    pub monitors: MonitorControl,
    /// Billing through Squad; `None` without Squad's secret key (routes answer 503).
    pub billing: Option<observe_core::billing::Billing>,
    /// Handles Squad's webhooks one at a time (and owns the renewals job).
    pub billing_actor: Option<Supervised<observe_actors::billing::BillingActor>>,
}
