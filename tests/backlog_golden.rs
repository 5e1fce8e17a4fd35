//! Backlog directories written by an earlier laneway still read: a disk
//! backlog of format version 1 (no record keys or headers), committed under
//! `tests/data/backlog-v1/` as that version wrote it, is opened by today's
//! store and gives back every record byte for byte (topic, id, time,
//! payload, attempts, not-before), with no key and no headers.
//!
//! The directory was written by the version 1 code: a `DiskBacklog` opened
//! with the default config on an empty directory, the records below
//! appended in one batch, then closed (the lock file left out).

use std::path::Path;

use laneway::backlog::{BacklogRecord, BacklogStore, DiskBacklog, DiskBacklogConfig};
use laneway::message::Message;

/// How many records the golden directory holds.
const RECORDS: u64 = 40;

/// Record `i` of the golden directory: payloads of many lengths, with NULs,
/// bytes that are not UTF-8 and JSON alike; topics and ids with text
/// beyond ASCII.
fn golden(i: u64) -> BacklogRecord {
    let len = (i * 37) % 301;
    let payload: Vec<u8> = if i.is_multiple_of(5) {
        format!("{{\"n\":{i},\"s\":\"caf\u{e9}\"}}").into_bytes()
    } else {
        (0..len)
            .map(|k| (i.wrapping_mul(2_654_435_761).wrapping_add(k * 97) >> 3) as u8)
            .collect()
    };
    let topic = match i % 4 {
        0 => format!("/pk{i}/dev{i}/thing/event/property/post"),
        1 => format!("/sys/pk/设备{i}/thing/event/alarm/post"),
        2 => format!("/as/mqtt/status/pk/d{i}"),
        _ => format!("/pk/d\u{0}{i}/thing/lifecycle"),
    };
    BacklogRecord {
        message: Message::new(
            topic,
            format!("id-{i}-\u{1F600}"),
            1_700_000_000_000 - i as i64 * 1_000,
            payload,
        )
        .unwrap(),
        attempts: (i % 4) as u32,
        not_before_ms: (i * 1_000) as i64,
    }
}

fn golden_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/backlog-v1"
    ))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_version_1_backlog_reads_back_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let mut copied = 0;
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
        copied += 1;
    }
    assert!(copied > 0, "the golden directory is there");
    // The file really is version 1 (byte 8 of the segment header), so the
    // test cannot pass on a directory written again by today's code.
    let segment = std::fs::read(golden_dir().join("00000000000000000001.seg")).unwrap();
    assert_eq!(
        segment.get(8),
        Some(&1),
        "the golden segment's format version"
    );
    rt().block_on(async {
        let store = DiskBacklog::open(tmp.path(), DiskBacklogConfig::default()).unwrap();
        let report = store.recovery();
        assert_eq!(
            (report.lost, report.damaged, report.ledger),
            (0, 0, "loaded"),
            "{report:?}"
        );
        let mut got = Vec::new();
        loop {
            let batch = store.take_ready(1000, i64::MAX).await.unwrap();
            if batch.is_empty() {
                break;
            }
            got.extend(batch.into_iter().map(|r| r.record));
        }
        assert_eq!(got.len() as u64, RECORDS);
        for (i, r) in got.iter().enumerate() {
            let want = golden(i as u64);
            let (m, w) = (&r.message, &want.message);
            assert_eq!(m.topic(), w.topic(), "record {i}");
            assert_eq!(m.message_id(), w.message_id(), "record {i}");
            assert_eq!(m.generate_time_ms(), w.generate_time_ms(), "record {i}");
            assert_eq!(m.payload(), w.payload(), "record {i}");
            assert_eq!(
                (r.attempts, r.not_before_ms),
                (want.attempts, want.not_before_ms),
                "record {i}"
            );
            assert_eq!((m.key(), m.headers().len()), (None, 0), "record {i}");
        }
        store.close().await.unwrap();
    });
}
