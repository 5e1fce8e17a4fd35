//! The dispatcher: fills the group's delivery slots, asking the scheduler
//! which lane each free slot serves, and spawns one delivery per batch.
//!
//! Invariants: at most `slots` deliveries run at once (a semaphore permit
//! travels with each), and with `slots = "auto"` at most the adaptive limit
//! (a permit of the [`SlotGate`](super::slot_gate::SlotGate) travels too);
//! the scheduler keeps its last-slot rule against the limit in force, so
//! the backlog's share comes out of what the limit allows; a batch counts
//! among the group's deliveries from before it leaves its lane, so the
//! group never looks idle while one is in hand; each delivery, when it
//! ends, wakes whoever waits for the engine's progress.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::Group;
use crate::backlog::StoredRecord;
use crate::engine::lanes::LiveItem;
use crate::engine::scheduler::{Pick, Scheduler};
use crate::sink::Lane;

/// One delivery's batch, from one lane.
enum Work {
    Live(Vec<LiveItem>),
    Backlog(Vec<StoredRecord>, InFlight),
    /// From the catch-up lane: held by the source, served as backlog.
    CatchUp(Vec<LiveItem>, InFlight),
}

/// Whether a backlog delivery counts among `backlog_in_flight`: one in the
/// slot kept for live (a short batch) does not, so the slot stays the last.
#[derive(Clone, Copy, PartialEq, Eq)]
enum InFlight {
    Counted,
    LastSlot,
}

/// The most backlog records a delivery may take in the slot kept for live:
/// an eighth of a batch, so a fresh message waits at most that behind the
/// backlog, and the slot still drains the backlog while live is between
/// messages.
pub(super) fn last_slot_batch(batch_size: usize) -> usize {
    (batch_size / 8).max(1)
}

impl Group {
    /// Fills delivery slots until `stop` is cancelled.
    pub(super) async fn dispatch(self: &Arc<Self>, stop: &CancellationToken) {
        let window = self.config.batch_size * self.config.slots * 2;
        let mut scheduler = Scheduler::new(
            self.config.backlog_share,
            self.config.backlog_rate,
            window,
            self.config.slots,
        )
        .with_last_slot_batch(last_slot_batch(self.config.batch_size));
        loop {
            let gate_permit = match &self.gate {
                None => None,
                Some(gate) => tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    permit = gate.acquire() => match permit {
                        Some(p) => Some(p),
                        None => return,
                    },
                },
            };
            let permit = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                permit = Arc::clone(&self.slots).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            scheduler.set_slots(self.slot_limit());
            let work = loop {
                if stop.is_cancelled() {
                    return;
                }
                let now = Instant::now();
                let backlog_ready = !self.read_ahead.is_empty() || !self.catch_up.is_empty();
                let in_flight = self.backlog_in_flight.load(Ordering::Acquire);
                match scheduler.pick(!self.live.is_empty(), backlog_ready, in_flight, now) {
                    Pick::Live => {
                        // Counted before it leaves the lane, so the group
                        // never looks idle while a batch is in hand.
                        self.delivering.fetch_add(1, Ordering::AcqRel);
                        let batch = self.live.pop_batch(self.config.batch_size);
                        if !batch.is_empty() {
                            scheduler.took(Lane::Live, batch.len());
                            break Work::Live(batch);
                        }
                        self.nothing_taken();
                    }
                    Pick::Backlog { max, last_slot } => {
                        // The store's records (retries, stale messages)
                        // first, then what sources hold for catching up.
                        let max = max.min(self.config.batch_size);
                        let counted = if last_slot {
                            InFlight::LastSlot
                        } else {
                            InFlight::Counted
                        };
                        self.delivering.fetch_add(1, Ordering::AcqRel);
                        let records = self.read_ahead.take(max);
                        if !records.is_empty() {
                            scheduler.took(Lane::Backlog, records.len());
                            self.backlog_started(counted);
                            break Work::Backlog(records, counted);
                        }
                        let held = self.catch_up.pop_batch(max);
                        if !held.is_empty() {
                            scheduler.took(Lane::Backlog, held.len());
                            self.backlog_started(counted);
                            break Work::CatchUp(held, counted);
                        }
                        self.nothing_taken();
                    }
                    Pick::Wait(wait) => {
                        // A timed wait only for the scheduler's own clock (a
                        // rate ceiling, the quiet period of live traffic).
                        tokio::select! {
                            _ = self.live.arrived() => {}
                            _ = self.catch_up.arrived() => {}
                            _ = self.read_ahead.filled.notified() => {}
                            _ = tokio::time::sleep(wait) => {}
                            _ = stop.cancelled() => return,
                        }
                    }
                }
            };
            let group = Arc::clone(self);
            tokio::spawn(group.deliver(work, permit, gate_permit));
        }
    }

    /// Undoes the count of a batch that turned out empty, and says so to
    /// whoever saw it counted while waiting for the group to be idle.
    fn nothing_taken(&self) {
        self.delivering.fetch_sub(1, Ordering::AcqRel);
        self.progress.notify_waiters();
    }

    fn backlog_started(&self, counted: InFlight) {
        if counted == InFlight::Counted {
            self.backlog_in_flight.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn backlog_ended(&self, counted: InFlight) {
        if counted == InFlight::Counted {
            self.backlog_in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    async fn deliver(
        self: Arc<Self>,
        work: Work,
        permit: OwnedSemaphorePermit,
        gate_permit: Option<OwnedSemaphorePermit>,
    ) {
        match work {
            Work::Live(items) => self.deliver_held(items, Lane::Live).await,
            Work::Backlog(records, counted) => {
                self.deliver_backlog(records).await;
                self.backlog_ended(counted);
            }
            Work::CatchUp(items, counted) => {
                self.deliver_held(items, Lane::Backlog).await;
                self.backlog_ended(counted);
            }
        }
        self.delivering.fetch_sub(1, Ordering::AcqRel);
        drop(permit);
        if let (Some(gate), Some(p)) = (&self.gate, gate_permit) {
            gate.release(p);
        }
        self.progress.notify_waiters();
    }
}
