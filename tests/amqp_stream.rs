//! The RabbitMQ stream source (`type = "amqp-stream"`) against a real
//! broker: live-first catch-up of a stale pile, and a restart (a dropped
//! connection, then a stop and a new process state) in the middle of it.
//!
//! Records are published by the test itself, straight into a fresh stream,
//! so record `i` of the pile sits at offset `i`. Every check compares whole
//! records (topic, messageId, generateTime, payload) with what was sent.
//! Waits are on engine progress (the monitor) or broker events, never on a
//! timer; the time limits only guard against a hang.

#![cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]

use crate::support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use laneway::amqp::stream::OffsetFile;
use laneway::amqp::{AmqpStreamConfig, AmqpStreamSource};
use laneway::backlog::{BacklogStore, DiskBacklog, DiskBacklogConfig, MemoryBacklog};
use laneway::engine::{Engine, GroupConfig};
use laneway::message::now_epoch_ms;
use laneway::source::LanePolicy;
use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection};
use support::engine::{RecordingSink, spawn_engine};
use support::process::Watched;
use support::records::{Copies, Record, assert_delivered, json_payload, records_in_jsonl};
use support::wait::wait_until;

/// A guard against a hang, not a timing assertion.
const LIMIT: Duration = Duration::from_secs(900);

fn stream_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("stream")),
    );
    args
}

/// `n` records with ids `{prefix}{i}`, generated `age_ms` ago.
fn records(prefix: &str, n: u64, age_ms: i64) -> Vec<Record> {
    let now = now_epoch_ms();
    (0..n)
        .map(|i| {
            Record::new(
                format!("/pk{}/dev{}/thing/event/property/post", i % 3, i % 97),
                format!("{prefix}{i}"),
                now - age_ms + (i % 1000) as i64,
                json_payload(i),
            )
        })
        .collect()
}

/// Publishes `records` to `stream` in order (pipelined, every confirm
/// awaited), with the platform's headers.
async fn publish(ch: &Channel, stream: &str, records: &[Record]) {
    for chunk in records.chunks(2_000) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for r in chunk {
            let props =
                laneway::amqp::headers::properties(&r.topic, &r.id, r.generate_time_ms, true);
            let confirm = ch
                .basic_publish(
                    "".into(),
                    stream.into(),
                    BasicPublishOptions::default(),
                    &r.payload,
                    props,
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for c in confirms {
            assert!(
                c.await.expect("confirm").is_ack(),
                "the broker refused a record"
            );
        }
    }
}

fn config(stream: &str, offset_file: &Path, prefetch: u16) -> AmqpStreamConfig {
    AmqpStreamConfig {
        url: Some(support::broker::url()),
        stream: stream.to_string(),
        offset_file: Some(offset_file.to_path_buf()),
        prefetch,
        store_every: Duration::from_millis(100),
        reconnect_initial: Duration::from_millis(100),
        ..AmqpStreamConfig::default()
    }
}

fn source(stream: &str, offset_file: &Path, prefetch: u16) -> AmqpStreamSource {
    AmqpStreamSource::new(config(stream, offset_file, prefetch)).unwrap()
}

fn slow_group(name: &str) -> GroupConfig {
    GroupConfig {
        slots: 4,
        batch_size: 64,
        ..GroupConfig::named(name)
    }
}

fn stored(offset_file: &Path, stream: &str) -> Option<u64> {
    OffsetFile::at(offset_file.to_path_buf(), stream)
        .load()
        .unwrap()
}

async fn delete(conn: &Connection, stream: &str) {
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_delete(stream.into(), QueueDeleteOptions::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_records_behind_a_stale_stream_pile_go_first_and_the_pile_drains_without_a_copy() {
    const PILE: u64 = 200_000;
    const FRESH: u64 = 1_000;
    let _lock = support::broker::broker_lock(false);
    let stream = support::names::unique("stream-pile");
    let tmp = tempfile::tempdir().unwrap();
    let offset_file = tmp.path().join("stream.offset");
    let conn = support::broker::connection().await;
    let ch = support::broker::confirm_channel(&conn).await;
    support::broker::declare_queue(&ch, &stream, stream_args()).await;
    // The pile: an hour old, in the stream before laneway starts.
    let pile = records("pile-", PILE, 3_600_000);
    publish(&ch, &stream, &pile).await;

    // A slow handler while the order is measured: 1 ms a record, 4 slots
    // of 64: about 4,000 a second.
    let sink = RecordingSink::new().with_cost(Duration::from_millis(1));
    let store = Arc::new(MemoryBacklog::default());
    let engine = Engine::builder()
        .group_with(
            slow_group("slow"),
            Arc::new(sink.clone()),
            Some(store.clone()),
        )
        .source(source(&stream, &offset_file, 1000), LanePolicy::Auto)
        .build()
        .unwrap();
    let (monitor, stop, task) = spawn_engine(engine);

    // laneway is well into the pile (1% handled): publish fresh records
    // behind the rest of it.
    sink.recorded((PILE / 100) as usize).await;
    let fresh = records("fresh-", FRESH, 0);
    let published_at = Instant::now();
    publish(&ch, &stream, &fresh).await;

    // What the order is asked of ends once every fresh record is handled;
    // from then on the rest of the pile drains at full speed (at 1 ms a
    // record it took 50 s), still from the stream.
    assert!(
        wait_until(&monitor, LIMIT, |_| {
            let seen = sink.seen.lock();
            seen.iter()
                .filter(|s| s.ok && s.id.starts_with("fresh-"))
                .count() as u64
                >= FRESH
        })
        .await,
        "the fresh records were not all handled"
    );
    sink.set_cost(Duration::ZERO);

    let total = PILE + FRESH;
    assert!(
        wait_until(&monitor, LIMIT, |m| m.delivered() >= total).await,
        "the pile and the fresh records were not all delivered"
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap();

    let seen = sink.seen();
    let first_fresh = seen
        .iter()
        .position(|s| s.id.starts_with("fresh-"))
        .expect("a fresh record was handled");
    let stale_before = seen[..first_fresh]
        .iter()
        .filter(|s| s.id.starts_with("pile-"))
        .count() as u64;
    let group = &monitor.groups()[0];
    let last_fresh = seen
        .iter()
        .rposition(|s| s.id.starts_with("fresh-"))
        .unwrap();
    let last_pile = seen
        .iter()
        .rposition(|s| s.id.starts_with("pile-"))
        .unwrap();
    eprintln!(
        "pile {PILE}: first fresh record handled after {stale_before} stale ({:.2}%), \
         {:?} after its publish started; all {FRESH} fresh by {:?}; the pile done {:?} after it; \
         {} through the backlog store (the last chunk the live cursor started at); \
         delivered live {}, backlog {}",
        stale_before as f64 * 100.0 / PILE as f64,
        seen[first_fresh].at.duration_since(published_at),
        seen[last_fresh].at.duration_since(published_at),
        seen[last_pile].at.duration_since(published_at),
        group.diverted_stale,
        summary.delivered_live,
        summary.delivered_backlog,
    );
    assert!(
        stale_before * 20 < PILE,
        "the first fresh record was handled after {stale_before} of {PILE} stale records (5% is {})",
        PILE / 20
    );
    // Every record once, byte for byte.
    let mut sent = pile;
    sent.extend(fresh);
    assert_delivered(&sent, &sink.delivered_records(), Copies::ExactlyOnce);
    // The pile was caught up from the stream, not copied to the store:
    // only the records of the chunk the live cursor attached at went there.
    assert!(
        group.diverted_stale * 20 < PILE,
        "{} stale records were copied to the backlog store",
        group.diverted_stale
    );
    assert_eq!(store.depth().records, 0);
    // The stored offset is the log end.
    assert_eq!(stored(&offset_file, &stream), Some(total));

    delete(&conn, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_catch_up_a_pile_with_no_live_traffic_drains_through_the_backlog() {
    const PILE: u64 = 20_000;
    let _lock = support::broker::broker_lock(false);
    let stream = support::names::unique("stream-no-split");
    let tmp = tempfile::tempdir().unwrap();
    let offset_file = tmp.path().join("stream.offset");
    let conn = support::broker::connection().await;
    let ch = support::broker::confirm_channel(&conn).await;
    support::broker::declare_queue(&ch, &stream, stream_args()).await;
    let pile = records("pile-", PILE, 3_600_000);
    publish(&ch, &stream, &pile).await;

    let sink = RecordingSink::new();
    let source = AmqpStreamSource::new(AmqpStreamConfig {
        catch_up: false,
        ..config(&stream, &offset_file, 1000)
    })
    .unwrap();
    let engine = Engine::builder()
        .group_with(
            slow_group("plain"),
            Arc::new(sink.clone()),
            Some(Arc::new(MemoryBacklog::default())),
        )
        .source(source, LanePolicy::Auto)
        .build()
        .unwrap();
    let (monitor, stop, task) = spawn_engine(engine);
    assert!(
        wait_until(&monitor, LIMIT, |m| m.delivered() >= PILE).await,
        "the pile was not delivered"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
    assert_delivered(&pile, &sink.delivered_records(), Copies::ExactlyOnce);
    // Not split: the stale pile took lanes like live records (the backlog
    // store), as a queue source's would.
    assert_eq!(monitor.groups()[0].diverted_stale, PILE);
    assert_eq!(stored(&offset_file, &stream), Some(PILE));
    delete(&conn, &stream).await;
}

/// The pid of the broker connection named `name`, from `rabbitmqctl`.
fn connection_pid(name: &str) -> Option<String> {
    let out = Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

fn close_connection(pid: &str) {
    let out = Command::new("rabbitmqctl")
        .args([
            "close_connection",
            pid,
            "laneway stream test: dropped on purpose",
        ])
        .output()
        .expect("rabbitmqctl is installed");
    assert!(
        out.status.success(),
        "rabbitmqctl close_connection failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_and_a_restart_mid_catch_up_lose_nothing() {
    const PILE: u64 = 40_000;
    const FRESH: u64 = 500;
    const PREFETCH: u16 = 500;
    let _lock = support::broker::broker_lock(false);
    let stream = support::names::unique("stream-restart");
    let tmp = tempfile::tempdir().unwrap();
    let offset_file = tmp.path().join("stream.offset");
    let backlog_dir = tmp.path().join("backlog");
    let conn = support::broker::connection().await;
    let ch = support::broker::confirm_channel(&conn).await;
    support::broker::declare_queue(&ch, &stream, stream_args()).await;
    let pile = records("pile-", PILE, 3_600_000);
    publish(&ch, &stream, &pile).await;

    // Both runs share the sink's record and the durable backlog directory,
    // like two processes of one deployment. About 2,000 records a second:
    // the pile lasts long enough for the two `rabbitmqctl` calls (a few
    // seconds) to land in the middle of it.
    let sink = RecordingSink::new().with_cost(Duration::from_millis(2));
    let run = |sink: RecordingSink| {
        let backlog = DiskBacklog::open(&backlog_dir, DiskBacklogConfig::default()).unwrap();
        Engine::builder()
            .group_with(slow_group("slow"), Arc::new(sink), Some(Arc::new(backlog)))
            .source(source(&stream, &offset_file, PREFETCH), LanePolicy::Auto)
            .build()
            .unwrap()
    };

    // First run: drop its connection part way, then stop it part way.
    let (monitor, stop, task) = spawn_engine(run(sink.clone()));
    sink.recorded(2_000).await;
    let pid = connection_pid(&format!("laneway stream {stream}"))
        .expect("laneway's stream connection is listed");
    close_connection(&pid);
    assert!(
        wait_until(&monitor, LIMIT, |m| m.sources()[0].1.reconnects >= 1
            && m.delivered() >= 8_000)
        .await,
        "no reconnect, or no progress after it"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
    // The monitor holds the groups, and so the backlog's lock: release it.
    drop(monitor);
    let first_run = sink.delivered_records().len() as u64;
    let stopped_at = stored(&offset_file, &stream).expect("an offset was stored");
    eprintln!("first run: {first_run} delivered, stored offset {stopped_at} of {PILE}");
    assert!(
        stopped_at > 0 && stopped_at < PILE,
        "the run was stopped mid-catch-up"
    );

    // Fresh records arrive while laneway is down: they are part of the lag.
    let down = records("down-", FRESH, 0);
    publish(&ch, &stream, &down).await;

    // Second run: resumes at the stored offset; fresh records arrive live.
    let (monitor, stop, task) = spawn_engine(run(sink.clone()));
    sink.recorded(first_run as usize + 1).await;
    let live = records("live-", FRESH, 0);
    publish(&ch, &stream, &live).await;
    let end = PILE + 2 * FRESH;
    let mut sent = pile;
    sent.extend(down);
    sent.extend(live);
    let distinct = |sink: &RecordingSink| sink.delivered_counts().len() as u64;
    assert!(
        wait_until(&monitor, LIMIT, |m| m.delivered() + first_run >= end
            && distinct(&sink) >= end)
        .await,
        "not every record was delivered after the restart"
    );
    stop.send(()).unwrap();
    task.await.unwrap();

    let tally = assert_delivered(&sent, &sink.delivered_records(), Copies::AtLeastOnce);
    // What can come twice: what was read past the stored offset and not yet
    // done when the connection dropped or the run stopped (the catch-up
    // lane, the deliveries under way, a batch being submitted, the live
    // lane's share), twice over.
    let group = slow_group("slow");
    let in_flight = group.batch_size * group.slots * 2
        + group.batch_size * group.slots
        + 2 * usize::from(PREFETCH)
        + 256;
    eprintln!(
        "{} copies of {} records: {} duplicates (bound {})",
        tally.copies,
        tally.distinct,
        tally.duplicates,
        2 * in_flight
    );
    assert!(
        tally.duplicates <= 2 * in_flight,
        "{} duplicates, more than what was in flight",
        tally.duplicates
    );
    assert_eq!(stored(&offset_file, &stream), Some(end));

    delete(&conn, &stream).await;
}

/// A `laneway run` config: the stream source, and one group writing to a
/// JSONL file (fsync per batch) whose catch-up is paced by `backlog_rate`.
fn write_config(path: &Path, data: &Path, stream: &str, offset_file: &Path, output: &Path) {
    let text = format!(
        "data_dir = {data:?}\nstatus_interval = \"100ms\"\n\
         [[sources]]\ntype = \"amqp-stream\"\nurl = {url:?}\nstream = {stream:?}\n\
         offset_file = {offset_file:?}\nstore_every = \"100ms\"\nprefetch = 500\n\
         [[groups]]\nname = \"g\"\nslots = 2\nbatch_size = 100\nbacklog_rate = 3000.0\n\
         sink = {{ type = \"jsonl\", path = {output:?}, sync = true }}\n",
        url = support::broker::url(),
    );
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_catch_up_replays_from_the_stored_offset_and_loses_nothing() {
    const PILE: u64 = 30_000;
    const DOWN: u64 = 500;
    let _lock = support::broker::broker_lock(false);
    let stream = support::names::unique("stream-sigkill");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let offset_file = tmp.path().join("stream.offset");
    let (out1, out2) = (tmp.path().join("out1.jsonl"), tmp.path().join("out2.jsonl"));
    let (c1, c2) = (tmp.path().join("c1.toml"), tmp.path().join("c2.toml"));
    write_config(&c1, &data, &stream, &offset_file, &out1);
    write_config(&c2, &data, &stream, &offset_file, &out2);
    let conn = support::broker::connection().await;
    let ch = support::broker::confirm_channel(&conn).await;
    support::broker::declare_queue(&ch, &stream, stream_args()).await;
    let pile = records("pile-", PILE, 3_600_000);
    publish(&ch, &stream, &pile).await;

    // Phase 1: killed once the stored offset is well into the pile.
    let mut run = Watched::run(&c1);
    run.wait_for_status(
        LIMIT,
        "a status line once 5,000 records are stored as done",
        || stored(&offset_file, &stream).unwrap_or(0) >= 5_000,
    );
    run.kill(); // SIGKILL
    let killed_at = stored(&offset_file, &stream).unwrap();
    let delivered1 = records_in_jsonl(&out1);
    eprintln!(
        "killed with the offset stored at {killed_at} of {PILE}; {} delivered",
        delivered1.len()
    );
    assert!(killed_at < PILE, "killed mid-catch-up");

    // Records written while laneway is down, then phase 2 until every
    // record is delivered and the offset is stored at the end.
    let down = records("down-", DOWN, 0);
    publish(&ch, &stream, &down).await;
    let end = PILE + DOWN;
    let mut sent = pile;
    sent.extend(down);
    let all: std::collections::HashSet<String> = sent.iter().map(|r| r.id.clone()).collect();
    let mut run = Watched::run(&c2);
    run.wait_for_status(
        LIMIT,
        "a status line once every record is delivered and the offset is at the end",
        || {
            if stored(&offset_file, &stream) != Some(end) {
                return false;
            }
            let mut seen: std::collections::HashSet<String> =
                delivered1.iter().map(|r| r.id.clone()).collect();
            seen.extend(records_in_jsonl(&out2).into_iter().map(|r| r.id));
            all.is_subset(&seen)
        },
    );
    run.interrupt();
    let out = run.finish(Duration::from_secs(60));
    assert!(out.status.success(), "phase 2 failed: {}", out.status);
    assert_eq!(stored(&offset_file, &stream), Some(end));

    let mut delivered = delivered1;
    delivered.extend(records_in_jsonl(&out2));
    let tally = assert_delivered(&sent, &delivered, Copies::AtLeastOnce);
    // Only records at or past the stored offset can come twice: every
    // record below it was done before the kill.
    let mut counts = std::collections::HashMap::new();
    for r in &delivered {
        *counts.entry(r.id.as_str()).or_insert(0u32) += 1;
    }
    let below: Vec<&str> = counts
        .iter()
        .filter(|&(id, &n)| {
            n > 1
                && id
                    .strip_prefix("pile-")
                    .and_then(|i| i.parse::<u64>().ok())
                    .is_some_and(|i| i < killed_at)
        })
        .map(|(id, _)| *id)
        .collect();
    eprintln!(
        "{} copies of {} records: {} duplicates, all at or past offset {killed_at}",
        tally.copies, tally.distinct, tally.duplicates
    );
    assert!(
        below.is_empty(),
        "records below the stored offset came twice: {:?}",
        &below[..below.len().min(10)]
    );
    delete(&conn, &stream).await;
}
