//! Check slots: how many uptime checks may be in flight at once on this instance
//! (`monitors.max_concurrent_checks`) and, among them, of one organisation
//! (`monitors.max_concurrent_checks_per_organisation`).
//!
//! A check takes its organisation's slot first and the instance's second, and only then does
//! its timeout start: waiting is never charged to the check (a check that waited 20 s for a
//! slot still has its whole timeout to reach the target), and a tenant whose targets hang
//! fills its own share and waits behind itself, while the instance's other slots stay free for
//! everyone else. Taking the organisation's slot first means a waiting check of a saturated
//! organisation holds none of the instance's slots. This is the per-tenant concurrency limit
//! PostHog puts in front of its shared ClickHouse cluster (concurrent queries limited per
//! organisation, `get_app_org_rate_limiter`), applied to outgoing checks.
//!
//! Each slot is one outgoing connection at most, so the HTTP client's connection limit is set
//! to `max_concurrent_checks` and never makes a check wait inside its timeout either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// The check slots of one instance. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct CheckSlots {
    instance: Arc<Semaphore>,
    per_organisation: usize,
    /// One semaphore per organisation with monitors running here, alive as long as one of its
    /// monitors (or a check) holds it.
    organisations: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<Uuid, Weak<Semaphore>>,
    /// Entries when the dead ones were last swept out.
    swept_at: usize,
}

/// One organisation's share of the slots; its monitors each hold a clone.
#[derive(Clone)]
pub struct OrganisationSlots(Arc<Semaphore>);

/// A check's slot: both permits, given back when dropped.
pub struct Slot {
    _organisation: OwnedSemaphorePermit,
    _instance: OwnedSemaphorePermit,
}

impl CheckSlots {
    pub fn new(max_concurrent: usize, max_per_organisation: usize) -> Self {
        Self {
            instance: Arc::new(Semaphore::new(max_concurrent.max(1))),
            per_organisation: max_per_organisation.max(1),
            organisations: Arc::default(),
        }
    }

    /// The share of `organisation_id`: the same one for every monitor of it running here.
    pub fn organisation(&self, organisation_id: Uuid) -> OrganisationSlots {
        let mut registry = self
            .organisations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(live) = registry.by_id.get(&organisation_id).and_then(Weak::upgrade) {
            return OrganisationSlots(live);
        }
        let fresh = Arc::new(Semaphore::new(self.per_organisation));
        registry
            .by_id
            .insert(organisation_id, Arc::downgrade(&fresh));
        // Organisations whose monitors all stopped leave dead entries; sweep them out whenever
        // the map has doubled since the last sweep (amortised constant time).
        if registry.by_id.len() > 2 * registry.swept_at.max(64) {
            registry.by_id.retain(|_, weak| weak.strong_count() > 0);
            registry.swept_at = registry.by_id.len();
        }
        OrganisationSlots(fresh)
    }

    /// Waits for a slot of `organisation`, then of the instance. `None` only if a semaphore was
    /// closed, which nothing does: the caller then runs its check without one.
    pub async fn acquire(&self, organisation: &OrganisationSlots) -> Option<Slot> {
        let organisation = organisation.0.clone().acquire_owned().await.ok()?;
        let instance = self.instance.clone().acquire_owned().await.ok()?;
        Some(Slot {
            _organisation: organisation,
            _instance: instance,
        })
    }

    /// Slots of the instance free now.
    pub fn available(&self) -> usize {
        self.instance.available_permits()
    }

    /// Organisations known (live or not yet swept).
    pub fn organisations(&self) -> usize {
        self.organisations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `fut` finishes without time having to pass (paused clock).
    async fn ready_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_millis(1), fut)
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn an_organisation_waits_behind_itself_not_the_others() {
        let slots = CheckSlots::new(4, 2);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let noisy = slots.organisation(a);
        let first = ready_now(slots.acquire(&noisy)).await.flatten();
        let second = ready_now(slots.acquire(&noisy)).await.flatten();
        assert!(first.is_some() && second.is_some());
        // Its third check waits (for its own share), holding none of the instance's slots.
        assert!(ready_now(slots.acquire(&noisy)).await.is_none());
        assert_eq!(slots.available(), 2);
        // Another organisation goes through at once.
        let quiet = slots.organisation(b);
        assert!(ready_now(slots.acquire(&quiet)).await.flatten().is_some());
        // A slot given back lets the noisy organisation's next check in.
        drop(first);
        assert!(ready_now(slots.acquire(&noisy)).await.flatten().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_instance_bounds_every_organisation_together() {
        let slots = CheckSlots::new(2, 2);
        let a = slots.organisation(Uuid::new_v4());
        let b = slots.organisation(Uuid::new_v4());
        let held = (
            ready_now(slots.acquire(&a)).await.flatten(),
            ready_now(slots.acquire(&b)).await.flatten(),
        );
        assert!(held.0.is_some() && held.1.is_some());
        let c = slots.organisation(Uuid::new_v4());
        assert!(ready_now(slots.acquire(&c)).await.is_none());
    }

    #[test]
    fn one_share_per_organisation_and_dead_ones_are_swept() {
        let slots = CheckSlots::new(8, 2);
        let id = Uuid::new_v4();
        let one = slots.organisation(id);
        let again = slots.organisation(id);
        assert!(Arc::ptr_eq(&one.0, &again.0));
        drop((one, again));
        for _ in 0..200 {
            drop(slots.organisation(Uuid::new_v4()));
        }
        assert!(slots.organisations() <= 129, "{}", slots.organisations());
    }
}
