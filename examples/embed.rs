//! laneway as a library: two consumer groups with Rust handlers, the device
//! simulator as the source, Ctrl-C (or ten seconds) to stop.
//!
//! Run: `cargo run --release --example embed`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use laneway::engine::{Engine, GroupConfig};
use laneway::sink::{Delivery, handler_fn};
use laneway::source::LanePolicy;
use laneway::source::{Simulator, SimulatorConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();

    let alarms_seen = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&alarms_seen);

    let engine = Engine::builder()
        // Every message, handled by a closure; a returned Err is retried
        // from the backlog with backoff, then dead-lettered.
        .group(
            GroupConfig {
                slots: 8,
                ..GroupConfig::named("all")
            },
            handler_fn(|d: Delivery| async move {
                if d.attempts > 0 {
                    tracing::info!(id = d.message.message_id(), attempts = d.attempts, "retry");
                }
                Ok::<(), String>(())
            }),
        )
        // Only events and status changes, with a ceiling on backlog drain.
        .group(
            GroupConfig {
                kinds: vec!["event".into(), "status".into()],
                backlog_rate: Some(2_000.0),
                ..GroupConfig::named("alarms")
            },
            handler_fn(move |d: Delivery| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.fetch_add(1, Ordering::Relaxed);
                    let _ = (d.message.kind(), d.message.device_name());
                    Ok::<(), String>(())
                }
            }),
        )
        .source(
            Simulator::new(SimulatorConfig {
                rate: 5_000.0,
                ..SimulatorConfig::default()
            }),
            LanePolicy::Auto,
        )
        .build()?;

    let summary = engine
        .run(async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        })
        .await;
    println!(
        "delivered {} ({} live, {} backlog); the alarms handler saw {}; live p99 {:.2} ms",
        summary.delivered,
        summary.delivered_live,
        summary.delivered_backlog,
        alarms_seen.load(Ordering::Relaxed),
        summary.live_latency_ms.p99
    );
    Ok(())
}
