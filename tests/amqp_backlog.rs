//! The broker backlog store with more than one instance on one queue (real
//! RabbitMQ): instances compete for records without sharing one, what an
//! instance held when it stopped is delivered by another, a queue at its
//! `x-max-length` refuses appends (backpressure; the quorum queue applies
//! the limit after the fact, so what was already on its way gets in) and
//! drops nothing, retries wait out their backoff in the wait queue and come
//! back, a record whose every taker dies goes to the poison queue after
//! `delivery_limit` returns without wedging what is behind it, a broker
//! restart loses nothing, and
//! `backlog inspect`'s reading removes nothing.
//!
//! Each test uses its own queue names and deletes its queues at the end.

#![cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use laneway::amqp::backlog_store::inspect;
use laneway::amqp::{AmqpBacklog, AmqpBacklogConfig};
use laneway::backlog::{BacklogError, BacklogRecord, BacklogStore, StoredRecord};
use laneway::message::Message;

use support::broker::broker_lock;
use support::names::unique;

fn config(queue: &str, max_records: Option<u64>) -> AmqpBacklogConfig {
    AmqpBacklogConfig {
        url: Some(support::broker::url()),
        queue: Some(queue.into()),
        max_records,
        read_ahead: 16,
        refresh_interval: Duration::ZERO,
        ..AmqpBacklogConfig::default()
    }
}

/// Record `i` as sent (payload lengths vary, the empty one included).
fn sent(i: u64) -> BacklogRecord {
    BacklogRecord::fresh(
        Message::new(
            format!("/pk{}/dn{i}/thing/event/property/post", i % 3),
            format!("m{i:04}"),
            1_700_000_000_000 + i as i64,
            (0..i % 23).map(|k| (k * 7 + i) as u8).collect::<Vec<u8>>(),
        )
        .unwrap(),
    )
}

/// The record numbers of `got`, each checked byte for byte against `sent`.
fn numbers(got: &[StoredRecord]) -> Vec<u64> {
    got.iter()
        .map(|r| {
            let m = &r.record.message;
            let i: u64 = m.message_id()[1..].parse().unwrap();
            let w = sent(i).message;
            assert_eq!(m.topic(), w.topic());
            assert_eq!(m.generate_time_ms(), w.generate_time_ms());
            assert_eq!(m.payload(), w.payload(), "payload of m{i:04}");
            i
        })
        .collect()
}

async fn take_all(store: &AmqpBacklog) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    loop {
        let got = store.take_ready(7, i64::MAX).await.unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

async fn delete_queues(queue: &str) {
    let conn = support::broker::connection().await;
    let ch = conn.create_channel().await.unwrap();
    let names = [
        queue.to_string(),
        format!("{queue}.wait"),
        format!("{queue}.poison"),
    ];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    support::broker::cleanup(&ch, &names, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_leaves_its_records_to_the_others() {
    let _lock = broker_lock(false);
    let queue = unique("backlog-shared");
    let a = AmqpBacklog::open(config(&queue, None), "g").await.unwrap();
    let b = AmqpBacklog::open(config(&queue, None), "g").await.unwrap();
    let n = 100;
    a.append(&(0..n).map(sent).collect::<Vec<_>>())
        .await
        .unwrap();

    // Both take; no record is handed to both.
    let by_a = a.take_ready(30, i64::MAX).await.unwrap();
    let by_b = b.take_ready(20, i64::MAX).await.unwrap();
    let (na, nb) = (numbers(&by_a), numbers(&by_b));
    assert_eq!(na.len(), 30);
    let overlap: Vec<_> = na.iter().filter(|i| nb.contains(i)).collect();
    assert!(overlap.is_empty(), "handed to both: {overlap:?}");

    // A delivers ten of its records and stops with the rest unreleased
    // (and whatever the broker pushed ahead to it).
    let delivered: Vec<_> = by_a[..10].iter().map(|r| r.id).collect();
    a.release(&delivered).await.unwrap();
    a.close().await.unwrap();
    drop(a);

    // B delivers everything else: A's unreleased records included.
    let rest = take_all(&b).await;
    let ids: Vec<_> = by_b.iter().chain(&rest).map(|r| r.id).collect();
    b.release(&ids).await.unwrap();
    let mut got: Vec<u64> = nb.iter().copied().chain(numbers(&rest)).collect();
    let copies = got.len();
    got.sort_unstable();
    got.dedup();
    assert_eq!(copies, got.len(), "a record came twice");
    let want: BTreeSet<u64> = (0..n).filter(|i| !na[..10].contains(i)).collect();
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
    assert_eq!(b.depth().records, 0);
    b.close().await.unwrap();
    delete_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspecting_a_queue_that_does_not_exist_says_what_creates_it() {
    let _lock = broker_lock(false);
    let queue = unique("backlog-missing");
    let e = inspect(&config(&queue, None), "g", 10).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("does not exist"), "{text}");
    assert!(
        text.contains("declared by the first `laneway run`"),
        "{text}"
    );
    assert!(
        !text.contains("declare = true"),
        "inspect has no such option: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_queue_refuses_appends_and_drops_nothing() {
    let _lock = broker_lock(false);
    let queue = unique("backlog-full");
    let max = 5;
    // Both open before anything is stored: B's own count says the queue is
    // empty until its next refresh, so only the broker's limit
    // (x-max-length, reject-publish) can stop it.
    let a = AmqpBacklog::open(config(&queue, Some(max)), "g")
        .await
        .unwrap();
    // B refreshes its count from the broker, as a deployed instance does
    // (every second by default), so it sees the room A's deliveries make.
    let b = AmqpBacklog::open(
        AmqpBacklogConfig {
            refresh_interval: Duration::from_millis(50),
            ..config(&queue, Some(max))
        },
        "g",
    )
    .await
    .unwrap();
    a.append(&(0..max).map(sent).collect::<Vec<_>>())
        .await
        .unwrap();
    // The broker applies its limit after the fact: the publishes already on
    // their way when the queue crosses it are taken (here up to B's whole
    // first batch); from then on it refuses.
    let offered: Vec<_> = (max..max + 10).map(sent).collect();
    let over = match b.append(&offered[..5]).await {
        Ok(()) => 5,
        Err(BacklogError::Full { stored }) => stored,
        Err(e) => panic!("{e}"),
    };
    println!("the broker took {over} record(s) past x-max-length {max}");
    match b.append(&offered[over..]).await {
        Err(BacklogError::Full { stored: 0 }) => {}
        other => panic!("a queue over its limit took more: {other:?}"),
    }
    let stored = over;

    // Inspecting reads the head and removes nothing.
    let seen = inspect(&config(&queue, None), "g", 3).await.unwrap();
    assert_eq!(seen.ready, max + stored as u64);
    assert_eq!(seen.first_kinds.len(), 3);
    // The oldest message's age is the message's own (generated in November
    // 2023), not its time in the backlog, which is seconds at most.
    let since_generated = laneway::message::now_epoch_ms() - 1_700_000_000_000;
    assert!(
        seen.oldest_age_ms
            .is_some_and(|ms| ms >= since_generated - 60_000),
        "{seen:?}"
    );
    assert!(
        seen.longest_stored_ms.is_some_and(|ms| ms < 600_000),
        "{seen:?}"
    );
    let again = inspect(&config(&queue, None), "g", 100).await.unwrap();
    assert_eq!(again.ready, seen.ready);
    assert_eq!(again.first_kinds.len() as u64, seen.ready);

    // Everything stored comes out, in order, byte for byte; nothing else.
    let out = take_all(&a).await;
    assert_eq!(numbers(&out), (0..max + stored as u64).collect::<Vec<_>>());
    a.release(&out.iter().map(|r| r.id).collect::<Vec<_>>())
        .await
        .unwrap();

    // Room again: what was refused is offered again until the broker takes
    // it (the queue lifts its block asynchronously, as the engine's writer
    // sees it: it backs off and offers again).
    let mut rest = offered[stored..].to_vec();
    let mut offers = 0;
    while !rest.is_empty() {
        offers += 1;
        assert!(offers < 1000, "the drained queue never took the rest");
        match b.append(&rest).await {
            Ok(()) => rest.clear(),
            Err(BacklogError::Full { stored }) => {
                rest.drain(..stored);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let out = take_all(&a).await;
    assert_eq!(
        numbers(&out),
        (max + stored as u64..max + 10).collect::<Vec<_>>()
    );
    a.release(&out.iter().map(|r| r.id).collect::<Vec<_>>())
        .await
        .unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();
    delete_queues(&queue).await;
}

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
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
async fn a_broker_restart_loses_nothing() {
    // Exclusive: no other RabbitMQ test runs while the broker restarts.
    let _lock = broker_lock(true);
    let queue = unique("backlog-restart");
    let store = AmqpBacklog::open(
        AmqpBacklogConfig {
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(500),
            ..config(&queue, None)
        },
        "g",
    )
    .await
    .unwrap();
    let n = 100;
    store
        .append(&(0..n).map(sent).collect::<Vec<_>>())
        .await
        .unwrap();
    let taken = store.take_ready(30, i64::MAX).await.unwrap();
    assert_eq!(numbers(&taken), (0..30).collect::<Vec<_>>());
    store
        .release(&taken[..10].iter().map(|r| r.id).collect::<Vec<_>>())
        .await
        .unwrap();

    rabbitmqctl(&["stop_app"]);
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);

    // Records taken before the restart went back to the queue: releasing
    // them now acks nothing (their channel is gone), and they come again.
    store
        .release(&taken[10..].iter().map(|r| r.id).collect::<Vec<_>>())
        .await
        .unwrap();
    // The store reconnects on its own; until it has, it answers
    // "unavailable", and the caller offers again (as the engine does).
    let mut got = Vec::new();
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(tries < 1000, "the store never came back");
        match store.take_ready(7, i64::MAX).await {
            Ok(batch) if batch.is_empty() && !got.is_empty() => break,
            Ok(batch) => got.extend(batch),
            Err(BacklogError::Unavailable(why)) => {
                assert!(!why.contains("guest:guest"), "{why}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let mut numbers = numbers(&got);
    numbers.sort_unstable();
    assert_eq!(numbers, (10..n).collect::<Vec<_>>());
    store
        .release(&got.iter().map(|r| r.id).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(store.depth().in_flight, 0);
    store.close().await.unwrap();
    delete_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_in_the_wait_queue_and_come_back_with_their_attempts() {
    let _lock = broker_lock(false);
    let queue = unique("backlog-wait");
    let store = AmqpBacklog::open(
        AmqpBacklogConfig {
            park_after: Duration::from_millis(200),
            ..config(&queue, None)
        },
        "g",
    )
    .await
    .unwrap();
    let now = laneway::message::now_epoch_ms();
    // Record 0 is appended already waiting (a failed live delivery), record
    // 1 is taken and retried: both go to the wait queue for about a second.
    let mut waiting = sent(0);
    waiting.attempts = 1;
    waiting.not_before_ms = now + 1_000;
    store.append(&[waiting, sent(1)]).await.unwrap();
    let mut taken = store
        .take_ready(10, laneway::message::now_epoch_ms())
        .await
        .unwrap();
    assert_eq!(numbers(&taken), vec![1]);
    taken[0].record.attempts = 3;
    taken[0].record.not_before_ms = now + 1_200;
    store.retry(&taken).await.unwrap();
    assert_eq!(store.depth().records, 2);
    assert!(store.has_waiting());

    // Offered again and again, as the engine's reader does, until both are
    // back; neither before its time.
    let mut back = Vec::new();
    let mut tries = 0;
    while back.len() < 2 {
        tries += 1;
        assert!(tries < 600, "the retries never came back: {back:?}");
        let now = laneway::message::now_epoch_ms();
        for r in store.take_ready(10, now).await.unwrap() {
            assert!(now >= r.record.not_before_ms, "handed out early");
            back.push(r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    back.sort_by_key(|r| r.record.attempts);
    assert_eq!(numbers(&back), vec![0, 1]);
    assert_eq!(back[0].record.attempts, 1);
    assert_eq!(back[1].record.attempts, 3);
    assert_eq!(back[1].record.not_before_ms, now + 1_200);
    store
        .release(&back.iter().map(|r| r.id).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(store.take_ready(10, i64::MAX).await.unwrap().is_empty());
    assert_eq!(store.depth().records, 0);
    store.close().await.unwrap();
    delete_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_keeps_killing_its_taker_goes_to_the_poison_queue() {
    let _lock = broker_lock(false);
    let queue = unique("backlog-poison");
    let limit = 2;
    let cfg = AmqpBacklogConfig {
        delivery_limit: limit,
        ..config(&queue, None)
    };
    let first = AmqpBacklog::open(cfg.clone(), "g").await.unwrap();
    first.append(&[sent(0)]).await.unwrap();
    first.close().await.unwrap();
    drop(first);

    // Every instance that takes record 0 dies holding it (closed without
    // releasing it), as one a poison message crashes would: the broker gets
    // it back each time and counts the return.
    let conn = support::broker::connection().await;
    let ch = conn.create_channel().await.unwrap();
    let poison = format!("{queue}.poison");
    let mut deliveries = 0;
    let mut polls = 0;
    while support::broker::ready(&ch, &poison).await == 0 {
        polls += 1;
        assert!(polls < 500, "record 0 never reached the poison queue");
        let taker = AmqpBacklog::open(cfg.clone(), "g").await.unwrap();
        let got = taker.take_ready(1, i64::MAX).await.unwrap();
        if !got.is_empty() {
            assert_eq!(numbers(&got), vec![0]);
            deliveries += 1;
        } else {
            // The return or the dead-lettering is still on its way.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        taker.close().await.unwrap();
    }
    // x-delivery-limit counts returns: the limit's worth, plus the one
    // delivery whose return crosses it.
    assert_eq!(deliveries, limit + 1);

    // The queue is not wedged: what comes behind the poison record flows.
    let store = AmqpBacklog::open(cfg.clone(), "g").await.unwrap();
    store
        .append(&(1..20).map(sent).collect::<Vec<_>>())
        .await
        .unwrap();
    let out = take_all(&store).await;
    assert_eq!(numbers(&out), (1..20).collect::<Vec<_>>());
    store
        .release(&out.iter().map(|r| r.id).collect::<Vec<_>>())
        .await
        .unwrap();
    let seen = inspect(&cfg, "g", 0).await.unwrap();
    assert_eq!((seen.ready, seen.poison), (0, 1));
    store.close().await.unwrap();

    // The poison record is kept as it was stored, byte for byte, for an
    // operator to look at.
    let got = ch
        .basic_get(poison.as_str().into(), Default::default())
        .await
        .unwrap()
        .expect("the poison record");
    let incoming = laneway::amqp::headers::to_incoming(
        &got.delivery.properties,
        got.delivery.data.clone(),
        String::new,
    );
    let laneway::source::Incoming::Message(kept) = incoming else {
        panic!("the poison record does not read back as a message");
    };
    let want = sent(0).message;
    assert_eq!(kept.topic(), want.topic());
    assert_eq!(kept.message_id(), want.message_id());
    assert_eq!(kept.generate_time_ms(), want.generate_time_ms());
    assert_eq!(kept.payload(), want.payload());
    delete_queues(&queue).await;
}
