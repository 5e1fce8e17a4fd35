//! The handle a source pushes batches into, and what a batch is made of.
//!
//! The source side knows nothing of the engine: an [`Ingest`] forwards to
//! whatever implements [`Route`] (the engine's router), so dependencies
//! point from the engine to the sources, never back.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::LanePolicy;
use crate::ack::AckRef;
use crate::message::Message;

/// One item a source hands in: a message, or input that could not become one.
#[derive(Debug)]
pub enum Incoming {
    /// A message to route.
    Message(Message),
    /// A message with the line its source read it from, so that a dead
    /// letter at ingest (an oversize payload) names `source:line`.
    MessageAt {
        /// The message.
        message: Message,
        /// Its 1-based line in the source's input.
        line: u64,
    },
    /// Input that is not a message; it becomes a dead letter with this reason.
    Malformed {
        /// The raw bytes as read.
        raw: Bytes,
        /// Where it was read (for example `file.jsonl:17`).
        origin: String,
        /// Why it is not a message.
        reason: String,
    },
}

/// What became of a submitted batch, as far as its source can use it: a
/// source that reads a pile paces itself by it (the AMQP sources let a
/// small batch wait for more while nothing they read goes live), while
/// live traffic is never held back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routed {
    /// At least one message took a live lane: the source is reading live
    /// traffic, and must hand in what it reads next without waiting.
    Live,
    /// No message took a live lane: each went to a backlog (stale, pushed
    /// out of a full live lane, or the source's lane is the backlog), to a
    /// catch-up lane, or was a duplicate, a dead letter or unrouted; or the
    /// engine no longer takes input. Nothing delivered live is waiting on
    /// the source.
    NotLive,
}

impl Routed {
    /// `Live` when either is.
    pub fn or(self, other: Routed) -> Routed {
        match (self, other) {
            (Routed::NotLive, Routed::NotLive) => Routed::NotLive,
            _ => Routed::Live,
        }
    }
}

/// Keeps the engine taking input after a stop, while a source hands in
/// what it has read and cannot read again (standard input); dropping it
/// lets intake close. See [`Ingest::hold`].
pub struct IntakeHold {
    _guard: Box<dyn Send + Sync>,
}

impl IntakeHold {
    /// A hold that lasts as long as `guard` lives.
    pub fn new(guard: impl Send + Sync + 'static) -> IntakeHold {
        IntakeHold {
            _guard: Box::new(guard),
        }
    }
}

/// Where an [`Ingest`] hands its batches: the engine's router. A trait so
/// that sources depend on this module alone.
#[async_trait]
pub trait Route: Send + Sync + 'static {
    /// Takes a batch from the source named `source` (see [`Ingest::submit`]).
    async fn route(
        &self,
        batch: Vec<Incoming>,
        ack: AckRef,
        policy: LanePolicy,
        source: &str,
    ) -> Routed;

    /// A hold on intake (see [`Ingest::hold`]); `None` once intake is
    /// closing, or where nothing closes it.
    fn hold(&self) -> Option<IntakeHold> {
        None
    }
}

/// The handle sources use to hand batches to the engine. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    route: Arc<dyn Route>,
    policy: LanePolicy,
    /// The source's name, for dead letters at ingest.
    source: Arc<str>,
    /// Where submitted items are counted (the source's received count).
    health: Option<super::SourceHealth>,
}

impl Ingest {
    /// A handle that forwards to `route`, for a source named `source` whose
    /// messages take lanes by `policy`.
    pub fn new(route: Arc<dyn Route>, policy: LanePolicy, source: &str) -> Ingest {
        Ingest {
            route,
            policy,
            source: Arc::from(source),
            health: None,
        }
    }

    /// The same handle with another lane policy: a source that reads one
    /// origin with two cursors submits its catch-up cursor's batches with
    /// [`LanePolicy::CatchUp`].
    pub fn with_policy(&self, policy: LanePolicy) -> Ingest {
        Ingest {
            policy,
            ..self.clone()
        }
    }

    /// Counts every submitted item in `health` (its received count).
    pub fn counting(mut self, health: super::SourceHealth) -> Ingest {
        self.health = Some(health);
        self
    }

    /// Keeps intake open after a stop until the hold is dropped: a source
    /// whose input cannot be read again (standard input) takes one while it
    /// runs, and drops it once it has handed in every line it read, so a
    /// graceful stop loses none. The holder must drop it promptly after the
    /// stop (a bounded wait), or the shutdown waits with it.
    pub fn hold(&self) -> Option<IntakeHold> {
        self.route.hold()
    }

    /// Routes a batch to every matching group. Resolves when each message is
    /// in a lane or queued for a backlog (waiting while backlogs are full:
    /// this is where backpressure reaches a source). `ack` is the source's
    /// reference for the batch; it is completed once the batch is routed, so
    /// the batch is acknowledged when the groups settle their shares. Once
    /// the engine has stopped taking input (shutdown), a batch is not taken:
    /// its `ack` is dropped unsettled, so its origin keeps it. Says
    /// whether any message took a live lane.
    pub async fn submit(&self, batch: Vec<Incoming>, ack: AckRef) -> Routed {
        if let Some(health) = &self.health {
            health.received(batch.len() as u64);
        }
        self.route
            .route(batch, ack, self.policy, &self.source)
            .await
    }
}
