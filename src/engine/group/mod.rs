//! One consumer group at run time. The jobs live one to a file:
//! [`admission`] (into the lanes), [`writer`] (the backlog writer queue),
//! [`dispatch`] (filling delivery slots from the lanes), [`outcome`]
//! (what a delivery's result does to each message) and [`duplicates`]
//! (the group's duplicate window, when it keeps one). This file holds the
//! group's state and its lifecycle.
//!
//! Invariants:
//! - a message admitted here settles its source ack exactly once, and only
//!   when it is delivered, durably in the backlog store, or durably a dead
//!   letter;
//! - a failed delivery is never dropped: it is retried from the backlog with
//!   backoff, or, when the backlog has no room, retried in its slot;
//! - backlog records are released only after a successful delivery (or once
//!   durably a dead letter), so a crash re-delivers rather than loses;
//! - every change that can make the group idle (a delivery ends, a backlog
//!   write lands, the read-ahead takes from the store) notifies `progress`.

mod admission;
mod dispatch;
mod duplicates;
mod outcome;
mod slot_gate;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::dead_letter::DeadLetters;
use super::dedup::DuplicateWindow;
use super::filter::Filter;
use super::freshness::Freshness;
use super::group_config::{GroupConfig, GroupConfigError};
use super::lanes::{LiveLane, ReadAhead};
use super::stats::{BacklogLoss, DeadLetterReasons, GroupSnapshot, GroupStats, read};
use crate::backlog::BacklogStore;
use crate::sink::Sink;

pub(crate) use writer::WriterQueue;

/// A running consumer group.
pub(crate) struct Group {
    pub config: GroupConfig,
    pub filter: Filter,
    live: LiveLane,
    /// Messages their source holds itself, read on the backlog's schedule.
    catch_up: LiveLane,
    store: Arc<dyn BacklogStore>,
    sink: Arc<dyn Sink>,
    pub stats: GroupStats,
    dead: Arc<DeadLetters>,
    writer_tx: writer::WriterTx,
    /// Notified when the backlog store got new records (wakes the read-ahead).
    backlog_appended: Arc<Notify>,
    read_ahead: Arc<ReadAhead>,
    slots: Arc<Semaphore>,
    /// With `slots = "auto"`: the adaptive limit, taken before `slots`.
    gate: Option<slot_gate::SlotGate>,
    /// Records queued for or inside the backlog writer, not yet stored.
    writing: AtomicUsize,
    /// Backlog deliveries in flight (the scheduler keeps one slot from them).
    backlog_in_flight: AtomicUsize,
    /// Deliveries in flight, both lanes.
    delivering: AtomicUsize,
    /// Shared by every group of the engine: notified whenever this group
    /// may have become idle or delivered something.
    progress: Arc<Notify>,
    /// When a sink failure was last logged, and how many failed calls
    /// since (failures are logged at most once per
    /// [`outcome::SINK_FAILURE_EVERY`], and always counted).
    sink_failures: parking_lot::Mutex<(Option<std::time::Instant>, u64)>,
    /// The ids this group admitted recently (`dedup_window`), if it keeps them.
    dedup: Option<Arc<DuplicateWindow>>,
    /// The newest generate time delivered per device and kind (the
    /// `superseded` flag, `skip_superseded`).
    freshness: Freshness,
}

impl Group {
    pub fn new(
        config: GroupConfig,
        store: Arc<dyn BacklogStore>,
        sink: Arc<dyn Sink>,
        dead: Arc<DeadLetters>,
        progress: Arc<Notify>,
        dedup: Option<Arc<DuplicateWindow>>,
    ) -> Result<(Arc<Group>, WriterQueue), GroupConfigError> {
        config.validate()?;
        let filter = Filter::new(&config.products, &config.kinds).map_err(|error| {
            GroupConfigError::Filter {
                group: config.name.clone(),
                error,
            }
        })?;
        let (writer_tx, writer_rx) = writer::queue();
        let group = Group {
            live: LiveLane::new(config.live_capacity),
            catch_up: LiveLane::new(config.batch_size * config.slots * 2),
            slots: Arc::new(Semaphore::new(config.slots)),
            gate: config
                .adaptive_slots
                .map(|a| slot_gate::SlotGate::new(a.min, config.slots)),
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
            progress,
            sink_failures: parking_lot::Mutex::new((None, 0)),
            dedup,
            freshness: Freshness::default(),
            config,
        };
        Ok((Arc::new(group), writer_rx))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Runs the group until `stop` is cancelled, then finishes in-flight
    /// deliveries (up to `grace`), moves what is left in the live lane to the
    /// backlog, and closes the store and the sink.
    pub async fn run(
        self: Arc<Self>,
        writer: WriterQueue,
        stop: CancellationToken,
        grace: Duration,
    ) {
        let writer_closing = CancellationToken::new();
        let mut writer_task =
            tokio::spawn(Arc::clone(&self).run_writer(writer, writer_closing.clone()));
        let read_ahead_task = tokio::spawn(Arc::clone(&self.read_ahead).fill(
            Arc::clone(&self.store),
            Arc::clone(&self.backlog_appended),
            Arc::clone(&self.progress),
            stop.clone(),
            self.name().to_string(),
        ));
        self.dispatch(&stop).await;
        // The read-ahead sees the same stop; a store that does not answer
        // its take is left behind (what it took stays stored, handed out
        // again after a restart).
        let read_ahead_abort = read_ahead_task.abort_handle();
        if tokio::time::timeout(grace, read_ahead_task).await.is_err() {
            read_ahead_abort.abort();
            tracing::warn!(
                group = self.name(),
                "the backlog's read-ahead did not stop within the grace period"
            );
        }
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
        self.move_live_to_backlog(grace).await;
        let held = self.catch_up.pop_batch(usize::MAX);
        if !held.is_empty() {
            // Their acks are dropped unsettled: the source keeps them (a
            // Kafka partition's committed offset stays before them).
            tracing::info!(
                group = self.name(),
                count = held.len(),
                "catch-up messages not delivered at shutdown stay with their source"
            );
        }
        // The engine stopped admitting before it stopped the groups, so
        // closing the queue loses no sender; the writer drains what is queued.
        writer_closing.cancel();
        if tokio::time::timeout(grace, &mut writer_task).await.is_err() {
            // A full backlog that nothing drains holds the writer forever:
            // what it holds is dropped unacknowledged, its sources keep it.
            writer_task.abort();
            tracing::warn!(
                group = self.name(),
                "backlog writer did not finish within the grace period; its messages stay unacknowledged"
            );
        }
        // Each close is bounded by the grace: a store or sink waiting on a
        // silent peer must not hold the shutdown (what they were given is
        // settled already, or left unacknowledged for its source).
        self.close_within(grace, "the backlog store", self.store.close())
            .await;
        self.close_within(grace, "the sink", self.sink.close())
            .await;
    }

    /// Waits at most `grace` for `close` (of `what`), saying how it ended
    /// when it did not end well.
    async fn close_within<E: std::fmt::Display>(
        &self,
        grace: Duration,
        what: &str,
        close: impl Future<Output = Result<(), E>>,
    ) {
        match tokio::time::timeout(grace, close).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(group = self.name(), error = %e, "closing {what} failed")
            }
            Err(_) => tracing::warn!(
                group = self.name(),
                "{what} did not close within the grace period"
            ),
        }
    }

    /// Whether the group holds nothing: live empty, backlog empty, no
    /// delivery in flight, nothing waiting for the writer.
    pub fn is_idle(&self) -> bool {
        self.live.is_empty()
            && self.catch_up.is_empty()
            && self.store.depth().records == 0
            && self.delivering.load(Ordering::Acquire) == 0
            && self.writing.load(Ordering::Acquire) == 0
    }

    /// Slots taken by deliveries now (the semaphore's permits in use).
    fn delivering_slots(&self) -> u64 {
        self.config
            .slots
            .saturating_sub(self.slots.available_permits()) as u64
    }

    /// The deliveries allowed in flight now: `slots`, or the adaptive
    /// limit under it.
    fn slot_limit(&self) -> usize {
        self.gate.as_ref().map_or(self.config.slots, |g| g.limit())
    }

    pub fn snapshot(&self) -> GroupSnapshot {
        let backlog = self.store.depth();
        GroupSnapshot {
            name: self.config.name.clone(),
            admitted: read(&self.stats.admitted),
            live_depth: self.live.len() as u64,
            backlog_depth: backlog.records,
            catch_up_depth: self.catch_up.len() as u64,
            delivered_live: read(&self.stats.delivered_live),
            delivered_backlog: read(&self.stats.delivered_backlog),
            diverted_stale: read(&self.stats.diverted_stale),
            diverted_full: read(&self.stats.diverted_full),
            diverted_failed: read(&self.stats.diverted_failed),
            failed_attempts: read(&self.stats.failed_attempts),
            dead_letter: read(&self.stats.dead_letters),
            dead_letter_by_reason: DeadLetterReasons {
                invalid_json: read(&self.stats.dead_invalid),
                permanent: read(&self.stats.dead_permanent),
                attempts_exhausted: read(&self.stats.dead_exhausted),
            },
            live_capacity: self.config.live_capacity as u64,
            slots: self.config.slots as u64,
            slots_limit: self.slot_limit() as u64,
            slots_adaptive: self.gate.is_some(),
            slots_busy: self.delivering_slots(),
            backlog_bytes: backlog.bytes,
            backlog_oldest_stored_s: if backlog.records == 0 {
                None
            } else {
                self.store.oldest_ms().map(|ms| {
                    (crate::message::now_epoch_ms().saturating_sub(ms)).max(0) as f64 / 1000.0
                })
            },
            backlog_full: read(&self.stats.backlog_full),
            duplicates: read(&self.stats.duplicates),
            superseded_skipped: read(&self.stats.superseded_skipped),
            superseded_delivered: read(&self.stats.superseded_delivered),
            backlog_lost: BacklogLoss {
                cut: backlog.cut,
                dropped: backlog.dropped,
                expired: backlog.expired,
                corrupt: backlog.corrupt,
            },
            live_latency_ms: self.stats.live_latency.total(),
        }
    }
}
