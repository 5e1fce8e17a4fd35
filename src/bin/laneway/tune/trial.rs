//! One trial: a short in-process engine run of the group with candidate
//! knobs, live traffic at the profile's rate and a pile of stale messages
//! in its backlog, delivering to the group's sink (or a simulated one), as
//! the hard case of a drain looks.
//!
//! Invariants: the pile never runs out during a trial (it is topped up in
//! the store below a low-water mark), so the sink is saturated and the
//! throughput measured is what the knobs sustain; every live-traffic
//! message counts towards live latency, whichever lane delivered it, and a
//! trial whose live traffic fell behind has no live p99 (it fails the
//! goal rather than look fast); the first part of each trial (warm-up) is
//! not measured; a trial's scratch backlog is removed before and after it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hdrhistogram::Histogram;
use laneway::ack::AckRef;
use laneway::backlog::{
    BacklogRecord, BacklogStore, DiskBacklog, DiskBacklogConfig, MemoryBacklog, MemoryLimits,
};
use laneway::config::{GroupSpec, SinkSpec};
use laneway::engine::{Engine, EngineOptions, GroupConfig};
use laneway::message::{Message, now_epoch_ms};
use laneway::sink::{BatchError, Delivery, SimulatedHandler, Sink};
use laneway::source::{Incoming, LanePolicy};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::profile::{Burst, Traffic};
use crate::bench::timeline::{MeasuredSink, Timeline, WINDOW};

/// The lane knobs a trial sets; the group's other knobs stay as configured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Knobs {
    /// Deliveries in flight at once.
    pub slots: usize,
    /// Messages per delivery.
    pub batch_size: usize,
    /// The backlog's guaranteed share of deliveries.
    pub backlog_share: f64,
    /// Messages the live lane holds.
    pub live_capacity: usize,
}

impl Knobs {
    /// The knobs a group config has now.
    pub fn of(config: &GroupConfig) -> Knobs {
        Knobs {
            slots: config.slots,
            batch_size: config.batch_size,
            backlog_share: config.backlog_share,
            live_capacity: config.live_capacity,
        }
    }

    /// `config` with these knobs (every other field kept, new ones included).
    pub fn apply_to(&self, config: &GroupConfig) -> GroupConfig {
        GroupConfig {
            slots: self.slots,
            batch_size: self.batch_size,
            backlog_share: self.backlog_share,
            live_capacity: self.live_capacity,
            // A trial measures these slots, not a limit that moves.
            adaptive_slots: None,
            ..config.clone()
        }
    }
}

/// Where a trial delivers.
#[derive(Debug, Clone)]
pub enum SinkChoice {
    /// A simulated handler: `servers` servers, each `cost` per message.
    Simulated {
        /// Time per message on one server.
        cost: Duration,
        /// Servers working at once.
        servers: usize,
    },
    /// The group's own sink table. A file sink (jsonl, stdout) writes to
    /// a scratch file instead, with the same `sync`: a trial must not
    /// fill the user's output with test messages.
    Config(SinkSpec),
}

/// Where a trial keeps its backlog: the group's store kind and knobs, in a
/// scratch place.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// The disk store with the group's knobs, in the scratch directory.
    Disk(DiskBacklogConfig),
    /// The memory store with the group's limits.
    Memory(MemoryLimits),
}

/// The directory a trial works in, below [`TrialSetup::scratch`].
pub const TRIAL_DIR: &str = "laneway-tune-trial";

/// Everything every trial of one tuning run shares.
pub struct TrialSetup {
    /// The group as configured (the knobs a trial sets are replaced).
    pub group: GroupConfig,
    /// The engine-wide options of the config (payload limit).
    pub options: EngineOptions,
    /// Where it delivers.
    pub sink: SinkChoice,
    /// Its backlog store.
    pub store: StoreChoice,
    /// Where scratch space is made: each trial works in its own
    /// [`TRIAL_DIR`] below it (never in the directory itself, which may
    /// hold anything), emptied before and removed after the trial.
    pub scratch: PathBuf,
    /// How long each trial runs (the first fifth, at least 300 ms, is
    /// warm-up); longer, up to four times, while too few deliveries have
    /// completed to measure.
    pub duration: Duration,
    /// Live messages per second (before the group's filter).
    pub rate: f64,
    /// Bursts on top of the rate: the first as the measured part of a
    /// trial starts, then one every period.
    pub burst: Option<Burst>,
    /// The messages.
    pub traffic: Arc<Traffic>,
    /// Stale messages the backlog holds at the start of a trial and is
    /// topped up from (cloned, so making them costs nothing during a trial).
    pub pile: Arc<Vec<Message>>,
    /// The live p99 goal: a trial whose live traffic is further behind than
    /// this allows has fallen behind.
    pub live_goal: Duration,
}

/// What one trial measured.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// The knobs it ran.
    pub knobs: Knobs,
    /// Live latency p99, ms, over every live-traffic message delivered in
    /// the measured part; `None` when the live traffic fell behind (more
    /// of it undelivered at the end than the goal allows).
    pub live_p99_ms: Option<f64>,
    /// Deliveries per second (both lanes) in the measured part: the
    /// sustained throughput, as the backlog never ran dry.
    pub throughput: f64,
    /// Pile messages delivered per second beside the live traffic.
    pub drain_rate: f64,
    /// Live-traffic messages sent and not delivered when the trial ended.
    pub live_behind: u64,
    /// Failed delivery attempts (the sink refused or timed out).
    pub failed_attempts: u64,
    /// How long the measured part lasted, seconds.
    pub measured_s: f64,
}

/// A shared sink, so the timeline's wrapper can hold the one the config built.
struct Shared(Arc<dyn Sink>);

#[async_trait]
impl Sink for Shared {
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        self.0.deliver(batch).await
    }

    async fn close(&self) -> Result<(), laneway::sink::DeliveryError> {
        self.0.close().await
    }
}

/// Builds a trial's sink.
async fn build_sink(setup: &TrialSetup) -> Result<Arc<dyn Sink>, String> {
    let group = &setup.group.name;
    Ok(match &setup.sink {
        SinkChoice::Simulated { cost, servers } => {
            Arc::new(SimulatedHandler::with_servers(*cost, *servers))
        }
        SinkChoice::Config(spec) => {
            // A file or stdout sink writes to the trial's scratch file, so
            // the user's output is not touched; any other is the group's own.
            let sink = match spec {
                SinkSpec::Stdout | SinkSpec::Jsonl { .. } => SinkSpec::Jsonl {
                    path: setup.scratch.join(TRIAL_DIR).join("sink.jsonl"),
                    sync: matches!(spec, SinkSpec::Jsonl { sync: true, .. }),
                    mode: laneway::sink::JsonlSink::DEFAULT_MODE,
                },
                other => other.clone(),
            };
            let spec = GroupSpec {
                name: Some(group.clone()),
                sink,
                ..GroupSpec::default()
            };
            spec.build_sink().await.map_err(|e| e.to_string())?
        }
    })
}

/// Opens a trial's empty scratch store.
async fn open_store(setup: &TrialSetup) -> Result<Arc<dyn BacklogStore>, String> {
    Ok(match &setup.store {
        StoreChoice::Memory(limits) => Arc::new(MemoryBacklog::new(*limits)),
        StoreChoice::Disk(config) => {
            let dir = setup.scratch.join(TRIAL_DIR).join("backlog");
            let config = DiskBacklogConfig {
                dir: Some(dir.clone()),
                ..config.clone()
            };
            let shown = dir.display().to_string();
            let opened = tokio::task::spawn_blocking(move || DiskBacklog::open(&dir, config))
                .await
                .map_err(|e| e.to_string())?;
            Arc::new(opened.map_err(|e| format!("the trial's backlog {shown}: {e}"))?)
        }
    })
}

/// Empties a trial's directory (a trial starts from nothing).
fn clear_scratch(scratch: &std::path::Path) -> Result<(), String> {
    if scratch.exists() {
        std::fs::remove_dir_all(scratch)
            .map_err(|e| format!("emptying {}: {e}", scratch.display()))?;
    }
    std::fs::create_dir_all(scratch).map_err(|e| format!("creating {}: {e}", scratch.display()))
}

async fn append(store: &dyn BacklogStore, messages: &[Message]) -> Result<(), String> {
    let records: Vec<BacklogRecord> = messages.iter().cloned().map(BacklogRecord::fresh).collect();
    for chunk in records.chunks(8192) {
        store
            .append(chunk)
            .await
            .map_err(|e| format!("loading the trial's pile: {e}"))?;
    }
    Ok(())
}

/// Deliveries (both lanes) in the windows from `from` on.
fn delivered_from(timeline: &Timeline, from: usize) -> u64 {
    timeline
        .windows()
        .iter()
        .skip(from)
        .map(|w| w.live + w.backlog)
        .sum()
}

/// Runs one trial with `knobs`.
pub async fn run(setup: &TrialSetup, knobs: Knobs) -> Result<Measured, String> {
    let dir = setup.scratch.join(TRIAL_DIR);
    clear_scratch(&dir)?;
    let result = run_in_scratch(setup, knobs).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in_scratch(setup: &TrialSetup, knobs: Knobs) -> Result<Measured, String> {
    tracing::debug!(?knobs, group = %setup.group.name, "tune: trial starts");
    let sink = build_sink(setup).await?;
    let store = open_store(setup).await?;
    append(store.as_ref(), &setup.pile).await?;
    let low_water = (setup.pile.len() / 2) as u64;

    let config = GroupConfig {
        // A trial measures the lanes: a remembered id would be a pile
        // message skipped, not delivered.
        dedup_window: None,
        ..knobs.apply_to(&setup.group)
    };
    config
        .validate()
        .map_err(|e| format!("knobs {knobs:?}: {e}"))?;
    let timeline = Timeline::new();
    let pile_before_ms = now_epoch_ms() - 1000;
    let measured: Arc<dyn Sink> = Arc::new(MeasuredSink::new(
        Shared(sink),
        Arc::clone(&timeline),
        pile_before_ms,
    ));
    let engine = Engine::builder()
        .options(EngineOptions {
            shutdown_grace: Duration::from_secs(2),
            finish_when_drained: false,
            ..setup.options.clone()
        })
        .group_with(config, measured, Some(Arc::clone(&store)))
        .build()
        .map_err(|e| e.to_string())?;
    let ingest = engine.ingest(LanePolicy::Auto);
    let monitor = engine.monitor();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(engine.run(async move {
        let _ = stop_rx.await;
    }));

    let stop = CancellationToken::new();
    let sent = Arc::new(AtomicU64::new(0));
    let start = timeline.start();
    let warm_up = (setup.duration / 5).max(Duration::from_millis(300));
    let traffic = {
        let (stop, sent) = (stop.clone(), Arc::clone(&sent));
        let (rate, burst, messages) = (setup.rate, setup.burst, Arc::clone(&setup.traffic));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.is_cancelled() {
                tick.tick().await;
                let elapsed = start.elapsed();
                let mut due = (elapsed.as_secs_f64() * rate) as u64;
                if let Some(b) = burst {
                    // The first burst as the measured part starts, so
                    // that every trial measures at least one.
                    if let Some(since) = elapsed.checked_sub(warm_up) {
                        due += (1 + (since.as_nanos() / b.every.as_nanos()) as u64) * b.size;
                    }
                }
                let n = due.saturating_sub(sent.load(Ordering::Relaxed)).min(8192);
                if n > 0 {
                    let batch = messages
                        .live(n)
                        .into_iter()
                        .map(Incoming::Message)
                        .collect();
                    ingest.submit(batch, AckRef::none()).await;
                    sent.fetch_add(n, Ordering::Relaxed);
                }
            }
        })
    };
    let top_up = {
        let (stop, store, pile) = (stop.clone(), Arc::clone(&store), Arc::clone(&setup.pile));
        tokio::spawn(async move {
            let half = &pile[..pile.len() / 2];
            while !stop.is_cancelled() {
                let depth = store.depth();
                let waiting = depth.records.saturating_sub(depth.in_flight);
                if waiting < low_water {
                    append(store.as_ref(), half).await?;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<(), String>(())
        })
    };

    // A trial runs `duration`, longer (up to four times) until each slot
    // has completed about two full deliveries in the measured part: a
    // batch that takes longer than a short trial would be measured as
    // nothing at all.
    let from = (warm_up.as_nanos() / WINDOW.as_nanos()) as usize;
    let enough = (2 * knobs.slots * knobs.batch_size) as u64;
    tokio::time::sleep(setup.duration).await;
    let mut ran = setup.duration;
    while ran < setup.duration * 4 && delivered_from(&timeline, from) < enough {
        tokio::time::sleep(setup.duration / 2).await;
        ran += setup.duration / 2;
    }
    let elapsed = start.elapsed();
    stop.cancel();
    let _ = traffic.await;
    let topped = top_up.await.map_err(|e| e.to_string())?;
    let snapshot = monitor.groups().into_iter().next();
    let _ = stop_tx.send(());
    let _ = run.await;
    topped?;

    let windows = timeline.windows();
    let to = ((elapsed.as_nanos() / WINDOW.as_nanos()) as usize).min(windows.len());
    let measured_s = to.saturating_sub(from) as f64 * WINDOW.as_secs_f64();
    if measured_s <= 0.0 {
        return Err(format!(
            "the trial of {:?} is too short to measure (--trial: at least 1s)",
            setup.duration
        ));
    }
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 2).map_err(|e| e.to_string())?;
    let (mut delivered, mut pile, mut live_traffic_delivered) = (0u64, 0u64, 0u64);
    for (i, w) in windows.iter().enumerate() {
        live_traffic_delivered += w.live_latency.len() + w.spilled_latency.len();
        if i < from || i >= to {
            continue;
        }
        let _ = latency.add(&w.live_latency);
        let _ = latency.add(&w.spilled_latency);
        delivered += w.live + w.backlog;
        pile += w.pile;
    }
    let live_behind = sent
        .load(Ordering::Relaxed)
        .saturating_sub(live_traffic_delivered);
    // What may be on its way when the trial stops: the goal's worth of
    // traffic, the messages in flight, and the last burst.
    let allowed = setup.rate * setup.live_goal.as_secs_f64() * 2.0
        + (knobs.slots * knobs.batch_size) as f64
        + setup.burst.map_or(0.0, |b| b.size as f64)
        + 0.01 * sent.load(Ordering::Relaxed) as f64;
    let live_p99_ms = if live_behind as f64 > allowed {
        None
    } else if latency.is_empty() {
        Some(0.0)
    } else {
        Some(latency.value_at_quantile(0.99) as f64 / 1000.0)
    };
    Ok(Measured {
        knobs,
        live_p99_ms,
        throughput: delivered as f64 / measured_s,
        drain_rate: pile as f64 / measured_s,
        live_behind,
        failed_attempts: snapshot.map_or(0, |s| s.failed_attempts),
        measured_s,
    })
}
