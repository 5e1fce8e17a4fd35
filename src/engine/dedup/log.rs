//! The duplicate window on disk: a directory of append-only files of
//! fixed-size entries, one entry per id a group admitted or delivered.
//!
//! An entry is 29 bytes: the id's 16-byte digest, the time it was recorded
//! (epoch milliseconds, little endian), its [`Mark`], and a CRC32C of those
//! 25 bytes. A run appends to a file of its own (never to one an earlier
//! run may have left torn), and starts a new file once the current one
//! spans half a window; a file whose newest entry is older than the window
//! is deleted. So the disk holds about one and a half windows of ids.
//!
//! Invariants: [`WindowLog::append`] returns only once its entries are
//! fsync'd (many callers, one fsync: whoever takes the file writes what
//! every waiting caller queued); a write goes where the durable entries
//! end, so what a failed one left (a short write, an fsync that lost its
//! pages) is written over by the next and every entry stays aligned;
//! loading never fails on damage: a torn tail is ignored, an entry whose
//! checksum fails is counted and skipped. Its files go through the
//! [`Filesystem`] seam.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::Mark;
use crate::filesystem::{Filesystem, SegmentFile, write_all_at};

/// Bytes of one entry on disk.
pub(super) const ENTRY: usize = 29;
/// A file is closed for appends past this size, whatever its span.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// One id as recorded: its digest, when, and how far it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub digest: u128,
    pub at_ms: i64,
    pub mark: Mark,
}

impl Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.digest.to_le_bytes());
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out.push(self.mark as u8);
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    fn decode(bytes: &[u8; ENTRY]) -> Option<Entry> {
        let (body, crc) = bytes.split_at(ENTRY - 4);
        let crc = u32::from_le_bytes(crc.try_into().ok()?);
        if crc32c::crc32c(body) != crc {
            return None;
        }
        let digest = u128::from_le_bytes(body[..16].try_into().ok()?);
        let at_ms = i64::from_le_bytes(body[16..24].try_into().ok()?);
        let mark = Mark::from_byte(body[24])?;
        Some(Entry {
            digest,
            at_ms,
            mark,
        })
    }
}

/// What loading a window directory found.
pub(super) struct Loaded {
    /// Entries within the window, oldest file first, in file order.
    pub entries: Vec<Entry>,
    /// Entries whose checksum failed (skipped).
    pub corrupt: u64,
}

/// The file being appended to, and the files before it.
struct Files {
    dir: PathBuf,
    /// Locked only by the one writer (who holds `WindowLog::files`), to
    /// hand the file to a blocking task.
    current: Arc<Mutex<Box<dyn SegmentFile>>>,
    current_bytes: u64,
    current_first_ms: Option<i64>,
    next_number: u64,
    /// Closed files with their newest entry's time, oldest first.
    closed: Vec<(PathBuf, i64)>,
    /// The newest entry's time in the current file.
    current_last_ms: i64,
    current_path: PathBuf,
}

/// Entries waiting for the next fsync.
#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    first_ms: Option<i64>,
    last_ms: i64,
    /// Batches queued so far (a ticket each).
    queued: u64,
}

/// A group's duplicate window on disk.
pub(super) struct WindowLog {
    fs: Arc<dyn Filesystem>,
    window: Duration,
    queue: Mutex<Queue>,
    /// The files, and how many queued batches are durable.
    files: tokio::sync::Mutex<(Files, u64)>,
}

fn file_name(number: u64) -> String {
    format!("ids-{number:016}.log")
}

fn file_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("ids-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Creates the file numbered `number` and makes its directory entry
/// durable.
fn create(
    fs: &dyn Filesystem,
    dir: &Path,
    number: u64,
) -> io::Result<(PathBuf, Box<dyn SegmentFile>)> {
    let path = dir.join(file_name(number));
    let file = fs.create_new(&path)?;
    fs.sync_dir(dir)?;
    Ok((path, file))
}

impl WindowLog {
    /// Opens (creating) `dir` through `fs`, reads every entry younger than
    /// `window` as of `now_ms`, deletes files wholly older, and starts a
    /// new file.
    pub fn open(
        fs: Arc<dyn Filesystem>,
        dir: &Path,
        window: Duration,
        now_ms: i64,
    ) -> io::Result<(WindowLog, Loaded)> {
        fs.create_dir_all(dir)?;
        let horizon = now_ms.saturating_sub(window.as_millis() as i64);
        let mut numbered: Vec<(u64, PathBuf)> = fs
            .read_dir(dir)?
            .into_iter()
            .filter_map(|p| file_number(&p).map(|n| (n, p)))
            .collect();
        numbered.sort();
        let mut loaded = Loaded {
            entries: Vec::new(),
            corrupt: 0,
        };
        let mut closed = Vec::new();
        for (_, path) in &numbered {
            let bytes = fs.read(path)?;
            let mut newest = i64::MIN;
            // A last partial entry was torn by a crash: it was never
            // acknowledged to anyone, so it is left out.
            for chunk in bytes.chunks_exact(ENTRY) {
                let Some(entry) = chunk.try_into().ok().and_then(Entry::decode) else {
                    loaded.corrupt += 1;
                    continue;
                };
                newest = newest.max(entry.at_ms);
                if entry.at_ms >= horizon {
                    loaded.entries.push(entry);
                }
            }
            if newest < horizon {
                fs.remove_file(path)?;
            } else {
                closed.push((path.clone(), newest));
            }
        }
        let next = numbered.last().map_or(0, |(n, _)| n + 1);
        let (current_path, current) = create(fs.as_ref(), dir, next)?;
        let files = Files {
            dir: dir.to_path_buf(),
            current: Arc::new(Mutex::new(current)),
            current_bytes: 0,
            current_first_ms: None,
            next_number: next + 1,
            closed,
            current_last_ms: i64::MIN,
            current_path,
        };
        let log = WindowLog {
            fs,
            window,
            queue: Mutex::new(Queue::default()),
            files: tokio::sync::Mutex::new((files, 0)),
        };
        Ok((log, loaded))
    }

    /// Appends `entries` and returns once they are fsync'd, together with
    /// whatever other callers queued meanwhile.
    pub async fn append(&self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let ticket = {
            let mut q = self.queue.lock();
            for e in entries {
                e.encode(&mut q.bytes);
                q.first_ms.get_or_insert(e.at_ms);
                q.last_ms = q.last_ms.max(e.at_ms);
            }
            q.queued += 1;
            q.queued
        };
        let mut guard = self.files.lock().await;
        let (files, durable) = &mut *guard;
        if *durable >= ticket {
            // A caller before us wrote and synced our entries.
            return Ok(());
        }
        let oldest_queued = {
            let q = self.queue.lock();
            q.first_ms.unwrap_or(q.last_ms)
        };
        self.rotate_if_due(files, oldest_queued).await?;
        let (bytes, first_ms, last_ms, upto) = {
            let mut q = self.queue.lock();
            let taken = std::mem::take(&mut *q);
            q.queued = taken.queued;
            (taken.bytes, taken.first_ms, taken.last_ms, taken.queued)
        };
        let file = Arc::clone(&files.current);
        let (at, len) = (files.current_bytes, bytes.len() as u64);
        let written = tokio::task::spawn_blocking(move || {
            // At the end of what is durable, not the file's end: what a
            // failed write left is written over, whole entries aligned.
            let file = file.lock();
            let result = write_all_at(file.as_ref(), &bytes, at).and_then(|()| file.sync_data());
            (result, bytes)
        })
        .await
        .map_err(io::Error::other)?;
        if let (Err(e), bytes) = written {
            // Queued again for whoever comes next, who writes them at the
            // same place: a caller whose entries rode on this write must
            // not take them for durable.
            let mut q = self.queue.lock();
            let later = std::mem::replace(&mut q.bytes, bytes);
            q.bytes.extend_from_slice(&later);
            return Err(e);
        }
        files.current_bytes += len;
        files
            .current_first_ms
            .get_or_insert(first_ms.unwrap_or(last_ms));
        files.current_last_ms = files.current_last_ms.max(last_ms);
        *durable = upto;
        Ok(())
    }

    /// Starts a new file once the current one spans half a window (or is
    /// large), and deletes closed files wholly older than the window.
    async fn rotate_if_due(&self, files: &mut Files, now_ms: i64) -> io::Result<()> {
        let half = (self.window.as_millis() / 2) as i64;
        let due = files.current_bytes >= MAX_FILE_BYTES
            || files
                .current_first_ms
                .is_some_and(|first| now_ms.saturating_sub(first) >= half);
        if !due {
            return Ok(());
        }
        let horizon = now_ms.saturating_sub(self.window.as_millis() as i64);
        let (fs, dir, number) = (Arc::clone(&self.fs), files.dir.clone(), files.next_number);
        let expired: Vec<PathBuf> = files
            .closed
            .iter()
            .filter(|(_, newest)| *newest < horizon)
            .map(|(p, _)| p.clone())
            .collect();
        let (path, file) = tokio::task::spawn_blocking(move || {
            for p in &expired {
                fs.remove_file(p)?;
            }
            create(fs.as_ref(), &dir, number)
        })
        .await
        .map_err(io::Error::other)??;
        files.closed.retain(|(_, newest)| *newest >= horizon);
        let old = std::mem::replace(&mut files.current_path, path);
        files.closed.push((old, files.current_last_ms));
        files.current = Arc::new(Mutex::new(file));
        files.current_bytes = 0;
        files.current_first_ms = None;
        files.current_last_ms = i64::MIN;
        files.next_number += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::filesystem::RealFilesystem;

    fn entry(d: u128, at_ms: i64) -> Entry {
        Entry {
            digest: d,
            at_ms,
            mark: Mark::Admitted,
        }
    }

    #[tokio::test]
    async fn entries_come_back_and_damage_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(600);
        let now = 1_000_000_000;
        let (log, loaded) =
            WindowLog::open(Arc::new(RealFilesystem), dir.path(), window, now).unwrap();
        assert!(loaded.entries.is_empty());
        let written: Vec<Entry> = (0..10).map(|i| entry(i, now + i as i64)).collect();
        log.append(&written).await.unwrap();
        drop(log);
        // Flip a byte of the third entry, and tear a last one.
        let path = dir.path().join(file_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[2 * ENTRY + 3] ^= 0xff;
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, bytes).unwrap();
        let (_, loaded) =
            WindowLog::open(Arc::new(RealFilesystem), dir.path(), window, now).unwrap();
        assert_eq!(loaded.corrupt, 1);
        let mut expected = written.clone();
        expected.remove(2);
        assert_eq!(loaded.entries, expected);
    }

    #[tokio::test]
    async fn files_older_than_the_window_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(10);
        let t0 = 1_000_000_000;
        let (log, _) = WindowLog::open(Arc::new(RealFilesystem), dir.path(), window, t0).unwrap();
        // Each append half a window after the last starts a new file.
        for i in 0..8 {
            log.append(&[entry(i, t0 + i as i64 * 5_000)])
                .await
                .unwrap();
        }
        drop(log);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files <= 4, "{files} files kept for a 10 s window");
        let (_, loaded) =
            WindowLog::open(Arc::new(RealFilesystem), dir.path(), window, t0 + 35_000).unwrap();
        let kept: Vec<u128> = loaded.entries.iter().map(|e| e.digest).collect();
        assert_eq!(kept, vec![5, 6, 7]);
    }
}
