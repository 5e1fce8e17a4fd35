//! The contract between a group and its backlog lane's storage.
//!
//! Invariants every store keeps:
//! - `append` resolves `Ok` only when the records would survive a crash of
//!   the process (for the disk store: after fsync); the engine acknowledges
//!   the source only then;
//! - a record handed out by `take_ready` is not handed out again by this
//!   process until the process restarts; it stays stored until `release`;
//! - records come out in append order, except that a record whose
//!   `not_before_ms` is still in the future is passed over (and kept) so that
//!   it never blocks the records behind it.

use async_trait::async_trait;

use crate::message::Message;

/// A stored record's id: unique and increasing within one store.
pub type RecordId = u64;

/// A message waiting in a backlog, with its delivery history.
#[derive(Debug, Clone)]
pub struct BacklogRecord {
    /// The message itself.
    pub message: Message,
    /// Delivery attempts already made (0 for a message that was never tried).
    pub attempts: u32,
    /// Epoch milliseconds before which the record must not be delivered
    /// (the retry backoff); 0 for "now".
    pub not_before_ms: i64,
}

impl BacklogRecord {
    /// A record for a message that has not been tried yet.
    pub fn fresh(message: Message) -> BacklogRecord {
        BacklogRecord {
            message,
            attempts: 0,
            not_before_ms: 0,
        }
    }
}

/// A record as the store handed it out, with the id to release it by.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// The id to pass to [`BacklogStore::release`].
    pub id: RecordId,
    /// The record.
    pub record: BacklogRecord,
}

/// How full a backlog is, for status lines, metrics and the scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BacklogDepth {
    /// Records stored and not released (including those in flight).
    pub records: u64,
    /// Bytes those records take in the store.
    pub bytes: u64,
    /// Records handed out and not yet released.
    pub in_flight: u64,
    /// Records dropped because the store was full and `drop_oldest` was asked for.
    pub dropped: u64,
    /// Records expired past the store's `max_age`.
    pub expired: u64,
    /// Records found corrupt (on recovery or read) and skipped.
    pub corrupt: u64,
    /// Torn tails cut off when the store was opened (writes a crash cut
    /// short: never acknowledged, so nothing owed was lost).
    pub cut: u64,
}

/// Why a store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BacklogError {
    /// The store is at capacity (or the disk is). The first `stored` records
    /// of the batch were stored durably; the caller keeps the rest and offers
    /// them again later: this is backpressure, not loss.
    #[error("backlog is full ({stored} of the batch stored, the rest waits for room)")]
    Full {
        /// How many records at the front of the batch were stored.
        stored: usize,
    },
    /// An I/O failure, with what was being done.
    #[error("backlog {action} failed: {source}")]
    Io {
        /// What the store was doing.
        action: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The store was opened by another process, or its files are unusable.
    #[error("{0}")]
    Unavailable(String),
    /// A record this store can never hold, however empty it gets (larger
    /// than a disk segment, or than the whole store): none of the batch was
    /// stored. The caller makes the record at `index` a dead letter with
    /// this reason and offers the rest again; offering it again would
    /// wait for ever.
    #[error("backlog cannot hold record {index} of the batch: {reason}")]
    TooLarge {
        /// Which record of the batch.
        index: usize,
        /// Why, with the sizes.
        reason: String,
    },
}

/// Storage for one group's backlog lane.
///
/// The engine calls `append` from one writer task per group (so a store may
/// group-commit whatever arrives while an fsync is under way), and
/// `take_ready`/`release` from its delivery tasks.
#[async_trait]
pub trait BacklogStore: Send + Sync + 'static {
    /// Stores records durably, in order; see the module's invariants. On any
    /// error other than [`BacklogError::Full`], none of the batch counts as
    /// stored (the caller offers it all again; a partial write may then be
    /// delivered twice, never lost).
    async fn append(&self, records: &[BacklogRecord]) -> Result<(), BacklogError>;

    /// Puts handed-out records back with a new attempt count and not-before
    /// time (a failed delivery). Never fails for lack of room: the records are
    /// already counted. Until it resolves the old copies stay stored, so a
    /// crash in between delivers them again rather than losing them.
    async fn retry(&self, records: &[StoredRecord]) -> Result<(), BacklogError>;

    /// Hands out up to `max` records that are ready at `now_ms`, oldest first.
    async fn take_ready(&self, max: usize, now_ms: i64) -> Result<Vec<StoredRecord>, BacklogError>;

    /// Forgets delivered records for good.
    async fn release(&self, ids: &[RecordId]) -> Result<(), BacklogError>;

    /// How full the store is now (cheap: called for every scheduling decision).
    fn depth(&self) -> BacklogDepth;

    /// Whether any stored record is not in flight (it may still be waiting
    /// for its not-before time). Cheap; used by the scheduler.
    fn has_waiting(&self) -> bool {
        let d = self.depth();
        d.records > d.in_flight
    }

    /// When (epoch milliseconds) the oldest record still owed was stored,
    /// if the store can tell cheaply; for metrics ("oldest backlog age"),
    /// called once per scrape, never on a delivery path. The default: the
    /// store cannot tell.
    fn oldest_ms(&self) -> Option<i64> {
        None
    }

    /// Whether a stored record survives a crash of this process (the disk
    /// and broker stores; not the memory store). A group's duplicate window
    /// remembers a message as stored only in a store that keeps it: after a
    /// crash, the source's copy of a message a memory store lost must not
    /// be taken for a duplicate. Defaults to the contract of
    /// [`BacklogStore::append`]: true.
    fn survives_crash(&self) -> bool {
        true
    }

    /// Flushes whatever the store keeps for a clean restart (ledgers, ...).
    async fn close(&self) -> Result<(), BacklogError> {
        Ok(())
    }
}
