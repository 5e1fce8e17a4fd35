//! Where messages come from: the [`Source`] trait and the sources laneway
//! ships (the device simulator, JSONL files and stdin).
//!
//! A source reads batches, registers each with its [`Positions`] when its
//! origin wants acks, and hands them to [`Ingest::submit`]. It stops reading
//! when `stop` is raised, and settles its last acks once `drained` is raised
//! (every group has finished with what it submitted). A JSONL file source
//! keeps a [`checkpoint`] of how far it is done, so a restart resumes there.
//! A broker source is built on the toolkit here: [`sessions`] (connect,
//! serve, wait the backoff, until stopped) and [`settle_loop`] (one
//! session's receive, hand in, acknowledge, give back), and its config
//! table is a [`SourceAdapter`].

mod adapter;
pub mod checkpoint;
mod ingest;
pub mod jsonl;
mod jsonl_spec;
mod lane_policy;
mod named;
mod positions;
pub mod sessions;
pub mod settle_loop;
pub mod simulator;
#[cfg(any(feature = "amqp", feature = "kafka"))]
pub(crate) mod take_ready;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;

use tokio_util::sync::CancellationToken;

#[cfg(any(
    feature = "amqp",
    feature = "amqp1",
    feature = "kafka",
    feature = "pulsar"
))]
pub(crate) use adapter::source_adapter;
pub use adapter::{BuildContext, SourceAdapter};
pub use ingest::{Incoming, Ingest, IntakeHold, Route, Routed};
pub use jsonl::JsonlSource;
pub use jsonl_spec::JsonlSpec;
pub use lane_policy::LanePolicy;
pub use named::Named;
pub use positions::Positions;
pub use simulator::{Simulator, SimulatorConfig};

/// What a source gets from the engine when it starts.
pub struct SourceContext {
    /// Where to hand batches.
    pub ingest: Ingest,
    /// Cancelled when the source must stop reading (shutdown).
    pub stop: CancellationToken,
    /// Cancelled when the engine has finished with everything submitted: the
    /// last acks can be settled and connections closed.
    pub drained: CancellationToken,
    /// Where the source tells the status line about trouble it is riding out.
    pub health: SourceHealth,
}

/// What a source tells the status line and the admin endpoints: transient
/// trouble it is riding out (a broker it keeps trying to reach), so that a
/// run that delivers nothing says why, and its counters (received, acked,
/// reconnects, lag). Cheap to clone; every update is one relaxed atomic or
/// one short lock, so sources may call it on every batch.
#[derive(Clone, Default)]
pub struct SourceHealth {
    trouble: Arc<Mutex<Option<String>>>,
    counters: Arc<SourceCounters>,
}

const NOT_STARTED: u8 = 0;
const CONNECTING: u8 = 1;
const CONNECTED: u8 = 2;

struct SourceCounters {
    received: AtomicU64,
    acked: AtomicU64,
    acknowledges: AtomicBool,
    /// [`NOT_STARTED`], [`CONNECTING`] or [`CONNECTED`].
    state: AtomicU8,
    reconnects: AtomicU64,
    /// `u64::MAX` while the source does not know its lag.
    lag: AtomicU64,
    unlogged_errors: AtomicU64,
}

/// A source's counters at one moment (see [`SourceHealth::snapshot`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceSnapshot {
    /// Items handed to the engine (messages and malformed input).
    pub received: u64,
    /// Messages acknowledged to the origin (broker acks, checkpointed
    /// lines); `None` for a source with no origin to acknowledge to (the
    /// simulator, stdin).
    pub acked: Option<u64>,
    /// Received and not yet acknowledged, for sources that acknowledge.
    pub in_flight: Option<u64>,
    /// Times the source lost its connection and started over.
    pub reconnects: u64,
    /// Messages waiting at the origin that the source has not read, where
    /// the origin tells (Kafka consumer lag); `None` otherwise.
    pub lag: Option<u64>,
    /// The trouble being ridden out now, if any.
    pub trouble: Option<String>,
    /// Client errors counted but not logged: a source that retries logs
    /// one warning per retry interval, not one per error.
    pub unlogged_errors: u64,
    /// Whether the source is connected to its origin (a file source or the
    /// simulator is, once it runs).
    pub connected: bool,
}

impl SourceHealth {
    /// Reports trouble, in a few words (for example "broker unreachable,
    /// retrying in 2s"); never a secret. The source counts as disconnected
    /// until [`SourceHealth::healthy`].
    pub fn troubled(&self, what: impl Into<String>) {
        *self.trouble.lock() = Some(what.into());
        self.counters.state.store(CONNECTING, Ordering::Relaxed);
    }

    /// The trouble is over: the source is connected and reading.
    pub fn healthy(&self) {
        *self.trouble.lock() = None;
        self.counters.state.store(CONNECTED, Ordering::Relaxed);
    }

    /// The engine is starting the source: one that [`Source::connects`]
    /// is connecting until it reports [`SourceHealth::healthy`]; any other
    /// is ready at once.
    pub fn starting(&self, connects: bool) {
        let state = if connects { CONNECTING } else { CONNECTED };
        self.counters.state.store(state, Ordering::Relaxed);
    }

    /// The trouble being ridden out now, if any.
    pub fn trouble(&self) -> Option<String> {
        self.trouble.lock().clone()
    }

    /// Counts items handed to the engine ([`Ingest::submit`] calls this).
    pub fn received(&self, n: u64) {
        self.counters.received.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts messages acknowledged to the origin; a source that calls
    /// this is one that acknowledges, so its in-flight count is shown.
    pub fn acked(&self, n: u64) {
        self.counters.acknowledges.store(true, Ordering::Relaxed);
        self.counters.acked.fetch_add(n, Ordering::Relaxed);
    }

    /// Declares that this source acknowledges to its origin, before its
    /// first ack (so that in flight shows from the start).
    pub fn acknowledges(&self) {
        self.counters.acknowledges.store(true, Ordering::Relaxed);
    }

    /// Counts one lost connection that the source starts over from.
    pub fn reconnecting(&self) {
        self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Reports how many messages wait at the origin unread (consumer lag),
    /// for sources whose origin tells.
    pub fn lag(&self, messages: u64) {
        self.counters
            .lag
            .store(messages.min(u64::MAX - 1), Ordering::Relaxed);
    }

    /// The source does not know its lag now (it has no broker to ask):
    /// the status shows it as unknown, not as zero.
    pub fn lag_unknown(&self) {
        self.counters.lag.store(u64::MAX, Ordering::Relaxed);
    }

    /// Counts a client error that was not logged, because a warning for
    /// the same trouble was logged within the retry interval.
    pub fn error_unlogged(&self) {
        self.counters
            .unlogged_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> SourceSnapshot {
        let c = &*self.counters;
        let received = c.received.load(Ordering::Relaxed);
        let acks = c.acknowledges.load(Ordering::Relaxed);
        let acked = acks.then(|| c.acked.load(Ordering::Relaxed));
        let trouble = self.trouble();
        SourceSnapshot {
            received,
            acked,
            in_flight: acked.map(|a| received.saturating_sub(a)),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            lag: match c.lag.load(Ordering::Relaxed) {
                u64::MAX => None,
                n => Some(n),
            },
            connected: trouble.is_none() && c.state.load(Ordering::Relaxed) == CONNECTED,
            trouble,
            unlogged_errors: c.unlogged_errors.load(Ordering::Relaxed),
        }
    }
}

impl Default for SourceCounters {
    fn default() -> Self {
        SourceCounters {
            received: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acknowledges: AtomicBool::new(false),
            state: AtomicU8::new(NOT_STARTED),
            reconnects: AtomicU64::new(0),
            lag: AtomicU64::new(u64::MAX),
            unlogged_errors: AtomicU64::new(0),
        }
    }
}

/// Sleeps until `at`, or forever when there is no deadline: the idle-exit
/// timer of a broker source inside its `select!` loop.
pub(crate) async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for a source's tasks (one per queue or connection) and returns
/// the first error at once: the engine then stops the run, and the tasks
/// left running shut down as usual on the stop signal (they are detached,
/// not aborted, so they still settle their acks). A task that panicked is
/// an error of `origin`, `what` naming the task.
#[cfg_attr(not(any(feature = "amqp", feature = "amqp1")), allow(dead_code))]
pub(crate) async fn first_failure(
    mut tasks: tokio::task::JoinSet<Result<(), SourceError>>,
    origin: &str,
    what: &str,
) -> Result<(), SourceError> {
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|e| {
            Err(SourceError::Origin {
                origin: origin.to_string(),
                message: format!("{what} failed: {e}"),
            })
        });
        if let Err(e) = result {
            tasks.detach_all();
            return Err(e);
        }
    }
    Ok(())
}

/// A failure that ends a source, and with it the run: return one only for
/// what retrying cannot fix (a missing file or queue, refused credentials,
/// an unknown host); ride out transient trouble (a broker restarting, a
/// refused connection) with a backoff, logging each retry at WARN.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading failed.
    #[error("{origin}: {source}")]
    Io {
        /// The file, queue or stream being read.
        origin: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The source could not reach or use its origin.
    #[error("{origin}: {message}")]
    Origin {
        /// The file, queue or stream being read.
        origin: String,
        /// What went wrong.
        message: String,
    },
}

/// A stream of messages into the engine.
#[async_trait]
pub trait Source: Send + 'static {
    /// A short name for logs and reports (a path, a queue, "simulator").
    fn name(&self) -> String;

    /// Reads until the origin is exhausted or `ctx.stop` is raised. An
    /// error stops the whole run (see [`SourceError`]) and makes it a failed
    /// run (the run summary lists it among its failures).
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError>;

    /// Whether the source connects to a remote origin (a broker): it then
    /// counts as not ready (`/readyz`) until it reports
    /// [`SourceHealth::healthy`]. Files and the simulator are ready at once.
    fn connects(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_counts_and_says_when_a_source_is_connected() {
        let h = SourceHealth::default();
        assert!(!h.snapshot().connected, "not started yet");
        h.starting(true);
        assert!(!h.snapshot().connected, "a broker source connects first");
        h.received(10);
        let s = h.snapshot();
        assert_eq!(
            (s.received, s.acked, s.in_flight, s.lag),
            (10, None, None, None)
        );
        h.healthy();
        h.acknowledges();
        h.acked(4);
        h.lag(7);
        let s = h.snapshot();
        assert!(s.connected);
        assert_eq!((s.acked, s.in_flight, s.lag), (Some(4), Some(6), Some(7)));
        h.troubled("broker unreachable");
        h.reconnecting();
        let s = h.snapshot();
        assert!(!s.connected);
        assert_eq!(s.reconnects, 1);
        assert_eq!(s.trouble.as_deref(), Some("broker unreachable"));
        let file = SourceHealth::default();
        file.starting(false);
        assert!(file.snapshot().connected, "a file is ready at once");
    }
}
