//! Recovery and `verify` on a backlog directory made of arbitrary bytes:
//! the input is cut into a ledger and three segment files. Opening
//! the store, draining it and verifying it must never panic or hang; the
//! store may refuse to open (a newer format) but only with an error.
#![no_main]

use std::path::PathBuf;
use std::time::Duration;

use laneway::backlog::disk::verify_dir;
use laneway::backlog::{BacklogStore, DiskBacklog, DiskBacklogConfig};
use libfuzzer_sys::fuzz_target;

/// One scratch directory per process, on tmpfs when there is one (fsyncs
/// are free there), emptied before every input.
fn scratch() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("laneway-fuzz-recovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    // The first 6 bytes are three little-endian u16 lengths: the ledger's
    // and two segments'; the rest of the input is a third segment.
    let (cuts, mut rest) = data.split_at(data.len().min(6));
    let mut pieces = Vec::new();
    for c in cuts.chunks(2) {
        let len = usize::from(u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        let (piece, tail) = rest.split_at(len.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces.push(rest);
    if let Some(ledger) = pieces.first() {
        std::fs::write(dir.join("ledger"), ledger).expect("write");
    }
    for (i, seg) in pieces.iter().skip(1).enumerate() {
        std::fs::write(dir.join(format!("{:020}.seg", i + 1)), seg).expect("write");
    }
    let _ = verify_dir(&dir);
    let config = DiskBacklogConfig {
        segment_bytes: 4096,
        commit_interval: Duration::ZERO,
        ..DiskBacklogConfig::default()
    };
    if let Ok(store) = DiskBacklog::open(&dir, config) {
        runtime().block_on(async {
            for _ in 0..64 {
                match store.take_ready(256, i64::MAX / 2).await {
                    Ok(batch) if !batch.is_empty() => {
                        let ids: Vec<_> = batch.iter().map(|r| r.id).collect();
                        let _ = store.release(&ids).await;
                    }
                    _ => break,
                }
            }
            let _ = store.close().await;
        });
    }
    let _ = verify_dir(&dir);
});
