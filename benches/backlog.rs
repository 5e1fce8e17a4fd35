//! Disk backlog benchmarks. Results and how to run them: docs/benchmarks.md
//! ("Disk backlog").
//!
//! 1. **append against the disk** (`LANEWAY_BENCH_PART=ratio`): rounds that
//!    interleave laneway's append (4 tasks appending batches of 4,096
//!    300-byte records to one store, each append fsync'd before it
//!    resolves) with the raw anchor, `write` 1 MiB + `fdatasync` of one
//!    growing file in the same directory, the same bytes each. Each round
//!    reports both rates (MB/s) and the CPU time of this process per MB;
//!    the summary gives median and range, and the ratio of the two rates
//!    within each round. `LANEWAY_BENCH_MB` (default 512) sizes a round,
//!    `LANEWAY_BENCH_ROUNDS` (default 7) counts them.
//! 2. **criterion** (`LANEWAY_BENCH_PART=criterion`): append with group
//!    commit (real fsyncs), read (take + release), and recovery of a
//!    million records.
//!
//! Without `LANEWAY_BENCH_PART` both run, part 1 first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/measure.rs"]
#[allow(dead_code)] // the child-process rounds serve the consumer benches
mod measure;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use laneway::backlog::{BacklogRecord, BacklogStore, DiskBacklog, DiskBacklogConfig};
use laneway::message::Message;
use measure::{cpu_time, env_or, median_and_range};

/// 300 bytes on disk per record: 16 frame header + 40 fixed body fields +
/// 32 topic + 8 message id + 204 payload.
const PAYLOAD: usize = 204;
const BATCH: usize = 4096;
const WRITERS: usize = 4;

fn records(n: usize, from: u64) -> Vec<BacklogRecord> {
    let payload = vec![b'7'; PAYLOAD];
    (0..n as u64)
        .map(|i| {
            BacklogRecord::fresh(
                Message::new(
                    "/pk00001/dev00001/thing/lifecycle",
                    format!("{:08}", (from + i) % 100_000_000),
                    0,
                    payload.clone(),
                )
                .expect("a valid message"),
            )
        })
        .collect()
}

fn open(dir: &Path) -> DiskBacklog {
    DiskBacklog::open(dir, DiskBacklogConfig::default()).expect("open the backlog")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn append(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temp dir");
    let store = Arc::new(open(dir.path()));
    let batch = Arc::new(records(BATCH, 0));
    let mut g = c.benchmark_group("disk_backlog");
    g.sample_size(10).measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Elements((BATCH * WRITERS) as u64));
    // One iteration: WRITERS concurrent appends of BATCH records, as the
    // engine's writer and delivery tasks do; the store group-commits them.
    g.bench_function("append_300B_group_commit", |b| {
        b.to_async(&rt).iter(|| {
            let store = Arc::clone(&store);
            let batch = Arc::clone(&batch);
            async move {
                let tasks: Vec<_> = (0..WRITERS)
                    .map(|_| {
                        let store = Arc::clone(&store);
                        let batch = Arc::clone(&batch);
                        tokio::spawn(async move { store.append(&batch).await })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task").expect("append");
                }
            }
        })
    });
    g.finish();
    drop(store);
}

fn read(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temp dir");
    let store = Arc::new(open(dir.path()));
    let chunk = records(BATCH, 0);
    let mut g = c.benchmark_group("disk_backlog");
    g.sample_size(10).measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("read_take_release_300B", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = Arc::clone(&store);
            let chunk = chunk.clone();
            async move {
                let want = iters as usize * BATCH;
                let mut have = (store.depth().records - store.depth().in_flight) as usize;
                while have < want {
                    store.append(&chunk).await.expect("append");
                    have += BATCH;
                }
                let started = Instant::now();
                let mut got = 0;
                while got < want {
                    let taken = store.take_ready(BATCH, 0).await.expect("take");
                    got += taken.len();
                    let ids: Vec<_> = taken.iter().map(|r| r.id).collect();
                    store.release(&ids).await.expect("release");
                }
                started.elapsed()
            }
        })
    });
    g.finish();
}

fn recovery(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temp dir");
    rt.block_on(async {
        let store = open(dir.path());
        for i in 0..(1_000_000 / BATCH + 1) {
            store
                .append(&records(BATCH, (i * BATCH) as u64))
                .await
                .expect("append");
        }
        store.close().await.expect("close");
    });
    let mut g = c.benchmark_group("disk_backlog");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(1_000_000));
    g.bench_function("recover_1M_records", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let store = open(dir.path());
                total += started.elapsed();
                assert!(store.recovery().records >= 1_000_000);
                drop(store);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, append, read, recovery);

fn main() {
    let part = std::env::var("LANEWAY_BENCH_PART").unwrap_or_default();
    if part.is_empty() || part == "ratio" {
        append_against_raw();
    }
    if part.is_empty() || part == "criterion" {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}

// ---------------------------------------------------------------------------
// Part 1: append against raw write + fdatasync.

/// Bytes one record takes on disk (see [`PAYLOAD`]).
const RECORD_BYTES: u64 = 300;

#[derive(Clone, Copy)]
struct Round {
    /// MB/s (10^6 bytes).
    rate: f64,
    /// CPU ms of this process per MB.
    cpu_ms_per_mb: f64,
}

fn measure(bytes: u64, run: impl FnOnce()) -> Round {
    let (start, cpu) = (Instant::now(), cpu_time());
    run();
    let secs = start.elapsed().as_secs_f64();
    let mb = bytes as f64 / 1e6;
    Round {
        rate: mb / secs,
        cpu_ms_per_mb: (cpu_time() - cpu).as_secs_f64() * 1e3 / mb,
    }
}

/// The anchor: `write` 1 MiB + `fdatasync`, over and over, to one growing
/// file in `dir`, until `bytes` are written.
fn raw_round(dir: &Path, bytes: u64) -> Round {
    let path = dir.join("raw.dat");
    let chunk = vec![b'7'; 1 << 20];
    let mut file = std::fs::File::create(&path).unwrap();
    let round = measure(bytes, || {
        let mut written = 0;
        while written < bytes {
            file.write_all(&chunk).unwrap();
            file.sync_data().unwrap();
            written += chunk.len() as u64;
        }
    });
    drop(file);
    std::fs::remove_file(&path).unwrap();
    round
}

/// laneway: WRITERS tasks appending BATCH records at a time to one store
/// in `dir` until `bytes` of records are stored.
fn laneway_round(rt: &tokio::runtime::Runtime, dir: &Path, bytes: u64) -> Round {
    let store_dir = dir.join("backlog");
    let store = Arc::new(open(&store_dir));
    let batch = Arc::new(records(BATCH, 0));
    let batches = bytes.div_ceil(RECORD_BYTES * BATCH as u64);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let round = measure(batches * BATCH as u64 * RECORD_BYTES, || {
        rt.block_on(async {
            let tasks: Vec<_> = (0..WRITERS)
                .map(|_| {
                    let (store, batch, next) =
                        (Arc::clone(&store), Arc::clone(&batch), Arc::clone(&next));
                    tokio::spawn(async move {
                        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < batches {
                            store.append(&batch).await.expect("append");
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
        })
    });
    drop(store);
    std::fs::remove_dir_all(&store_dir).unwrap();
    round
}

fn append_against_raw() {
    let mb: u64 = env_or("LANEWAY_BENCH_MB", 512);
    let rounds: usize = env_or("LANEWAY_BENCH_ROUNDS", 7);
    let bytes = mb * 1_000_000;
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temp dir");
    println!(
        "append against raw write 1 MiB + fdatasync: {rounds} rounds of {mb} MB each, interleaved, in {}",
        dir.path().display()
    );
    println!("round | raw MB/s | raw CPU ms/MB | laneway MB/s | laneway CPU ms/MB | ratio");
    let (mut raw, mut lw, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        // Alternate which goes first, so neither always meets the disk
        // still busy with the other's writeback.
        let (r, l) = if i % 2 == 0 {
            let r = raw_round(dir.path(), bytes);
            (r, laneway_round(&rt, dir.path(), bytes))
        } else {
            let l = laneway_round(&rt, dir.path(), bytes);
            (raw_round(dir.path(), bytes), l)
        };
        println!(
            "{:>5} | {:>8.0} | {:>13.2} | {:>12.0} | {:>17.2} | {:.2}",
            i + 1,
            r.rate,
            r.cpu_ms_per_mb,
            l.rate,
            l.cpu_ms_per_mb,
            l.rate / r.rate
        );
        raw.push(r);
        lw.push(l);
        ratio.push(l.rate / r.rate);
    }
    let summary = |name: &str, rounds: &[Round]| {
        let (rate, lo, hi) =
            median_and_range(&mut rounds.iter().map(|r| r.rate).collect::<Vec<_>>());
        let (cpu, clo, chi) =
            median_and_range(&mut rounds.iter().map(|r| r.cpu_ms_per_mb).collect::<Vec<_>>());
        println!(
            "{name}: {rate:.0} MB/s ({lo:.0}–{hi:.0}), CPU {cpu:.2} ms/MB ({clo:.2}–{chi:.2})"
        );
    };
    summary("raw write 1 MiB + fdatasync", &raw);
    summary(
        &format!("laneway append ({WRITERS} tasks × {BATCH} records of {RECORD_BYTES} B)"),
        &lw,
    );
    let (m, lo, hi) = median_and_range(&mut ratio);
    println!("ratio laneway / raw, per round: median {m:.2} ({lo:.2}–{hi:.2})");
}
