//! Publishing to the backlog's queues: appends, retries and parked
//! records, each waited on until the broker confirms it.
//!
//! Invariants: a publish resolves only with the broker's confirm (or its
//! refusal) for every message, within `confirm_timeout`; a failed channel
//! or an unroutable message drops the link, so the next call reconnects; a
//! retried or parked record is acked on the consuming channel only after
//! its new copy is confirmed (a crash in between delivers it twice, never
//! loses it); every publish is counted in [`Inner::publishing`] while under
//! way, so a recount that overlaps one is not stored.

use std::cmp::Reverse;
use std::sync::atomic::Ordering;

use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::time::Instant;

use super::depth::saturating_sub;
use super::link::Link;
use super::read::{Reader, Taken};
use super::{Inner, record, unavailable};
use crate::amqp::core::connect::AmqpError;
use crate::backlog::{BacklogError, BacklogRecord, RecordId, StoredRecord};
use crate::message::now_epoch_ms;

/// A publish under way (see [`Inner::publishing`]); ends when dropped.
pub(super) struct Publishing<'a>(&'a Inner);

impl<'a> Publishing<'a> {
    pub(super) fn start(inner: &'a Inner) -> Publishing<'a> {
        inner.publishing.fetch_add(1, Ordering::SeqCst);
        Publishing(inner)
    }
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        self.0.published.fetch_add(1, Ordering::SeqCst);
        self.0.publishing.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a publish came to.
pub(super) enum Published {
    Confirmed,
    Refused,
}

impl Inner {
    /// Stores records (see [`crate::backlog::BacklogStore::append`]): due
    /// within `park_after` into the backlog queue, later ones into the wait
    /// queue; never past `max_records` by this instance's count.
    pub(super) async fn append(&self, records: &[BacklogRecord]) -> Result<(), BacklogError> {
        let wanted = records.len();
        let link = self.link().await?;
        let _publishing = Publishing::start(self);
        // The broker's limit is the shared one, but a quorum queue applies
        // it after the fact (it takes the publish that crosses it, then
        // refuses until it drains below it): this instance also keeps to it
        // by its own count.
        let room = match self.config.max_records {
            Some(max) => {
                usize::try_from(max.saturating_sub(self.depth().records)).unwrap_or(usize::MAX)
            }
            None => usize::MAX,
        };
        let records = &records[..records.len().min(room)];
        let now = now_epoch_ms();
        let park_after = i64::try_from(self.config.park_after.as_millis()).unwrap_or(i64::MAX);
        let messages = records
            .iter()
            .map(|r| {
                let wait = r.not_before_ms.saturating_sub(now);
                if wait > park_after {
                    (
                        &self.names.wait,
                        r.message.payload().as_ref(),
                        record::encode(r, now, Some(wait)),
                    )
                } else {
                    (
                        &self.names.backlog,
                        r.message.payload().as_ref(),
                        record::encode(r, now, None),
                    )
                }
            })
            .collect();
        let results = self.publish(&link.publish, messages).await?;
        let confirmed = results
            .iter()
            .filter(|r| matches!(r, Published::Confirmed))
            .count();
        self.ready.fetch_add(confirmed as u64, Ordering::Relaxed);
        let stored = results
            .iter()
            .take_while(|r| matches!(r, Published::Confirmed))
            .count();
        if confirmed < results.len() {
            // A quorum queue over its limit tells each publishing channel
            // to refuse, and does not always tell it when it has room again:
            // the next append starts on a fresh channel, which the queue
            // judges by its length then.
            self.renew_publisher(link.generation).await;
        }
        if stored < wanted {
            if confirmed > stored {
                // Room freed while the batch was in flight: the records
                // after the first refusal that the broker took will be
                // offered again, and so delivered twice (never lost).
                tracing::debug!(
                    queue = %self.names.backlog,
                    duplicates = confirmed - stored,
                    "backlog queue refused part of a batch"
                );
            }
            return Err(BacklogError::Full { stored });
        }
        Ok(())
    }

    /// Stores taken records again with their new attempts (see
    /// [`Inner::republish`]), then acks their originals.
    pub(super) async fn retry(&self, records: &[StoredRecord]) -> Result<(), BacklogError> {
        let link = self.link().await?;
        let mut reader = self.reader.lock().await;
        self.sync(&mut reader, &link);
        let mut current = Vec::with_capacity(records.len());
        let mut stale = 0u64;
        for r in records {
            match reader.in_flight.remove(&r.id) {
                Some(t) if t.generation == reader.generation => current.push((r, t)),
                Some(_) => stale += 1,
                None => {
                    tracing::warn!(id = r.id, "retry of a record this backlog did not hand out")
                }
            }
        }
        // Records taken on an older channel are back in the queue already.
        saturating_sub(&self.in_flight, stale);
        if current.is_empty() {
            return Ok(());
        }
        let published = {
            let _publishing = Publishing::start(self);
            self.republish(&link, &current).await
        };
        if let Err(e) = published {
            for (r, t) in current {
                reader.in_flight.insert(r.id, t);
            }
            return Err(e);
        }
        let n = current.len() as u64;
        for (_, t) in &current {
            if let Err(e) = link
                .consume
                .basic_ack(t.tag, BasicAckOptions::default())
                .await
            {
                // The original goes back to the queue: delivered again.
                tracing::warn!(error = %AmqpError::new(&self.url, "acking a retried record", e), "a retried record will also come back as it was");
            }
        }
        saturating_sub(&self.in_flight, n);
        self.ready.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Publishes messages to queues and waits for every confirm: for each,
    /// whether the broker took it. `Err` when the channel failed (nothing
    /// can be told about the batch) or a message had no queue to go to.
    async fn publish(
        &self,
        channel: &Channel,
        messages: Vec<(&ShortString, &[u8], BasicProperties)>,
    ) -> Result<Vec<Published>, BacklogError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let mut pending = Vec::with_capacity(messages.len());
        for (queue, body, props) in messages {
            match channel
                .basic_publish("".into(), queue.clone(), options, body, props)
                .await
            {
                Ok(confirm) => pending.push((queue.clone(), confirm)),
                Err(e) => {
                    let e = AmqpError::new(&self.url, "publishing to the backlog", e);
                    self.reset(&e.to_string()).await;
                    return Err(unavailable(e));
                }
            }
        }
        let deadline = Instant::now() + self.config.confirm_timeout;
        let mut out = Vec::with_capacity(pending.len());
        let mut failed = None;
        for (queue, confirm) in pending {
            match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {
                    out.push(Published::Confirmed);
                }
                Ok(Ok(Confirmation::Ack(Some(_)))) => {
                    failed.get_or_insert_with(|| {
                        AmqpError::new(
                            &self.url,
                            "publishing to the backlog",
                            format!("queue {queue} does not exist (the message came back)"),
                        )
                    });
                    out.push(Published::Refused);
                }
                Ok(Ok(Confirmation::Nack(_))) => out.push(Published::Refused),
                Ok(Err(e)) => {
                    failed.get_or_insert_with(|| {
                        AmqpError::new(&self.url, "waiting for a confirm", e)
                    });
                    out.push(Published::Refused);
                }
                Err(_) => {
                    failed.get_or_insert_with(|| {
                        AmqpError::new(
                            &self.url,
                            "waiting for a confirm",
                            format!("none within {:?}", self.config.confirm_timeout),
                        )
                    });
                    out.push(Published::Refused);
                }
            }
        }
        if let Some(e) = failed {
            self.reset(&e.to_string()).await;
            return Err(unavailable(e));
        }
        Ok(out)
    }

    /// Stores retried records again, with their new attempts and
    /// not-before time: one due within `park_after` straight into the
    /// backlog queue, a later one (or one the full backlog queue refused)
    /// into the wait queue, which has no limit and hands it on when the
    /// backlog queue has room. `Ok` only when every one is confirmed.
    async fn republish(
        &self,
        link: &Link,
        records: &[(&StoredRecord, Taken)],
    ) -> Result<(), BacklogError> {
        let wall = now_epoch_ms();
        let park_after = i64::try_from(self.config.park_after.as_millis()).unwrap_or(i64::MAX);
        let wait_of = |r: &StoredRecord| r.record.not_before_ms.saturating_sub(wall);
        let direct: Vec<usize> = (0..records.len())
            .filter(|&i| wait_of(records[i].0) <= park_after)
            .collect();
        let mut to_wait: Vec<usize> = (0..records.len())
            .filter(|&i| wait_of(records[i].0) > park_after)
            .collect();
        let messages = direct
            .iter()
            .map(|&i| {
                let (r, t) = &records[i];
                (
                    &self.names.backlog,
                    r.record.message.payload().as_ref(),
                    record::encode(&r.record, t.stored_at_ms, None),
                )
            })
            .collect();
        let results = self.publish(&link.publish, messages).await?;
        to_wait.extend(
            direct
                .iter()
                .zip(results)
                .filter(|(_, p)| matches!(p, Published::Refused))
                .map(|(i, _)| *i),
        );
        if to_wait.is_empty() {
            return Ok(());
        }
        let messages = to_wait
            .iter()
            .map(|&i| {
                let (r, t) = &records[i];
                (
                    &self.names.wait,
                    r.record.message.payload().as_ref(),
                    record::encode(&r.record, t.stored_at_ms, Some(wait_of(r))),
                )
            })
            .collect();
        let results = self.publish(&link.publish, messages).await?;
        if results.iter().all(|p| matches!(p, Published::Confirmed)) {
            Ok(())
        } else {
            Err(BacklogError::Unavailable(format!(
                "{}: the wait queue {} refused a retry",
                self.url, self.names.wait
            )))
        }
    }

    /// Sends held records due later than `park_after` from now back to the
    /// wait queue, so they do not sit in this instance's prefetch.
    pub(super) async fn park(&self, reader: &mut Reader, now_ms: i64) {
        let horizon = now_ms
            .saturating_add(i64::try_from(self.config.park_after.as_millis()).unwrap_or(i64::MAX));
        let far: Vec<RecordId> = reader
            .held_records
            .iter()
            .filter(|(_, h)| h.record.not_before_ms > horizon)
            .map(|(id, _)| *id)
            .collect();
        if far.is_empty() {
            return;
        }
        let (Ok(link), Some(channel)) = (self.link_now().await, reader.channel.clone()) else {
            return;
        };
        if link.generation != reader.generation {
            return;
        }
        let wall = now_epoch_ms();
        let _publishing = Publishing::start(self);
        let messages = far
            .iter()
            .filter_map(|id| reader.held_records.get(id))
            .map(|h| {
                let ttl = h.record.not_before_ms.saturating_sub(wall);
                (
                    &self.names.wait,
                    h.record.message.payload().as_ref(),
                    record::encode(&h.record, h.stored_at_ms, Some(ttl)),
                )
            })
            .collect();
        let Ok(results) = self.publish(&link.publish, messages).await else {
            return;
        };
        let parked: Vec<RecordId> = far
            .into_iter()
            .zip(results)
            .filter(|(_, r)| matches!(r, Published::Confirmed))
            .map(|(id, _)| id)
            .collect();
        for id in &parked {
            if let Some(h) = reader.held_records.remove(id) {
                let _ = channel.basic_ack(h.tag, BasicAckOptions::default()).await;
            }
        }
        reader
            .held
            .retain(|Reverse((_, id))| reader.held_records.contains_key(id));
        saturating_sub(&self.held, parked.len() as u64);
        self.ready.fetch_add(parked.len() as u64, Ordering::Relaxed);
    }
}
