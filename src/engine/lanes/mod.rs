//! A group's two lanes, side by side: the **live lane** ([`LiveLane`]), a
//! bounded in-memory queue of fresh messages, and the front of the
//! **backlog lane** ([`ReadAhead`]), a small buffer of records ready for
//! delivery, filled from the group's durable store (`crate::backlog`).
//! Which lane a delivery serves is the scheduler's call
//! (`crate::engine::scheduler`); the [`Lane`](crate::sink::Lane) label
//! travels with each delivery.

mod backlog;
mod live;

pub(crate) use backlog::ReadAhead;
pub use live::{LiveItem, LiveLane};
