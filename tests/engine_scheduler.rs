//! The scheduler's promises, through a real engine: the backlog's share when
//! both lanes are saturated, every slot to the backlog when live is idle, and
//! the rate ceiling. Each is asserted on what the sink was given (lanes,
//! counts, and for the ceiling the deliveries' own times), never on how fast
//! a run went: speed is measured by the benchmarks (`laneway bench`'s
//! scenarios report live latency with a backlog draining, laneway against
//! FIFO; `benches/engine.rs`), and the scheduler's unit tests check the
//! ceiling and the live-reserved slot on a simulated clock.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use laneway::ack::AckRef;
use laneway::backlog::{BacklogRecord, BacklogStore, MemoryBacklog};
use laneway::engine::{Engine, GroupConfig};
use laneway::message::{Message, now_epoch_ms};
use laneway::sink::Lane;
use laneway::source::{Incoming, LanePolicy};
use support::engine::{RecordingSink, spawn_engine};
use support::records::{Copies, Record, assert_delivered, json_payload};
use support::wait::wait_until;

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
async fn with_light_live_traffic_flowing_the_backlog_still_uses_every_slot() {
    // Work-conserving: live keeps the last slot but lends it to the backlog
    // in short batches between live messages, so a pile drains on all four
    // slots beside a trickle of live traffic (with the last slot kept empty
    // it drained on three).
    let sink = RecordingSink::new().with_cost(Duration::from_micros(200));
    let store = prefilled(5_000).await;
    let engine = Engine::builder()
        .group_with(group(0.2), Arc::new(sink.clone()), Some(store))
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Live);
    // Live is flowing before the first slot is filled.
    let first = msg("live-0".into(), now_epoch_ms());
    ingest
        .submit(vec![Incoming::Message(first)], AckRef::none())
        .await;
    let (monitor, stop, task) = spawn_engine(engine);
    let trickle = tokio::spawn({
        let ingest = ingest.clone();
        async move {
            // A traffic source, not a synchronisation: one message per 2 ms.
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            for i in 1.. {
                tick.tick().await;
                let m = msg(format!("live-{i}"), now_epoch_ms());
                ingest
                    .submit(vec![Incoming::Message(m)], AckRef::none())
                    .await;
            }
        }
    });
    assert!(
        wait_until(&monitor, Duration::from_secs(30), |_| monitor
            .summary()
            .delivered_backlog
            == 5_000)
        .await
    );
    trickle.abort();
    stop.send(()).unwrap();
    let summary = task.await.unwrap();
    assert!(summary.delivered_live > 0);
    assert_eq!(
        sink.max_in_flight[1].load(Ordering::SeqCst),
        4,
        "the backlog drains on every slot while live flows"
    );
    let backlog: Vec<Record> = sink
        .seen()
        .into_iter()
        .filter(|s| s.ok && s.lane == Lane::Backlog)
        .map(|s| s.record)
        .collect();
    assert_delivered(&stale_records(5_000), &backlog, Copies::ExactlyOnce);
}

/// The most messages in any stretch of `times` (sorted) beyond what `rate`
/// per second allows over that stretch.
fn excess_over_rate(times: &[std::time::Instant], rate: f64) -> f64 {
    let Some(&t0) = times.first() else {
        return 0.0;
    };
    // Messages i..=j number j - i + 1; with f(k) = k - rate * t_k the excess
    // of that stretch is f(j) - f(i) + 1: keep the smallest f(i) so far.
    let f = |k: usize| k as f64 - rate * times[k].duration_since(t0).as_secs_f64();
    let mut lowest = f64::INFINITY;
    let mut worst = 0.0f64;
    for k in 0..times.len() {
        lowest = lowest.min(f(k));
        worst = worst.max(f(k) - lowest + 1.0);
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_ceiling_holds_backlog_throughput_under_it() {
    const RATE: f64 = 2_000.0;
    const DELIVERIES: usize = 3_000;
    let sink = RecordingSink::new();
    let store = prefilled(20_000).await;
    let config = GroupConfig {
        backlog_rate: Some(RATE),
        ..group(0.2)
    };
    let (slots, batch) = (config.slots, config.batch_size);
    let engine = Engine::builder()
        .group_with(config, Arc::new(sink.clone()), Some(store))
        .build()
        .unwrap();
    let (_monitor, stop, task) = spawn_engine(engine);
    // The backlog drains: this many deliveries come, however slowly.
    tokio::time::timeout(Duration::from_secs(120), sink.recorded(DELIVERIES))
        .await
        .expect("the rate-limited backlog stopped draining");
    stop.send(()).unwrap();
    let _ = task.await.unwrap();

    let seen = sink.seen();
    assert!(seen.iter().all(|s| s.lane == Lane::Backlog && s.ok));
    let mut times: Vec<_> = seen.iter().map(|s| s.at).collect();
    times.sort();
    // No stretch of the run, short or long, delivers more than the rate
    // allows. What may come on top: the bucket's starting tenth of a second,
    // one batch straddling the last token, and the batches that were taken
    // before a stretch began but reached the sink in it (at most one per
    // slot). A slow machine only delivers less, so only a broken ceiling
    // fails this.
    let allowance = RATE / 10.0 + batch as f64 + (slots * batch) as f64;
    let excess = excess_over_rate(&times, RATE);
    assert!(
        excess <= allowance,
        "{} deliveries: a stretch went {excess:.0} messages over {RATE}/s (allowed {allowance:.0})",
        seen.len()
    );
    // Every copy handed out is a stored record, unchanged; the stop came part
    // way, so only some of them.
    let tally = assert_delivered(
        &stale_records(20_000),
        &sink.delivered_records(),
        Copies::Unchanged,
    );
    assert_eq!(tally.copies, tally.distinct, "a record was delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_messages_take_the_backlog_share_and_never_touch_the_store() {
    const PILE: usize = 30_000;
    const LIVE: usize = 30_000;
    let sink = RecordingSink::new()
        .with_cost(Duration::from_micros(20))
        .gated();
    let store = Arc::new(MemoryBacklog::default());
    let config = group(0.2);
    let lane_capacity = (config.batch_size * config.slots * 2) as u64;
    let engine = Engine::builder()
        .group_with(config, Arc::new(sink.clone()), Some(store.clone()))
        .build()
        .unwrap();
    let live = engine.ingest(LanePolicy::Live);
    let catch_up = live.with_policy(LanePolicy::CatchUp);
    let (monitor, stop, task) = spawn_engine(engine);

    // The pile: held by its "source", submitted as catch-up in batches of
    // 1,000 whose acks this tracker follows.
    let pile = stale_records(PILE);
    let tracker = laneway::ack::AckTracker::new();
    let pile_task = {
        let (pile, tracker) = (pile.clone(), Arc::clone(&tracker));
        tokio::spawn(async move {
            for chunk in pile.chunks(1000) {
                let batch = chunk
                    .iter()
                    .map(|r| Incoming::Message(r.message()))
                    .collect();
                catch_up.submit(batch, tracker.register()).await;
            }
        })
    };
    // With the sink shut, the catch-up lane fills to its capacity and the
    // pile's submit waits there: nothing spills into the store.
    assert!(
        wait_until(&monitor, Duration::from_secs(30), |m| m.groups()[0]
            .catch_up_depth
            == lane_capacity)
        .await
    );
    let fresh: Vec<Record> = (0..LIVE as u64)
        .map(|i| {
            Record::new(
                "/pk/dev/thing/event/property/post".to_string(),
                format!("new-{i}"),
                now_epoch_ms(),
                json_payload(i),
            )
        })
        .collect();
    for chunk in fresh.chunks(1000) {
        let batch = chunk
            .iter()
            .map(|r| Incoming::Message(r.message()))
            .collect();
        live.submit(batch, AckRef::none()).await;
    }
    assert!(
        !pile_task.is_finished(),
        "the catch-up submit waits for room"
    );
    assert_eq!(monitor.groups()[0].catch_up_depth, lane_capacity);
    assert_eq!(store.depth().records, 0);

    sink.open();
    assert!(
        wait_until(&monitor, Duration::from_secs(60), |m| m.summary().delivered
            >= (PILE + LIVE) as u64)
        .await
    );
    pile_task.await.unwrap();
    stop.send(()).unwrap();
    let summary = task.await.unwrap();
    let group = &monitor.groups()[0];

    // Catch-up deliveries are backlog deliveries: with both lanes full they
    // get the backlog's share, no more.
    let seen = sink.seen();
    let window = &seen[2_000..17_000];
    let from_backlog = window.iter().filter(|s| s.lane == Lane::Backlog).count();
    let got = from_backlog as f64 / window.len() as f64;
    assert!(
        (got - 0.2).abs() <= 0.05,
        "catch-up got {got:.3} of deliveries"
    );
    // Every message once, byte for byte; every pile batch acknowledged; the
    // store never held one of them.
    let mut sent = pile;
    sent.extend(fresh);
    assert_delivered(&sent, &sink.delivered_records(), Copies::ExactlyOnce);
    assert_eq!(tracker.watermark(), (PILE / 1000) as u64);
    assert_eq!(
        (
            group.diverted_stale,
            group.diverted_full,
            group.diverted_failed
        ),
        (0, 0, 0)
    );
    assert_eq!(summary.delivered_backlog, PILE as u64);
    assert_eq!(store.depth().records, 0);
}
