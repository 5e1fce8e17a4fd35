//! The adaptive part of a group's delivery slots (`slots = "auto"`): a
//! semaphore whose permits follow [`AdaptiveLimit`], taken before one of the
//! group's fixed `slots` (its ceiling).
//!
//! Invariants: the permits out plus those available equal the limit plus
//! the debt (permits to retire as they come back); a lowered limit never
//! cancels a delivery in flight, it only holds the next one back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::concurrency::{AdaptiveLimit, CallSignal};

/// A group's adaptive limit on deliveries in flight.
pub(super) struct SlotGate {
    permits: Arc<Semaphore>,
    state: Mutex<State>,
}

struct State {
    limit: AdaptiveLimit,
    /// Permits to forget as they come back, after the limit went down
    /// while they were out.
    debt: usize,
}

impl SlotGate {
    pub fn new(min: usize, max: usize) -> SlotGate {
        let limit = AdaptiveLimit::new(min, max);
        SlotGate {
            permits: Arc::new(Semaphore::new(limit.limit())),
            state: Mutex::new(State { limit, debt: 0 }),
        }
    }

    /// Waits for room under the limit; `None` once the gate is closed.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        if self.permits.available_permits() == 0 {
            self.state.lock().limit.reached_limit();
        }
        Some(permit)
    }

    /// Gives a permit back, retiring it instead if the limit went down.
    pub fn release(&self, permit: OwnedSemaphorePermit) {
        let mut state = self.state.lock();
        if state.debt > 0 {
            state.debt -= 1;
            permit.forget();
        }
    }

    /// The deliveries allowed in flight now.
    pub fn limit(&self) -> usize {
        self.state.lock().limit.limit()
    }

    /// Feeds one sink call's round trip and signal to the limit (`timed`:
    /// see [`AdaptiveLimit::observe`]), and resizes the semaphore when the
    /// limit moved.
    pub fn observe(&self, rtt: Duration, signal: CallSignal, timed: bool) {
        let mut state = self.state.lock();
        let before = state.limit.limit();
        let Some(after) = state.limit.observe(Instant::now(), rtt, signal, timed) else {
            return;
        };
        if after > before {
            let mut grow = after - before;
            let paid = grow.min(state.debt);
            state.debt -= paid;
            grow -= paid;
            self.permits.add_permits(grow);
        } else {
            let shrink = before - after;
            let forgotten = self.permits.forget_permits(shrink);
            state.debt += shrink - forgotten;
        }
    }
}
