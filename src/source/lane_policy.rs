//! Which lane a source's messages take: a per-source setting, read by the
//! engine when it admits a message into a group.

use serde::{Deserialize, Serialize};

/// How a source's messages choose their lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LanePolicy {
    /// Fresh messages go live, stale ones to the backlog.
    #[default]
    Auto,
    /// Every message tries the live lane (the backlog only when it is full).
    Live,
    /// Every message goes to the backlog (an accumulation queue as a source).
    Backlog,
    /// The source holds these messages itself (a lagging log read from its
    /// committed offset): they wait in the group's catch-up lane, which is
    /// read on the backlog lane's schedule (`backlog_share`,
    /// `backlog_rate`) and never copied to the backlog store unless a
    /// delivery fails. A full catch-up lane makes the submit wait. Set by
    /// sources with [`Ingest::with_policy`](super::Ingest::with_policy),
    /// not by configuration.
    #[serde(skip)]
    CatchUp,
}
