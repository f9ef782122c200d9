//! A bounded, expiring lookup cache with single-flight loads: what the API-key cache and the
//! session cache are made of.
//!
//! - **Bounded, least recently used out first** (the `lru` crate): when full, the entry used
//!   longest ago goes. A flood of made-up keys can only push out other cold entries; it never
//!   empties the cache of the keys in use (which the old "clear everything at the limit" did).
//! - **Expiring:** each entry carries its own deadline (a valid key lives longer than an
//!   unknown one); an expired entry is a miss.
//! - **Single flight:** concurrent misses of one key share one load, so a burst of first uses
//!   (or of one made-up key) costs one query, not one per request.
//! - **Forgetting wins races:** a load that started before a `forget` does not store its
//!   answer, which may predate the change that was forgotten.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::store::StoreError;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Memory.
    Cache,
    /// A query this caller ran.
    Database,
    /// A query another caller was running for the same key.
    Shared,
}

impl Source {
    /// The `source` label of lookup counters.
    pub fn label(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Database => "database",
            Source::Shared => "shared",
        }
    }
}

type Loaded<V> = Result<(V, Instant), Arc<StoreError>>;
type Flight<V> = Arc<tokio::sync::OnceCell<Loaded<V>>>;

struct Inner<K: Hash + Eq, V> {
    entries: LruCache<K, (V, Instant)>,
    flights: HashMap<K, Flight<V>>,
    /// Bumped by every forget.
    generation: u64,
}

/// See the module documentation. A cheap handle: clones share the cache.
pub struct LookupCache<K: Hash + Eq, V> {
    inner: Arc<Mutex<Inner<K, V>>>,
}

impl<K: Hash + Eq, V> Clone for LookupCache<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> LookupCache<K, V> {
    /// A cache of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                entries: LruCache::new(capacity),
                flights: HashMap::new(),
                generation: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached answer for `key` if it is still fresh at `now` (and marks it recently used).
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        let mut inner = self.lock();
        match inner.entries.get(key) {
            Some((value, until)) if *until > now => Some(value.clone()),
            Some(_) => {
                inner.entries.pop(key);
                None
            }
            None => None,
        }
    }

    /// Stores an answer good until `until`.
    pub fn put(&self, key: K, value: V, until: Instant) {
        self.lock().entries.put(key, (value, until));
    }

    /// The answer for `key`: from memory, or from `load` (which also says how long its answer
    /// stays good). Concurrent misses of one key run `load` once and share its answer.
    pub async fn get_or_load<F, Fut>(&self, key: K, load: F) -> Result<(V, Source), StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Duration), StoreError>>,
    {
        if let Some(value) = self.get(&key, Instant::now()) {
            return Ok((value, Source::Cache));
        }
        let (flight, generation) = {
            let mut inner = self.lock();
            let flight = inner.flights.entry(key.clone()).or_default().clone();
            (flight, inner.generation)
        };
        let mut led = false;
        let loaded = flight
            .get_or_init(|| {
                led = true;
                async move {
                    load()
                        .await
                        .map(|(value, ttl)| (value, Instant::now() + ttl))
                        .map_err(Arc::new)
                }
            })
            .await
            .clone();
        {
            let mut inner = self.lock();
            if inner
                .flights
                .get(&key)
                .is_some_and(|f| Arc::ptr_eq(f, &flight))
            {
                inner.flights.remove(&key);
            }
            if let Ok((value, until)) = &loaded {
                // Checked under the lock `forget` takes: no forget slips in between.
                if led && inner.generation == generation {
                    inner.entries.put(key, (value.clone(), *until));
                }
            }
        }
        let source = if led {
            Source::Database
        } else {
            Source::Shared
        };
        // The error is shared by every caller of the flight, so each gets it as text; what
        // it always is in practice (storage trouble) keeps its kind.
        loaded
            .map(|(value, _)| (value, source))
            .map_err(|e| match &*e {
                StoreError::Conflict(c) => StoreError::Conflict(c.clone()),
                other => StoreError::Unavailable(other.to_string()),
            })
    }

    /// Forgets every entry `concerned` picks; loads under way do not store their answers.
    pub fn forget_where(&self, concerned: impl Fn(&K, &V) -> bool) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.flights.clear();
        let doomed: Vec<K> = inner
            .entries
            .iter()
            .filter(|(k, (v, _))| concerned(k, v))
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            inner.entries.pop(&key);
        }
    }

    /// Forgets everything (after notifications may have been missed).
    pub fn forget_all(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.flights.clear();
        inner.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn when_full_the_least_recently_used_entry_goes_not_everything() {
        let cache = LookupCache::new(3);
        let now = Instant::now();
        for k in ["hot", "b", "c"] {
            cache.put(k, 1, now + LONG);
        }
        assert_eq!(cache.get(&"hot", now), Some(1), "used: now the most recent");
        // A flood of new entries pushes out the cold ones, one at a time.
        cache.put("flood-1", 0, now + LONG);
        assert_eq!(cache.get(&"b", now), None, "b was the least recently used");
        assert_eq!(cache.get(&"hot", now), Some(1));
        cache.put("flood-2", 0, now + LONG);
        cache.put("flood-3", 0, now + LONG);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&"c", now), None);
        // "hot" was used before flood-2 and flood-3 arrived, so it went last.
        assert_eq!(cache.get(&"flood-3", now), Some(0));
    }

    #[test]
    fn expired_entries_are_misses() {
        let cache = LookupCache::new(4);
        let now = Instant::now();
        cache.put("k", 1, now + Duration::from_millis(5));
        assert_eq!(cache.get(&"k", now), Some(1));
        assert_eq!(cache.get(&"k", now + Duration::from_millis(5)), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn forgetting_drops_only_what_it_concerns() {
        let cache = LookupCache::new(4);
        let now = Instant::now();
        cache.put("a", 1, now + LONG);
        cache.put("b", 2, now + LONG);
        cache.forget_where(|_, v| *v == 1);
        assert_eq!(cache.get(&"a", now), None);
        assert_eq!(cache.get(&"b", now), Some(2));
        cache.forget_all();
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn concurrent_misses_of_one_key_share_one_load() {
        let cache: LookupCache<&str, u32> = LookupCache::new(8);
        let loads = Arc::new(AtomicUsize::new(0));
        let (release, wait) = tokio::sync::watch::channel(false);
        let lookups = (0..10).map(|_| {
            let (cache, loads, mut wait) = (cache.clone(), loads.clone(), wait.clone());
            async move {
                cache
                    .get_or_load("k", || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        let _ = wait.wait_for(|go| *go).await;
                        Ok((7, LONG))
                    })
                    .await
            }
        });
        let all = futures_util::future::join_all(lookups);
        let opener = async {
            tokio::task::yield_now().await;
            let _ = release.send(true);
        };
        let (results, ()) = tokio::join!(all, opener);
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        let sources: Vec<Source> = results.into_iter().map(|r| r.unwrap().1).collect();
        assert_eq!(
            sources.iter().filter(|s| **s == Source::Database).count(),
            1
        );
        assert_eq!(sources.iter().filter(|s| **s == Source::Shared).count(), 9);
        let (value, source) = cache
            .get_or_load("k", || async { Ok((0, LONG)) })
            .await
            .unwrap();
        assert_eq!((value, source), (7, Source::Cache));
    }

    #[tokio::test]
    async fn a_load_overtaken_by_a_forget_is_not_stored() {
        let cache: LookupCache<&str, u32> = LookupCache::new(8);
        let forgetter = cache.clone();
        let (value, _) = cache
            .get_or_load("k", || async move {
                forgetter.forget_all();
                Ok((1, LONG))
            })
            .await
            .unwrap();
        assert_eq!(value, 1, "the caller still gets its answer");
        assert!(cache.is_empty(), "but it is not kept");
    }

    #[tokio::test]
    async fn a_failed_load_is_not_kept() {
        let cache: LookupCache<&str, u32> = LookupCache::new(8);
        let err = cache
            .get_or_load("k", || async {
                Err(StoreError::Unavailable("down".into()))
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("down"), "{err}");
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_lookup_leaves_no_flight_behind() {
        use futures_util::FutureExt;
        let cache: LookupCache<String, u32> = LookupCache::new(8);
        for i in 0..100 {
            let lookup = cache.get_or_load(format!("made-up-{i}"), || async {
                std::future::pending::<Result<(u32, Duration), StoreError>>().await
            });
            // Polled once (the load starts), then dropped: a client that went away.
            assert!(lookup.now_or_never().is_none());
        }
        assert_eq!(
            cache.lock().flights.len(),
            0,
            "cancelled lookups left their flights behind"
        );
    }

    #[tokio::test]
    async fn a_forget_that_does_not_concern_a_load_in_flight_lets_it_be_kept() {
        let cache: LookupCache<&str, u32> = LookupCache::new(8);
        let forgetter = cache.clone();
        let (value, _) = cache
            .get_or_load("b", || async move {
                // A change of something else arrives while "b" is being read.
                forgetter.forget_where(|k, _| *k == "a");
                Ok((2, LONG))
            })
            .await
            .unwrap();
        assert_eq!(value, 2);
        assert_eq!(
            cache.get(&"b", Instant::now()),
            Some(2),
            "an unrelated forget threw the load away"
        );
    }

    #[tokio::test]
    async fn a_forget_that_concerns_a_load_in_flight_keeps_its_answer_out() {
        let cache: LookupCache<&str, u32> = LookupCache::new(8);
        let forgetter = cache.clone();
        let (value, _) = cache
            .get_or_load("b", || async move {
                forgetter.forget_where(|_, v| *v == 2);
                Ok((2, LONG))
            })
            .await
            .unwrap();
        assert_eq!(value, 2, "the caller still gets its answer");
        assert_eq!(cache.get(&"b", Instant::now()), None, "but it is not kept");
    }
}
