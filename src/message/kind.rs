//! The kind of a device message, derived from its topic alone.
//!
//! Invariant: every topic maps to exactly one kind; a topic that matches no
//! known pattern is [`Kind::Other`], never an error, so routing can always go on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a message is. Consumer groups filter on it, and it decides nothing
/// else: every kind flows through the same lanes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A property report: `/{pk}/{dn}/thing/event/property/post`.
    Property,
    /// An event report: `/{pk}/{dn}/thing/event/{identifier}/post`.
    Event,
    /// An online/offline change: `/as/mqtt/status/{pk}/{dn}`.
    Status,
    /// A device created, deleted, enabled or disabled: `/{pk}/{dn}/thing/lifecycle`.
    Lifecycle,
    /// A gateway's sub-device topology change: `/{pk}/{dn}/thing/topo/lifecycle`.
    Topology,
    /// A gateway's sub-device discovery: `/{pk}/{dn}/thing/list/found`.
    Found,
    /// Any topic that matches none of the above.
    #[default]
    Other,
}

impl Kind {
    /// Every kind, in a fixed order (used for per-kind counters and reports).
    pub const ALL: [Kind; 7] = [
        Kind::Property,
        Kind::Event,
        Kind::Status,
        Kind::Lifecycle,
        Kind::Topology,
        Kind::Found,
        Kind::Other,
    ];

    /// The lowercase name used in configs, reports and topics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Property => "property",
            Kind::Event => "event",
            Kind::Status => "status",
            Kind::Lifecycle => "lifecycle",
            Kind::Topology => "topology",
            Kind::Found => "found",
            Kind::Other => "other",
        }
    }

    /// A dense index into [`Kind::ALL`], for per-kind counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a kind name that is not one of the seven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown kind {0:?}: expected one of property, event, status, lifecycle, topology, found, other"
)]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}
