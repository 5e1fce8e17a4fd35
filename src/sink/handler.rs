//! Rust handlers for library users, and the simulated handler of the
//! embedded default and the load scenarios.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{BatchError, Delivery, DeliveryError, Sink};

/// A sink made from an async closure called once per message, in batch order.
///
/// Built with [`handler_fn`]. A message whose closure returns `Err` fails
/// alone: the rest of the batch still counts as delivered.
pub struct HandlerFn<F> {
    f: F,
}

/// Wraps an async closure `Fn(Delivery) -> Result<(), E>` as a sink, where
/// `E` is a [`DeliveryError`] (to say "permanent" or "push limited") or
/// anything that converts into one (a `String` means "retry later").
///
/// ```
/// use laneway::sink::{handler_fn, Delivery, DeliveryError};
/// let sink = handler_fn(|d: Delivery| async move {
///     if d.message.payload().is_empty() {
///         return Err(DeliveryError::Permanent("empty payload".into()));
///     }
///     println!("{} {}", d.message.kind(), d.message.message_id());
///     Ok(())
/// });
/// # let _ = sink;
/// ```
pub fn handler_fn<F, Fut, E>(f: F) -> HandlerFn<F>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Into<DeliveryError>,
{
    HandlerFn { f }
}

#[async_trait]
impl<F, Fut, E> Sink for HandlerFn<F>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Into<DeliveryError>,
{
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        let mut failed = Vec::new();
        for (i, d) in batch.iter().enumerate() {
            if let Err(e) = (self.f)(d.clone()).await {
                failed.push((i, e.into()));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(BatchError::Some(failed))
        }
    }
}

/// A stand-in for business logic: spends a fixed time per message (sleeping,
/// as an I/O-bound handler would) and can be paused to simulate an outage.
///
/// The cost is paid per batch (`cost × batch length`, one sleep), so a slow
/// handler does not also cost timer wake-ups per message. With
/// [`SimulatedHandler::with_servers`] it models a service of `n` servers
/// exactly: each batch runs on the earliest-free server's own clock, so the
/// timer's millisecond rounding does not add up and the capacity is
/// `n / cost` messages per second, as the load scenarios assume.
#[derive(Debug, Clone)]
pub struct SimulatedHandler {
    cost_per_message: Duration,
    down: Arc<AtomicBool>,
    servers: Option<Arc<parking_lot::Mutex<Vec<tokio::time::Instant>>>>,
}

/// How far a server's clock may lag behind real time and still count (so a
/// late wake-up is made up by the next batch, but idle time is not banked).
const CATCH_UP: Duration = Duration::from_millis(2);

impl SimulatedHandler {
    /// A handler that spends `cost_per_message` on each message.
    pub fn new(cost_per_message: Duration) -> SimulatedHandler {
        SimulatedHandler {
            cost_per_message,
            down: Arc::new(AtomicBool::new(false)),
            servers: None,
        }
    }

    /// A handler of `servers` servers, each spending `cost_per_message` per message.
    pub fn with_servers(cost_per_message: Duration, servers: usize) -> SimulatedHandler {
        let now = tokio::time::Instant::now();
        SimulatedHandler {
            servers: Some(Arc::new(parking_lot::Mutex::new(vec![now; servers.max(1)]))),
            ..SimulatedHandler::new(cost_per_message)
        }
    }

    /// A switch that takes the handler down (`true`: every delivery fails
    /// after a short wait, as a dead downstream would) and brings it back.
    pub fn outage_switch(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.down)
    }
}

#[async_trait]
impl Sink for SimulatedHandler {
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        if self.down.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            return Err(
                DeliveryError::RetryLater("handler is down (simulated outage)".into()).into(),
            );
        }
        let cost = self.cost_per_message * batch.len() as u32;
        if cost.is_zero() {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        let deadline = match &self.servers {
            None => now + cost,
            Some(servers) => {
                let mut servers = servers.lock();
                let earliest = servers.iter_mut().min();
                match earliest {
                    Some(free_at) => {
                        let floor = now.checked_sub(CATCH_UP).unwrap_or(now);
                        *free_at = (*free_at).max(floor) + cost;
                        *free_at
                    }
                    None => now + cost,
                }
            }
        };
        tokio::time::sleep_until(deadline).await;
        Ok(())
    }
}
