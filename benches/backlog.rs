//! Disk backlog benchmarks: append with group commit (real fsyncs), read
//! (take + release), and recovery of a million records. Results and how to
//! run them: docs/benchmarks.md ("Disk backlog").

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use laneway::backlog::{BacklogRecord, BacklogStore, DiskBacklog, DiskBacklogConfig};
use laneway::message::Message;

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
criterion_main!(benches);
