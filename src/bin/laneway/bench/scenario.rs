//! The load scenarios: `steady`, `outage` and `flood`, each run in laneway
//! mode (live and backlog lanes, the scheduler) or FIFO mode (one lane, the
//! naive consumer), with the same traffic and the same simulated handler.
//!
//! Invariants: both modes see identical knobs, traffic and handler
//! capacity; every number in a report comes from the run's own timeline;
//! runs are bounded in time (`max_run`) and stop by themselves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::fifo::FifoConsumer;
use super::timeline::{MeasuredSink, PhaseReport, Timeline, WINDOW, Window, phase, window_p99_ms};
use laneway::ack::AckRef;
#[cfg(feature = "amqp")]
use laneway::amqp::connect::connect;
#[cfg(feature = "amqp")]
use laneway::amqp::{AmqpBacklog, AmqpBacklogConfig, BrokerUrl};
use laneway::backlog::{
    BacklogRecord, BacklogStore, DiskBacklog, DiskBacklogConfig, MemoryBacklog,
};
use laneway::engine::{Engine, GroupConfig, LatencySummary, Monitor};
use laneway::message::{Message, now_epoch_ms};
use laneway::sink::{SimulatedHandler, Sink};
use laneway::source::simulator::Fleet;
use laneway::source::{Incoming, LanePolicy};
#[cfg(feature = "amqp")]
use lapin::options::QueueDeleteOptions;
use tokio_util::sync::CancellationToken;

/// Which scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Live traffic below capacity: throughput and live latency.
    Steady,
    /// Live traffic; the handler goes down for a while and comes back.
    Outage,
    /// A large stale pile present at start, plus live traffic.
    Flood,
}

/// Which consumer runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// laneway: live lane first, backlog drained beside it.
    Laneway,
    /// One FIFO lane, as a naive consumer has.
    Fifo,
}

/// Where laneway mode keeps its backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BacklogKind {
    /// The durable disk store, fsync and all (the default, as in production).
    Disk,
    /// The in-memory store.
    Memory,
    // Not a doc link: clap shows this text in `--help` as it is.
    /// The broker store: a quorum queue on RabbitMQ at `$AMQP_URL`
    /// (laneway.bench.backlog, deleted before and after the run).
    #[value(hide = !crate::cli::built_with("amqp"))]
    Amqp,
}

/// The broker store's queue in a benchmark run (with its `.wait` and
/// `.poison` queues); scratch, deleted before and after.
#[cfg(feature = "amqp")]
pub const BENCH_QUEUE: &str = "laneway.bench.backlog";

/// Deletes the benchmark's broker queues, so a run starts from nothing and
/// leaves nothing behind.
#[cfg(feature = "amqp")]
async fn delete_bench_queues() -> Result<(), String> {
    let url = BrokerUrl::resolve(None, None).map_err(|e| e.to_string())?;
    let connection = connect(&url, "laneway bench")
        .await
        .map_err(|e| e.to_string())?;
    for suffix in ["", ".wait", ".poison"] {
        // A fresh channel each: deleting a missing queue is not an error,
        // but a refused one would close the channel.
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| url.scrub(&e.to_string()))?;
        let name = format!("{BENCH_QUEUE}{suffix}");
        channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(|e| format!("deleting {name}: {}", url.scrub(&e.to_string())))?;
    }
    let _ = connection.close(0, "bench queues deleted".into()).await;
    Ok(())
}

/// Every knob of a scenario run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchOptions {
    /// The scenario.
    pub scenario: Scenario,
    /// Live traffic, messages per second.
    pub rate: f64,
    /// Handler cost per message.
    #[serde(with = "laneway::knob::duration")]
    pub cost: Duration,
    /// Delivery slots (and handler servers).
    pub slots: usize,
    /// Messages per delivery.
    pub batch: usize,
    /// The backlog's guaranteed share.
    pub backlog_share: f64,
    /// Live lane capacity.
    pub live_capacity: usize,
    /// Steady: how long to run.
    #[serde(with = "laneway::knob::duration")]
    pub duration: Duration,
    /// Outage: traffic before the handler goes down.
    #[serde(with = "laneway::knob::duration")]
    pub before: Duration,
    /// Outage: how long the handler is down.
    #[serde(with = "laneway::knob::duration")]
    pub outage: Duration,
    /// Flood: stale messages waiting at start.
    pub pile: u64,
    /// Live latency under this is "real time".
    #[serde(with = "laneway::knob::duration")]
    pub threshold: Duration,
    /// Traffic kept running after the backlog drained (to show the settled state).
    #[serde(with = "laneway::knob::duration")]
    pub tail: Duration,
    /// No run lasts longer than this.
    #[serde(with = "laneway::knob::duration")]
    pub max_run: Duration,
    /// The backlog store in laneway mode.
    pub backlog: BacklogKind,
    /// Where a disk backlog lives.
    pub data_dir: PathBuf,
}

impl BenchOptions {
    /// Defaults for a scenario: each finishes in well under a minute per mode.
    pub fn defaults(scenario: Scenario) -> BenchOptions {
        let base = BenchOptions {
            scenario,
            rate: 20_000.0,
            cost: Duration::from_micros(100),
            slots: 4,
            batch: 64,
            backlog_share: 0.2,
            live_capacity: 10_000,
            duration: Duration::from_secs(10),
            before: Duration::from_secs(3),
            outage: Duration::from_secs(10),
            pile: 1_000_000,
            threshold: Duration::from_millis(100),
            tail: Duration::from_secs(2),
            max_run: Duration::from_secs(50),
            backlog: BacklogKind::Disk,
            data_dir: PathBuf::from("laneway-data/bench"),
        };
        match scenario {
            // 40k msgs/s of handler capacity; half of it live.
            Scenario::Steady | Scenario::Outage => base,
            // A fast handler (400k msgs/s) so a million stale messages drain in seconds.
            // Batches of 256 keep a 10 µs handler's batches above the timer's
            // millisecond resolution.
            Scenario::Flood => BenchOptions {
                cost: Duration::from_micros(10),
                rate: 20_000.0,
                batch: 256,
                ..base
            },
        }
    }

    /// The handler's capacity, messages per second.
    pub fn capacity(&self) -> f64 {
        self.slots as f64 / self.cost.as_secs_f64().max(1e-9)
    }
}

/// One point of the plotted timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Seconds from the start.
    pub t_s: f64,
    /// Live p99 in this window, ms (none when no live traffic was delivered).
    pub live_p99_ms: Option<f64>,
    /// Live-lane deliveries per second.
    pub live_per_s: f64,
    /// Backlog-lane deliveries per second.
    pub backlog_per_s: f64,
    /// Backlog depth.
    pub backlog_depth: u64,
}

/// What one mode of one scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    /// The scenario.
    pub scenario: Scenario,
    /// The mode.
    pub mode: Mode,
    /// Deliveries per second over the run.
    pub throughput_msgs_per_s: f64,
    /// Live latency over the whole run.
    pub live_latency_ms: LatencySummary,
    /// From the moment the handler returned (outage) or the run started
    /// (flood, steady) until live p99 stays under the threshold; `None` if it never did.
    pub time_to_realtime_ms: Option<f64>,
    /// The deepest the backlog got (FIFO: its queue).
    pub backlog_peak: u64,
    /// From the handler's return (outage) or the start (flood) until the backlog was empty.
    pub backlog_drain_ms: Option<f64>,
    /// Backlog messages drained per second while draining.
    pub drain_rate_msgs_per_s: Option<f64>,
    /// Messages delivered from the backlog in the whole run (laneway mode),
    /// for a drain rate when the run ended before the backlog was empty.
    pub delivered_backlog: u64,
    /// The measured run's length, seconds.
    pub elapsed_s: f64,
    /// The handler's capacity (slots / cost).
    pub handler_capacity_msgs_per_s: f64,
    /// Per phase.
    pub phases: BTreeMap<String, PhaseReport>,
    /// The timeline, one point per window.
    pub timeline: Vec<TimelinePoint>,
    /// When the handler went down and came back, seconds from the start.
    pub outage_s: Option<(f64, f64)>,
}

/// Where live traffic goes in each mode.
enum Target {
    Engine {
        ingest: laneway::source::Ingest,
        monitor: Monitor,
    },
    Fifo(Arc<FifoConsumer>),
}

impl Target {
    async fn push(&self, messages: Vec<Message>) {
        match self {
            Target::Engine { ingest, .. } => {
                ingest
                    .submit(
                        messages.into_iter().map(Incoming::Message).collect(),
                        AckRef::none(),
                    )
                    .await;
            }
            Target::Fifo(f) => f.push(messages),
        }
    }

    fn depth(&self) -> u64 {
        match self {
            Target::Engine { monitor, .. } => {
                monitor.groups().first().map_or(0, |g| g.backlog_depth)
            }
            Target::Fifo(f) => f.depth(),
        }
    }
}

fn pile(n: u64) -> Vec<Message> {
    let mut fleet = Fleet::new(3, 100, 99);
    let old = now_epoch_ms() - 3_600_000;
    (0..n).map(|_| fleet.next_message(old)).collect()
}

/// The backlog directory of a disk run (emptied before and after it).
fn bench_dir(opts: &BenchOptions) -> PathBuf {
    opts.data_dir
        .join(format!("{:?}", opts.scenario).to_lowercase())
}

async fn build_store(
    opts: &BenchOptions,
    pile: Vec<Message>,
) -> Result<Arc<dyn BacklogStore>, String> {
    let store: Arc<dyn BacklogStore> = match opts.backlog {
        BacklogKind::Memory => Arc::new(MemoryBacklog::default()),
        BacklogKind::Disk => {
            let dir = bench_dir(opts);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| format!("emptying {}: {e}", dir.display()))?;
            }
            let opened = tokio::task::spawn_blocking(move || {
                DiskBacklog::open(&dir, DiskBacklogConfig::default())
            })
            .await
            .map_err(|e| e.to_string())?;
            Arc::new(opened.map_err(|e| e.to_string())?)
        }
        #[cfg(not(feature = "amqp"))]
        BacklogKind::Amqp => return Err(crate::cli::not_built("--backlog amqp", "amqp")),
        #[cfg(feature = "amqp")]
        BacklogKind::Amqp => {
            delete_bench_queues().await?;
            let config = AmqpBacklogConfig {
                queue: Some(BENCH_QUEUE.into()),
                ..AmqpBacklogConfig::default()
            };
            let store = AmqpBacklog::open(config, "bench")
                .await
                .map_err(|e| e.to_string())?;
            Arc::new(store)
        }
    };
    let records: Vec<BacklogRecord> = pile.into_iter().map(BacklogRecord::fresh).collect();
    for chunk in records.chunks(16_384) {
        store
            .append(chunk)
            .await
            .map_err(|e| format!("pre-loading the backlog: {e}"))?;
    }
    if opts.backlog == BacklogKind::Disk && !records.is_empty() {
        // The story is a consumer starting with a pile on disk: close the
        // store and open it again, recovery and all, before the clock starts.
        store.close().await.map_err(|e| e.to_string())?;
        drop(store);
        let dir = bench_dir(opts);
        let opened = tokio::task::spawn_blocking(move || {
            DiskBacklog::open(&dir, DiskBacklogConfig::default())
        })
        .await
        .map_err(|e| e.to_string())?;
        return Ok(Arc::new(opened.map_err(|e| e.to_string())?));
    }
    Ok(store)
}

/// Runs one mode of a scenario; `progress` gets a line at each phase change.
pub async fn run_mode(
    opts: &BenchOptions,
    mode: Mode,
    progress: &dyn Fn(&str),
) -> Result<ModeReport, String> {
    let pile = match opts.scenario {
        Scenario::Flood => {
            progress(&format!(
                "{mode:?}: generating a pile of {} stale messages",
                opts.pile
            ));
            pile(opts.pile)
        }
        _ => Vec::new(),
    };
    let handler = SimulatedHandler::with_servers(opts.cost, opts.slots);
    let switch = handler.outage_switch();
    let run_start_ms = now_epoch_ms();

    // Build the consumer; the timeline starts once the pile is in place.
    let (target, stop_engine, workers, timeline) = match mode {
        Mode::Laneway => {
            let loading = Instant::now();
            let records = pile.len();
            let store = build_store(opts, pile).await?;
            if records > 0 {
                progress(&format!(
                    "{mode:?}: {records} records pre-loaded into the {:?} store in {:.1} s",
                    opts.backlog,
                    loading.elapsed().as_secs_f64()
                ));
            }
            let timeline = Timeline::new();
            let sink: Arc<dyn Sink> = Arc::new(MeasuredSink::new(
                handler,
                Arc::clone(&timeline),
                run_start_ms - 1000,
            ));
            let config = GroupConfig {
                slots: opts.slots,
                batch_size: opts.batch,
                backlog_share: opts.backlog_share,
                live_capacity: opts.live_capacity,
                max_attempts: u32::MAX,
                retry_initial: Duration::from_millis(100),
                retry_max: Duration::from_secs(1),
                validate_json: false,
                ..GroupConfig::named("bench")
            };
            let engine = Engine::builder()
                .group_with(config, sink, Some(store))
                .build()
                .map_err(|e| e.to_string())?;
            let target = Target::Engine {
                ingest: engine.ingest(LanePolicy::Auto),
                monitor: engine.monitor(),
            };
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let run = tokio::spawn(engine.run(async move {
                let _ = stop_rx.await;
            }));
            (target, Some((stop_tx, run)), Vec::new(), timeline)
        }
        Mode::Fifo => {
            let fifo = FifoConsumer::new();
            fifo.push(pile);
            let timeline = Timeline::new();
            let sink: Arc<dyn Sink> = Arc::new(MeasuredSink::new(
                handler,
                Arc::clone(&timeline),
                run_start_ms - 1000,
            ));
            let workers =
                fifo.spawn_workers(opts.slots, opts.batch, Duration::from_millis(100), sink);
            (Target::Fifo(fifo), None, workers, timeline)
        }
    };
    let target = Arc::new(target);
    let start = timeline.start();

    // Live traffic and depth sampling until told to stop.
    let stop_traffic = CancellationToken::new();
    let traffic_stopped = stop_traffic.clone();
    let traffic = {
        let target = Arc::clone(&target);
        let stopped = traffic_stopped.clone();
        let rate = opts.rate;
        tokio::spawn(async move {
            let mut fleet = Fleet::new(3, 100, 7);
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stopped.is_cancelled() {
                tick.tick().await;
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                let n = due.saturating_sub(sent).min(4096);
                if n > 0 {
                    let t = now_epoch_ms();
                    let batch = (0..n).map(|_| fleet.next_message(t)).collect();
                    target.push(batch).await;
                    sent += n;
                }
            }
        })
    };
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let target = Arc::clone(&target);
        let timeline = Arc::clone(&timeline);
        let stopped = traffic_stopped.clone();
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            while !stopped.is_cancelled() {
                let depth = target.depth();
                peak.fetch_max(depth, std::sync::atomic::Ordering::Relaxed);
                timeline.sample_depth(depth);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let deadline = start + opts.max_run;
    let mut outage_at = None;
    let mut drained_at = None;
    let wait_drained = |from: Instant| {
        let target = Arc::clone(&target);
        async move {
            // The backlog counts as drained once it is empty twice in a row.
            let mut empty = 0;
            loop {
                if Instant::now() >= deadline {
                    return None;
                }
                if target.depth() == 0 {
                    empty += 1;
                    if empty == 2 {
                        return Some(Instant::now().saturating_duration_since(from));
                    }
                } else {
                    empty = 0;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    match opts.scenario {
        Scenario::Steady => {
            progress(&format!("{mode:?}: steady traffic for {:?}", opts.duration));
            tokio::time::sleep(opts.duration.min(opts.max_run)).await;
        }
        Scenario::Outage => {
            progress(&format!(
                "{mode:?}: traffic for {:?}, then the handler goes down",
                opts.before
            ));
            tokio::time::sleep(opts.before).await;
            let down = Instant::now();
            switch.store(true, std::sync::atomic::Ordering::SeqCst);
            progress(&format!("{mode:?}: handler down for {:?}", opts.outage));
            tokio::time::sleep(opts.outage).await;
            switch.store(false, std::sync::atomic::Ordering::SeqCst);
            let up = Instant::now();
            outage_at = Some((down, up));
            progress(&format!("{mode:?}: handler back; draining the backlog"));
            // Give the backlog time to fill from retries before watching it empty.
            tokio::time::sleep(Duration::from_millis(50)).await;
            drained_at = wait_drained(up).await.map(|d| (up, d));
            progress(&format!(
                "{mode:?}: drained; {:?} more of traffic",
                opts.tail
            ));
            tokio::time::sleep(opts.tail).await;
        }
        Scenario::Flood => {
            progress(&format!(
                "{mode:?}: draining {} stale messages beside live traffic",
                opts.pile
            ));
            drained_at = wait_drained(start).await.map(|d| (start, d));
            progress(&format!(
                "{mode:?}: drained; {:?} more of traffic",
                opts.tail
            ));
            tokio::time::sleep(opts.tail).await;
        }
    }
    stop_traffic.cancel();
    let _ = traffic.await;
    let _ = sampler.await;
    let elapsed = start.elapsed();
    if let Some((stop_tx, run)) = stop_engine {
        let _ = stop_tx.send(());
        let _ = run.await;
    }
    if let Target::Fifo(f) = &*target {
        f.stop();
    }
    for w in workers {
        w.abort();
    }
    if mode == Mode::Laneway && opts.backlog == BacklogKind::Disk {
        // The engine closed the store; the directory is scratch.
        let _ = std::fs::remove_dir_all(bench_dir(opts));
    }
    #[cfg(feature = "amqp")]
    if mode == Mode::Laneway && opts.backlog == BacklogKind::Amqp {
        // What the run did not drain is scratch too.
        delete_bench_queues().await?;
    }

    let windows = timeline.windows();
    Ok(report(
        opts,
        mode,
        &windows,
        elapsed,
        start,
        outage_at,
        drained_at,
        peak.load(std::sync::atomic::Ordering::Relaxed),
    ))
}

fn index_of(start: Instant, at: Instant) -> usize {
    (at.saturating_duration_since(start).as_nanos() / WINDOW.as_nanos()) as usize
}

/// Time from window `from` until live p99 stays under the threshold.
fn time_to_realtime(windows: &[Window], from: usize, threshold_ms: f64) -> Option<f64> {
    let mut settled_at = None;
    for (i, w) in windows.iter().enumerate().skip(from) {
        match window_p99_ms(w) {
            Some(p99) if p99 >= threshold_ms => settled_at = None,
            Some(_) if settled_at.is_none() => settled_at = Some(i),
            _ => {}
        }
    }
    settled_at.map(|i| (i - from) as f64 * WINDOW.as_secs_f64() * 1000.0)
}

#[allow(clippy::too_many_arguments)]
fn report(
    opts: &BenchOptions,
    mode: Mode,
    windows: &[Window],
    elapsed: Duration,
    start: Instant,
    outage_at: Option<(Instant, Instant)>,
    drained_at: Option<(Instant, Duration)>,
    peak: u64,
) -> ModeReport {
    let end = windows.len();
    let all = phase(windows, 0, end);
    let mut phases = BTreeMap::new();
    let threshold_ms = opts.threshold.as_secs_f64() * 1000.0;
    let realtime_from = match (opts.scenario, outage_at) {
        (Scenario::Outage, Some((down, up))) => {
            let (d, u) = (index_of(start, down), index_of(start, up));
            phases.insert("1_before".into(), phase(windows, 0, d));
            phases.insert("2_outage".into(), phase(windows, d, u));
            phases.insert("3_recovery".into(), phase(windows, u, end));
            u
        }
        _ => 0,
    };
    if let (Scenario::Flood, Some((_, drained))) = (opts.scenario, drained_at) {
        let k = index_of(start, start + drained);
        phases.insert("1_draining".into(), phase(windows, 0, k));
        phases.insert("2_drained".into(), phase(windows, k, end));
    }
    if phases.is_empty() {
        phases.insert("all".into(), all.clone());
    }
    let drained_ms = drained_at.map(|(_, d)| d.as_secs_f64() * 1000.0);
    let drain_rate = match (opts.scenario, drained_ms) {
        (Scenario::Flood, Some(ms)) if ms > 0.0 => Some(opts.pile as f64 / (ms / 1000.0)),
        (Scenario::Outage, Some(ms)) if ms > 0.0 => {
            let drained = match mode {
                Mode::Laneway => phases.get("3_recovery").map_or(0, |p| p.delivered_backlog),
                // A FIFO consumer has no backlog lane: what piled up in its
                // one queue during the outage is what it drains.
                Mode::Fifo => peak,
            };
            (drained > 0).then(|| drained as f64 / (ms / 1000.0))
        }
        _ => None,
    };
    let per_s = 1.0 / WINDOW.as_secs_f64();
    ModeReport {
        scenario: opts.scenario,
        mode,
        throughput_msgs_per_s: (all.delivered_live + all.delivered_backlog) as f64
            / elapsed.as_secs_f64().max(1e-9),
        live_latency_ms: all.live_latency_ms,
        time_to_realtime_ms: time_to_realtime(windows, realtime_from, threshold_ms),
        backlog_peak: peak,
        backlog_drain_ms: drained_ms,
        drain_rate_msgs_per_s: drain_rate,
        delivered_backlog: all.delivered_backlog,
        elapsed_s: elapsed.as_secs_f64(),
        handler_capacity_msgs_per_s: opts.capacity(),
        phases,
        timeline: windows
            .iter()
            .enumerate()
            .map(|(i, w)| TimelinePoint {
                t_s: i as f64 * WINDOW.as_secs_f64(),
                live_p99_ms: window_p99_ms(w),
                live_per_s: w.live as f64 * per_s,
                backlog_per_s: w.backlog as f64 * per_s,
                backlog_depth: w.backlog_depth,
            })
            .collect(),
        outage_s: outage_at.map(|(d, u)| {
            (
                d.saturating_duration_since(start).as_secs_f64(),
                u.saturating_duration_since(start).as_secs_f64(),
            )
        }),
    }
}
