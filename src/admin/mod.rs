//! The admin HTTP listener: what an operator watches a running engine by.
//!
//! The listener (`AdminServer`) and `/metrics` (the `metrics` module) come
//! with the cargo feature `admin` (on by default; it brings axum, hyper and
//! prometheus-client). The status [`Tracker`], which `laneway run`'s status
//! lines read too, and the listener's [`AdminOptions`] are always built.
//!
//! - `/metrics`: every counter in the OpenMetrics text format (`metrics`);
//! - `/status`: the consumer-group status as JSON ([`status`]); with
//!   `?after=N` it waits (up to 30 s) for the sample after sample `N`, so a
//!   client follows the status without polling; `/status/history` holds
//!   up to ten minutes of per-group points for charts;
//! - `/`: a live dashboard, one self-contained page embedded in the binary
//!   (no CDN, works offline) that follows `/status`;
//! - `/healthz`: the process answers; `/readyz`: every source is connected
//!   and the engine takes input (its backlog stores are open).
//!
//! The listener is off unless configured; it is meant for loopback (a
//! non-loopback address is allowed but logged as a warning: it has no
//! authentication, and `/status` names sources and groups).
//!
//! Invariants: whatever clients do, the listener holds at most
//! `max_connections` connections (so a bounded number of file descriptors,
//! which the data path needs for its backlogs, checkpoints and sinks); a
//! client that sends no complete request head within `header_read_timeout`
//! is closed, and so is a connection idle for `idle_timeout`
//! ([`AdminOptions`]); a request whose `Host` names the listener by a name
//! it does not know is refused (403), against DNS rebinding. It may import
//! `engine`, `source`, `backlog`, `sink` and `message`; `engine` never
//! imports it.

#[cfg(feature = "admin")]
mod connections;
#[cfg(feature = "admin")]
mod host;
#[cfg(feature = "admin")]
mod listener;
#[cfg(feature = "admin")]
pub mod metrics;
mod options;
pub mod status;

#[cfg(feature = "admin")]
pub use listener::{AdminError, AdminServer};
#[cfg(feature = "admin")]
pub use metrics::Metrics;
pub use options::AdminOptions;
pub use status::{GroupState, Status, Tracker};
