//! The two lanes of a consumer group, as a value that travels with every
//! delivery and every counter.

use serde::Serialize;

/// Which lane a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// Fresh messages, in memory, served first.
    Live,
    /// The accumulation queue, drained in parallel in the degraded mode.
    Backlog,
}

impl Lane {
    /// The lowercase name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Live => "live",
            Lane::Backlog => "backlog",
        }
    }
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
