//! The catch-up reader: a second consumer, outside the consumer group,
//! that reads each split partition's catch-up range `[from, to)` straight
//! from Kafka and submits it to the engine's catch-up lanes (served on the
//! backlog's schedule, never copied to a local store). Its submits wait
//! while those lanes are full, so the pile is read only as fast as the
//! backlog share drains it, and librdkafka's bounded pre-fetch keeps memory
//! flat however large the pile.
//!
//! Invariants: it submits only records inside a range that is still planned
//! (a revoked partition's range is dropped at once, and a batch registered
//! under an old epoch is refused), each record once per plan, in offset
//! order; a range counts as read once the record at `to - 1`, or one past
//! it, was read (when compaction or a transaction marker leaves no record
//! at `to - 1`, the range ends with the next record written: until then
//! the commit stays inside the range, and nothing is lost). It commits
//! nothing: the group consumer commits the watermark.
//!
//! Speed: an assigned consumer that was never told of a topic learns its
//! leaders only on librdkafka's once-a-second scan of unknown topics, so a
//! first plan would wait up to a second before its first fetch. The reader
//! asks for the subscribed topics' metadata when it starts (while the group
//! consumer joins), and a plan's assignment then fetches at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::ValueFormat;
use super::offsets::{CatchUpPlan, Offsets};
use super::record;
use super::source::CatchUpContext;
use crate::source::take_ready::{Ended, take_ready};
use crate::source::{Incoming, Ingest};

/// A client error the reader outlives (the client retries by itself),
/// met first or while gathering a batch.
fn warn_and_continue(error: &rdkafka::error::KafkaError) {
    tracing::warn!(error = %error, "kafka catch-up reader error; continuing");
}

/// How long to wait before trying a failed assignment again.
const REASSIGN_AFTER: Duration = Duration::from_secs(1);

/// How long the start's metadata request may take: no longer than the
/// scan it saves (the reader works without it, its first fetch then waits
/// for librdkafka's own scan), and it bounds what a stop right after the
/// start waits for the blocking request.
const METADATA_TIMEOUT: Duration = Duration::from_secs(1);

/// A plan being read, and the next offset to read of it.
struct Reading {
    plan: CatchUpPlan,
    next: i64,
}

/// Reads catch-up ranges as `offsets` plans them, until `stop`.
pub(super) struct CatchUpReader {
    consumer: Arc<StreamConsumer<CatchUpContext>>,
    /// The subscribed topics, whose metadata the start asks for.
    topics: Vec<String>,
    offsets: Arc<Offsets>,
    ingest: Ingest,
    format: ValueFormat,
    batch: usize,
    reading: HashMap<(String, i32), Reading>,
    /// The consumer's assignment is not `reading` (an assign failed).
    unassigned: bool,
}

impl CatchUpReader {
    /// Makes the reader's consumer (no group: it is assigned its ranges).
    /// `client` holds the group consumer's connection settings, `topics`
    /// what it subscribes to.
    pub fn new(
        client: &ClientConfig,
        topics: &[String],
        context: CatchUpContext,
        offsets: Arc<Offsets>,
        ingest: Ingest,
        format: ValueFormat,
        batch: usize,
    ) -> Result<CatchUpReader, KafkaError> {
        let mut client = client.clone();
        // Outside the group: librdkafka wants a group id for assignments,
        // but an assigned consumer never joins its group, and this one
        // never commits; a name of its own keeps it apart all the same.
        let group = client.get("group.id").unwrap_or("laneway").to_string();
        client.set("group.id", format!("{group}.catch-up"));
        // Its ranges start at offsets it is given. When retention deletes
        // the next ones before they are read, the rest of the range is
        // still in the log: read on from its start. The group's `start`
        // (`latest`) would jump to the log end and take the range as read.
        client.set("auto.offset.reset", "earliest");
        client.remove("statistics.interval.ms");
        let consumer: StreamConsumer<CatchUpContext> = client.create_with_context(context)?;
        Ok(CatchUpReader {
            consumer: Arc::new(consumer),
            topics: topics.to_vec(),
            offsets,
            ingest,
            format,
            batch,
            reading: HashMap::new(),
            unassigned: false,
        })
    }

    /// Reads until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = self.learn_topics() => {}
        }
        let offsets = Arc::clone(&self.offsets);
        // One stream for the whole run, as the group consumer keeps: each
        // `recv()` would register and remove a waker slot per record. It
        // borrows its own handle on the consumer, so `self` stays free.
        let consumer = Arc::clone(&self.consumer);
        let mut stream = consumer.stream();
        loop {
            let changed = offsets.plans_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.follow_plans() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(REASSIGN_AFTER) => continue,
                }
            }
            if self.reading.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = changed => continue,
                }
            }
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed => continue,
                r = stream.next() => match r {
                    Some(r) => r,
                    // The client's streams never end; were one to, the
                    // reader would end as on a stop.
                    None => return,
                },
            };
            match first {
                Ok(first) => {
                    let mut records = vec![first];
                    // An error or the stream's end stops the gathering; the
                    // batch so far is handed in first.
                    let ended = take_ready(&mut stream, &mut records, self.batch);
                    Self::submit(
                        &mut self.reading,
                        &self.offsets,
                        &self.ingest,
                        self.format,
                        records,
                    )
                    .await;
                    match ended {
                        Some(Ended::Failed(e)) => warn_and_continue(&e),
                        Some(Ended::Closed) => return,
                        None => {}
                    }
                }
                Err(e) => warn_and_continue(&e),
            }
        }
    }

    /// Fills the consumer's metadata cache with the subscribed topics (not
    /// the patterns: `^` names), so that an assignment of their partitions
    /// knows their leaders at once. A failure costs only that wait.
    async fn learn_topics(&self) {
        // Asked all at once: one by one, a broker that answers nothing would
        // hold the reader back `METADATA_TIMEOUT` per topic.
        let asks = self
            .topics
            .iter()
            .filter(|t| !t.starts_with('^'))
            .map(|topic| {
                let consumer = Arc::clone(&self.consumer);
                let name = topic.clone();
                async move {
                    let asked = tokio::task::spawn_blocking(move || {
                        consumer
                            .fetch_metadata(Some(&name), METADATA_TIMEOUT)
                            .map(|_| ())
                    })
                    .await;
                    if let Ok(Err(e)) = asked {
                        tracing::debug!(topic = %topic, error = %e, "kafka catch-up reader: no metadata yet; its first fetch waits for librdkafka's scan");
                    }
                }
            });
        futures_util::future::join_all(asks).await;
    }

    /// Assigns the consumer what `offsets` plans now, each range at its next
    /// offset to read. False if the assignment failed (try again later).
    fn follow_plans(&mut self) -> bool {
        let plans = self.offsets.plans();
        let same = !self.unassigned
            && plans.len() == self.reading.len()
            && plans.iter().all(|p| {
                self.reading
                    .get(&(p.topic.clone(), p.partition))
                    .is_some_and(|r| r.plan.epoch == p.epoch)
            });
        if same {
            return true;
        }
        let mut reading = HashMap::with_capacity(plans.len());
        for plan in plans {
            let key = (plan.topic.clone(), plan.partition);
            let next = match self.reading.remove(&key) {
                Some(r) if r.plan.epoch == plan.epoch => r.next,
                _ => plan.from,
            };
            reading.insert(key, Reading { plan, next });
        }
        self.reading = reading;
        let mut list = TopicPartitionList::with_capacity(self.reading.len());
        for r in self.reading.values() {
            if let Err(e) =
                list.add_partition_offset(&r.plan.topic, r.plan.partition, Offset::Offset(r.next))
            {
                tracing::warn!(error = %e, "adding a catch-up range to the assignment failed");
            }
        }
        let result = if list.count() == 0 {
            self.consumer.unassign()
        } else {
            self.consumer.assign(&list)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "assigning the catch-up ranges failed; retrying");
            self.unassigned = true;
            return false;
        }
        self.unassigned = false;
        true
    }

    /// Submits what falls inside its range, one batch per run of one
    /// partition; marks ranges read to their end.
    async fn submit(
        reading: &mut HashMap<(String, i32), Reading>,
        offsets: &Offsets,
        ingest: &Ingest,
        format: ValueFormat,
        records: Vec<BorrowedMessage<'_>>,
    ) {
        let received_at = Instant::now();
        for run in records.chunk_by(record::same_partition) {
            let Some(first) = run.first() else {
                continue;
            };
            let Some(r) = reading.get_mut(&(first.topic().to_string(), first.partition())) else {
                continue; // no longer planned (revoked, or read)
            };
            let inside: Vec<&BorrowedMessage<'_>> = run
                .iter()
                .filter(|m| m.offset() >= r.next && m.offset() < r.plan.to)
                .collect();
            let reached_end = run.iter().any(|m| m.offset() >= r.plan.to);
            if let Some(last) = inside.last().map(|m| m.offset()) {
                let Some(ack) = offsets.register_catch_up(&r.plan, last) else {
                    continue; // revoked meanwhile: the new owner reads it
                };
                let batch: Vec<Incoming> = inside
                    .iter()
                    .map(|m| record::to_incoming(*m, format, received_at))
                    .collect();
                ingest.submit(batch, ack).await;
                r.next = last + 1;
            }
            if reached_end || r.next >= r.plan.to {
                offsets.read_all(&r.plan);
            }
        }
    }
}
