//! AMQP consumption benchmark on a real RabbitMQ (`AMQP_URL`, default the
//! local broker): the same number of simulated messages consumed by
//!
//! - a tuned plain lapin consumer (prefetch 1000, one `multiple` ack per 250),
//! - a naive plain lapin consumer (prefetch 1, one ack per message),
//! - laneway (the AMQP source, prefetch 1000, into a null sink).
//!
//! `cargo bench --bench amqp` prints a Markdown table (the one in
//! docs/benchmarks.md). `LANEWAY_BENCH_MESSAGES` sets the count (default
//! 100000). Each run reads its own queue; every queue is bound to one
//! exchange, so they all hold the very same messages. The tuned consumer and
//! laneway run three times each, interleaved (the broker and the machine are
//! shared, so their speed drifts), and the median is reported; the naive
//! consumer runs once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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

use support::broker::{bind_all, declare_exchange, declare_queue, simulate, url};

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

/// laneway: the AMQP source into a null sink, until `n` are delivered.
async fn laneway_consumer(queue: &str, n: u64) -> Duration {
    let source = AmqpSource::new(AmqpSourceConfig {
        url: Some(url()),
        queues: vec![queue.to_string()],
        declare: false,
        ..AmqpSourceConfig::default()
    })
    .unwrap();
    let engine = Engine::builder()
        .group(
            GroupConfig {
                validate_json: false,
                ..GroupConfig::named("null")
            },
            NullSink,
        )
        // Every message takes the live lane: the benchmark measures the live path.
        .source(source, LanePolicy::Live)
        .build()
        .unwrap();
    let monitor = engine.monitor();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let start = Instant::now();
    let run = tokio::spawn(engine.run(async {
        let _ = stop_rx.await;
    }));
    // Counters only: polling must not take CPU from the broker and the consumer.
    while monitor.delivered() < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    let _ = stop_tx.send(());
    let _ = run.await;
    elapsed
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs without it: stay quick then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("amqp benchmark: run with `cargo bench --bench amqp`");
        return;
    }
    let n: u64 = std::env::var("LANEWAY_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let tag = format!("laneway-bench.{}", std::process::id());
    let exchange = format!("{tag}.x");
    const ROUNDS: usize = 3;
    let queues: Vec<String> = (0..ROUNDS)
        .flat_map(|i| [format!("{tag}.tuned.{i}"), format!("{tag}.laneway.{i}")])
        .chain([format!("{tag}.naive")])
        .collect();
    let (conn, ch) = channel().await;
    declare_exchange(&ch, &exchange).await;
    for q in &queues {
        declare_queue(&ch, q, FieldTable::default()).await;
        bind_all(&ch, q, &exchange).await;
    }
    eprintln!(
        "publishing {n} simulated messages to {} queues ...",
        queues.len()
    );
    simulate(&exchange, n, &["--no-queue", "--transient"]);

    let mut tuned = Vec::new();
    let mut lanes = Vec::new();
    for i in 0..ROUNDS {
        eprintln!("round {i}: tuned ...");
        tuned.push(plain(&queues[2 * i], n, 1000, 250).await);
        eprintln!("round {i}: laneway ...");
        lanes.push(laneway_consumer(&queues[2 * i + 1], n).await);
    }
    eprintln!("tuned runs {tuned:?}, laneway runs {lanes:?}");
    eprintln!("naive ...");
    let naive = plain(&queues[2 * ROUNDS], n, 1, 1).await;
    tuned.sort();
    lanes.sort();
    let (tuned, lane) = (tuned[ROUNDS / 2], lanes[ROUNDS / 2]);

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("| consumer | messages | seconds | msgs/s | laneway ÷ this |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, d) in [
        ("tuned lapin (prefetch 1000, ack multiple per 250)", tuned),
        ("naive lapin (prefetch 1, ack per message)", naive),
        ("laneway (AMQP source → null sink)", lane),
    ] {
        println!(
            "| {name} | {n} | {:.2} | {:.0} | {:.2}× |",
            d.as_secs_f64(),
            rate(d),
            rate(lane) / rate(d)
        );
    }
    let names: Vec<&str> = queues.iter().map(String::as_str).collect();
    support::broker::cleanup(&ch, &names, &[&exchange]).await;
    let _ = conn.close(200, "done".into()).await;
}
