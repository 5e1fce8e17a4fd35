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
use std::time::Duration;

use crate::backlog::BacklogError;

/// The lock file's name in a backlog directory.
pub const LOCK_FILE: &str = "lock";

/// How long a lock held by this same process is waited for (see
/// [`DirLock::acquire`]), and in what steps.
const OWN_HOLD_PATIENCE: Duration = Duration::from_secs(2);
const OWN_HOLD_STEP: Duration = Duration::from_millis(10);

fn in_use(dir: &Path, path: &Path, holder: &str) -> BacklogError {
    let who = if holder.is_empty() {
        "another process".to_string()
    } else {
        format!("process {holder}")
    };
    BacklogError::Unavailable(format!(
        "backlog directory {} is in use by {who} (lock file {}); \
         each laneway process needs its own backlog directory",
        dir.display(),
        path.display()
    ))
}

/// An exclusive hold on a backlog directory; dropping it releases it.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir`, or says who holds it. A lock this same
    /// process holds is waited for up to two seconds first: a child process
    /// forked while an earlier store of `dir` was open shares that store's
    /// lock until it execs, so reopening right after a close can find it
    /// held for a moment.
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
        let mut waited = Duration::ZERO;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.seek(SeekFrom::Start(0));
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    // Held by this very process: a store of this directory
                    // closed a moment ago whose lock a child process forked
                    // meanwhile still shares until it execs (a `flock` goes
                    // with the open file, which a fork copies). That passes
                    // within milliseconds; a store still open here does not.
                    if holder == std::process::id().to_string() && waited < OWN_HOLD_PATIENCE {
                        std::thread::sleep(OWN_HOLD_STEP);
                        waited += OWN_HOLD_STEP;
                        continue;
                    }
                    return Err(in_use(dir, &path, holder));
                }
                Err(TryLockError::Error(e)) => return Err(io_err("locking", e)),
            }
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
