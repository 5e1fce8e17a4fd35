//! Unit tests of what is particular to the disk store (segments, capacity
//! in bytes, drop-oldest, expiry, restarts, the lock, file modes). The
//! store contract itself is tested for every store by
//! `tests/backlog_conformance.rs`; damage, faults and crashes live in
//! `tests/` too.

use std::time::Duration;

use super::*;
use crate::message::Message;

fn record(id: &str, not_before_ms: i64) -> BacklogRecord {
    BacklogRecord {
        message: Message::new("/p/d/thing/event/property/post", id, 0, &b"{\"t\":1}"[..]).unwrap(),
        attempts: 0,
        not_before_ms,
    }
}

fn small() -> DiskBacklogConfig {
    DiskBacklogConfig {
        segment_bytes: 4096,
        commit_interval: Duration::ZERO,
        ..DiskBacklogConfig::default()
    }
}

fn ids(records: &[StoredRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.record.message.message_id().to_string())
        .collect()
}

async fn drain(store: &DiskBacklog, now: i64) -> Vec<StoredRecord> {
    let mut all = Vec::new();
    loop {
        let got = store.take_ready(1000, now).await.unwrap();
        if got.is_empty() {
            return all;
        }
        all.extend(got);
    }
}

#[tokio::test]
async fn records_come_out_in_order_across_segments_and_segments_go_when_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBacklog::open(dir.path(), small()).unwrap();
    let batch: Vec<_> = (0..300).map(|i| record(&format!("m{i:04}"), 0)).collect();
    store.append(&batch[..100]).await.unwrap();
    store.append(&batch[100..]).await.unwrap();
    assert!(store.segment_count() > 5, "{}", store.segment_count());
    assert_eq!(store.depth().records, 300);
    let out = drain(&store, 0).await;
    let expected: Vec<_> = (0..300).map(|i| format!("m{i:04}")).collect();
    assert_eq!(ids(&out), expected);
    assert_eq!(store.depth().in_flight, 300);
    let all: Vec<_> = out.iter().map(|r| r.id).collect();
    store.release(&all).await.unwrap();
    assert_eq!(store.depth().records, 0);
    assert_eq!(store.depth().bytes, 0);
    store.checkpoint().await.unwrap();
    // Housekeeping deletes every sealed segment; the active one stays.
    for _ in 0..100 {
        if store.segment_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.segment_count(), 1);
    let files = segment::list_segments(&RealFilesystem, dir.path()).unwrap();
    assert_eq!(files.len(), 1);
}

#[tokio::test]
async fn a_crash_after_a_checkpoint_brings_back_what_was_not_released_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = DiskBacklog::open(dir.path(), small()).unwrap();
        let batch: Vec<_> = (0..50).map(|i| record(&format!("m{i:02}"), 0)).collect();
        store.append(&batch).await.unwrap();
        let out = store.take_ready(20, 0).await.unwrap();
        // Release the even ones; the odd ones were in flight at the "crash".
        let even: Vec<_> = out.iter().step_by(2).map(|r| r.id).collect();
        store.release(&even).await.unwrap();
        store.checkpoint().await.unwrap();
    }
    let store = DiskBacklog::open(dir.path(), small()).unwrap();
    assert_eq!(store.recovery().records, 40);
    assert_eq!(store.recovery().released, 10);
    let out = drain(&store, 0).await;
    let mut expected: Vec<_> = (1..20).step_by(2).map(|i| format!("m{i:02}")).collect();
    expected.extend((20..50).map(|i| format!("m{i:02}")));
    assert_eq!(ids(&out), expected);
    // New ids continue above the old ones.
    store.append(&[record("new", 0)]).await.unwrap();
    let new = drain(&store, 0).await;
    assert!(new[0].id > out.iter().map(|r| r.id).max().unwrap());
}

#[tokio::test]
async fn max_bytes_counts_record_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBacklog::open(
        dir.path(),
        DiskBacklogConfig {
            max_bytes: 1000,
            ..small()
        },
    )
    .unwrap();
    let batch: Vec<_> = (0..100).map(|i| record(&format!("{i}"), 0)).collect();
    let Err(BacklogError::Full { stored }) = store.append(&batch).await else {
        panic!("expected a full store");
    };
    assert!(stored > 0 && stored < 100, "{stored}");
    assert!(store.depth().bytes <= 1000);
}

#[tokio::test]
async fn drop_oldest_makes_room_and_counts_every_drop() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBacklog::open(
        dir.path(),
        DiskBacklogConfig {
            max_records: Some(10),
            when_full: WhenFull::DropOldest,
            ..small()
        },
    )
    .unwrap();
    let batch: Vec<_> = (0..25).map(|i| record(&format!("m{i:02}"), 0)).collect();
    store.append(&batch).await.unwrap();
    assert_eq!(store.depth().records, 10);
    assert_eq!(store.depth().dropped, 15);
    let out = drain(&store, 0).await;
    let expected: Vec<_> = (15..25).map(|i| format!("m{i:02}")).collect();
    assert_eq!(ids(&out), expected);
}

#[tokio::test]
async fn drop_oldest_never_drops_records_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBacklog::open(
        dir.path(),
        DiskBacklogConfig {
            max_records: Some(4),
            when_full: WhenFull::DropOldest,
            ..small()
        },
    )
    .unwrap();
    let batch: Vec<_> = (0..4).map(|i| record(&format!("m{i}"), 0)).collect();
    store.append(&batch).await.unwrap();
    let taken = store.take_ready(4, 0).await.unwrap();
    let err = store.append(&[record("x", 0)]).await.unwrap_err();
    assert!(matches!(err, BacklogError::Full { stored: 0 }), "{err:?}");
    assert_eq!(store.depth().dropped, 0);
    store.release(&[taken[0].id]).await.unwrap();
    store.append(&[record("x", 0)]).await.unwrap();
}

#[tokio::test]
async fn records_older_than_max_age_expire_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBacklog::open(
        dir.path(),
        DiskBacklogConfig {
            max_age: Some(Duration::from_millis(300)),
            ledger_interval: Duration::from_millis(20),
            ..small()
        },
    )
    .unwrap();
    let batch: Vec<_> = (0..20).map(|i| record(&format!("m{i}"), 0)).collect();
    store.append(&batch).await.unwrap();
    // Read-time expiry: a reader far in the future finds them all too old.
    let future = now_epoch_ms() + 10_000;
    assert!(store.take_ready(100, future).await.unwrap().is_empty());
    assert_eq!(store.depth().expired, 20);
    assert_eq!(store.depth().records, 0);
    // Housekeeping expiry: nobody reads, the writer expires them.
    store.append(&batch).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.depth().records > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.depth().expired, 40);
    assert_eq!(store.depth().records, 0);
}

#[tokio::test]
async fn a_second_opener_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _first = DiskBacklog::open(dir.path(), small()).unwrap();
    let Err(err) = DiskBacklog::open(dir.path(), small()) else {
        panic!("the second open succeeded");
    };
    let msg = err.to_string();
    assert!(msg.contains("in use by process"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
}

#[tokio::test]
async fn a_closed_store_refuses_work_and_the_directory_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBacklog::open(dir.path(), small()).unwrap();
    store.append(&[record("a", 0)]).await.unwrap();
    store.close().await.unwrap();
    assert!(store.append(&[record("b", 0)]).await.is_err());
    drop(store);
    let store = DiskBacklog::open(dir.path(), small()).unwrap();
    assert_eq!(store.depth().records, 1);
}

#[test]
fn config_parses_with_defaults_and_rejects_unknown_knobs() {
    let c: DiskBacklogConfig =
        toml::from_str("max_age = \"7days\"\nwhen_full = \"drop_oldest\"\n").unwrap();
    assert_eq!(c.max_age, Some(Duration::from_secs(7 * 86400)));
    assert_eq!(c.when_full, WhenFull::DropOldest);
    assert_eq!(c.segment_bytes, DiskBacklogConfig::default().segment_bytes);
    assert!(toml::from_str::<DiskBacklogConfig>("segment_size = 1").is_err());
    assert!(
        DiskBacklogConfig {
            segment_bytes: 10,
            ..DiskBacklogConfig::default()
        }
        .validate()
        .is_err()
    );
}

/// Every payload length modulo the frame alignment comes back byte for byte,
/// topic, id and generate time with it, read sequentially, re-read after a
/// retry, and read again after a restart.
#[tokio::test]
async fn payloads_of_every_length_come_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let sent: Vec<BacklogRecord> = (0..40usize)
        .map(|len| BacklogRecord {
            message: Message::new(
                format!("/p/d{len}/thing/event/property/post"),
                format!("id-{len}"),
                1_700_000_000_000 + len as i64,
                (0..len).map(|i| (i * 37 + len) as u8).collect::<Vec<u8>>(),
            )
            .unwrap(),
            attempts: 0,
            not_before_ms: 0,
        })
        .collect();
    let same = |got: &[StoredRecord]| {
        assert_eq!(got.len(), sent.len());
        for (g, s) in got.iter().zip(&sent) {
            assert_eq!(g.record.message.topic(), s.message.topic());
            assert_eq!(g.record.message.message_id(), s.message.message_id());
            assert_eq!(
                g.record.message.generate_time_ms(),
                s.message.generate_time_ms()
            );
            assert_eq!(g.record.message.payload(), s.message.payload());
        }
    };
    {
        let store = DiskBacklog::open(dir.path(), small()).unwrap();
        store.append(&sent).await.unwrap();
        let first = drain(&store, 0).await;
        same(&first);
        // Retried with a not-before time: re-read from its new location.
        let retried: Vec<StoredRecord> = first
            .into_iter()
            .map(|mut r| {
                r.record.attempts = 1;
                r.record.not_before_ms = 5;
                r
            })
            .collect();
        store.retry(&retried).await.unwrap();
        assert!(drain(&store, 0).await.is_empty());
        same(&drain(&store, 10).await);
        store.close().await.unwrap();
    }
    let store = DiskBacklog::open(dir.path(), small()).unwrap();
    same(&drain(&store, 10).await);
}

/// Backlog files hold customers' device data: readable by their owner only,
/// whatever the umask.
#[tokio::test]
async fn files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("data/backlog/g");
    let store = DiskBacklog::open(&dir, small()).unwrap();
    let batch: Vec<_> = (0..100).map(|i| record(&format!("m{i}"), 0)).collect();
    store.append(&batch).await.unwrap();
    let out = drain(&store, 0).await;
    store
        .release(&out.iter().map(|r| r.id).collect::<Vec<_>>())
        .await
        .unwrap();
    store.close().await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for d in [
        top.path().join("data"),
        top.path().join("data/backlog"),
        dir.clone(),
    ] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        files += 1;
    }
    assert!(files >= 3, "segments, ledger and lock");
    assert!(dir.join("ledger").exists());
}

#[tokio::test]
async fn the_oldest_record_is_dated_by_its_segment_across_releases_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let before = crate::message::now_epoch_ms();
    let store = DiskBacklog::open(dir.path(), small()).unwrap();
    assert_eq!(
        store.oldest_ms(),
        None,
        "an empty store has no oldest record"
    );
    let batch: Vec<_> = (0..300).map(|i| record(&format!("m{i:04}"), 0)).collect();
    store.append(&batch).await.unwrap();
    let oldest = store.oldest_ms().expect("records are stored");
    let after = crate::message::now_epoch_ms();
    assert!(
        before <= oldest && oldest <= after,
        "{before} {oldest} {after}"
    );
    // In flight still counts; released records do not.
    let out = drain(&store, 0).await;
    assert_eq!(store.oldest_ms(), Some(oldest));
    let (first, rest): (Vec<_>, Vec<_>) = out.iter().map(|r| r.id).partition(|&id| id < 150);
    store.release(&first).await.unwrap();
    let later = store.oldest_ms().expect("half is still owed");
    assert!(later >= oldest);
    store.close().await.unwrap();
    drop(store);
    // Reopened, the date comes from the segment headers.
    let store = DiskBacklog::open(dir.path(), small()).unwrap();
    assert_eq!(store.depth().records, rest.len() as u64);
    assert_eq!(store.oldest_ms(), Some(later));
    let out = drain(&store, 0).await;
    let all: Vec<_> = out.iter().map(|r| r.id).collect();
    store.release(&all).await.unwrap();
    assert_eq!(store.oldest_ms(), None, "everything released");
}
