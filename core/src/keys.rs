//! API-key authentication without a database round trip per request, and the change channel
//! that keeps every instance's per-instance caches (API keys, sessions) honest.
//!
//! Keys are looked up by the SHA-256 of the secret and the answer (owner, or "no such key")
//! is cached in memory ([`crate::cache::LookupCache`]: least recently used out first, one
//! query for concurrent misses of one key). A revocation removes the cached entry at once on
//! the instance that made it, and announces itself on the PostgreSQL channel [`CHANNEL`] so
//! every other instance forgets it too, within the time its listener takes (the `KeyWatcher`
//! actor). Sessions ride the same channel ([`Scope::Session`], [`Scope::User`]). Cached
//! entries also expire (`cache_ttl_secs`), a safety net should a notification be lost.
//! Database lookups run at most `max_concurrent_lookups` at once, so a flood of made-up keys
//! cannot take the pool from the rest of the server, and each is paid for up front from the
//! asking client's budget ([`LookupBudget`]), given back when the key exists. Answers of "no
//! such key" are kept in an LRU of their own (`unknown_cache_max_entries`), so made-up keys
//! never push valid ones out. Each cache hears only the changes it can hold (a session's
//! change does not touch the key cache). Use of a key is noted in memory and written to
//! `last_used_at` in batches.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::auth::hash_secret;
use crate::cache::{LookupCache, Source};
use crate::config::{ApiKeySettings, DatabaseSettings};
use crate::metrics::Metrics;
use crate::ratelimit::Decision;
use crate::store::api_keys::{self, KeyOwner};
use crate::store::{GenericClient, StoreError};

/// The PostgreSQL notification channel of key and session changes. Payloads: `key:<id>`,
/// `project:<id>` (all its keys), `org:<id>` (all its projects' keys and its sessions, e.g. a
/// tier change or a deletion), `session:<id>` (one session), `user:<id>` (all their sessions).
pub const CHANNEL: &str = "observe_api_keys";

/// Longest wait for a database-lookup slot (the default pool checkout timeout).
const LOOKUP_WAIT: Duration = Duration::from_secs(3);

/// Whose keys or sessions a change concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Key(Uuid),
    Project(Uuid),
    Organisation(Uuid),
    Session(Uuid),
    User(Uuid),
}

impl Scope {
    pub fn payload(self) -> String {
        match self {
            Scope::Key(id) => format!("key:{id}"),
            Scope::Project(id) => format!("project:{id}"),
            Scope::Organisation(id) => format!("org:{id}"),
            Scope::Session(id) => format!("session:{id}"),
            Scope::User(id) => format!("user:{id}"),
        }
    }

    pub fn parse(payload: &str) -> Option<Self> {
        let (kind, id) = payload.split_once(':')?;
        let id = id.parse().ok()?;
        match kind {
            "key" => Some(Scope::Key(id)),
            "project" => Some(Scope::Project(id)),
            "org" => Some(Scope::Organisation(id)),
            "session" => Some(Scope::Session(id)),
            "user" => Some(Scope::User(id)),
            _ => None,
        }
    }

    fn covers(self, owner: &KeyOwner) -> bool {
        match self {
            Scope::Key(id) => owner.key_id == id,
            Scope::Project(id) => owner.project_id == id,
            Scope::Organisation(id) => owner.organisation_id == id,
            Scope::Session(_) | Scope::User(_) => false,
        }
    }
}

/// A per-instance cache that the changes announced on [`CHANNEL`] must reach.
pub trait Invalidate: Send + Sync {
    /// Forgets what `scope` concerns.
    fn forget(&self, scope: Scope);
    /// Forgets everything (changes may have been missed).
    fn forget_all(&self);
}

/// Whether `secret` has the shape of a key observe issues: `obs_` and 43 URL-safe base64
/// characters. Anything else is refused before any lookup.
pub fn well_formed(secret: &str) -> bool {
    secret
        .strip_prefix(crate::auth::API_KEY_PREFIX)
        .is_some_and(crate::auth::token_shaped)
}

/// What a client presents to speak for a project: an `obs_` key (its secret), or a key's
/// public DSN key (Sentry SDKs). Both are cached by their SHA-256; their shapes never overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    Secret(&'a str),
    DsnKey(&'a str),
}

impl Credential<'_> {
    fn text(&self) -> &str {
        match self {
            Credential::Secret(s) | Credential::DsnKey(s) => s,
        }
    }

    /// Whether it has the shape observe issues (anything else is refused unlooked).
    pub fn well_formed(&self) -> bool {
        match self {
            Credential::Secret(s) => well_formed(s),
            Credential::DsnKey(k) => crate::auth::dsn_key_shaped(k),
        }
    }
}

/// What looking a key up found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLookup {
    Owner(KeyOwner),
    /// No such key, or a revoked one.
    Unknown,
    /// Not looked up: the asking client's lookup budget is spent (never cached).
    Refused(Decision),
}

impl KeyLookup {
    fn unknown(&self) -> bool {
        matches!(self, KeyLookup::Unknown)
    }
}

/// What a database lookup of a key costs the client asking for it: one unit of a budget, paid
/// before the query runs (so a burst cannot outrun it) and given back when the key exists.
/// Only the caller that runs the query pays; callers sharing its answer pay nothing.
pub trait LookupBudget {
    /// Pays for one lookup; the refusing decision when the budget is spent.
    fn spend(&self) -> impl Future<Output = Result<(), Decision>>;
    /// Gives the lookup back: it found a key.
    fn refund(&self) -> impl Future<Output = ()>;
}

#[derive(Clone)]
pub struct KeyCache {
    entries: LookupCache<Vec<u8>, KeyLookup>,
    used: Arc<Mutex<HashMap<Uuid, DateTime<Utc>>>>,
    metrics: Metrics,
    /// Database lookups running at once at most.
    lookups: Arc<tokio::sync::Semaphore>,
    ttl: Duration,
    unknown_ttl: Duration,
}

impl KeyCache {
    pub fn new(settings: &ApiKeySettings, metrics: Metrics) -> Self {
        Self {
            entries: LookupCache::with_negatives(
                settings.cache_max_entries,
                settings.unknown_cache_max_entries,
                KeyLookup::unknown,
            ),
            used: Arc::default(),
            metrics,
            lookups: Arc::new(tokio::sync::Semaphore::new(
                settings.max_concurrent_lookups.max(1),
            )),
            ttl: Duration::from_secs(settings.cache_ttl_secs),
            unknown_ttl: Duration::from_secs(settings.unknown_ttl_secs),
        }
    }

    /// The cached answer for `secret`, if there is one (a use of a valid key is noted).
    pub fn cached(&self, secret: &str) -> Option<Option<KeyOwner>> {
        self.cached_credential(Credential::Secret(secret))
    }

    /// The cached answer for a credential, if there is one (a use of a valid key is noted).
    pub fn cached_credential(&self, credential: Credential<'_>) -> Option<Option<KeyOwner>> {
        let answer = match self
            .entries
            .get(&hash_secret(credential.text()), std::time::Instant::now())?
        {
            KeyLookup::Owner(owner) => Some(owner),
            KeyLookup::Unknown => None,
            KeyLookup::Refused(_) => return None,
        };
        self.count(Source::Cache);
        self.note_use(answer.as_ref());
        Some(answer)
    }

    /// What the key `secret` is, and where the answer came from. Only a cache miss takes a
    /// connection, so cached keys keep working while PostgreSQL is away; and only after the
    /// query is paid for from `budget`.
    pub async fn authenticate(
        &self,
        pool: &crate::db::PgPool,
        secret: &str,
        budget: &impl LookupBudget,
    ) -> Result<(KeyLookup, Source), StoreError> {
        self.authenticate_credential(pool, Credential::Secret(secret), budget)
            .await
    }

    /// [`Self::authenticate`] for either credential.
    pub async fn authenticate_credential(
        &self,
        pool: &crate::db::PgPool,
        credential: Credential<'_>,
        budget: &impl LookupBudget,
    ) -> Result<(KeyLookup, Source), StoreError> {
        let (ttl, unknown_ttl) = (self.ttl, self.unknown_ttl);
        let lookups = self.lookups.clone();
        let (answer, source) = self
            .entries
            .get_or_load(hash_secret(credential.text()), || async move {
                if let Err(refused) = budget.spend().await {
                    // Shared with the callers of this flight, kept by nobody.
                    return Ok((KeyLookup::Refused(refused), Duration::ZERO));
                }
                // Bounded like a pool checkout: past it the SDK hears 503 and retries.
                let _slot = match tokio::time::timeout(LOOKUP_WAIT, lookups.acquire_owned()).await {
                    Ok(Ok(slot)) => slot,
                    _ => return Err(StoreError::Unavailable("API key lookups busy".into())),
                };
                let client = pool.get().await?;
                let owner = match credential {
                    Credential::Secret(secret) => {
                        api_keys::owner_by_hash(&client, &hash_secret(secret)).await?
                    }
                    Credential::DsnKey(key) => api_keys::owner_by_dsn_key(&client, key).await?,
                };
                match owner {
                    Some(owner) => {
                        budget.refund().await;
                        Ok((KeyLookup::Owner(owner), ttl))
                    }
                    None => Ok((KeyLookup::Unknown, unknown_ttl)),
                }
            })
            .await?;
        match &answer {
            // Answered by no lookup: the client's budget said no first.
            KeyLookup::Refused(_) => self
                .metrics
                .api_key_lookups
                .with_label_values(&["refused"])
                .inc(),
            KeyLookup::Owner(owner) => {
                self.count(source);
                self.note_use(Some(owner));
            }
            KeyLookup::Unknown => self.count(source),
        }
        Ok((answer, source))
    }

    fn count(&self, source: Source) {
        self.metrics
            .api_key_lookups
            .with_label_values(&[source.label()])
            .inc();
    }

    fn note_use(&self, owner: Option<&KeyOwner>) {
        if let Some(owner) = owner {
            self.used
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(owner.key_id, Utc::now());
        }
    }

    /// Forgets every cached key the change concerns; a change of sessions concerns none, and
    /// costs nothing here.
    pub fn forget(&self, scope: Scope) {
        if matches!(scope, Scope::Session(_) | Scope::User(_)) {
            return;
        }
        self.entries.forget_where(move |_, entry| match entry {
            KeyLookup::Owner(owner) => scope.covers(owner),
            KeyLookup::Unknown | KeyLookup::Refused(_) => false,
        });
    }

    /// Forgets everything (after notifications may have been missed).
    pub fn forget_all(&self) {
        self.entries.forget_all();
    }

    /// The uses noted since the last call.
    pub fn take_used(&self) -> Vec<(Uuid, DateTime<Utc>)> {
        std::mem::take(&mut *self.used.lock().unwrap_or_else(PoisonError::into_inner))
            .into_iter()
            .collect()
    }

    /// Puts uses back (a flush that failed), keeping the later time of each key.
    pub fn restore_used(&self, uses: Vec<(Uuid, DateTime<Utc>)>) {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, at) in uses {
            let slot = used.entry(id).or_insert(at);
            if *slot < at {
                *slot = at;
            }
        }
    }
}

impl Invalidate for KeyCache {
    fn forget(&self, scope: Scope) {
        KeyCache::forget(self, scope);
    }

    fn forget_all(&self) {
        KeyCache::forget_all(self);
    }
}

/// Announces a key change to every instance; delivered when the caller's transaction commits.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "keys.announce", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn announce(client: &impl GenericClient, scope: Scope) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &scope.payload()])
        .await?;
    Ok(())
}

/// Writes noted uses to `last_used_at`, one statement for the whole batch.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "keys.flush_last_used", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn flush_last_used(
    client: &impl GenericClient,
    uses: &[(Uuid, DateTime<Utc>)],
) -> Result<(), StoreError> {
    if uses.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = uses.iter().map(|(id, _)| *id).collect();
    let times: Vec<DateTime<Utc>> = uses.iter().map(|(_, at)| *at).collect();
    client
        .execute(
            "UPDATE api_keys k SET last_used_at = greatest(k.last_used_at, u.at)
             FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, at)
             WHERE k.id = u.id",
            &[&ids, &times],
        )
        .await?;
    Ok(())
}

/// Listens for key and session changes on a dedicated connection and applies them to every
/// cache in `caches` until the connection fails (the caller restarts it). Everything cached is
/// forgotten once listening, since changes made while not listening were missed.
pub async fn watch(
    settings: &DatabaseSettings,
    caches: &[Arc<dyn Invalidate>],
) -> Result<(), StoreError> {
    use futures_util::StreamExt;
    use tokio_postgres::AsyncMessage;

    let (client, mut connection) = crate::db::connect_dedicated(settings)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
        "connection closed".to_string()
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    for cache in caches {
        cache.forget_all();
    }
    tracing::debug!(channel = CHANNEL, "listening for API key changes");
    while let Some(payload) = rx.recv().await {
        match Scope::parse(&payload) {
            Some(scope) => caches.iter().for_each(|cache| cache.forget(scope)),
            None => tracing::warn!(payload = %payload, "unknown API key notification"),
        }
    }
    drop(client);
    let reason = driver.await.unwrap_or_else(|e| e.to_string());
    Err(StoreError::Unavailable(format!(
        "key change listener stopped: {reason}"
    )))
}

/// Writes the uses noted in `cache` to `last_used_at`; on failure they are kept for the next try.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "keys.flush_cache_uses", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn flush_cache_uses(
    pool: &crate::db::PgPool,
    cache: &KeyCache,
) -> Result<usize, StoreError> {
    let uses = cache.take_used();
    if uses.is_empty() {
        return Ok(0);
    }
    let result = match pool.get().await {
        Ok(client) => flush_last_used(&client, &uses).await,
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => Ok(uses.len()),
        Err(e) => {
            cache.restore_used(uses);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiers::Tier;

    fn owner() -> KeyOwner {
        KeyOwner {
            key_id: Uuid::new_v4(),
            project_id: Uuid::new_v4(),
            project_number: 1,
            organisation_id: Uuid::new_v4(),
            tier: Tier::Hobby,
        }
    }

    #[test]
    fn scopes_round_trip_and_cover_their_keys() {
        let o = owner();
        for scope in [
            Scope::Key(o.key_id),
            Scope::Project(o.project_id),
            Scope::Organisation(o.organisation_id),
        ] {
            assert_eq!(Scope::parse(&scope.payload()), Some(scope));
            assert!(scope.covers(&o));
        }
        for scope in [Scope::Session(Uuid::new_v4()), Scope::User(Uuid::new_v4())] {
            assert_eq!(Scope::parse(&scope.payload()), Some(scope));
            assert!(!scope.covers(&o));
        }
        assert!(!Scope::Key(Uuid::new_v4()).covers(&o));
        assert_eq!(Scope::parse("key:nope"), None);
        assert_eq!(
            Scope::parse("team:00000000-0000-0000-0000-000000000000"),
            None
        );
    }

    #[test]
    fn only_keys_of_the_issued_shape_are_well_formed() {
        let (key, _) = crate::auth::new_api_key();
        assert!(well_formed(&key.secret));
        for bad in [
            "obs_short".to_string(),
            format!("obs_{}", "!".repeat(43)),
            format!("obs_{}", "a".repeat(44)),
            format!("xyz_{}", "a".repeat(43)),
            format!("obs_{}é", "a".repeat(41)),
        ] {
            assert!(!well_formed(&bad), "{bad}");
        }
    }

    fn cache() -> KeyCache {
        let mut settings = crate::config::Settings::load_from(|_| None)
            .unwrap()
            .api_keys;
        settings.cache_ttl_secs = 60;
        KeyCache::new(&settings, Metrics::new().unwrap())
    }

    #[test]
    fn forgetting_a_scope_drops_only_its_keys() {
        let cache = cache();
        let (a, b) = (owner(), owner());
        let far = std::time::Instant::now() + Duration::from_secs(60);
        cache.entries.put(vec![1], KeyLookup::Owner(a), far);
        cache.entries.put(vec![2], KeyLookup::Owner(b), far);
        cache.entries.put(vec![3], KeyLookup::Unknown, far);
        cache.forget(Scope::Project(a.project_id));
        let now = std::time::Instant::now();
        assert!(cache.entries.get(&vec![1], now).is_none());
        assert_eq!(cache.entries.get(&vec![2], now), Some(KeyLookup::Owner(b)));
        assert_eq!(cache.entries.get(&vec![3], now), Some(KeyLookup::Unknown));
        cache.forget(Scope::User(Uuid::new_v4()));
        assert_eq!(cache.entries.len(), 2, "a user's change concerns no key");
        cache.forget_all();
        assert!(cache.entries.get(&vec![2], now).is_none());
    }

    #[test]
    fn uses_keep_the_latest_time_across_a_failed_flush() {
        let cache = cache();
        let o = owner();
        cache.note_use(Some(&o));
        let taken = cache.take_used();
        assert_eq!(taken.len(), 1);
        assert!(cache.take_used().is_empty());
        let later = taken[0].1 + chrono::Duration::seconds(5);
        cache.used.lock().unwrap().insert(o.key_id, later);
        cache.restore_used(taken);
        assert_eq!(cache.take_used(), vec![(o.key_id, later)]);
    }

    #[tokio::test]
    async fn session_changes_leave_key_loads_in_flight_alone() {
        let cache = cache();
        let o = owner();
        let forgetter = cache.clone();
        let (answer, _) = cache
            .entries
            .get_or_load(vec![9], || async move {
                forgetter.forget(Scope::User(Uuid::new_v4()));
                forgetter.forget(Scope::Session(Uuid::new_v4()));
                Ok((KeyLookup::Owner(o), Duration::from_secs(60)))
            })
            .await
            .unwrap();
        assert_eq!(answer, KeyLookup::Owner(o));
        assert_eq!(
            cache.entries.get(&vec![9], std::time::Instant::now()),
            Some(KeyLookup::Owner(o)),
            "a session's change threw away a key lookup"
        );
    }
}
