//! The batching policy every buffering actor shares: what waits, when a batch is due, how big
//! it may be, how failures back off, and when waiting has lasted too long.
//!
//! [`Batcher`] is a plain data structure with no timers and no I/O: every method that depends
//! on time takes `now`, so tests drive the clock by hand. An actor owns one, asks it
//! [`Batcher::due`] to know when to look again, [`Batcher::take`]s a batch, writes it however
//! it writes, and reports back with [`Batcher::done`] or [`Batcher::failed`]. One batch is in
//! flight at a time: entries arriving meanwhile gather into the next one, so the busier the
//! actor, the bigger its batches (group commit).
//!
//! The buffer is bounded in entries' items *and* bytes, counting the batch in flight (its
//! memory is held until it is answered): [`Batcher::push`] hands a value back when it does not
//! fit, and the caller answers that as backpressure.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How much of the buffer one value takes.
pub trait Weigh {
    /// Items it counts as (the size trigger and the item bound use this).
    fn items(&self) -> usize;
    /// Bytes of memory it holds, roughly.
    fn bytes(&self) -> usize;
}

/// Items and bytes held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Weight {
    pub items: usize,
    pub bytes: usize,
}

impl Weight {
    fn of(value: &impl Weigh) -> Self {
        Self {
            items: value.items(),
            bytes: value.bytes(),
        }
    }

    fn add(&mut self, other: Weight) {
        self.items += other.items;
        self.bytes += other.bytes;
    }

    fn sub(&mut self, other: Weight) {
        self.items = self.items.saturating_sub(other.items);
        self.bytes = self.bytes.saturating_sub(other.bytes);
    }
}

/// Exponential backoff between failed attempts: `base`, doubling, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after the `failures`-th failure in a row (1 = the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

/// When batches start, how big they are, how much may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A batch is due once this many items wait...
    pub flush_items: usize,
    /// ...or the oldest entry has waited this long.
    pub max_wait: Duration,
    /// Items one batch takes at most (whole entries; one entry alone may exceed it).
    pub max_batch_items: usize,
    /// Items held at most, the batch in flight included.
    pub capacity_items: usize,
    /// Bytes held at most, the batch in flight included.
    pub capacity_bytes: usize,
    /// Wait between a failed batch and its retry.
    pub backoff: Backoff,
    /// How long an entry may wait in the buffer before [`Batcher::expire`] gives it up
    /// (`None`: never; the caller relies on backpressure instead).
    pub deadline: Option<Duration>,
}

/// A buffered value and when it arrived.
#[derive(Debug)]
pub struct Entry<T> {
    pub value: T,
    pub arrived: Instant,
    weight: Weight,
}

/// When the buffer wants its next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Take a batch now.
    Now,
    /// Look again at this instant (the oldest entry's age trigger, or a retry).
    At(Instant),
    /// Nothing to do until something is pushed or the batch in flight ends.
    Idle,
}

/// A value that did not fit, handed back.
#[derive(Debug, PartialEq, Eq)]
pub struct Full<T>(pub T);

/// The buffer and its policy; see the module documentation.
#[derive(Debug)]
pub struct Batcher<T> {
    policy: Policy,
    queue: VecDeque<Entry<T>>,
    queued: Weight,
    /// The weight of the batch in flight, if one is.
    in_flight: Option<Weight>,
    /// Failed batches in a row (0: healthy).
    failures: u32,
    /// No batch before this instant (backoff after a failure).
    retry_at: Option<Instant>,
    /// Everything is due at once, whatever its size or age (shutdown).
    draining: bool,
}

impl<T: Weigh> Batcher<T> {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            queue: VecDeque::new(),
            queued: Weight::default(),
            in_flight: None,
            failures: 0,
            retry_at: None,
            draining: false,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Buffers `value`, or hands it back when the buffer has no room for it. `now` must not go
    /// backwards from one push to the next (entries are kept in arrival order).
    pub fn push(&mut self, value: T, now: Instant) -> Result<(), Full<T>> {
        let weight = Weight::of(&value);
        let held = self.held();
        if held.items + weight.items > self.policy.capacity_items
            || held.bytes + weight.bytes > self.policy.capacity_bytes
        {
            return Err(Full(value));
        }
        self.queued.add(weight);
        self.queue.push_back(Entry {
            value,
            arrived: now,
            weight,
        });
        Ok(())
    }

    /// The value pushed last, if it is still waiting.
    pub fn last_mut(&mut self) -> Option<&mut T> {
        self.queue.back_mut().map(|e| &mut e.value)
    }

    /// When the next batch should start.
    pub fn due(&self, now: Instant) -> Due {
        let Some(front) = self.queue.front() else {
            return Due::Idle;
        };
        if self.in_flight.is_some() {
            return Due::Idle;
        }
        if let Some(at) = self.retry_at {
            return if now >= at { Due::Now } else { Due::At(at) };
        }
        let ripe = front.arrived + self.policy.max_wait;
        if self.draining || self.queued.items >= self.policy.flush_items || now >= ripe {
            Due::Now
        } else {
            Due::At(ripe)
        }
    }

    /// Starts a batch: whole entries from the front, at most `max_batch_items` items (but
    /// always at least one entry). Empty when a batch is already in flight or nothing waits.
    pub fn take(&mut self) -> Vec<Entry<T>> {
        if self.in_flight.is_some() {
            return Vec::new();
        }
        let mut batch = Vec::new();
        let mut weight = Weight::default();
        while let Some(front) = self.queue.front() {
            if !batch.is_empty() && weight.items + front.weight.items > self.policy.max_batch_items
            {
                break;
            }
            if let Some(entry) = self.queue.pop_front() {
                weight.add(entry.weight);
                batch.push(entry);
            }
        }
        if !batch.is_empty() {
            self.queued.sub(weight);
            self.in_flight = Some(weight);
            self.retry_at = None;
        }
        batch
    }

    /// The batch in flight ended well (its entries are the caller's to answer).
    pub fn done(&mut self) {
        self.in_flight = None;
        self.failures = 0;
        self.retry_at = None;
    }

    /// The batch in flight ended without storing `retry` (all of it or what was left of it):
    /// those entries go back to the front, in their order, and the next batch waits out the
    /// backoff. An empty `retry` is [`Batcher::done`].
    pub fn failed(&mut self, retry: Vec<Entry<T>>, now: Instant) {
        self.in_flight = None;
        if retry.is_empty() {
            self.done();
            return;
        }
        for entry in retry.into_iter().rev() {
            self.queued.add(entry.weight);
            self.queue.push_front(entry);
        }
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + self.policy.backoff.delay(self.failures));
    }

    /// Removes and returns the waiting entries older than the policy's deadline (never the
    /// batch in flight). The queue is in arrival order (a failed batch goes back to the front,
    /// and it is older than what arrived during its flight), so this looks only at the
    /// entries it removes and the first it keeps: cheap enough to run on every push.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let Some(deadline) = self.policy.deadline else {
            return Vec::new();
        };
        let mut expired = Vec::new();
        while let Some(front) = self.queue.front() {
            if now.saturating_duration_since(front.arrived) < deadline {
                break;
            }
            if let Some(entry) = self.queue.pop_front() {
                self.queued.sub(entry.weight);
                expired.push(entry.value);
            }
        }
        if self.queue.is_empty() {
            // Nothing left to retry: the next entry starts afresh.
            self.retry_at = None;
        }
        expired
    }

    /// The instant the oldest waiting entry reaches its deadline, if there is a deadline.
    pub fn next_expiry(&self) -> Option<Instant> {
        let deadline = self.policy.deadline?;
        self.queue.front().map(|e| e.arrived + deadline)
    }

    /// Removes and returns every waiting entry (not the batch in flight).
    pub fn take_all(&mut self) -> Vec<T> {
        self.queued = Weight::default();
        self.retry_at = None;
        self.queue.drain(..).map(|e| e.value).collect()
    }

    /// From now on everything waiting is due at once (shutdown).
    pub fn drain(&mut self) {
        self.draining = true;
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    /// Nothing waits and nothing is in flight.
    pub fn drained(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_none()
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Failed batches in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// What is held: waiting plus in flight.
    pub fn held(&self) -> Weight {
        let mut held = self.queued;
        if let Some(w) = self.in_flight {
            held.add(w);
        }
        held
    }

    /// What waits (not in flight).
    pub fn queued(&self) -> Weight {
        self.queued
    }
}

/// A process-wide budget of bytes (ingest bodies: being read, parsed or buffered), shared by
/// the routes and the actors: when it is spent, work is refused at once rather than queued,
/// so memory stays bounded whatever the clients do.
#[derive(Clone)]
pub struct ByteBudget {
    semaphore: Arc<Semaphore>,
    gauge: prometheus::IntGauge,
}

/// Bytes taken from the [`ByteBudget`]; given back when dropped.
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    budget: ByteBudget,
}

impl ByteBudget {
    pub fn new(bytes: usize, gauge: prometheus::IntGauge) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
            gauge,
        }
    }

    /// An empty reservation, to grow as a body arrives.
    pub fn reserve(&self) -> Reservation {
        Reservation {
            permit: None,
            budget: self.clone(),
        }
    }
}

impl Reservation {
    /// Takes `bytes` more, without waiting; `false` when the budget has no room.
    pub fn grow(&mut self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        match self.budget.semaphore.clone().try_acquire_many_owned(n) {
            Ok(more) => {
                self.budget.gauge.add(i64::from(n));
                match &mut self.permit {
                    Some(permit) => permit.merge(more),
                    None => self.permit = Some(more),
                }
                true
            }
            Err(_) => false,
        }
    }

    /// An empty reservation from the same budget: for memory a request holds only for a while
    /// (a decompressor's window), given back when it is dropped.
    pub fn another(&self) -> Reservation {
        self.budget.reserve()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.gauge.sub(self.bytes() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A value of `items` items and `items * 10` bytes, named for the assertions.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct V(&'static str, usize);

    impl Weigh for V {
        fn items(&self) -> usize {
            self.1
        }
        fn bytes(&self) -> usize {
            self.1 * 10
        }
    }

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> Policy {
        Policy {
            flush_items: 10,
            max_wait: 5 * MS,
            max_batch_items: 20,
            capacity_items: 50,
            capacity_bytes: 10_000,
            backoff: Backoff {
                base: 50 * MS,
                max: 2000 * MS,
            },
            deadline: Some(1000 * MS),
        }
    }

    fn names(batch: &[Entry<V>]) -> Vec<&'static str> {
        batch.iter().map(|e| e.value.0).collect()
    }

    #[test]
    fn a_batch_is_due_on_age_or_size_and_not_before() {
        let t0 = Instant::now();
        let mut b = Batcher::new(policy());
        assert_eq!(b.due(t0), Due::Idle);
        b.push(V("a", 3), t0).unwrap();
        assert_eq!(b.due(t0), Due::At(t0 + 5 * MS), "young and small: wait");
        assert_eq!(b.due(t0 + 4 * MS), Due::At(t0 + 5 * MS));
        assert_eq!(b.due(t0 + 5 * MS), Due::Now, "old enough");
        b.push(V("b", 7), t0 + MS).unwrap();
        assert_eq!(b.due(t0 + MS), Due::Now, "10 items: big enough");
    }

    #[test]
    fn one_batch_at_a_time_with_whole_entries_up_to_the_maximum() {
        let t0 = Instant::now();
        let mut b = Batcher::new(policy());
        for (name, n) in [("a", 8), ("b", 8), ("c", 8)] {
            b.push(V(name, n), t0).unwrap();
        }
        let batch = b.take();
        assert_eq!(
            names(&batch),
            vec!["a", "b"],
            "a third entry would pass 20 items"
        );
        assert_eq!(b.due(t0 + 10 * MS), Due::Idle, "a batch is in flight");
        assert!(b.take().is_empty());
        b.push(V("d", 1), t0 + MS).unwrap();
        b.done();
        assert_eq!(b.due(t0 + 10 * MS), Due::Now);
        assert_eq!(names(&b.take()), vec!["c", "d"]);
        b.done();
        assert!(b.drained());
    }

    #[test]
    fn an_entry_bigger_than_a_batch_still_goes_alone() {
        let mut b = Batcher::new(policy());
        b.push(V("huge", 30), Instant::now()).unwrap();
        assert_eq!(names(&b.take()), vec!["huge"]);
    }

    #[test]
    fn capacity_counts_items_and_bytes_including_the_batch_in_flight() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Policy {
            capacity_items: 20,
            capacity_bytes: 150,
            ..policy()
        });
        b.push(V("a", 10), t0).unwrap();
        let _flight = b.take();
        assert_eq!(b.push(V("b", 11), t0), Err(Full(V("b", 11))), "21 items");
        b.push(V("c", 5), t0).unwrap();
        assert_eq!(
            b.push(V("d", 1), t0),
            Err(Full(V("d", 1))),
            "160 bytes, though 16 items fit"
        );
        b.done();
        assert_eq!(
            b.held(),
            Weight {
                items: 5,
                bytes: 50
            }
        );
        b.push(V("d", 1), t0).unwrap();
    }

    #[test]
    fn a_failed_batch_goes_back_in_order_and_waits_out_a_growing_backoff() {
        let t0 = Instant::now();
        let mut b = Batcher::new(policy());
        b.push(V("a", 1), t0).unwrap();
        b.push(V("b", 1), t0).unwrap();
        let batch = b.take();
        b.push(V("c", 1), t0 + MS).unwrap();
        b.failed(batch, t0 + 10 * MS);
        assert_eq!(b.failures(), 1);
        assert_eq!(b.due(t0 + 10 * MS), Due::At(t0 + 60 * MS), "50 ms backoff");
        assert_eq!(b.due(t0 + 60 * MS), Due::Now);
        let again = b.take();
        assert_eq!(names(&again), vec!["a", "b", "c"], "order kept");
        b.failed(again, t0 + 60 * MS);
        assert_eq!(b.due(t0 + 60 * MS), Due::At(t0 + 160 * MS), "then 100 ms");
        let third = b.take();
        b.done();
        assert_eq!(b.failures(), 0);
        drop(third);
        assert_eq!(b.held(), Weight::default());
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let backoff = policy().backoff;
        let delays: Vec<u64> = (1..=8)
            .map(|n| backoff.delay(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff.delay(u32::MAX), 2000 * MS);
    }

    #[test]
    fn expiry_gives_up_waiting_entries_but_never_the_batch_in_flight() {
        let t0 = Instant::now();
        let mut b = Batcher::new(policy());
        b.push(V("old", 1), t0).unwrap();
        let flight = b.take();
        b.push(V("mid", 1), t0 + 100 * MS).unwrap();
        b.push(V("new", 1), t0 + 900 * MS).unwrap();
        assert_eq!(b.next_expiry(), Some(t0 + 1100 * MS));
        assert!(b.expire(t0 + 1099 * MS).is_empty());
        assert_eq!(b.expire(t0 + 1100 * MS), vec![V("mid", 1)]);
        assert_eq!(b.held().items, 2, "in flight + new");
        b.failed(flight, t0 + 1200 * MS);
        assert_eq!(
            b.expire(t0 + 1200 * MS),
            vec![V("old", 1)],
            "back in the queue"
        );
        assert_eq!(b.expire(t0 + 5000 * MS), vec![V("new", 1)]);
        assert!(b.drained());
        assert_eq!(b.due(t0 + 5000 * MS), Due::Idle);
    }

    #[test]
    fn without_a_deadline_nothing_expires() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Policy {
            deadline: None,
            ..policy()
        });
        b.push(V("a", 1), t0).unwrap();
        assert!(b.expire(t0 + Duration::from_secs(3600)).is_empty());
        assert_eq!(b.next_expiry(), None);
    }

    #[test]
    fn draining_makes_everything_due_at_once() {
        let t0 = Instant::now();
        let mut b = Batcher::new(policy());
        b.push(V("a", 1), t0).unwrap();
        b.drain();
        assert_eq!(b.due(t0), Due::Now);
        let batch = b.take();
        assert!(!b.drained(), "in flight");
        b.done();
        drop(batch);
        assert!(b.drained());
    }

    #[test]
    fn take_all_empties_the_queue_but_not_the_flight() {
        let t0 = Instant::now();
        let mut b = Batcher::new(policy());
        b.push(V("a", 1), t0).unwrap();
        let _flight = b.take();
        b.push(V("b", 2), t0).unwrap();
        assert_eq!(b.take_all(), vec![V("b", 2)]);
        assert_eq!(b.held().items, 1);
        assert!(b.in_flight());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        Take,
        Done,
        Fail,
        Expire,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..15).prop_map(Op::Push),
            Just(Op::Take),
            Just(Op::Done),
            Just(Op::Fail),
            Just(Op::Expire),
            (0u64..700).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Whatever happens, nothing is lost or duplicated, the bounds hold, and the counts
        /// match what is held.
        #[test]
        fn every_value_is_held_answered_or_refused_exactly_once(ops in prop::collection::vec(op(), 1..80)) {
            let mut now = Instant::now();
            let mut b: Batcher<V> = Batcher::new(policy());
            let mut flight: Vec<Entry<V>> = Vec::new();
            let (mut pushed, mut refused, mut finished) = (0usize, 0usize, 0usize);
            for op in ops {
                match op {
                    Op::Push(n) => match b.push(V("x", n), now) {
                        Ok(()) => pushed += n,
                        Err(Full(v)) => refused += v.1,
                    },
                    Op::Take => if flight.is_empty() { flight = b.take(); },
                    Op::Done => if !flight.is_empty() {
                        finished += flight.iter().map(|e| e.value.1).sum::<usize>();
                        flight.clear();
                        b.done();
                    },
                    Op::Fail => if !flight.is_empty() { b.failed(std::mem::take(&mut flight), now); },
                    Op::Expire => finished += b.expire(now).iter().map(|v| v.1).sum::<usize>(),
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                }
                let held = b.held();
                prop_assert!(held.items <= 50 && held.bytes <= 10_000);
                let in_flight: usize = flight.iter().map(|e| e.value.1).sum();
                prop_assert_eq!(held.items, pushed - finished);
                prop_assert_eq!(b.queued().items + in_flight, held.items);
                prop_assert_eq!(b.in_flight(), !flight.is_empty());
                if flight.is_empty() && b.queued().items > 0 {
                    prop_assert_ne!(b.due(now), Due::Idle);
                }
            }
            let _ = refused;
        }
    }
}
