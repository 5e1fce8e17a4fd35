//! A null sink that counts what it is handed and says, once each, when the
//! first message arrives, when the first live one does and when `n` have,
//! so that a benchmark waits for its run's end without polling.
//!
//! Why not poll: a task polling the engine's counters on a timer re-arms
//! the runtime's timer at each tick, which wakes the worker parked on the
//! driver and contends for the timer's lock. In the Kafka bench's laneway
//! child (200,000 records, a 500 µs tick) those wake-ups were 1,287 of the
//! 1,853 its workers had, by `perf record -e sched:sched_wakeup`: a cost of
//! the harness, counted as laneway's. `Monitor::until` is no better for
//! this: it wakes the waiter at every delivered batch.
//!
//! Invariant: each signal fires once, from the delivery that crosses its
//! mark; the count is of messages handed to the sink, which for a sink that
//! never fails equals the engine's `delivered`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use laneway::sink::{BatchError, Delivery, Lane, Sink};
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// The receiving ends of a [`CountingSink`]'s signals.
pub struct Marks {
    /// Fires at the first delivery.
    pub first: oneshot::Receiver<()>,
    /// Fires at the first delivery of a live message.
    pub first_live: oneshot::Receiver<()>,
    /// Fires when `n` messages have been delivered.
    pub all: oneshot::Receiver<()>,
}

/// See the module documentation.
pub struct CountingSink {
    n: u64,
    delivered: AtomicU64,
    live_seen: AtomicBool,
    first: Mutex<Option<oneshot::Sender<()>>>,
    first_live: Mutex<Option<oneshot::Sender<()>>>,
    all: Mutex<Option<oneshot::Sender<()>>>,
}

impl CountingSink {
    /// A sink whose `all` mark fires at the `n`-th message.
    pub fn new(n: u64) -> (CountingSink, Marks) {
        let (first_tx, first) = oneshot::channel();
        let (live_tx, first_live) = oneshot::channel();
        let (all_tx, all) = oneshot::channel();
        let sink = CountingSink {
            n,
            delivered: AtomicU64::new(0),
            live_seen: AtomicBool::new(false),
            first: Mutex::new(Some(first_tx)),
            first_live: Mutex::new(Some(live_tx)),
            all: Mutex::new(Some(all_tx)),
        };
        (
            sink,
            Marks {
                first,
                first_live,
                all,
            },
        )
    }

    fn fire(signal: &Mutex<Option<oneshot::Sender<()>>>) {
        if let Some(tx) = signal.lock().take() {
            let _ = tx.send(());
        }
    }
}

#[async_trait]
impl Sink for CountingSink {
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        let len = batch.len() as u64;
        let before = self.delivered.fetch_add(len, Ordering::AcqRel);
        if before == 0 && len > 0 {
            Self::fire(&self.first);
        }
        if !self.live_seen.load(Ordering::Relaxed) && batch.iter().any(|d| d.lane == Lane::Live) {
            self.live_seen.store(true, Ordering::Relaxed);
            Self::fire(&self.first_live);
        }
        if before < self.n && before + len >= self.n {
            Self::fire(&self.all);
        }
        Ok(())
    }
}
