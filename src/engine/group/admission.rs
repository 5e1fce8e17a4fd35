//! Admission: how a message routed to a group takes its lane. Fresh
//! messages go live while the live lane has room; stale ones, and those the
//! live lane has no room for ("push limited"), go to the backlog writer.
//! At shutdown, what is left in the live lane moves to the backlog too.
//! Messages their source holds itself ([`LanePolicy::CatchUp`]) take the
//! catch-up lane, waiting for room there: they are never copied to the
//! backlog store on admission. With a duplicate window, a message whose id
//! it holds takes no lane: it is counted, and its ack settles with its
//! batch (or, for a copy of one still on its way, once that one is done).

use super::Group;
use super::writer::PendingWrite;
use crate::ack::AckRef;
use crate::backlog::BacklogRecord;
use crate::engine::dead_letter::DeadLetter;
use crate::engine::lanes::LiveItem;
use crate::engine::stats::bump;
use crate::message::{Message, now_epoch_ms};
use crate::source::{LanePolicy, Routed};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Group {
    /// Takes messages routed to this group into its lanes. Resolves once
    /// each is in the live lane or queued for the backlog writer; waits
    /// (backpressure) while the writer's queue is full. Catch-up messages
    /// wait for room in the catch-up lane until `closed` (intake closed at
    /// shutdown): those left out then drop their acks, so their source
    /// keeps them. Says whether any message took the live lane.
    pub async fn admit(
        &self,
        messages: Vec<Message>,
        ack: &AckRef,
        policy: LanePolicy,
        closed: &CancellationToken,
    ) -> Routed {
        bump(&self.stats.admitted, messages.len() as u64);
        let messages = self.without_duplicates(messages, ack);
        if policy == LanePolicy::CatchUp {
            self.admit_catch_up(messages, ack, closed).await;
            return Routed::NotLive;
        }
        let now_ms = now_epoch_ms();
        let live_window_ms = self.config.live_window.as_millis() as i64;
        let mut to_backlog = PendingWrite::default();
        let mut invalid = Vec::new();
        let mut live = Vec::with_capacity(messages.len());
        let mut routed = Routed::NotLive;
        for message in messages {
            if let Some(letter) = self.invalid_json(&message) {
                invalid.push((letter, message));
                continue;
            }
            let fresh = match policy {
                LanePolicy::Auto => message.age_ms(now_ms) <= live_window_ms,
                LanePolicy::Live => true,
                LanePolicy::Backlog | LanePolicy::CatchUp => false,
            };
            if fresh {
                live.push(LiveItem {
                    message,
                    ack: ack.clone(),
                });
            } else {
                bump(&self.stats.diverted_stale, 1);
                to_backlog.push(BacklogRecord::fresh(message), ack.clone());
            }
        }
        if !live.is_empty() {
            let offered = live.len();
            let overflow = self.live.push_batch(live);
            if overflow.len() < offered {
                self.live.wake();
                routed = Routed::Live;
            }
            bump(&self.stats.diverted_full, overflow.len() as u64);
            for item in overflow {
                to_backlog.push(BacklogRecord::fresh(item.message), item.ack);
            }
        }
        self.bury_invalid(invalid, ack).await;
        if !to_backlog.is_empty()
            && self
                .queue_write(to_backlog, closed.cancelled())
                .await
                .is_err()
        {
            // The writer stops only after the engine stopped admitting, and
            // intake closes at shutdown; either way the dropped acks
            // abandon their batches, so the source keeps them.
            tracing::warn!(
                group = self.name(),
                "intake closed while messages waited for the backlog writer; they stay unacknowledged"
            );
        }
        routed
    }

    async fn admit_catch_up(
        &self,
        messages: Vec<Message>,
        ack: &AckRef,
        closed: &CancellationToken,
    ) {
        let mut items = Vec::with_capacity(messages.len());
        let mut invalid = Vec::new();
        for message in messages {
            if let Some(letter) = self.invalid_json(&message) {
                invalid.push((letter, message));
                continue;
            }
            items.push(LiveItem {
                message,
                ack: ack.clone(),
            });
        }
        self.bury_invalid(invalid, ack).await;
        if let Err(left) = self.catch_up.push_all(items, closed, &self.progress).await {
            tracing::info!(
                group = self.name(),
                count = left.len(),
                "intake closed while catch-up messages waited for room; their source keeps them"
            );
        }
    }

    /// A dead letter for a message whose payload must be JSON and is not.
    fn invalid_json(&self, message: &Message) -> Option<DeadLetter> {
        if !self.config.validate_json {
            return None;
        }
        let limit = self.config.max_json_depth;
        let reason = match message.payload_json_depth() {
            Some(depth) if depth <= limit => return None,
            Some(depth) => {
                format!("payload nests {depth} deep, deeper than max_json_depth ({limit})")
            }
            // Only on this rare path: say what is wrong and where.
            None => match crate::message::json::validate(message.payload()) {
                Err(e) => format!("payload is not valid JSON: {e}"),
                Ok(()) => "payload is not valid JSON".to_string(),
            },
        };
        Some(DeadLetter::for_message(message, self.name(), 0, reason))
    }

    /// Records dead letters for invalid payloads; the batch's ack settles
    /// after this returns, unless the letters could not be written (at
    /// shutdown): a clone of `ack` is then dropped unsettled, so the batch
    /// stays its source's.
    async fn bury_invalid(&self, invalid: Vec<(DeadLetter, Message)>, ack: &AckRef) {
        if invalid.is_empty() {
            return;
        }
        bump(&self.stats.dead_letters, invalid.len() as u64);
        bump(&self.stats.dead_invalid, invalid.len() as u64);
        let (letters, messages): (Vec<_>, Vec<_>) = invalid.into_iter().unzip();
        if !self.write_dead_letters(letters, &messages).await {
            drop(ack.clone());
        }
    }

    /// At shutdown: hands what the live lane still holds to the backlog
    /// writer, so it is stored (and acknowledged) rather than dropped.
    /// Gives up after `grace` (a full backlog that nothing drains holds
    /// the writer): the leftovers' acks are then dropped unsettled and
    /// their sources keep them.
    pub(super) async fn move_live_to_backlog(&self, grace: Duration) {
        let leftovers = self.live.pop_batch(usize::MAX);
        if leftovers.is_empty() {
            return;
        }
        tracing::info!(
            group = self.name(),
            count = leftovers.len(),
            "moving undelivered live messages to the backlog"
        );
        let mut write = PendingWrite::default();
        for item in leftovers {
            write.push(BacklogRecord::fresh(item.message), item.ack);
        }
        if self
            .queue_write(write, tokio::time::sleep(grace))
            .await
            .is_err()
        {
            tracing::warn!(
                group = self.name(),
                "the backlog writer took no more within the shutdown grace; undelivered live messages stay unacknowledged"
            );
        }
    }
}
