//! Which messages are superseded: for each device and kind, the newest
//! generate time a group has delivered, so that a stale message delivered
//! after a fresher one of the same device (live-first reorders by design)
//! can say so, and a group can skip it (`skip_superseded`).
//!
//! The table is bounded: a fixed array of slots, each holding one
//! (device, kind) by a 64-bit tag of a per-process seeded hash, so memory
//! does not grow with the fleet. A key may sit in any of the [`WAYS`]
//! slots of its bucket (one cache line), so a small fleet's keys do not
//! push each other out; when a bucket is full, a new key takes over the
//! slot holding the oldest generate time.
//!
//! Invariants:
//! - a message is called superseded only if a message of the same product,
//!   device and kind (and event identifier, for events) with a strictly
//!   later generate time was delivered before it, or comes before it in
//!   its own batch; forgetting (a slot taken over) only ever errs towards
//!   "not superseded", which delivers, never skips;
//! - a message whose topic names no device is never superseded.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use parking_lot::Mutex;

use crate::message::{Kind, Message};

/// Slots in one group's table: 65,536 devices × kinds, 1 MiB, touched
/// only as devices appear.
pub const FRESHNESS_SLOTS: usize = 1 << 16;

/// Slots per bucket: 4 of 16 bytes, one 64-byte cache line.
const WAYS: usize = 4;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// The key's hash; 0 for a free slot.
    tag: u64,
    generate_time_ms: i64,
}

/// The newest generate time delivered, per device and kind, of one group.
pub struct Freshness {
    hasher: foldhash::fast::RandomState,
    slots: Mutex<Vec<Slot>>,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness::with_slots(FRESHNESS_SLOTS)
    }
}

impl Freshness {
    /// A table of `slots` slots (a power of two; tests use small ones).
    pub fn with_slots(slots: usize) -> Freshness {
        Freshness {
            hasher: foldhash::fast::RandomState::default(),
            slots: Mutex::new(vec![Slot::default(); slots.next_power_of_two().max(1)]),
        }
    }

    /// The key of a message's device and kind, if its topic names a device:
    /// computed once per message and handed to [`Freshness::superseded`]
    /// and [`Freshness::delivered`].
    pub fn key(&self, message: &Message) -> Option<u64> {
        // Product and device as one slice, `pk/dn`: neither holds a slash.
        let device = message.product_and_device()?;
        let mut h = self.hasher.build_hasher();
        device.hash(&mut h);
        message.kind().hash(&mut h);
        if message.kind() == Kind::Event {
            message.event_identifier().hash(&mut h);
        }
        // 0 marks a free slot.
        Some(h.finish().max(1))
    }

    /// For each message of a batch, given as its key and generate time, in
    /// order: whether it is superseded by one delivered earlier or by one
    /// before it in the batch.
    pub fn superseded(&self, batch: &[(Option<u64>, i64)]) -> Vec<bool> {
        let mut newest_in_batch: HashMap<u64, i64, foldhash::fast::FixedState> =
            HashMap::with_capacity_and_hasher(batch.len(), Default::default());
        let slots = self.slots.lock();
        batch
            .iter()
            .map(|&(key, time)| {
                let Some(tag) = key else {
                    return false;
                };
                let delivered = bucket(&slots, tag)
                    .iter()
                    .find(|slot| slot.tag == tag)
                    .map(|slot| slot.generate_time_ms);
                let earlier = newest_in_batch.insert(tag, time).inspect(|&before| {
                    if before > time {
                        newest_in_batch.insert(tag, before);
                    }
                });
                delivered.max(earlier).is_some_and(|newest| newest > time)
            })
            .collect()
    }

    /// Whether a message newer than `time` of this key was delivered: a
    /// batch's own order left out, unlike [`Freshness::superseded`].
    pub fn delivered_newer(&self, key: Option<u64>, time: i64) -> bool {
        let Some(tag) = key else {
            return false;
        };
        bucket(&self.slots.lock(), tag)
            .iter()
            .any(|slot| slot.tag == tag && slot.generate_time_ms > time)
    }

    /// Records that the messages of these keys and generate times were
    /// delivered.
    pub fn delivered(&self, messages: impl Iterator<Item = (u64, i64)>) {
        let mut slots = self.slots.lock();
        for (tag, time) in messages {
            let bucket = bucket_mut(&mut slots, tag);
            if let Some(slot) = bucket.iter_mut().find(|slot| slot.tag == tag) {
                slot.generate_time_ms = slot.generate_time_ms.max(time);
                continue;
            }
            // A free slot (tag 0), else the one holding the oldest time.
            let taken = bucket
                .iter_mut()
                .min_by_key(|slot| (slot.tag != 0, slot.generate_time_ms));
            if let Some(slot) = taken {
                *slot = Slot {
                    tag,
                    generate_time_ms: time,
                };
            }
        }
    }
}

/// The range of `slots` where `tag` may sit: [`WAYS`] slots, or the whole
/// table when it is smaller.
fn bucket_range(len: usize, tag: u64) -> std::ops::Range<usize> {
    let ways = WAYS.min(len);
    let start = (tag as usize & (len - 1)) & !(ways - 1);
    start..start + ways
}

fn bucket(slots: &[Slot], tag: u64) -> &[Slot] {
    &slots[bucket_range(slots.len(), tag)]
}

fn bucket_mut(slots: &mut [Slot], tag: u64) -> &mut [Slot] {
    let range = bucket_range(slots.len(), tag);
    &mut slots[range]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(device: &str, time: i64) -> Message {
        Message::new(format!("/as/mqtt/status/pk/{device}"), "id", time, "{}").unwrap()
    }

    fn keys(table: &Freshness, batch: &[Message]) -> Vec<(Option<u64>, i64)> {
        batch
            .iter()
            .map(|m| (table.key(m), m.generate_time_ms()))
            .collect()
    }

    fn deliver(table: &Freshness, batch: &[Message]) {
        let keys = keys(table, batch);
        table.delivered(keys.into_iter().filter_map(|(k, t)| Some((k?, t))));
    }

    fn judge(table: &Freshness, batch: &[Message]) -> Vec<bool> {
        table.superseded(&keys(table, batch))
    }

    #[test]
    fn an_older_message_after_a_delivered_newer_one_is_superseded() {
        let table = Freshness::default();
        deliver(&table, &[status("d1", 200)]);
        let batch = [
            status("d1", 100),
            status("d1", 200),
            status("d1", 300),
            status("d2", 100),
        ];
        assert_eq!(judge(&table, &batch), [true, false, false, false]);
    }

    #[test]
    fn within_a_batch_a_message_after_a_newer_one_is_superseded() {
        let table = Freshness::default();
        let batch = [status("d1", 300), status("d1", 100), status("d1", 400)];
        assert_eq!(judge(&table, &batch), [false, true, false]);
    }

    #[test]
    fn kinds_and_event_identifiers_are_kept_apart() {
        let table = Freshness::default();
        let event = |id: &str, t| {
            Message::new(format!("/pk/d1/thing/event/{id}/post"), "id", t, "{}").unwrap()
        };
        deliver(&table, &[event("alarm", 500), status("d1", 500)]);
        let batch = [
            event("alarm", 100),
            event("heartbeat", 100),
            Message::new("/pk/d1/thing/event/property/post", "id", 100, "{}").unwrap(),
        ];
        assert_eq!(judge(&table, &batch), [true, false, false]);
    }

    #[test]
    fn topics_without_a_device_are_never_superseded() {
        let table = Freshness::default();
        let other = |t| Message::new("/free/form", "id", t, "{}").unwrap();
        deliver(&table, &[other(500)]);
        assert_eq!(judge(&table, &[other(100)]), [false]);
    }

    #[test]
    fn keys_of_one_bucket_are_all_kept_and_a_full_bucket_forgets_the_oldest() {
        // Four slots: one bucket, whatever the hashes.
        let table = Freshness::with_slots(4);
        for d in 0..4 {
            deliver(&table, &[status(&format!("d{d}"), 1000 + d)]);
        }
        for d in 0..4 {
            assert_eq!(judge(&table, &[status(&format!("d{d}"), 1)]), [true]);
        }
        deliver(&table, &[status("d4", 2000)]);
        assert_eq!(judge(&table, &[status("d0", 1)]), [false], "d0 was oldest");
        for d in 1..5 {
            assert_eq!(judge(&table, &[status(&format!("d{d}"), 1)]), [true]);
        }
    }

    #[test]
    fn a_full_table_forgets_rather_than_misjudges() {
        // One slot for many devices: each takes it over from the last, and
        // no device is ever judged by another's time.
        let table = Freshness::with_slots(1);
        for d in 0..100 {
            deliver(&table, &[status(&format!("d{d}"), 1000 + d)]);
        }
        for d in 0..99 {
            assert_eq!(judge(&table, &[status(&format!("d{d}"), 1)]), [false]);
        }
        assert_eq!(judge(&table, &[status("d99", 1)]), [true]);
    }
}
