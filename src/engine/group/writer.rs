//! The backlog writer: one task per group that takes batches bound for the
//! backlog (stale, overflowed, or left at shutdown) and appends them, many
//! batches to one append, so one fsync covers them all.
//!
//! Invariants: a message's ack is settled only once its record is durably
//! in the store, or durably a dead letter when the store can never hold
//! it ([`BacklogError::TooLarge`]); while the store is full the writer
//! waits (backpressure reaches the sources through the bounded queue) and
//! says so every ten seconds; it never drops a record. The records queued for the writer and
//! inside its append are bounded in bytes ([`WRITER_QUEUE_BYTES`]), not
//! only in batches, so a pile read faster than the disk takes it holds a
//! fixed amount of memory whatever its messages' sizes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::Group;
use crate::ack::AckRef;
use crate::backlog::{BacklogError, BacklogRecord};
use crate::backoff::Backoff;
use crate::engine::dead_letter::DeadLetter;
use crate::engine::stats::bump;

/// Batches waiting for the backlog writer; a full channel is backpressure.
const WRITER_QUEUE: usize = 64;
/// Bytes of messages queued for the writer or inside its append, at most
/// (a single larger batch is let through alone): room for one append of
/// [`WRITE_BATCH`] typical messages while the next gathers.
const WRITER_QUEUE_BYTES: u32 = 8 << 20;
/// The most records the writer hands the store in one append.
const WRITE_BATCH: usize = 8192;
/// How often a writer that cannot store says so again.
const REMIND: Duration = Duration::from_secs(10);

/// Records bound for the backlog, each with the ack it settles once stored.
#[derive(Default)]
pub(super) struct PendingWrite {
    records: Vec<BacklogRecord>,
    acks: Vec<AckRef>,
    /// The records' messages' sizes ([`crate::message::Message::size_bytes`]).
    bytes: usize,
    /// Its share of the writer's byte budget, given back once stored.
    permit: Option<OwnedSemaphorePermit>,
}

impl PendingWrite {
    pub fn push(&mut self, record: BacklogRecord, ack: AckRef) {
        self.bytes += record.message.size_bytes();
        self.records.push(record);
        self.acks.push(ack);
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// The receiving end of a group's backlog writer, started by [`Group::run`].
pub(crate) struct WriterQueue(mpsc::Receiver<PendingWrite>);

/// The sending end: the queue and its byte budget.
pub(super) struct WriterTx {
    tx: mpsc::Sender<PendingWrite>,
    budget: Arc<Semaphore>,
}

pub(super) fn queue() -> (WriterTx, WriterQueue) {
    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let budget = Arc::new(Semaphore::new(WRITER_QUEUE_BYTES as usize));
    (WriterTx { tx, budget }, WriterQueue(rx))
}

impl Group {
    /// Queues `write` for the backlog writer, waiting while the queue is
    /// full in batches or in bytes (backpressure); `Err` once the writer
    /// has stopped, or when `give_up` resolves first (intake closed at
    /// shutdown, or the shutdown grace over, while a full backlog holds the
    /// writer): `write` is then dropped with its acks unsettled, so its
    /// source keeps the messages.
    pub(super) async fn queue_write(
        &self,
        mut write: PendingWrite,
        give_up: impl Future<Output = ()>,
    ) -> Result<(), ()> {
        let n = write.records.len();
        self.writing.fetch_add(n, Ordering::AcqRel);
        let undo = || {
            self.writing.fetch_sub(n, Ordering::AcqRel);
        };
        // A batch larger than the whole budget takes all of it.
        let want = u32::try_from(write.bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, WRITER_QUEUE_BYTES);
        let budget = Arc::clone(&self.writer_tx.budget);
        let queued = async {
            write.permit = Some(budget.acquire_many_owned(want).await.map_err(|_| ())?);
            self.writer_tx.tx.send(write).await.map_err(|_| ())
        };
        let outcome = tokio::select! {
            outcome = queued => outcome,
            () = give_up => Err(()),
        };
        outcome.map_err(|()| undo())
    }

    /// Drains queued batches into one append each time. Once `closing` is
    /// cancelled it takes no new batches, stores those queued, and ends.
    pub(super) async fn run_writer(
        self: Arc<Self>,
        queue: WriterQueue,
        closing: CancellationToken,
    ) {
        let mut rx = queue.0;
        loop {
            let next = tokio::select! {
                biased;
                next = rx.recv() => next,
                _ = closing.cancelled() => {
                    rx.close();
                    rx.recv().await
                }
            };
            let Some(PendingWrite {
                mut records,
                mut acks,
                permit,
                ..
            }) = next
            else {
                break;
            };
            // Held until the records are stored: what waits and what is
            // being written count against the budget together.
            let mut permits = vec![permit];
            while records.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(more) => {
                        records.extend(more.records);
                        acks.extend(more.acks);
                        permits.push(more.permit);
                    }
                    Err(_) => break,
                }
            }
            let n = records.len();
            self.store_durably(records, acks).await;
            drop(permits);
            self.writing.fetch_sub(n, Ordering::AcqRel);
            self.progress.notify_waiters();
        }
    }

    /// Appends until every record is stored, settling acks as they become
    /// durable. While the store is full this waits: backpressure.
    async fn store_durably(&self, mut records: Vec<BacklogRecord>, mut acks: Vec<AckRef>) {
        let mut backoff = Backoff::new(Duration::from_millis(2), Duration::from_millis(250));
        let mut reported_full = false;
        // While the store cannot take them, say so again now and then, so a
        // run that waits on a full disk never looks like a silent hang.
        let mut last_said = Instant::now();
        let mut failing = false;
        while !records.is_empty() {
            match self.store.append(&records).await {
                Ok(()) => {
                    self.remember_stored(records.iter().map(|r| &r.message))
                        .await;
                    records.clear();
                    acks.drain(..).for_each(AckRef::complete);
                }
                Err(BacklogError::Full { stored }) => {
                    self.remember_stored(records[..stored].iter().map(|r| &r.message))
                        .await;
                    records.drain(..stored);
                    acks.drain(..stored).for_each(AckRef::complete);
                    if stored > 0 {
                        backoff.reset();
                    }
                    if !reported_full {
                        reported_full = true;
                        last_said = Instant::now();
                        bump(&self.stats.backlog_full, 1);
                        tracing::warn!(
                            group = self.name(),
                            waiting = records.len(),
                            "backlog is full: holding messages and pausing intake until room frees"
                        );
                    } else if !records.is_empty() && last_said.elapsed() >= REMIND {
                        last_said = Instant::now();
                        tracing::warn!(
                            group = self.name(),
                            waiting = records.len(),
                            "backlog still full: messages held, intake paused; room frees as the backlog drains"
                        );
                    }
                }
                Err(BacklogError::TooLarge { index, reason }) if index < records.len() => {
                    let record = records.remove(index);
                    let ack = acks.remove(index);
                    if self.bury_unstorable(record, reason).await {
                        ack.complete();
                    }
                    // The rest is offered again at once.
                    continue;
                }
                Err(e) => {
                    if !failing || last_said.elapsed() >= REMIND {
                        failing = true;
                        last_said = Instant::now();
                        tracing::error!(group = self.name(), error = %e, waiting = records.len(), "backlog append failed; retrying");
                    }
                }
            }
            self.backlog_appended.notify_one();
            if !records.is_empty() {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
        if reported_full {
            tracing::info!(group = self.name(), "backlog has room again");
        }
    }

    /// A record the store can never hold becomes a dead letter (durably,
    /// before its ack settles): waiting for room that can never come
    /// would hold every message behind it. Says whether it was written.
    async fn bury_unstorable(&self, record: BacklogRecord, reason: String) -> bool {
        tracing::warn!(group = self.name(), id = %record.message.message_id(), reason = %reason,
            "a message too large for the backlog is a dead letter");
        bump(&self.stats.dead_letters, 1);
        bump(&self.stats.dead_permanent, 1);
        let why = format!("too large for the backlog: {reason}");
        let letter = DeadLetter::for_message(&record.message, self.name(), record.attempts, why);
        self.write_dead_letters(vec![letter], std::slice::from_ref(&record.message))
            .await
    }
}
