//! The baseline: one FIFO lane, as a naive consumer has. Messages are
//! handled strictly in arrival order by `slots` workers; a failed batch is
//! retried in place (head-of-line) after a pause, as a consumer that does
//! not ack would see it redelivered.
//!
//! Invariant: nothing is dropped and nothing overtakes; the queue is
//! unbounded, like a broker queue holding what the consumer has not taken.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use laneway::message::Message;
use laneway::sink::Lane;
use laneway::sink::{Delivery, Sink};

/// A FIFO queue with its workers.
pub struct FifoConsumer {
    queue: Mutex<VecDeque<Message>>,
    arrived: Notify,
    stopped: AtomicBool,
}

impl FifoConsumer {
    /// An empty consumer.
    pub fn new() -> Arc<FifoConsumer> {
        Arc::new(FifoConsumer {
            queue: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
            stopped: AtomicBool::new(false),
        })
    }

    /// Appends messages at the tail.
    pub fn push(&self, messages: impl IntoIterator<Item = Message>) {
        self.queue.lock().extend(messages);
        self.arrived.notify_waiters();
    }

    /// Messages waiting.
    pub fn depth(&self) -> u64 {
        self.queue.lock().len() as u64
    }

    /// Stops the workers after their current batch.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.arrived.notify_waiters();
    }

    /// Starts `slots` workers delivering batches of up to `batch` to `sink`.
    pub fn spawn_workers(
        self: &Arc<Self>,
        slots: usize,
        batch: usize,
        retry_pause: Duration,
        sink: Arc<dyn Sink>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..slots.max(1))
            .map(|_| {
                let me = Arc::clone(self);
                let sink = Arc::clone(&sink);
                tokio::spawn(async move { me.work(batch.max(1), retry_pause, sink).await })
            })
            .collect()
    }

    async fn work(&self, batch: usize, retry_pause: Duration, sink: Arc<dyn Sink>) {
        while !self.stopped.load(Ordering::SeqCst) {
            let notified = self.arrived.notified();
            let taken: Vec<Delivery> = {
                let mut q = self.queue.lock();
                let n = q.len().min(batch);
                q.drain(..n)
                    .map(|message| Delivery {
                        message,
                        attempts: 0,
                        lane: Lane::Live,
                        superseded: false,
                    })
                    .collect()
            };
            if taken.is_empty() {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                continue;
            }
            let mut batch = taken;
            while sink.deliver(&batch).await.is_err() {
                if self.stopped.load(Ordering::SeqCst) {
                    return;
                }
                tokio::time::sleep(retry_pause).await;
                batch.iter_mut().for_each(|d| d.attempts += 1);
            }
        }
    }
}
