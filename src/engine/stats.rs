//! Counters and latency histograms: what the status line, the summary and
//! the benchmarks report.
//!
//! Invariants: counters only grow; the live latency histogram records the
//! time from receipt to successful delivery of every live message, in
//! microseconds; snapshots never block delivery for longer than a copy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Latencies above this are clamped (one hour, in microseconds).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A live-latency histogram, recorded per batch under one short lock.
pub struct LatencyRecorder {
    histograms: Mutex<Histograms>,
}

struct Histograms {
    total: Histogram<u64>,
    interval: Histogram<u64>,
}

fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; failure is impossible.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"))
    })
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder {
            histograms: Mutex::new(Histograms {
                total: new_histogram(),
                interval: new_histogram(),
            }),
        }
    }
}

impl LatencyRecorder {
    /// Records the latency of each message received at `received`, as of
    /// `now`. Only the interval histogram is touched on this hot path; it
    /// folds into the whole-run one when an interval is taken. A source
    /// that stamps a whole batch with one receipt time (the Kafka source
    /// does) costs one histogram update per run of equal times, with its
    /// count, not one per message.
    pub fn record_batch(&self, now: Instant, received: impl Iterator<Item = Instant>) {
        let mut h = self.histograms.lock();
        let mut record = |at: Instant, count: u64| {
            let us =
                (now.saturating_duration_since(at).as_micros() as u64).clamp(1, MAX_LATENCY_US);
            h.interval.saturating_record_n(us, count);
        };
        let mut run: Option<(Instant, u64)> = None;
        for r in received {
            run = match run {
                Some((at, count)) if at == r => Some((at, count + 1)),
                Some((at, count)) => {
                    record(at, count);
                    Some((r, 1))
                }
                None => Some((r, 1)),
            };
        }
        if let Some((at, count)) = run {
            record(at, count);
        }
    }

    /// Percentiles over the whole run.
    pub fn total(&self) -> LatencySummary {
        LatencySummary::of(&self.total_histogram())
    }

    /// Percentiles since the last call, and a fresh interval.
    pub fn take_interval(&self) -> LatencySummary {
        let mut guard = self.histograms.lock();
        let h = &mut *guard;
        let s = LatencySummary::of(&h.interval);
        // Both histograms share their bounds, so adding cannot fail.
        let _ = h.total.add(&h.interval);
        h.interval.reset();
        s
    }

    /// A copy of the whole-run histogram (to merge groups or plot).
    pub fn total_histogram(&self) -> Histogram<u64> {
        let h = self.histograms.lock();
        let mut total = h.total.clone();
        let _ = total.add(&h.interval);
        total
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Messages measured.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The slowest.
    pub max: f64,
}

impl LatencySummary {
    /// Percentiles of a microsecond histogram, in milliseconds.
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// One group's counters.
#[derive(Default)]
pub struct GroupStats {
    /// Messages routed to this group.
    pub admitted: AtomicU64,
    /// Messages delivered from the live lane.
    pub delivered_live: AtomicU64,
    /// Messages delivered from the backlog lane.
    pub delivered_backlog: AtomicU64,
    /// Messages sent to the backlog because they were stale.
    pub diverted_stale: AtomicU64,
    /// Messages sent to the backlog because the live lane was full.
    pub diverted_full: AtomicU64,
    /// Messages sent to the backlog after a failed delivery.
    pub diverted_failed: AtomicU64,
    /// Messages of failed delivery attempts.
    pub failed_attempts: AtomicU64,
    /// Messages this group made dead letters (the sum of the three below).
    pub dead_letters: AtomicU64,
    /// Dead letters whose payload was not valid JSON (`validate_json`).
    pub dead_invalid: AtomicU64,
    /// Dead letters the sink refused for good (`DeliveryError::Permanent`).
    pub dead_permanent: AtomicU64,
    /// Dead letters that failed `max_attempts` times.
    pub dead_exhausted: AtomicU64,
    /// Times the backlog was found full (backpressure episodes).
    pub backlog_full: AtomicU64,
    /// Messages whose id the duplicate window had already seen: acknowledged
    /// to their source, not delivered again.
    pub duplicates: AtomicU64,
    /// Superseded messages acknowledged without delivery (`skip_superseded`).
    pub superseded_skipped: AtomicU64,
    /// Superseded messages delivered with the flag set.
    pub superseded_delivered: AtomicU64,
    /// Live latency from receipt to delivery.
    pub live_latency: LatencyRecorder,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Reads a counter.
pub(crate) fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The engine's own counters (before any group).
#[derive(Default)]
pub struct EngineStats {
    /// Messages (and malformed items) handed to the engine by sources.
    pub ingested: AtomicU64,
    /// Messages no group's filter matched (counted, then acknowledged).
    pub unrouted: AtomicU64,
    /// Malformed or oversize input recorded as dead letters at ingest
    /// (the sum of the two below).
    pub dead_letters: AtomicU64,
    /// Input that was not a message (bad JSON envelope, missing fields).
    pub dead_malformed: AtomicU64,
    /// Payloads over `max_message_bytes`.
    pub dead_oversize: AtomicU64,
}

/// A point-in-time view of one group, for status lines and summaries.
#[derive(Debug, Clone, Serialize)]
pub struct GroupSnapshot {
    /// The group's name.
    pub name: String,
    /// Messages routed to the group.
    pub admitted: u64,
    /// Messages in the live lane now.
    pub live_depth: u64,
    /// Records in the backlog now.
    pub backlog_depth: u64,
    /// Messages waiting in the catch-up lane (held by their source, read on
    /// the backlog's schedule).
    pub catch_up_depth: u64,
    /// Messages delivered from the live lane so far.
    pub delivered_live: u64,
    /// Messages delivered from the backlog so far.
    pub delivered_backlog: u64,
    /// Messages sent to the backlog because they were stale.
    pub diverted_stale: u64,
    /// Messages sent to the backlog because the live lane was full.
    pub diverted_full: u64,
    /// Messages sent to the backlog after a failed delivery.
    pub diverted_failed: u64,
    /// Messages of failed delivery attempts.
    pub failed_attempts: u64,
    /// Dead letters made by this group.
    pub dead_letter: u64,
    /// Those dead letters by reason.
    pub dead_letter_by_reason: DeadLetterReasons,
    /// The live lane's capacity (`live_capacity`).
    pub live_capacity: u64,
    /// Delivery slots (`slots`; with `slots = "auto"`, `max_slots`).
    pub slots: u64,
    /// Deliveries allowed in flight now: `slots`, or with `slots = "auto"`
    /// the adaptive limit (between `min_slots` and `max_slots`).
    pub slots_limit: u64,
    /// Whether the limit adapts to the sink (`slots = "auto"`).
    pub slots_adaptive: bool,
    /// Slots delivering now.
    pub slots_busy: u64,
    /// Bytes the backlog's records take in its store now.
    pub backlog_bytes: u64,
    /// Seconds since the oldest record still in the backlog was stored
    /// (time stored, not the message's age since its `generateTime`),
    /// where the store can tell cheaply (the disk store, to a segment's
    /// creation); `None` when the backlog is empty or the store cannot tell.
    pub backlog_oldest_stored_s: Option<f64>,
    /// Backpressure episodes (backlog full).
    pub backlog_full: u64,
    /// Messages the duplicate window recognised (`dedup_window`):
    /// acknowledged to their source, not delivered again.
    pub duplicates: u64,
    /// Messages superseded by a newer one of the same device and kind the
    /// group had delivered, and skipped (`skip_superseded`): acknowledged,
    /// not delivered. Also counted as delivered.
    pub superseded_skipped: u64,
    /// Messages delivered with their `superseded` flag set (their kind is
    /// not in `skip_superseded`).
    pub superseded_delivered: u64,
    /// Records the backlog dropped (`drop_oldest`), expired or found corrupt.
    pub backlog_lost: BacklogLoss,
    /// Live latency over the whole run.
    pub live_latency_ms: LatencySummary,
}

/// A group's dead letters by reason.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DeadLetterReasons {
    /// The payload was not valid JSON (`validate_json`).
    pub invalid_json: u64,
    /// The sink refused the message for good.
    pub permanent: u64,
    /// Every one of `max_attempts` deliveries failed.
    pub attempts_exhausted: u64,
}

/// Records a backlog store gave up, by cause: every one is counted.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BacklogLoss {
    /// Torn tails cut off at recovery (writes a crash cut short, never
    /// acknowledged, so never a message that was owed).
    pub cut: u64,
    /// Dropped to make room, because `drop_oldest` was configured.
    pub dropped: u64,
    /// Expired past `max_age`.
    pub expired: u64,
    /// Found corrupt and skipped.
    pub corrupt: u64,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Runs of equal receipt times are recorded with their counts: the
    /// histogram holds what recording each message alone would.
    #[test]
    fn record_batch_counts_every_message_of_each_run() {
        let now = Instant::now();
        let ago = |ms| now.checked_sub(Duration::from_millis(ms)).unwrap();
        let times = [ago(5), ago(5), ago(5), ago(40), ago(40), ago(5), ago(900)];
        let recorder = LatencyRecorder::default();
        recorder.record_batch(now, times.iter().copied());

        let mut expected = new_histogram();
        for t in times {
            expected
                .record(now.duration_since(t).as_micros() as u64)
                .unwrap();
        }
        let h = recorder.total_histogram();
        assert_eq!(h.len(), 7);
        assert_eq!(h, expected);
        assert_eq!(h.count_at(5_000), 4);
        assert_eq!(h.count_at(40_000), 2);
    }

    #[test]
    fn an_empty_batch_records_nothing() {
        let recorder = LatencyRecorder::default();
        recorder.record_batch(Instant::now(), std::iter::empty());
        assert!(recorder.total_histogram().is_empty());
    }
}
