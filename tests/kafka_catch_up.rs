//! Live-first catch-up on a lagging Kafka log, against librdkafka's mock
//! cluster: with a pile of stale records behind the group's committed
//! offset, fresh records produced behind the pile are handled before a
//! twentieth of the pile, the pile is handled completely and unchanged, and
//! the committed offsets end at the log end. Also when the group's
//! partitions move to another process in the middle of the catch-up.

#![cfg(feature = "kafka")]

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use laneway::engine::{Engine, GroupConfig};
use laneway::kafka::{KafkaSource, KafkaSourceConfig};
use laneway::message::now_epoch_ms;
use laneway::source::LanePolicy;
use support::engine::{RecordingSink, spawn_engine};
use support::kafka::{cluster, committed_and_ends, produce, produce_with, producer};
use support::records::{Copies, Record, assert_delivered, json_records};
use support::wait::wait_until;

const PARTITIONS: i32 = 8;
const PILE: u64 = 200_000;
const FRESH: u64 = 1_000;

/// A group whose handler spends 200 µs per message on 4 slots: the pile
/// takes seconds to handle, so the order of handling shows.
fn slow_group(sink: &RecordingSink, source: KafkaSource) -> Engine {
    Engine::builder()
        .group_with(
            GroupConfig {
                validate_json: false,
                slots: 4,
                batch_size: 64,
                ..GroupConfig::named("g")
            },
            Arc::new(sink.clone()),
            None,
        )
        .source(source, LanePolicy::Auto)
        .build()
        .unwrap()
}

fn source(brokers: &str, group: &str) -> KafkaSource {
    KafkaSource::new(KafkaSourceConfig {
        brokers: brokers.to_string(),
        topics: vec!["pile".into()],
        group_id: group.into(),
        // A member that leaves is noticed within seconds, not the default 45.
        properties: [
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect(),
        ..KafkaSourceConfig::default()
    })
    .unwrap()
}

/// An hour-old pile.
fn pile() -> Vec<Record> {
    let then = now_epoch_ms() - 3_600_000;
    json_records("old-", PILE, |i| then + i as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_records_come_before_a_twentieth_of_the_pile_and_the_pile_drains() {
    let cluster = cluster(&["pile"], PARTITIONS);
    let brokers = cluster.bootstrap_servers();
    let pile = pile();
    // The same producer sends the fresh records later, already connected.
    let producer = producer(&brokers);
    produce_with(&producer, "pile", &pile).await;

    let sink = RecordingSink::new().with_cost(Duration::from_micros(200));
    let engine = slow_group(&sink, source(&brokers, "catch"));
    let (monitor, stop, task) = spawn_engine(engine);
    // The pile is being handled: the partitions were assigned and split.
    assert!(
        wait_until(&monitor, Duration::from_secs(60), |m| m.groups()[0]
            .delivered_backlog
            > 0)
        .await
    );
    let now = now_epoch_ms();
    let fresh = json_records("new-", FRESH, |i| now + i as i64);
    let producing = std::time::Instant::now();
    produce_with(&producer, "pile", &fresh).await;
    let produced = std::time::Instant::now();
    let all = PILE + FRESH;
    assert!(
        wait_until(&monitor, Duration::from_secs(300), |m| m.delivered() >= all).await,
        "everything handled: {:?}",
        monitor.summary()
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap();

    let seen = sink.seen();
    let first_fresh = seen
        .iter()
        .position(|s| s.id.starts_with("new-"))
        .expect("a fresh record handled");
    let pile_before = seen[..first_fresh]
        .iter()
        .filter(|s| s.id.starts_with("old-"))
        .count() as u64;
    println!(
        "pile records handled before the first fresh one: {pile_before} of {PILE}; \
         producing took {:?}, the first fresh one was handled {:?} after",
        produced - producing,
        seen[first_fresh].at.saturating_duration_since(produced)
    );
    assert!(
        pile_before < PILE / 20,
        "{pile_before} pile records were handled before the first fresh one"
    );
    let mut sent = pile;
    sent.extend(fresh);
    assert_delivered(&sent, &sink.delivered_records(), Copies::ExactlyOnce);
    assert_eq!(summary.delivered_live, FRESH, "the fresh ones went live");
    assert_eq!(summary.delivered_backlog, PILE, "the pile went as backlog");
    for (partition, committed, end) in committed_and_ends(&brokers, "catch", "pile", PARTITIONS) {
        assert_eq!(committed, end, "partition {partition} committed to its end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_in_the_middle_of_a_catch_up_loses_nothing() {
    let cluster = cluster(&["pile"], PARTITIONS);
    let brokers = cluster.bootstrap_servers();
    let pile = pile();
    produce(&brokers, "pile", &pile).await;

    // The first process takes every partition and starts catching up.
    let first_sink = RecordingSink::new().with_cost(Duration::from_micros(200));
    let (first, first_stop, first_task) =
        spawn_engine(slow_group(&first_sink, source(&brokers, "moving")));
    assert!(
        wait_until(&first, Duration::from_secs(60), |m| m.groups()[0]
            .delivered_backlog
            >= 5_000)
        .await
    );
    // A second process joins: the partitions are shared out again while
    // the first is in the middle of its catch-up.
    let second_sink = RecordingSink::new().with_cost(Duration::from_micros(200));
    let (second, second_stop, second_task) =
        spawn_engine(slow_group(&second_sink, source(&brokers, "moving")));
    assert!(
        wait_until(&second, Duration::from_secs(60), |m| m.delivered() >= 5_000).await,
        "the second process got partitions"
    );
    // Then the first leaves (a clean stop: it commits what is done, and
    // its catch-up ranges go with its partitions).
    first_stop.send(()).unwrap();
    let first_summary = first_task.await.unwrap();
    let first_delivered = first_sink.delivered_records();
    let left = PILE - distinct(&first_delivered) as u64;
    assert!(
        first_summary.delivered < PILE,
        "the first stopped mid-catch-up"
    );
    assert!(
        wait_until(&second, Duration::from_secs(300), |m| {
            // The cheap count first; the whole check only once it can pass.
            m.delivered() >= left && {
                let mut delivered = first_delivered.clone();
                delivered.extend(second_sink.delivered_records());
                distinct(&delivered) as u64 >= PILE
            }
        })
        .await,
        "every record handled by one process or the other ({left} left after the first stopped)"
    );
    second_stop.send(()).unwrap();
    let _ = second_task.await.unwrap();

    let mut delivered = first_sink.delivered_records();
    delivered.extend(second_sink.delivered_records());
    println!(
        "first delivered {}, second {}",
        first_delivered.len(),
        second_sink.delivered_records().len()
    );
    let tally = assert_delivered(&pile, &delivered, Copies::AtLeastOnce);
    println!("duplicates across the rebalance: {tally:?}");
    for (partition, committed, end) in committed_and_ends(&brokers, "moving", "pile", PARTITIONS) {
        assert_eq!(committed, end, "partition {partition} committed to its end");
    }
}

fn distinct(records: &[Record]) -> usize {
    records
        .iter()
        .map(|r| r.id.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len()
}
