//! Reading a running engine: counters, per-group snapshots, the run
//! summary, and waiting for a condition on them without polling.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::router::Router;
use super::stats::{GroupSnapshot, LatencySummary, read};
use crate::source::SourceSnapshot;

/// A running view of an engine: status lines, metrics, summaries. Cheap to
/// clone; valid before, during and after [`Engine::run`](super::Engine::run).
#[derive(Clone)]
pub struct Monitor {
    pub(super) router: Arc<Router>,
    pub(super) started: Instant,
}

impl Monitor {
    /// Every group's counters and depths now.
    pub fn groups(&self) -> Vec<GroupSnapshot> {
        self.router.groups.iter().map(|g| g.snapshot()).collect()
    }

    /// Deliveries so far over every group and lane: cheap (counters only).
    pub fn delivered(&self) -> u64 {
        self.router
            .groups
            .iter()
            .map(|g| read(&g.stats.delivered_live) + read(&g.stats.delivered_backlog))
            .sum()
    }

    /// Resolves once `done` holds. `done` is checked now, then again each
    /// time the engine makes progress (a batch is routed, a delivery ends,
    /// a backlog write lands, the backlog is read, a source ends), never on
    /// a timer. Wrap it in `tokio::time::timeout` to bound the wait.
    pub async fn until(&self, mut done: impl FnMut(&Monitor) -> bool) {
        loop {
            let progressed = self.router.progress.notified();
            tokio::pin!(progressed);
            // Registered before the check, so no notification is missed.
            progressed.as_mut().enable();
            if done(self) {
                return;
            }
            progressed.await;
        }
    }

    /// Whether every group holds nothing (nothing live, nothing in the
    /// backlog, nothing in flight or being written).
    pub fn is_idle(&self) -> bool {
        self.router.groups.iter().all(|g| g.is_idle())
    }

    /// Time since the monitor was made (for a run, since its start).
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Every source's counters and connection state now, by name.
    pub fn sources(&self) -> Vec<(String, SourceSnapshot)> {
        self.router
            .health
            .iter()
            .map(|(name, h)| (name.clone(), h.snapshot()))
            .collect()
    }

    /// The engine's own counters (ingest, unrouted, dead letters at ingest
    /// by reason), for metrics.
    pub fn intake(&self) -> IntakeSnapshot {
        let s = &self.router.stats;
        IntakeSnapshot {
            ingested: read(&s.ingested),
            unrouted: read(&s.unrouted),
            dead_malformed: read(&s.dead_malformed),
            dead_oversize: read(&s.dead_oversize),
        }
    }

    /// Each group's whole-run live latency histogram (microseconds), in the
    /// order of [`Monitor::groups`]: a copy per call, for metrics.
    pub fn live_latency_histograms(&self) -> Vec<hdrhistogram::Histogram<u64>> {
        self.router
            .groups
            .iter()
            .map(|g| g.stats.live_latency.total_histogram())
            .collect()
    }

    /// Whether the engine takes input: false once shutdown has begun.
    /// While it is true, every group's backlog store is open (stores open
    /// before the engine is built and close only after intake closed).
    pub fn accepting(&self) -> bool {
        self.router.accepting()
    }

    /// The sources riding out trouble now (name, what), for status lines.
    pub fn source_troubles(&self) -> Vec<(String, String)> {
        self.router
            .health
            .iter()
            .filter_map(|(name, h)| h.trouble().map(|t| (name.clone(), t)))
            .collect()
    }

    /// Live latency per group since the previous call (for per-second status lines).
    pub fn interval_latencies(&self) -> Vec<LatencySummary> {
        self.router
            .groups
            .iter()
            .map(|g| g.stats.live_latency.take_interval())
            .collect()
    }

    /// The whole-run summary so far.
    pub fn summary(&self) -> RunSummary {
        let groups = self.groups();
        let mut merged = None::<hdrhistogram::Histogram<u64>>;
        for g in &self.router.groups {
            let h = g.stats.live_latency.total_histogram();
            match &mut merged {
                None => merged = Some(h),
                Some(m) => {
                    // Same bounds on both sides: adding cannot fail.
                    let _ = m.add(&h);
                }
            }
        }
        let stats = &self.router.stats;
        let group_dead: u64 = groups.iter().map(|g| g.dead_letter).sum();
        let delivered_live = groups.iter().map(|g| g.delivered_live).sum();
        let delivered_backlog = groups.iter().map(|g| g.delivered_backlog).sum();
        RunSummary {
            elapsed_s: self.started.elapsed().as_secs_f64(),
            ingested: read(&stats.ingested),
            delivered: delivered_live + delivered_backlog,
            delivered_live,
            delivered_backlog,
            dead_letter: read(&stats.dead_letters) + group_dead,
            unrouted: read(&stats.unrouted),
            live_latency_ms: merged.as_ref().map(LatencySummary::of).unwrap_or_default(),
            groups,
            failures: self.router.failures.lock().clone(),
            lag: self
                .sources()
                .into_iter()
                .filter_map(|(source, s)| s.lag.map(|lag| SourceLag { source, lag }))
                .collect(),
        }
    }
}

/// The engine's counters before any group, at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct IntakeSnapshot {
    /// Items sources handed in.
    pub ingested: u64,
    /// Messages no group's filter matched.
    pub unrouted: u64,
    /// Input that was not a message, made a dead letter at ingest.
    pub dead_malformed: u64,
    /// Payloads over `max_message_bytes`, made dead letters at ingest.
    pub dead_oversize: u64,
}

/// What a run did, as `laneway run --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Seconds from [`Engine::monitor`](super::Engine::monitor) (for a
    /// run, from its start) to this summary: with `laneway run`, the whole
    /// run including start-up of sources and shutdown.
    pub elapsed_s: f64,
    /// Items sources handed in (messages and malformed input).
    pub ingested: u64,
    /// Deliveries over all groups and lanes (a message fanned out to two groups counts twice).
    pub delivered: u64,
    /// Deliveries from live lanes.
    pub delivered_live: u64,
    /// Deliveries from backlog lanes.
    pub delivered_backlog: u64,
    /// Dead letters, at ingest and in every group.
    pub dead_letter: u64,
    /// Messages no group's filter matched.
    pub unrouted: u64,
    /// Live latency (receipt to delivery) over all groups.
    pub live_latency_ms: LatencySummary,
    /// Per-group detail.
    pub groups: Vec<GroupSnapshot>,
    /// Sources that failed for good (a missing file or queue, refused
    /// credentials, ...): each failure stops the run, and a run with any
    /// is a failed run (`laneway run` exits 1). Empty when all went well.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<SourceFailure>,
    /// Records left to read at the sources whose origin tells (Kafka: the
    /// group's uncommitted records on its topics, looked up at the stop),
    /// so that a run that stopped before the end says how far it got.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lag: Vec<SourceLag>,
}

/// What a source had left to read when the run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceLag {
    /// The source's name.
    pub source: String,
    /// Records at the origin not yet done (0: caught up).
    pub lag: u64,
}

impl RunSummary {
    /// Whether the run ended because a source failed.
    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }
}

/// A source that ended with an error, which stopped the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceFailure {
    /// The source's name (a path, a queue with its redacted broker URL).
    pub source: String,
    /// Why it failed; never holds a password.
    pub error: String,
}
