//! A property test of the disk backlog against a simple in-memory model:
//! random payloads (empty, one byte, every length modulo 8, up to the
//! largest a segment holds, arbitrary bytes) and random sequences of
//! append, take, release, retry-later, close-and-reopen and drop-and-reopen.
//! Whatever the sequence, what comes out equals what went in: nothing lost,
//! nothing changed, nothing released comes back after a clean stop.

use std::collections::BTreeMap;
use std::time::Duration;

use laneway::backlog::{BacklogRecord, BacklogStore, DiskBacklog, DiskBacklogConfig, StoredRecord};
use laneway::message::Message;
use proptest::prelude::*;

const SEGMENT_BYTES: u64 = 64 * 1024;

fn config() -> DiskBacklogConfig {
    DiskBacklogConfig {
        segment_bytes: SEGMENT_BYTES,
        commit_interval: Duration::ZERO,
        ..DiskBacklogConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Append one record per payload.
    Append(Vec<Vec<u8>>),
    /// Take up to n records that are due now.
    Take(usize),
    /// Release every other record in hand (the rest stay in hand).
    ReleaseSome,
    /// Give every record in hand back for a retry, due after `delay` ms.
    RetryLater(i64),
    /// Let virtual time pass.
    Advance(i64),
    /// Close cleanly and open again.
    Reopen,
    /// Drop without closing and open again.
    DropAndReopen,
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    let max = config().max_payload_bytes();
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..=17),
        3 => proptest::collection::vec(any::<u8>(), 0..=600),
        1 => proptest::collection::vec(any::<u8>(), max - 8..=max),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => proptest::collection::vec(payload(), 1..8).prop_map(Op::Append),
        4 => (1usize..12).prop_map(Op::Take),
        3 => Just(Op::ReleaseSome),
        2 => (0i64..50).prop_map(Op::RetryLater),
        2 => (0i64..60).prop_map(Op::Advance),
        1 => Just(Op::Reopen),
        1 => Just(Op::DropAndReopen),
    ]
}

/// The model: what the store owes, by message id, with its exact record.
#[derive(Default)]
struct Model {
    owed: BTreeMap<String, (Vec<u8>, i64, u32)>,
    next: u64,
}

fn check(got: &StoredRecord, model: &Model) {
    let m = &got.record.message;
    let (payload, time, attempts) = model
        .owed
        .get(m.message_id())
        .unwrap_or_else(|| panic!("{} came out but is not owed", m.message_id()));
    assert_eq!(
        &m.payload()[..],
        &payload[..],
        "payload of {}",
        m.message_id()
    );
    assert_eq!(m.generate_time_ms(), *time);
    assert_eq!(m.topic(), "/pk/dn/thing/event/property/post");
    assert_eq!(got.record.attempts, *attempts);
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut store = DiskBacklog::open(dir.path(), config()).unwrap();
        let mut model = Model::default();
        let mut hand: Vec<StoredRecord> = Vec::new();
        let mut now = 1_000i64;
        for op in ops {
            match op {
                Op::Append(payloads) => {
                    let records: Vec<BacklogRecord> = payloads
                        .into_iter()
                        .map(|p| {
                            let id = format!("m{}", model.next);
                            let time = model.next as i64 * 7 - 3;
                            model.next += 1;
                            model.owed.insert(id.clone(), (p.clone(), time, 0));
                            BacklogRecord::fresh(
                                Message::new("/pk/dn/thing/event/property/post", id, time, p)
                                    .unwrap(),
                            )
                        })
                        .collect();
                    store.append(&records).await.unwrap();
                }
                Op::Take(n) => {
                    for r in store.take_ready(n, now).await.unwrap() {
                        check(&r, &model);
                        assert!(r.record.not_before_ms <= now);
                        hand.push(r);
                    }
                }
                Op::ReleaseSome => {
                    let (go, keep): (Vec<_>, Vec<_>) =
                        hand.drain(..).enumerate().partition(|(i, _)| i % 2 == 0);
                    let ids: Vec<_> = go.iter().map(|(_, r)| r.id).collect();
                    store.release(&ids).await.unwrap();
                    for (_, r) in go {
                        model.owed.remove(r.record.message.message_id());
                    }
                    hand = keep.into_iter().map(|(_, r)| r).collect();
                }
                Op::RetryLater(delay) => {
                    let retried: Vec<StoredRecord> = hand
                        .drain(..)
                        .map(|mut r| {
                            r.record.attempts += 1;
                            r.record.not_before_ms = now + delay;
                            if let Some(e) = model.owed.get_mut(r.record.message.message_id()) {
                                e.2 = r.record.attempts;
                            }
                            r
                        })
                        .collect();
                    store.retry(&retried).await.unwrap();
                }
                Op::Advance(ms) => now += ms,
                Op::Reopen | Op::DropAndReopen => {
                    // What was in hand comes back after a restart.
                    hand.clear();
                    if matches!(op, Op::Reopen) {
                        store.close().await.unwrap();
                    }
                    drop(store);
                    store = DiskBacklog::open(dir.path(), config()).unwrap();
                    assert_eq!(store.recovery().lost, 0);
                }
            }
        }
        // After a clean stop, everything owed (what was in hand included)
        // comes out once the clock has passed every retry, byte for byte,
        // once each, and nothing else does.
        store.close().await.unwrap();
        drop(store);
        let store = DiskBacklog::open(dir.path(), config()).unwrap();
        let mut out = Vec::new();
        loop {
            let got = store.take_ready(1000, i64::MAX / 2).await.unwrap();
            if got.is_empty() {
                break;
            }
            out.extend(got);
        }
        for r in &out {
            check(r, &model);
        }
        let mut came: Vec<String> = out
            .iter()
            .map(|r| r.record.message.message_id().to_string())
            .collect();
        came.sort();
        came.dedup();
        assert_eq!(came.len(), out.len(), "a record came out twice in one run");
        let owed: Vec<String> = model.owed.keys().cloned().collect();
        assert_eq!(came, owed, "what came out is not what is owed");
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn what_comes_out_is_what_went_in(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops);
    }
}
