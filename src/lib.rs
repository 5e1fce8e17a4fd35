//! laneway: a backlog-aware dispatcher for IoT server-side subscriptions.
//!
//! Messages arrive from a source (AMQP, JSONL, the simulator), are routed to
//! every consumer group whose filter matches, and wait in one of the group's
//! two lanes: a bounded in-memory **live lane** for fresh messages, and a
//! durable **backlog lane** for stale ones, for those the live lane had no
//! room for, and for failed deliveries awaiting retry. A per-group scheduler
//! serves live first while guaranteeing the backlog a share of deliveries,
//! so a consumer back from an outage is real-time again at once while the
//! pile drains beside it. A source is acknowledged only when every group has
//! delivered its message or holds it durably ([`ack`]).
//!
//! Start with [`engine::Engine::builder`]; `examples/embed.rs` shows a
//! complete program.
//!
//! # Module map
//!
//! Dependencies point one way, with the flow of a message (each module may
//! import those above it in this list, and the leaves [`ack`], [`backoff`],
//! [`broker_url`], `env` (values a config names rather than holds: an
//! environment variable, a secret's file), [`filesystem`] (the seam all
//! durable state is written through), [`knob`] (the one error an
//! adapter's config checks return) and [`secret`]; adapters never
//! import one another; `tests/layering.rs` checks it). The adapters each
//! sit behind a cargo feature, named in brackets; the rest is always built:
//!
//! - [`message`]: the message type, its kind, topics, the JSONL envelope.
//! - [`source`]: the [`Source`](source::Source) trait, what sources push
//!   into ([`Ingest`](source::Ingest)), the ack state each keeps
//!   ([`Positions`](source::Positions)), the toolkit a broker source is
//!   built on (the reconnect driver, [`source::sessions`], and the
//!   receive-and-settle loop, [`source::settle_loop`]), and how an
//!   adapter's config entry is checked and built
//!   ([`SourceAdapter`](source::SourceAdapter)); the JSONL and simulator
//!   sources.
//! - [`backlog`]: the [`BacklogStore`](backlog::BacklogStore) trait; the
//!   memory and the durable disk store.
//! - [`sink`]: the [`Sink`](sink::Sink) trait and
//!   [`DeliveryError`](sink::DeliveryError); the handler, JSONL and null sinks.
//! - `amqp` (feature `amqp`): AMQP 0-9-1 queue and stream sources, sink,
//!   and the broker backlog store, each on a shared core (uses `source`,
//!   `sink` and `backlog`).
//! - `amqp1` (feature `amqp1`): AMQP 1.0 source and the Alibaba Cloud
//!   preset (uses `source`).
//! - `pulsar` (feature `pulsar`, off by default: its client needs `protoc`
//!   to build): Pulsar source and the Tuya preset (uses `source`).
//! - `kafka` (feature `kafka`): Kafka source (consumer groups, commits of
//!   done offsets, live-first catch-up of a partition's lag beside its
//!   live reads) and sink (idempotent producer) (uses `source` and `sink`).
//! - `http` (feature `http`): the HTTP sink, batches POSTed to a service
//!   (uses `sink`).
//! - [`engine`]: routing, groups, lanes, scheduling, dead letters, running
//!   and stopping (uses all of the above).
//! - [`admin`]: the status [`Tracker`](admin::Tracker) (always), and the
//!   HTTP listener with `/metrics` and the dashboard (feature `admin`)
//!   (uses `engine`).
//! - [`config`]: `laneway.toml` and building an engine from it (on top). A
//!   file that names an adapter this build lacks is refused at its line,
//!   naming the feature.
//!
//! The default features are `amqp`, `amqp1`, `kafka`, `http` and `admin`; none of
//! them needs more than the Rust toolchain and a C compiler. With
//! `default-features = false` the library holds the engine, the JSONL and
//! simulator sources, the disk and memory backlogs and the handler, JSONL
//! and null sinks.
//!
//! The `laneway` program (its commands and `laneway bench`'s scenarios)
//! sits on top of the library in `src/bin/laneway` and is not part of it.
//! `docs/architecture.md` says what each module owns and keeps true.

#![warn(missing_docs)]

pub mod ack;
pub mod admin;
#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "amqp1")]
pub mod amqp1;
pub mod backlog;
pub mod backoff;
pub mod broker_url;
pub mod config;
pub mod engine;
mod env;
pub mod filesystem;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod knob;
pub mod message;
#[cfg(feature = "pulsar")]
pub mod pulsar;
pub mod secret;
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
    pub use crate::message::json::acceptor_and_scanner;
    pub use crate::message::{classify, parse_envelope, write_delivery_envelope, write_envelope};
}
