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
}
