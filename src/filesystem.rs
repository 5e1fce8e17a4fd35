//! The file operations laneway's durable state is written with, behind a
//! trait, so that tests can make them fail the way disks fail (a full
//! disk, EIO on a write or on an fsync, a short write) and check that
//! nothing acknowledged is lost and nothing torn is left behind: the disk
//! backlog's segments, its ledger and space reserve, and every small file
//! replaced whole (the ledger, the JSONL source's checkpoint, the stream
//! sources' stored offsets) through the one [`replace_durably`].
//!
//! Invariants: [`RealFilesystem`] is a thin pass-through to `std::fs`; files
//! it creates are readable by their owner only (they hold device data);
//! [`write_all_at`] either writes every byte or returns the error, however
//! the writes beneath it are cut; after [`replace_durably`] returns, a crash
//! brings back the new contents, and before, the old ones or the new, never
//! a mix.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// One open segment file, as the writer uses it.
pub trait SegmentFile: Send {
    /// Writes some of `buf` at `offset`; returns how many bytes were
    /// written (possibly fewer than asked: a short write).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// Makes the data written so far durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Cuts or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// The file-system operations of the backlog writer.
pub trait Filesystem: Send + Sync + 'static {
    /// Creates a new file (it must not exist), readable by its owner only.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Creates a file, or empties an existing one, readable by its owner
    /// only (the ledger's temporary file, the space reserve).
    fn create(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Renames a file, replacing `to` if it exists (the ledger's atomic
    /// replacement).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (files created, removed, renamed)
    /// durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFilesystem;

impl SegmentFile for File {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        FileExt::write_at(self, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

impl Filesystem for RealFilesystem {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(file))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(file))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        Ok(Box::new(
            OpenOptions::new().read(true).write(true).open(path)?,
        ))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// Writes all of `buf` at `offset`, going on after short writes; an error
/// (or a write of zero bytes, reported as `WriteZero`) ends it.
pub fn write_all_at(file: &dyn SegmentFile, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.write_at(buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the file system wrote nothing",
                ));
            }
            Ok(n) => {
                buf = buf.get(n..).unwrap_or_default();
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically and durably: a temporary file
/// beside it (`<path>.tmp`, created for its owner only), written and
/// fsync'd, renamed over `path`, then an fsync of the directory. A crash
/// leaves the old contents or the new ones, never a mix; a stale temporary
/// file is simply written over by the next replace.
pub fn replace_durably(fs: &dyn Filesystem, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let file = fs.create(&tmp)?;
    write_all_at(file.as_ref(), bytes, 0).and_then(|()| file.sync_data())?;
    drop(file);
    fs.rename(&tmp, path)?;
    fs.sync_dir(dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_replace_leaves_the_new_contents_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        replace_durably(&RealFilesystem, &path, b"first, longer").unwrap();
        replace_durably(&RealFilesystem, &path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!dir.path().join("state.tmp").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "readable by its owner only: {mode:o}");
    }
}
