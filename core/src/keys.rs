//! API-key authentication without a database round trip per request.
//!
//! Keys are looked up by the SHA-256 of the secret and the answer (owner, or "no such key")
//! is cached in memory. A revocation removes the cached entry at once on the instance that
//! made it, and announces itself on the PostgreSQL channel [`CHANNEL`] so every other
//! instance forgets it too, within the time its listener takes (the `KeyWatcher` actor).
//! Cached entries also expire (`cache_ttl_secs`), a safety net should a notification be lost.
//! Use of a key is noted in memory and written to `last_used_at` in batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::auth::hash_secret;
use crate::config::DatabaseSettings;
use crate::metrics::Metrics;
use crate::store::api_keys::{self, KeyOwner};
use crate::store::{GenericClient, StoreError};

/// The PostgreSQL notification channel of key changes. Payloads: `key:<id>`,
/// `project:<id>` (all its keys), `org:<id>` (all its projects' keys, e.g. a tier change).
pub const CHANNEL: &str = "observe_api_keys";

/// Entries kept at most; past it the cache starts over (guards memory against floods of
/// made-up keys).
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
enum Entry {
    Valid(KeyOwner, Instant),
    Unknown(Instant),
}

/// Whose keys a change concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Key(Uuid),
    Project(Uuid),
    Organisation(Uuid),
}

impl Scope {
    pub fn payload(self) -> String {
        match self {
            Scope::Key(id) => format!("key:{id}"),
            Scope::Project(id) => format!("project:{id}"),
            Scope::Organisation(id) => format!("org:{id}"),
        }
    }

    pub fn parse(payload: &str) -> Option<Self> {
        let (kind, id) = payload.split_once(':')?;
        let id = id.parse().ok()?;
        match kind {
            "key" => Some(Scope::Key(id)),
            "project" => Some(Scope::Project(id)),
            "org" => Some(Scope::Organisation(id)),
            _ => None,
        }
    }

    fn covers(self, owner: &KeyOwner) -> bool {
        match self {
            Scope::Key(id) => owner.key_id == id,
            Scope::Project(id) => owner.project_id == id,
            Scope::Organisation(id) => owner.organisation_id == id,
        }
    }
}

#[derive(Clone)]
pub struct KeyCache {
    entries: Arc<Mutex<HashMap<Vec<u8>, Entry>>>,
    used: Arc<Mutex<HashMap<Uuid, DateTime<Utc>>>>,
    metrics: Metrics,
    /// Bumped by every forget: a lookup that started before one must not store its answer,
    /// which may predate the revocation.
    generation: Arc<std::sync::atomic::AtomicU64>,
    ttl: Duration,
    unknown_ttl: Duration,
}

impl KeyCache {
    pub fn new(ttl: Duration, unknown_ttl: Duration, metrics: Metrics) -> Self {
        Self {
            entries: Arc::default(),
            used: Arc::default(),
            metrics,
            generation: Arc::default(),
            ttl,
            unknown_ttl,
        }
    }

    /// The owner of the key `secret`, or `None` for an unknown or revoked key. Only a cache
    /// miss takes a connection, so cached keys keep working while PostgreSQL is away.
    pub async fn authenticate(
        &self,
        pool: &crate::db::PgPool,
        secret: &str,
    ) -> Result<Option<KeyOwner>, StoreError> {
        let hash = hash_secret(secret);
        if let Some(answer) = self.cached(&hash) {
            self.count(true);
            self.note_use(answer.as_ref());
            return Ok(answer);
        }
        self.count(false);
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let client = pool.get().await?;
        let owner = api_keys::owner_by_hash(&client, &hash).await?;
        let now = Instant::now();
        let entry = match owner {
            Some(owner) => Entry::Valid(owner, now + self.ttl),
            None => Entry::Unknown(now + self.unknown_ttl),
        };
        {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            // Checked under the lock that `forget` takes: no forget can slip in between.
            if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(hash, entry);
            }
        }
        self.note_use(owner.as_ref());
        Ok(owner)
    }

    fn cached(&self, hash: &[u8]) -> Option<Option<KeyOwner>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match entries.get(hash)? {
            Entry::Valid(owner, until) if *until > now => Some(Some(*owner)),
            Entry::Unknown(until) if *until > now => Some(None),
            _ => None,
        }
    }

    fn count(&self, hit: bool) {
        self.metrics
            .api_key_lookups
            .with_label_values(&[if hit { "cache" } else { "database" }])
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

    /// Forgets every cached key the change concerns.
    pub fn forget(&self, scope: Scope) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        entries.retain(|_, entry| match entry {
            Entry::Valid(owner, _) => !scope.covers(owner),
            Entry::Unknown(_) => true,
        });
    }

    /// Forgets everything (after notifications may have been missed).
    pub fn forget_all(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        entries.clear();
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

/// Announces a key change to every instance; delivered when the caller's transaction commits.
pub async fn announce(client: &impl GenericClient, scope: Scope) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &scope.payload()])
        .await?;
    Ok(())
}

/// Writes noted uses to `last_used_at`, one statement for the whole batch.
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

/// Listens for key changes on a dedicated connection and applies them to `cache` until the
/// connection fails (the caller restarts it). Everything cached is forgotten once listening,
/// since changes made while not listening were missed.
pub async fn watch(settings: &DatabaseSettings, cache: &KeyCache) -> Result<(), StoreError> {
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
    cache.forget_all();
    tracing::debug!(channel = CHANNEL, "listening for API key changes");
    while let Some(payload) = rx.recv().await {
        match Scope::parse(&payload) {
            Some(scope) => cache.forget(scope),
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
        assert!(!Scope::Key(Uuid::new_v4()).covers(&o));
        assert_eq!(Scope::parse("key:nope"), None);
        assert_eq!(
            Scope::parse("team:00000000-0000-0000-0000-000000000000"),
            None
        );
    }

    fn cache() -> KeyCache {
        KeyCache::new(
            Duration::from_secs(60),
            Duration::from_secs(10),
            Metrics::new().unwrap(),
        )
    }

    #[test]
    fn forgetting_a_scope_drops_only_its_keys() {
        let cache = cache();
        let (a, b) = (owner(), owner());
        let far = Instant::now() + Duration::from_secs(60);
        {
            let mut entries = cache.entries.lock().unwrap();
            entries.insert(vec![1], Entry::Valid(a, far));
            entries.insert(vec![2], Entry::Valid(b, far));
            entries.insert(vec![3], Entry::Unknown(far));
        }
        cache.forget(Scope::Project(a.project_id));
        assert!(cache.cached(&[1]).is_none());
        assert_eq!(cache.cached(&[2]), Some(Some(b)));
        assert_eq!(cache.cached(&[3]), Some(None));
        cache.forget_all();
        assert!(cache.cached(&[2]).is_none());
    }

    #[test]
    fn expired_entries_are_not_answers() {
        let cache = cache();
        let past = Instant::now() - Duration::from_millis(1);
        cache
            .entries
            .lock()
            .unwrap()
            .insert(vec![9], Entry::Valid(owner(), past));
        assert!(cache.cached(&[9]).is_none());
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
}
