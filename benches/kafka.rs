//! Kafka consumption benchmark against librdkafka's mock cluster (started
//! in this process; three brokers, 32 partitions by default): the same
//! topic read to its end by
//!
//! - **plain**: a plain `rdkafka` `StreamConsumer` (its own consumer group,
//!   counting records, committing nothing) with the fetch settings of
//!   laneway's source, so that both fetch alike,
//! - **plain-headers**: the same, also reading each record's headers, key
//!   and payload (borrowed), as any consumer of the platform's records
//!   must: what reading the headers costs the client itself,
//! - **laneway**: the Kafka source with its defaults, one group with the
//!   group defaults (`validate_json` on, as a new user gets it), live lane,
//!   a null sink, committing done offsets as it goes; catch-up off, so that
//!   every record goes through the live lane in order as the plain
//!   consumer reads them (live-first catch-up has its own scenario,
//!   `laneway bench --scenario catch-up`),
//! - **before** (only with `LANEWAY_BENCH_BEFORE=<path>`): the same laneway
//!   round run by another build of this benchmark (an older commit), so a
//!   change is measured against what it replaces in the same run.
//!
//! Both use mimalloc for Rust's allocations, with the settings the
//! `laneway` program makes (`support::measure::program_allocator`).
//! Each consumer runs in a child process of its own (this executable run
//! again with `LANEWAY_BENCH_ROLE`), so that its CPU time and its memory are
//! its alone: the mock cluster, which holds the whole topic in memory, stays
//! in this process. Per round and consumer: messages per second and CPU
//! time per message (user + system, summed over the process's threads from
//! `/proc/self/task/*/schedstat`, in nanoseconds), both from the first
//! record to the last, and the peak (`VmHWM`) and end (`VmRSS`) resident
//! memory of the child. Rounds are interleaved (the machine is shared), in
//! a fresh consumer group each time, their order rotating; the median and
//! the range are reported, and each ratio to the plain consumer is the
//! median of the per-round ratios.
//!
//! `cargo bench --features kafka --bench kafka`. Knobs (environment):
//! `LANEWAY_BENCH_MESSAGES` (default 200000), `LANEWAY_BENCH_PARTITIONS`
//! (default 32), `LANEWAY_BENCH_ROUNDS` (default 5), `LANEWAY_BENCH_BEFORE`,
//! `LANEWAY_BENCH_PREFETCHES` (a comma-separated list of `prefetch_kbytes`
//! values: one more laneway contestant for each).
//! Without `--bench` (`cargo test --benches`, or the executable run by
//! hand) it is a smoke: 20,000 records, one round.
//! librdkafka's mock keeps at most 5 MiB per partition and drops the oldest
//! records beyond it: the benchmark checks that the topic holds every
//! record it produced and stops when not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use laneway::engine::{Engine, EngineOptions, GroupConfig};
use laneway::kafka::{KafkaSource, KafkaSourceConfig};
use laneway::message::now_epoch_ms;
use laneway::source::LanePolicy;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use support::counting_sink::CountingSink;
use support::measure::{
    Round, child_round, env_or, median_range, program_allocator, thread_cpu_time,
};

/// The allocator the `laneway` program uses, so that laneway's figures are
/// the program's; as there, it also serves librdkafka's `malloc` and `free`
/// (mimalloc's `override` feature), for every consumer alike.
/// The consumers' processes get the program's allocator settings unless
/// `MIMALLOC_*` variables set for the bench say otherwise.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOPIC: &str = "bench";

/// Clocks taken at the first record and at the last.
struct Span {
    wall: Instant,
    cpu: Duration,
}

impl Span {
    fn start() -> Span {
        Span {
            wall: Instant::now(),
            cpu: thread_cpu_time(),
        }
    }

    /// The round's figures, `n - 1` records after the first.
    fn end(self, n: u64) -> Round {
        Round::of(n - 1, self.wall.elapsed(), thread_cpu_time() - self.cpu)
    }
}

async fn plain(brokers: &str, group: &str, n: u64) -> Round {
    let consumer = plain_consumer(brokers, group);
    consumer.recv().await.unwrap();
    let span = Span::start();
    for _ in 1..n {
        consumer.recv().await.unwrap();
    }
    span.end(n)
}

/// A plain `StreamConsumer` in `group`, subscribed to the topic.
fn plain_consumer(brokers: &str, group: &str) -> StreamConsumer {
    // The fetch settings laneway's source uses, so that both read alike:
    // with librdkafka's defaults a full local queue pauses fetching for a
    // whole second (`fetch.queue.backoff.ms`), and plain then read 200,000
    // records at 0.19 M/s in some rounds and 2 M/s in others.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set(
            "queued.max.messages.kbytes",
            KafkaSourceConfig::default().prefetch_kbytes.to_string(),
        )
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.wait.max.ms", "100")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    consumer
}

/// The plain consumer that also reads what a message is made of, as any
/// consumer of the platform's records must: each record's headers (the
/// platform's `topic`, `messageId` and `generateTime`), its key and its
/// payload, borrowed, nothing copied. It measures what reading the headers
/// costs the client itself (librdkafka parses them into a list, one
/// allocation per header), which the counting consumer never pays.
async fn plain_headers(brokers: &str, group: &str, n: u64) -> Round {
    use rdkafka::Message as _;
    use rdkafka::message::Headers as _;
    let consumer = plain_consumer(brokers, group);
    let read = |m: &rdkafka::message::BorrowedMessage<'_>| {
        let mut seen = m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len);
        if let Some(headers) = m.headers() {
            for h in headers.iter() {
                if matches!(h.key, "topic" | "messageId" | "generateTime") {
                    seen += h.value.map_or(0, <[u8]>::len);
                }
            }
        }
        std::hint::black_box(seen);
    };
    read(&consumer.recv().await.unwrap());
    let span = Span::start();
    for _ in 1..n {
        read(&consumer.recv().await.unwrap());
    }
    span.end(n)
}

async fn laneway(brokers: &str, group: &str, n: u64) -> Round {
    let source = KafkaSource::new(KafkaSourceConfig {
        brokers: brokers.to_string(),
        topics: vec![TOPIC.into()],
        group_id: group.to_string(),
        catch_up: false,
        prefetch_kbytes: env_or(
            "LANEWAY_BENCH_PREFETCH",
            KafkaSourceConfig::default().prefetch_kbytes,
        ),
        ..KafkaSourceConfig::default()
    })
    .unwrap();
    let (sink, marks) = CountingSink::new(n);
    let engine = Engine::builder()
        .group_with(GroupConfig::named("bench"), Arc::new(sink), None)
        .source(source, LanePolicy::Live)
        .options(EngineOptions {
            finish_when_drained: false,
            ..EngineOptions::default()
        })
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(engine.run(async {
        let _ = stop_rx.await;
    }));
    // Told by the sink, not polled: a timer polled from the runtime wakes
    // its workers at every tick (see `CountingSink`).
    marks
        .first
        .await
        .expect("the engine ended before its sink had a message");
    let span = Span::start();
    marks
        .all
        .await
        .expect("the engine ended before its sink had every message");
    let round = span.end(n);
    let _ = stop_tx.send(());
    run.await.unwrap();
    round
}

/// In a child: one round of one consumer, its figures on stdout.
fn child(role: &str) {
    let brokers = std::env::var("LANEWAY_BENCH_BROKERS").unwrap();
    let group = std::env::var("LANEWAY_BENCH_GROUP").unwrap();
    let n: u64 = env_or("LANEWAY_BENCH_MESSAGES", 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let round = rt.block_on(async {
        match role {
            "plain" => plain(&brokers, &group, n).await,
            "plain-headers" => plain_headers(&brokers, &group, n).await,
            "laneway" => laneway(&brokers, &group, n).await,
            other => panic!("unknown role {other}"),
        }
    });
    println!("{}", round.line());
}

/// Records the topic holds (high minus low watermark, every partition).
fn records_held(brokers: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .sum()
}

/// Runs one round of `role` in a child process of `exe`, with `prefetch`
/// (KiB) as the laneway source's `prefetch_kbytes` when given.
fn spawn_round(
    exe: &str,
    role: &str,
    prefetch: Option<u32>,
    brokers: &str,
    group: &str,
    n: u64,
) -> Round {
    let mut command = Command::new(exe);
    if let Some(kb) = prefetch {
        command.env("LANEWAY_BENCH_PREFETCH", kb.to_string());
    }
    command
        .env("LANEWAY_BENCH_ROLE", role)
        .env("LANEWAY_BENCH_BROKERS", brokers)
        .env("LANEWAY_BENCH_GROUP", group)
        .env("LANEWAY_BENCH_MESSAGES", n.to_string())
        .env_remove("LANEWAY_BENCH_BEFORE");
    program_allocator(&mut command);
    child_round(command, &format!("{role} ({exe})"))
}

fn main() {
    if let Ok(role) = std::env::var("LANEWAY_BENCH_ROLE") {
        return child(&role);
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` runs without
    // it: a smoke then, one small round.
    let full = std::env::args().any(|a| a == "--bench");
    let n: u64 = env_or(
        "LANEWAY_BENCH_MESSAGES",
        if full { 200_000 } else { 20_000 },
    );
    let partitions: i32 = env_or("LANEWAY_BENCH_PARTITIONS", 32);
    let rounds: usize = env_or("LANEWAY_BENCH_ROUNDS", if full { 5 } else { 1 });
    let before = std::env::var("LANEWAY_BENCH_BEFORE").ok();
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap().to_string();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = support::kafka::cluster(&[TOPIC], partitions);
    let brokers = cluster.bootstrap_servers();
    let now = now_epoch_ms();
    let sent = support::records::json_records("b", n, |_| now);
    rt.block_on(support::kafka::produce(&brokers, TOPIC, &sent));
    drop(sent);
    let held = records_held(&brokers, partitions);
    assert_eq!(
        held, n as i64,
        "the mock cluster kept {held} of the {n} records produced (it keeps at most 5 MiB per partition): use more partitions or fewer records"
    );

    // (name, executable, role, prefetch)
    let mut contestants = vec![
        ("plain".to_string(), exe.clone(), "plain", None),
        (
            "plain-headers".to_string(),
            exe.clone(),
            "plain-headers",
            None,
        ),
        ("laneway".to_string(), exe.clone(), "laneway", None),
    ];
    if let Some(path) = &before {
        contestants.push(("before".to_string(), path.clone(), "laneway", None));
    }
    // More laneway contestants, one per prefetch size given (KiB).
    for kb in std::env::var("LANEWAY_BENCH_PREFETCHES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kb| kb.trim().parse::<u32>().ok())
    {
        contestants.push((
            format!("laneway-prefetch-{kb}"),
            exe.clone(),
            "laneway",
            Some(kb),
        ));
    }
    println!(
        "kafka bench: {n} records, {partitions} partitions, {rounds} rounds, mock cluster of 3 brokers; laneway: live lane of {} messages, prefetch {} KiB{}",
        GroupConfig::default().live_capacity,
        KafkaSourceConfig::default().prefetch_kbytes,
        before
            .as_deref()
            .map(|b| format!("; before: {b}"))
            .unwrap_or_default()
    );
    println!("round consumer msgs/s cpu_us/msg peak_rss_mib end_rss_mib");
    let mut results: Vec<Vec<Round>> = vec![Vec::new(); contestants.len()];
    for round in 0..rounds {
        for k in 0..contestants.len() {
            let i = (round + k) % contestants.len();
            let (name, path, role, prefetch) = &contestants[i];
            let r = spawn_round(
                path,
                role,
                *prefetch,
                &brokers,
                &format!("{name}-{round}"),
                n,
            );
            println!(
                "{round} {name} {:.0} {:.3} {:.1} {:.1}",
                r.rate, r.cpu_us, r.peak_mib, r.end_mib
            );
            results[i].push(r);
        }
    }

    println!();
    println!(
        "| consumer | msgs/s (median, range) | CPU µs/msg | peak RSS MiB | end RSS MiB | ratio to plain: msgs/s, CPU/msg, peak RSS | ratio to plain-headers: msgs/s, CPU/msg |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let plain_runs = results[0].clone();
    let headers_runs = results[1].clone();
    for ((name, _, _, _), runs) in contestants.iter().zip(&results) {
        let cell = |f: fn(&Round) -> f64, digits: usize| median_range(runs.iter().map(f), digits);
        let ratio = |anchor: &[Round], f: fn(&Round) -> f64| {
            median_range(runs.iter().zip(anchor).map(|(r, p)| f(r) / f(p)), 2)
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} / {} / {} | {} / {} |",
            cell(|r| r.rate, 0),
            cell(|r| r.cpu_us, 2),
            cell(|r| r.peak_mib, 0),
            cell(|r| r.end_mib, 0),
            ratio(&plain_runs, |r| r.rate),
            ratio(&plain_runs, |r| r.cpu_us),
            ratio(&plain_runs, |r| r.peak_mib),
            ratio(&headers_runs, |r| r.rate),
            ratio(&headers_runs, |r| r.cpu_us),
        );
    }
}
