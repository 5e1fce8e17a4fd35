//! The disk backlog as the fault tests drive it: the records they append
//! (payloads of many lengths and bytes, not JSON), a runtime to drive the
//! store from plain threads, draining, and a byte-for-byte comparison.

use laneway::backlog::{BacklogRecord, BacklogStore, DiskBacklog, StoredRecord};
use laneway::message::Message;

pub fn sent(i: u64) -> BacklogRecord {
    let payload: Vec<u8> = (0..(i % 29) * 7 + 1)
        .map(|k| (k as u8) ^ (i as u8).rotate_left(3))
        .collect();
    BacklogRecord::fresh(
        Message::new(
            format!("/pk/dn{}/thing/event/property/post", i % 5),
            format!("m{i}"),
            1_700_000_000_000 + i as i64,
            payload,
        )
        .unwrap(),
    )
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Takes and releases every record ready at the clock reading 0 (a retried
/// record with a later not-before time stays).
pub async fn drain(store: &DiskBacklog) -> Vec<StoredRecord> {
    drain_at(store, 0).await
}

/// [`drain`] at the clock reading `now_ms` (retried records due by then
/// come out too).
pub async fn drain_at(store: &DiskBacklog, now_ms: i64) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    loop {
        let got = store.take_ready(1000, now_ms).await.unwrap();
        if got.is_empty() {
            return out;
        }
        let ids: Vec<_> = got.iter().map(|r| r.id).collect();
        store.release(&ids).await.unwrap();
        out.extend(got);
    }
}

/// Every record of `got` is the record sent under the message id it
/// carries, byte for byte, and the ids come in `expect` order.
pub fn assert_same(got: &[StoredRecord], expect: &[u64]) {
    let ids: Vec<String> = got
        .iter()
        .map(|r| r.record.message.message_id().to_string())
        .collect();
    let want: Vec<String> = expect.iter().map(|i| format!("m{i}")).collect();
    assert_eq!(ids, want);
    for (r, i) in got.iter().zip(expect) {
        let w = sent(*i).message;
        let m = &r.record.message;
        assert_eq!(
            (m.topic(), m.generate_time_ms(), m.payload()),
            (w.topic(), w.generate_time_ms(), w.payload()),
            "record m{i}"
        );
    }
}
