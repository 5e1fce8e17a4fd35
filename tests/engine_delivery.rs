//! Delivery guarantees through a real engine: retries with backoff from the
//! backlog, dead letters after `max_attempts`, exactly once without
//! failures, at least once with them, through the live lane, the memory
//! backlog and the disk backlog. Every check compares whole records (topic,
//! id, generate time, payload bytes) with what was sent.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use laneway::ack::AckTracker;
use laneway::backlog::{BacklogStore, DiskBacklog, DiskBacklogConfig};
use laneway::engine::{Engine, GroupConfig};
use laneway::message::now_epoch_ms;
use laneway::sink::Lane;
use laneway::source::{Incoming, LanePolicy};
use support::engine::{RecordingSink, spawn_engine};
use support::records::{
    Copies, Record, assert_delivered, binary_payload, check_delivered, json_payload, json_records,
};
use support::wait::wait_until;

/// A fresh record with id `id` and a JSON payload whose length depends on it.
fn record(id: &str) -> Record {
    let n = id.bytes().map(u64::from).sum::<u64>();
    Record::new(
        "/pk/dev/thing/event/property/post",
        id,
        now_epoch_ms(),
        json_payload(n),
    )
}

fn incoming(records: &[Record]) -> Vec<Incoming> {
    records
        .iter()
        .map(|r| Incoming::Message(r.message()))
        .collect()
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
    let sent = [record("good-1"), record("bad-1"), record("good-2")];
    ingest.submit(incoming(&sent), tracker.register()).await;
    assert!(
        wait_until(&monitor, Duration::from_secs(10), |_| monitor
            .summary()
            .dead_letter
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
    // Each retry waited for its backoff: drawn with full jitter below a
    // ceiling of 40 ms, 80 ms, 160 ms (the draw is `Backoff`'s, bounded by
    // its unit tests), so retries are spaced, never back to back.
    for pair in bad.windows(2) {
        assert!(pair[1].at > pair[0].at, "retries are spaced: {bad:?}");
    }
    // Every attempt, the retries from the backlog included, carried the
    // message unchanged; the good ones were delivered once.
    assert_delivered(&sent, &sink.attempted_records(), Copies::Unchanged);
    let good = [sent[0].clone(), sent[2].clone()];
    assert_delivered(&good, &sink.delivered_records(), Copies::ExactlyOnce);
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
async fn every_message_is_delivered_exactly_once_and_unchanged_without_failures() {
    const N: u64 = 100_000;
    let sink = RecordingSink::new();
    let engine = Engine::builder()
        .group(
            GroupConfig {
                live_capacity: 2_000,
                ..GroupConfig::named("all")
            },
            sink.clone(),
        )
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Auto);
    let (monitor, stop, task) = spawn_engine(engine);
    // Fresh messages, and every tenth an hour old: the stale ones go to the
    // (memory) backlog, and fresh ones the live lane has no room for too.
    let now = now_epoch_ms();
    let sent = json_records("m", N, |i| if i % 10 == 0 { now - 3_600_000 } else { now });
    for chunk in sent.chunks(1_000) {
        ingest
            .submit(incoming(chunk), laneway::ack::AckRef::none())
            .await;
    }
    assert!(
        wait_until(&monitor, Duration::from_secs(120), |_| monitor.delivered()
            >= N)
        .await,
        "every message delivered"
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap();
    assert_delivered(&sent, &sink.delivered_records(), Copies::ExactlyOnce);
    assert_eq!(summary.delivered, N);
    assert_eq!(summary.dead_letter, 0);
    assert!(summary.delivered_live > 0, "{summary:?}");
    assert!(
        summary.delivered_backlog >= N / 10,
        "stale messages and the live lane's overflow come from the backlog: {summary:?}"
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
    let mut sent = Vec::new();
    for b in 0..100 {
        let batch: Vec<_> = (0..200).map(|i| record(&format!("m-{b}-{i}"))).collect();
        ingest.submit(incoming(&batch), tracker.register()).await;
        sent.extend(batch);
    }
    assert!(
        wait_until(&monitor, Duration::from_secs(60), |_| tracker.watermark()
            == 100)
        .await,
        "every batch acknowledged"
    );
    // Acknowledged means delivered or held in the backlog; now let the
    // retries drain.
    assert!(
        wait_until(&monitor, Duration::from_secs(60), |_| {
            let g = &monitor.groups()[0];
            g.backlog_depth == 0 && g.live_depth == 0
        })
        .await
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap();
    assert_delivered(&sent, &sink.delivered_records(), Copies::AtLeastOnce);
    assert_delivered(&sent, &sink.attempted_records(), Copies::Unchanged);
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
    let sent = [record("a"), record("b")];
    ingest.submit(incoming(&sent), tracker.register()).await;
    // The fast group has delivered both and the slow one holds them at
    // its gate: an event to wait on, then the state to check.
    assert!(
        wait_until(&monitor, Duration::from_secs(5), |_| {
            let groups = monitor.groups();
            groups[0].delivered_live == 2 && groups[1].slots_busy > 0
        })
        .await
    );
    assert_eq!(
        tracker.watermark(),
        0,
        "the slow group has not delivered yet"
    );
    slow.open();
    assert!(
        wait_until(&monitor, Duration::from_secs(5), |_| tracker.watermark()
            == 1)
        .await
    );
    stop.send(()).unwrap();
    let _ = task.await.unwrap();
    assert_delivered(&sent, &fast.delivered_records(), Copies::ExactlyOnce);
    assert_delivered(&sent, &slow.delivered_records(), Copies::ExactlyOnce);
}

/// A broker that hands a message out again while the first copy is still
/// being delivered (pulsar-lite does; so does any broker after a
/// reconnect): with a duplicate window the copy is held behind the first,
/// never delivered, and its batch is acknowledged only once the first is
/// delivered, so acknowledging the copy can never lose the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_arrives_while_the_first_is_in_flight_waits_for_it_and_is_not_delivered() {
    let sink = RecordingSink::new().gated();
    let config = GroupConfig {
        dedup_window: Some(Duration::from_secs(600)),
        ..GroupConfig::named("g")
    };
    let engine = Engine::builder()
        .group(config, sink.clone())
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Live);
    let tracker = AckTracker::new();
    let (monitor, stop, task) = spawn_engine(engine);
    let sent = [record("a"), record("b")];
    ingest
        .submit(incoming(&sent[..1]), tracker.register())
        .await;
    ingest.submit(incoming(&sent), tracker.register()).await;
    assert!(
        wait_until(&monitor, Duration::from_secs(10), |_| monitor.groups()[0]
            .duplicates
            == 1)
        .await,
        "the second copy of a is counted as a duplicate on admission"
    );
    assert_eq!(
        tracker.watermark(),
        0,
        "nothing is delivered yet, so neither batch is acknowledged"
    );
    sink.open();
    assert!(
        wait_until(&monitor, Duration::from_secs(10), |_| tracker.watermark()
            == 2)
        .await,
        "both batches are acknowledged once a and b are delivered"
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap();
    assert_delivered(&sent, &sink.delivered_records(), Copies::ExactlyOnce);
    assert_eq!(summary.groups[0].duplicates, 1);
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
    ) -> Result<(), laneway::sink::BatchError> {
        if self
            .refusals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            let refused =
                laneway::sink::DeliveryError::PushLimited("push limited: queue full".into());
            return Err(refused.into());
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
    let sent = [record("a"), record("b")];
    ingest
        .submit(incoming(&sent), laneway::ack::AckRef::none())
        .await;
    assert!(
        wait_until(&monitor, Duration::from_secs(10), |_| monitor.delivered()
            == 2)
        .await
    );
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
    assert_delivered(&sent, &recording.delivered_records(), Copies::ExactlyOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_disk_backlog_and_its_retries_every_payload_comes_out_byte_for_byte() {
    const N: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBacklog::open(
        dir.path(),
        DiskBacklogConfig {
            // Several segments, so reads cross segment boundaries.
            segment_bytes: 64 * 1024,
            commit_interval: Duration::ZERO,
            ..DiskBacklogConfig::default()
        },
    )
    .unwrap();
    let store: Arc<dyn BacklogStore> = Arc::new(store);
    // Every fifth message fails its first attempt: it is retried from disk.
    let sink = RecordingSink::new().failing(|d| {
        d.attempts == 0
            && d.message.message_id()[1..]
                .parse::<u64>()
                .is_ok_and(|n| n % 5 == 0)
    });
    let config = GroupConfig {
        // Arbitrary bytes, NULs included: nothing checks them as JSON.
        validate_json: false,
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        ..GroupConfig::named("disk")
    };
    let engine = Engine::builder()
        .group_with(config, Arc::new(sink.clone()), Some(store))
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Auto);
    let (monitor, stop, task) = spawn_engine(engine);
    // Half an hour old (stale: to the backlog on disk) and fresh (live),
    // with payloads of every length from 0 to 300 bytes.
    let now = now_epoch_ms();
    let sent: Vec<Record> = (0..N)
        .map(|i| {
            Record::new(
                format!("/pk{}/dev{}/thing/event/property/post", i % 3, i % 7),
                format!("d{i}"),
                if i % 2 == 0 { now - 1_800_000 } else { now },
                binary_payload(i),
            )
        })
        .collect();
    for chunk in sent.chunks(250) {
        ingest
            .submit(incoming(chunk), laneway::ack::AckRef::none())
            .await;
    }
    assert!(
        wait_until(&monitor, Duration::from_secs(60), |_| monitor.delivered()
            >= N)
        .await,
        "every message delivered: {:?}",
        monitor.summary()
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap();
    let g = &summary.groups[0];
    assert!(g.delivered_live > 0, "{g:?}");
    assert!(g.diverted_stale >= N / 2, "{g:?}");
    assert!(g.diverted_failed > 0, "{g:?}");
    let failures = sink.seen().iter().filter(|s| !s.ok).count() as u64;
    assert_eq!(failures, N / 5, "each fifth message failed once");
    assert_delivered(&sent, &sink.delivered_records(), Copies::ExactlyOnce);
    assert_delivered(&sent, &sink.attempted_records(), Copies::Unchanged);
    let from_disk = sink
        .seen()
        .iter()
        .filter(|s| s.lane == Lane::Backlog)
        .count() as u64;
    assert!(
        from_disk >= N / 2,
        "{from_disk} deliveries from the disk backlog"
    );
}

/// The check itself: it must catch a payload with bytes appended (the old
/// alignment padding bug), any other changed field, a loss, a duplicate
/// and a record never sent, and accept what is right.
#[test]
fn the_delivery_check_catches_padding_changes_losses_duplicates_and_strangers() {
    let sent = json_records("x", 8, |i| 1_000 + i as i64);
    assert_eq!(
        check_delivered(&sent, &sent, Copies::ExactlyOnce).map(|t| t.copies),
        Ok(8)
    );
    let changed = |f: &dyn Fn(&mut Record)| {
        let mut got = sent.clone();
        f(&mut got[3]);
        check_delivered(&sent, &got, Copies::AtLeastOnce)
    };
    for pad in 1..=7 {
        let err = changed(&|r| r.payload.extend(std::iter::repeat_n(0u8, pad))).unwrap_err();
        assert!(
            err.contains("1 changed") && err.contains("payload"),
            "{err}"
        );
    }
    let err = changed(&|r| r.payload[0] ^= 1).unwrap_err();
    assert!(err.contains("first difference at byte 0"), "{err}");
    assert!(
        changed(&|r| r.topic.push('x'))
            .unwrap_err()
            .contains("topic")
    );
    assert!(
        changed(&|r| r.generate_time_ms += 1)
            .unwrap_err()
            .contains("generateTime")
    );
    let err = changed(&|r| r.id = "stranger".into()).unwrap_err();
    assert!(
        err.contains("1 never sent") && err.contains("1 lost"),
        "{err}"
    );
    let mut twice = sent.clone();
    twice.push(sent[5].clone());
    assert!(check_delivered(&sent, &twice, Copies::AtLeastOnce).is_ok());
    let err = check_delivered(&sent, &twice, Copies::ExactlyOnce).unwrap_err();
    assert!(err.contains("1 delivered more than once"), "{err}");
    assert!(check_delivered(&sent, &sent[1..], Copies::AtLeastOnce).is_err());
    assert!(check_delivered(&sent, &sent[1..], Copies::Unchanged).is_ok());
    // An envelope line whose payload came back as a JSON string with NULs
    // (how the bug showed in a JSONL sink) reads back as changed bytes.
    let line = br#"{"topic":"/pk/d/thing/lifecycle","messageId":"m1","generateTime":1000,"payload":"{\"a\":1}\u0000\u0000\u0000"}"#;
    let got = Record::from_envelope_line(line).unwrap();
    let want = Record::new("/pk/d/thing/lifecycle", "m1", 1000, b"{\"a\":1}".to_vec());
    assert!(check_delivered(std::slice::from_ref(&want), &[got], Copies::ExactlyOnce).is_err());
    let good = Record::from_envelope_line(want.envelope_line().as_bytes()).unwrap();
    assert_eq!(good, want);
}

/// A stop while the backlog is full and the sink takes nothing is bounded
/// by the shutdown grace: sources blocked on the full writer queue are let
/// go, live leftovers are given up when the writer cannot take them, and
/// nothing unstored is acknowledged (their sources keep them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_the_backlog_full_and_the_sink_down_ends_within_the_grace() {
    use laneway::backlog::{MemoryBacklog, MemoryLimits};
    use laneway::engine::EngineOptions;

    let sink = RecordingSink::new().failing(|_| true);
    let store: Arc<dyn BacklogStore> = Arc::new(MemoryBacklog::new(MemoryLimits {
        max_records: 1,
        ..MemoryLimits::default()
    }));
    let engine = Engine::builder()
        .group_with(
            GroupConfig {
                slots: 1,
                live_capacity: 1,
                batch_size: 1,
                max_attempts: u32::MAX,
                retry_initial: Duration::from_millis(1),
                retry_max: Duration::from_millis(5),
                validate_json: false,
                ..GroupConfig::named("full")
            },
            Arc::new(sink.clone()),
            Some(store),
        )
        .options(EngineOptions {
            shutdown_grace: Duration::from_millis(200),
            finish_when_drained: false,
            ..EngineOptions::default()
        })
        .build()
        .unwrap();
    let live = engine.ingest(LanePolicy::Live);
    let stale = engine.ingest(LanePolicy::Backlog);
    let tracker = AckTracker::new();
    let (monitor, stop, task) = spawn_engine(engine);
    let limit = Duration::from_secs(20);

    // The store takes one record and is full; the sink fails it, so it
    // holds the only slot, retried there.
    stale
        .submit(incoming(&[record("stored")]), tracker.register())
        .await;
    sink.recorded(1).await;
    for id in ["live-1", "live-2"] {
        live.submit(incoming(&[record(id)]), tracker.register())
            .await;
    }
    // The writer holds the next record and its queue (64 batches) fills:
    // the submits after those wait on it.
    let returned = Arc::new(AtomicU64::new(0));
    let mut blocked = Vec::new();
    for i in 0..100 {
        let (stale, returned) = (stale.clone(), Arc::clone(&returned));
        let ack = tracker.register();
        blocked.push(tokio::spawn(async move {
            stale
                .submit(incoming(&[record(&format!("s{i}"))]), ack)
                .await;
            returned.fetch_add(1, Ordering::SeqCst);
        }));
    }
    assert!(
        wait_until(&monitor, limit, |_| returned.load(Ordering::SeqCst) >= 60).await,
        "the writer's queue took the first submits"
    );

    stop.send(()).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the stop ends within the grace, not never")
        .unwrap();
    for b in blocked {
        tokio::time::timeout(Duration::from_secs(30), b)
            .await
            .expect("a blocked submit is let go at shutdown")
            .unwrap();
    }
    assert_eq!(summary.delivered, 0);
    assert!(sink.delivered_records().is_empty());
    // Only the one stored record's batch was done: the watermark, which
    // never passes an undone batch, stands right after it.
    assert_eq!(tracker.watermark(), 1);
}

/// A sink that panics the first time it is handed the message `boom` (a
/// handler unwrapping a field it expected), then delivers as its inner
/// recording sink does.
struct PanicsOnce {
    inner: RecordingSink,
    panicked: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl laneway::sink::Sink for PanicsOnce {
    async fn deliver(
        &self,
        batch: &[laneway::sink::Delivery],
    ) -> Result<(), laneway::sink::BatchError> {
        if batch.iter().any(|d| d.message.message_id() == "boom")
            && !self.panicked.swap(true, Ordering::SeqCst)
        {
            panic!("the handler unwrapped a field the message lacks");
        }
        self.inner.deliver(batch).await
    }
}

/// A sink call that panics fails its batch (retried, counted as an
/// attempt) instead of killing the delivery task: every message arrives
/// unchanged, every batch is acknowledged and the group goes idle again,
/// on the live lane and from the backlog. Before, the task died with the
/// group's in-flight counts raised (never idle again, so a file run never
/// ended) and the batch's records and acks stranded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_panics_fails_its_batch_and_the_group_goes_on() {
    for policy in [LanePolicy::Auto, LanePolicy::Backlog] {
        let recording = RecordingSink::new();
        let sink = Arc::new(PanicsOnce {
            inner: recording.clone(),
            panicked: Default::default(),
        });
        let config = GroupConfig {
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_millis(20),
            ..GroupConfig::named("g")
        };
        let engine = Engine::builder()
            .group_with(config, sink, None)
            .build()
            .unwrap();
        let ingest = engine.ingest(policy);
        let tracker = AckTracker::new();
        let (monitor, stop, task) = spawn_engine(engine);
        let sent = [record("before"), record("boom"), record("after")];
        ingest
            .submit(incoming(&sent[..2]), tracker.register())
            .await;
        ingest
            .submit(incoming(&sent[2..]), tracker.register())
            .await;
        let done = wait_until(&monitor, Duration::from_secs(30), |m| {
            tracker.watermark() == 2 && m.is_idle()
        })
        .await;
        assert!(
            done,
            "{policy:?}: acknowledged {} of 2 batches, idle {}",
            tracker.watermark(),
            monitor.is_idle()
        );
        assert_delivered(&sent, &recording.delivered_records(), Copies::AtLeastOnce);
        assert!(monitor.groups()[0].failed_attempts >= 1, "{policy:?}");
        stop.send(()).unwrap();
        task.await.unwrap();
    }
}

/// A sink whose `close` never returns (a client waiting on a peer that
/// went silent).
struct NeverCloses(RecordingSink);

#[async_trait::async_trait]
impl laneway::sink::Sink for NeverCloses {
    async fn deliver(
        &self,
        batch: &[laneway::sink::Delivery],
    ) -> Result<(), laneway::sink::BatchError> {
        self.0.deliver(batch).await
    }

    async fn close(&self) -> Result<(), laneway::sink::DeliveryError> {
        std::future::pending().await
    }
}

/// A sink that never finishes closing holds the shutdown no longer than
/// the grace: what it delivered is acknowledged, and the run ends. Before,
/// the group waited on `close` for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_never_finishes_closing_holds_the_shutdown_only_for_the_grace() {
    let recording = RecordingSink::new();
    let grace = Duration::from_millis(300);
    let engine = Engine::builder()
        .group_with(
            GroupConfig::named("g"),
            Arc::new(NeverCloses(recording.clone())),
            None,
        )
        .options(laneway::engine::EngineOptions {
            shutdown_grace: grace,
            ..Default::default()
        })
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Auto);
    let tracker = AckTracker::new();
    let (monitor, stop, task) = spawn_engine(engine);
    let sent = [record("one"), record("two")];
    ingest.submit(incoming(&sent), tracker.register()).await;
    assert!(wait_until(&monitor, Duration::from_secs(30), |m| m.delivered() == 2).await);
    stop.send(()).unwrap();
    let ended = tokio::time::timeout(grace * 20, task).await;
    assert!(ended.is_ok(), "the run waited on the sink's close");
    assert_delivered(&sent, &recording.delivered_records(), Copies::ExactlyOnce);
    assert_eq!(tracker.watermark(), 1);
}
