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

/// `n` records of about a kilobyte each (every byte value, NULs included),
/// stamped `time(i)`, so that a few thousand pass the mock's 5 MiB a
/// partition and its retention deletes the oldest.
fn kilobyte_records(prefix: &str, n: u64, time: impl Fn(u64) -> i64) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let payload: Vec<u8> = (0..1_000u64).map(|k| (i * 131 + k * 7) as u8).collect();
            Record::new(
                format!("/sys/pk{}/dev{}/thing/event/property/post", i % 3, i % 11),
                format!("{prefix}{i}"),
                time(i),
                payload,
            )
        })
        .collect()
}

/// A catch-up range whose next records retention deletes while it is read
/// goes on from the oldest record the log still holds, whatever `start`
/// says (`start` is where a group without a committed offset begins). Before,
/// the catch-up reader had the group's `auto.offset.reset`: with `start =
/// "latest"` the fetch out of range jumped to the log end, the range was
/// taken as read, and the records of it the log still held were committed
/// past and never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_range_cut_by_retention_goes_on_from_the_log_start_not_its_end() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    const OLD: u64 = 4_000;
    const FRESH: u64 = 4_200;
    let cluster = cluster(&["pile"], 1);
    let brokers = cluster.bootstrap_servers();
    // Small producer batches: the mock deletes whole batches, so the log
    // start moves in small steps.
    let producer: rdkafka::producer::FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("batch.size", "16384")
        .create()
        .unwrap();
    let then = now_epoch_ms() - 3_600_000;
    let old = kilobyte_records("old-", OLD, |i| then + i as i64);
    produce_with(&producer, "pile", &old).await;
    // The group committed the start of the log, and starts at `latest`.
    let committer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "shrinking")
        .create()
        .unwrap();
    let mut at_start = TopicPartitionList::new();
    at_start
        .add_partition_offset("pile", 0, Offset::Offset(0))
        .unwrap();
    committer.commit(&at_start, CommitMode::Sync).unwrap();
    drop(committer);

    // A shut sink and small lanes hold the catch-up reader within its
    // first ~1,600 records (lanes, one batch, one fetch of 1 MiB).
    let sink = RecordingSink::new().gated();
    let mut config = KafkaSourceConfig {
        brokers: brokers.clone(),
        topics: vec!["pile".into()],
        group_id: "shrinking".into(),
        start: "latest".into(),
        prefetch_kbytes: 64,
        ..KafkaSourceConfig::default()
    };
    config
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    let engine = Engine::builder()
        .group_with(
            GroupConfig {
                validate_json: false,
                slots: 1,
                batch_size: 64,
                live_capacity: 100,
                ..GroupConfig::named("g")
            },
            Arc::new(sink.clone()),
            None,
        )
        .source(KafkaSource::new(config).unwrap(), LanePolicy::Auto)
        .build()
        .unwrap();
    let (monitor, stop, task) = spawn_engine(engine);
    assert!(
        wait_until(&monitor, Duration::from_secs(60), |m| m.groups()[0]
            .catch_up_depth
            > 0)
        .await,
        "the partition was split and its catch-up read"
    );
    // Fresh records push the log past 5 MiB: the mock deletes the oldest.
    let now = now_epoch_ms();
    let fresh = kilobyte_records("new-", FRESH, |i| now + i as i64);
    produce_with(&producer, "pile", &fresh).await;
    let watcher: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let (low, _) = watcher
        .fetch_watermarks("pile", 0, Duration::from_secs(10))
        .unwrap();
    assert!(
        (2_000..OLD as i64).contains(&low),
        "retention left the log starting at {low}: past where the reader is held, inside the old records"
    );
    // Record i of the old ones is at offset i: those from `low` on are
    // still in the log, and must come.
    let mut kept: Vec<Record> = old[low as usize..].to_vec();
    kept.extend(fresh.iter().cloned());
    sink.open();
    let reached = wait_until(&monitor, Duration::from_secs(60), |_| {
        let got: std::collections::HashSet<String> =
            sink.delivered_records().into_iter().map(|r| r.id).collect();
        kept.iter().all(|r| got.contains(&r.id))
    })
    .await;
    stop.send(()).unwrap();
    let _ = task.await.unwrap();
    let delivered = sink.delivered_records();
    let after_low: Vec<Record> = delivered
        .iter()
        .filter(|r| {
            r.id.starts_with("new-")
                || r.id
                    .strip_prefix("old-")
                    .and_then(|n| n.parse::<i64>().ok())
                    .is_some_and(|n| n >= low)
        })
        .cloned()
        .collect();
    let got: std::collections::HashSet<&str> = delivered.iter().map(|r| r.id.as_str()).collect();
    let missing: Vec<&str> = kept
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| !got.contains(id))
        .collect();
    assert!(
        reached,
        "{} records the log still held never came (log start {low}), such as {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    assert_delivered(&kept, &after_low, Copies::ExactlyOnce);
    let mut sent = old;
    sent.extend(fresh);
    assert_delivered(&sent, &delivered, Copies::Unchanged);
}
