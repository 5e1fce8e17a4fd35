//! Poison messages from a real queue: no topic, a body that is not JSON,
//! an oversize body, a topic that is not text. Each becomes a dead letter
//! with its reason, every good message is delivered, and the queue ends
//! empty (the poison was acknowledged once recorded). Good messages are
//! compared with what was published byte for byte.

#![cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use laneway::amqp::{AmqpSource, headers};
use laneway::engine::{DeadLetters, Engine, EngineOptions, GroupConfig};
use laneway::sink::{Delivery, handler_fn};
use laneway::source::LanePolicy;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use support::broker::*;
use support::names::unique;
use support::records::{self, Copies, Record, assert_delivered};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_become_dead_letters_with_reasons_and_the_rest_flows() {
    let _lock = broker_lock(false);
    let queue = unique("poison");
    let conn = connection().await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, &queue, FieldTable::default()).await;

    let now = laneway::message::now_epoch_ms();
    let mut good = Vec::new();
    for i in 0..200 {
        let r = Record::new(
            format!("/a1pk/dev-{i}/thing/event/property/post"),
            format!("good-{i}"),
            now + i as i64,
            records::json_payload(i),
        );
        publish_raw(
            &ch,
            &queue,
            &r.payload,
            headers::properties(&r.topic, &r.id, r.generate_time_ms, true),
        )
        .await;
        good.push(r);
        if i % 50 == 0 {
            // Poison interleaved with good messages.
            publish_raw(&ch, &queue, b"{}", BasicProperties::default()).await;
            publish_raw(
                &ch,
                &queue,
                b"not json {",
                headers::properties(
                    "/a1pk/dev-x/thing/lifecycle",
                    &format!("bad-json-{i}"),
                    now,
                    true,
                ),
            )
            .await;
            publish_raw(
                &ch,
                &queue,
                &vec![b'7'; 8192],
                headers::properties(
                    "/a1pk/dev-y/thing/lifecycle",
                    &format!("big-{i}"),
                    now,
                    true,
                ),
            )
            .await;
            let mut h = FieldTable::default();
            h.insert("topic".into(), AMQPValue::LongLongInt(5));
            publish_raw(
                &ch,
                &queue,
                b"{}",
                BasicProperties::default().with_headers(h),
            )
            .await;
        }
    }

    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink_seen = Arc::clone(&seen);
    let sink = handler_fn(move |d: Delivery| {
        let seen = Arc::clone(&sink_seen);
        async move {
            seen.lock().push(Record::of(&d.message));
            Ok::<(), String>(())
        }
    });
    let dead = DeadLetters::in_memory();
    let source = AmqpSource::new(laneway::amqp::AmqpSourceConfig {
        idle_exit: Some(Duration::from_secs(1)),
        ..source_config(&queue)
    })
    .unwrap();
    let engine = Engine::builder()
        .group(GroupConfig::named("all"), sink)
        .source(source, LanePolicy::Auto)
        .dead_letters(Arc::clone(&dead))
        .options(EngineOptions {
            max_message_bytes: 4096,
            ..EngineOptions::default()
        })
        .build()
        .unwrap();
    let summary =
        tokio::time::timeout(Duration::from_secs(120), engine.run(std::future::pending()))
            .await
            .expect("the run finishes once the queue is idle");

    // Every good message is delivered once, unchanged.
    assert_delivered(&good, &seen.lock(), Copies::ExactlyOnce);

    let letters = dead.recent();
    let count = |needle: &str| letters.iter().filter(|l| l.reason.contains(needle)).count();
    assert_eq!(count("no topic"), 4, "{letters:#?}");
    assert_eq!(count("unusable topic"), 4, "{letters:#?}");
    assert_eq!(count("not valid JSON"), 4, "{letters:#?}");
    assert_eq!(count("oversize"), 4, "{letters:#?}");
    assert_eq!(letters.len(), 16);
    assert!(letters.iter().all(|l| !l.reason.is_empty()));
    assert!(
        letters
            .iter()
            .filter(|l| l.reason.contains("no topic"))
            .all(|l| l.origin.as_deref().is_some_and(|o| o.contains(&queue))),
        "dead letters name their queue"
    );
    assert_eq!(summary.dead_letter, 16);
    assert_eq!(
        ready(&ch, &queue).await,
        0,
        "poison is acknowledged once recorded"
    );
    cleanup(&ch, &[&queue], &[]).await;
}
