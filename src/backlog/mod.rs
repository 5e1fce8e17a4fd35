//! The backlog lane: each group's accumulation queue, behind a small storage
//! trait so that the in-memory and the durable disk store are interchangeable.

pub mod disk;
mod memory;
mod store;

pub use disk::{DiskBacklog, DiskBacklogConfig, RecoveryReport, WhenFull};
pub use memory::{MemoryBacklog, MemoryLimits};
pub use store::{BacklogDepth, BacklogError, BacklogRecord, BacklogStore, RecordId, StoredRecord};
