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
//! Part two, first fresh: a pile of stale messages (two hours old) with one
//! fresh message behind it; the time until the fresh message is delivered,
//! for laneway (lane `auto`: the pile to the disk backlog, the fresh one
//! live) and for the tuned plain consumer reading and acking the pile.
//!
//! `cargo bench --bench amqp` prints Markdown tables (docs/benchmarks.md):
//! per consumer the median and range over rounds of messages/s and CPU
//! time per message (this process's: the consumers run in it one at a
//! time; the broker's CPU is not counted), and each ratio as the median of
//! the per-round ratios. Each round's queues are bound to one exchange and
//! filled together, so they hold the very same messages; the consumers'
//! order rotates from round to round. `LANEWAY_BENCH_MESSAGES` (default
//! 100000), `LANEWAY_BENCH_PILE` (default 200000) and
//! `LANEWAY_BENCH_ROUNDS` (default 5) set the sizes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use laneway::amqp::{AmqpSource, AmqpSourceConfig};
use laneway::engine::{Engine, GroupConfig};
use laneway::sink::NullSink;
use laneway::source::LanePolicy;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

#[path = "../tests/support/mod.rs"]
mod support;

use laneway::backlog::{BacklogStore, DiskBacklog, DiskBacklogConfig};
use support::broker::{bind_all, declare_exchange, declare_queue, simulate, url};
use support::measure::{cpu_time, env_or, median_and_range};

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
    let engine = Engine::builder()
        .group_with(
            GroupConfig {
                validate_json: false,
                // The fresh message waits behind the pile and the other
                // consumer's run: it must still count as fresh when read.
                live_window: Duration::from_secs(600),
                ..GroupConfig::named("null")
            },
            Arc::new(NullSink),
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
    if path == Path::FirstFresh {
        // Polled like the counters below: waiting with `Monitor::until`
        // would wake this task, and snapshot every group, at each batch of
        // the pile.
        let fresh = async {
            while !monitor.groups().iter().any(|g| g.delivered_live > 0) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(300), fresh)
            .await
            .expect("the fresh message delivered within 300 s");
    } else {
        // Counters only: polling must not take CPU from the broker and the consumer.
        while monitor.delivered() < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let elapsed = start.elapsed();
    let _ = stop_tx.send(());
    let _ = run.await;
    elapsed
}

/// One consumer's figures over the rounds.
#[derive(Default)]
struct Figures {
    rates: Vec<f64>,
    cpu_us: Vec<f64>,
    seconds: Vec<f64>,
}

impl Figures {
    fn add(&mut self, n: u64, wall: Duration, cpu: Duration) {
        self.rates.push(n as f64 / wall.as_secs_f64());
        self.cpu_us.push(cpu.as_secs_f64() * 1e6 / n as f64);
        self.seconds.push(wall.as_secs_f64());
    }
}

/// Runs `consume` and measures it: wall time, and this process's CPU time.
async fn measured(consume: impl std::future::Future<Output = Duration>) -> (Duration, Duration) {
    let cpu = cpu_time();
    let wall = consume.await;
    (wall, cpu_time().saturating_sub(cpu))
}

fn median_range(values: &[f64], digits: usize) -> String {
    let mut v = values.to_vec();
    let (m, lo, hi) = median_and_range(&mut v);
    format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

/// The median and range of `a[i] / b[i]` over rounds.
fn ratio(a: &[f64], b: &[f64]) -> String {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median_range(&r, 2)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs without it: stay quick then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("amqp benchmark: run with `cargo bench --bench amqp`");
        return;
    }
    let n: u64 = env_or("LANEWAY_BENCH_MESSAGES", 100_000);
    let pile: u64 = env_or("LANEWAY_BENCH_PILE", 200_000);
    let rounds: usize = env_or("LANEWAY_BENCH_ROUNDS", 5usize).max(1);
    let tag = format!("laneway-bench.{}", std::process::id());
    let exchange = format!("{tag}.x");
    let (conn, ch) = channel().await;
    declare_exchange(&ch, &exchange).await;

    // Part one: the same messages, four ways.
    let names = ["tuned", "laneway live", "laneway stale", "naive"];
    let mut figures: Vec<Figures> = names.iter().map(|_| Figures::default()).collect();
    for round in 0..rounds {
        let kinds: Vec<usize> = if round == 0 {
            vec![0, 1, 2, 3]
        } else {
            vec![0, 1, 2]
        };
        let queues: Vec<String> = kinds.iter().map(|k| format!("{tag}.{round}.{k}")).collect();
        for q in &queues {
            declare_queue(&ch, q, FieldTable::default()).await;
            bind_all(&ch, q, &exchange).await;
        }
        eprintln!(
            "round {round}: publishing {n} simulated messages to {} queues ...",
            queues.len()
        );
        simulate(&exchange, n, &["--no-queue", "--transient"]);
        // The naive consumer (slow) runs last; the others rotate.
        let mut order: Vec<usize> = (0..3).map(|i| (i + round) % 3).collect();
        if round == 0 {
            order.push(3);
        }
        for k in order {
            let q = &queues[k];
            eprintln!("round {round}: {} ...", names[k]);
            let (wall, cpu) = match k {
                0 => measured(plain(q, n, 1000, 250)).await,
                1 => measured(laneway_consumer(q, n, Path::Live)).await,
                2 => measured(laneway_consumer(q, n, Path::Stale)).await,
                _ => measured(plain(q, n, 1, 1)).await,
            };
            println!(
                "round {round}: {}: {n} messages in {:.3} s, CPU {:.3} s",
                names[k],
                wall.as_secs_f64(),
                cpu.as_secs_f64()
            );
            figures[k].add(n, wall, cpu);
        }
        let names: Vec<&str> = queues.iter().map(String::as_str).collect();
        support::broker::cleanup(&ch, &names, &[]).await;
    }
    println!("\n{n} messages, {rounds} rounds (naive: one)\n");
    println!("| consumer | msgs/s (median, range) | CPU µs/msg | ÷ tuned: msgs/s / CPU per msg |");
    println!("| --- | ---: | ---: | ---: |");
    let tuned = &figures[0];
    for (name, f) in names.iter().zip(&figures) {
        let vs = if f.rates.len() == tuned.rates.len() {
            format!(
                "{} / {}",
                ratio(&f.rates, &tuned.rates),
                ratio(&f.cpu_us, &tuned.cpu_us)
            )
        } else {
            format!(
                "{:.2} / {:.2}",
                f.rates[0] / tuned.rates[0],
                f.cpu_us[0] / tuned.cpu_us[0]
            )
        };
        println!(
            "| {name} | {} | {} | {vs} |",
            median_range(&f.rates, 0),
            median_range(&f.cpu_us, 2)
        );
    }

    // Part two: the first fresh message behind a pile.
    let mut plain_s = Figures::default();
    let mut lane_s = Figures::default();
    for round in 0..rounds {
        let queues = [
            format!("{tag}.pile.{round}.plain"),
            format!("{tag}.pile.{round}.laneway"),
        ];
        for q in &queues {
            declare_queue(&ch, q, FieldTable::default()).await;
            bind_all(&ch, q, &exchange).await;
        }
        eprintln!("round {round}: publishing a pile of {pile} stale messages and one fresh ...");
        simulate(
            &exchange,
            pile,
            &["--no-queue", "--transient", "--age", "1h"],
        );
        simulate(&exchange, 1, &["--no-queue", "--transient", "--seed", "99"]);
        let plain_first = round % 2 == 0;
        for which in [plain_first, !plain_first] {
            if which {
                eprintln!("round {round}: tuned reads the pile ...");
                let (wall, cpu) = measured(plain(&queues[0], pile + 1, 1000, 250)).await;
                println!(
                    "round {round}: tuned, pile of {pile}: fresh message after {:.3} s, CPU {:.3} s",
                    wall.as_secs_f64(),
                    cpu.as_secs_f64()
                );
                plain_s.add(pile + 1, wall, cpu);
            } else {
                eprintln!("round {round}: laneway, until the fresh message ...");
                let (wall, cpu) =
                    measured(laneway_consumer(&queues[1], pile + 1, Path::FirstFresh)).await;
                println!(
                    "round {round}: laneway, pile of {pile}: fresh message after {:.3} s, CPU {:.3} s",
                    wall.as_secs_f64(),
                    cpu.as_secs_f64()
                );
                lane_s.add(pile + 1, wall, cpu);
            }
        }
        let names: Vec<&str> = queues.iter().map(String::as_str).collect();
        support::broker::cleanup(&ch, &names, &[]).await;
    }
    println!("\nfirst fresh message behind a pile of {pile} stale ones, {rounds} rounds\n");
    println!(
        "| consumer | seconds to the fresh message (median, range) | CPU µs per pile message | ÷ tuned: seconds / CPU |"
    );
    println!("| --- | ---: | ---: | ---: |");
    for (name, f) in [
        ("tuned lapin reads and acks the pile", &plain_s),
        ("laneway (pile to the disk backlog, fresh live)", &lane_s),
    ] {
        println!(
            "| {name} | {} | {} | {} / {} |",
            median_range(&f.seconds, 2),
            median_range(&f.cpu_us, 2),
            ratio(&f.seconds, &plain_s.seconds),
            ratio(&f.cpu_us, &plain_s.cpu_us)
        );
    }
    support::broker::cleanup(&ch, &[], &[&exchange]).await;
    let _ = conn.close(200, "done".into()).await;
}
