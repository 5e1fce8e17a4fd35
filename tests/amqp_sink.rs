//! The AMQP sink against a real RabbitMQ, with a group queue declared
//! `x-max-length` + `x-overflow: reject-publish` and no consumer: the
//! broker nacks what does not fit ("push limited"), laneway keeps those
//! messages in the group's backlog; once a consumer runs again, fresh
//! messages reach it first while the backlog drains beside them, and in
//! the end every message arrived. Also: an unroutable message (no queue
//! bound for its routing key) is a dead letter with the reason. What the
//! consumer receives is compared with what was submitted byte for byte
//! (headers and body).

#![cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]

use crate::support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use laneway::amqp::{AmqpSink, AmqpSinkConfig};
use laneway::engine::{DeadLetters, Engine, GroupConfig};
use laneway::source::simulator::Fleet;
use laneway::source::{Incoming, LanePolicy};
use lapin::options::BasicConsumeOptions;
use lapin::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use support::broker::*;
use support::names::unique;
use support::records::{Copies, Record, assert_delivered};
use support::wait::eventually;

const MAX_LENGTH: i64 = 100;
const OLD: usize = 1_500;
const NEW: usize = 300;

fn sink_group(name: &str, exchange: &str) -> (GroupConfig, AmqpSink) {
    let sink = AmqpSink::new(AmqpSinkConfig {
        url: Some(url()),
        exchange: exchange.to_string(),
        ..AmqpSinkConfig::default()
    })
    .unwrap();
    let group = GroupConfig {
        // Push-limited messages are retried from the backlog until they fit.
        max_attempts: 100_000,
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(300),
        // The degraded mode: the backlog drains at a bounded rate.
        backlog_rate: Some(400.0),
        batch_size: 50,
        ..GroupConfig::named(name)
    };
    (group, sink)
}

fn messages(fleet: &mut Fleet, n: usize, sent: &mut Vec<Record>) -> (Vec<Incoming>, Vec<String>) {
    let now = laneway::message::now_epoch_ms();
    let ms: Vec<_> = (0..n).map(|_| fleet.next_message(now)).collect();
    sent.extend(ms.iter().map(Record::of));
    let ids = ms.iter().map(|m| m.message_id().to_string()).collect();
    (ms.into_iter().map(Incoming::Message).collect(), ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_limited_messages_wait_in_the_backlog_and_fresh_ones_go_first_on_recovery() {
    let _lock = broker_lock(false);
    let exchange = unique("sink");
    let queue = exchange.clone();
    let conn = connection().await;
    let ch = confirm_channel(&conn).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(MAX_LENGTH));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    declare_queue(&ch, &queue, args).await;
    declare_exchange(&ch, &exchange).await;
    bind_all(&ch, &queue, &exchange).await;

    let (group, sink) = sink_group("push", &exchange);
    let engine = Engine::builder().group(group, sink).build().unwrap();
    let monitor = engine.monitor();
    let ingest = engine.ingest(LanePolicy::Auto);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(engine.run(async {
        let _ = stop_rx.await;
    }));
    let mut fleet = Fleet::new(2, 50, 11);
    let mut sent = Vec::new();
    let (old, old_ids) = messages(&mut fleet, OLD, &mut sent);
    ingest.submit(old, laneway::ack::AckRef::none()).await;

    // The consumer is stopped: the queue fills, the rest is nacked and waits in the backlog.
    eventually(
        &monitor,
        Duration::from_secs(60),
        "the queue to fill and the backlog to hold the rest",
        |_| {
            let g = &monitor.groups()[0];
            g.backlog_depth as usize >= OLD - MAX_LENGTH as usize
        },
    )
    .await;
    assert_eq!(ready(&ch, &queue).await as i64, MAX_LENGTH);
    assert!(
        monitor.groups()[0].failed_attempts > 0,
        "the broker refused (nack) what did not fit"
    );

    // The consumer runs again; fresh messages are published right away.
    let arrivals = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let received = Arc::new(Mutex::new(Vec::<Record>::new()));
    let consumer_ch = conn.create_channel().await.unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            queue.as_str().into(),
            "test-consumer".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let sink_arrivals = Arc::clone(&arrivals);
    let sink_received = Arc::clone(&received);
    // The consumer counts distinct ids as they arrive; the test waits on
    // that count, not on a timer.
    let (distinct_tx, mut distinct) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        let mut ids = HashSet::new();
        while let Some(Ok(d)) = consumer.next().await {
            sink_received.lock().push(record_of(&d.properties, &d.data));
            let id = d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| match h.inner().get("messageId") {
                    Some(AMQPValue::LongString(s)) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            sink_arrivals.lock().push((id.clone(), Instant::now()));
            ids.insert(id);
            distinct_tx.send_replace(ids.len());
        }
    });
    let (new, new_ids) = messages(&mut fleet, NEW, &mut sent);
    ingest.submit(new, laneway::ack::AckRef::none()).await;

    let total = old_ids.len() + NEW;
    let arrived =
        tokio::time::timeout(Duration::from_secs(120), distinct.wait_for(|n| *n >= total));
    assert!(
        matches!(arrived.await, Ok(Ok(_))),
        "timed out waiting for every message to arrive: {} of {total}",
        *distinct.borrow()
    );
    let _ = stop_tx.send(());
    run.await.unwrap();

    let arrivals = arrivals.lock().clone();
    // Every message arrived (through the backlog or not), unchanged.
    assert_delivered(&sent, &received.lock(), Copies::AtLeastOnce);
    let new_set: HashSet<&String> = new_ids.iter().collect();
    let pos = |want_new: bool| {
        arrivals
            .iter()
            .enumerate()
            .filter(|(_, (id, _))| new_set.contains(id) == want_new)
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    let (new_pos, old_pos) = (pos(true), pos(false));
    let last_new = *new_pos.last().unwrap();
    let last_old = *old_pos.last().unwrap();
    let old_after_last_new = old_pos.iter().filter(|&&p| p > last_new).count();
    eprintln!(
        "arrivals {}: last fresh at {last_new}, last backlog at {last_old}, {old_after_last_new} backlog messages after the last fresh one",
        arrivals.len()
    );
    assert!(
        last_new < last_old,
        "fresh messages reached the consumer before the backlog had drained"
    );
    assert!(
        old_after_last_new * 2 > old_ids.len(),
        "most of the backlog drained after every fresh message had arrived ({old_after_last_new} of {})",
        old_ids.len()
    );
    cleanup(&ch, &[&queue], &[&exchange]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_messages_are_dead_letters_with_the_reason() {
    let _lock = broker_lock(false);
    let exchange = unique("unroutable");
    let (group, sink) = sink_group("nowhere", &exchange);
    let dead = DeadLetters::in_memory();
    let engine = Engine::builder()
        .group(group, sink)
        .dead_letters(Arc::clone(&dead))
        .build()
        .unwrap();
    let monitor = engine.monitor();
    let ingest = engine.ingest(LanePolicy::Auto);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(engine.run(async {
        let _ = stop_rx.await;
    }));
    let mut fleet = Fleet::new(1, 5, 3);
    let (batch, _) = messages(&mut fleet, 20, &mut Vec::new());
    ingest.submit(batch, laneway::ack::AckRef::none()).await;
    eventually(&monitor, Duration::from_secs(30), "20 dead letters", |_| {
        monitor.groups()[0].dead_letter == 20
    })
    .await;
    let _ = stop_tx.send(());
    run.await.unwrap();
    let letters = dead.recent();
    assert_eq!(letters.len(), 20);
    assert!(
        letters
            .iter()
            .all(|l| l.reason.contains("unroutable") && l.reason.contains("NO_ROUTE")),
        "{:?}",
        letters[0].reason
    );
    assert_eq!(monitor.groups()[0].delivered_live, 0);
    let conn = connection().await;
    let ch = conn.create_channel().await.unwrap();
    cleanup(&ch, &[], &[&exchange]).await;
}

/// Routable and unroutable messages published together, to a queue whose
/// confirms come at once (not durable), so the broker confirms several
/// messages in one frame: every return is charged to the message it is.
/// Exactly the unroutable ones are dead letters, and the queue holds
/// exactly the others, byte for byte (none of them lost, none charged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_return_is_charged_to_its_own_message_when_confirms_cover_several() {
    use laneway::message::Message;
    use laneway::sink::{BatchError, Delivery, DeliveryError, Lane, Sink};
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    const N: usize = 600;
    let _lock = broker_lock(false);
    let exchange = unique("returns");
    let queue = unique("returns-q");
    let conn = connection().await;
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "property.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let sink = AmqpSink::new(AmqpSinkConfig {
        url: Some(url()),
        exchange: exchange.clone(),
        ..AmqpSinkConfig::default()
    })
    .unwrap();
    // Even: a property (bound); odd: an event (no queue for it).
    let batch: Vec<Delivery> = (0..N)
        .map(|i| {
            let kind = if i % 2 == 0 { "property" } else { "alarm" };
            let topic = format!("/pk/dn{}/thing/event/{kind}/post", i % 7);
            let payload: Vec<u8> = (0..(i % 13) + 3).map(|k| (k * 31 + i) as u8).collect();
            Delivery {
                message: Message::new(topic, format!("m{i}"), i as i64, payload).unwrap(),
                attempts: 0,
                lane: Lane::Live,
                superseded: false,
            }
        })
        .collect();
    let Err(BatchError::Some(failed)) = sink.deliver(&batch).await else {
        panic!("the odd messages are unroutable");
    };
    let dead: Vec<usize> = failed
        .iter()
        .filter(|(_, e)| matches!(e, DeliveryError::Permanent(why) if why.contains("NO_ROUTE")))
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(failed.len(), dead.len(), "{failed:?}");
    assert_eq!(dead, (1..N).step_by(2).collect::<Vec<_>>());
    sink.close().await.unwrap();

    // The queue holds the even ones, each exactly as sent.
    let sent: Vec<Record> = batch
        .iter()
        .step_by(2)
        .map(|d| Record::of(&d.message))
        .collect();
    // Confirmed means queued: nothing more is on its way.
    assert_eq!(ready(&ch, &queue).await as usize, sent.len());
    let got = read_records(&conn, &queue, sent.len()).await;
    assert_delivered(&sent, &got, Copies::ExactlyOnce);
    cleanup(&ch, &[&queue], &[&exchange]).await;
}
