//! The engine: routes every ingested message to the consumer groups whose
//! filter matches, runs each group's lanes and scheduler, and tells sources
//! when their batches are done.
//!
//! Invariants:
//! - fan-out: every group whose filter matches gets the message; a message no
//!   group matches is counted as unrouted and acknowledged (there is nobody
//!   to deliver it to), never silently dropped from the counts;
//! - a source batch is acknowledged only when every group it was routed to
//!   has settled every message of it (see [`crate::ack`]);
//! - shutdown stops the sources first, then the groups (which finish or
//!   return their in-flight work), then tells the sources they may settle
//!   their last acks.

mod config;
mod dead_letter;
mod filter;
mod group;
pub mod live_lane;
mod read_ahead;
pub mod scheduler;
mod stats;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::ack::AckRef;
use crate::backlog::{BacklogStore, MemoryBacklog};
use crate::message::Message;
use crate::signal::signal;
use crate::sink::Sink;
use crate::source::{Source, SourceContext, SourceHealth};

pub use config::GroupConfig;
pub use dead_letter::{DeadLetter, DeadLetters};
pub use filter::Filter;
pub use group::LanePolicy;
pub use stats::{BacklogLoss, EngineStats, GroupSnapshot, LatencySummary};

use group::{Group, WriterQueue};
use stats::{bump, read};

/// Errors building or running an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A knob or a combination of them is wrong; the text names it.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Engine-wide knobs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Payloads larger than this are dead letters ("oversize") at ingest.
    pub max_message_bytes: usize,
    /// How long shutdown waits for in-flight deliveries and backlog writes.
    pub shutdown_grace: Duration,
    /// With sources that end (files, a counted simulator), stop once they
    /// have and every group is idle. Without, run until the shutdown future.
    pub finish_when_drained: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_message_bytes: 1 << 20,
            shutdown_grace: Duration::from_secs(10),
            finish_when_drained: true,
        }
    }
}

/// What the builder holds for one group until `build`.
struct GroupParts {
    config: GroupConfig,
    sink: Arc<dyn Sink>,
    backlog: Option<Arc<dyn BacklogStore>>,
}

/// Builds an [`Engine`]: groups with their sinks and backlog stores,
/// sources, and options. Every knob has a documented default.
///
/// ```no_run
/// use laneway::engine::{Engine, GroupConfig};
/// use laneway::sink::NullSink;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = Engine::builder()
///     .group(GroupConfig::named("all"), NullSink)
///     .build()?;
/// let summary = engine.run(async { tokio::signal::ctrl_c().await.ok(); }).await;
/// println!("{}", summary.delivered);
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct EngineBuilder {
    groups: Vec<GroupParts>,
    sources: Vec<(Box<dyn Source>, LanePolicy)>,
    dead_letters: Option<Arc<DeadLetters>>,
    options: EngineOptions,
}

impl EngineBuilder {
    /// Adds a group delivering to `sink`, with an in-memory backlog.
    pub fn group(self, config: GroupConfig, sink: impl Sink) -> Self {
        self.group_with(config, Arc::new(sink), None)
    }

    /// Adds a group with a shared sink and, optionally, its own backlog
    /// store (the in-memory store when `None`).
    pub fn group_with(
        mut self,
        config: GroupConfig,
        sink: Arc<dyn Sink>,
        backlog: Option<Arc<dyn BacklogStore>>,
    ) -> Self {
        self.groups.push(GroupParts {
            config,
            sink,
            backlog,
        });
        self
    }

    /// Adds a source; `policy` decides which lane its messages take.
    pub fn source(mut self, source: impl Source, policy: LanePolicy) -> Self {
        self.sources.push((Box::new(source), policy));
        self
    }

    /// Adds an already boxed source.
    pub fn boxed_source(mut self, source: Box<dyn Source>, policy: LanePolicy) -> Self {
        self.sources.push((source, policy));
        self
    }

    /// Where dead letters go (in memory by default).
    pub fn dead_letters(mut self, dead: Arc<DeadLetters>) -> Self {
        self.dead_letters = Some(dead);
        self
    }

    /// Engine-wide options.
    pub fn options(mut self, options: EngineOptions) -> Self {
        self.options = options;
        self
    }

    /// Checks the configuration and builds the engine (nothing runs yet).
    pub fn build(self) -> Result<Engine, EngineError> {
        if self.groups.is_empty() {
            return Err(EngineError::Config(
                "at least one consumer group is needed".into(),
            ));
        }
        let dead = self.dead_letters.unwrap_or_else(DeadLetters::in_memory);
        let mut groups = Vec::new();
        let mut writers = Vec::new();
        for GroupParts {
            config,
            sink,
            backlog,
        } in self.groups
        {
            if groups.iter().any(|g: &Arc<Group>| g.name() == config.name) {
                return Err(EngineError::Config(format!(
                    "two groups are named {:?}",
                    config.name
                )));
            }
            let store = backlog.unwrap_or_else(|| Arc::new(MemoryBacklog::default()));
            let (group, writer) =
                Group::new(config, store, sink, Arc::clone(&dead)).map_err(EngineError::Config)?;
            groups.push(group);
            writers.push(writer);
        }
        let health = self
            .sources
            .iter()
            .map(|(source, _)| (source.name(), SourceHealth::default()))
            .collect();
        let router = Arc::new(Router {
            groups: groups.clone(),
            failures: Arc::default(),
            health,
            stats: EngineStats::default(),
            dead: Arc::clone(&dead),
            max_message_bytes: self.options.max_message_bytes,
        });
        Ok(Engine {
            router,
            groups,
            writers,
            sources: self.sources,
            dead,
            options: self.options,
        })
    }
}

/// One item a source hands in: a message, or input that could not become one.
#[derive(Debug)]
pub enum Incoming {
    /// A message to route.
    Message(Message),
    /// A message with the line its source read it from, so that a dead
    /// letter at ingest (an oversize payload) names `source:line`.
    MessageAt {
        /// The message.
        message: Message,
        /// Its 1-based line in the source's input.
        line: u64,
    },
    /// Input that is not a message; it becomes a dead letter with this reason.
    Malformed {
        /// The raw bytes as read.
        raw: Bytes,
        /// Where it was read (for example `file.jsonl:17`).
        origin: String,
        /// Why it is not a message.
        reason: String,
    },
}

/// The handle sources use to hand batches to the engine.
#[derive(Clone)]
pub struct Ingest {
    router: Arc<Router>,
    policy: LanePolicy,
    /// The source's name, for dead letters at ingest.
    source: Arc<str>,
}

impl Ingest {
    /// Routes a batch to every matching group. Resolves when each message is
    /// in a lane or queued for a backlog (waiting while backlogs are full:
    /// this is where backpressure reaches a source). `ack` is the source's
    /// reference for the batch; it is completed once the batch is routed, so
    /// the batch is acknowledged when the groups settle their shares.
    pub async fn submit(&self, batch: Vec<Incoming>, ack: AckRef) {
        self.router
            .route(batch, ack, self.policy, &self.source)
            .await
    }
}

struct Router {
    groups: Vec<Arc<Group>>,
    /// Sources that ended with an error, in the order they failed.
    failures: Arc<parking_lot::Mutex<Vec<SourceFailure>>>,
    /// Each source's name and health, for status lines.
    health: Vec<(String, SourceHealth)>,
    stats: EngineStats,
    dead: Arc<DeadLetters>,
    max_message_bytes: usize,
}

impl Router {
    async fn route(&self, batch: Vec<Incoming>, ack: AckRef, policy: LanePolicy, source: &str) {
        bump(&self.stats.ingested, batch.len() as u64);
        let mut per_group: Vec<Vec<Message>> = vec![Vec::new(); self.groups.len()];
        let mut dead = Vec::new();
        let mut unrouted = 0;
        for item in batch {
            let (message, line) = match item {
                Incoming::Message(m) => (m, None),
                Incoming::MessageAt { message, line } => (message, Some(line)),
                Incoming::Malformed {
                    raw,
                    origin,
                    reason,
                } => {
                    dead.push(DeadLetter::for_input(&raw, origin, reason));
                    continue;
                }
            };
            if message.payload().len() > self.max_message_bytes {
                let reason = format!(
                    "oversize: payload is {} bytes, the limit is {}",
                    message.payload().len(),
                    self.max_message_bytes
                );
                let origin = match line {
                    Some(line) => format!("{source}:{line}"),
                    None => source.to_string(),
                };
                let mut letter = DeadLetter::for_input(message.payload(), origin, reason);
                letter.topic = Some(message.topic().to_string());
                letter.message_id = Some(message.message_id().to_string());
                dead.push(letter);
                continue;
            }
            let mut routed = false;
            for (g, group) in self.groups.iter().enumerate() {
                if group.filter.matches(&message) {
                    per_group[g].push(message.clone());
                    routed = true;
                }
            }
            if !routed {
                unrouted += 1;
            }
        }
        bump(&self.stats.unrouted, unrouted);
        if !dead.is_empty() {
            bump(&self.stats.dead_letters, dead.len() as u64);
            self.dead.record(dead).await;
        }
        for (group, messages) in self.groups.iter().zip(per_group) {
            if !messages.is_empty() {
                group.admit(messages, &ack, policy).await;
            }
        }
        ack.complete();
    }
}

/// A running view of an engine: status lines, metrics, summaries. Cheap to
/// clone; valid before, during and after [`Engine::run`].
#[derive(Clone)]
pub struct Monitor {
    router: Arc<Router>,
    started: Instant,
}

impl Monitor {
    /// Every group's counters and depths now.
    pub fn groups(&self) -> Vec<GroupSnapshot> {
        self.router.groups.iter().map(|g| g.snapshot()).collect()
    }

    /// Deliveries so far over every group and lane: cheap (counters only),
    /// for polling loops.
    pub fn delivered(&self) -> u64 {
        self.router
            .groups
            .iter()
            .map(|g| read(&g.stats.delivered_live) + read(&g.stats.delivered_backlog))
            .sum()
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
        }
    }
}

/// What a run did, as `laneway run --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Seconds since the engine was built.
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

/// A built engine, ready to run.
pub struct Engine {
    router: Arc<Router>,
    groups: Vec<Arc<Group>>,
    writers: Vec<WriterQueue>,
    sources: Vec<(Box<dyn Source>, LanePolicy)>,
    dead: Arc<DeadLetters>,
    options: EngineOptions,
}

impl Engine {
    /// Starts building an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// A handle to watch the engine while it runs.
    pub fn monitor(&self) -> Monitor {
        Monitor {
            router: Arc::clone(&self.router),
            started: Instant::now(),
        }
    }

    /// A handle for submitting messages from code (besides the configured
    /// sources), with the given lane policy.
    pub fn ingest(&self, policy: LanePolicy) -> Ingest {
        Ingest {
            router: Arc::clone(&self.router),
            policy,
            source: Arc::from("ingest"),
        }
    }

    /// Where this engine's dead letters go.
    pub fn dead_letters(&self) -> Arc<DeadLetters> {
        Arc::clone(&self.dead)
    }

    /// Runs until `shutdown` resolves (or, with `finish_when_drained` and at
    /// least one source, until every source has ended and every group is
    /// idle, or until a source fails), then shuts down gracefully and
    /// returns the summary. A source that returns an error stops the run:
    /// the summary lists it in [`RunSummary::failures`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> RunSummary {
        let monitor = self.monitor();
        let (stop_groups, groups_stop) = signal();
        let (stop_sources, sources_stop) = signal();
        let (drained_trigger, drained) = signal();

        let group_tasks: Vec<_> = self
            .groups
            .iter()
            .cloned()
            .zip(self.writers)
            .map(|(group, writer)| {
                tokio::spawn(group.run(writer, groups_stop.clone(), self.options.shutdown_grace))
            })
            .collect();

        let has_sources = !self.sources.is_empty();
        let mut source_tasks = Vec::new();
        let (fail_trigger, failed) = signal();
        for ((source, policy), (_, health)) in self.sources.into_iter().zip(&self.router.health) {
            let name = source.name();
            let ctx = SourceContext {
                ingest: Ingest {
                    router: Arc::clone(&self.router),
                    policy,
                    source: Arc::from(name.as_str()),
                },
                stop: sources_stop.clone(),
                drained: drained.clone(),
                health: health.clone(),
            };
            let failures = Arc::clone(&self.router.failures);
            let fail_trigger = fail_trigger.clone();
            source_tasks.push(tokio::spawn(async move {
                match source.run(ctx).await {
                    Ok(()) => tracing::info!(source = %name, "source finished"),
                    Err(e) => {
                        // Reported once, by whoever runs the engine (the
                        // summary carries it); here only for the record.
                        tracing::info!(source = %name, error = %e, "source failed; stopping the run");
                        failures.lock().push(SourceFailure {
                            source: name,
                            error: e.to_string(),
                        });
                        fail_trigger.fire();
                    }
                }
            }));
        }

        let finished = finished_and_drained(
            &self.groups,
            &source_tasks,
            has_sources && self.options.finish_when_drained,
        );
        tokio::select! {
            _ = shutdown => tracing::info!("shutting down"),
            _ = finished => tracing::info!("sources finished and every group is idle"),
            _ = failed.raised() => tracing::info!("a source failed; shutting down"),
        }

        stop_sources.fire();
        wait_sources_stopped_reading(&self.router, &source_tasks).await;
        stop_groups.fire();
        for task in group_tasks {
            let _ = task.await;
        }
        drained_trigger.fire();
        for task in source_tasks {
            if tokio::time::timeout(self.options.shutdown_grace, task)
                .await
                .is_err()
            {
                tracing::warn!("a source did not finish within the shutdown grace period");
            }
        }
        monitor.summary()
    }
}

/// Gives sources a moment to stop submitting after `stop`: the router's
/// ingest counter stops moving (or every source task ended).
async fn wait_sources_stopped_reading(router: &Router, tasks: &[tokio::task::JoinHandle<()>]) {
    let mut last = read(&router.stats.ingested);
    for _ in 0..200 {
        if tasks.iter().all(|t| t.is_finished()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        let now = read(&router.stats.ingested);
        if now == last {
            return;
        }
        last = now;
    }
}

async fn finished_and_drained(
    groups: &[Arc<Group>],
    sources: &[tokio::task::JoinHandle<()>],
    enabled: bool,
) {
    if !enabled {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if sources.iter().all(|t| t.is_finished()) && groups.iter().all(|g| g.is_idle()) {
            return;
        }
    }
}
