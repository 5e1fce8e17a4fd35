//! Recovery on arbitrary bytes: a backlog directory made of segment files
//! (raw bytes, or valid segments then damaged: bits flipped, spans zeroed,
//! cut short) and a ledger (absent, raw bytes, or valid) is verified, each
//! segment read with the store's reader, then opened as a store and
//! drained. Nothing may panic or hang; a refusal to open is an answer.
//!
//! Run with TMPDIR on a tmpfs: every input is a fresh directory, and the
//! store fsyncs.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use laneway::backlog::{BacklogRecord, BacklogStore, DiskBacklog};
use laneway::fuzzing::{
    DiskBacklogConfig, ledger_bytes, read_segment, segment_bytes, segment_file_name, verify_dir,
};
use laneway::message::Message;
use libfuzzer_sys::fuzz_target;

const SEGMENT_BYTES: u64 = 16 * 1024;

#[derive(Arbitrary, Debug)]
struct Input {
    segments: Vec<Segment>,
    ledger: LedgerFile,
}

#[derive(Arbitrary, Debug)]
struct Segment {
    /// Added to the previous segment's number (plus one): gaps happen.
    seq_step: u8,
    file: SegmentFile,
}

#[derive(Arbitrary, Debug)]
enum SegmentFile {
    Raw(Vec<u8>),
    Valid {
        first_id: u16,
        created_ms: i64,
        records: Vec<Rec>,
        damage: Vec<Damage>,
        cut_to: Option<u16>,
    },
}

#[derive(Arbitrary, Debug)]
struct Rec {
    device: u8,
    id: u32,
    generate_time_ms: i64,
    payload: Vec<u8>,
    attempts: u8,
    not_before_ms: i64,
}

#[derive(Arbitrary, Debug)]
enum Damage {
    Flip { at: u16, mask: u8 },
    Zero { at: u16, len: u8 },
    Set { at: u16, bytes: [u8; 8] },
}

#[derive(Arbitrary, Debug)]
enum LedgerFile {
    Missing,
    Raw(Vec<u8>),
    Valid {
        next_id: u32,
        released: Vec<(u16, u16)>,
    },
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fn build(file: &SegmentFile, seq: u64) -> Vec<u8> {
    match file {
        SegmentFile::Raw(bytes) => bytes.clone(),
        SegmentFile::Valid {
            first_id,
            created_ms,
            records,
            damage,
            cut_to,
        } => {
            let records: Vec<BacklogRecord> = records
                .iter()
                .take(64)
                .filter_map(|r| {
                    let m = Message::new(
                        format!("/pk/dev{}/thing/event/property/post", r.device),
                        r.id.to_string(),
                        r.generate_time_ms,
                        r.payload.clone(),
                    )
                    .ok()?;
                    Some(BacklogRecord {
                        message: m,
                        attempts: r.attempts.into(),
                        not_before_ms: r.not_before_ms,
                    })
                })
                .collect();
            let mut b = segment_bytes(seq, u64::from(*first_id), *created_ms, &records);
            for d in damage.iter().take(8) {
                let len = b.len().max(1);
                match *d {
                    Damage::Flip { at, mask } => {
                        if let Some(x) = b.get_mut(usize::from(at) % len) {
                            *x ^= mask;
                        }
                    }
                    Damage::Zero { at, len: n } => {
                        let s = usize::from(at) % len;
                        let e = (s + usize::from(n)).min(b.len());
                        b[s..e].fill(0);
                    }
                    Damage::Set { at, bytes } => {
                        let s = usize::from(at) % len;
                        for (x, v) in b[s..].iter_mut().zip(bytes) {
                            *x = v;
                        }
                    }
                }
            }
            if let Some(cut) = cut_to {
                b.truncate(usize::from(*cut));
            }
            b
        }
    }
}

fuzz_target!(|input: Input| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut seq = 0u64;
    let mut paths = Vec::new();
    for s in input.segments.iter().take(4) {
        seq += 1 + u64::from(s.seq_step % 4);
        let path = dir.path().join(segment_file_name(seq));
        std::fs::write(&path, build(&s.file, seq)).expect("write a segment");
        paths.push(path);
    }
    let ledger = match &input.ledger {
        LedgerFile::Missing => None,
        LedgerFile::Raw(b) => Some(b.clone()),
        LedgerFile::Valid { next_id, released } => {
            let ranges: Vec<(u64, u64)> = released
                .iter()
                .take(16)
                .map(|&(s, e)| (u64::from(s), u64::from(e)))
                .collect();
            Some(ledger_bytes(u64::from(*next_id), &ranges))
        }
    };
    if let Some(b) = ledger {
        std::fs::write(dir.path().join("ledger"), b).expect("write the ledger");
    }

    let config = DiskBacklogConfig {
        segment_bytes: SEGMENT_BYTES,
        commit_interval: Duration::ZERO,
        ..DiskBacklogConfig::default()
    };
    let max_body = (SEGMENT_BYTES - 64 - 16) as usize;
    let _ = verify_dir(dir.path());
    for p in &paths {
        let _ = read_segment(p, max_body);
    }
    let Ok(store) = DiskBacklog::open(dir.path(), config) else {
        return;
    };
    let owed = store.recovery().records;
    runtime().block_on(async {
        let mut taken = 0u64;
        loop {
            let got = store
                .take_ready(1024, i64::MAX)
                .await
                .expect("a recovered store hands out its records");
            if got.is_empty() {
                break;
            }
            taken += got.len() as u64;
            assert!(taken <= owed, "{taken} handed out, {owed} recovered");
            let ids: Vec<_> = got.iter().map(|r| r.id).collect();
            store.release(&ids).await.expect("release");
        }
        // A frame whose checksum holds but whose body does not decode
        // (only a crafted file gets there) is found when read: the store
        // counts it as corrupt instead of handing it out.
        // (`corrupt` starts at what recovery counted lost.)
        let corrupt = store.depth().corrupt - store.recovery().lost;
        assert_eq!(
            taken + corrupt,
            owed,
            "every recovered record is handed out or counted corrupt"
        );
        let _ = store.close().await;
    });
});
