//! Kafka consumption benchmark against librdkafka's mock cluster (started
//! in this process; three brokers, 8 partitions): the same topic read to
//! its end by
//!
//! - a plain `rdkafka` `StreamConsumer` (its own consumer group, counting
//!   records, committing nothing),
//! - laneway (the Kafka source, live lane, a null sink, committing done
//!   offsets as it goes).
//!
//! `cargo bench --bench kafka` prints a Markdown table (the one in
//! docs/benchmarks.md). `LANEWAY_BENCH_MESSAGES` sets the count (default
//! 100000; the mock keeps a few MiB per partition). Each runs three times,
//! interleaved (the machine is shared), in a fresh consumer group each
//! time; the median is reported. Two clocks: from creating the consumer
//! (joining the group included, about 3 s on the mock cluster) to the last
//! record, and from the first record to the last (the consuming itself).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use laneway::engine::{Engine, EngineOptions, GroupConfig};
use laneway::kafka::{KafkaSource, KafkaSourceConfig};
use laneway::message::now_epoch_ms;
use laneway::sink::NullSink;
use laneway::source::LanePolicy;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};

/// The time to the last record from the start, and from the first record.
type Clocks = (Duration, Duration);

async fn plain(brokers: &str, group: &str, n: u64) -> Clocks {
    let start = Instant::now();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["bench"]).unwrap();
    consumer.recv().await.unwrap();
    let first = Instant::now();
    for _ in 1..n {
        consumer.recv().await.unwrap();
    }
    (start.elapsed(), first.elapsed())
}

async fn laneway(brokers: &str, group: &str, n: u64) -> Clocks {
    let start = Instant::now();
    let source = KafkaSource::new(KafkaSourceConfig {
        brokers: brokers.to_string(),
        topics: vec!["bench".into()],
        group_id: group.to_string(),
        // Every record in order through the live lane, as the plain
        // consumer reads them: this measures throughput. Live-first
        // catch-up has its own scenario (`laneway bench --scenario catch-up`).
        catch_up: false,
        ..KafkaSourceConfig::default()
    })
    .unwrap();
    let engine = Engine::builder()
        .group_with(
            GroupConfig {
                validate_json: false,
                ..GroupConfig::named("bench")
            },
            Arc::new(NullSink),
            None,
        )
        .source(source, LanePolicy::Live)
        .options(EngineOptions {
            finish_when_drained: false,
            ..EngineOptions::default()
        })
        .build()
        .unwrap();
    let monitor = engine.monitor();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(engine.run(async {
        let _ = stop_rx.await;
    }));
    monitor.until(|m| m.delivered() >= 1).await;
    let first = Instant::now();
    monitor.until(|m| m.delivered() >= n).await;
    let clocks = (start.elapsed(), first.elapsed());
    let _ = stop_tx.send(());
    run.await.unwrap();
    clocks
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n: u64 = std::env::var("LANEWAY_BENCH_MESSAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = support::kafka::cluster(&["bench"], 8);
    let brokers = cluster.bootstrap_servers();
    let now = now_epoch_ms();
    let sent = support::records::json_records("b", n, |_| now);
    rt.block_on(support::kafka::produce(&brokers, "bench", &sent));
    let (mut plain_runs, mut laneway_runs) = (Vec::new(), Vec::new());
    for round in 0..3 {
        plain_runs.push(rt.block_on(plain(&brokers, &format!("plain-{round}"), n)));
        laneway_runs.push(rt.block_on(laneway(&brokers, &format!("laneway-{round}"), n)));
    }
    let pick =
        |runs: &[Clocks], which: fn(&Clocks) -> Duration| median(runs.iter().map(which).collect());
    let total = |c: &Clocks| c.0;
    let consuming = |c: &Clocks| c.1;
    println!(
        "| consumer | messages | start to last (median) | first to last (median) | messages/s after the first |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, runs) in [
        ("plain rdkafka StreamConsumer", &plain_runs),
        ("laneway (Kafka source, null sink)", &laneway_runs),
    ] {
        let (t, c) = (pick(runs, total), pick(runs, consuming));
        println!(
            "| {name} | {n} | {:.2} s | {:.3} s | {:.0} |",
            t.as_secs_f64(),
            c.as_secs_f64(),
            n as f64 / c.as_secs_f64()
        );
    }
    let ratio = |which: fn(&Clocks) -> Duration| {
        pick(&plain_runs, which).as_secs_f64() / pick(&laneway_runs, which).as_secs_f64()
    };
    println!(
        "\nlaneway / plain throughput: {:.2}x from the start, {:.2}x after the first record",
        ratio(total),
        ratio(consuming)
    );
}
