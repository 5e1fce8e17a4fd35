//! AMQP consumption benchmark on a real RabbitMQ (`AMQP_URL`, default the
//! local broker). Part one: the same simulated messages consumed by
//!
//! - a tuned plain lapin consumer (prefetch 1000, one `multiple` ack per 250),
//! - laneway live: the AMQP source (prefetch 1000) into a null sink, every
//!   message through the live lane,
//! - laneway stale: the same, every message through the disk backlog,
//! - and, in the first round only, a naive plain lapin consumer (prefetch 1,
//!   one ack per message).
//!
//! Part two, first fresh: a pile of stale messages (an hour old) with one
//! fresh message behind it; the time until the fresh message is delivered,
//! for laneway (lane `auto`: the pile to the disk backlog, the fresh one
//! live) and for the tuned plain consumer reading and acking the pile.
//!
//! `cargo bench --bench amqp` prints Markdown tables (docs/benchmarks.md).
//! Each consumer runs in a child process of its own (this executable run
//! again with `LANEWAY_BENCH_ROLE`), so that its CPU time and its memory
//! are its alone. Per consumer, the median and range over rounds of
//! messages/s, CPU time per message (the child's user + system time, from
//! before it connects until its last message; the broker's CPU is not
//! counted) and the child's peak (`VmHWM`) and end (`VmRSS`) resident
//! memory; each ratio is the median of the per-round ratios. Both sides
//! use mimalloc with the settings the `laneway` program makes
//! (`support::measure::program_allocator`; `MIMALLOC_*` variables set for
//! the bench win, and reach every child).
//! Each round's queues are bound to one exchange and filled together, so
//! they hold the very same messages; the consumers' order rotates from
//! round to round. `LANEWAY_BENCH_MESSAGES` (default 100000),
//! `LANEWAY_BENCH_PILE` (default 200000) and `LANEWAY_BENCH_ROUNDS`
//! (default 5) set the sizes. Without `--bench` (`cargo test --benches`)
//! it is a smoke: 2,000 messages, a pile of 2,000, one round.
//! `LANEWAY_BENCH_BEFORE=<path>` adds the laneway stale and first-fresh
//! rounds of another build of this benchmark (an older commit), run in the
//! same rounds, so that a change is measured against what it replaces.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use laneway::amqp::{AmqpSource, AmqpSourceConfig};
use laneway::engine::{Engine, GroupConfig};
use laneway::source::LanePolicy;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

#[path = "../tests/support/mod.rs"]
mod support;

/// The allocator the `laneway` program uses, for both sides (lapin's and
/// laneway's allocations alike are Rust's).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use laneway::backlog::{BacklogStore, DiskBacklog, DiskBacklogConfig};
use support::broker::{bind_all, declare_exchange, declare_queue, simulate, url};
use support::counting_sink::CountingSink;
use support::measure::{Round, child_round, cpu_time, env_or, median_range, program_allocator};

async fn channel() -> (Connection, Channel) {
    let conn = support::broker::connection().await;
    let ch = conn.create_channel().await.expect("a channel");
    (conn, ch)
}

/// Plain lapin: prefetch `prefetch`, an ack every `ack_every` messages
/// (with `multiple` when more than one), until `n` are consumed.
async fn plain(queue: &str, n: u64, prefetch: u16, ack_every: u64) -> Duration {
    // Like laneway's, the clock includes connecting and starting the consumer.
    let start = Instant::now();
    let (conn, ch) = channel().await;
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = 0u64;
    while got < n {
        let d = consumer
            .next()
            .await
            .expect("a delivery")
            .expect("no error");
        got += 1;
        if got.is_multiple_of(ack_every) || got == n {
            ch.basic_ack(
                d.delivery_tag,
                BasicAckOptions {
                    multiple: ack_every > 1,
                },
            )
            .await
            .unwrap();
        }
    }
    let elapsed = start.elapsed();
    let _ = conn.close(200, "done".into()).await;
    elapsed
}

/// How laneway takes the queue's messages in.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// Every message through the live lane.
    Live,
    /// Every message through the disk backlog.
    Stale,
    /// Lane `auto` with a disk backlog: stale to the backlog, fresh live;
    /// done at the first live delivery.
    FirstFresh,
}

/// laneway: the AMQP source into a null sink, until `n` are delivered (or,
/// for [`Path::FirstFresh`], the first live delivery).
async fn laneway_consumer(queue: &str, n: u64, path: Path) -> Duration {
    let source = AmqpSource::new(AmqpSourceConfig {
        url: Some(url()),
        queues: vec![queue.to_string()],
        declare: false,
        ..AmqpSourceConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Option<Arc<dyn BacklogStore>> = match path {
        Path::Live => None,
        Path::Stale | Path::FirstFresh => Some(Arc::new(
            DiskBacklog::open(dir.path(), DiskBacklogConfig::default()).unwrap(),
        )),
    };
    let policy = match path {
        Path::Live => LanePolicy::Live,
        Path::Stale => LanePolicy::Backlog,
        Path::FirstFresh => LanePolicy::Auto,
    };
    let (sink, marks) = CountingSink::new(n);
    let engine = Engine::builder()
        .group_with(
            GroupConfig {
                validate_json: false,
                // The fresh message waits behind the pile and the other
                // consumer's run: it must still count as fresh when read.
                live_window: Duration::from_secs(600),
                ..GroupConfig::named("null")
            },
            Arc::new(sink),
            store,
        )
        .source(source, policy)
        .build()
        .unwrap();
    let monitor = engine.monitor();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let start = Instant::now();
    let run = tokio::spawn(engine.run(async {
        let _ = stop_rx.await;
    }));
    // Told by the sink, not polled: a timer polled from the runtime wakes
    // its workers at every tick (see `CountingSink`).
    if path == Path::FirstFresh {
        tokio::time::timeout(Duration::from_secs(300), marks.first_live)
            .await
            .expect("the fresh message delivered within 300 s")
            .expect("the engine ended before its sink had the fresh message");
        // The fresh message is the queue's last: when it is delivered the
        // whole pile must have been taken in, or the round measured
        // something other than reading through the pile.
        let ingested = monitor.intake().ingested;
        assert_eq!(
            ingested, n,
            "the fresh message was delivered after {ingested} of the queue's {n} messages were taken in"
        );
    } else {
        marks
            .all
            .await
            .expect("the engine ended before its sink had every message");
    }
    let elapsed = start.elapsed();
    let _ = stop_tx.send(());
    let _ = run.await;
    elapsed
}

/// The consumers, by the role a child process plays (the `before-` ones:
/// the role after the prefix, played by the `LANEWAY_BENCH_BEFORE` build).
const ROLES: [(&str, &str); 8] = [
    ("tuned", "tuned"),
    ("live", "laneway live"),
    ("stale", "laneway stale"),
    ("naive", "naive"),
    ("pile-tuned", "tuned lapin reads and acks the pile"),
    (
        "pile-laneway",
        "laneway (pile to the disk backlog, fresh live)",
    ),
    ("before-stale", "laneway stale, before"),
    ("before-pile-laneway", "laneway, before"),
];

/// The stale and first-fresh consumers of the `LANEWAY_BENCH_BEFORE` build.
const BEFORE_STALE: usize = 6;
const BEFORE_PILE: usize = 7;

/// In a child: one round of one consumer on `LANEWAY_BENCH_QUEUE`, its
/// figures on stdout.
fn child(role: &str) {
    let queue = std::env::var("LANEWAY_BENCH_QUEUE").unwrap();
    let n: u64 = env_or("LANEWAY_BENCH_MESSAGES", 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cpu = cpu_time();
    let wall = rt.block_on(async {
        match role {
            "tuned" | "pile-tuned" => plain(&queue, n, 1000, 250).await,
            "live" => laneway_consumer(&queue, n, Path::Live).await,
            "stale" => laneway_consumer(&queue, n, Path::Stale).await,
            "naive" => plain(&queue, n, 1, 1).await,
            "pile-laneway" => laneway_consumer(&queue, n, Path::FirstFresh).await,
            other => panic!("unknown role {other}"),
        }
    });
    let round = Round::of(n, wall, cpu_time().saturating_sub(cpu));
    println!("{}", round.line());
}

/// Runs one round of `role` on `queue` (`n` messages) in a child process:
/// of this executable, or of the `LANEWAY_BENCH_BEFORE` build for a
/// `before-` role.
fn spawn_round(role: &str, queue: &str, n: u64) -> Round {
    let (exe, role) = match role.strip_prefix("before-") {
        Some(theirs) => (
            std::env::var_os("LANEWAY_BENCH_BEFORE").unwrap().into(),
            theirs,
        ),
        None => (std::env::current_exe().unwrap(), role),
    };
    let mut command = std::process::Command::new(exe);
    command
        .env("LANEWAY_BENCH_ROLE", role)
        .env("LANEWAY_BENCH_QUEUE", queue)
        .env("LANEWAY_BENCH_MESSAGES", n.to_string());
    program_allocator(&mut command);
    let round = child_round(command, role);
    println!(
        "{role} on {queue}: {n} messages in {:.3} s, CPU {:.2} µs/msg, peak RSS {:.1} MiB, end {:.1} MiB",
        round.seconds, round.cpu_us, round.peak_mib, round.end_mib
    );
    round
}

/// The table of `rounds` per consumer (by index into [`ROLES`]), each
/// ratio to `anchor`'s rounds; a consumer with fewer rounds than the
/// anchor (the naive one) is compared with the anchor's first rounds.
fn table(title: &str, consumers: &[usize], rounds: &[Vec<Round>], anchor: usize) {
    println!("\n{title}\n");
    println!(
        "| consumer | msgs/s (median, range) | seconds | CPU µs/msg | peak RSS MiB | end RSS MiB | ÷ {}: msgs/s / seconds / CPU per msg / peak RSS |",
        ROLES[anchor].0
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &k in consumers {
        let runs = &rounds[k];
        let cell = |f: fn(&Round) -> f64, digits| median_range(runs.iter().map(f), digits);
        let ratio = |f: fn(&Round) -> f64| {
            median_range(
                runs.iter().zip(&rounds[anchor]).map(|(r, a)| f(r) / f(a)),
                2,
            )
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} / {} / {} / {} |",
            ROLES[k].1,
            cell(|r| r.rate, 0),
            cell(|r| r.seconds, 2),
            cell(|r| r.cpu_us, 2),
            cell(|r| r.peak_mib, 0),
            cell(|r| r.end_mib, 0),
            ratio(|r| r.rate),
            ratio(|r| r.seconds),
            ratio(|r| r.cpu_us),
            ratio(|r| r.peak_mib),
        );
    }
}

fn main() {
    if let Ok(role) = std::env::var("LANEWAY_BENCH_ROLE") {
        return child(&role);
    }
    // `cargo bench` passes --bench; `cargo test --benches` runs without
    // it: a smoke then, one small round of each part.
    let full = std::env::args().any(|a| a == "--bench");
    let n: u64 = env_or("LANEWAY_BENCH_MESSAGES", if full { 100_000 } else { 2_000 });
    let pile: u64 = env_or("LANEWAY_BENCH_PILE", if full { 200_000 } else { 2_000 });
    let rounds: usize = env_or("LANEWAY_BENCH_ROUNDS", if full { 5 } else { 1 }).max(1);
    let tag = format!("laneway-bench.{}", std::process::id());
    let exchange = format!("{tag}.x");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (conn, ch) = rt.block_on(channel());
    rt.block_on(declare_exchange(&ch, &exchange));
    let mut figures: Vec<Vec<Round>> = vec![Vec::new(); ROLES.len()];
    let before = std::env::var_os("LANEWAY_BENCH_BEFORE").is_some();
    let mut part_one = vec![0, 1, 2];
    let mut part_two = vec![4, 5];
    if before {
        part_one.push(BEFORE_STALE);
        part_two.push(BEFORE_PILE);
    }

    // Part one: the same messages, four ways (five with a before build).
    for round in 0..rounds {
        let mut kinds = part_one.clone();
        if round == 0 {
            kinds.push(3);
        }
        let queues: Vec<String> = kinds.iter().map(|k| format!("{tag}.{round}.{k}")).collect();
        rt.block_on(async {
            for q in &queues {
                declare_queue(&ch, q, FieldTable::default()).await;
                bind_all(&ch, q, &exchange).await;
            }
        });
        eprintln!(
            "round {round}: publishing {n} simulated messages to {} queues ...",
            queues.len()
        );
        simulate(&exchange, n, &["--no-queue", "--transient"]);
        // The naive consumer (slow) runs last; the others rotate.
        let rotating = part_one.len();
        let mut order: Vec<usize> = (0..rotating).map(|i| (i + round) % rotating).collect();
        if round == 0 {
            order.push(rotating);
        }
        for i in order {
            let k = kinds[i];
            let r = spawn_round(ROLES[k].0, &queues[i], n);
            figures[k].push(r);
        }
        let names: Vec<&str> = queues.iter().map(String::as_str).collect();
        rt.block_on(support::broker::cleanup(&ch, &names, &[]));
    }
    let mut shown = part_one.clone();
    shown.push(3);
    table(
        &format!("{n} messages, {rounds} rounds (naive: one)"),
        &shown,
        &figures,
        0,
    );

    // Part two: the first fresh message behind a pile.
    for round in 0..rounds {
        let queues: Vec<String> = part_two
            .iter()
            .map(|k| format!("{tag}.pile.{round}.{k}"))
            .collect();
        rt.block_on(async {
            for q in &queues {
                declare_queue(&ch, q, FieldTable::default()).await;
                bind_all(&ch, q, &exchange).await;
            }
        });
        eprintln!("round {round}: publishing a pile of {pile} stale messages and one fresh ...");
        simulate(
            &exchange,
            pile,
            &["--no-queue", "--transient", "--age", "1h"],
        );
        simulate(&exchange, 1, &["--no-queue", "--transient", "--seed", "99"]);
        let rotating = part_two.len();
        for i in (0..rotating).map(|i| (i + round) % rotating) {
            let k = part_two[i];
            let r = spawn_round(ROLES[k].0, &queues[i], pile + 1);
            figures[k].push(r);
        }
        let names: Vec<&str> = queues.iter().map(String::as_str).collect();
        rt.block_on(support::broker::cleanup(&ch, &names, &[]));
    }
    table(
        &format!(
            "first fresh message behind a pile of {pile} stale ones, {rounds} rounds (seconds: until the fresh message; per message: of the pile)"
        ),
        &part_two,
        &figures,
        4,
    );
    rt.block_on(async {
        support::broker::cleanup(&ch, &[], &[&exchange]).await;
        let _ = conn.close(200, "done".into()).await;
    });
}
