//! The scheduler's promises, through a real engine: the backlog's share when
//! both lanes are saturated, every slot to the backlog when live is idle, the
//! rate ceiling, and a live wait that does not grow with the backlog.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::records::json_payload;
use common::{Copies, Record, RecordingSink, assert_delivered, spawn_engine, wait_until};
use laneway::ack::AckRef;
use laneway::backlog::{BacklogRecord, BacklogStore, MemoryBacklog};
use laneway::engine::{Engine, GroupConfig};
use laneway::message::{Message, now_epoch_ms};
use laneway::sink::Lane;
use laneway::sink::Sink;
use laneway::source::{Incoming, LanePolicy};
use laneway::source::{Simulator, SimulatorConfig};

fn msg(id: String, generate_time_ms: i64) -> Message {
    Message::new(
        "/pk/dev/thing/event/property/post",
        id,
        generate_time_ms,
        Bytes::from_static(b"{\"v\":1}"),
    )
    .unwrap()
}

/// The stale records [`prefilled`] puts in the backlog.
fn stale_records(n: usize) -> Vec<Record> {
    (0..n as u64)
        .map(|i| {
            Record::new(
                format!("/pk{}/dev/thing/event/property/post", i % 5),
                format!("old-{i}"),
                1 + i as i64,
                json_payload(i),
            )
        })
        .collect()
}

/// A memory backlog already holding `n` stale records ([`stale_records`]).
async fn prefilled(n: usize) -> Arc<MemoryBacklog> {
    let store = Arc::new(MemoryBacklog::default());
    let records: Vec<_> = stale_records(n)
        .iter()
        .map(|r| BacklogRecord::fresh(r.message()))
        .collect();
    for chunk in records.chunks(10_000) {
        store.append(chunk).await.unwrap();
    }
    store
}

fn group(share: f64) -> GroupConfig {
    GroupConfig {
        slots: 4,
        batch_size: 64,
        backlog_share: share,
        live_capacity: 100_000,
        ..GroupConfig::named("g")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_lanes_saturated_the_backlog_gets_its_share() {
    for share in [0.2, 0.5] {
        let sink = RecordingSink::new()
            .with_cost(Duration::from_micros(20))
            .gated();
        let store = prefilled(30_000).await;
        let engine = Engine::builder()
            .group_with(group(share), Arc::new(sink.clone()), Some(store))
            .build()
            .unwrap();
        let ingest = engine.ingest(LanePolicy::Live);
        let (monitor, stop, task) = spawn_engine(engine);
        for chunk in 0..30 {
            let batch = (0..1000)
                .map(|i| Incoming::Message(msg(format!("new-{chunk}-{i}"), now_epoch_ms())))
                .collect();
            ingest.submit(batch, AckRef::none()).await;
        }
        sink.open();
        assert!(
            wait_until(&monitor, Duration::from_secs(30), |_| monitor
                .summary()
                .delivered
                >= 20_000)
            .await
        );
        stop.send(()).unwrap();
        let _ = task.await.unwrap();

        let seen = sink.seen();
        // Skip the start (slots filled before live arrived), measure 15,000.
        let window = &seen[2_000..17_000];
        let from_backlog = window.iter().filter(|s| s.lane == Lane::Backlog).count();
        let got = from_backlog as f64 / window.len() as f64;
        assert!(
            (got - share).abs() <= 0.05,
            "share {share}: backlog got {got:.3} of deliveries"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_live_idle_the_backlog_takes_every_slot() {
    let sink = RecordingSink::new().with_cost(Duration::from_micros(200));
    let store = prefilled(5_000).await;
    let engine = Engine::builder()
        .group_with(group(0.2), Arc::new(sink.clone()), Some(store))
        .build()
        .unwrap();
    let (monitor, stop, task) = spawn_engine(engine);
    assert!(
        wait_until(&monitor, Duration::from_secs(30), |_| monitor
            .summary()
            .delivered_backlog
            == 5_000)
        .await
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap();
    assert_eq!(summary.delivered_live, 0);
    assert_eq!(
        sink.max_in_flight[1].load(Ordering::SeqCst),
        4,
        "all four slots serve the backlog"
    );
    // What the memory backlog handed out is what was put in.
    assert_delivered(
        &stale_records(5_000),
        &sink.delivered_records(),
        Copies::ExactlyOnce,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_ceiling_holds_backlog_throughput_under_it() {
    let sink = RecordingSink::new();
    let store = prefilled(20_000).await;
    let config = GroupConfig {
        backlog_rate: Some(2_000.0),
        ..group(0.2)
    };
    let engine = Engine::builder()
        .group_with(config, Arc::new(sink.clone()), Some(store))
        .build()
        .unwrap();
    let (monitor, stop, task) = spawn_engine(engine);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let delivered = monitor.summary().delivered_backlog;
    let elapsed = start.elapsed().as_secs_f64();
    stop.send(()).unwrap();
    let _ = task.await.unwrap();
    // The bucket starts with a tenth of a second's worth; one batch may straddle.
    let ceiling = 2_000.0 * elapsed + 200.0 + 64.0;
    assert!(
        (delivered as f64) <= ceiling,
        "{delivered} delivered in {elapsed:.2}s, ceiling {ceiling:.0}"
    );
    assert!(
        (delivered as f64) >= 0.5 * 2_000.0 * elapsed,
        "the backlog still drains: {delivered}"
    );
}

/// Runs live traffic at 1,000 msgs/s for two seconds against a backlog of
/// `backlog` records and returns the live p99 wait (ms).
async fn live_p99_with_backlog(backlog: usize) -> f64 {
    let sink: Arc<dyn Sink> = Arc::new(RecordingSink::new().with_cost(Duration::from_micros(100)));
    let store = prefilled(backlog).await;
    let engine = Engine::builder()
        .group_with(group(0.2), sink, Some(store))
        .source(
            Simulator::new(SimulatorConfig {
                rate: 1_000.0,
                duration: Some(Duration::from_secs(2)),
                batch: 16,
                ..SimulatorConfig::default()
            }),
            LanePolicy::Auto,
        )
        .build()
        .unwrap();
    let (monitor, stop, task) = spawn_engine(engine);
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let during = monitor.summary();
    // With a small backlog the run may already have ended by itself.
    let _ = stop.send(());
    let _ = task.await.unwrap();
    assert!(during.delivered_live >= 1_500, "{during:?}");
    if backlog > 1_000 {
        let left = during.groups[0].backlog_depth;
        assert!(
            left > 0,
            "the backlog must still be draining while live is measured"
        );
    }
    during.live_latency_ms.p99
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_message_wait_does_not_grow_with_the_backlog() {
    let small = live_p99_with_backlog(10).await;
    let large = live_p99_with_backlog(100_000).await;
    eprintln!("live p99: backlog 10 → {small:.2} ms, backlog 100,000 → {large:.2} ms");
    assert!(
        large <= 2.0 * small,
        "live p99 {large:.2} ms with a large backlog vs {small:.2} ms with a small one"
    );
}
