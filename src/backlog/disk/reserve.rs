//! The space reserve: a file of zeros kept in the backlog directory so that
//! a full disk can always be undone.
//!
//! Freeing space on a full disk itself needs space: a delivered segment may
//! be deleted only once a ledger naming its records released is durable,
//! and saving the ledger writes a new file before the old one goes. When a
//! rotation (or anything else on the volume) took the last free page, the
//! writer would wait for space that only deleting could free. The reserve
//! breaks that circle: the writer gives it up to save the ledger, deletes
//! what was delivered, and takes it back once there is room again.
//!
//! Invariants:
//! - the file is all or nothing: a reserve that could not be written whole
//!   is removed, never left half-made (its size says what it holds);
//! - it is at least [`MIN_RESERVE_BYTES`] and at least twice the last
//!   ledger written, so one ledger save always fits in what it frees;
//! - it holds no data: deleting it by hand loses nothing (it is remade).

use std::io;
use std::path::{Path, PathBuf};

use crate::filesystem::{Filesystem, write_all_at};

/// The reserve's file name in a backlog directory.
pub const RESERVE_FILE: &str = "space.reserve";
/// The smallest reserve: a ledger of a few thousand released ranges.
pub const MIN_RESERVE_BYTES: u64 = 64 * 1024;
/// Reserve sizes are whole pages, as file systems allocate them.
const PAGE: u64 = 4096;

/// The reserve of one backlog directory, as the writer holds it.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    /// Bytes it holds now (0: given up or never made).
    held: u64,
}

impl Reserve {
    /// The reserve of `dir`, as found on disk through `fs` (one that cannot
    /// be read counts as none: it is remade).
    pub fn find(fs: &dyn Filesystem, dir: &Path) -> Reserve {
        let path = dir.join(RESERVE_FILE);
        let held = fs.open_read(&path).and_then(|f| f.size()).unwrap_or(0);
        Reserve { path, held }
    }

    /// Whether it holds space to give up.
    pub fn is_held(&self) -> bool {
        self.held > 0
    }

    /// The size a reserve needs for a ledger of `ledger_len` bytes.
    pub fn needed(ledger_len: u64) -> u64 {
        (ledger_len.saturating_mul(2))
            .max(MIN_RESERVE_BYTES)
            .div_ceil(PAGE)
            .saturating_mul(PAGE)
    }

    /// Gives the space up (removes the file); true if there was some.
    pub fn give_up(&mut self, fs: &dyn Filesystem) -> bool {
        if self.held == 0 {
            return false;
        }
        match fs.remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot remove the backlog space reserve");
                return false;
            }
        }
        self.held = 0;
        true
    }

    /// Makes the reserve hold at least `want` bytes, durably; on failure
    /// (typically a disk still full) leaves no reserve at all.
    pub fn take(&mut self, fs: &dyn Filesystem, want: u64) -> io::Result<()> {
        if self.held >= want {
            return Ok(());
        }
        let zeros = vec![0u8; PAGE as usize * 16];
        let made = fs.create(&self.path).and_then(|f| {
            let mut at = 0;
            while at < want {
                let n = (want - at).min(zeros.len() as u64) as usize;
                write_all_at(f.as_ref(), zeros.get(..n).unwrap_or_default(), at)?;
                at += n as u64;
            }
            f.sync_data()
        });
        match made {
            Ok(()) => {
                self.held = want;
                Ok(())
            }
            Err(e) => {
                self.held = 0;
                let _ = fs.remove_file(&self.path);
                Err(e)
            }
        }
    }
}
