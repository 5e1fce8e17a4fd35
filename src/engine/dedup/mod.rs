//! A group's duplicate window: the ids of the messages the group has
//! admitted within the last `dedup_window`, so that a message its source
//! gives again (a redelivery after a crash, a replay past the last commit)
//! is acknowledged and counted rather than delivered twice.
//!
//! "Admitted" is chosen so that nothing is ever lost: an id is recorded
//! only once its message is done (delivered, or durably a dead letter) or
//! durably in a backlog store that survives a crash, and always before its
//! source ack is settled. A crash between the two leaves an id recorded and
//! its message unacknowledged: the source gives it again and the copy is a
//! duplicate, rightly, because the first is done or stored. The reverse
//! order could turn a real message into a false duplicate, so it never
//! happens. An id is marked [`Mark::Admitted`] when stored and
//! [`Mark::Delivered`] when done: a backlog record whose id is already
//! delivered (a release the store had not saved at a crash) is released
//! without a second delivery.
//!
//! A copy that arrives while the first is still on its way (admitted, not
//! yet recorded) is held behind it (`in_flight.rs`): its ack is completed
//! when the first's id is recorded, and it is never delivered.
//!
//! Invariants: the window is keyed by a 128-bit digest of the message id
//! (SHA-256, truncated), never the id itself, so memory per id is fixed;
//! it holds at most [`MAX_IDS`] ids (the oldest go first past that) and
//! forgets an id `window` after it was recorded; with a directory, an id
//! is fsync'd before [`DuplicateWindow::record`] returns (see `log.rs`).
//! A message without an id is never a duplicate.

mod in_flight;
mod log;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::ack::AckRef;
use crate::filesystem::{Filesystem, RealFilesystem};
use crate::message::now_epoch_ms;
use in_flight::{Admission, InFlight};
use log::{Entry, WindowLog};

/// The most ids one group's window holds (about 64 bytes of memory each,
/// 29 bytes on disk per recording); past it the oldest are forgotten early.
pub const MAX_IDS: usize = 2_000_000;

/// How far a message had got when its id was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Mark {
    /// Durably in the group's backlog store (its delivery is to come).
    Admitted = 1,
    /// Delivered, or durably a dead letter.
    Delivered = 2,
}

impl Mark {
    fn from_byte(b: u8) -> Option<Mark> {
        match b {
            1 => Some(Mark::Admitted),
            2 => Some(Mark::Delivered),
            _ => None,
        }
    }
}

/// What the window says of a message at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen: deliver it.
    Fresh,
    /// Recorded within the window: its ack settles with its batch.
    Duplicate,
    /// A copy of one admitted and not yet recorded: its ack is held until
    /// that one is (see [`DuplicateWindow::record`]).
    Held,
}

/// Why a duplicate window cannot be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DuplicateWindowError {
    /// Its directory cannot be read or written.
    #[error("duplicate window in {dir}: {source}")]
    Io {
        /// The window's directory.
        dir: std::path::PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// The ids in memory: digest → (recorded at, mark), and the order they
/// were recorded in, for forgetting.
#[derive(Default)]
struct Index {
    ids: HashMap<u128, (i64, Mark)>,
    order: VecDeque<(i64, u128)>,
}

impl Index {
    fn insert(&mut self, entry: Entry, horizon: i64) {
        let slot = self
            .ids
            .entry(entry.digest)
            .or_insert((entry.at_ms, entry.mark));
        // A mark only moves forward: delivered stays delivered.
        *slot = (entry.at_ms.max(slot.0), entry.mark.max(slot.1));
        self.order.push_back((entry.at_ms, entry.digest));
        self.forget(horizon);
    }

    /// Drops ids recorded before `horizon`, and the oldest past [`MAX_IDS`].
    fn forget(&mut self, horizon: i64) {
        while let Some(&(at, digest)) = self.order.front() {
            if at >= horizon && self.ids.len() <= MAX_IDS && self.order.len() <= 2 * MAX_IDS {
                break;
            }
            self.order.pop_front();
            // Only if this was its latest recording.
            if self
                .ids
                .get(&digest)
                .is_some_and(|(latest, _)| *latest <= at)
            {
                self.ids.remove(&digest);
            }
        }
    }
}

/// One group's duplicate window (see the module documentation).
pub struct DuplicateWindow {
    window: Duration,
    index: Mutex<Index>,
    /// Ids admitted and not yet recorded; taken before `index` when both are.
    in_flight: Mutex<InFlight>,
    log: Option<WindowLog>,
    /// Entries found damaged on disk when the window was opened.
    corrupt: u64,
}

impl std::fmt::Debug for DuplicateWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DuplicateWindow")
            .field("window", &self.window)
            .field("ids", &self.len())
            .field("on_their_way", &self.in_flight.lock().len())
            .field("durable", &self.log.is_some())
            .finish()
    }
}

fn digest(id: &str) -> u128 {
    let hash = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&hash[..16]);
    u128::from_le_bytes(first)
}

impl DuplicateWindow {
    /// A window kept in memory only: it catches redeliveries within one
    /// run (a reconnect), not across a restart.
    pub fn in_memory(window: Duration) -> DuplicateWindow {
        DuplicateWindow {
            window,
            index: Mutex::new(Index::default()),
            in_flight: Mutex::default(),
            log: None,
            corrupt: 0,
        }
    }

    /// Opens the window kept in `dir` (created if missing), loading the
    /// ids recorded within the last `window`. Reads the whole directory:
    /// call it off the async runtime.
    pub fn open(dir: &Path, window: Duration) -> Result<DuplicateWindow, DuplicateWindowError> {
        DuplicateWindow::open_with(dir, window, Arc::new(RealFilesystem))
    }

    /// [`DuplicateWindow::open`] with its files read and written through
    /// `fs`: the seam fault tests use to make the disk fail.
    pub fn open_with(
        dir: &Path,
        window: Duration,
        fs: Arc<dyn Filesystem>,
    ) -> Result<DuplicateWindow, DuplicateWindowError> {
        let now = now_epoch_ms();
        let (log, loaded) =
            WindowLog::open(fs, dir, window, now).map_err(|source| DuplicateWindowError::Io {
                dir: dir.to_path_buf(),
                source,
            })?;
        let mut index = Index::default();
        let horizon = now.saturating_sub(window.as_millis() as i64);
        for entry in loaded.entries {
            index.insert(entry, horizon);
        }
        if loaded.corrupt > 0 {
            tracing::warn!(
                dir = %dir.display(),
                corrupt = loaded.corrupt,
                "duplicate window: damaged entries skipped (those ids may be delivered again)"
            );
        }
        Ok(DuplicateWindow {
            window,
            index: Mutex::new(index),
            in_flight: Mutex::default(),
            log: Some(log),
            corrupt: loaded.corrupt,
        })
    }

    /// How long an id is remembered.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.index.lock().ids.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries found damaged when the window was opened.
    pub fn corrupt(&self) -> u64 {
        self.corrupt
    }

    /// How far the message with `id` got within the window, if it was
    /// recorded there; `None` for an empty id.
    pub fn seen(&self, id: &str) -> Option<Mark> {
        if id.is_empty() {
            return None;
        }
        self.seen_digest(digest(id))
    }

    fn seen_digest(&self, digest: u128) -> Option<Mark> {
        let horizon = now_epoch_ms().saturating_sub(self.window.as_millis() as i64);
        let index = self.index.lock();
        index
            .ids
            .get(&digest)
            .filter(|(at, _)| *at >= horizon)
            .map(|(_, mark)| *mark)
    }

    /// Admits a message with `id` from the batch `ack`: a duplicate if the
    /// window holds its id, held if a copy is on its way (then a clone of
    /// `ack` is kept until that copy is recorded), else fresh and on its
    /// way until [`DuplicateWindow::record`] or
    /// [`DuplicateWindow::arrived_unrecorded`] names it.
    pub fn admit(&self, id: &str, ack: &AckRef) -> Verdict {
        if id.is_empty() {
            return Verdict::Fresh;
        }
        let digest = digest(id);
        // Under the in-flight lock, so a recording cannot slip between the
        // two looks (it updates the index before it leaves the table).
        let mut in_flight = self.in_flight.lock();
        if self.seen_digest(digest).is_some() {
            return Verdict::Duplicate;
        }
        match in_flight.admit(digest, ack) {
            Admission::First => Verdict::Fresh,
            Admission::Held => Verdict::Held,
        }
    }

    /// These messages are safe without a recording (a backlog store that
    /// does not survive a crash took them): the copies held behind them
    /// settle now, and later copies are fresh again.
    pub fn arrived_unrecorded<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let digests: Vec<u128> = ids
            .into_iter()
            .filter(|id| !id.is_empty())
            .map(digest)
            .collect();
        self.settle_held(&digests);
    }

    /// Forgets the digests on their way and completes the acks of the
    /// copies held behind them.
    fn settle_held(&self, digests: &[u128]) {
        let held: Vec<AckRef> = {
            let mut in_flight = self.in_flight.lock();
            digests.iter().flat_map(|d| in_flight.arrived(*d)).collect()
        };
        held.into_iter().for_each(AckRef::complete);
    }

    /// Records `ids` with `mark`, durably when the window has a directory,
    /// and returns once they are; then completes the acks of the copies
    /// held behind them. Call it before settling the messages' source acks. An I/O failure is returned after the ids are still
    /// remembered in memory: the caller may settle anyway (nothing is lost,
    /// only a restart's protection against these duplicates).
    pub async fn record<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
        mark: Mark,
    ) -> std::io::Result<()> {
        let at_ms = now_epoch_ms();
        let entries: Vec<Entry> = ids
            .into_iter()
            .filter(|id| !id.is_empty())
            .map(|id| Entry {
                digest: digest(id),
                at_ms,
                mark,
            })
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        let written = match &self.log {
            Some(log) => log.append(&entries).await,
            None => Ok(()),
        };
        let horizon = at_ms.saturating_sub(self.window.as_millis() as i64);
        let digests: Vec<u128> = entries.iter().map(|e| e.digest).collect();
        {
            let mut index = self.index.lock();
            for entry in entries {
                index.insert(entry, horizon);
            }
        }
        self.settle_held(&digests);
        written
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_recorded_id_is_seen_after_a_reopen_and_marks_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(600);
        let w = DuplicateWindow::open(dir.path(), window).unwrap();
        assert_eq!(w.seen("a"), None);
        w.record(["a", "b", ""], Mark::Admitted).await.unwrap();
        w.record(["a"], Mark::Delivered).await.unwrap();
        w.record(["a"], Mark::Admitted).await.unwrap();
        assert_eq!(w.seen("a"), Some(Mark::Delivered));
        assert_eq!(w.seen(""), None);
        drop(w);
        let w = DuplicateWindow::open(dir.path(), window).unwrap();
        assert_eq!(w.seen("a"), Some(Mark::Delivered));
        assert_eq!(w.seen("b"), Some(Mark::Admitted));
        assert_eq!(w.seen("c"), None);
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn ids_past_the_window_or_the_cap_are_forgotten() {
        let mut index = Index::default();
        for i in 0..10 {
            let entry = Entry {
                digest: i,
                at_ms: i as i64,
                mark: Mark::Admitted,
            };
            index.insert(entry, 5);
        }
        let mut kept: Vec<u128> = index.ids.keys().copied().collect();
        kept.sort();
        assert_eq!(kept, vec![5, 6, 7, 8, 9]);
    }
}
