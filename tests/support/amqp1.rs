//! The turn that every test driving AMQP 1.0 clients inside the test
//! process takes (laneway's AMQP 1.0 source, the publisher of
//! [`super::broker::publish1`], an in-process peer).
//!
//! Run side by side in one process on two cores, such tests now and then
//! left a client's session task spinning (fe2o3-amqp's session event loop)
//! and what waited on it stopped; taking turns, they have not. The tests
//! are one binary (tests/main.rs), so the turn is the process's, not a
//! file's. See docs/amqp1.md, "Known".

use tokio::sync::{Mutex, MutexGuard};

static TURN: Mutex<()> = Mutex::const_new(());

/// Waits for the turn; it is held until the guard is dropped.
pub async fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().await
}
