//! Measures the disk backlog's resident memory with a large backlog on disk
//! (see docs/benchmarks.md, "Disk backlog"): fills DIR with N records of
//! 300 bytes, reopens it (recovery), drains part of it, and prints VmRSS /
//! VmHWM from /proc/self/status after each stage.
//!
//! Usage: `cargo run --release --example backlog_rss -- DIR [N]` (default
//! N = 10,000,000, about 3 GB on disk). DIR is left in place: delete it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use laneway::backlog::{BacklogRecord, BacklogStore, DiskBacklog, DiskBacklogConfig};
use laneway::message::Message;

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l[field.len()..].trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn report(stage: &str) {
    println!(
        "{stage:<40} VmRSS {:>12}  VmHWM {:>12}",
        status("VmRSS:"),
        status("VmHWM:")
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).ok_or("usage: backlog_rss DIR [N]")?);
    let n: u64 = args.get(2).map_or(Ok(10_000_000), |s| s.parse())?;
    let config = DiskBacklogConfig {
        max_bytes: 64 << 30,
        ..DiskBacklogConfig::default()
    };
    report("start");
    {
        let store = DiskBacklog::open(&dir, config.clone())?;
        let payload = vec![b'7'; 204];
        let started = Instant::now();
        let mut next = 0u64;
        while next < n {
            let batch: Vec<BacklogRecord> = (next..(next + 8192).min(n))
                .map(|i| {
                    Message::new(
                        "/pk00001/dev00001/thing/lifecycle",
                        format!("{:08}", i % 100_000_000),
                        0,
                        payload.clone(),
                    )
                    .map(BacklogRecord::fresh)
                })
                .collect::<Result<_, _>>()?;
            next += batch.len() as u64;
            store.append(&batch).await?;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "appended {n} records ({} bytes) in {secs:.1}s: {:.0} records/s",
            store.depth().bytes,
            n as f64 / secs
        );
        report("after appending");
        store.close().await?;
    }
    let started = Instant::now();
    let store = DiskBacklog::open(&dir, config)?;
    println!(
        "recovered {} records in {:.2}s",
        store.recovery().records,
        started.elapsed().as_secs_f64()
    );
    report("after recovery (new open)");
    let started = Instant::now();
    let mut read = 0u64;
    while read < n.min(2_000_000) {
        let got = store.take_ready(8192, 0).await?;
        if got.is_empty() {
            break;
        }
        read += got.len() as u64;
        let ids: Vec<_> = got.iter().map(|r| r.id).collect();
        store.release(&ids).await?;
    }
    println!(
        "read and released {read} records in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    report("after reading");
    Ok(())
}
