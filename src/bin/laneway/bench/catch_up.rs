//! The catch-up scenario: time to real-time on a lagging Kafka log, against
//! the size of the pile. For each pile size, a fresh in-memory Kafka cluster
//! (librdkafka's mock) gets a pile of hour-old records; then a consumer
//! starts while fresh records are produced every 10 ms, and the scenario
//! times how long the consumer takes to handle its first fresh record:
//!
//! - laneway: the Kafka source with live-first catch-up (the default);
//! - plain: a plain `rdkafka` consumer in its own group, handling records in
//!   log order with the same handler capacity (`slots / cost` per second).
//!
//! The handler is simulated (a cost per message), so the times measure the
//! order of handling, not the machine. laneway's time should stay flat as
//! the pile grows; the plain consumer's grows with it.
//!
//! Each consumer then runs on until its whole pile is handled, which gives
//! the time to drain it and the consumer's CPU time per record handled
//! ([`super::cpu::CpuMeter`]: the mock cluster and the producer share the
//! process, and their librdkafka threads are left out).
//!
//! Each pile runs in rounds: every round makes a new cluster and pile, then
//! runs both consumers one after the other, which of them goes first
//! alternating between rounds (the machine is shared, and its load moves
//! between rounds). Each figure is reported as the median and range over
//! the rounds, and each ratio as the median of the per-round ratios, so that
//! a ratio compares two runs made under the same load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use laneway::engine::{Engine, GroupConfig};
use laneway::kafka::{KafkaSource, KafkaSourceConfig, headers_of, key_of};
use laneway::message::{Message, now_epoch_ms};
use laneway::sink::{BatchError, Delivery, SimulatedHandler, Sink};
use laneway::source::LanePolicy;

use super::cpu::CpuMeter;
use super::spread::{Spread, ratios, show};

/// The prefix of the pile's records' ids.
const PILE: &str = "old-";
/// The prefix of the fresh records' ids produced while laneway runs.
const LANEWAY_FRESH: &str = "fresh-laneway-";
/// The prefix of the fresh records' ids produced while the plain consumer
/// runs. Both consumers of a round read the same log, so each counts only
/// its own run's fresh records as fresh; the other run's it handles and
/// counts in neither the pile nor its fresh records.
const PLAIN_FRESH: &str = "fresh-plain-";
/// How often a fresh record is produced while a consumer starts.
const FRESH_EVERY: Duration = Duration::from_millis(10);

/// The scenario's knobs.
#[derive(Debug, Clone, Serialize)]
pub struct CatchUpOptions {
    /// Pile sizes to run, in records.
    pub piles: Vec<u64>,
    /// Handler cost per message.
    #[serde(with = "laneway::knob::duration")]
    pub cost: Duration,
    /// Handler slots (the plain consumer gets the same capacity).
    pub slots: usize,
    /// Messages per delivery.
    pub batch: usize,
    /// Partitions of the topic (the mock keeps a few MiB per partition);
    /// `None`: sized from each pile by [`partitions_for`].
    pub partitions: Option<i32>,
    /// Upper bound on each consumer's run: to its first fresh record and
    /// the pile's end.
    #[serde(with = "laneway::knob::duration")]
    pub max_run: Duration,
    /// Rounds per pile size, each on a new cluster and pile.
    pub rounds: usize,
}

impl Default for CatchUpOptions {
    fn default() -> Self {
        CatchUpOptions {
            piles: vec![100_000, 1_000_000],
            cost: Duration::from_micros(10),
            slots: 4,
            batch: 256,
            partitions: None,
            max_run: Duration::from_secs(120),
            rounds: 5,
        }
    }
}

/// One consumer's run on one pile.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// From start to its partitions' assignment (the group join, the same
    /// for both consumers: a new group waits the broker's initial
    /// rebalance delay, 3 s by default), ms.
    pub joined_ms: Option<f64>,
    /// From the assignment to the first fresh record handled: the time to
    /// real-time, ms.
    pub to_fresh_ms: Option<f64>,
    /// Pile records handled before the first fresh one.
    pub pile_before: u64,
    /// From the assignment to the last pile record handled: the time to
    /// drain the pile (the run goes on after the first fresh record until
    /// then), ms.
    pub pile_done_ms: Option<f64>,
    /// Records handled from the start to the pile's end (the pile and the
    /// fresh records handled meanwhile).
    pub handled: u64,
    /// The consumer's CPU time from its start to the pile's end (its own
    /// threads and the runtime's; not the mock cluster's or the producer's)
    /// per record handled, µs.
    pub cpu_us_per_msg: Option<f64>,
}

/// One round on one pile: both consumers, one after the other.
#[derive(Debug, Clone, Serialize)]
pub struct CatchUpRound {
    /// Whether the plain consumer ran first in this round.
    pub plain_first: bool,
    /// laneway.
    pub laneway: Timing,
    /// The plain consumer.
    pub plain: Timing,
}

/// One figure of both consumers over the rounds, and their per-round ratio.
#[derive(Debug, Clone, Serialize)]
pub struct Compared {
    /// laneway's figure.
    pub laneway: Option<Spread>,
    /// The plain consumer's figure.
    pub plain: Option<Spread>,
    /// The figure's ratio in each round (which way round: see the field
    /// that holds it); none for a figure whose ratio means nothing.
    pub ratio: Option<Spread>,
}

/// Which way a figure's per-round ratio is taken: the larger-is-better
/// times to real-time as plain ÷ laneway, costs as laneway ÷ plain.
#[derive(Clone, Copy)]
enum Ratio {
    PlainOverLaneway,
    LanewayOverPlain,
    None,
}

impl Compared {
    /// The figure `of` over `rounds`, with its per-round ratio.
    fn of(rounds: &[CatchUpRound], of: fn(&Timing) -> Option<f64>, ratio: Ratio) -> Compared {
        let pair = |r: &CatchUpRound| (of(&r.laneway), of(&r.plain));
        Compared {
            laneway: Spread::of(rounds.iter().map(|r| of(&r.laneway))),
            plain: Spread::of(rounds.iter().map(|r| of(&r.plain))),
            ratio: match ratio {
                Ratio::PlainOverLaneway => ratios(rounds.iter().map(pair).map(|(l, p)| (p, l))),
                Ratio::LanewayOverPlain => ratios(rounds.iter().map(pair)),
                Ratio::None => None,
            },
        }
    }
}

/// One pile size's result.
#[derive(Debug, Clone, Serialize)]
pub struct CatchUpPoint {
    /// Records in the pile.
    pub pile: u64,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Partitions that held at least `catch_up_after` pile records, so
    /// that laneway split them (read the pile beside the live cursor); the
    /// others it read in order, as the plain consumer does.
    pub split_partitions: i32,
    /// Each round's timings.
    pub rounds: Vec<CatchUpRound>,
    /// Time to real-time, ms; the ratio is plain ÷ laneway.
    pub to_fresh_ms: Compared,
    /// Pile records handled before the first fresh one; no ratio.
    pub pile_before: Compared,
    /// Time to drain the pile, ms; the ratio is laneway ÷ plain.
    pub pile_done_ms: Compared,
    /// CPU time per record handled, µs; the ratio is laneway ÷ plain.
    pub cpu_us_per_msg: Compared,
}

impl CatchUpPoint {
    fn new(pile: u64, partitions: i32, split_partitions: i32, rounds: Vec<CatchUpRound>) -> Self {
        CatchUpPoint {
            pile,
            partitions,
            split_partitions,
            to_fresh_ms: Compared::of(&rounds, |t| t.to_fresh_ms, Ratio::PlainOverLaneway),
            pile_before: Compared::of(&rounds, |t| Some(t.pile_before as f64), Ratio::None),
            pile_done_ms: Compared::of(&rounds, |t| t.pile_done_ms, Ratio::LanewayOverPlain),
            cpu_us_per_msg: Compared::of(&rounds, |t| t.cpu_us_per_msg, Ratio::LanewayOverPlain),
            rounds,
        }
    }
}

/// The whole scenario's result, as `--json` writes it.
#[derive(Debug, Clone, Serialize)]
pub struct CatchUpReport {
    /// The knobs used.
    pub options: CatchUpOptions,
    /// One point per pile size.
    pub points: Vec<CatchUpPoint>,
}

impl CatchUpReport {
    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let o = &self.options;
        let mut out = format!(
            "scenario catch-up: handler {} slots × {:?}/msg (capacity {:.0} msgs/s); {} round(s) per pile, each on a new pile, which consumer goes first alternating; median (range) over the rounds, each ratio the median of the per-round ratios\n",
            o.slots,
            o.cost,
            o.slots as f64 / o.cost.as_secs_f64().max(1e-9),
            o.rounds,
        );
        let sections: [Section; 4] = [
            (
                "time to real-time: from the partitions' assignment to the first fresh record handled, ms",
                "plain ÷ laneway",
                |p| &p.to_fresh_ms,
                0,
            ),
            (
                "pile records handled before the first fresh one",
                "",
                |p| &p.pile_before,
                0,
            ),
            (
                "draining the pile: from the assignment to the last pile record handled, ms",
                "laneway ÷ plain",
                |p| &p.pile_done_ms,
                0,
            ),
            (
                "CPU per record handled, µs (the consumer's and the runtime's threads, not the mock cluster's or the producer's)",
                "laneway ÷ plain",
                |p| &p.cpu_us_per_msg,
                2,
            ),
        ];
        for (title, ratio_heading, of, digits) in sections {
            out.push_str(title);
            out.push('\n');
            out.push_str(&row("pile", "laneway", "plain", ratio_heading));
            for p in &self.points {
                let c = of(p);
                out.push_str(&row(
                    p.pile,
                    &show(c.laneway, digits, "never"),
                    &show(c.plain, digits, "never"),
                    &show(c.ratio, 2, "-"),
                ));
            }
        }
        for p in &self.points {
            out.push_str(&format!(
                "pile {}: {} of {} partitions split (at least {} records each); group join took {} ms (laneway), {} ms (plain)\n",
                p.pile,
                p.split_partitions,
                p.partitions,
                catch_up_after(),
                show(Spread::of(p.rounds.iter().map(|r| r.laneway.joined_ms)), 0, "never"),
                show(Spread::of(p.rounds.iter().map(|r| r.plain.joined_ms)), 0, "never"),
            ));
        }
        out
    }
}

/// One section of the table: its title, its ratio's heading, the figure it
/// shows and that figure's decimals.
type Section = (
    &'static str,
    &'static str,
    fn(&CatchUpPoint) -> &Compared,
    usize,
);

/// One line of a table: the pile, laneway's cell, the plain consumer's and
/// a ratio, in fixed columns.
fn row(pile: impl std::fmt::Display, laneway: &str, plain: &str, ratio: &str) -> String {
    format!("{pile:>10}{laneway:>28}{plain:>28}{ratio:>22}\n")
}

/// The lag from which the Kafka source splits a partition (its default
/// `catch_up_after`, which the scenario runs with).
pub fn catch_up_after() -> u64 {
    KafkaSourceConfig::default().catch_up_after
}

/// The partitions a pile is spread over by default: enough that each holds
/// about twice `catch_up_after` (records are keyed by device, so partitions
/// are not filled evenly), at most 32 (the mock keeps a few MiB per
/// partition; a pile of 1,000,000 fits in 32).
pub fn partitions_for(pile: u64) -> i32 {
    let each = catch_up_after().saturating_mul(2).max(1);
    i32::try_from((pile / each).clamp(1, 32)).unwrap_or(32)
}

/// Refuses a pile that no partition would be split for: the comparison
/// would then measure two plain consumers.
pub fn check_split_possible(pile: u64, partitions: i32) -> Result<(), String> {
    let per_partition = pile / u64::try_from(partitions.max(1)).unwrap_or(1);
    if per_partition < catch_up_after() {
        return Err(format!(
            "a pile of {pile} over {partitions} partitions is {per_partition} records per partition, below catch_up_after ({}): no partition would be split, and the run would measure nothing; use fewer --partitions (or leave it out to size it from the pile) or a larger pile",
            catch_up_after()
        ));
    }
    Ok(())
}

/// Runs every pile size.
pub async fn run(
    options: &CatchUpOptions,
    progress: &dyn Fn(&str),
) -> Result<CatchUpReport, String> {
    for &pile in &options.piles {
        check_split_possible(pile, options.partitions.unwrap_or(partitions_for(pile)))?;
    }
    let mut points = Vec::new();
    for &pile in &options.piles {
        points.push(run_pile(options, pile, progress).await?);
    }
    Ok(CatchUpReport {
        options: options.clone(),
        points,
    })
}

async fn run_pile(
    options: &CatchUpOptions,
    pile: u64,
    progress: &dyn Fn(&str),
) -> Result<CatchUpPoint, String> {
    let partitions = options.partitions.unwrap_or(partitions_for(pile));
    let mut rounds = Vec::new();
    let mut split_partitions = 0;
    for round in 0..options.rounds.max(1) {
        let (split, timings) = run_round(options, pile, partitions, round, progress).await?;
        split_partitions = split;
        rounds.push(timings);
    }
    Ok(CatchUpPoint::new(
        pile,
        partitions,
        split_partitions,
        rounds,
    ))
}

/// One round: a new cluster holding a new pile, then both consumers, the
/// plain one first in odd rounds. Returns the partitions split and the
/// timings.
async fn run_round(
    options: &CatchUpOptions,
    pile: u64,
    partitions: i32,
    round: usize,
    progress: &dyn Fn(&str),
) -> Result<(i32, CatchUpRound), String> {
    let rounds = options.rounds.max(1);
    let cluster = MockCluster::new(3).map_err(|e| format!("mock cluster: {e}"))?;
    let brokers = cluster.bootstrap_servers();
    cluster
        .create_topic("pile", partitions, 1)
        .map_err(|e| format!("creating the topic: {e}"))?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .map_err(|e| format!("producer: {e}"))?;
    progress(&format!(
        "pile {pile}, round {} of {rounds}: producing over {partitions} partitions",
        round + 1
    ));
    produce_pile(&producer, pile).await?;
    let sizes = partition_sizes(&brokers, partitions)?;
    let kept: i64 = sizes.iter().sum();
    if kept as u64 != pile {
        return Err(format!(
            "the mock cluster keeps {kept} of the {pile} records: use more --partitions"
        ));
    }
    let split = sizes
        .iter()
        .filter(|&&n| n as u64 >= catch_up_after())
        .count();
    let split_partitions = i32::try_from(split).unwrap_or(i32::MAX);
    if split_partitions == 0 {
        return Err(format!(
            "pile {pile}: no partition holds catch_up_after ({}) records, so none would be split and the run would measure nothing; use fewer --partitions or a larger pile",
            catch_up_after()
        ));
    }
    if split_partitions < partitions && round == 0 {
        eprintln!(
            "bench: warning: pile {pile}: only {split_partitions} of {partitions} partitions hold catch_up_after ({}) records; the others are read in order, as by a plain consumer",
            catch_up_after()
        );
    }

    // Each run starts when awaited, in the round's order.
    let laneway_run = async {
        progress(&format!("pile {pile}, round {}: laneway", round + 1));
        time_laneway(options, pile, &brokers, &producer).await
    };
    let plain_run = async {
        progress(&format!("pile {pile}, round {}: plain consumer", round + 1));
        time_plain(options, pile, &brokers, &producer).await
    };
    let plain_first = round % 2 == 1;
    let (laneway, plain) = if plain_first {
        let plain = plain_run.await?;
        (laneway_run.await?, plain)
    } else {
        let laneway = laneway_run.await?;
        (laneway, plain_run.await?)
    };
    Ok((
        split_partitions,
        CatchUpRound {
            plain_first,
            laneway,
            plain,
        },
    ))
}

fn record(id: String, generate_time_ms: i64, i: u64) -> Result<Message, String> {
    let topic = format!("/pk{}/dev{}/thing/event/property/post", i % 3, i % 97);
    let payload = Bytes::from(format!("{{\"temperature\":{},\"seq\":{i}}}", i % 40));
    Message::new(topic, id, generate_time_ms, payload).map_err(|e| e.to_string())
}

async fn send(producer: &FutureProducer, message: &Message) -> Result<(), String> {
    let key = key_of(message);
    let mut out = FutureRecord::to("pile")
        .payload(message.payload().as_ref())
        .key(key.as_bytes())
        .headers(headers_of(message));
    loop {
        match producer.send_result(out) {
            Ok(_) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                out = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(format!("producing: {e}")),
        }
    }
}

async fn produce_pile(producer: &FutureProducer, pile: u64) -> Result<(), String> {
    let then = now_epoch_ms() - 3_600_000;
    for i in 0..pile {
        send(producer, &record(format!("{PILE}{i}"), then, i)?).await?;
    }
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(120)))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("flushing the pile: {e}"))
}

/// The records each partition holds (the mock keeps a few MiB per
/// partition and drops the rest, so the sum can fall short of the pile).
fn partition_sizes(brokers: &str, partitions: i32) -> Result<Vec<i64>, String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "check")
        .create()
        .map_err(|e| e.to_string())?;
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks("pile", p, Duration::from_secs(10))
                .map(|(low, high)| high - low)
                .map_err(|e| format!("watermarks: {e}"))
        })
        .collect()
}

/// Produces a fresh record every [`FRESH_EVERY`] until `stop`, its id
/// starting with `prefix`.
fn keep_producing_fresh(producer: FutureProducer, stop: CancellationToken, prefix: &'static str) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FRESH_EVERY);
        for i in 0u64.. {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(m) = record(format!("{prefix}{i}"), now_epoch_ms(), i) else {
                return;
            };
            if send(&producer, &m).await.is_err() {
                return;
            }
        }
    });
}

/// The simulated handler, noting when it first handled a fresh record (and
/// how many pile records it handled before), when it had handled the whole
/// pile, and how many records it handled.
struct Probe {
    handler: SimulatedHandler,
    /// Records in the pile.
    pile: u64,
    pile_handled: AtomicU64,
    fresh_handled: AtomicU64,
    /// Fresh records of the round's other consumer's run.
    other_handled: AtomicU64,
    first_fresh: tokio::sync::watch::Sender<Option<(Instant, u64)>>,
    pile_done: tokio::sync::watch::Sender<Option<Instant>>,
}

#[async_trait]
impl Sink for Probe {
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        self.handler.deliver(batch).await?;
        let (mut fresh, mut stale) = (0, 0);
        for d in batch {
            let id = d.message.message_id();
            if id.starts_with(LANEWAY_FRESH) {
                fresh += 1;
            } else if id.starts_with(PILE) {
                stale += 1;
            }
        }
        self.other_handled
            .fetch_add(batch.len() as u64 - fresh - stale, Ordering::Relaxed);
        let before = self.pile_handled.fetch_add(stale, Ordering::Relaxed);
        self.fresh_handled.fetch_add(fresh, Ordering::Relaxed);
        if fresh > 0 {
            self.first_fresh.send_if_modified(|first| {
                let unset = first.is_none();
                if unset {
                    *first = Some((Instant::now(), before));
                }
                unset
            });
        }
        if before < self.pile && before + stale >= self.pile {
            self.pile_done.send_replace(Some(Instant::now()));
        }
        Ok(())
    }
}

/// Measures what the consumer started next spends: the librdkafka threads
/// alive now (`rdk:` names) are the mock cluster's and the producer's, and
/// `producer polling thread` (cut to 15 bytes by Linux) is the producer's.
fn cpu_meter() -> Option<CpuMeter> {
    CpuMeter::start(|thread| thread.starts_with("rdk:") || thread.starts_with("producer poll"))
}

async fn time_laneway(
    options: &CatchUpOptions,
    pile: u64,
    brokers: &str,
    producer: &FutureProducer,
) -> Result<Timing, String> {
    let meter = cpu_meter();
    let (first_fresh, mut seen) = tokio::sync::watch::channel(None);
    let (pile_done, mut done) = tokio::sync::watch::channel(None);
    let probe = Arc::new(Probe {
        handler: SimulatedHandler::with_servers(options.cost, options.slots),
        pile,
        pile_handled: AtomicU64::new(0),
        fresh_handled: AtomicU64::new(0),
        other_handled: AtomicU64::new(0),
        first_fresh,
        pile_done,
    });
    let source = KafkaSource::new(KafkaSourceConfig {
        brokers: brokers.to_string(),
        topics: vec!["pile".into()],
        group_id: "laneway".into(),
        ..KafkaSourceConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let engine = Engine::builder()
        .group_with(
            GroupConfig {
                slots: options.slots,
                batch_size: options.batch,
                validate_json: false,
                ..GroupConfig::named("bench")
            },
            Arc::clone(&probe) as Arc<dyn Sink>,
            None,
        )
        .source(source, LanePolicy::Auto)
        .build()
        .map_err(|e| e.to_string())?;
    let monitor = engine.monitor();
    let stop = CancellationToken::new();
    let start = Instant::now();
    let run = tokio::spawn(engine.run(stop.clone().cancelled_owned()));
    keep_producing_fresh(producer.clone(), stop.clone(), LANEWAY_FRESH);
    let deadline = tokio::time::Instant::now() + options.max_run;
    // The source says it is connected once its partitions are assigned;
    // nothing wakes on that, so look every millisecond.
    let mut joined = None;
    let mut look = tokio::time::interval(Duration::from_millis(1));
    while tokio::time::Instant::now() < deadline {
        look.tick().await;
        if monitor.sources().iter().all(|(_, s)| s.connected) {
            joined = Some(Instant::now());
            break;
        }
    }
    let first = match joined {
        Some(_) => tokio::time::timeout_at(deadline, seen.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|first| *first)),
        None => None,
    };
    let drained = match first {
        Some(_) => tokio::time::timeout_at(deadline, done.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|at| *at)),
        None => None,
    };
    stop.cancel();
    let _ = run.await;
    let handled = probe.pile_handled.load(Ordering::Relaxed)
        + probe.fresh_handled.load(Ordering::Relaxed)
        + probe.other_handled.load(Ordering::Relaxed);
    let cpu = meter.and_then(|m| m.elapsed());
    Ok(timing(start, joined, first, drained, handled, cpu))
}

/// A run's timing from its start, join, first fresh record and the pile's
/// end, and its CPU time per record handled.
fn timing(
    start: Instant,
    joined: Option<Instant>,
    first: Option<(Instant, u64)>,
    drained: Option<Instant>,
    handled: u64,
    cpu: Option<Duration>,
) -> Timing {
    let since_join = |at: Instant| joined.map(|j| ms(at.saturating_duration_since(j)));
    Timing {
        joined_ms: joined.map(|j| ms(j - start)),
        to_fresh_ms: first.and_then(|(at, _)| since_join(at)),
        pile_before: first.map_or(0, |(_, before)| before),
        pile_done_ms: drained.and_then(since_join),
        handled,
        cpu_us_per_msg: cpu
            .filter(|_| handled > 0)
            .map(|c| c.as_secs_f64() * 1e6 / handled as f64),
    }
}

/// The plain consumer's callbacks: when its partitions were assigned.
struct Joined(std::sync::OnceLock<Instant>);

impl rdkafka::ClientContext for Joined {}

impl rdkafka::consumer::ConsumerContext for Joined {
    fn post_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if matches!(rebalance, rdkafka::consumer::Rebalance::Assign(_)) {
            let _ = self.0.set(Instant::now());
        }
    }
}

async fn time_plain(
    options: &CatchUpOptions,
    pile: u64,
    brokers: &str,
    producer: &FutureProducer,
) -> Result<Timing, String> {
    let meter = cpu_meter();
    let consumer: StreamConsumer<Joined> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "plain")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create_with_context(Joined(std::sync::OnceLock::new()))
        .map_err(|e| format!("consumer: {e}"))?;
    consumer
        .subscribe(&["pile"])
        .map_err(|e| format!("subscribing: {e}"))?;
    let stop = CancellationToken::new();
    let start = Instant::now();
    keep_producing_fresh(producer.clone(), stop.clone(), PLAIN_FRESH);
    // The same capacity as laneway's handler: `slots / cost` per second,
    // paid in steps of at least a millisecond (the timer's resolution).
    let per_message = options.cost.as_secs_f64() / options.slots.max(1) as f64;
    let mut owed = 0.0f64;
    let (mut pile_handled, mut fresh_handled, mut other_handled) = (0u64, 0u64, 0u64);
    let mut first = None;
    let deadline = tokio::time::Instant::now() + options.max_run;
    // Until the first fresh record and the whole pile are handled (fresh
    // records land in partitions it finishes early, so the first fresh one
    // can come before the pile's end).
    let drained = loop {
        let record = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break None,
            Ok(Err(e)) => {
                stop.cancel();
                return Err(format!("plain consumer: {e}"));
            }
            Ok(Ok(r)) => r,
        };
        owed += per_message;
        if owed >= 0.001 {
            tokio::time::sleep(Duration::from_secs_f64(owed)).await;
            owed = 0.0;
        }
        let id = record.headers().and_then(|h| {
            use rdkafka::message::Headers as _;
            h.iter()
                .find(|h| h.key == "messageId")
                .and_then(|h| h.value)
        });
        let starts = |prefix: &str| id.is_some_and(|id| id.starts_with(prefix.as_bytes()));
        if starts(PLAIN_FRESH) {
            fresh_handled += 1;
            first.get_or_insert((Instant::now(), pile_handled));
        } else if starts(PILE) {
            pile_handled += 1;
        } else {
            other_handled += 1;
        }
        if first.is_some() && pile_handled >= pile {
            break Some(Instant::now());
        }
    };
    stop.cancel();
    let joined = consumer.context().0.get().copied();
    let cpu = meter.and_then(|m| m.elapsed());
    let handled = pile_handled + fresh_handled + other_handled;
    Ok(timing(start, joined, first, drained, handled, cpu))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
