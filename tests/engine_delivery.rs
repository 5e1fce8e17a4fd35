//! Delivery guarantees through a real engine: retries with backoff from the
//! backlog, dead letters after `max_attempts`, exactly once without
//! failures, at least once with them.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{RecordingSink, spawn_engine, wait_until};
use laneway::ack::AckTracker;
use laneway::engine::{Engine, GroupConfig, Incoming, LanePolicy};
use laneway::lane::Lane;
use laneway::message::{Message, now_epoch_ms};
use laneway::source::{Simulator, SimulatorConfig};

fn msg(id: &str) -> Incoming {
    Incoming::Message(
        Message::new(
            "/pk/dev/thing/event/property/post",
            id,
            now_epoch_ms(),
            Bytes::from_static(b"{}"),
        )
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_is_retried_from_the_backlog_with_backoff_then_dead_lettered() {
    let sink = RecordingSink::new().failing(|d| d.message.message_id().starts_with("bad"));
    let config = GroupConfig {
        max_attempts: 4,
        retry_initial: Duration::from_millis(40),
        retry_max: Duration::from_millis(200),
        ..GroupConfig::named("g")
    };
    let engine = Engine::builder()
        .group(config, sink.clone())
        .build()
        .unwrap();
    let dead = engine.dead_letters();
    let ingest = engine.ingest(LanePolicy::Auto);
    let tracker = AckTracker::new();
    let (monitor, stop, task) = spawn_engine(engine);
    ingest
        .submit(
            vec![msg("good-1"), msg("bad-1"), msg("good-2")],
            tracker.register(),
        )
        .await;
    assert!(
        wait_until(Duration::from_secs(10), || monitor.summary().dead_letter
            == 1)
        .await
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap();

    let seen = sink.seen();
    let bad: Vec<_> = seen.iter().filter(|s| s.id == "bad-1").collect();
    assert_eq!(bad.len(), 4, "four attempts: {bad:?}");
    assert_eq!(
        bad.iter().map(|s| s.attempts).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(bad[0].lane, Lane::Live);
    assert!(
        bad[1..].iter().all(|s| s.lane == Lane::Backlog),
        "retries come from the backlog"
    );
    // Backoff: 40 ms, 80 ms, 160 ms between attempts (never sooner).
    for (i, pair) in bad.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let want = Duration::from_millis(40 << i);
        assert!(
            gap >= want,
            "attempt {} came {gap:?} after the previous, before the {want:?} backoff",
            i + 1
        );
    }
    let counts = sink.delivered_counts();
    assert_eq!(counts.get("good-1"), Some(&1));
    assert_eq!(counts.get("good-2"), Some(&1));
    let letters = dead.recent();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message_id.as_deref(), Some("bad-1"));
    assert_eq!(letters[0].attempts, 4);
    assert!(
        letters[0].reason.contains("4 times"),
        "{}",
        letters[0].reason
    );
    assert_eq!(summary.dead_letter, 1);
    // The batch is acknowledged once the failure is durably settled.
    assert_eq!(tracker.watermark(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_delivered_exactly_once_without_failures() {
    let sink = RecordingSink::new();
    let engine = Engine::builder()
        .group(
            GroupConfig {
                live_capacity: 2_000,
                ..GroupConfig::named("all")
            },
            sink.clone(),
        )
        .source(
            Simulator::new(SimulatorConfig {
                rate: 0.0,
                count: Some(100_000),
                ..SimulatorConfig::default()
            }),
            LanePolicy::Auto,
        )
        .build()
        .unwrap();
    let summary =
        tokio::time::timeout(Duration::from_secs(120), engine.run(std::future::pending()))
            .await
            .expect("a finite source ends the run");
    let counts = sink.delivered_counts();
    assert_eq!(counts.len(), 100_000);
    assert!(
        counts.values().all(|&n| n == 1),
        "a message was delivered twice"
    );
    assert_eq!(summary.delivered, 100_000);
    assert_eq!(summary.dead_letter, 0);
    assert!(
        summary.delivered_backlog > 0,
        "an unpaced simulator overflows the live lane: {summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_delivered_at_least_once_when_the_handler_fails_at_random() {
    let calls = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&calls);
    // Fails about one message in seven, varying with the call count.
    let sink = RecordingSink::new().failing(move |_| {
        c.fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(2654435761)
            .is_multiple_of(7)
    });
    let config = GroupConfig {
        max_attempts: 1_000,
        retry_initial: Duration::from_millis(1),
        retry_max: Duration::from_millis(10),
        ..GroupConfig::named("g")
    };
    let engine = Engine::builder()
        .group(config, sink.clone())
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Auto);
    let tracker = AckTracker::new();
    let (monitor, stop, task) = spawn_engine(engine);
    let mut ids = HashSet::new();
    for b in 0..100 {
        let batch: Vec<_> = (0..200).map(|i| format!("m-{b}-{i}")).collect();
        ids.extend(batch.iter().cloned());
        ingest
            .submit(batch.iter().map(|id| msg(id)).collect(), tracker.register())
            .await;
    }
    assert!(
        wait_until(Duration::from_secs(60), || tracker.watermark() == 100).await,
        "every batch acknowledged"
    );
    // Acknowledged means delivered or held in the backlog; now let the
    // retries drain.
    assert!(
        wait_until(Duration::from_secs(60), || {
            let g = &monitor.groups()[0];
            g.backlog_depth == 0 && g.live_depth == 0
        })
        .await
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap();
    let counts = sink.delivered_counts();
    let missing: Vec<_> = ids
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert!(
        summary.groups[0].failed_attempts > 0,
        "the handler really failed"
    );
    assert_eq!(summary.dead_letter, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_batch_is_acknowledged_only_when_every_group_settled_it() {
    let fast = RecordingSink::new();
    let slow = RecordingSink::new().gated();
    let engine = Engine::builder()
        .group(GroupConfig::named("fast"), fast.clone())
        .group(GroupConfig::named("slow"), slow.clone())
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Auto);
    let tracker = AckTracker::new();
    let (monitor, stop, task) = spawn_engine(engine);
    ingest
        .submit(vec![msg("a"), msg("b")], tracker.register())
        .await;
    assert!(
        wait_until(Duration::from_secs(5), || monitor.groups()[0]
            .delivered_live
            == 2)
        .await
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        tracker.watermark(),
        0,
        "the slow group has not delivered yet"
    );
    slow.open();
    assert!(wait_until(Duration::from_secs(5), || tracker.watermark() == 1).await);
    stop.send(()).unwrap();
    let _ = task.await.unwrap();
}

/// A sink that refuses ("push limited") its first `refusals` batches.
struct RefusingSink {
    refusals: AtomicU64,
    inner: RecordingSink,
}

#[async_trait::async_trait]
impl laneway::sink::Sink for RefusingSink {
    async fn deliver(
        &self,
        batch: &[laneway::sink::Delivery],
    ) -> Result<(), laneway::sink::DeliveryError> {
        if self
            .refusals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(laneway::sink::DeliveryError::all("push limited: queue full").limited());
        }
        self.inner.deliver(batch).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_limited_refusals_wait_in_the_backlog_without_using_up_attempts() {
    let recording = RecordingSink::new();
    let sink = RefusingSink {
        refusals: AtomicU64::new(6),
        inner: recording.clone(),
    };
    let config = GroupConfig {
        max_attempts: 2,
        retry_initial: Duration::from_millis(10),
        ..GroupConfig::named("g")
    };
    let engine = Engine::builder().group(config, sink).build().unwrap();
    let ingest = engine.ingest(LanePolicy::Auto);
    let (monitor, stop, task) = spawn_engine(engine);
    ingest
        .submit(vec![msg("a"), msg("b")], laneway::ack::AckRef::none())
        .await;
    assert!(wait_until(Duration::from_secs(10), || monitor.delivered() == 2).await);
    stop.send(()).unwrap();
    let summary = task.await.unwrap();
    assert_eq!(
        summary.dead_letter, 0,
        "six refusals with max_attempts = 2: none is a dead letter"
    );
    assert_eq!(
        summary.delivered_backlog, 2,
        "refused messages are delivered from the backlog"
    );
    assert!(
        recording.seen().iter().all(|s| s.attempts == 0),
        "refusals used up no attempt"
    );
}
