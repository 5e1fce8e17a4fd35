//! The backlog writer's queue is bounded in bytes, not only in batches:
//! while the backlog cannot take anything, a source of large messages is
//! held once about 8 MiB of them wait for the writer, whatever their
//! count. Before the byte bound, 64 batches waited whatever their size.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use laneway::ack::{AckRef, AckTracker};
use laneway::backlog::{BacklogStore, DiskBacklog, DiskBacklogConfig, MemoryBacklog, MemoryLimits};
use laneway::engine::{Engine, GroupConfig};
use laneway::message::{Message, now_epoch_ms};
use laneway::sink::NullSink;
use laneway::source::{Incoming, LanePolicy};
use support::engine::{RecordingSink, spawn_engine};
use support::records::{Copies, Record, assert_delivered};
use support::wait::wait_until;

/// Payload size: 16 of them fill the writer's 8 MiB.
const PAYLOAD: usize = 512 * 1024;

/// With the clock paused, the runtime advances it only when every task is
/// waiting, so a long sleep ends once the source can go no further (the
/// writer's retry timer is all that still fires): no guessed wait.
#[tokio::test(start_paused = true)]
async fn a_backlog_that_takes_nothing_holds_the_source_after_8_mib_of_large_messages() {
    // A store that is always full: every append is refused.
    let store = Arc::new(MemoryBacklog::new(MemoryLimits {
        max_records: 0,
        max_bytes: u64::MAX,
    }));
    let engine = Engine::builder()
        .group_with(
            GroupConfig {
                validate_json: false,
                ..GroupConfig::named("g")
            },
            Arc::new(NullSink),
            Some(store),
        )
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Backlog);
    let monitor = engine.monitor();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(engine.run(async move {
        let _ = stop_rx.await;
    }));
    // Not JSON, not text: every byte value, NULs included.
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i * 7 % 256) as u8).collect();
    let feeder = tokio::spawn(async move {
        for i in 0..200 {
            let m = Message::new(
                "/pk/dn1/thing/event/property/post",
                format!("m{i}"),
                now_epoch_ms(),
                payload.clone(),
            )
            .unwrap();
            ingest
                .submit(vec![Incoming::Message(m)], AckRef::none())
                .await;
        }
    });
    tokio::time::sleep(Duration::from_secs(600)).await;
    let admitted = monitor.groups()[0].admitted;
    // 16 messages in the writer's budget, one held waiting for it, and
    // one in the source's hand.
    assert!(
        (16..=18).contains(&admitted),
        "{admitted} messages of {PAYLOAD} bytes were taken in while the backlog took nothing"
    );
    assert!(!feeder.is_finished(), "the source was never held");
    feeder.abort();
    let _ = stop_tx.send(());
    run.abort();
}

/// One store of each kind whose limit an 8 KiB message passes: a memory
/// store of 4 KiB, a disk store of 4 KiB segments.
fn small_stores(dir: &std::path::Path) -> Vec<(&'static str, Arc<dyn BacklogStore>)> {
    vec![
        (
            "memory",
            Arc::new(MemoryBacklog::new(MemoryLimits {
                max_records: 1_000,
                max_bytes: 4096,
            })),
        ),
        (
            "disk",
            Arc::new(
                DiskBacklog::open(
                    dir,
                    DiskBacklogConfig {
                        segment_bytes: 4096,
                        commit_interval: Duration::ZERO,
                        ..DiskBacklogConfig::default()
                    },
                )
                .unwrap(),
            ),
        ),
    ]
}

/// A message the backlog can never hold (larger than the whole memory
/// store, or than a disk segment) becomes a dead letter with its bytes and
/// the reason; the messages queued with it and after it are stored,
/// acknowledged and delivered unchanged. Before, the writer offered the
/// same batch for ever, and intake stopped behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_backlog_can_never_hold_is_a_dead_letter_and_the_rest_are_stored() {
    let tmp = tempfile::tempdir().unwrap();
    for (kind, store) in small_stores(tmp.path()) {
        let sink = RecordingSink::new();
        let engine = Engine::builder()
            .group_with(
                GroupConfig {
                    validate_json: false,
                    ..GroupConfig::named("g")
                },
                Arc::new(sink.clone()),
                Some(Arc::clone(&store)),
            )
            .build()
            .unwrap();
        let dead = engine.dead_letters();
        let ingest = engine.ingest(LanePolicy::Backlog);
        let (monitor, stop, task) = spawn_engine(engine);
        let huge: Vec<u8> = (0..8192).map(|i| (i * 13 % 256) as u8).collect();
        let small = [
            Record::new(
                "/pk/dn1/thing/event/property/post",
                "small-1",
                42,
                &b"\xff\0a"[..],
            ),
            Record::new(
                "/pk/dn2/thing/event/property/post",
                "small-2",
                43,
                &b"b\0"[..],
            ),
            Record::new("/pk/dn3/thing/lifecycle", "small-3", 44, &b"c"[..]),
        ];
        let big = Record::new("/pk/dn1/thing/event/property/post", "huge", 42, &huge[..]);
        let tracker = AckTracker::new();
        let first = vec![
            Incoming::Message(small[0].message()),
            Incoming::Message(big.message()),
            Incoming::Message(small[1].message()),
        ];
        ingest.submit(first, tracker.register()).await;
        let second = vec![Incoming::Message(small[2].message())];
        ingest.submit(second, tracker.register()).await;
        let settled = wait_until(&monitor, Duration::from_secs(30), |m| {
            tracker.watermark() == 2 && m.groups()[0].delivered_backlog == 3
        })
        .await;
        assert!(
            settled,
            "{kind}: acknowledged {} of 2 batches (dead letters {}, backlog {:?})",
            tracker.watermark(),
            dead.recent().len(),
            store.depth()
        );
        let letters = dead.recent();
        assert_eq!(letters.len(), 1, "{kind}");
        assert_eq!(letters[0].message_id.as_deref(), Some("huge"));
        assert_eq!(
            letters[0].body, huge,
            "{kind}: the dead letter keeps the bytes"
        );
        assert_eq!(letters[0].generate_time_ms, Some(42));
        assert!(
            letters[0].reason.contains("backlog"),
            "{}",
            letters[0].reason
        );
        assert_delivered(&small, &sink.delivered_records(), Copies::ExactlyOnce);
        assert_eq!(monitor.groups()[0].dead_letter, 1);
        stop.send(()).unwrap();
        task.await.unwrap();
    }
}
