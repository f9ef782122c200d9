//! One timer discipline for actors that look at a buffer when something becomes due: at most
//! one pending wake-up per instant asked for, and an earlier one replaces the need for a later
//! one. actix polls every timer of a context each time the actor wakes, so timers that pile up
//! cost every message; this keeps them to the few that can fire usefully.

use std::time::Instant;

use actix::prelude::*;

/// An actor with a `tick` that looks at what is due, and a slot remembering the earliest
/// wake-up already set.
pub trait Wakes: Actor<Context = Context<Self>> {
    /// The earliest instant a timer is already set for, if any.
    fn wake_slot(&mut self) -> &mut Option<Instant>;

    /// Looks at what is due (and may ask for the next wake-up).
    fn tick(&mut self, ctx: &mut Context<Self>);

    /// Makes sure a timer ticks at `at` (or earlier).
    fn wake(&mut self, ctx: &mut Context<Self>, at: Instant) {
        let slot = self.wake_slot();
        if slot.is_some_and(|set| set <= at) {
            return;
        }
        *slot = Some(at);
        ctx.run_later(
            at.saturating_duration_since(Instant::now()),
            move |act, ctx| {
                let slot = act.wake_slot();
                if *slot == Some(at) {
                    *slot = None;
                }
                act.tick(ctx);
            },
        );
    }
}
