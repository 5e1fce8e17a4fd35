//! The backlog writer's queue is bounded in bytes, not only in batches:
//! while the backlog cannot take anything, a source of large messages is
//! held once about 8 MiB of them wait for the writer, whatever their
//! count. Before the byte bound, 64 batches waited whatever their size.

use std::sync::Arc;
use std::time::Duration;

use laneway::ack::AckRef;
use laneway::backlog::{MemoryBacklog, MemoryLimits};
use laneway::engine::{Engine, GroupConfig};
use laneway::message::{Message, now_epoch_ms};
use laneway::sink::NullSink;
use laneway::source::{Incoming, LanePolicy};

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
        max_bytes: 0,
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
