//! The core engine's hot path: classification and envelope parsing, the live
//! lane, a scheduler decision, and end-to-end in-process dispatch to two
//! groups against a bare crossbeam channel carrying the same messages.
//!
//! Run: `cargo bench --bench engine`. Compare the ratios within one run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use laneway::ack::AckRef;
use laneway::engine::internals::Scheduler;
use laneway::engine::internals::{LiveItem, LiveLane};
use laneway::engine::{Engine, GroupConfig};
use laneway::message::{Message, classify, now_epoch_ms, parse_envelope, write_envelope};
use laneway::sink::Lane;
use laneway::sink::NullSink;
use laneway::source::simulator::Fleet;
use laneway::source::{Incoming, LanePolicy};

/// The allocator the `laneway` program uses, so the numbers match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Messages per end-to-end iteration.
const N: usize = 200_000;

fn fleet_messages(n: usize) -> Vec<Message> {
    let mut fleet = Fleet::new(3, 100, 1);
    let now = now_epoch_ms();
    (0..n).map(|_| fleet.next_message(now)).collect()
}

fn parsing(c: &mut Criterion) {
    let messages = fleet_messages(1_000);
    let topics: Vec<String> = messages.iter().map(|m| m.topic().to_string()).collect();
    let lines: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| {
            let mut line = Vec::new();
            write_envelope(&mut line, m);
            line.pop();
            line
        })
        .collect();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(topics.len() as u64));
    g.bench_function("classify_topic", |b| {
        b.iter(|| {
            for t in &topics {
                black_box(classify(black_box(t)));
            }
        })
    });
    g.bench_function("parse_envelope", |b| {
        b.iter(|| {
            for l in &lines {
                let _ = black_box(parse_envelope(black_box(l)));
            }
        })
    });
    g.finish();
}

fn live_lane(c: &mut Criterion) {
    let messages = fleet_messages(256);
    let lane = LiveLane::new(10_000);
    let mut g = c.benchmark_group("live_lane");
    g.throughput(Throughput::Elements(messages.len() as u64));
    g.bench_function("push_batch_256_pop_batch", |b| {
        b.iter(|| {
            let items = messages
                .iter()
                .map(|m| LiveItem {
                    message: m.clone(),
                    ack: AckRef::none(),
                })
                .collect();
            black_box(lane.push_batch(items));
            black_box(lane.pop_batch(256));
        })
    });
    g.finish();
}

fn scheduler(c: &mut Criterion) {
    let mut s = Scheduler::new(0.2, None, 2048, 4);
    let now = Instant::now();
    c.bench_function("scheduler/pick_and_took", |b| {
        b.iter(|| {
            let pick = s.pick(black_box(true), black_box(true), 1, now);
            let lane = match pick {
                laneway::engine::internals::Pick::Backlog { .. } => Lane::Backlog,
                _ => Lane::Live,
            };
            s.took(lane, 256);
            black_box(pick)
        })
    });
}

/// Pushes `messages` through an engine with two groups and a null sink;
/// returns the time from first submit to last delivery.
async fn dispatch_once(messages: Vec<Message>) -> Duration {
    let wide = GroupConfig {
        live_capacity: 65_536,
        slots: 4,
        validate_json: false,
        ..GroupConfig::named("all")
    };
    let engine = Engine::builder()
        .group(wide.clone(), NullSink)
        .group(
            GroupConfig::named("all-2").clone_from_knobs(&wide),
            NullSink,
        )
        .build()
        .expect("valid config");
    let ingest = engine.ingest(LanePolicy::Live);
    let monitor = engine.monitor();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(engine.run(async move {
        let _ = stop_rx.await;
    }));
    let expected = 2 * messages.len() as u64;
    let start = Instant::now();
    let mut messages = messages.into_iter();
    loop {
        let batch: Vec<Incoming> = messages.by_ref().take(256).map(Incoming::Message).collect();
        if batch.is_empty() {
            break;
        }
        ingest.submit(batch, AckRef::none()).await;
    }
    while monitor.delivered() < expected {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = start.elapsed();
    let _ = stop_tx.send(());
    let _ = run.await;
    elapsed
}

fn end_to_end(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let messages = fleet_messages(N);
    let mut g = c.benchmark_group("dispatch");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    g.bench_function("engine_two_groups_null_sink", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += runtime.block_on(dispatch_once(messages.clone()));
            }
            total
        })
    });
    g.bench_function("bare_crossbeam_channel", |b| {
        b.iter_batched(
            || messages.clone(),
            |batch| {
                let (tx, rx) = crossbeam_channel::bounded::<Message>(1024);
                let consumer = std::thread::spawn(move || {
                    let mut n = 0usize;
                    while let Ok(m) = rx.recv() {
                        black_box(&m);
                        n += 1;
                    }
                    n
                });
                for m in batch {
                    let _ = tx.send(m);
                }
                drop(tx);
                consumer.join().expect("consumer thread")
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

trait CloneKnobs {
    fn clone_from_knobs(self, other: &GroupConfig) -> GroupConfig;
}

impl CloneKnobs for GroupConfig {
    fn clone_from_knobs(self, other: &GroupConfig) -> GroupConfig {
        GroupConfig {
            name: self.name,
            ..other.clone()
        }
    }
}

criterion_group!(benches, parsing, live_lane, scheduler, end_to_end);
criterion_main!(benches);
