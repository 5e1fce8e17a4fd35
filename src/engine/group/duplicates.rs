//! The group's side of its duplicate window (`dedup_window`, see
//! [`crate::engine::dedup`]): at admission, a message whose id the window
//! holds is counted and left out (its ack settles with its batch, as for a
//! delivered one), and a copy of one still on its way is counted and left
//! out with its ack held until that one is recorded; wherever the group
//! settles a source ack or releases a backlog record, the ids are recorded
//! first.
//!
//! Invariant: an id is recorded as [`Mark::Admitted`] only after its record
//! is durably in a store that survives a crash, as [`Mark::Delivered`] only
//! after its delivery or its dead letter, and in both cases before the ack
//! or the release that follows; so a message is never taken for a
//! duplicate of one that was lost.

use super::Group;
use crate::ack::AckRef;
use crate::backlog::StoredRecord;
use crate::engine::dedup::{Mark, Verdict};
use crate::engine::stats::bump;
use crate::message::Message;

impl Group {
    /// The messages of the batch `ack` whose id the window does not hold
    /// and no copy on its way carries; counts the others.
    pub(super) fn without_duplicates(&self, messages: Vec<Message>, ack: &AckRef) -> Vec<Message> {
        let Some(window) = &self.dedup else {
            return messages;
        };
        let before = messages.len();
        let fresh: Vec<Message> = messages
            .into_iter()
            .filter(|m| window.admit(m.message_id(), ack) == Verdict::Fresh)
            .collect();
        bump(&self.stats.duplicates, (before - fresh.len()) as u64);
        fresh
    }

    /// Splits backlog records into those to deliver and the ids of those
    /// already delivered (a release a crash did not let the store save);
    /// counts the latter.
    pub(super) fn undelivered(
        &self,
        records: Vec<StoredRecord>,
    ) -> (Vec<StoredRecord>, Vec<crate::backlog::RecordId>) {
        let Some(window) = &self.dedup else {
            return (records, Vec::new());
        };
        let (done, owed): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|r| window.seen(r.record.message.message_id()) == Some(Mark::Delivered));
        bump(&self.stats.duplicates, done.len() as u64);
        (owed, done.into_iter().map(|r| r.id).collect())
    }

    /// Records the ids of messages delivered (or durably dead letters).
    pub(super) async fn remember_delivered<'a>(&self, messages: impl Iterator<Item = &'a Message>) {
        self.remember(messages, Mark::Delivered).await;
    }

    /// Records the ids of messages now durably in the backlog store, when
    /// that store survives a crash (else only settles the copies held
    /// behind them: their first copies' acks settle now too).
    pub(super) async fn remember_stored<'a>(&self, messages: impl Iterator<Item = &'a Message>) {
        if self.store.survives_crash() {
            self.remember(messages, Mark::Admitted).await;
        } else if let Some(window) = &self.dedup {
            window.arrived_unrecorded(messages.map(Message::message_id));
        }
    }

    async fn remember<'a>(&self, messages: impl Iterator<Item = &'a Message>, mark: Mark) {
        let Some(window) = &self.dedup else {
            return;
        };
        if let Err(e) = window.record(messages.map(Message::message_id), mark).await {
            // The acks still settle: nothing is lost, only this batch's
            // protection against a redelivery after a restart.
            tracing::error!(group = self.name(), error = %e, "recording ids in the duplicate window failed; a restart may deliver these messages again");
        }
    }
}
