//! laneway: a backlog-aware dispatcher for IoT server-side subscriptions.
//!
//! Messages arrive from a source (AMQP, JSONL, the simulator), are routed to
//! every consumer group whose filter matches, and wait in one of the group's
//! two lanes: a bounded in-memory **live lane** for fresh messages, and a
//! durable **backlog lane** for stale ones, for those the live lane had no
//! room for, and for failed deliveries awaiting retry. A per-group
//! [scheduler](engine::scheduler) serves live first while guaranteeing the
//! backlog a share of deliveries, so a consumer back from an outage is
//! real-time again at once while the pile drains beside it. A source is
//! acknowledged only when every group has delivered its message or holds it
//! durably ([`ack`]).
//!
//! Start with [`engine::Engine::builder`]; `examples/embed.rs` shows a
//! complete program.

#![warn(missing_docs)]

pub mod ack;
pub mod amqp;
pub mod backlog;
pub mod backoff;
pub mod config;
pub mod engine;
pub mod message;
pub mod sink;
pub mod source;

/// Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`,
/// off by default): the parsers and decoders that read outside input, with
/// the disk backlog's private decoders reached through small hooks. Not a
/// stable interface.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::backlog::disk::fuzzing::{
        decode_all, frame_round_trip, ledger_bytes, read_segment, segment_bytes, segment_file_name,
    };
    pub use crate::backlog::disk::{DiskBacklogConfig, verify_dir};
    pub use crate::config::FileConfig;
    pub use crate::message::{classify, parse_envelope, write_envelope};
}
