//! One consumer group at run time: admission into its lanes, the backlog
//! writer, the dispatcher that fills delivery slots, and delivery outcomes.
//!
//! Invariants:
//! - a message admitted here settles its source ack exactly once, and only
//!   when it is delivered, durably in the backlog store, or durably a dead
//!   letter;
//! - a failed delivery is never dropped: it is retried from the backlog with
//!   backoff, or, when the backlog has no room, retried in its slot;
//! - backlog records are released only after a successful delivery (or once
//!   durably a dead letter), so a crash re-delivers rather than loses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use super::config::GroupConfig;
use super::dead_letter::{DeadLetter, DeadLetters};
use super::filter::Filter;
use super::live_lane::{LiveItem, LiveLane};
use super::read_ahead::ReadAhead;
use super::scheduler::{Pick, Scheduler};
use super::stats::{BacklogLoss, GroupSnapshot, GroupStats, bump, read};
use crate::ack::AckRef;
use crate::backlog::{BacklogError, BacklogRecord, BacklogStore, StoredRecord};
use crate::lane::Lane;
use crate::message::{Message, now_epoch_ms};
use crate::signal::Signal;
use crate::sink::{Delivery, DeliveryError, Sink};

/// How a source's messages choose their lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LanePolicy {
    /// Fresh messages go live, stale ones to the backlog.
    #[default]
    Auto,
    /// Every message tries the live lane (the backlog only when it is full).
    Live,
    /// Every message goes to the backlog (an accumulation queue as a source).
    Backlog,
}

/// Batches waiting for the backlog writer; a full channel is backpressure.
const WRITER_QUEUE: usize = 64;
/// The most records the writer hands the store in one append.
const WRITE_BATCH: usize = 8192;

/// Why one message of a batch was not delivered.
#[derive(Debug, Clone)]
struct Failure {
    reason: String,
    kind: FailureKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// May succeed later: retried with backoff, counted against `max_attempts`.
    Retry,
    /// Push limited: retried after `retry_initial`, not counted.
    Limited,
    /// Never succeeds: a dead letter at once.
    Permanent,
}

struct PendingWrite {
    records: Vec<BacklogRecord>,
    acks: Vec<AckRef>,
}

enum Work {
    Live(Vec<LiveItem>),
    Backlog(Vec<StoredRecord>),
}

/// A running consumer group.
pub(crate) struct Group {
    pub config: GroupConfig,
    pub filter: Filter,
    live: LiveLane,
    store: Arc<dyn BacklogStore>,
    sink: Arc<dyn Sink>,
    pub stats: GroupStats,
    dead: Arc<DeadLetters>,
    writer_tx: mpsc::Sender<PendingWrite>,
    /// Notified when the backlog store got new records (wakes the read-ahead).
    backlog_appended: Arc<Notify>,
    read_ahead: Arc<ReadAhead>,
    slots: Arc<Semaphore>,
    /// Records queued for or inside the backlog writer, not yet stored.
    writing: AtomicUsize,
    /// Backlog deliveries in flight (the scheduler keeps one slot from them).
    backlog_in_flight: AtomicUsize,
    /// Deliveries in flight, both lanes.
    delivering: AtomicUsize,
}

/// The receiving end of a group's backlog writer, started by [`Group::run`].
pub(crate) struct WriterQueue(mpsc::Receiver<PendingWrite>);

impl Group {
    pub fn new(
        config: GroupConfig,
        store: Arc<dyn BacklogStore>,
        sink: Arc<dyn Sink>,
        dead: Arc<DeadLetters>,
    ) -> Result<(Arc<Group>, WriterQueue), String> {
        config.validate()?;
        let filter = Filter::new(&config.products, &config.kinds)?;
        let (writer_tx, writer_rx) = mpsc::channel(WRITER_QUEUE);
        let group = Group {
            live: LiveLane::new(config.live_capacity),
            slots: Arc::new(Semaphore::new(config.slots)),
            filter,
            store,
            sink,
            stats: GroupStats::default(),
            dead,
            writer_tx,
            backlog_appended: Arc::new(Notify::new()),
            read_ahead: Arc::new(ReadAhead::new(config.batch_size * config.slots)),
            writing: AtomicUsize::new(0),
            backlog_in_flight: AtomicUsize::new(0),
            delivering: AtomicUsize::new(0),
            config,
        };
        Ok((Arc::new(group), WriterQueue(writer_rx)))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Takes messages routed to this group into its lanes. Resolves once
    /// each is in the live lane or queued for the backlog writer; waits
    /// (backpressure) while the writer's queue is full.
    pub async fn admit(&self, messages: Vec<Message>, ack: &AckRef, policy: LanePolicy) {
        bump(&self.stats.admitted, messages.len() as u64);
        let now_ms = now_epoch_ms();
        let live_window_ms = self.config.live_window.as_millis() as i64;
        let mut to_backlog = PendingWrite {
            records: Vec::new(),
            acks: Vec::new(),
        };
        let mut invalid = Vec::new();
        let mut live = Vec::with_capacity(messages.len());
        for message in messages {
            if self.config.validate_json && !message.payload_is_json() {
                // Only on this rare path: say what is wrong and where.
                let reason = match crate::message::json::validate(message.payload()) {
                    Err(e) => format!("payload is not valid JSON: {e}"),
                    Ok(()) => "payload is not valid JSON".to_string(),
                };
                invalid.push(DeadLetter::for_message(&message, self.name(), 0, reason));
                continue;
            }
            let fresh = match policy {
                LanePolicy::Auto => message.age_ms(now_ms) <= live_window_ms,
                LanePolicy::Live => true,
                LanePolicy::Backlog => false,
            };
            if fresh {
                live.push(LiveItem {
                    message,
                    ack: ack.clone(),
                });
            } else {
                bump(&self.stats.diverted_stale, 1);
                to_backlog.records.push(BacklogRecord::fresh(message));
                to_backlog.acks.push(ack.clone());
            }
        }
        if !live.is_empty() {
            let offered = live.len();
            let overflow = self.live.push_batch(live);
            if overflow.len() < offered {
                self.live.wake();
            }
            bump(&self.stats.diverted_full, overflow.len() as u64);
            for item in overflow {
                to_backlog.records.push(BacklogRecord::fresh(item.message));
                to_backlog.acks.push(item.ack);
            }
        }
        if !invalid.is_empty() {
            bump(&self.stats.dead_letters, invalid.len() as u64);
            self.dead.record(invalid).await;
        }
        if !to_backlog.records.is_empty() && self.queue_write(to_backlog).await.is_err() {
            // The writer only stops after the engine stopped admitting; the
            // dropped acks abandon their batches, so the source keeps them.
            tracing::error!(
                group = self.name(),
                "backlog writer is gone; messages left unacknowledged"
            );
        }
    }

    async fn queue_write(&self, write: PendingWrite) -> Result<(), ()> {
        let n = write.records.len();
        self.writing.fetch_add(n, Ordering::AcqRel);
        self.writer_tx.send(write).await.map_err(|_| {
            self.writing.fetch_sub(n, Ordering::AcqRel);
        })
    }

    /// Runs the group until `stop` is raised, then finishes in-flight
    /// deliveries (up to `grace`), moves what is left in the live lane to the
    /// backlog, and closes the store and the sink.
    pub async fn run(self: Arc<Self>, writer: WriterQueue, stop: Signal, grace: Duration) {
        let (close_writer, writer_closing) = crate::signal::signal();
        let writer_task = tokio::spawn(Arc::clone(&self).run_writer(writer.0, writer_closing));
        let read_ahead_task = tokio::spawn(Arc::clone(&self.read_ahead).fill(
            Arc::clone(&self.store),
            Arc::clone(&self.backlog_appended),
            stop.clone(),
            self.name().to_string(),
        ));
        self.dispatch(&stop).await;
        let _ = read_ahead_task.await;
        let all_slots = self.config.slots as u32;
        if tokio::time::timeout(grace, self.slots.acquire_many(all_slots))
            .await
            .is_err()
        {
            tracing::warn!(
                group = self.name(),
                "deliveries still in flight after the shutdown grace period; their messages stay unacknowledged"
            );
        }
        if let Err(e) = self.read_ahead.give_back(self.store.as_ref()).await {
            tracing::error!(group = self.name(), error = %e, "returning read-ahead records to the backlog failed; they come back after a restart");
        }
        let leftovers = self.live.pop_batch(usize::MAX);
        if !leftovers.is_empty() {
            tracing::info!(
                group = self.name(),
                count = leftovers.len(),
                "moving undelivered live messages to the backlog"
            );
            let (records, acks) = leftovers
                .into_iter()
                .map(|i| (BacklogRecord::fresh(i.message), i.ack))
                .unzip();
            if self
                .queue_write(PendingWrite { records, acks })
                .await
                .is_err()
            {
                tracing::error!(group = self.name(), "backlog writer is gone at shutdown");
            }
        }
        // The engine stopped admitting before it stopped the groups, so
        // closing the queue loses no sender; the writer drains what is queued.
        close_writer.fire();
        if tokio::time::timeout(grace, writer_task).await.is_err() {
            tracing::warn!(
                group = self.name(),
                "backlog writer did not finish within the grace period; its messages stay unacknowledged"
            );
        }
        if let Err(e) = self.store.close().await {
            tracing::error!(group = self.name(), error = %e, "closing the backlog store failed");
        }
        if let Err(e) = self.sink.close().await {
            tracing::error!(group = self.name(), error = %e, "closing the sink failed");
        }
    }

    /// The backlog writer: drains queued batches into one append each time
    /// (the store's fsync then covers them all). Once `closing` is raised it
    /// takes no new batches, stores those queued, and ends.
    async fn run_writer(self: Arc<Self>, mut rx: mpsc::Receiver<PendingWrite>, closing: Signal) {
        loop {
            let next = tokio::select! {
                biased;
                next = rx.recv() => next,
                _ = closing.raised() => {
                    rx.close();
                    rx.recv().await
                }
            };
            let Some(first) = next else { break };
            let PendingWrite {
                mut records,
                mut acks,
            } = first;
            while records.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(more) => {
                        records.extend(more.records);
                        acks.extend(more.acks);
                    }
                    Err(_) => break,
                }
            }
            let n = records.len();
            self.store_durably(records, acks).await;
            self.writing.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Appends until every record is stored, settling acks as they become
    /// durable. While the store is full this waits: backpressure.
    async fn store_durably(&self, mut records: Vec<BacklogRecord>, mut acks: Vec<AckRef>) {
        let mut delay = Duration::from_millis(2);
        let mut reported_full = false;
        // While the store cannot take them, say so again now and then, so a
        // run that waits on a full disk never looks like a silent hang.
        let mut last_said = std::time::Instant::now();
        let remind = Duration::from_secs(10);
        let mut failing = false;
        while !records.is_empty() {
            match self.store.append(&records).await {
                Ok(()) => {
                    records.clear();
                    acks.drain(..).for_each(AckRef::complete);
                }
                Err(BacklogError::Full { stored }) => {
                    records.drain(..stored);
                    acks.drain(..stored).for_each(AckRef::complete);
                    if !reported_full {
                        reported_full = true;
                        last_said = std::time::Instant::now();
                        bump(&self.stats.backlog_full, 1);
                        tracing::warn!(
                            group = self.name(),
                            waiting = records.len(),
                            "backlog is full: holding messages and pausing intake until room frees"
                        );
                    } else if !records.is_empty() && last_said.elapsed() >= remind {
                        last_said = std::time::Instant::now();
                        tracing::warn!(
                            group = self.name(),
                            waiting = records.len(),
                            "backlog still full: messages held, intake paused; room frees as the backlog drains"
                        );
                    }
                }
                Err(e) => {
                    if !failing || last_said.elapsed() >= remind {
                        failing = true;
                        last_said = std::time::Instant::now();
                        tracing::error!(group = self.name(), error = %e, waiting = records.len(), "backlog append failed; retrying");
                    }
                }
            }
            self.backlog_appended.notify_one();
            if !records.is_empty() {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(250));
            }
        }
        if reported_full {
            tracing::info!(group = self.name(), "backlog has room again");
        }
    }

    /// Fills delivery slots until `stop` is raised.
    async fn dispatch(self: &Arc<Self>, stop: &Signal) {
        let window = self.config.batch_size * self.config.slots * 2;
        let mut scheduler = Scheduler::new(
            self.config.backlog_share,
            self.config.backlog_rate,
            window,
            self.config.slots,
        );
        loop {
            let permit = tokio::select! {
                biased;
                _ = stop.raised() => return,
                permit = Arc::clone(&self.slots).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let work = loop {
                if stop.is_raised() {
                    return;
                }
                let now = Instant::now();
                let backlog_ready = !self.read_ahead.is_empty();
                let in_flight = self.backlog_in_flight.load(Ordering::Acquire);
                match scheduler.pick(!self.live.is_empty(), backlog_ready, in_flight, now) {
                    Pick::Live => {
                        let batch = self.live.pop_batch(self.config.batch_size);
                        if !batch.is_empty() {
                            scheduler.took(Lane::Live, batch.len());
                            break Work::Live(batch);
                        }
                    }
                    Pick::Backlog { max } => {
                        let records = self.read_ahead.take(max.min(self.config.batch_size));
                        if !records.is_empty() {
                            scheduler.took(Lane::Backlog, records.len());
                            self.backlog_in_flight.fetch_add(1, Ordering::AcqRel);
                            break Work::Backlog(records);
                        }
                    }
                    Pick::Wait(wait) => {
                        tokio::select! {
                            _ = self.live.arrived() => {}
                            _ = self.read_ahead.filled.notified() => {}
                            _ = tokio::time::sleep(wait) => {}
                            _ = stop.raised() => return,
                        }
                    }
                }
            };
            let group = Arc::clone(self);
            self.delivering.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(group.deliver(work, permit));
        }
    }

    async fn deliver(self: Arc<Self>, work: Work, permit: OwnedSemaphorePermit) {
        match work {
            Work::Live(items) => self.deliver_live(items).await,
            Work::Backlog(records) => {
                self.deliver_backlog(records).await;
                self.backlog_in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.delivering.fetch_sub(1, Ordering::AcqRel);
        drop(permit);
    }

    async fn call_sink(&self, batch: &[Delivery]) -> Result<(), DeliveryError> {
        match tokio::time::timeout(self.config.delivery_timeout, self.sink.deliver(batch)).await {
            Ok(result) => result,
            Err(_) => Err(DeliveryError::all(format!(
                "delivery timed out after {:?}",
                self.config.delivery_timeout
            ))),
        }
    }

    /// Spreads a batch outcome over its messages: `None` for delivered.
    fn failures(outcome: Result<(), DeliveryError>, len: usize) -> Vec<Option<Failure>> {
        let mut failed = vec![None; len];
        if let Err(e) = outcome {
            let kind = if e.permanent {
                FailureKind::Permanent
            } else if e.limited {
                FailureKind::Limited
            } else {
                FailureKind::Retry
            };
            let failure = Failure {
                reason: e.reason,
                kind,
            };
            match e.failed {
                None => failed.fill(Some(failure)),
                Some(idx) => {
                    for i in idx.into_iter().filter(|&i| i < len) {
                        failed[i] = Some(failure.clone());
                    }
                }
            }
        }
        failed
    }

    /// Whether a failed message is done for: it becomes a dead letter.
    /// Counts the attempt unless the failure was "push limited".
    fn spend_attempt(&self, attempts: &mut u32, failure: &Failure) -> bool {
        match failure.kind {
            FailureKind::Permanent => {
                *attempts += 1;
                true
            }
            FailureKind::Limited => false,
            FailureKind::Retry => {
                *attempts += 1;
                *attempts >= self.config.max_attempts
            }
        }
    }

    async fn deliver_live(&self, items: Vec<LiveItem>) {
        let (mut batch, mut acks): (Vec<Delivery>, Vec<AckRef>) = items
            .into_iter()
            .map(|i| {
                let delivery = Delivery {
                    message: i.message,
                    attempts: 0,
                    lane: Lane::Live,
                };
                (delivery, i.ack)
            })
            .unzip();
        loop {
            let outcome = self.call_sink(&batch).await;
            if outcome.is_ok() {
                self.settle_live(&batch, acks);
                return;
            }
            let failed = Self::failures(outcome, batch.len());
            let (mut delivered, mut delivered_acks) = (Vec::new(), Vec::new());
            let (mut retry, mut retry_acks) = (Vec::new(), Vec::new());
            let mut dead = Vec::new();
            for ((mut d, ack), failure) in batch.into_iter().zip(acks).zip(failed) {
                match failure {
                    None => {
                        delivered.push(d);
                        delivered_acks.push(ack);
                    }
                    Some(failure) => {
                        if self.spend_attempt(&mut d.attempts, &failure) {
                            dead.push((d.message, ack, d.attempts, failure));
                        } else {
                            retry.push(d);
                            retry_acks.push(ack);
                        }
                    }
                }
            }
            self.settle_live(&delivered, delivered_acks);
            self.bury(dead).await;
            if retry.is_empty() {
                return;
            }
            bump(&self.stats.failed_attempts, retry.len() as u64);
            // Retry from the backlog, with backoff; what does not fit there
            // stays in this slot and is retried here after the same backoff.
            let now_ms = now_epoch_ms();
            let records: Vec<BacklogRecord> = retry
                .iter()
                .map(|d| BacklogRecord {
                    message: d.message.clone(),
                    attempts: d.attempts,
                    not_before_ms: now_ms + self.config.retry_delay(d.attempts).as_millis() as i64,
                })
                .collect();
            let stored = match self.store.append(&records).await {
                Ok(()) => records.len(),
                Err(BacklogError::Full { stored }) => stored,
                Err(e) => {
                    tracing::error!(group = self.name(), error = %e, "backlog append for a retry failed; retrying in the slot");
                    0
                }
            };
            bump(&self.stats.diverted_failed, stored as u64);
            let rest_acks = retry_acks.split_off(stored);
            retry_acks.into_iter().for_each(AckRef::complete);
            if stored > 0 {
                self.backlog_appended.notify_one();
            }
            let rest = retry.split_off(stored);
            if rest.is_empty() {
                return;
            }
            let attempts = rest.iter().map(|d| d.attempts).max().unwrap_or(1);
            tokio::time::sleep(self.config.retry_delay(attempts)).await;
            batch = rest;
            acks = rest_acks;
        }
    }

    /// Counts and acknowledges delivered live messages, recording their latency.
    fn settle_live(&self, delivered: &[Delivery], acks: Vec<AckRef>) {
        if delivered.is_empty() {
            return;
        }
        let now = Instant::now();
        self.stats
            .live_latency
            .record_batch(now, delivered.iter().map(|d| d.message.received_at()));
        bump(&self.stats.delivered_live, delivered.len() as u64);
        acks.into_iter().for_each(AckRef::complete);
    }

    async fn deliver_backlog(&self, mut records: Vec<StoredRecord>) {
        let batch: Vec<Delivery> = records
            .iter()
            .map(|r| Delivery {
                message: r.record.message.clone(),
                attempts: r.record.attempts,
                lane: Lane::Backlog,
            })
            .collect();
        let failed = Self::failures(self.call_sink(&batch).await, batch.len());
        let now_ms = now_epoch_ms();
        let mut release = Vec::with_capacity(records.len());
        let mut retry = Vec::new();
        let mut dead = Vec::new();
        for (mut r, failure) in records.drain(..).zip(failed) {
            match failure {
                None => release.push(r.id),
                Some(failure) => {
                    if self.spend_attempt(&mut r.record.attempts, &failure) {
                        dead.push((r, failure));
                    } else {
                        r.record.not_before_ms =
                            now_ms + self.config.retry_delay(r.record.attempts).as_millis() as i64;
                        retry.push(r);
                    }
                }
            }
        }
        bump(&self.stats.delivered_backlog, release.len() as u64);
        if !retry.is_empty() {
            bump(&self.stats.failed_attempts, retry.len() as u64);
            self.until_ok("retrying backlog records", || self.store.retry(&retry))
                .await;
        }
        if !dead.is_empty() {
            let ids: Vec<_> = dead.iter().map(|(r, ..)| r.id).collect();
            self.bury(
                dead.into_iter()
                    .map(|(r, failure)| {
                        (r.record.message, AckRef::none(), r.record.attempts, failure)
                    })
                    .collect(),
            )
            .await;
            release.extend(ids);
        }
        if !release.is_empty() {
            self.until_ok("releasing delivered backlog records", || {
                self.store.release(&release)
            })
            .await;
        }
    }

    /// Records dead letters, then settles their acks.
    async fn bury(&self, dead: Vec<(Message, AckRef, u32, Failure)>) {
        if dead.is_empty() {
            return;
        }
        bump(&self.stats.dead_letters, dead.len() as u64);
        let mut acks = Vec::with_capacity(dead.len());
        let letters = dead
            .into_iter()
            .map(|(message, ack, attempts, Failure { reason, kind })| {
                acks.push(ack);
                let why = if kind == FailureKind::Permanent {
                    format!("delivery failed permanently: {reason}")
                } else {
                    format!("delivery failed {attempts} times; last error: {reason}")
                };
                DeadLetter::for_message(&message, self.name(), attempts, why)
            })
            .collect();
        self.dead.record(letters).await;
        acks.into_iter().for_each(AckRef::complete);
    }

    /// Repeats a store operation until it succeeds (a store error is an I/O
    /// problem that may pass; giving up would lose or duplicate without bound).
    async fn until_ok<'a, F, Fut>(&'a self, what: &str, mut op: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), BacklogError>> + 'a,
    {
        let mut delay = Duration::from_millis(10);
        while let Err(e) = op().await {
            tracing::error!(group = self.name(), error = %e, "{what} failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Whether the group holds nothing: live empty, backlog empty, no
    /// delivery in flight, nothing waiting for the writer.
    pub fn is_idle(&self) -> bool {
        self.live.is_empty()
            && self.store.depth().records == 0
            && self.delivering.load(Ordering::Acquire) == 0
            && self.writing.load(Ordering::Acquire) == 0
    }

    pub fn snapshot(&self) -> GroupSnapshot {
        let backlog = self.store.depth();
        GroupSnapshot {
            name: self.config.name.clone(),
            admitted: read(&self.stats.admitted),
            live_depth: self.live.len() as u64,
            backlog_depth: backlog.records,
            delivered_live: read(&self.stats.delivered_live),
            delivered_backlog: read(&self.stats.delivered_backlog),
            diverted_stale: read(&self.stats.diverted_stale),
            diverted_full: read(&self.stats.diverted_full),
            diverted_failed: read(&self.stats.diverted_failed),
            failed_attempts: read(&self.stats.failed_attempts),
            dead_letter: read(&self.stats.dead_letters),
            backlog_full: read(&self.stats.backlog_full),
            backlog_lost: BacklogLoss {
                dropped: backlog.dropped,
                expired: backlog.expired,
                corrupt: backlog.corrupt,
            },
            live_latency_ms: self.stats.live_latency.total(),
        }
    }
}
