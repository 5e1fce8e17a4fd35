//! A group's backlog on the broker: one durable quorum queue per group that
//! every instance of the group appends to and consumes, behind the same
//! [`BacklogStore`] trait as the memory and disk stores.
//!
//! It lives in `amqp` (not in `backlog`) so that dependencies keep pointing
//! one way: `backlog` owns the trait and imports only `message`; this store
//! implements the trait with the broker pieces of the family's core
//! (`connect`, `declare`, `headers`, `config`), and uses no other product.
//!
//! Three queues per backlog, declared by the store:
//! - `<queue>`: the backlog (quorum, `x-delivery-limit`, dead-lettering to
//!   `<queue>.poison`; with `max_records`, `x-max-length` and
//!   `x-overflow = reject-publish`);
//! - `<queue>.wait`: retries waiting out their backoff as a per-message TTL,
//!   dead-lettered back into `<queue>` (`at-least-once` dead-lettering, so
//!   a full backlog queue makes them wait, never drops them);
//! - `<queue>.poison`: messages past the delivery limit, and messages in the
//!   backlog queue that are not laneway records.
//!
//! Invariants:
//! - `append` resolves `Ok` only when the broker confirmed every record
//!   (publisher confirms, `mandatory`, persistent); a record the full queue
//!   refused is reported as [`BacklogError::Full`], never dropped;
//! - a record id is this store's own counter, mapped to the delivery tag on
//!   the consuming channel it came from; a record is acked (`release`) or
//!   its retry confirmed in the wait queue before the original is acked
//!   (`retry`), so a crash in between delivers it twice, never loses it;
//! - a lost channel or connection (or a killed process) leaves every
//!   unacked record to the broker, which delivers it again, to this
//!   instance after its reconnect or to another one: at-least-once. A
//!   release or retry of a record taken on an older channel does nothing
//!   (its original is back in the queue);
//! - "nothing ready" is decided by `basic.get` answering empty on the
//!   consuming channel, followed by one more round trip on that channel,
//!   after which every delivery the broker pushed before the answer has
//!   arrived; so `take_ready` returns nothing only when the queue had
//!   nothing ready for this instance, and records come out in queue order.
//!
//! What the counts mean: `depth().records` is this instance's view: the
//! ready messages of the backlog and wait queues (from the broker, read
//! every `refresh_interval` and whenever a take finds nothing, adjusted by
//! this instance's own appends and takes in between), plus the records this instance holds or has in
//! flight. Records other instances have taken are not counted. `bytes` is
//! not known (0), nor is `oldest_ms` (the metric is absent; `laneway
//! backlog inspect --queue` reads the head's age from its header).
//!
//! Order: records come out in the queue's order. The wait queue expires
//! messages from its head only, so a retry may wait longer than its backoff
//! when a retry with a longer backoff is ahead of it (never shorter).

mod config;
mod inspect;
mod record;

pub use config::AmqpBacklogConfig;
pub use inspect::{BacklogQueueInspection, inspect};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use lapin::Confirmation;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::config::QueueNames;
use crate::amqp::core::config::AmqpConfigError;
use crate::amqp::core::connect::{AmqpError, connect};
use crate::amqp::core::declare::Declaration;
use crate::backlog::{
    BacklogDepth, BacklogError, BacklogRecord, BacklogStore, RecordId, StoredRecord,
};
use crate::backoff::Backoff;
use crate::broker_url::BrokerUrl;
use crate::message::now_epoch_ms;

/// How long a take that has records already waits for the consumer's next
/// delivery before it returns what it has (the queue may have no more).
const CONSUMER_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// A backlog store on a RabbitMQ quorum queue, shared by every instance of
/// a group; see the module docs.
pub struct AmqpBacklog {
    inner: Arc<Inner>,
    stop: CancellationToken,
}

struct Inner {
    url: BrokerUrl,
    names: QueueNames,
    config: AmqpBacklogConfig,
    link: tokio::sync::Mutex<LinkState>,
    reader: tokio::sync::Mutex<Reader>,
    /// Publishes (appends, retries, parks) under way, and how many have
    /// ended: a recount that overlapped one is not stored, so it never
    /// counts a record that the publish is about to count again.
    publishing: AtomicU64,
    published: AtomicU64,
    /// Ready messages in the backlog and wait queues, as far as this
    /// instance knows.
    ready: AtomicU64,
    /// Records received and not handed out yet.
    held: AtomicU64,
    /// Records handed out and not released or retried yet.
    in_flight: AtomicU64,
    /// The background refresh lowered the count (other instances took
    /// records): `has_waiting` stays true until the next `take_ready`, so
    /// the engine takes once more and so learns the new depth. (The engine
    /// re-checks whether a group is idle after each take, not when a count
    /// changes by itself.)
    recheck: AtomicBool,
}

struct LinkState {
    link: Option<Link>,
    generation: u64,
    backoff: Backoff,
    /// No new connection attempt before this (after a failure).
    not_before: Option<Instant>,
}

/// One connection: a confirm-mode channel for publishing, and a channel
/// for consuming (whose delivery tags the record ids map to).
#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    publish: Channel,
    consume: Channel,
    generation: u64,
}

impl Link {
    fn is_up(&self) -> bool {
        self.connection.status().connected()
            && self.publish.status().connected()
            && self.consume.status().connected()
    }
}

/// A received record this instance holds (not yet due, or over the
/// batch), with its delivery tag.
struct Held {
    tag: u64,
    stored_at_ms: i64,
    record: BacklogRecord,
}

/// A record handed out.
struct Taken {
    generation: u64,
    tag: u64,
    stored_at_ms: i64,
}

#[derive(Default)]
struct Reader {
    /// The link generation the consumer, the held records and the tags
    /// belong to.
    generation: u64,
    channel: Option<Channel>,
    consumer: Option<lapin::Consumer>,
    /// The consumer's prefetch (see [`Inner::consume`]).
    prefetch: usize,
    /// The generation after whose loss unackable releases were last
    /// reported (so a lost channel is reported once, not per release).
    warned_generation: u64,
    next_id: RecordId,
    /// Held records, soonest not-before first, then in arrival order.
    held: BinaryHeap<Reverse<(i64, RecordId)>>,
    held_records: HashMap<RecordId, Held>,
    in_flight: HashMap<RecordId, Taken>,
}

/// A publish under way (see [`Inner::publishing`]); ends when dropped.
struct Publishing<'a>(&'a Inner);

impl<'a> Publishing<'a> {
    fn start(inner: &'a Inner) -> Publishing<'a> {
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
enum Published {
    Confirmed,
    Refused,
}

fn unavailable(e: AmqpError) -> BacklogError {
    BacklogError::Unavailable(e.to_string())
}

fn saturating_sub(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

impl AmqpBacklog {
    /// Connects, declares the group's three queues, and starts refreshing
    /// the depth; fails on a fatal set-up error (bad credentials, a queue
    /// declared with other arguments) and when the broker cannot be
    /// reached.
    pub async fn open(config: AmqpBacklogConfig, group: &str) -> Result<AmqpBacklog, BacklogError> {
        let (url, names) = config
            .validate(group)
            .map_err(|e: AmqpConfigError| BacklogError::Unavailable(e.to_string()))?;
        url.warn_if_plaintext();
        let inner = Arc::new(Inner {
            link: tokio::sync::Mutex::new(LinkState {
                link: None,
                generation: 0,
                backoff: Backoff::new(config.reconnect_initial, config.reconnect_max),
                not_before: None,
            }),
            reader: tokio::sync::Mutex::new(Reader::default()),
            publishing: AtomicU64::new(0),
            published: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            held: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            recheck: AtomicBool::new(false),
            url,
            names,
            config,
        });
        inner.link().await?;
        inner.refresh().await?;
        let stop = CancellationToken::new();
        let interval = inner.config.refresh_interval;
        if !interval.is_zero() {
            let (inner, stop) = (Arc::clone(&inner), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(interval) => {}
                    }
                    if let Err(e) = inner.refresh().await {
                        tracing::debug!(error = %e, "refreshing the broker backlog's depth failed");
                    }
                }
            });
        }
        tracing::info!(broker = %inner.url, queue = %inner.names.backlog, "broker backlog open");
        Ok(AmqpBacklog { inner, stop })
    }

    /// The backlog queue's name.
    pub fn queue(&self) -> &str {
        self.inner.names.backlog.as_str()
    }
}

impl Drop for AmqpBacklog {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Inner {
    /// The current link, connecting (and declaring) first when needed.
    async fn link(&self) -> Result<Link, BacklogError> {
        let mut state = self.link.lock().await;
        if let Some(link) = &state.link {
            if link.is_up() {
                return Ok(link.clone());
            }
            tracing::warn!(broker = %self.url, queue = %self.names.backlog, "broker backlog connection lost; reconnecting (unacked records go back to the queue)");
            state.link = None;
        }
        if let Some(t) = state.not_before
            && Instant::now() < t
        {
            return Err(BacklogError::Unavailable(format!(
                "no connection to {} (reconnecting)",
                self.url
            )));
        }
        let generation = state.generation + 1;
        match self.open(generation).await {
            Ok(link) => {
                state.generation = generation;
                state.link = Some(link.clone());
                state.backoff.reset();
                state.not_before = None;
                Ok(link)
            }
            Err(e) => {
                let wait = state.backoff.next_delay();
                state.not_before = Some(Instant::now() + wait);
                tracing::warn!(error = %e, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "broker backlog cannot reach the broker");
                Err(unavailable(e))
            }
        }
    }

    /// Replaces the publishing channel of link `generation` by a new one in
    /// confirm mode (the old one is closed).
    async fn renew_publisher(&self, generation: u64) {
        let mut state = self.link.lock().await;
        let Some(link) = state.link.as_mut() else {
            return;
        };
        if link.generation != generation {
            return;
        }
        let fresh = match link.connection.create_channel().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %AmqpError::new(&self.url, "opening a channel", e), "keeping the publishing channel");
                return;
            }
        };
        if fresh
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .is_err()
        {
            return;
        }
        let old = std::mem::replace(&mut link.publish, fresh);
        tokio::spawn(async move {
            let _ = old.close(200, "laneway renewing".into()).await;
        });
    }

    /// Drops the link after a failure, so the next call reconnects.
    async fn reset(&self, why: &str) {
        let mut state = self.link.lock().await;
        if let Some(link) = state.link.take() {
            tracing::warn!(broker = %self.url, reason = why, "dropping the broker backlog's connection");
            tokio::spawn(async move {
                let _ = link.connection.close(200, "laneway resetting".into()).await;
            });
        }
    }

    async fn open(&self, generation: u64) -> Result<Link, AmqpError> {
        let connection = connect(&self.url, "laneway backlog").await?;
        let failed = |what: &str, e: lapin::Error| AmqpError::classify(&self.url, what, &e, false);
        let publish = connection
            .create_channel()
            .await
            .map_err(|e| failed("opening a channel", e))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| failed("enabling publisher confirms", e))?;
        let consume = connection
            .create_channel()
            .await
            .map_err(|e| failed("opening a channel", e))?;
        for (queue, arguments) in self.declarations() {
            Declaration {
                queue: queue.as_str(),
                arguments,
                declare: true,
                exchange: None,
                binding_key: "",
            }
            .apply(&publish, &self.url)
            .await?;
        }
        Ok(Link {
            connection: Arc::new(connection),
            publish,
            consume,
            generation,
        })
    }

    /// The three queues and their arguments (see the module docs).
    fn declarations(&self) -> [(ShortString, FieldTable); 3] {
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        let quorum = || {
            let mut t = FieldTable::default();
            t.insert("x-queue-type".into(), text("quorum"));
            t
        };
        let poison = quorum();
        let mut backlog = quorum();
        backlog.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(self.config.delivery_limit.into()),
        );
        backlog.insert("x-dead-letter-exchange".into(), text(""));
        backlog.insert(
            "x-dead-letter-routing-key".into(),
            text(self.names.poison.as_str()),
        );
        if let Some(max) = self.config.max_records {
            backlog.insert(
                "x-max-length".into(),
                AMQPValue::LongLongInt(i64::try_from(max).unwrap_or(i64::MAX)),
            );
            backlog.insert("x-overflow".into(), text("reject-publish"));
        }
        let mut wait = quorum();
        wait.insert("x-dead-letter-exchange".into(), text(""));
        wait.insert(
            "x-dead-letter-routing-key".into(),
            text(self.names.backlog.as_str()),
        );
        wait.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        wait.insert("x-overflow".into(), text("reject-publish"));
        [
            (self.names.poison.clone(), poison),
            (self.names.backlog.clone(), backlog),
            (self.names.wait.clone(), wait),
        ]
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

    /// Brings the reader onto `link`: after a reconnect, what the old
    /// channel held is back in the queue and no longer this instance's.
    fn sync(&self, reader: &mut Reader, link: &Link) {
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
    async fn drain(&self, reader: &mut Reader, counted: bool) {
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

    /// Sends held records due later than `park_after` from now back to the
    /// wait queue, so they do not sit in this instance's prefetch.
    async fn park(&self, reader: &mut Reader, now_ms: i64) {
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

    /// The current link if it is up, without reconnecting.
    async fn link_now(&self) -> Result<Link, ()> {
        match &self.link.lock().await.link {
            Some(link) if link.is_up() => Ok(link.clone()),
            _ => Err(()),
        }
    }

    /// A round trip on the consuming channel (a `basic.qos` that changes
    /// nothing). RabbitMQ's channel answers a `basic.get` (or a passive
    /// declare) before it writes the deliveries the queue pushed while it
    /// waited for the queue's answer; those are queued in the channel ahead
    /// of the next request, so once this returns they have all arrived.
    async fn settle_channel(&self, link: &Link, prefetch: usize) -> Result<(), BacklogError> {
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

    /// Re-reads the ready counts of the backlog and wait queues (the
    /// background refresh).
    async fn refresh(&self) -> Result<(), BacklogError> {
        let link = self.link().await?;
        let mut reader = self.reader.lock().await;
        self.sync(&mut reader, &link);
        self.recount(&mut reader, &link, true).await
    }

    /// Re-reads the ready counts of the backlog and wait queues. With
    /// `flag_drop`, a count that fell raises `recheck` (see
    /// [`Inner::recheck`]).
    async fn recount(
        &self,
        reader: &mut Reader,
        link: &Link,
        flag_drop: bool,
    ) -> Result<(), BacklogError> {
        self.drain(reader, true).await;
        let (busy, epoch) = (
            self.publishing.load(Ordering::SeqCst),
            self.published.load(Ordering::SeqCst),
        );
        let mut ready = 0u64;
        for queue in [&self.names.backlog, &self.names.wait] {
            let q = link
                .consume
                .queue_declare(
                    queue.clone(),
                    QueueDeclareOptions {
                        passive: true,
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    unavailable(AmqpError::classify(
                        &self.url,
                        &format!("checking queue {queue}"),
                        &e,
                        false,
                    ))
                })?;
            ready += u64::from(q.message_count());
        }
        // Deliveries pushed before the answer are not in the count; after
        // one more round trip they have all arrived.
        self.settle_channel(link, reader.prefetch).await?;
        self.drain(reader, false).await;
        if busy > 0
            || self.publishing.load(Ordering::SeqCst) > 0
            || self.published.load(Ordering::SeqCst) != epoch
        {
            // A publish overlapped the count: keep the running count.
            return Ok(());
        }
        let before = self.ready.swap(ready, Ordering::Relaxed);
        if flag_drop && ready < before {
            self.recheck.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[async_trait]
impl BacklogStore for AmqpBacklog {
    async fn append(&self, records: &[BacklogRecord]) -> Result<(), BacklogError> {
        let wanted = records.len();
        let inner = &self.inner;
        let link = inner.link().await?;
        let _publishing = Publishing::start(inner);
        // The broker's limit is the shared one, but a quorum queue applies
        // it after the fact (it takes the publish that crosses it, then
        // refuses until it drains below it): this instance also keeps to it
        // by its own count.
        let room = match inner.config.max_records {
            Some(max) => {
                usize::try_from(max.saturating_sub(self.depth().records)).unwrap_or(usize::MAX)
            }
            None => usize::MAX,
        };
        let records = &records[..records.len().min(room)];
        let now = now_epoch_ms();
        let park_after = i64::try_from(inner.config.park_after.as_millis()).unwrap_or(i64::MAX);
        let messages = records
            .iter()
            .map(|r| {
                let wait = r.not_before_ms.saturating_sub(now);
                if wait > park_after {
                    (
                        &inner.names.wait,
                        r.message.payload().as_ref(),
                        record::encode(r, now, Some(wait)),
                    )
                } else {
                    (
                        &inner.names.backlog,
                        r.message.payload().as_ref(),
                        record::encode(r, now, None),
                    )
                }
            })
            .collect();
        let results = inner.publish(&link.publish, messages).await?;
        let confirmed = results
            .iter()
            .filter(|r| matches!(r, Published::Confirmed))
            .count();
        inner.ready.fetch_add(confirmed as u64, Ordering::Relaxed);
        let stored = results
            .iter()
            .take_while(|r| matches!(r, Published::Confirmed))
            .count();
        if confirmed < results.len() {
            // A quorum queue over its limit tells each publishing channel
            // to refuse, and does not always tell it when it has room again:
            // the next append starts on a fresh channel, which the queue
            // judges by its length then.
            inner.renew_publisher(link.generation).await;
        }
        if stored < wanted {
            if confirmed > stored {
                // Room freed while the batch was in flight: the records
                // after the first refusal that the broker took will be
                // offered again, and so delivered twice (never lost).
                tracing::debug!(
                    queue = %inner.names.backlog,
                    duplicates = confirmed - stored,
                    "backlog queue refused part of a batch"
                );
            }
            return Err(BacklogError::Full { stored });
        }
        Ok(())
    }

    async fn retry(&self, records: &[StoredRecord]) -> Result<(), BacklogError> {
        let inner = &self.inner;
        let link = inner.link().await?;
        let mut reader = inner.reader.lock().await;
        inner.sync(&mut reader, &link);
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
        saturating_sub(&inner.in_flight, stale);
        if current.is_empty() {
            return Ok(());
        }
        let published = {
            let _publishing = Publishing::start(inner);
            inner.republish(&link, &current).await
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
                tracing::warn!(error = %AmqpError::new(&inner.url, "acking a retried record", e), "a retried record will also come back as it was");
            }
        }
        saturating_sub(&inner.in_flight, n);
        inner.ready.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    async fn take_ready(&self, max: usize, now_ms: i64) -> Result<Vec<StoredRecord>, BacklogError> {
        let inner = &self.inner;
        let link = inner.link().await?;
        let mut reader = inner.reader.lock().await;
        inner.sync(&mut reader, &link);
        inner.recheck.store(false, Ordering::Relaxed);
        inner.consume(&mut reader, max).await?;
        let mut out = Vec::new();
        inner.drain(&mut reader, true).await;
        inner.take_due(&mut reader, &mut out, max, now_ms);
        // Not enough at hand. While the consumer can still be pushed more,
        // wait a moment for it; with nothing at all (or a full prefetch),
        // ask the queue itself (a get is not held back by the prefetch,
        // which records not yet due may fill), until it has nothing ready
        // for this instance.
        let mut gets = 0;
        while out.len() < max {
            let saturated = reader.held_records.len() + reader.in_flight.len() >= reader.prefetch;
            if !out.is_empty() && !saturated && reader.consumer.is_some() {
                if !inner.wait_delivery(&mut reader).await {
                    break;
                }
                inner.take_due(&mut reader, &mut out, max, now_ms);
                continue;
            }
            if gets >= max {
                break;
            }
            gets += 1;
            let got = link
                .consume
                .basic_get(inner.names.backlog.clone(), BasicGetOptions::default())
                .await
                .map_err(|e| {
                    unavailable(AmqpError::classify(
                        &inner.url,
                        "reading the backlog queue",
                        &e,
                        false,
                    ))
                })?;
            // Deliveries the queue pushed before it answered are older, but
            // the broker may write them after its answer: one more round
            // trip on the channel brings them in (see `settle_channel`).
            inner.settle_channel(&link, reader.prefetch).await?;
            inner.drain(&mut reader, true).await;
            let Some(got) = got else {
                inner.take_due(&mut reader, &mut out, max, now_ms);
                break;
            };
            inner.receive(&mut reader, got.delivery, true).await;
            inner.take_due(&mut reader, &mut out, max, now_ms);
        }
        inner.park(&mut reader, now_ms).await;
        if out.is_empty()
            && reader.held_records.is_empty()
            && let Err(e) = inner.recount(&mut reader, &link, false).await
        {
            tracing::debug!(error = %e, "recounting the broker backlog failed");
        }
        Ok(out)
    }

    async fn release(&self, ids: &[RecordId]) -> Result<(), BacklogError> {
        let inner = &self.inner;
        let mut reader = inner.reader.lock().await;
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
        saturating_sub(&inner.in_flight, released);
        if lost > 0 && reader.warned_generation == reader.generation {
            tracing::debug!(
                queue = %inner.names.backlog,
                records = lost,
                "released records could not be acked; they will be delivered again"
            );
        } else if lost > 0 {
            // Their channel is gone: the broker has them back and delivers
            // them again (at-least-once). Said once per lost channel.
            reader.warned_generation = reader.generation;
            tracing::warn!(
                queue = %inner.names.backlog,
                records = lost,
                "released records could not be acked; they will be delivered again"
            );
        }
        Ok(())
    }

    fn has_waiting(&self) -> bool {
        let inner = &self.inner;
        inner.ready.load(Ordering::Relaxed) + inner.held.load(Ordering::Relaxed) > 0
            || inner.recheck.load(Ordering::Relaxed)
    }

    fn depth(&self) -> BacklogDepth {
        let inner = &self.inner;
        let (ready, held, in_flight) = (
            inner.ready.load(Ordering::Relaxed),
            inner.held.load(Ordering::Relaxed),
            inner.in_flight.load(Ordering::Relaxed),
        );
        BacklogDepth {
            records: ready + held + in_flight,
            in_flight,
            ..BacklogDepth::default()
        }
    }

    async fn close(&self) -> Result<(), BacklogError> {
        self.stop.cancel();
        let mut reader = self.inner.reader.lock().await;
        reader.consumer = None;
        let mut state = self.inner.link.lock().await;
        if let Some(link) = state.link.take() {
            let _ = link.consume.close(200, "laneway closing".into()).await;
            let _ = link.publish.close(200, "laneway closing".into()).await;
            let _ = link.connection.close(200, "laneway closing".into()).await;
        }
        Ok(())
    }
}
