//! The engine: routes every ingested message to the consumer groups whose
//! filter matches, runs each group's lanes and scheduler, and tells sources
//! when their batches are done.
//!
//! One concept to a file: [`EngineBuilder`] (`builder.rs`) checks and
//! assembles; the router (`router.rs`) fans batches out; each group
//! (`group/`) admits, writes its backlog, dispatches and settles outcomes,
//! over its two lanes (`lanes/`) and its scheduler (`scheduler.rs`),
//! remembering recent ids in its [`DuplicateWindow`] (`dedup/`) when asked;
//! [`Engine::run`] (`run.rs`) starts and stops it all; [`Monitor`]
//! (`monitor.rs`) reads it.
//!
//! Invariants:
//! - fan-out: every group whose filter matches gets the message; a message no
//!   group matches is counted as unrouted and acknowledged (there is nobody
//!   to deliver it to), never silently dropped from the counts;
//! - a source batch is acknowledged only when every group it was routed to
//!   has settled every message of it (see [`crate::ack`]);
//! - shutdown stops the sources first, closes intake and waits for batches
//!   being routed, then stops the groups (which finish or return their
//!   in-flight work), then tells the sources they may settle their last
//!   acks. No step polls: each waits on a token, a tracker or a notification.

mod builder;
pub mod concurrency;
mod dead_letter;
mod dedup;
mod filter;
mod freshness;
mod group;
mod group_config;
mod lanes;
mod monitor;
mod router;
mod run;
mod scheduler;
mod stats;

pub use builder::{EngineBuilder, EngineError, EngineOptions};
pub use dead_letter::{DeadLetter, DeadLetters, NotWritten};
pub use dedup::{
    DuplicateWindow, DuplicateWindowError, MAX_IDS as DUPLICATE_WINDOW_MAX_IDS, Mark, Verdict,
};
pub use filter::{Filter, FilterError};
pub use group_config::{
    AdaptiveSlots, GroupConfig, GroupConfigError, GroupNameError, check_group_name,
};
pub use monitor::{IntakeSnapshot, Monitor, RunSummary, SourceFailure, SourceLag};
pub use run::Engine;
pub use stats::{BacklogLoss, DeadLetterReasons, EngineStats, GroupSnapshot, LatencySummary};

/// The live lane and the scheduler, reachable for the micro-benchmarks in
/// `benches/engine.rs` (cargo feature `internals`, off by default). Not a
/// stable interface.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use super::lanes::{LiveItem, LiveLane};
    pub use super::scheduler::{Pick, Scheduler};
}
