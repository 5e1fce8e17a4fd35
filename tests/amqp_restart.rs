//! A broker restart mid-stream (`rabbitmqctl stop_app` / `start_app`):
//! laneway reconnects with backoff, unacknowledged messages come back as
//! redeliveries, and nothing is lost; duplicates stay within the prefetch
//! window; every copy delivered is byte for byte the message published
//! (compared with a mirror queue's copy).
//!
//! This test stops the shared broker, so it holds the broker lock
//! exclusively: the other RabbitMQ tests take it shared and never run while
//! the broker is down.

#![cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]

use crate::support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use laneway::amqp::{AmqpSource, AmqpSourceConfig};
use laneway::engine::{Engine, GroupConfig};
use laneway::sink::{Delivery, handler_fn};
use laneway::source::LanePolicy;
use parking_lot::Mutex;
use support::broker::*;
use support::names::unique;
use support::records::{Copies, Record, assert_delivered};
use support::wait::eventually;

const COUNT: u64 = 30_000;
const PREFETCH: u16 = 500;

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is installed");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing() {
    let _lock = broker_lock(true);
    let exchange = unique("restart");
    let queue = exchange.clone();
    // Persistent messages in a durable queue survive the restart.
    let conn = connection().await;
    let ch = conn.create_channel().await.unwrap();
    let mirror = mirror(&ch, &exchange).await;
    simulate(&exchange, COUNT, &[]);
    let sent = read_records(&conn, &mirror, COUNT as usize).await;
    drop(ch);
    let _ = conn.close(200, "read the mirror".into()).await;

    let seen = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let copies = Arc::new(Mutex::new(Vec::<Record>::new()));
    let sink_seen = Arc::clone(&seen);
    let sink_copies = Arc::clone(&copies);
    let sink = handler_fn(move |d: Delivery| {
        let seen = Arc::clone(&sink_seen);
        let copies = Arc::clone(&sink_copies);
        async move {
            *seen
                .lock()
                .entry(d.message.message_id().to_string())
                .or_default() += 1;
            copies.lock().push(Record::of(&d.message));
            Ok::<(), String>(())
        }
    });
    let source = AmqpSource::new(AmqpSourceConfig {
        prefetch: PREFETCH,
        reconnect_initial: Duration::from_millis(200),
        reconnect_max: Duration::from_secs(2),
        ..source_config(&queue)
    })
    .unwrap();
    let engine = Engine::builder()
        .group(
            GroupConfig {
                // Slow enough that the restart lands mid-stream.
                slots: 1,
                batch_size: 16,
                ..GroupConfig::named("all")
            },
            sink,
        )
        .source(source, LanePolicy::Live)
        .build()
        .unwrap();
    let monitor = engine.monitor();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(engine.run(async {
        let _ = stop_rx.await;
    }));

    let s = Arc::clone(&seen);
    eventually(
        &monitor,
        Duration::from_secs(120),
        "a few thousand messages before the restart",
        move |_| s.lock().len() >= 3_000,
    )
    .await;
    let before = seen.lock().len();
    rabbitmqctl(&["stop_app"]);
    // The outage's length, not a wait for anything: the broker stays down
    // long enough for the source to notice and start reconnecting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    eprintln!("restarted the broker after {before} messages");

    let s = Arc::clone(&seen);
    eventually(
        &monitor,
        Duration::from_secs(300),
        "every message after the restart",
        move |_| s.lock().len() as u64 >= COUNT,
    )
    .await;
    let _ = stop_tx.send(());
    let summary = run.await.unwrap();

    let seen = seen.lock().clone();
    assert_eq!(seen.len() as u64, COUNT, "zero loss");
    let duplicates: u64 = seen.values().map(|&n| u64::from(n - 1)).sum();
    eprintln!("duplicates after one restart: {duplicates}; {summary:?}");
    assert!(
        duplicates <= u64::from(PREFETCH),
        "duplicates ({duplicates}) stay within the prefetch window ({PREFETCH})"
    );
    assert!(before < COUNT as usize, "the restart happened mid-stream");
    let tally = assert_delivered(&sent, &copies.lock(), Copies::AtLeastOnce);
    assert_eq!(tally.duplicates as u64, duplicates);

    let conn = connection().await;
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(
        ready(&ch, &queue).await,
        0,
        "everything was acknowledged in the end"
    );
    cleanup(&ch, &[&queue, &mirror], &[&exchange]).await;
}
