//! A bounded, expiring lookup cache with single-flight loads: what the API-key cache and the
//! session cache are made of.
//!
//! - **Bounded, least recently used out first** (the `lru` crate): when full, the entry used
//!   longest ago goes. A flood of made-up keys can only push out other cold entries; it never
//!   empties the cache of the keys in use (which the old "clear everything at the limit" did).
//! - **Negative answers apart** ([`LookupCache::with_negatives`]): answers of "no such thing"
//!   live in a second, smaller LRU, so a flood of made-up keys spread over many clients pushes
//!   out only other made-up keys, never the idle valid ones.
//! - **Expiring:** each entry carries its own deadline (a valid key lives longer than an
//!   unknown one); an expired entry is a miss, and an answer good for no time is not kept.
//! - **Single flight:** concurrent misses of one key share one load, so a burst of first uses
//!   (or of one made-up key) costs one query, not one per request. A caller that goes away
//!   (its request cancelled) takes its flight along when nobody else waits on it.
//! - **Forgetting wins races, per load:** a forget is checked against each load under way once
//!   its answer is known: the answer is not kept if the forget concerns it (it may predate the
//!   change), and is kept otherwise. Loads that a forget overtook are not joined by later
//!   callers. Forgetting one key ([`LookupCache::forget`]) touches that key only.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
/// Whether a forget concerns a key and its answer.
type Concern<K, V> = Arc<dyn Fn(&K, &V) -> bool + Send + Sync>;

/// One load under way, shared by the callers that missed the same key.
struct Flight<K, V> {
    answer: tokio::sync::OnceCell<Loaded<V>>,
    /// The forgets that came while it ran: its answer is kept only if none concerns it.
    overtaken_by: Mutex<Vec<Concern<K, V>>>,
}

impl<K, V> Flight<K, V> {
    fn new() -> Self {
        Self {
            answer: tokio::sync::OnceCell::new(),
            overtaken_by: Mutex::new(Vec::new()),
        }
    }

    fn overtake(&self, concern: Concern<K, V>) {
        self.overtaken_by
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(concern);
    }

    fn concerned(&self, key: &K, value: &V) -> bool {
        self.overtaken_by
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|concern| concern(key, value))
    }
}

/// Answers and how long each is good.
type Entries<K, V> = LruCache<K, (V, Instant)>;

/// Negative answers kept apart, and what makes an answer one.
struct Negatives<K, V> {
    entries: Entries<K, V>,
    is_negative: fn(&V) -> bool,
}

struct Inner<K: Hash + Eq, V> {
    entries: Entries<K, V>,
    negatives: Option<Negatives<K, V>>,
    flights: HashMap<K, Arc<Flight<K, V>>>,
}

impl<K: Hash + Eq, V> Inner<K, V> {
    fn put(&mut self, key: K, value: V, until: Instant) {
        match &mut self.negatives {
            Some(negatives) if (negatives.is_negative)(&value) => {
                self.entries.pop(&key);
                negatives.entries.put(key, (value, until));
            }
            Some(negatives) => {
                negatives.entries.pop(&key);
                self.entries.put(key, (value, until));
            }
            None => {
                self.entries.put(key, (value, until));
            }
        }
    }

    fn pop(&mut self, key: &K) {
        self.entries.pop(key);
        if let Some(negatives) = &mut self.negatives {
            negatives.entries.pop(key);
        }
    }
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

fn lru<K: Hash + Eq, V>(capacity: usize) -> LruCache<K, V> {
    LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN))
}

/// Takes a caller's flight out of the map when the caller is done with it: at its answer, or
/// when the caller is dropped mid-wait (a cancelled request) and nobody else waits on it.
/// Without it a cancelled lookup of a made-up key would stay in the map until the next forget.
struct FlightGuard<'a, K: Hash + Eq + Clone + 'static, V: Clone + 'static> {
    cache: &'a LookupCache<K, V>,
    key: &'a K,
    flight: Arc<Flight<K, V>>,
}

impl<K: Hash + Eq + Clone + 'static, V: Clone + 'static> Drop for FlightGuard<'_, K, V> {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        let ours = inner
            .flights
            .get(self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight));
        // Two holders: the map and this caller. Others waiting will answer it themselves.
        let abandoned = Arc::strong_count(&self.flight) <= 2;
        if ours && (self.flight.answer.initialized() || abandoned) {
            inner.flights.remove(self.key);
        }
    }
}

impl<K: Hash + Eq + Clone + 'static, V: Clone + 'static> LookupCache<K, V> {
    /// A cache of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                entries: lru(capacity),
                negatives: None,
                flights: HashMap::new(),
            })),
        }
    }

    /// A cache of at most `capacity` answers, plus at most `negative_capacity` negative ones
    /// (those `is_negative` picks), each LRU on its own.
    pub fn with_negatives(
        capacity: usize,
        negative_capacity: usize,
        is_negative: fn(&V) -> bool,
    ) -> Self {
        let cache = Self::new(capacity);
        cache.lock().negatives = Some(Negatives {
            entries: lru(negative_capacity),
            is_negative,
        });
        cache
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached answer for `key` if it is still fresh at `now` (and marks it recently used).
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let found = match inner.entries.get(key) {
            Some(entry) => Some(entry.clone()),
            None => inner
                .negatives
                .as_mut()
                .and_then(|negatives| negatives.entries.get(key).cloned()),
        };
        match found {
            Some((value, until)) if until > now => Some(value),
            Some(_) => {
                inner.pop(key);
                None
            }
            None => None,
        }
    }

    /// Stores an answer good until `until`.
    pub fn put(&self, key: K, value: V, until: Instant) {
        self.lock().put(key, value, until);
    }

    /// The answer for `key`: from memory, or from `load` (which also says how long its answer
    /// stays good; zero: not kept). Concurrent misses of one key run `load` once and share its
    /// answer.
    pub async fn get_or_load<F, Fut>(&self, key: K, load: F) -> Result<(V, Source), StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Duration), StoreError>>,
    {
        if let Some(value) = self.get(&key, Instant::now()) {
            return Ok((value, Source::Cache));
        }
        let guard = FlightGuard {
            cache: self,
            key: &key,
            flight: self
                .lock()
                .flights
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Flight::new()))
                .clone(),
        };
        // The guard's is this caller's only handle on the flight (it counts the holders).
        let flight = &guard.flight;
        let mut led = false;
        let loaded = flight
            .answer
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
                .is_some_and(|f| Arc::ptr_eq(f, flight))
            {
                inner.flights.remove(&key);
            }
            if let Ok((value, until)) = &loaded {
                // Checked under the lock forgets take: none slips in between.
                if led && *until > Instant::now() && !flight.concerned(&key, value) {
                    inner.put(key.clone(), value.clone(), *until);
                }
            }
        }
        drop(guard);
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

    /// Forgets one key: its entry, and the load of it under way (whose answer may predate the
    /// change). Nothing else is looked at.
    pub fn forget(&self, key: &K) {
        let mut inner = self.lock();
        inner.pop(key);
        if let Some(flight) = inner.flights.remove(key) {
            flight.overtake(Arc::new(|_, _| true));
        }
    }

    /// Forgets every entry `concerned` picks (negative answers concern nothing: they name no
    /// owner), and keeps out the answers of loads under way that it picks once they arrive.
    pub fn forget_where(&self, concerned: impl Fn(&K, &V) -> bool + Send + Sync + 'static) {
        let concern: Concern<K, V> = Arc::new(concerned);
        let mut inner = self.lock();
        for (_, flight) in inner.flights.drain() {
            flight.overtake(concern.clone());
        }
        let doomed: Vec<K> = inner
            .entries
            .iter()
            .filter(|(k, (v, _))| concern(k, v))
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            inner.entries.pop(&key);
        }
    }

    /// Forgets everything (after notifications may have been missed).
    pub fn forget_all(&self) {
        let mut inner = self.lock();
        for (_, flight) in inner.flights.drain() {
            flight.overtake(Arc::new(|_, _| true));
        }
        inner.entries.clear();
        if let Some(negatives) = &mut inner.negatives {
            negatives.entries.clear();
        }
    }

    /// Entries held (negative ones included).
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.entries.len() + inner.negatives.as_ref().map_or(0, |n| n.entries.len())
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

    #[tokio::test]
    async fn a_cancelled_leader_hands_its_flight_to_whoever_still_waits() {
        use futures_util::FutureExt;
        let cache: LookupCache<&str, u32> = LookupCache::new(8);
        let mut leader = Box::pin(cache.get_or_load("k", || async {
            std::future::pending::<Result<(u32, Duration), StoreError>>().await
        }));
        assert!((&mut leader).now_or_never().is_none());
        let waiter = cache.get_or_load("k", || async { Ok((7, LONG)) });
        let mut waiter = Box::pin(waiter);
        assert!(
            (&mut waiter).now_or_never().is_none(),
            "joined the leader's flight"
        );
        drop(leader);
        assert_eq!(cache.lock().flights.len(), 1, "someone still waits on it");
        let (value, source) = waiter.await.unwrap();
        assert_eq!(
            (value, source),
            (7, Source::Database),
            "the waiter took over the load"
        );
        assert_eq!(cache.lock().flights.len(), 0);
        assert_eq!(cache.get(&"k", Instant::now()), Some(7));
    }

    #[test]
    fn negative_answers_never_push_out_the_others() {
        let cache: LookupCache<u32, Option<u32>> =
            LookupCache::with_negatives(2, 3, |v: &Option<u32>| v.is_none());
        let now = Instant::now();
        cache.put(1, Some(10), now + LONG);
        cache.put(2, Some(20), now + LONG);
        for k in 100..200 {
            cache.put(k, None, now + LONG);
        }
        assert_eq!(cache.get(&1, now), Some(Some(10)));
        assert_eq!(cache.get(&2, now), Some(Some(20)));
        assert_eq!(cache.get(&199, now), Some(None));
        assert_eq!(
            cache.get(&100, now),
            None,
            "negatives push out older negatives"
        );
        assert_eq!(cache.len(), 5);
        // An answer that changes side leaves the other LRU.
        cache.put(199, Some(1), now + LONG);
        assert_eq!(cache.len(), 5 - 1, "199 moved; 1 or 2 made room for it");
        assert_eq!(cache.get(&199, now), Some(Some(1)));
        cache.forget_all();
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn forgetting_one_key_leaves_the_others_and_their_loads() {
        let cache: LookupCache<&str, u32> = LookupCache::new(8);
        let now = Instant::now();
        cache.put("a", 1, now + LONG);
        cache.put("b", 2, now + LONG);
        let forgetter = cache.clone();
        let (value, _) = cache
            .get_or_load("c", || async move {
                forgetter.forget(&"a");
                Ok((3, LONG))
            })
            .await
            .unwrap();
        assert_eq!(value, 3);
        assert_eq!(cache.get(&"a", now), None);
        assert_eq!(cache.get(&"b", now), Some(2));
        assert_eq!(
            cache.get(&"c", now),
            Some(3),
            "another key's load was thrown away"
        );
        let forgetter = cache.clone();
        cache.forget(&"c");
        let (value, _) = cache
            .get_or_load("c", || async move {
                forgetter.forget(&"c");
                Ok((4, LONG))
            })
            .await
            .unwrap();
        assert_eq!(value, 4);
        assert_eq!(
            cache.get(&"c", now),
            None,
            "its own forget keeps the answer out"
        );
    }
}
