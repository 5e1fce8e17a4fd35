//! Read-through a pile: the queue holds a large pile of stale messages and
//! fresh ones are published behind it; the handler is slow (about 1,000
//! messages/s). laneway reads through the pile at the speed RabbitMQ delivers
//! (stale messages go to the backlog and are acknowledged), so the first
//! fresh message is handled long before the pile is.
//!
//! The pile is 50,000 messages in release builds (`.ci/run` runs this
//! test with `--release`) and 20,000 in debug builds, where the client and
//! the engine are several times slower at reading; the handler takes about
//! 1,000 messages/s in both (4 slots of 4 ms per message in release, 2
//! slots of 2 ms in debug), so that in both it is many times slower than
//! reading the pile (RabbitMQ hands it over at 10,000–20,000/s here), and
//! the run stays under a minute. `laneway bench` measures larger piles.
//!
//! Every message, stale (through the backlog) or fresh, is delivered once,
//! byte for byte as published (compared with a mirror queue's copy).

#![cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use laneway::amqp::AmqpSource;
use laneway::engine::{Engine, GroupConfig};
use laneway::sink::{BatchError, Delivery, Sink};
use laneway::source::LanePolicy;
use parking_lot::Mutex;
use support::broker::*;
use support::names::unique;
use support::records::{Copies, Record, assert_delivered};
use support::wait::eventually;

const PILE: u64 = if cfg!(debug_assertions) {
    20_000
} else {
    50_000
};
const SLOTS: usize = if cfg!(debug_assertions) { 2 } else { 4 };
const FRESH: u64 = 1_000;
const COST: Duration = Duration::from_millis(if cfg!(debug_assertions) { 2 } else { 4 });

#[derive(Default)]
struct Timeline {
    stale_handled: u64,
    fresh_handled: u64,
    first_fresh: Option<(Duration, u64)>,
    pile_done: Option<Duration>,
    delivered: Vec<Record>,
}

/// A slow handler that records when stale and fresh messages are handled.
struct Recorder {
    start: Instant,
    timeline: Arc<Mutex<Timeline>>,
}

#[async_trait::async_trait]
impl Sink for Recorder {
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        tokio::time::sleep(COST * batch.len() as u32).await;
        let now_ms = laneway::message::now_epoch_ms();
        let at = self.start.elapsed();
        let mut t = self.timeline.lock();
        for d in batch {
            t.delivered.push(Record::of(&d.message));
            if d.message.age_ms(now_ms) > 30 * 60 * 1000 {
                t.stale_handled += 1;
                if t.stale_handled == PILE {
                    t.pile_done = Some(at);
                }
            } else {
                t.fresh_handled += 1;
                if t.first_fresh.is_none() {
                    t.first_fresh = Some((at, t.stale_handled));
                }
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_messages_behind_a_stale_pile_are_handled_long_before_the_pile() {
    let _lock = broker_lock(false);
    let exchange = unique("pile");
    let queue = exchange.clone();
    let conn = connection().await;
    let ch = conn.create_channel().await.unwrap();
    let mirror = mirror(&ch, &exchange).await;
    // The pile: stamped an hour ago. Then fresh messages behind it.
    simulate(
        &exchange,
        PILE,
        &["--age", "1h", "--transient", "--seed", "1"],
    );
    simulate(&exchange, FRESH, &["--transient", "--seed", "2"]);
    let sent = read_records(&conn, &mirror, (PILE + FRESH) as usize).await;

    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let start = Instant::now();
    let sink = Recorder {
        start,
        timeline: Arc::clone(&timeline),
    };
    let source = AmqpSource::new(source_config(&queue)).unwrap();
    let engine = Engine::builder()
        .group(
            GroupConfig {
                // Fresh messages stay fresh however long the pile takes to read.
                live_window: Duration::from_secs(600),
                slots: SLOTS,
                batch_size: 64,
                validate_json: false,
                ..GroupConfig::named("slow")
            },
            sink,
        )
        .source(source, LanePolicy::Auto)
        .build()
        .unwrap();
    let monitor = engine.monitor();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(engine.run(async {
        let _ = stop_rx.await;
    }));

    let t = Arc::clone(&timeline);
    eventually(
        &monitor,
        Duration::from_secs(600),
        "the whole pile to be handled",
        move |_| {
            let t = t.lock();
            t.pile_done.is_some() && t.fresh_handled >= FRESH
        },
    )
    .await;
    let _ = stop_tx.send(());
    let summary = run.await.unwrap();

    let t = std::mem::take(&mut *timeline.lock());
    let (first_fresh, stale_before) = t.first_fresh.expect("fresh messages were handled");
    let pile_done = t.pile_done.expect("the pile was handled");
    eprintln!(
        "pile {PILE}: first fresh handled at {first_fresh:?} after {stale_before} stale; pile done at {pile_done:?}; summary {summary:?}"
    );
    assert!(first_fresh < pile_done, "fresh first");
    assert!(
        first_fresh * 3 < pile_done,
        "a wide margin: first fresh at {first_fresh:?}, pile done at {pile_done:?}"
    );
    assert!(
        stale_before * 4 < PILE,
        "the fresh message overtook most of the pile: {stale_before} of {PILE} stale were handled first"
    );
    assert_eq!(t.fresh_handled, FRESH);
    assert_eq!(t.stale_handled, PILE);
    let g = &monitor.groups()[0];
    assert!(
        g.diverted_stale >= PILE,
        "the pile went through the backlog"
    );

    assert_delivered(&sent, &t.delivered, Copies::ExactlyOnce);

    assert_eq!(ready(&ch, &queue).await, 0);
    cleanup(&ch, &[&queue, &mirror], &[&exchange]).await;
}
