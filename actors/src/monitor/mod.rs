//! Uptime monitors: one supervised MonitorActor per monitor, the CheckWriter that batches their
//! results, and the shard leases that decide which instance runs which monitor.
//!
//! (Being built: issue 5. [`MonitorControl`] is the handle routes use.)

use uuid::Uuid;

/// What the HTTP layer tells the monitor engine of this instance.
#[derive(Clone, Default)]
pub struct MonitorControl {}

impl MonitorControl {
    /// A handle that reaches no engine (tests of other parts, tools).
    pub fn disconnected() -> Self {
        Self::default()
    }

    /// A monitor was created, updated, paused, resumed or deleted through the API (its row is
    /// committed): the engine reloads it and starts, updates or stops its actor at once if
    /// this instance runs its shard. Never waits.
    pub fn changed(&self, monitor_id: Uuid) {
        let _ = monitor_id;
    }
}
