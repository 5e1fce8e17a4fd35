//! The disk backlog end to end: a million records round trip, damage of
//! every kind the issue names (a flipped bit, a truncated tail, a
//! zero-filled tail, a lost ledger), and `laneway backlog verify`.

use std::process::Command;
use std::time::Duration;

use laneway::backlog::disk::verify_dir;
use laneway::backlog::{BacklogRecord, BacklogStore, DiskBacklog, DiskBacklogConfig};

use crate::support;
use support::backlog_files::{frames, segments};
use support::records::{Copies, Record, assert_delivered};

/// What record `id` holds: its time and payload (arbitrary bytes, 100 to
/// 116 long: every length mod 8) depend on the id.
fn sent(id: u64) -> Record {
    let payload = (0..100 + id % 17)
        .map(|k| (id.wrapping_mul(131).wrapping_add(k * 7)) as u8)
        .collect::<Vec<u8>>();
    Record::new(
        format!("/pk/dn{}/thing/event/property/post", id % 3),
        id.to_string(),
        id as i64,
        payload,
    )
}

fn record(id: u64) -> BacklogRecord {
    BacklogRecord::fresh(sent(id).message())
}

fn sent_all(ids: impl IntoIterator<Item = u64>) -> Vec<Record> {
    ids.into_iter().map(sent).collect()
}

fn config(segment_bytes: u64) -> DiskBacklogConfig {
    DiskBacklogConfig {
        segment_bytes,
        commit_interval: Duration::ZERO,
        ..DiskBacklogConfig::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Takes every record out, checks each is byte for byte the one stored
/// under its id, and returns the ids in the order they came.
async fn drain_ids(store: &DiskBacklog) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let got = store.take_ready(4096, i64::MAX).await.unwrap();
        if got.is_empty() {
            break;
        }
        out.extend(got.iter().map(|r| Record::of(&r.record.message)));
    }
    let ids: Vec<u64> = out.iter().map(|r| r.id.parse().unwrap()).collect();
    assert_delivered(&sent_all(ids.iter().copied()), &out, Copies::Unchanged);
    ids
}

/// A closed backlog of `n` records (ids 0..n) in 64 KiB segments.
fn filled(n: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config(64 * 1024)).unwrap();
        let batch: Vec<_> = (0..n).map(record).collect();
        store.append(&batch).await.unwrap();
        store.close().await.unwrap();
    });
    dir
}

#[test]
fn a_million_records_round_trip_in_order_and_segments_go_as_they_are_released() {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config(8 << 20)).unwrap();
        let mut next = 0;
        while next < N {
            let batch: Vec<_> = (next..(next + 10_000).min(N)).map(record).collect();
            next += batch.len() as u64;
            store.append(&batch).await.unwrap();
        }
        let on_disk = segments(dir.path()).len();
        assert!(on_disk >= 20, "only {on_disk} segments");
        assert_eq!(store.depth().records, N);
        let mut expect = 0u64;
        let mut fewest = on_disk;
        while expect < N {
            let got = store.take_ready(8192, 0).await.unwrap();
            assert!(!got.is_empty(), "ran dry at {expect}");
            for r in &got {
                assert_eq!(Record::of(&r.record.message), sent(expect));
                expect += 1;
            }
            let ids: Vec<_> = got.iter().map(|r| r.id).collect();
            store.release(&ids).await.unwrap();
            fewest = fewest.min(store.segment_count());
        }
        assert!(store.take_ready(10, 0).await.unwrap().is_empty());
        assert_eq!(store.depth().records, 0);
        store.checkpoint().await.unwrap();
        // Released segments are deleted as the reader goes, not at the end.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while segments(dir.path()).len() > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            segments(dir.path()).len(),
            1,
            "only the active segment stays"
        );
        assert!(fewest < on_disk, "no segment was deleted while draining");
    });
}

/// `segment_bytes` bounds what is written, not what is read: a backlog
/// reopened with smaller segments than it was written with keeps every
/// record, those longer than the new segments included, in the middle of a
/// segment and at its end.
#[test]
fn a_backlog_reopened_with_smaller_segments_keeps_its_longer_records() {
    let dir = tempfile::tempdir().unwrap();
    let long = |id: u64| {
        let payload: Vec<u8> = (0..40_000u32).map(|k| (k as u64 ^ id) as u8).collect();
        Record::new(
            "/pk/dn1/thing/event/property/post",
            id.to_string(),
            id as i64,
            payload,
        )
    };
    let stored = vec![sent(0), long(1), sent(2), long(3)];
    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config(1 << 20)).unwrap();
        let batch: Vec<_> = stored
            .iter()
            .map(|r| BacklogRecord::fresh(r.message()))
            .collect();
        store.append(&batch).await.unwrap();
        store.close().await.unwrap();
    });
    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config(16 * 1024)).unwrap();
        assert_eq!(store.recovery().lost, 0);
        let got = store.take_ready(16, i64::MAX).await.unwrap();
        let got: Vec<Record> = got.iter().map(|r| Record::of(&r.record.message)).collect();
        assert_delivered(&stored, &got, Copies::ExactlyOnce);
        store.close().await.unwrap();
    });
}

#[test]
fn a_flipped_bit_costs_that_record_only_and_verify_names_it() {
    let dir = filled(2000);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let victim_seg = &segs[1];
    let (offset, victim) = frames(victim_seg)[10];
    let mut bytes = std::fs::read(victim_seg).unwrap();
    bytes[offset as usize + 60] ^= 0x04;
    std::fs::write(victim_seg, &bytes).unwrap();

    let v = verify_dir(dir.path()).unwrap();
    assert!(!v.ok);
    assert_eq!(v.damage.len(), 1, "{:?}", v.damage);
    assert_eq!(v.damage[0].segment, victim_seg.display().to_string());
    assert_eq!(v.damage[0].offset, offset);
    assert_eq!(
        (v.lost, v.lost_ids.clone()),
        (1, vec![(victim, victim + 1)])
    );

    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config(64 * 1024)).unwrap();
        assert_eq!(store.recovery().lost, 1);
        assert_eq!(store.recovery().records, 1999);
        assert_eq!(store.depth().corrupt, 1);
        let ids = drain_ids(&store).await;
        let expected: Vec<u64> = (0..2000).filter(|&i| i != victim - 1).collect();
        assert_eq!(ids, expected);
    });
}

/// A cut through the last record of a closed backlog: the ledger saved at
/// close vouches for that record, so the cut is damage (a `tail`), not a
/// torn write (`cut` counts only those, which were never acknowledged).
#[test]
fn a_truncated_tail_is_cut_and_the_rest_delivered() {
    let dir = filled(1000);
    let last = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    f.set_len(len - 37).unwrap();
    drop(f);
    let v = verify_dir(dir.path()).unwrap();
    assert!(!v.ok && v.lost == 1, "a vouched-for record was cut: {v:?}");
    rt().block_on(async {
        {
            let store = DiskBacklog::open(dir.path(), config(64 * 1024)).unwrap();
            // The cut record had been stored durably (the ledger, saved at
            // close, vouches for its id): it is lost, and counted; the
            // bytes are cut all the same.
            assert_eq!(store.recovery().cut, 0, "not a torn write");
            assert!(store.recovery().cut_bytes > 0);
            assert_eq!(store.recovery().lost, 1);
            // The store numbers its records from 1: the last one is 1000.
            assert_eq!(store.recovery().lost_ids, vec![(1000, 1001)]);
            assert_eq!(store.recovery().records, 999);
            let ids = drain_ids(&store).await;
            assert_eq!(ids, (0..999).collect::<Vec<_>>());
            // The log goes on cleanly after the cut.
            store.append(&[record(5000)]).await.unwrap();
            store.close().await.unwrap();
        }
        let store = DiskBacklog::open(dir.path(), config(64 * 1024)).unwrap();
        assert_eq!(store.recovery().cut, 0);
        assert_eq!(store.recovery().records, 1000);
        let ids = drain_ids(&store).await;
        assert_eq!(ids.last(), Some(&5000));
    });
    assert!(verify_dir(dir.path()).unwrap().ok);
}

#[test]
fn a_zero_filled_tail_is_cut_without_losing_a_record() {
    let dir = filled(1000);
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&[0u8; 8192]);
    std::fs::write(&last, &bytes).unwrap();
    let v = verify_dir(dir.path()).unwrap();
    assert!(v.ok, "a torn tail is not damage: {v:?}");
    assert!(
        v.damage
            .iter()
            .any(|d| d.kind == laneway::backlog::disk::DamageKind::TornTail)
    );
    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config(64 * 1024)).unwrap();
        assert_eq!(store.recovery().cut, 1);
        assert_eq!(store.recovery().cut_bytes, 8192);
        assert_eq!(store.recovery().records, 1000);
        assert_eq!(drain_ids(&store).await, (0..1000).collect::<Vec<_>>());
    });
}

#[test]
fn a_lost_or_damaged_ledger_is_rebuilt_and_only_brings_back_released_records() {
    for damage in ["delete", "garble"] {
        let dir = filled(2000);
        rt().block_on(async {
            let store = DiskBacklog::open(dir.path(), config(64 * 1024)).unwrap();
            let first = store.take_ready(700, 0).await.unwrap();
            let ids: Vec<_> = first.iter().map(|r| r.id).collect();
            store.release(&ids).await.unwrap();
            store.close().await.unwrap();
        });
        let ledger = dir.path().join("ledger");
        match damage {
            "delete" => std::fs::remove_file(&ledger).unwrap(),
            _ => std::fs::write(&ledger, b"not a ledger at all, just noise").unwrap(),
        }
        rt().block_on(async {
            let store = DiskBacklog::open(dir.path(), config(64 * 1024)).unwrap();
            let r = store.recovery();
            assert_eq!(
                r.ledger,
                if damage == "delete" {
                    "missing"
                } else {
                    "damaged"
                }
            );
            let ids = drain_ids(&store).await;
            // Every unreleased record is there, in order; some released ones
            // (those in segments not yet deleted) come back: duplicates, not loss.
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
            assert!(ids.ends_with(&(700..2000).collect::<Vec<_>>()), "{damage}");
            assert!(
                ids.len() < 2000,
                "{damage}: no released segment was deleted"
            );
        });
    }
}

#[test]
fn laneway_backlog_verify_exits_non_zero_naming_segment_and_offset() {
    let dir = filled(500);
    let exe = env!("CARGO_BIN_EXE_laneway");
    let ok = Command::new(exe)
        .args(["backlog", "verify", "--json"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(out.contains("\"ok\":true"), "{out}");

    let inspect = Command::new(exe)
        .args(["backlog", "inspect", "--json"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(inspect.status.success());
    let out = String::from_utf8_lossy(&inspect.stdout);
    assert!(out.contains("\"records\":500"), "{out}");
    assert!(out.contains("\"property\":500"), "{out}");

    let seg = segments(dir.path()).pop().unwrap();
    let (offset, _) = frames(&seg)[3];
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[offset as usize + 100] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let bad = Command::new(exe)
        .args(["backlog", "verify", "--json"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.contains(&format!("\"offset\":{offset}")), "{out}");
    assert!(
        out.contains(&seg.file_name().unwrap().to_string_lossy().to_string()),
        "{out}"
    );
    assert!(out.contains("\"ok\":false"), "{out}");
}
