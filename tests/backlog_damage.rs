//! The catalogue of damage a backlog directory can suffer, each case
//! asserting exactly how many records were lost, that `verify` and recovery
//! report that number (and the ids), and that every other record comes out
//! byte for byte as it went in: header bytes one at a time, deleted,
//! duplicated and truncated segments, a zeroed block, a damaged ledger.

use std::path::Path;
use std::time::Duration;

use laneway::backlog::disk::{DamageKind, LedgerState, verify_dir};
use laneway::backlog::{BacklogRecord, BacklogStore, DiskBacklog, DiskBacklogConfig};
use laneway::message::Message;

use crate::support;
use support::backlog_files::{frames, segments};

/// Record `i` as sent: its topic, id, time and payload all depend on `i`,
/// and payload lengths cover every remainder modulo the frame alignment.
fn sent(i: u64) -> BacklogRecord {
    let payload: Vec<u8> = (0..(i % 37) * 3 + 1)
        .map(|k| (k as u8).wrapping_mul(31) ^ i as u8)
        .collect();
    BacklogRecord::fresh(
        Message::new(
            format!("/pk{}/dn{i}/thing/event/property/post", i % 3),
            format!("m{i}"),
            1_700_000_000_000 + i as i64,
            payload,
        )
        .unwrap(),
    )
}

const SEGMENT_BYTES: u64 = 4096;

fn config() -> DiskBacklogConfig {
    DiskBacklogConfig {
        segment_bytes: SEGMENT_BYTES,
        commit_interval: Duration::ZERO,
        ..DiskBacklogConfig::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A closed backlog of `n` records (ids 1..=n, record `i` has id `i + 1`),
/// in several segments, with its ledger saved.
fn filled(n: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config()).unwrap();
        let batch: Vec<_> = (0..n).map(sent).collect();
        store.append(&batch).await.unwrap();
        store.close().await.unwrap();
    });
    dir
}

/// Opens the store, checks what recovery reports, drains it and checks
/// that exactly the records with ids in `expect_ids` come out, each byte
/// for byte as sent.
fn open_and_check(dir: &Path, lost: u64, expect_ids: &[u64]) {
    rt().block_on(async {
        let store = DiskBacklog::open(dir, config()).unwrap();
        assert_eq!(store.recovery().lost, lost, "{:?}", store.recovery());
        assert_eq!(store.depth().corrupt, lost);
        let mut got = Vec::new();
        loop {
            let batch = store.take_ready(500, 0).await.unwrap();
            if batch.is_empty() {
                break;
            }
            let ids: Vec<_> = batch.iter().map(|r| r.id).collect();
            store.release(&ids).await.unwrap();
            got.extend(batch);
        }
        let got_ids: Vec<u64> = got.iter().map(|r| r.id).collect();
        assert_eq!(got_ids, expect_ids);
        for r in &got {
            let want = sent(r.id - 1).message;
            let m = &r.record.message;
            assert_eq!(m.topic(), want.topic());
            assert_eq!(m.message_id(), want.message_id());
            assert_eq!(m.generate_time_ms(), want.generate_time_ms());
            assert_eq!(m.payload(), want.payload(), "payload of id {}", r.id);
        }
        store.close().await.unwrap();
    });
    // The loss was counted once: the store settled it, so the directory
    // now verifies clean and a second start counts nothing more.
    let v = verify_dir(dir).unwrap();
    assert_eq!(v.lost, 0, "{v:?}");
}

fn ids(range: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    range.collect()
}

const N: u64 = 600;

#[test]
fn every_header_byte_flipped_costs_no_record_and_never_refuses_start() {
    let template = filled(N);
    let victim_index = 1;
    for byte in 0..64usize {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(template.path()).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() && p.file_name().is_some_and(|n| n != "lock") {
                std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
            }
        }
        let victim = &segments(dir.path())[victim_index];
        let mut bytes = std::fs::read(victim).unwrap();
        bytes[byte] ^= 0x01;
        std::fs::write(victim, &bytes).unwrap();
        let v = verify_dir(dir.path()).unwrap();
        assert!(!v.ok, "byte {byte}: a damaged header must fail verify");
        assert_eq!(v.lost, 0, "byte {byte}: {v:?}");
        assert_eq!(v.damage[0].kind, DamageKind::Header, "byte {byte}");
        open_and_check(dir.path(), 0, &ids(1..=N));
    }
}

/// Found by the recovery fuzz target: with the header of a middle segment
/// damaged *and* its first record damaged, recovery stepped over the
/// record from the last id before the segment and counted the records
/// after it, but the reader (and `inspect`) resumed from id 0, found no
/// record past the damage, and left the rest of the segment unread: the
/// backlog never drained. Every reader now resumes where recovery does.
#[test]
fn a_damaged_header_followed_by_a_damaged_record_still_hands_out_the_rest() {
    let dir = filled(N);
    let segs = segments(dir.path());
    let victim = &segs[1];
    let f = frames(victim);
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[10] ^= 0xff; // the header's checksum no longer holds
    let first = f[0].0 as usize;
    bytes[first + 20] ^= 0xff; // nor does the first record's
    std::fs::write(victim, &bytes).unwrap();
    let damaged = f[0].1;
    let v = verify_dir(dir.path()).unwrap();
    assert!(!v.ok);
    assert_eq!(v.lost, 1, "{v:?}");
    let inspected = laneway::backlog::disk::inspect_dir(dir.path()).unwrap();
    assert_eq!(
        inspected.records,
        N - 1,
        "inspect reads past the damage too"
    );
    let rest: Vec<u64> = (1..=N).filter(|&id| id != damaged).collect();
    open_and_check(dir.path(), 1, &rest);
}

#[test]
fn a_deleted_middle_segment_counts_each_of_its_records_by_id() {
    let dir = filled(N);
    let segs = segments(dir.path());
    assert!(segs.len() >= 4, "{}", segs.len());
    let gone = frames(&segs[2]);
    let (first, last) = (gone[0].1, gone[gone.len() - 1].1);
    std::fs::remove_file(&segs[2]).unwrap();
    let v = verify_dir(dir.path()).unwrap();
    assert!(!v.ok);
    assert_eq!(v.lost, gone.len() as u64);
    assert_eq!(v.lost_ids, [(first, last + 1)]);
    let rest: Vec<u64> = (1..=N).filter(|id| *id < first || *id > last).collect();
    open_and_check(dir.path(), gone.len() as u64, &rest);
}

#[test]
fn a_last_segment_truncated_to_its_header_counts_its_records() {
    let dir = filled(N);
    let last = segments(dir.path()).pop().unwrap();
    let gone = frames(&last);
    let first = gone[0].1;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(64)
        .unwrap();
    let v = verify_dir(dir.path()).unwrap();
    assert!(!v.ok);
    assert_eq!(
        (v.lost, v.lost_ids.clone()),
        (gone.len() as u64, vec![(first, N + 1)])
    );
    open_and_check(dir.path(), gone.len() as u64, &ids(1..=first - 1));
}

#[test]
fn a_middle_segment_truncated_at_a_frame_boundary_or_mid_record_counts_every_record_gone() {
    for mid_record in [false, true] {
        let dir = filled(N);
        let segs = segments(dir.path());
        let f = frames(&segs[1]);
        let (cut_at, first_gone) = f[5];
        let len = if mid_record { cut_at + 11 } else { cut_at };
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segs[1])
            .unwrap()
            .set_len(len)
            .unwrap();
        let last_gone = f[f.len() - 1].1;
        let lost = last_gone - first_gone + 1;
        let v = verify_dir(dir.path()).unwrap();
        assert!(!v.ok, "mid_record={mid_record}");
        assert_eq!(v.lost, lost, "mid_record={mid_record}");
        assert_eq!(v.lost_ids, [(first_gone, last_gone + 1)]);
        let rest: Vec<u64> = (1..=N)
            .filter(|id| *id < first_gone || *id > last_gone)
            .collect();
        open_and_check(dir.path(), lost, &rest);
    }
}

#[test]
fn a_zeroed_block_counts_exactly_the_records_it_touched() {
    let dir = filled(N);
    let segs = segments(dir.path());
    let victim = &segs[1];
    let f = frames(victim);
    // Zero 1 KiB from the middle of frame 3: frames 3.. up to the one the
    // block ends in are damaged.
    let start = f[3].0 + 8;
    let end = start + 1024;
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[start as usize..end as usize].fill(0);
    std::fs::write(victim, &bytes).unwrap();
    let hit: Vec<u64> = f
        .iter()
        .enumerate()
        .filter(|(i, (off, _))| {
            let next = f.get(i + 1).map_or(bytes.len() as u64, |n| n.0);
            *off < end && next > start
        })
        .map(|(_, (_, id))| *id)
        .collect();
    assert!(hit.len() > 3, "the block should cover several records");
    let v = verify_dir(dir.path()).unwrap();
    assert_eq!(v.lost, hit.len() as u64, "{v:?}");
    let rest: Vec<u64> = (1..=N).filter(|id| !hit.contains(id)).collect();
    open_and_check(dir.path(), hit.len() as u64, &rest);
}

#[test]
fn a_segment_whose_ids_repeat_an_earlier_one_is_quarantined_and_everything_drains_once() {
    let dir = filled(N);
    let segs = segments(dir.path());
    let copy = dir.path().join("00000000000000000099.seg");
    std::fs::copy(&segs[1], &copy).unwrap();
    let v = verify_dir(dir.path()).unwrap();
    assert!(!v.ok);
    assert_eq!(v.lost, 0);
    assert!(v.damage.iter().any(|d| d.kind == DamageKind::Duplicate));
    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config()).unwrap();
        assert_eq!(store.recovery().quarantined, 1);
        store.close().await.unwrap();
    });
    assert!(!copy.exists());
    assert!(
        dir.path()
            .join("quarantine/00000000000000000099.seg")
            .exists()
    );
    open_and_check(dir.path(), 0, &ids(1..=N));
    // The log goes on after the quarantined file's place.
    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config()).unwrap();
        store.append(&[sent(N)]).await.unwrap();
        let got = store.take_ready(10, 0).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].record.message.payload(), sent(N).message.payload());
        store.close().await.unwrap();
    });
}

#[test]
fn a_damaged_ledger_fails_verify_and_recovery_brings_released_records_back() {
    let dir = filled(N);
    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config()).unwrap();
        let first = store.take_ready(100, 0).await.unwrap();
        let ids: Vec<_> = first.iter().map(|r| r.id).collect();
        store.release(&ids).await.unwrap();
        store.close().await.unwrap();
    });
    let ledger = dir.path().join("ledger");
    let mut bytes = std::fs::read(&ledger).unwrap();
    bytes[20] ^= 0x80;
    std::fs::write(&ledger, &bytes).unwrap();
    let v = verify_dir(dir.path()).unwrap();
    assert!(!v.ok, "a damaged ledger is damage");
    assert!(
        matches!(v.ledger, LedgerState::Damaged(_)),
        "{:?}",
        v.ledger
    );
    assert_eq!(v.lost, 0);
    // Rebuilt from the segments: the released records still on disk come
    // back (duplicates, never loss); those whose segments were deleted
    // stay gone, and nothing else is missing.
    let first_on_disk = frames(&segments(dir.path())[0])[0].1;
    assert!(
        (2..=100).contains(&first_on_disk),
        "some released records are still on disk: {first_on_disk}"
    );
    open_and_check(dir.path(), 0, &ids(first_on_disk..=N));
}

#[test]
fn verify_exits_non_zero_on_a_damaged_ledger() {
    let dir = filled(50);
    let ledger = dir.path().join("ledger");
    let mut bytes = std::fs::read(&ledger).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&ledger, &bytes).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["backlog", "verify"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("ledger DAMAGED"), "{text}");
    assert!(!text.contains(": ok"), "{text}");
}

/// A copy of the last segment under a name that sorts before every other
/// (`cp <last>.seg 00000000000000000000.seg`): its header names the segment
/// it copies, so the copy is the one set aside, and no genuine segment is
/// quarantined or any record reported lost.
#[test]
fn a_copy_named_to_sort_first_is_set_aside_and_every_genuine_segment_is_read() {
    let dir = filled(N);
    let segs = segments(dir.path());
    assert!(segs.len() > 3, "{segs:?}");
    let copy = dir.path().join("00000000000000000000.seg");
    std::fs::copy(segs.last().unwrap(), &copy).unwrap();
    let v = verify_dir(dir.path()).unwrap();
    assert_eq!(v.lost, 0, "{v:?}");
    let set_aside: Vec<&str> = v
        .damage
        .iter()
        .filter(|d| d.kind == DamageKind::Duplicate)
        .map(|d| d.segment.as_str())
        .collect();
    assert_eq!(set_aside.len(), 1, "{v:?}");
    assert!(set_aside[0].ends_with("00000000000000000000.seg"), "{v:?}");
    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config()).unwrap();
        assert_eq!(store.recovery().quarantined, 1, "{:?}", store.recovery());
        assert_eq!(store.recovery().lost, 0, "{:?}", store.recovery());
        store.close().await.unwrap();
    });
    for s in &segs {
        assert!(s.exists(), "a genuine segment was moved: {}", s.display());
    }
    assert!(
        dir.path()
            .join("quarantine/00000000000000000000.seg")
            .exists()
    );
    open_and_check(dir.path(), 0, &ids(1..=N));
}

/// An old segment, delivered and deleted long ago, restored from a backup:
/// its ids lie below the ledger's head, so it is known delivered. Nothing
/// is reported lost and none of its records is delivered again.
#[test]
fn an_old_delivered_segment_restored_is_known_delivered_not_lost() {
    let dir = filled(N);
    let first = segments(dir.path())[0].clone();
    let backup = std::fs::read(&first).unwrap();
    let delivered = 300u64;
    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config()).unwrap();
        let got = store.take_ready(delivered as usize, 0).await.unwrap();
        let got_ids: Vec<u64> = got.iter().map(|r| r.id).collect();
        assert_eq!(got_ids, ids(1..=delivered));
        store.release(&got_ids).await.unwrap();
        store.close().await.unwrap();
    });
    assert!(!first.exists(), "the delivered segment was deleted");
    std::fs::write(&first, &backup).unwrap();
    let v = verify_dir(dir.path()).unwrap();
    assert_eq!(v.lost, 0, "{v:?}");
    assert!(v.ok, "a restored delivered segment is no damage: {v:?}");
    assert!(
        v.damage.iter().any(|d| d.kind == DamageKind::Delivered),
        "{v:?}"
    );
    open_and_check(dir.path(), 0, &ids(delivered + 1..=N));
    assert!(!first.exists());
    assert!(
        dir.path()
            .join("quarantine")
            .join(first.file_name().unwrap())
            .exists()
    );
}

/// The ledger's next id, as `docs/backlog-format.md` lays the file out.
fn ledger_next_id(dir: &Path) -> u64 {
    std::fs::read(dir.join("ledger"))
        .ok()
        .and_then(|b| {
            b.get(16..24)
                .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
        })
        .unwrap_or(0)
}

/// Records appended and acknowledged, none delivered, then the process
/// dies (the directory is copied as a SIGKILL leaves it: no close) and the
/// active segment's end is cut inside a record, or zeroed. The ledger knew
/// the acknowledged tail, so every record cut off is counted lost, by id,
/// `verify` fails (and exits non-zero), and the rest comes out intact.
/// Before, the ledger was saved only on release: the cut was called a torn
/// tail and the records vanished uncounted.
#[test]
fn a_cut_or_zeroed_tail_after_acknowledged_records_is_loss_not_a_torn_tail() {
    for damage in ["cut", "zeroed"] {
        let dir = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let store = DiskBacklog::open(dir.path(), config()).unwrap();
            let batch: Vec<_> = (0..N).map(sent).collect();
            store.append(&batch).await.unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while ledger_next_id(dir.path()) <= N {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{damage}: the ledger never learnt the acknowledged tail (next id {} on disk, {} acknowledged)",
                    ledger_next_id(dir.path()),
                    N
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let p = entry.unwrap().path();
                let name = p.file_name().unwrap().to_owned();
                if name == "ledger" || p.extension().is_some_and(|e| e == "seg") {
                    std::fs::copy(&p, crashed.path().join(name)).unwrap();
                }
            }
            store.close().await.unwrap();
        });
        let last = segments(crashed.path()).pop().unwrap();
        let fr = frames(&last);
        assert!(!fr.is_empty(), "{fr:?}");
        let (offset, first_gone) = fr[fr.len() / 2];
        let mut bytes = std::fs::read(&last).unwrap();
        match damage {
            "cut" => bytes.truncate(offset as usize + 11),
            _ => bytes[offset as usize..].fill(0),
        }
        std::fs::write(&last, &bytes).unwrap();
        let gone = N + 1 - first_gone;
        let v = verify_dir(crashed.path()).unwrap();
        assert!(!v.ok, "{damage}: {v:?}");
        assert_eq!(v.lost, gone, "{damage}: {v:?}");
        assert_eq!(v.lost_ids, [(first_gone, N + 1)], "{damage}");
        assert!(
            v.damage.iter().all(|d| d.kind != DamageKind::TornTail),
            "{damage}: acknowledged records are no torn tail: {v:?}"
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_laneway"))
            .args(["backlog", "verify"])
            .arg(crashed.path())
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{damage}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        open_and_check(crashed.path(), gone, &ids(1..=first_gone - 1));
    }
}
