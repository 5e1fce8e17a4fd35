//! `slots = "auto"` against a sink with a fixed number of servers: the
//! limit grows from `min_slots` while the sink keeps up, falls back to
//! `min_slots` while the sink pushes back, and grows again once it
//! recovers; every message is delivered once, byte for byte, whatever the
//! limit did on the way.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use laneway::ack::AckTracker;
use laneway::engine::{AdaptiveSlots, Engine, GroupConfig, Monitor};
use laneway::message::now_epoch_ms;
use laneway::sink::{BatchError, Delivery, DeliveryError, Sink};
use laneway::source::{Incoming, LanePolicy};
use parking_lot::Mutex;
use support::engine::spawn_engine;
use support::records::{Copies, Record, assert_delivered, binary_payload};
use support::wait::eventually;
use tokio::sync::Semaphore;

/// A handler with `servers` workers, each taking `cost` per call: calls
/// beyond the servers queue, so their round trip grows. While `pushing_back`
/// it refuses every call as push limited.
struct Servers {
    workers: Semaphore,
    cost: Duration,
    pushing_back: AtomicBool,
    delivered: Mutex<Vec<Record>>,
}

#[async_trait]
impl Sink for Servers {
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        if self.pushing_back.load(Ordering::SeqCst) {
            return Err(DeliveryError::PushLimited("all servers busy (429)".into()).into());
        }
        let _worker = self.workers.acquire().await.unwrap();
        tokio::time::sleep(self.cost).await;
        self.delivered
            .lock()
            .extend(batch.iter().map(|d| Record::of(&d.message)));
        Ok(())
    }
}

fn records(n: usize) -> Vec<Record> {
    let now = now_epoch_ms();
    (0..n)
        .map(|i| {
            Record::new(
                format!("/pk/dev-{}/thing/event/property/post", i % 50),
                format!("m-{i}"),
                now,
                binary_payload(i as u64),
            )
        })
        .collect()
}

fn limit(monitor: &Monitor) -> u64 {
    monitor.groups()[0].slots_limit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_follows_the_sink_up_down_to_min_and_up_again() {
    let sink = Arc::new(Servers {
        workers: Semaphore::new(8),
        cost: Duration::from_millis(3),
        pushing_back: AtomicBool::new(false),
        delivered: Mutex::default(),
    });
    let config = GroupConfig {
        slots: 32,
        adaptive_slots: Some(AdaptiveSlots { min: 2 }),
        batch_size: 4,
        live_capacity: 100_000,
        live_window: Duration::from_secs(3600),
        max_attempts: u32::MAX,
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        validate_json: false,
        ..GroupConfig::named("auto")
    };
    let engine = Engine::builder()
        .group_with(config, Arc::clone(&sink) as Arc<dyn Sink>, None)
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Auto);
    let tracker = AckTracker::new();
    let (monitor, stop, task) = spawn_engine(engine);
    let limit_of = Duration::from_secs(30);
    assert_eq!(
        monitor.groups()[0].slots_limit,
        2,
        "an adaptive group starts at min_slots"
    );
    assert!(monitor.groups()[0].slots_adaptive);

    let sent = records(20_000);
    let submit = |r: &[Record]| -> Vec<Incoming> {
        r.iter().map(|r| Incoming::Message(r.message())).collect()
    };
    ingest
        .submit(submit(&sent[..10_000]), tracker.register())
        .await;
    eventually(
        &monitor,
        limit_of,
        "the limit to grow while the sink keeps up",
        |m| limit(m) >= 6,
    )
    .await;

    sink.pushing_back.store(true, Ordering::SeqCst);
    eventually(
        &monitor,
        limit_of,
        "the limit to fall to min_slots under push-back",
        |m| limit(m) == 2,
    )
    .await;

    sink.pushing_back.store(false, Ordering::SeqCst);
    ingest
        .submit(submit(&sent[10_000..]), tracker.register())
        .await;
    eventually(
        &monitor,
        limit_of,
        "the limit to grow again after the push-back",
        |m| limit(m) >= 6,
    )
    .await;
    eventually(&monitor, limit_of, "every message delivered", |m| {
        m.is_idle()
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let delivered = sink.delivered.lock().clone();
    assert_delivered(&sent, &delivered, Copies::ExactlyOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_group_reports_its_slots_as_its_limit() {
    let sink = Arc::new(Servers {
        workers: Semaphore::new(1),
        cost: Duration::ZERO,
        pushing_back: AtomicBool::new(false),
        delivered: Mutex::default(),
    });
    let config = GroupConfig {
        slots: 5,
        ..GroupConfig::named("fixed")
    };
    let engine = Engine::builder()
        .group_with(config, sink as Arc<dyn Sink>, None)
        .build()
        .unwrap();
    let g = &engine.monitor().groups()[0];
    assert_eq!((g.slots, g.slots_limit, g.slots_adaptive), (5, 5, false));
}
