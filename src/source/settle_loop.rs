//! One session of a source that acknowledges each message to its broker:
//! receive batches, hand them to the engine, and acknowledge what is done,
//! in order, until stopped, idle, or lost. A source supplies the protocol
//! steps ([`Receiving`]); the loop ([`receive_and_settle`]) owns the
//! order of events, so every such source settles the same way.
//!
//! Invariants: a message is acknowledged only once its batch and every
//! batch before it are done ([`Positions`]); at stop, the flow is paused,
//! the loop waits until the engine has finished with everything it was
//! handed (`drained`), acknowledges what is done and gives the rest back
//! to the broker, so nothing handed in is left unanswered; a batch the
//! engine abandoned (a group that stopped without finishing it) loses the
//! session, its messages given back, rather than hold every later ack
//! behind it; `idle_exit` ends a session only when everything received is
//! acknowledged.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::sessions::SessionEnd;
use super::{Incoming, Ingest, Positions, SourceHealth, sleep_until_opt};

/// How often the loop settles when nothing else wakes it (and checks for
/// an abandoned batch).
pub const SETTLE_TICK: Duration = Duration::from_millis(20);

/// The protocol steps of one session (see the module docs).
#[async_trait]
pub trait Receiving: Send {
    /// One message as the client hands it over.
    type Received: Send;
    /// What acknowledging one message takes (a delivery tag, an id).
    type Position: Send + 'static;

    /// The next message. Cancel-safe: a call dropped before it finishes
    /// loses nothing (the loop polls it beside its other events, and
    /// once more without waiting to fill a batch).
    async fn receive(&mut self) -> Result<Self::Received, String>;

    /// The message for the engine, and what acknowledges it later.
    fn take(&mut self, received: Self::Received) -> (Incoming, Self::Position);

    /// Acknowledges `done` (oldest first) and returns how many the broker
    /// took; an error loses the session (the broker redelivers what was
    /// not acknowledged).
    async fn acknowledge(&mut self, done: Vec<Self::Position>) -> Result<u64, String>;

    /// Stops the flow before the last settlement at stop (withdraws a
    /// link's credit). Default: nothing to stop.
    async fn pause(&mut self) {}

    /// Gives back what the engine did not finish, so that the broker
    /// delivers it again now rather than when the connection closes.
    async fn give_back(&mut self, undone: Vec<Self::Position>);
}

/// What the loop needs from the source around it.
#[derive(Clone, Copy)]
pub struct SettleRules<'a> {
    /// The source, as logs name it.
    pub who: &'a str,
    /// Where batches go.
    pub ingest: &'a Ingest,
    /// Raised when the source must stop reading.
    pub stop: &'a CancellationToken,
    /// Raised when the engine has finished with everything handed in.
    pub drained: &'a CancellationToken,
    /// The source's counters.
    pub health: &'a SourceHealth,
    /// The most messages in one batch.
    pub batch: usize,
    /// End the session once nothing arrived for this long and everything
    /// is acknowledged.
    pub idle_exit: Option<Duration>,
}

/// Runs one session (see the module docs).
pub async fn receive_and_settle<R: Receiving>(
    receiving: &mut R,
    rules: SettleRules<'_>,
) -> SessionEnd {
    let mut positions: Positions<Vec<R::Position>> = Positions::new();
    let mut tick = tokio::time::interval(SETTLE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle_at = || rules.idle_exit.map(|d| tokio::time::Instant::now() + d);
    let mut idle = idle_at();
    loop {
        tokio::select! {
            biased;
            _ = rules.stop.cancelled() => return finish(receiving, &mut positions, rules).await,
            _ = sleep_until_opt(idle) => {
                if let Err(why) = settle(receiving, &mut positions, rules.health).await {
                    return SessionEnd::Lost(why);
                }
                if positions.is_empty() {
                    tracing::info!(source = %rules.who, "nothing arrived for idle_exit and everything is acknowledged; finishing");
                    return SessionEnd::Finished;
                }
                idle = idle_at();
            }
            _ = positions.tracker().changed() => {
                if let Err(why) = settle(receiving, &mut positions, rules.health).await {
                    return SessionEnd::Lost(why);
                }
            }
            _ = tick.tick() => {
                if let Err(why) = settle(receiving, &mut positions, rules.health).await {
                    return SessionEnd::Lost(why);
                }
                if positions.tracker().is_stuck() {
                    let undone = positions.drain_undone().flatten().collect();
                    receiving.give_back(undone).await;
                    return SessionEnd::Lost("a batch was abandoned".into());
                }
            }
            got = receiving.receive() => {
                let first = match got {
                    Ok(received) => received,
                    Err(why) => return SessionEnd::Lost(format!("receiving: {why}")),
                };
                idle = idle_at();
                let mut received = vec![first];
                while received.len() < rules.batch {
                    match receiving.receive().now_or_never() {
                        Some(Ok(more)) => received.push(more),
                        Some(Err(why)) => {
                            // Hand in what was read; the next receive
                            // reports the failure again.
                            tracing::debug!(error = %why, "a receive failed while batching");
                            break;
                        }
                        None => break,
                    }
                }
                let (batch, acks): (Vec<Incoming>, Vec<R::Position>) =
                    received.into_iter().map(|r| receiving.take(r)).unzip();
                let ack = positions.register(acks);
                rules.ingest.submit(batch, ack).await;
            }
        }
    }
}

/// Acknowledges every batch now done.
async fn settle<R: Receiving>(
    receiving: &mut R,
    positions: &mut Positions<Vec<R::Position>>,
    health: &SourceHealth,
) -> Result<(), String> {
    let done: Vec<R::Position> = positions.take_done().into_iter().flatten().collect();
    if done.is_empty() {
        return Ok(());
    }
    let acked = receiving.acknowledge(done).await?;
    if acked > 0 {
        health.acked(acked);
    }
    Ok(())
}

/// After `stop`: pause the flow, wait for the engine to drain, acknowledge
/// what is done and give back the rest.
async fn finish<R: Receiving>(
    receiving: &mut R,
    positions: &mut Positions<Vec<R::Position>>,
    rules: SettleRules<'_>,
) -> SessionEnd {
    receiving.pause().await;
    rules.drained.cancelled().await;
    if let Err(why) = settle(receiving, positions, rules.health).await {
        tracing::warn!(source = %rules.who, reason = %why,
            "the last acknowledgement failed; those messages will be delivered again");
    }
    let undone: Vec<R::Position> = positions.drain_undone().flatten().collect();
    if !undone.is_empty() {
        receiving.give_back(undone).await;
    }
    SessionEnd::Finished
}
