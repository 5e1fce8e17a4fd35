//! Where messages come from: the [`Source`] trait and the sources laneway
//! ships (the device simulator, JSONL files and stdin).
//!
//! A source reads batches, registers each with its own
//! [`AckTracker`](crate::ack::AckTracker) when its origin wants acks, and hands
//! them to [`Ingest::submit`]. It stops reading
//! when `stop` is raised, and settles its last acks once `drained` is raised
//! (every group has finished with what it submitted). A JSONL file source
//! keeps a [`checkpoint`] of how far it is done, so a restart resumes there.

pub mod checkpoint;
mod ingest;
pub mod jsonl;
mod lane_policy;
pub mod simulator;

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use tokio_util::sync::CancellationToken;

pub use ingest::{Incoming, Ingest, Route};
pub use jsonl::JsonlSource;
pub use lane_policy::LanePolicy;
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

/// What a source tells the status line about transient trouble it is
/// riding out (a broker it keeps trying to reach), so that a run that
/// delivers nothing says why; empty while all is well. Cheap to clone.
#[derive(Clone, Default)]
pub struct SourceHealth {
    trouble: Arc<Mutex<Option<String>>>,
}

impl SourceHealth {
    /// Reports trouble, in a few words (for example "broker unreachable,
    /// retrying in 2s"); never a secret.
    pub fn troubled(&self, what: impl Into<String>) {
        *self.trouble.lock() = Some(what.into());
    }

    /// The trouble is over.
    pub fn healthy(&self) {
        *self.trouble.lock() = None;
    }

    /// The trouble being ridden out now, if any.
    pub fn trouble(&self) -> Option<String> {
        self.trouble.lock().clone()
    }
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
}
