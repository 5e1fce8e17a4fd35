//! Stale state never overwrites fresh: live-first delivers a device's
//! fresh messages before its stale ones, and each delivery says whether a
//! newer message of the same device and kind was already delivered
//! (`Delivery::superseded`); `skip_superseded` acknowledges such messages
//! without delivering them. Checked with an outage pile of online/offline
//! flips, the handler keeping each device's state as a naive handler does:
//! the last message it was given wins.

use crate::support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use laneway::ack::AckTracker;
use laneway::engine::{Engine, GroupConfig, GroupSnapshot};
use laneway::message::{Kind, now_epoch_ms};
use laneway::sink::Lane;
use laneway::source::{Incoming, LanePolicy};
use support::engine::{RecordingSink, spawn_engine};
use support::records::{Record, binary_payload};
use support::wait::eventually;

const DEVICES: usize = 20;
const PILE_FLIPS: usize = 10;
const FRESH_FLIPS: usize = 3;

/// A status flip of `device`: its payload is the state (`online` or
/// `offline`) and bytes that are not text, so the comparison is of bytes.
fn flip(device: usize, n: usize, time: i64, tag: &str) -> Record {
    let state: &[u8] = if n.is_multiple_of(2) {
        b"online\0"
    } else {
        b"offline\0"
    };
    let mut payload = state.to_vec();
    payload.extend(tag.as_bytes());
    payload.extend(binary_payload((device * 1000 + n) as u64));
    Record::new(
        format!("/as/mqtt/status/pk/dev-{device}"),
        format!("{tag}-{device}-{n}"),
        time,
        payload,
    )
}

fn group(monitor: &laneway::engine::Monitor) -> GroupSnapshot {
    monitor.groups().remove(0)
}

struct Outcome {
    pile: Vec<Record>,
    fresh: Vec<Record>,
    sink: RecordingSink,
    group: GroupSnapshot,
}

/// The outage, then the return: the pile fails into the backlog while the
/// handler is down; the fresh flips go live while the backlog is still
/// held back; then the pile drains.
async fn outage_then_return(skip: Vec<Kind>) -> Outcome {
    let down = Arc::new(AtomicBool::new(true));
    let backlog_held = Arc::new(AtomicBool::new(true));
    let sink = RecordingSink::new().failing({
        let (down, held) = (Arc::clone(&down), Arc::clone(&backlog_held));
        move |d| {
            down.load(Ordering::SeqCst) || (d.lane == Lane::Backlog && held.load(Ordering::SeqCst))
        }
    });
    let config = GroupConfig {
        max_attempts: u32::MAX,
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        validate_json: false,
        skip_superseded: skip,
        ..GroupConfig::named("shadow")
    };
    let engine = Engine::builder()
        .group(config, sink.clone())
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Auto);
    let tracker = AckTracker::new();
    let (monitor, stop, task) = spawn_engine(engine);
    let limit = Duration::from_secs(20);

    let t0 = now_epoch_ms();
    let pile: Vec<Record> = (0..PILE_FLIPS)
        .flat_map(|n| (0..DEVICES).map(move |d| flip(d, n, t0 - 5_000 + n as i64, "pile")))
        .collect();
    let submit = |records: &[Record]| -> Vec<Incoming> {
        records
            .iter()
            .map(|r| Incoming::Message(r.message()))
            .collect()
    };
    ingest.submit(submit(&pile), tracker.register()).await;
    eventually(&monitor, limit, "the pile in the backlog", |m| {
        group(m).backlog_depth == pile.len() as u64
    })
    .await;

    down.store(false, Ordering::SeqCst);
    let fresh: Vec<Record> = (0..FRESH_FLIPS)
        .flat_map(|n| (0..DEVICES).map(move |d| flip(d, n + 1, t0 + n as i64, "fresh")))
        .collect();
    ingest.submit(submit(&fresh), tracker.register()).await;
    eventually(&monitor, limit, "the fresh flips delivered", |m| {
        group(m).delivered_live == fresh.len() as u64
    })
    .await;

    backlog_held.store(false, Ordering::SeqCst);
    eventually(&monitor, limit, "the pile drained", |m| {
        let g = group(m);
        g.backlog_depth == 0 && g.delivered_backlog == pile.len() as u64 && m.is_idle()
    })
    .await;
    let group = group(&monitor);
    stop.send(()).unwrap();
    task.await.unwrap();
    Outcome {
        pile,
        fresh,
        sink,
        group,
    }
}

/// Each device's state as the handler has it: the payload of the last
/// message it was given for that topic.
fn final_state(sink: &RecordingSink) -> HashMap<String, Vec<u8>> {
    sink.seen()
        .into_iter()
        .filter(|s| s.ok)
        .map(|s| (s.record.topic, s.record.payload))
        .collect()
}

/// Each device's newest record among `records`.
fn newest(records: &[Record]) -> HashMap<String, Vec<u8>> {
    let mut by_topic: HashMap<String, &Record> = HashMap::new();
    for r in records {
        let e = by_topic.entry(r.topic.clone()).or_insert(r);
        if r.generate_time_ms > e.generate_time_ms {
            *e = r;
        }
    }
    by_topic
        .into_iter()
        .map(|(t, r)| (t, r.payload.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_skipping_the_stale_pile_comes_last_and_every_stale_delivery_says_so() {
    let out = outage_then_return(Vec::new()).await;
    let seen: Vec<_> = out.sink.seen().into_iter().filter(|s| s.ok).collect();
    let mut delivered: Vec<Record> = seen.iter().map(|s| s.record.clone()).collect();
    let mut sent: Vec<Record> = out.pile.iter().chain(&out.fresh).cloned().collect();
    delivered.sort_by(|a, b| a.id.cmp(&b.id));
    sent.sort_by(|a, b| a.id.cmp(&b.id));
    assert!(
        delivered == sent,
        "every flip delivered once, byte for byte"
    );
    for s in &seen {
        let stale = s.id.starts_with("pile");
        assert_eq!(
            s.superseded, stale,
            "{}: superseded = {}",
            s.id, s.superseded
        );
    }
    // The reordering the flag exists for: the handler ends on stale state.
    let state = final_state(&out.sink);
    let want = newest(&sent);
    let wrong = want
        .iter()
        .filter(|(t, p)| state.get(*t) != Some(p))
        .count();
    assert_eq!(wrong, DEVICES, "every device ends on a stale flip");
    assert_eq!(out.group.superseded_delivered, out.pile.len() as u64);
    assert_eq!(out.group.superseded_skipped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_skip_superseded_every_device_ends_on_its_newest_state() {
    let out = outage_then_return(vec![Kind::Status]).await;
    let state = final_state(&out.sink);
    let sent: Vec<Record> = out.pile.iter().chain(&out.fresh).cloned().collect();
    assert!(
        state == newest(&sent),
        "each device's handler state is its latest generateTime's"
    );
    // The fresh flips delivered byte for byte; the stale ones acknowledged
    // (the backlog is empty) and counted, never handed over.
    let mut delivered: Vec<Record> = out.sink.delivered_records();
    let mut fresh = out.fresh.clone();
    delivered.sort_by(|a, b| a.id.cmp(&b.id));
    fresh.sort_by(|a, b| a.id.cmp(&b.id));
    assert!(delivered == fresh, "only the fresh flips reach the handler");
    assert_eq!(out.group.superseded_skipped, out.pile.len() as u64);
    assert_eq!(out.group.backlog_depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipping_one_kind_still_delivers_the_others_with_their_flag() {
    let out = outage_then_return(vec![Kind::Property]).await;
    assert_eq!(out.group.superseded_skipped, 0);
    assert_eq!(out.group.superseded_delivered, out.pile.len() as u64);
}

/// A stale flip is skipped only because a newer one was delivered: when
/// the newer one, ahead of it in the same batch, fails for good (a dead
/// letter), the stale one is delivered after all, byte for byte, else the
/// handler would have neither state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_is_not_skipped_for_a_newer_one_that_failed() {
    let t0 = now_epoch_ms();
    let newer = flip(1, 1, t0, "newer");
    let older = flip(1, 2, t0 - 1_000, "older");
    let refused = newer.id.clone();
    let sink = RecordingSink::new().failing(move |d| d.message.message_id() == refused);
    let config = GroupConfig {
        max_attempts: 1,
        validate_json: false,
        skip_superseded: vec![Kind::Status],
        ..GroupConfig::named("shadow")
    };
    let engine = Engine::builder()
        .group(config, sink.clone())
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Live);
    let tracker = AckTracker::new();
    let (monitor, stop, task) = spawn_engine(engine);
    let batch = vec![
        Incoming::Message(newer.message()),
        Incoming::Message(older.message()),
    ];
    ingest.submit(batch, tracker.register()).await;
    eventually(&monitor, Duration::from_secs(20), "both settled", |m| {
        m.is_idle() && group(m).dead_letter == 1
    })
    .await;
    let g = group(&monitor);
    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(
        sink.delivered_records() == vec![older],
        "the older flip delivered, exactly: {:?}",
        sink.seen()
    );
    assert_eq!(g.superseded_skipped, 0);
}
