//! A child process for the disk backlog's crash test (`tests/backlog_crash.rs`):
//! it appends, hands out and releases records in a loop until it is killed,
//! printing each step only once the store has confirmed it.
//!
//! Usage: `backlog_child DIR FIRST_ID SEED`. Lines on stdout:
//! - `sending A B`: records A..=B are about to be appended;
//! - `acked A B`: the append of A..=B resolved (durable: fsync'd);
//! - `released ID,ID,...`: those records were released (delivered);
//! - `checkpoint`: every release printed before this line is in the ledger.
//!
//! Record N is `records::numbered(N)` (its topic, time and payload bytes
//! follow from N), so the test can check every record it reads back byte
//! for byte.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/records.rs"]
mod records;

use std::time::Duration;

use laneway::backlog::{BacklogRecord, BacklogStore, DiskBacklog, DiskBacklogConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn config() -> DiskBacklogConfig {
    DiskBacklogConfig {
        segment_bytes: 64 * 1024,
        commit_interval: Duration::from_micros(500),
        ledger_interval: Duration::from_millis(30),
        ..DiskBacklogConfig::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: backlog_child DIR FIRST_ID SEED".into());
    }
    let dir = std::path::PathBuf::from(&args[1]);
    let mut next: u64 = args[2].parse()?;
    let mut rng = SmallRng::seed_from_u64(args[3].parse()?);
    let store = DiskBacklog::open(&dir, config())?;
    let mut step = 0u64;
    loop {
        step += 1;
        let n = rng.random_range(1..=64u64);
        let records: Vec<BacklogRecord> = (next..next + n)
            .map(|id| BacklogRecord::fresh(records::numbered(id).message()))
            .collect();
        println!("sending {} {}", next, next + n - 1);
        store.append(&records).await?;
        println!("acked {} {}", next, next + n - 1);
        next += n;
        if rng.random_bool(0.6) {
            let taken = store.take_ready(rng.random_range(1..=80), i64::MAX).await?;
            // Release about two thirds; the rest stay in flight (a delivery
            // that never finished when the process died).
            let released: Vec<_> = taken.iter().filter(|_| rng.random_bool(0.66)).collect();
            let ids: Vec<u64> = released.iter().map(|r| r.id).collect();
            store.release(&ids).await?;
            if !released.is_empty() {
                let names: Vec<&str> = released
                    .iter()
                    .map(|r| r.record.message.message_id())
                    .collect();
                println!("released {}", names.join(","));
            }
        }
        if step.is_multiple_of(7) {
            store.checkpoint().await?;
            println!("checkpoint");
        }
    }
}
