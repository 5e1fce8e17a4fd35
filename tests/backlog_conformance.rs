//! One conformance suite for the `BacklogStore` contract, run against every
//! store: what comes out is what went in (byte for byte, in order), records
//! not yet due are passed over and kept, retries keep their attempts and
//! wait for their backoff, a full store is backpressure (never a drop) and
//! still takes retries, and — for durable stores — a close and reopen
//! brings back exactly what was not released.
//!
//! A new store gets the whole suite by implementing [`Subject`] and adding
//! one line to the `conformance!` invocations at the bottom.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
use laneway::amqp::{AmqpBacklog, AmqpBacklogConfig};
use laneway::backlog::{
    BacklogError, BacklogRecord, BacklogStore, DiskBacklog, DiskBacklogConfig, MemoryBacklog,
    MemoryLimits, StoredRecord,
};
use laneway::message::Message;

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
use crate::support;

/// What a store holds for a whole test: the broker lock for the broker
/// store; nothing can be held without the `amqp` feature.
#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
type Lock = support::broker::BrokerLock;
#[cfg(not(all(feature = "amqp", feature = "rabbitmq-tests")))]
type Lock = std::convert::Infallible;

/// A store under test.
trait Subject {
    /// Whether what was appended survives a close and reopen.
    const DURABLE: bool;
    /// Opens the store kept in `dir` (created empty by the suite), holding
    /// at most `max_records` records when given.
    async fn open(dir: &Path, max_records: Option<u64>) -> Arc<dyn BacklogStore>;
    /// Removes what the store kept outside `dir` (the suite calls it at the
    /// end of each test).
    async fn finish(_dir: &Path) {}
    /// A lock held for the whole test (the broker lock, for the broker).
    fn lock() -> Option<Lock> {
        None
    }
}

struct Memory;

impl Subject for Memory {
    const DURABLE: bool = false;
    async fn open(_dir: &Path, max_records: Option<u64>) -> Arc<dyn BacklogStore> {
        Arc::new(MemoryBacklog::new(MemoryLimits {
            max_records: max_records.unwrap_or(u64::MAX),
            max_bytes: u64::MAX,
        }))
    }
}

struct Disk;

impl Subject for Disk {
    const DURABLE: bool = true;
    async fn open(dir: &Path, max_records: Option<u64>) -> Arc<dyn BacklogStore> {
        Arc::new(
            DiskBacklog::open(
                dir,
                DiskBacklogConfig {
                    segment_bytes: 4096,
                    max_records,
                    commit_interval: Duration::ZERO,
                    ..DiskBacklogConfig::default()
                },
            )
            .unwrap(),
        )
    }
}

/// The broker store on the local RabbitMQ: one backlog queue per test,
/// named after the test's directory (so a reopen finds the same queue),
/// deleted with its wait and poison queues by `finish`.
#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
struct Broker;

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
fn broker_queue(dir: &Path) -> String {
    let leaf = dir.file_name().and_then(|n| n.to_str()).unwrap_or("x");
    format!("laneway-test.conformance.{}.{leaf}", std::process::id())
}

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
impl Subject for Broker {
    const DURABLE: bool = true;
    async fn open(dir: &Path, max_records: Option<u64>) -> Arc<dyn BacklogStore> {
        let config = AmqpBacklogConfig {
            url: Some(support::broker::url()),
            queue: Some(broker_queue(dir)),
            max_records,
            // The suite checks one instance's exact counts: no refresh
            // from the broker races with them.
            refresh_interval: Duration::ZERO,
            ..AmqpBacklogConfig::default()
        };
        Arc::new(AmqpBacklog::open(config, "conformance").await.unwrap())
    }
    fn lock() -> Option<Lock> {
        Some(support::broker::broker_lock(false))
    }
    async fn finish(dir: &Path) {
        let queue = broker_queue(dir);
        let conn = support::broker::connection().await;
        let ch = conn.create_channel().await.unwrap();
        let names = [
            queue.clone(),
            format!("{queue}.wait"),
            format!("{queue}.poison"),
        ];
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        support::broker::cleanup(&ch, &names, &[]).await;
    }
}

/// Record `i` as sent; its payload length runs through every remainder
/// modulo 8 and includes the empty payload.
fn sent(i: u64, not_before_ms: i64) -> BacklogRecord {
    BacklogRecord {
        message: Message::new(
            format!("/pk{}/dn{i}/thing/event/property/post", i % 3),
            format!("m{i:04}"),
            1_700_000_000_000 + i as i64,
            (0..i % 19).map(|k| (k * 13 + i) as u8).collect::<Vec<u8>>(),
        )
        .unwrap(),
        attempts: 0,
        not_before_ms,
    }
}

/// Checks that `got` are the records `expect` (by number), in that order,
/// each byte for byte as sent.
fn assert_records(got: &[StoredRecord], expect: &[u64]) {
    let ids: Vec<&str> = got.iter().map(|r| r.record.message.message_id()).collect();
    let want: Vec<String> = expect.iter().map(|i| format!("m{i:04}")).collect();
    assert_eq!(ids, want);
    for (r, i) in got.iter().zip(expect) {
        let (m, w) = (&r.record.message, sent(*i, 0).message);
        assert_eq!(m.topic(), w.topic());
        assert_eq!(m.generate_time_ms(), w.generate_time_ms());
        assert_eq!(m.payload(), w.payload(), "payload of m{i:04}");
    }
}

async fn take_all(store: &dyn BacklogStore, now: i64) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    loop {
        let got = store.take_ready(7, now).await.unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

async fn release_all(store: &dyn BacklogStore, records: &[StoredRecord]) {
    let ids: Vec<_> = records.iter().map(|r| r.id).collect();
    store.release(&ids).await.unwrap();
}

async fn what_goes_in_comes_out_in_order_byte_for_byte<S: Subject>() {
    let _lock = S::lock();
    let dir = tempfile::tempdir().unwrap();
    let store = S::open(dir.path(), None).await;
    let n = 200;
    let batch: Vec<_> = (0..n).map(|i| sent(i, 0)).collect();
    store.append(&batch[..50]).await.unwrap();
    store.append(&batch[50..]).await.unwrap();
    assert_eq!(store.depth().records, n);
    let out = take_all(store.as_ref(), 0).await;
    assert_records(&out, &(0..n).collect::<Vec<_>>());
    assert_eq!(store.depth().in_flight, n);
    assert!(!store.has_waiting());
    release_all(store.as_ref(), &out).await;
    assert_eq!(store.depth().records, 0);
    assert_eq!(store.depth().in_flight, 0);
    assert!(take_all(store.as_ref(), 0).await.is_empty());
    S::finish(dir.path()).await;
}

async fn records_not_yet_due_are_passed_over_and_kept<S: Subject>() {
    let _lock = S::lock();
    let dir = tempfile::tempdir().unwrap();
    let store = S::open(dir.path(), None).await;
    store
        .append(&[sent(0, 0), sent(1, 100), sent(2, 0)])
        .await
        .unwrap();
    let first = take_all(store.as_ref(), 50).await;
    assert_records(&first, &[0, 2]);
    assert!(store.has_waiting());
    assert!(take_all(store.as_ref(), 99).await.is_empty());
    let later = take_all(store.as_ref(), 100).await;
    assert_records(&later, &[1]);
    release_all(store.as_ref(), &first).await;
    release_all(store.as_ref(), &later).await;
    assert_eq!(store.depth().records, 0);
    assert!(!store.has_waiting());
    S::finish(dir.path()).await;
}

async fn retries_keep_their_attempts_and_wait_for_their_backoff<S: Subject>() {
    let _lock = S::lock();
    let dir = tempfile::tempdir().unwrap();
    let store = S::open(dir.path(), None).await;
    store.append(&[sent(0, 0), sent(1, 0)]).await.unwrap();
    let mut taken = take_all(store.as_ref(), 0).await;
    for r in &mut taken {
        r.record.attempts = 2;
        r.record.not_before_ms = 1_000;
    }
    store.retry(&taken).await.unwrap();
    assert_eq!(store.depth().records, 2);
    assert_eq!(store.depth().in_flight, 0);
    assert!(take_all(store.as_ref(), 999).await.is_empty());
    let again = take_all(store.as_ref(), 1_000).await;
    assert_records(&again, &[0, 1]);
    assert!(again.iter().all(|r| r.record.attempts == 2));
    assert!(again.iter().all(|r| r.record.not_before_ms == 1_000));
    release_all(store.as_ref(), &again).await;
    assert_eq!(store.depth().records, 0);
    S::finish(dir.path()).await;
}

async fn a_full_store_is_backpressure_never_a_drop<S: Subject>() {
    let _lock = S::lock();
    let dir = tempfile::tempdir().unwrap();
    let store = S::open(dir.path(), Some(3)).await;
    let err = store
        .append(&[sent(0, 0), sent(1, 0), sent(2, 0), sent(3, 0)])
        .await
        .unwrap_err();
    assert!(matches!(err, BacklogError::Full { stored: 3 }), "{err:?}");
    assert!(matches!(
        store.append(&[sent(3, 0)]).await,
        Err(BacklogError::Full { stored: 0 })
    ));
    assert_eq!(store.depth().dropped, 0);
    // A full store still takes back a retry: its record is already counted.
    let mut one = store.take_ready(1, 0).await.unwrap();
    one[0].record.attempts = 1;
    store.retry(&one).await.unwrap();
    assert_eq!(store.depth().records, 3);
    // Room frees as records are released. (A retry due now may come out
    // before the records behind it: the contract leaves that open.)
    let mut out = take_all(store.as_ref(), 0).await;
    out.sort_by(|a, b| {
        a.record
            .message
            .message_id()
            .cmp(b.record.message.message_id())
    });
    assert_records(&out, &[0, 1, 2]);
    release_all(store.as_ref(), &out[..1]).await;
    store.append(&[sent(3, 0)]).await.unwrap();
    let rest = take_all(store.as_ref(), 0).await;
    assert_records(&rest, &[3]);
    S::finish(dir.path()).await;
}

async fn a_reopen_brings_back_exactly_what_was_not_released<S: Subject>() {
    let _lock = S::lock();
    if !S::DURABLE {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let store = S::open(dir.path(), None).await;
        store
            .append(&(0..30).map(|i| sent(i, 0)).collect::<Vec<_>>())
            .await
            .unwrap();
        let out = store.take_ready(10, 0).await.unwrap();
        // Released: the even ones; in flight at the stop: the odd ones.
        let even: Vec<_> = out.iter().step_by(2).map(|r| r.id).collect();
        store.release(&even).await.unwrap();
        let mut later = store.take_ready(1, 0).await.unwrap();
        later[0].record.attempts = 1;
        later[0].record.not_before_ms = 5;
        store.retry(&later).await.unwrap();
        store.close().await.unwrap();
    }
    let store = S::open(dir.path(), None).await;
    let out = take_all(store.as_ref(), 10).await;
    let mut expect: Vec<u64> = (1..10).step_by(2).collect();
    expect.extend(11..30);
    expect.push(10);
    assert_records(&out, &expect);
    assert_eq!(out.last().map(|r| r.record.attempts), Some(1));
    S::finish(dir.path()).await;
}

macro_rules! conformance {
    ($module:ident, $subject:ty) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn what_goes_in_comes_out_in_order_byte_for_byte() {
                super::what_goes_in_comes_out_in_order_byte_for_byte::<$subject>().await;
            }

            #[tokio::test]
            async fn records_not_yet_due_are_passed_over_and_kept() {
                super::records_not_yet_due_are_passed_over_and_kept::<$subject>().await;
            }

            #[tokio::test]
            async fn retries_keep_their_attempts_and_wait_for_their_backoff() {
                super::retries_keep_their_attempts_and_wait_for_their_backoff::<$subject>().await;
            }

            #[tokio::test]
            async fn a_full_store_is_backpressure_never_a_drop() {
                super::a_full_store_is_backpressure_never_a_drop::<$subject>().await;
            }

            #[tokio::test]
            async fn a_reopen_brings_back_exactly_what_was_not_released() {
                super::a_reopen_brings_back_exactly_what_was_not_released::<$subject>().await;
            }
        }
    };
}

conformance!(memory, Memory);
conformance!(disk, Disk);
#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
conformance!(broker, Broker);
