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
/// After the backlog had nothing ready, how long before looking again
/// (new appends wake the dispatcher sooner).
const BACKLOG_RECHECK: Duration = Duration::from_millis(20);

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
    backlog_appended: Notify,
    slots: Arc<Semaphore>,
    /// Records queued for or inside the backlog writer, not yet stored.
    writing: AtomicUsize,
    /// Deliveries running (the dispatcher holds a slot permit while it
    /// waits for work, so free permits cannot tell idleness).
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
            backlog_appended: Notify::new(),
            writing: AtomicUsize::new(0),
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
        let mut pushed_live = false;
        for message in messages {
            if self.config.validate_json && !message.payload_is_json() {
                invalid.push(DeadLetter::for_message(
                    &message,
                    self.name(),
                    0,
                    "payload is not valid JSON",
                ));
                continue;
            }
            let fresh = match policy {
                LanePolicy::Auto => message.age_ms(now_ms) <= live_window_ms,
                LanePolicy::Live => true,
                LanePolicy::Backlog => false,
            };
            let item = LiveItem {
                message,
                ack: ack.clone(),
            };
            let item = if fresh {
                match self.live.push(item) {
                    Ok(()) => {
                        pushed_live = true;
                        continue;
                    }
                    Err(item) => {
                        bump(&self.stats.diverted_full, 1);
                        item
                    }
                }
            } else {
                bump(&self.stats.diverted_stale, 1);
                item
            };
            to_backlog.records.push(BacklogRecord::fresh(item.message));
            to_backlog.acks.push(item.ack);
        }
        if pushed_live {
            self.live.wake();
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
        self.dispatch(&stop).await;
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
                        bump(&self.stats.backlog_full, 1);
                        tracing::warn!(
                            group = self.name(),
                            waiting = records.len(),
                            "backlog is full: holding messages and pausing intake until room frees"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(group = self.name(), error = %e, "backlog append failed; retrying");
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
        let mut scheduler =
            Scheduler::new(self.config.backlog_share, self.config.backlog_rate, window);
        let mut backlog_quiet_until: Option<Instant> = None;
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
                let backlog_ready =
                    backlog_quiet_until.is_none_or(|t| now >= t) && self.store.has_waiting();
                match scheduler.pick(!self.live.is_empty(), backlog_ready, now) {
                    Pick::Live => {
                        let batch = self.live.pop_batch(self.config.batch_size);
                        if !batch.is_empty() {
                            scheduler.took(Lane::Live, batch.len());
                            break Work::Live(batch);
                        }
                    }
                    Pick::Backlog { max } => {
                        let max = max.min(self.config.batch_size);
                        match self.store.take_ready(max, now_epoch_ms()).await {
                            Ok(records) if !records.is_empty() => {
                                scheduler.took(Lane::Backlog, records.len());
                                break Work::Backlog(records);
                            }
                            Ok(_) => backlog_quiet_until = Some(now + BACKLOG_RECHECK),
                            Err(e) => {
                                tracing::error!(group = self.name(), error = %e, "reading the backlog failed");
                                backlog_quiet_until = Some(now + Duration::from_secs(1));
                            }
                        }
                    }
                    Pick::Wait(wait) => {
                        let wait = match backlog_quiet_until {
                            Some(t) if self.store.has_waiting() => {
                                wait.min(t.saturating_duration_since(now))
                            }
                            _ => wait,
                        };
                        tokio::select! {
                            _ = self.live.arrived() => {}
                            _ = self.backlog_appended.notified() => backlog_quiet_until = None,
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
            Work::Backlog(records) => self.deliver_backlog(records).await,
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

    /// Splits a batch outcome into per-message failures: `(index, reason, permanent)`.
    fn failures(outcome: Result<(), DeliveryError>, len: usize) -> Vec<(usize, String, bool)> {
        match outcome {
            Ok(()) => Vec::new(),
            Err(e) => match e.failed {
                None => (0..len)
                    .map(|i| (i, e.reason.clone(), e.permanent))
                    .collect(),
                Some(mut idx) => {
                    idx.sort_unstable();
                    idx.dedup();
                    idx.into_iter()
                        .filter(|&i| i < len)
                        .map(|i| (i, e.reason.clone(), e.permanent))
                        .collect()
                }
            },
        }
    }

    async fn deliver_live(&self, items: Vec<LiveItem>) {
        let mut pending: Vec<(LiveItem, u32)> = items.into_iter().map(|i| (i, 0)).collect();
        loop {
            let batch: Vec<Delivery> = pending
                .iter()
                .map(|(i, attempts)| Delivery {
                    message: i.message.clone(),
                    attempts: *attempts,
                    lane: Lane::Live,
                })
                .collect();
            let failures = Self::failures(self.call_sink(&batch).await, batch.len());
            let now = Instant::now();
            let mut failed = vec![None; pending.len()];
            for (i, reason, permanent) in failures {
                failed[i] = Some((reason, permanent));
            }
            let mut delivered = Vec::with_capacity(pending.len());
            let mut retry = Vec::new();
            let mut dead = Vec::new();
            for ((item, attempts), failure) in pending.into_iter().zip(failed) {
                match failure {
                    None => delivered.push(item),
                    Some((reason, permanent)) => {
                        let attempts = attempts + 1;
                        if permanent || attempts >= self.config.max_attempts {
                            dead.push((item, attempts, reason, permanent));
                        } else {
                            retry.push((item, attempts));
                        }
                    }
                }
            }
            self.stats
                .live_latency
                .record_batch(now, delivered.iter().map(|i| i.message.received_at()));
            bump(&self.stats.delivered_live, delivered.len() as u64);
            delivered.into_iter().for_each(|i| i.ack.complete());
            self.bury(
                dead.into_iter()
                    .map(|(i, a, r, p)| (i.message, i.ack, a, r, p))
                    .collect(),
            )
            .await;
            if retry.is_empty() {
                return;
            }
            bump(&self.stats.failed_attempts, retry.len() as u64);
            // Retry from the backlog, with backoff; what does not fit there
            // stays in this slot and is retried here after the same backoff.
            let not_before = now_epoch_ms();
            let records: Vec<BacklogRecord> = retry
                .iter()
                .map(|(i, attempts)| BacklogRecord {
                    message: i.message.clone(),
                    attempts: *attempts,
                    not_before_ms: not_before
                        + self.config.retry_delay(*attempts).as_millis() as i64,
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
            let mut rest = retry.split_off(stored);
            bump(&self.stats.diverted_failed, stored as u64);
            retry.into_iter().for_each(|(i, _)| i.ack.complete());
            if stored > 0 {
                self.backlog_appended.notify_one();
            }
            if rest.is_empty() {
                return;
            }
            let attempts = rest.iter().map(|(_, a)| *a).max().unwrap_or(1);
            tokio::time::sleep(self.config.retry_delay(attempts)).await;
            pending = std::mem::take(&mut rest);
        }
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
        let failures = Self::failures(self.call_sink(&batch).await, batch.len());
        let mut failed = vec![None; records.len()];
        for (i, reason, permanent) in failures {
            failed[i] = Some((reason, permanent));
        }
        let now_ms = now_epoch_ms();
        let mut release = Vec::with_capacity(records.len());
        let mut retry = Vec::new();
        let mut dead = Vec::new();
        for (mut r, failure) in records.drain(..).zip(failed) {
            match failure {
                None => release.push(r.id),
                Some((reason, permanent)) => {
                    r.record.attempts += 1;
                    if permanent || r.record.attempts >= self.config.max_attempts {
                        dead.push((r, reason, permanent));
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
                    .map(|(r, reason, p)| {
                        (
                            r.record.message,
                            AckRef::none(),
                            r.record.attempts,
                            reason,
                            p,
                        )
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
    async fn bury(&self, dead: Vec<(Message, AckRef, u32, String, bool)>) {
        if dead.is_empty() {
            return;
        }
        bump(&self.stats.dead_letters, dead.len() as u64);
        let mut acks = Vec::with_capacity(dead.len());
        let letters = dead
            .into_iter()
            .map(|(message, ack, attempts, reason, permanent)| {
                acks.push(ack);
                let why = if permanent {
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
            backlog,
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
