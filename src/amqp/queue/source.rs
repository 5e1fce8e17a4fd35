//! The queue source: consumes one or more queues with manual acks.
//!
//! Each queue gets its own connection, channel, `basic_qos` prefetch and
//! consumer, and its own [`AckTracker`]. Deliveries are handed to the engine
//! in batches (what the client has buffered, up to `batch`); each batch is
//! registered with the tracker and remembered with its last delivery tag.
//! An ack task follows the tracker's watermark and sends one
//! `basic_ack(tag, multiple = true)` per advance.
//!
//! Invariants:
//! - an ack covers only delivery tags whose every message the engine has
//!   finished with (delivered, durably in a backlog, or durably a dead
//!   letter): `multiple` is only ever used up to the contiguous watermark;
//! - acks on one channel go out in increasing tag order, from one task at a
//!   time (an ack for an unknown or repeated tag would close the channel);
//! - when the connection or channel drops, or a batch is abandoned (the
//!   tracker is stuck), the session ends: its tracker is dropped, unacked
//!   messages return to the queue and come back as redeliveries through a
//!   new session with a new tracker. Duplicates are bounded by the prefetch
//!   window, since that is all the broker had handed out unacked;
//! - on shutdown the consumer is cancelled first, nothing more is submitted,
//!   the last acks are sent once the engine has drained, and the channel and
//!   connection are closed (anything unacked returns to the queue).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::config::AmqpSourceConfig;
use crate::ack::{AckRef, AckTracker};
use crate::amqp::core::batch;
use crate::amqp::core::connect::{AmqpError, close_within, connect_attempt};
use crate::amqp::core::declare::Declaration;
use crate::amqp::core::headers;
use crate::backoff::Backoff;
use crate::broker_url::BrokerUrl;
use crate::knob::KnobError;
use crate::source::sessions::{self, ConnectFailure, Driver, Sessions, run_sessions};
use crate::source::{
    Incoming, Ingest, LanePolicy, Positions, Routed, first_failure, sleep_until_opt,
};
use crate::source::{Source, SourceContext, SourceError, SourceHealth};
use tokio_util::sync::CancellationToken;

/// How often the ack task looks at the watermark even without a wake-up.
const ACK_TICK: Duration = Duration::from_millis(20);

/// Consumes AMQP queues into the engine; see the module docs.
pub struct AmqpSource {
    config: AmqpSourceConfig,
    url: BrokerUrl,
}

impl AmqpSource {
    /// A source for this configuration (checked, URL resolved; nothing connects yet).
    pub fn new(config: AmqpSourceConfig) -> Result<AmqpSource, KnobError> {
        let url = config.validate()?;
        url.warn_if_plaintext();
        Ok(AmqpSource { config, url })
    }

    /// The lane policy its messages take.
    pub fn lane(&self) -> LanePolicy {
        self.config.lane
    }
}

#[async_trait]
impl Source for AmqpSource {
    fn connects(&self) -> bool {
        true
    }

    fn name(&self) -> String {
        format!("amqp {} queue {}", self.url, self.config.queues.join(","))
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let config = Arc::new(self.config);
        let mut tasks = tokio::task::JoinSet::new();
        for queue in config.queues.clone() {
            let consumer = QueueConsumer {
                config: Arc::clone(&config),
                url: self.url.clone(),
                queue,
                ingest: ctx.ingest.clone(),
                stop: ctx.stop.clone(),
                drained: ctx.drained.clone(),
                health: ctx.health.clone(),
            };
            tasks.spawn(consumer.run());
        }
        first_failure(
            tasks,
            &format!("amqp {}", self.url),
            "a queue consumer task",
        )
        .await
    }
}

/// How a session on one connection ended.
enum SessionEnd {
    /// Shut down gracefully on `stop`.
    Stopped,
    /// Finished after `idle_exit` with everything acknowledged.
    Idle,
    /// The connection or channel dropped, or the tracker got stuck: start over.
    Lost(String),
    /// A configuration problem the broker reported (missing queue, mismatched
    /// arguments, refused access): retrying cannot fix it.
    Fatal(String),
}

/// The ack state shared by a session's consume loop and its ack task.
struct Acks {
    /// The tracker of `tags`, to wait on without taking the lock.
    tracker: Arc<AckTracker>,
    /// Where acknowledged messages are counted.
    health: SourceHealth,
    /// Per registered batch, its last delivery tag; and the last tag
    /// acknowledged.
    tags: Mutex<(Positions<u64>, u64)>,
    /// Serialises flushes, so acks go out in increasing tag order.
    flushing: tokio::sync::Mutex<()>,
    /// A flush that is not forced waits until this many deliveries are done
    /// (fewer ack frames: less work for the broker), while a periodic forced
    /// flush bounds how long a done delivery waits for its ack.
    min_batch: u64,
}

impl Acks {
    fn new(prefetch: u16, health: SourceHealth) -> Arc<Acks> {
        health.acknowledges();
        let tags = Positions::new();
        Arc::new(Acks {
            health,
            tracker: Arc::clone(tags.tracker()),
            tags: Mutex::new((tags, 0)),
            flushing: tokio::sync::Mutex::new(()),
            // A quarter of the window: the broker keeps three quarters flowing.
            min_batch: u64::from(prefetch / 4).max(1),
        })
    }

    /// Registers a batch ending at `last_tag`; the reference goes to the engine.
    fn register(&self, last_tag: u64) -> AckRef {
        self.tags.lock().0.register(last_tag)
    }

    /// Acks everything below the watermark with one `multiple` ack; unless
    /// `force`, only once at least `min_batch` deliveries are waiting for it.
    async fn flush(&self, channel: &Channel, force: bool) -> Result<(), lapin::Error> {
        let _one_at_a_time = self.flushing.lock().await;
        let last = {
            let mut state = self.tags.lock();
            let (tags, acked) = &mut *state;
            let Some(&tag) = tags.last_done() else {
                return Ok(());
            };
            if !force && tag.saturating_sub(*acked) < self.min_batch {
                return Ok(());
            }
            // The watermark may have moved on since: ack up to where it is.
            let tag = tags.take_last_done().unwrap_or(tag);
            let count = tag.saturating_sub(*acked);
            *acked = tag;
            (tag, count)
        };
        let (last, count) = last;
        channel
            .basic_ack(last, BasicAckOptions { multiple: true })
            .await?;
        // Delivery tags count the channel's deliveries one by one.
        self.health.acked(count);
        Ok(())
    }

    /// Whether every registered batch is acknowledged.
    fn all_acked(&self) -> bool {
        self.tracker.outstanding() == 0 && self.tags.lock().0.is_empty()
    }
}

/// One queue's consumer, reconnecting until stopped.
struct QueueConsumer {
    config: Arc<AmqpSourceConfig>,
    url: BrokerUrl,
    queue: String,
    ingest: Ingest,
    stop: CancellationToken,
    drained: CancellationToken,
    health: SourceHealth,
}

impl QueueConsumer {
    fn origin(&self) -> String {
        format!("amqp {} queue {}", self.url, self.queue)
    }

    async fn run(mut self) -> Result<(), SourceError> {
        let mut backoff = Backoff::new(self.config.reconnect_initial, self.config.reconnect_max);
        let (who, stop, health) = (self.origin(), self.stop.clone(), self.health.clone());
        let driver = Driver {
            who: &who,
            after: "unacknowledged messages will be redelivered",
            stop: &stop,
            health: &health,
        };
        run_sessions(&mut self, &mut backoff, driver).await
    }

    /// Declares what is configured and starts consuming.
    async fn setup(
        &self,
        conn: &Connection,
        session: u64,
    ) -> Result<(Channel, lapin::Consumer, ShortString), SessionEnd> {
        let ended = |error: AmqpError| {
            if error.is_fatal() {
                // The origin (broker and queue) is added by the caller.
                SessionEnd::Fatal(error.message)
            } else {
                SessionEnd::Lost(error.to_string())
            }
        };
        let lost =
            |what: &str, e: lapin::Error| ended(AmqpError::classify(&self.url, what, &e, false));
        let c = &self.config;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| lost("opening a channel", e))?;
        channel
            .basic_qos(c.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| lost("setting the prefetch", e))?;
        Declaration {
            queue: &self.queue,
            arguments: FieldTable::default(),
            declare: c.declare,
            exchange: c.exchange.as_deref(),
            binding_key: &c.binding_key,
        }
        .apply(&channel, &self.url)
        .await
        .map_err(ended)?;
        let queue = ShortString::from(self.queue.as_str());
        let tag = ShortString::try_new(format!(
            "laneway-{}-{}-{session}",
            std::process::id(),
            crate::message::now_epoch_ms()
        ))
        .unwrap_or_default();
        let consumer = channel
            .basic_consume(
                queue,
                tag.clone(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| lost(&format!("consuming queue {}", self.queue), e))?;
        Ok((channel, consumer, tag))
    }

    async fn session(&self, conn: &Connection, session: u64) -> SessionEnd {
        let (channel, mut consumer, tag) = match self.setup(conn, session).await {
            Ok(parts) => parts,
            Err(end) => return end,
        };
        tracing::info!(queue = %self.queue, broker = %self.url, prefetch = self.config.prefetch, "consuming");
        let acks = Acks::new(self.config.prefetch, self.health.clone());
        let end_acks = CancellationToken::new();
        let acks_end = end_acks.clone();
        let fail_acks = CancellationToken::new();
        let acks_failed = fail_acks.clone();
        let ack_task = tokio::spawn(ack_loop(
            Arc::clone(&acks),
            channel.clone(),
            acks_end,
            fail_acks,
        ));
        let end = self.consume(&mut consumer, &acks, &acks_failed).await;
        let end = match end {
            SessionEnd::Stopped | SessionEnd::Idle => {
                // Stop taking deliveries; what the client buffered but never
                // submitted is unacked and returns to the queue at close.
                if let Err(e) = channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await
                {
                    tracing::warn!(queue = %self.queue, error = %AmqpError::new(&self.url, "cancelling", e), "cancel failed");
                }
                match end {
                    SessionEnd::Idle => self.settle_idle(&acks, &acks_failed).await,
                    _ => {
                        self.drained.cancelled().await;
                        SessionEnd::Stopped
                    }
                }
            }
            other => other,
        };
        end_acks.cancel();
        let _ = ack_task.await;
        if matches!(end, SessionEnd::Stopped | SessionEnd::Idle) {
            if let Err(e) = acks.flush(&channel, true).await {
                tracing::warn!(queue = %self.queue, error = %AmqpError::new(&self.url, "final ack", e),
                    "final ack failed; those messages will be redelivered");
            }
            if !acks.all_acked() {
                tracing::info!(queue = %self.queue, batches = acks.tracker.outstanding(),
                    "closing with unfinished batches; they return to the queue");
            }
            close_within(channel.close(200, "laneway closing".into())).await;
        }
        end
    }

    /// Reads deliveries until stopped, idle, or the session is lost.
    async fn consume(
        &self,
        consumer: &mut lapin::Consumer,
        acks: &Acks,
        acks_failed: &CancellationToken,
    ) -> SessionEnd {
        let max_batch = self.config.batch;
        let idle_for = self.config.idle_exit;
        let mut idle_at = idle_for.map(|d| Instant::now() + d);
        // Until a batch shows otherwise, what is read is live traffic.
        let mut last = Routed::Live;
        loop {
            let next = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return SessionEnd::Stopped,
                _ = acks_failed.cancelled() => return SessionEnd::Lost("acknowledgements stopped".into()),
                _ = sleep_until_opt(idle_at) => return SessionEnd::Idle,
                next = consumer.next() => next,
            };
            let first = match next {
                None => return SessionEnd::Lost(batch::CANCELLED.into()),
                Some(Err(e)) => {
                    return SessionEnd::Lost(AmqpError::new(&self.url, "consuming", e).to_string());
                }
                Some(Ok(d)) => d,
            };
            let (deliveries, broken) =
                batch::gather(consumer, first, max_batch, last, &self.url).await;
            let last_tag = deliveries.last().map_or(0, |d| d.delivery_tag);
            let batch: Vec<Incoming> = deliveries
                .into_iter()
                .map(|d| {
                    let tag = d.delivery_tag;
                    headers::to_incoming(&d.properties, d.data, || {
                        format!("amqp queue {} delivery {tag}", self.queue)
                    })
                })
                .collect();
            let ack = acks.register(last_tag);
            last = self.ingest.submit(batch, ack).await;
            if let Some(why) = broken {
                return SessionEnd::Lost(why);
            }
            if let Some(d) = idle_for {
                idle_at = Some(Instant::now() + d);
            }
        }
    }

    /// After `idle_exit`: waits until everything consumed is acknowledged.
    async fn settle_idle(&self, acks: &Acks, acks_failed: &CancellationToken) -> SessionEnd {
        loop {
            if acks.all_acked() {
                tracing::info!(queue = %self.queue, "queue idle and everything acknowledged; finishing");
                return SessionEnd::Idle;
            }
            if acks.tracker.is_stuck() || acks_failed.is_cancelled() {
                return SessionEnd::Lost("acknowledgements stopped while finishing".into());
            }
            tokio::select! {
                _ = self.stop.cancelled() => {
                    self.drained.cancelled().await;
                    return SessionEnd::Stopped;
                }
                _ = tokio::time::sleep(ACK_TICK) => {}
            }
        }
    }
}

#[async_trait]
impl Sessions for QueueConsumer {
    type Connection = Connection;

    async fn connect(&mut self) -> Result<Connection, ConnectFailure> {
        connect_attempt(&self.url, &format!("laneway source {}", self.queue)).await
    }

    async fn serve(&mut self, conn: Connection, number: u64) -> sessions::SessionEnd {
        self.health.healthy();
        let end = self.session(&conn, number).await;
        // Closing may fail when the connection is already gone; nothing to do then.
        close_within(conn.close(200, "laneway closing".into())).await;
        match end {
            SessionEnd::Stopped | SessionEnd::Idle => sessions::SessionEnd::Finished,
            SessionEnd::Fatal(message) => sessions::SessionEnd::Fatal(message),
            SessionEnd::Lost(why) => sessions::SessionEnd::Lost(why),
        }
    }
}

/// Follows the watermark and acks; ends when told (`end`), or raises
/// `failed` and ends when an ack fails (the channel is gone) or the tracker
/// is stuck.
async fn ack_loop(
    acks: Arc<Acks>,
    channel: Channel,
    end: CancellationToken,
    failed: CancellationToken,
) {
    let mut tick = tokio::time::interval(ACK_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let force = tokio::select! {
            _ = end.cancelled() => return,
            _ = acks.tracker.changed() => false,
            _ = tick.tick() => true,
        };
        if let Err(e) = acks.flush(&channel, force).await {
            tracing::warn!(error = %e, "ack failed; the session will restart");
            failed.cancel();
            return;
        }
        if acks.tracker.is_stuck() {
            tracing::warn!(
                "a batch was abandoned; restarting the session so its messages are redelivered"
            );
            failed.cancel();
            return;
        }
    }
}
