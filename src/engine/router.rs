//! The router: fans every batch a source hands in out to the groups whose
//! filter matches, and turns input that is not a message into dead letters.
//!
//! Invariants: each message reaches every matching group exactly once;
//! a batch's ack completes only after every group has admitted its share;
//! once intake is closed (shutdown), no batch is admitted, and closing
//! waits for the batches being routed at that moment.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dead_letter::{DeadLetter, DeadLetters};
use super::group::Group;
use super::monitor::SourceFailure;
use super::stats::{EngineStats, bump};
use crate::ack::AckRef;
use crate::message::Message;
use crate::source::{Incoming, IntakeHold, LanePolicy, Route, Routed, SourceHealth};

pub(crate) struct Router {
    pub groups: Vec<Arc<Group>>,
    /// Sources that ended with an error, in the order they failed.
    pub failures: parking_lot::Mutex<Vec<SourceFailure>>,
    /// Each source's name and health, for status lines.
    pub health: Vec<(String, SourceHealth)>,
    pub stats: EngineStats,
    dead: Arc<DeadLetters>,
    max_message_bytes: usize,
    /// Notified whenever a group makes progress or a source ends.
    pub progress: Arc<Notify>,
    /// Batches being routed now.
    intake: TaskTracker,
    /// Sources handing in, after a stop, what they cannot read again.
    holds: TaskTracker,
    /// Cancelled when the engine stops taking input.
    intake_closed: CancellationToken,
}

impl Router {
    pub fn new(
        groups: Vec<Arc<Group>>,
        health: Vec<(String, SourceHealth)>,
        stats: EngineStats,
        dead: Arc<DeadLetters>,
        max_message_bytes: usize,
        progress: Arc<Notify>,
    ) -> Router {
        Router {
            groups,
            failures: parking_lot::Mutex::default(),
            health,
            stats,
            dead,
            max_message_bytes,
            progress,
            intake: TaskTracker::new(),
            holds: TaskTracker::new(),
            intake_closed: CancellationToken::new(),
        }
    }

    /// Whether intake is still open (no shutdown yet).
    pub fn accepting(&self) -> bool {
        !self.intake_closed.is_cancelled()
    }

    /// Stops taking input, then waits until every batch that was being
    /// routed has been admitted by its groups. Sources holding intake open
    /// (see [`crate::source::Ingest::hold`]) hand in their last lines first.
    pub async fn close_intake(&self) {
        self.holds.close();
        self.holds.wait().await;
        self.intake_closed.cancel();
        self.intake.close();
        self.intake.wait().await;
    }

    async fn route_batch(
        &self,
        batch: Vec<Incoming>,
        ack: AckRef,
        policy: LanePolicy,
        source: &str,
    ) -> Routed {
        bump(&self.stats.ingested, batch.len() as u64);
        let mut per_group: Vec<Vec<Message>> = vec![Vec::new(); self.groups.len()];
        let mut dead = Vec::new();
        let mut unrouted = 0;
        for item in batch {
            let (message, line) = match item {
                Incoming::Message(m) => (m, None),
                Incoming::MessageAt { message, line } => (message, Some(line)),
                Incoming::Malformed {
                    raw,
                    origin,
                    reason,
                } => {
                    dead.push(DeadLetter::for_input(raw, origin, reason));
                    bump(&self.stats.dead_malformed, 1);
                    continue;
                }
            };
            if message.payload().len() > self.max_message_bytes {
                dead.push(self.oversize(&message, source, line));
                bump(&self.stats.dead_oversize, 1);
                continue;
            }
            let mut routed = false;
            for (g, group) in self.groups.iter().enumerate() {
                if group.filter.matches(&message) {
                    per_group[g].push(message.clone());
                    routed = true;
                }
            }
            if !routed {
                unrouted += 1;
            }
        }
        bump(&self.stats.unrouted, unrouted);
        if !dead.is_empty() {
            bump(&self.stats.dead_letters, dead.len() as u64);
            if self.dead.record(dead).await.is_err() {
                // Shutting down with the dead-letter file failing: the
                // batch's ack drops unsettled, so its source keeps it all.
                return Routed::NotLive;
            }
        }
        let mut routed = Routed::NotLive;
        for (group, messages) in self.groups.iter().zip(per_group) {
            if !messages.is_empty() {
                let taken = group
                    .admit(messages, &ack, policy, &self.intake_closed)
                    .await;
                routed = routed.or(taken);
            }
        }
        ack.complete();
        self.progress.notify_waiters();
        routed
    }

    fn oversize(&self, message: &Message, source: &str, line: Option<u64>) -> DeadLetter {
        let reason = format!(
            "oversize: payload is {} bytes, the limit is {}",
            message.payload().len(),
            self.max_message_bytes
        );
        let origin = match line {
            Some(line) => format!("{source}:{line}"),
            None => source.to_string(),
        };
        let mut letter = DeadLetter::for_input(message.payload().clone(), origin, reason);
        letter.topic = Some(message.topic().to_string());
        letter.message_id = Some(message.message_id().to_string());
        letter.generate_time_ms = Some(message.generate_time_ms());
        letter.extras = message.extras().cloned();
        letter
    }
}

#[async_trait]
impl Route for Router {
    async fn route(
        &self,
        batch: Vec<Incoming>,
        ack: AckRef,
        policy: LanePolicy,
        source: &str,
    ) -> Routed {
        // Counted first, checked second: `close_intake` either waits for
        // this batch or this batch sees intake closed.
        let _routing = self.intake.token();
        if self.intake_closed.is_cancelled() {
            // The dropped ack abandons the batch: its origin keeps it.
            return Routed::NotLive;
        }
        self.route_batch(batch, ack, policy, source).await
    }

    fn hold(&self) -> Option<IntakeHold> {
        if self.holds.is_closed() {
            return None;
        }
        Some(IntakeHold::new(self.holds.token()))
    }
}
