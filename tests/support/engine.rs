//! Engines in tests: a sink that records what it is given, and an engine
//! run in the background (wait on it with [`super::wait`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use laneway::engine::{Engine, Monitor, RunSummary};
use laneway::sink::Lane;
use laneway::sink::{BatchError, Delivery, DeliveryError, Sink};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::records::Record;

/// One delivery attempt as a sink saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    /// The whole message as the sink got it.
    pub record: Record,
    pub lane: Lane,
    pub attempts: u32,
    pub at: Instant,
    pub ok: bool,
    /// The delivery's `superseded` flag.
    pub superseded: bool,
}

/// A sink that records every attempt, optionally fails some, and can be
/// gated shut (deliveries wait until the gate opens).
#[derive(Clone)]
pub struct RecordingSink {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    fail: Arc<dyn Fn(&Delivery) -> bool + Send + Sync>,
    /// Nanoseconds spent per message, shared by every clone so that a
    /// test can speed the handler up once what it measures is done.
    cost_nanos: Arc<AtomicU64>,
    /// Whether the gate is open; deliveries wait on it, never poll it.
    gate_open: Arc<watch::Sender<bool>>,
    /// How many attempts are recorded in `seen`, for [`RecordingSink::recorded`].
    recorded: Arc<watch::Sender<usize>>,
    in_flight: Arc<[AtomicUsize; 2]>,
    pub max_in_flight: Arc<[AtomicUsize; 2]>,
}

impl RecordingSink {
    pub fn new() -> RecordingSink {
        RecordingSink {
            seen: Arc::default(),
            fail: Arc::new(|_| false),
            cost_nanos: Arc::default(),
            gate_open: Arc::new(watch::Sender::new(true)),
            recorded: Arc::new(watch::Sender::new(0)),
            in_flight: Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]),
            max_in_flight: Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]),
        }
    }

    /// Fails the deliveries for which `fail` returns true.
    pub fn failing(mut self, fail: impl Fn(&Delivery) -> bool + Send + Sync + 'static) -> Self {
        self.fail = Arc::new(fail);
        self
    }

    /// Spends `cost` per message (one sleep per batch).
    pub fn with_cost(self, cost: Duration) -> Self {
        self.set_cost(cost);
        self
    }

    /// Changes the cost per message for the deliveries that start from now
    /// on, in this sink and every clone of it.
    pub fn set_cost(&self, cost: Duration) {
        let nanos = u64::try_from(cost.as_nanos()).unwrap_or(u64::MAX);
        self.cost_nanos.store(nanos, Ordering::SeqCst);
    }

    /// Starts with the gate shut: deliveries wait for [`RecordingSink::open`].
    pub fn gated(self) -> Self {
        self.gate_open.send_replace(false);
        self
    }

    /// Opens the gate: every waiting delivery goes on at once.
    pub fn open(&self) {
        self.gate_open.send_replace(true);
    }

    /// Resolves once at least `n` attempts (failed ones included) are
    /// recorded: an event to wait on, not a condition to poll.
    pub async fn recorded(&self, n: usize) {
        let mut rx = self.recorded.subscribe();
        // The sender lives in `self`, so the channel cannot close.
        let _ = rx.wait_for(|&count| count >= n).await;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    /// The messages of successful deliveries, one per copy.
    pub fn delivered_records(&self) -> Vec<Record> {
        self.seen
            .lock()
            .iter()
            .filter(|s| s.ok)
            .map(|s| s.record.clone())
            .collect()
    }

    /// The messages of every attempt, failed ones included.
    pub fn attempted_records(&self) -> Vec<Record> {
        self.seen.lock().iter().map(|s| s.record.clone()).collect()
    }

    /// Successful deliveries per message id.
    pub fn delivered_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for s in self.seen.lock().iter().filter(|s| s.ok) {
            *counts.entry(s.id.clone()).or_insert(0) += 1;
        }
        counts
    }
}

fn lane_index(lane: Lane) -> usize {
    match lane {
        Lane::Live => 0,
        Lane::Backlog => 1,
    }
}

#[async_trait]
impl Sink for RecordingSink {
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        // The sender lives in `self`, so the channel cannot close.
        let _ = self.gate_open.subscribe().wait_for(|&open| open).await;
        let lane = lane_index(batch[0].lane);
        let now_in_flight = self.in_flight[lane].fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight[lane].fetch_max(now_in_flight, Ordering::SeqCst);
        let cost = Duration::from_nanos(self.cost_nanos.load(Ordering::SeqCst));
        if !cost.is_zero() {
            tokio::time::sleep(cost * batch.len() as u32).await;
        }
        let now = Instant::now();
        let mut failed = Vec::new();
        {
            let mut seen = self.seen.lock();
            for (i, d) in batch.iter().enumerate() {
                let ok = !(self.fail)(d);
                if !ok {
                    failed.push(i);
                }
                seen.push(Seen {
                    id: d.message.message_id().to_string(),
                    record: Record::of(&d.message),
                    lane: d.lane,
                    attempts: d.attempts,
                    at: now,
                    ok,
                    superseded: d.superseded,
                });
            }
            self.recorded.send_replace(seen.len());
        }
        self.in_flight[lane].fetch_sub(1, Ordering::SeqCst);
        if failed.is_empty() {
            Ok(())
        } else {
            Err(BatchError::some(
                failed,
                DeliveryError::RetryLater("recording sink was told to fail".into()),
            ))
        }
    }
}

/// Runs `engine` in the background; returns its monitor and a function that
/// stops it and yields the summary.
pub fn spawn_engine(
    engine: Engine,
) -> (
    Monitor,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<RunSummary>,
) {
    let monitor = engine.monitor();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(engine.run(async move {
        let _ = stop_rx.await;
    }));
    (monitor, stop_tx, task)
}
