//! In-process dispatch throughput: pre-generated simulator messages through
//! an engine with two groups and null sinks, as fast as it goes.
//!
//! Run: `cargo run --release --example dispatch -- [messages] [bare]`
//! (default 1,000,000). With `bare`, the same messages go instead through
//! one bounded crossbeam channel to a thread that drops them: the anchor
//! the engine's dispatch is compared with. Messages are moved, not cloned,
//! so both free each message once delivered, as a real run does.
//! Useful under `valgrind --tool=callgrind` to count instructions per
//! message: run two sizes and divide the difference (docs/benchmarks.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use laneway::ack::AckRef;
use laneway::engine::{Engine, GroupConfig};
use laneway::message::now_epoch_ms;
use laneway::sink::NullSink;
use laneway::source::simulator::Fleet;
use laneway::source::{Incoming, LanePolicy};

/// The allocator the `laneway` program uses, so the numbers match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let bare = std::env::args().nth(2).is_some_and(|a| a == "bare");
    let mut fleet = Fleet::new(3, 100, 1);
    let now = now_epoch_ms();
    let messages: Vec<_> = (0..n).map(|_| fleet.next_message(now)).collect();
    if bare {
        let start = Instant::now();
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let consumer = std::thread::spawn(move || rx.iter().count());
        for m in messages {
            tx.send(m)?;
        }
        drop(tx);
        let received = consumer.join().expect("the consumer thread");
        let elapsed = start.elapsed();
        println!(
            "{received} messages through a bare channel in {:.3}s: {:.2}M messages/s",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64() / 1e6
        );
        return Ok(());
    }
    let group = |name: &str| GroupConfig {
        live_capacity: 65_536,
        validate_json: false,
        ..GroupConfig::named(name)
    };
    let engine = Engine::builder()
        .group(group("a"), NullSink)
        .group(group("b"), NullSink)
        .build()?;
    let ingest = engine.ingest(LanePolicy::Live);
    let monitor = engine.monitor();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(engine.run(async move {
        let _ = stop_rx.await;
    }));
    let start = Instant::now();
    let mut it = messages.into_iter();
    loop {
        let batch: Vec<Incoming> = it.by_ref().take(256).map(Incoming::Message).collect();
        if batch.is_empty() {
            break;
        }
        ingest.submit(batch, AckRef::none()).await;
    }
    while monitor.delivered() < 2 * n as u64 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = start.elapsed();
    let _ = stop_tx.send(());
    let summary = run.await?;
    println!(
        "{n} messages × 2 groups in {:.3}s: {:.2}M messages/s ({} backlog deliveries)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64() / 1e6,
        summary.delivered_backlog
    );
    Ok(())
}
