//! Reading the backlog queue: a consumer started on first use, records
//! held until they are due, handed out in queue order, and acked when the
//! engine releases them.
//!
//! Invariants: a record id is this store's own counter, mapped to the
//! delivery tag on the consuming channel it came from; "nothing ready" is
//! decided by `basic.get` answering empty, followed by one more round trip
//! on that channel ([`Inner::settle_channel`]), so `take_ready` returns
//! nothing only when the queue had nothing ready for this instance; a
//! release of a record taken on an older channel acks nothing (its
//! original is back in the queue); a delivery that is not a laneway record
//! goes to the poison queue, never to the engine.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering;

use futures_util::{FutureExt, StreamExt};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{FieldTable, ShortString};

use super::depth::saturating_sub;
use super::link::Link;
use super::{Inner, record, unavailable};
use crate::amqp::core::connect::AmqpError;
use crate::backlog::{BacklogError, BacklogRecord, RecordId, StoredRecord};

/// How long a take that has records already waits for the consumer's next
/// delivery before it returns what it has (the queue may have no more).
const CONSUMER_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// A received record this instance holds (not yet due, or over the
/// batch), with its delivery tag.
pub(super) struct Held {
    pub(super) tag: u64,
    pub(super) stored_at_ms: i64,
    pub(super) record: BacklogRecord,
}

/// A record handed out.
pub(super) struct Taken {
    pub(super) generation: u64,
    pub(super) tag: u64,
    pub(super) stored_at_ms: i64,
}

/// The consuming side, behind the store's reader lock: the consumer, the
/// records held and those handed out.
#[derive(Default)]
pub(super) struct Reader {
    /// The link generation the consumer, the held records and the tags
    /// belong to.
    pub(super) generation: u64,
    pub(super) channel: Option<Channel>,
    pub(super) consumer: Option<lapin::Consumer>,
    /// The consumer's prefetch (see [`Inner::consume`]).
    pub(super) prefetch: usize,
    /// The generation after whose loss unackable releases were last
    /// reported (so a lost channel is reported once, not per release).
    pub(super) warned_generation: u64,
    pub(super) next_id: RecordId,
    /// Held records, soonest not-before first, then in arrival order.
    pub(super) held: BinaryHeap<Reverse<(i64, RecordId)>>,
    pub(super) held_records: HashMap<RecordId, Held>,
    pub(super) in_flight: HashMap<RecordId, Taken>,
}

impl Inner {
    /// Hands out up to `max` records due at `now_ms`, in queue order (see
    /// the module docs for when it returns nothing).
    pub(super) async fn take_ready(
        &self,
        max: usize,
        now_ms: i64,
    ) -> Result<Vec<StoredRecord>, BacklogError> {
        let link = self.link().await?;
        let mut reader = self.reader.lock().await;
        self.sync(&mut reader, &link);
        self.recheck.store(false, Ordering::Relaxed);
        self.consume(&mut reader, max).await?;
        let mut out = Vec::new();
        self.drain(&mut reader, true).await;
        self.take_due(&mut reader, &mut out, max, now_ms);
        // Not enough at hand. While the consumer can still be pushed more,
        // wait a moment for it; with nothing at all (or a full prefetch),
        // ask the queue itself (a get is not held back by the prefetch,
        // which records not yet due may fill), until it has nothing ready
        // for this instance.
        let mut gets = 0;
        while out.len() < max {
            let saturated = reader.held_records.len() + reader.in_flight.len() >= reader.prefetch;
            if !out.is_empty() && !saturated && reader.consumer.is_some() {
                if !self.wait_delivery(&mut reader).await {
                    break;
                }
                self.take_due(&mut reader, &mut out, max, now_ms);
                continue;
            }
            if gets >= max {
                break;
            }
            gets += 1;
            let got = link
                .consume
                .basic_get(self.names.backlog.clone(), BasicGetOptions::default())
                .await
                .map_err(|e| {
                    unavailable(AmqpError::classify(
                        &self.url,
                        "reading the backlog queue",
                        &e,
                        false,
                    ))
                })?;
            // Deliveries the queue pushed before it answered are older, but
            // the broker may write them after its answer: one more round
            // trip on the channel brings them in (see `settle_channel`).
            self.settle_channel(&link, reader.prefetch).await?;
            self.drain(&mut reader, true).await;
            let Some(got) = got else {
                self.take_due(&mut reader, &mut out, max, now_ms);
                break;
            };
            self.receive(&mut reader, got.delivery, true).await;
            self.take_due(&mut reader, &mut out, max, now_ms);
        }
        self.park(&mut reader, now_ms).await;
        if out.is_empty()
            && reader.held_records.is_empty()
            && let Err(e) = self.recount(&mut reader, &link, false).await
        {
            tracing::debug!(error = %e, "recounting the broker backlog failed");
        }
        Ok(out)
    }

    /// Acks records the engine is done with; one taken on an older channel
    /// is already back in the queue.
    pub(super) async fn release(&self, ids: &[RecordId]) -> Result<(), BacklogError> {
        let mut reader = self.reader.lock().await;
        let mut released = 0u64;
        let mut lost = 0usize;
        for id in ids {
            let Some(t) = reader.in_flight.remove(id) else {
                continue;
            };
            released += 1;
            let acked = match &reader.channel {
                Some(channel) if t.generation == reader.generation => channel
                    .basic_ack(t.tag, BasicAckOptions::default())
                    .await
                    .is_ok(),
                _ => false,
            };
            if !acked {
                lost += 1;
            }
        }
        saturating_sub(&self.in_flight, released);
        if lost > 0 && reader.warned_generation == reader.generation {
            tracing::debug!(
                queue = %self.names.backlog,
                records = lost,
                "released records could not be acked; they will be delivered again"
            );
        } else if lost > 0 {
            // Their channel is gone: the broker has them back and delivers
            // them again (at-least-once). Said once per lost channel.
            reader.warned_generation = reader.generation;
            tracing::warn!(
                queue = %self.names.backlog,
                records = lost,
                "released records could not be acked; they will be delivered again"
            );
        }
        Ok(())
    }

    /// Brings the reader onto `link`: after a reconnect, what the old
    /// channel held is back in the queue and no longer this instance's.
    pub(super) fn sync(&self, reader: &mut Reader, link: &Link) {
        if reader.generation == link.generation && reader.channel.is_some() {
            return;
        }
        let returned = reader.held_records.len() as u64;
        reader.held.clear();
        reader.held_records.clear();
        reader.consumer = None;
        reader.channel = Some(link.consume.clone());
        reader.generation = link.generation;
        saturating_sub(&self.held, returned);
        self.ready.fetch_add(returned, Ordering::Relaxed);
    }

    /// Starts consuming the backlog queue on the reader's channel, if not
    /// yet (lazily: an instance that never reads pulls nothing ahead).
    ///
    /// The broker counts every unacked record against the prefetch, those
    /// handed out and not yet released included, so the prefetch is
    /// `read_ahead` plus room for twice the first take's `max` (what the
    /// caller holds: its read-ahead and its deliveries in flight). With a
    /// smaller one the consumer would stall and every record would take a
    /// `basic.get` round trip.
    async fn consume(&self, reader: &mut Reader, max: usize) -> Result<(), BacklogError> {
        if reader.consumer.is_some() {
            return Ok(());
        }
        let Some(channel) = reader.channel.clone() else {
            return Ok(());
        };
        let failed = |what: &str, e: lapin::Error| {
            unavailable(AmqpError::classify(&self.url, what, &e, false))
        };
        let prefetch = u16::try_from(
            usize::from(self.config.read_ahead).saturating_add(max.saturating_mul(2)),
        )
        .unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| failed("setting the prefetch", e))?;
        reader.prefetch = usize::from(prefetch);
        let consumer = channel
            .basic_consume(
                self.names.backlog.clone(),
                ShortString::default(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| failed("consuming the backlog queue", e))?;
        reader.consumer = Some(consumer);
        Ok(())
    }

    /// Takes in a delivery from the backlog queue: held, or rejected to the
    /// poison queue when it is not a laneway record. `counted`: whether the
    /// broker's ready count this instance keeps still includes it.
    async fn receive(&self, reader: &mut Reader, delivery: Delivery, counted: bool) {
        if counted {
            saturating_sub(&self.ready, 1);
        }
        let tag = delivery.delivery_tag;
        match record::decode(&delivery.properties, delivery.data) {
            Ok(decoded) => {
                let id = reader.next_id;
                reader.next_id += 1;
                reader
                    .held
                    .push(Reverse((decoded.record.not_before_ms, id)));
                reader.held_records.insert(
                    id,
                    Held {
                        tag,
                        stored_at_ms: decoded.stored_at_ms,
                        record: decoded.record,
                    },
                );
                self.held.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => {
                tracing::warn!(queue = %self.names.backlog, reason, "not a laneway record: moved to the poison queue");
                if let Some(channel) = &reader.channel {
                    let _ = channel
                        .basic_reject(tag, BasicRejectOptions { requeue: false })
                        .await;
                }
            }
        }
    }

    /// Takes in whatever the consumer already holds, without waiting.
    pub(super) async fn drain(&self, reader: &mut Reader, counted: bool) {
        loop {
            let Some(consumer) = reader.consumer.as_mut() else {
                return;
            };
            match consumer.next().now_or_never() {
                Some(Some(Ok(d))) => self.receive(reader, d, counted).await,
                Some(Some(Err(e))) => {
                    tracing::warn!(error = %AmqpError::new(&self.url, "consuming the backlog", e), "backlog consumer broke");
                    reader.consumer = None;
                    return;
                }
                Some(None) => {
                    tracing::warn!(queue = %self.names.backlog, "the broker cancelled the backlog consumer");
                    reader.consumer = None;
                    return;
                }
                None => return,
            }
        }
    }

    /// Waits up to [`CONSUMER_WAIT`] for the consumer's next delivery and
    /// takes it in with whatever followed it; whether one came.
    async fn wait_delivery(&self, reader: &mut Reader) -> bool {
        let Some(consumer) = reader.consumer.as_mut() else {
            return false;
        };
        let next = tokio::time::timeout(CONSUMER_WAIT, consumer.next()).await;
        match next {
            Ok(Some(Ok(d))) => {
                self.receive(reader, d, true).await;
                self.drain(reader, true).await;
                true
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %AmqpError::new(&self.url, "consuming the backlog", e), "backlog consumer broke");
                reader.consumer = None;
                false
            }
            Ok(None) => {
                tracing::warn!(queue = %self.names.backlog, "the broker cancelled the backlog consumer");
                reader.consumer = None;
                false
            }
            Err(_) => false,
        }
    }

    /// Moves held records that are due into `out`, oldest first, up to
    /// `max`; collects those due later than `park_after` into `park`.
    fn take_due(&self, reader: &mut Reader, out: &mut Vec<StoredRecord>, max: usize, now_ms: i64) {
        while out.len() < max {
            let Some(Reverse((not_before, id))) = reader.held.peek().copied() else {
                return;
            };
            if not_before > now_ms {
                return;
            }
            reader.held.pop();
            let Some(held) = reader.held_records.remove(&id) else {
                continue;
            };
            reader.in_flight.insert(
                id,
                Taken {
                    generation: reader.generation,
                    tag: held.tag,
                    stored_at_ms: held.stored_at_ms,
                },
            );
            saturating_sub(&self.held, 1);
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            out.push(StoredRecord {
                id,
                record: held.record,
            });
        }
    }

    /// A round trip on the consuming channel (a `basic.qos` that changes
    /// nothing). RabbitMQ's channel answers a `basic.get` (or a passive
    /// declare) before it writes the deliveries the queue pushed while it
    /// waited for the queue's answer; those are queued in the channel ahead
    /// of the next request, so once this returns they have all arrived.
    pub(super) async fn settle_channel(
        &self,
        link: &Link,
        prefetch: usize,
    ) -> Result<(), BacklogError> {
        let prefetch = u16::try_from(prefetch.max(1)).unwrap_or(u16::MAX);
        link.consume
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| {
                unavailable(AmqpError::classify(
                    &self.url,
                    "setting the prefetch",
                    &e,
                    false,
                ))
            })
    }
}
