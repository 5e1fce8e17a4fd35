//! The lock file that keeps a backlog directory to one opener.
//!
//! Invariants: while a [`DirLock`] lives, its process holds an exclusive
//! `flock` on `DIR/lock` (released by the kernel when the process dies, even
//! by SIGKILL, so a crash never leaves a stale lock); the file names the
//! holder's pid, so a second opener's error says who has the directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::backlog::BacklogError;

/// The lock file's name in a backlog directory.
pub const LOCK_FILE: &str = "lock";

/// An exclusive hold on a backlog directory; dropping it releases it.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir`, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, BacklogError> {
        let path = dir.join(LOCK_FILE);
        let io_err = |action: &str, source| BacklogError::Io {
            action: format!("{action} {}", path.display()),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err("opening the lock file", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {holder}")
                };
                return Err(BacklogError::Unavailable(format!(
                    "backlog directory {} is in use by {who} (lock file {}); \
                     each laneway process needs its own backlog directory",
                    dir.display(),
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(io_err("locking", e)),
        }
        let stamp = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| write!(file, "{}", std::process::id()))
            .and_then(|()| file.flush());
        if let Err(e) = stamp {
            // The lock holds regardless; only the holder's name is missing.
            tracing::warn!(path = %path.display(), error = %e, "cannot write the pid into the lock file");
        }
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_opener_is_told_who_holds_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
