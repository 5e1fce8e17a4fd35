//! The ids a group has admitted and not yet recorded: a copy that arrives
//! while its first copy is still on its way (a broker that redelivers
//! before the first is acknowledged, a reconnect that hands out again what
//! was unacknowledged) is held behind that first copy instead of being
//! delivered a second time.
//!
//! Invariants: a held copy's ack is completed only after the first copy's
//! id is recorded in the window (it is delivered, durably a dead letter or
//! durably stored), so acknowledging the copy can never lose the message;
//! the table never keeps a batch pending (it watches the first copy's
//! batch, never holds it), and a first copy whose batch was abandoned
//! gives way to the next copy, which inherits the held ones; a message
//! whose batch tracks no ack (a source that is never asked again) is not
//! tracked at all.

use std::collections::HashMap;

use crate::ack::{AckRef, AckWatch};

/// One id on its way: the first copy's batch, and the acks of the copies
/// held behind it.
struct OnItsWay {
    first: AckWatch,
    held: Vec<AckRef>,
}

/// What admission does with a copy (see [`InFlight::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The first copy on its way: deliver it.
    First,
    /// A copy of one on its way: its ack waits for that one.
    Held,
}

/// The table of ids on their way (see the module documentation).
#[derive(Default)]
pub(super) struct InFlight {
    ids: HashMap<u128, OnItsWay>,
}

impl InFlight {
    /// Admits a copy of the message with this digest whose batch is `ack`.
    pub(super) fn admit(&mut self, digest: u128, ack: &AckRef) -> Admission {
        let Some(watch) = ack.watch() else {
            return Admission::First;
        };
        match self.ids.get_mut(&digest) {
            Some(on_its_way) if on_its_way.first.is_pending() => {
                on_its_way.held.push(ack.clone());
                Admission::Held
            }
            Some(on_its_way) => {
                // The first copy will never be done: this one takes its
                // place, and the copies held behind it wait for this one.
                on_its_way.first = watch;
                Admission::First
            }
            None => {
                self.ids.insert(
                    digest,
                    OnItsWay {
                        first: watch,
                        held: Vec::new(),
                    },
                );
                Admission::First
            }
        }
    }

    /// The id is recorded (or needs no recording): forgets it and returns
    /// the acks of the copies that were held behind it, to be completed.
    pub(super) fn arrived(&mut self, digest: u128) -> Vec<AckRef> {
        self.ids.remove(&digest).map(|o| o.held).unwrap_or_default()
    }

    /// Ids on their way now.
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ack::AckTracker;

    #[test]
    fn a_copy_waits_for_the_first_and_settles_only_when_it_arrives() {
        let tracker = AckTracker::new();
        let first = tracker.register();
        let copy = tracker.register();
        let mut table = InFlight::default();
        assert_eq!(table.admit(7, &first), Admission::First);
        assert_eq!(table.admit(7, &copy), Admission::Held);
        // The copy's source reference is done with it; the held clone is not.
        copy.complete();
        first.complete();
        assert_eq!(tracker.watermark(), 1, "the copy's batch waits");
        for held in table.arrived(7) {
            held.complete();
        }
        assert_eq!(tracker.watermark(), 2);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn an_abandoned_first_copy_gives_way_to_the_next() {
        let tracker = AckTracker::new();
        let first = tracker.register();
        let second = tracker.register();
        let third = tracker.register();
        let mut table = InFlight::default();
        assert_eq!(table.admit(7, &first), Admission::First);
        assert_eq!(table.admit(7, &second), Admission::Held);
        drop(first);
        assert_eq!(table.admit(7, &third), Admission::First);
        assert_eq!(table.arrived(7).len(), 1, "the second still waits");
    }

    #[test]
    fn a_copy_without_an_ack_is_not_tracked() {
        let mut table = InFlight::default();
        assert_eq!(table.admit(7, &AckRef::none()), Admission::First);
        assert_eq!(table.admit(7, &AckRef::none()), Admission::First);
        assert_eq!(table.len(), 0);
    }
}
