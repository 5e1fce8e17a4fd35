//! Acknowledging messages a producer sent in one batch: the broker keeps a
//! batch as one entry, and an acknowledgement of any one of its messages
//! (the client sends no per-message ack set) acknowledges the whole entry.
//! So a batched message's acknowledgement is held until every message of
//! its entry is done, and then the entry is acknowledged once.
//!
//! Invariants: an entry is acknowledged only once all `batch_size` of its
//! messages are done; a message of no batch (or a batch of one) is
//! acknowledged as it is done; an entry with a message given back is
//! forgotten (the broker delivers the whole entry again, done messages
//! with it: duplicates, never a loss).

use std::collections::HashMap;

use pulsar::message::proto::MessageIdData;

/// An entry of one topic: where a batch sits.
type EntryKey = (String, u64, u64, i32);

fn entry_of(topic: &str, id: &MessageIdData) -> EntryKey {
    (
        topic.to_string(),
        id.ledger_id,
        id.entry_id,
        id.partition.unwrap_or(-1),
    )
}

/// The batched entries of one session whose messages are not all done.
#[derive(Default)]
pub(super) struct BatchAcks {
    /// Per entry: how many messages it holds, how many are done.
    entries: HashMap<EntryKey, (u32, u32)>,
}

impl BatchAcks {
    /// Notes a received message and the size of the batch it came in.
    pub fn received(&mut self, topic: &str, id: &MessageIdData, batch_size: Option<i32>) {
        let size = batch_size.and_then(|n| u32::try_from(n).ok()).unwrap_or(1);
        if id.batch_index.is_some() && size > 1 {
            self.entries.entry(entry_of(topic, id)).or_insert((size, 0));
        }
    }

    /// A message is done: the acknowledgement to send now, if any (the
    /// message's own, or its entry's once the entry's last message is
    /// done), with how many messages it covers.
    pub fn done(&mut self, topic: &str, id: MessageIdData) -> Option<(MessageIdData, u64)> {
        if id.batch_index.is_none() {
            return Some((id, 1));
        }
        let key = entry_of(topic, &id);
        let Some((size, done)) = self.entries.get_mut(&key) else {
            // Not noted as batched (a batch of one): acknowledged as is.
            return Some((id, 1));
        };
        *done += 1;
        if done < size {
            return None;
        }
        let size = u64::from(*size);
        self.entries.remove(&key);
        Some((id, size))
    }

    /// A message is given back: its entry comes again whole, so what was
    /// counted done of it is forgotten.
    pub fn given_back(&mut self, topic: &str, id: &MessageIdData) {
        self.entries.remove(&entry_of(topic, id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(entry: u64, index: Option<i32>) -> MessageIdData {
        MessageIdData {
            ledger_id: 7,
            entry_id: entry,
            batch_index: index,
            ..MessageIdData::default()
        }
    }

    #[test]
    fn a_batched_entry_is_acknowledged_once_all_its_messages_are_done() {
        let mut acks = BatchAcks::default();
        for i in 0..3 {
            acks.received("t", &id(1, Some(i)), Some(3));
        }
        acks.received("t", &id(2, None), None);
        assert_eq!(acks.done("t", id(1, Some(0))), None);
        assert_eq!(acks.done("t", id(2, None)), Some((id(2, None), 1)));
        assert_eq!(acks.done("t", id(1, Some(2))), None);
        assert_eq!(acks.done("t", id(1, Some(1))), Some((id(1, Some(1)), 3)));
    }

    #[test]
    fn an_entry_given_back_is_forgotten_and_counted_afresh_when_it_comes_again() {
        let mut acks = BatchAcks::default();
        acks.received("t", &id(1, Some(0)), Some(2));
        acks.received("t", &id(1, Some(1)), Some(2));
        assert_eq!(acks.done("t", id(1, Some(0))), None);
        acks.given_back("t", &id(1, Some(1)));
        // Delivered again, whole.
        acks.received("t", &id(1, Some(0)), Some(2));
        acks.received("t", &id(1, Some(1)), Some(2));
        assert_eq!(acks.done("t", id(1, Some(0))), None);
        assert!(acks.done("t", id(1, Some(1))).is_some());
    }

    #[test]
    fn entries_of_two_topics_or_a_batch_of_one_stand_apart() {
        let mut acks = BatchAcks::default();
        acks.received("a", &id(1, Some(0)), Some(2));
        acks.received("b", &id(1, Some(0)), Some(1));
        assert_eq!(acks.done("b", id(1, Some(0))), Some((id(1, Some(0)), 1)));
        assert_eq!(acks.done("a", id(1, Some(0))), None);
    }
}
