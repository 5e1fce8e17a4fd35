//! Waiting for a condition, never for a guessed time: every wait here is
//! bounded (a guard against a hang, not a timing assertion) and says what
//! it waited for when the bound passes.
//!
//! A condition on an engine is checked each time the engine makes progress
//! (a batch routed, a delivery ended, a backlog write landed), through its
//! [`Monitor`]; a condition nothing signals (a file on disk, a broker's
//! queue) is polled.

use std::time::{Duration, Instant};

use laneway::engine::Monitor;

/// Waits until `condition` holds. It is checked now and then each time the
/// engine makes progress, never on a timer. False if `limit` passes first.
pub async fn wait_until(
    monitor: &Monitor,
    limit: Duration,
    condition: impl FnMut(&Monitor) -> bool,
) -> bool {
    tokio::time::timeout(limit, monitor.until(condition))
        .await
        .is_ok()
}

/// [`wait_until`], failing the test with `what` when `limit` passes first.
pub async fn eventually(
    monitor: &Monitor,
    limit: Duration,
    what: &str,
    condition: impl FnMut(&Monitor) -> bool,
) {
    if !wait_until(monitor, limit, condition).await {
        panic!("timed out after {limit:?} waiting for {what}");
    }
}

/// How often [`poll_until`] and [`poll_until_async`] look.
const POLL: Duration = Duration::from_millis(5);

/// Polls `done` (from a plain thread) until it holds; fails the test with
/// `what` when `limit` passes first.
pub fn poll_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// [`poll_until`] inside a runtime: the wait between looks yields to it.
pub async fn poll_until_async(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}
