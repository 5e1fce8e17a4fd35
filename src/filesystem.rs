//! The file operations laneway's durable state is written and read back
//! with, behind a trait, so that tests can make them fail the way disks
//! fail (a full disk, EIO on a write, a read or an fsync, a short write)
//! and check that nothing acknowledged is lost, nothing torn is left behind
//! and every failure is reported, naming its file. Everything laneway keeps
//! goes through it: the disk backlog's segments (written by the writer,
//! read back by recovery, the audit and the reader), its ledger and space
//! reserve; the small files replaced whole through the one
//! [`replace_durably`] (the ledger, the JSONL source's checkpoint, the
//! stream sources' stored offsets); the dead-letter file, appended to; and
//! the duplicate window's files.
//!
//! The seam is as narrow as its callers: whole-file reads for the small
//! state files, positioned reads for segments, a directory listing for
//! recovery and the duplicate window, appends for the dead letters, and a
//! private directory for each of them. The input files a source reads and
//! the lock file stay outside it: they are not laneway's durable state.
//!
//! Invariants: [`RealFilesystem`] is a thin pass-through to `std::fs`; files
//! and directories it creates are for their owner only (they hold device
//! data); [`write_all_at`] either writes every byte or returns the error,
//! however the writes beneath it are cut; [`read_at_most`] stops early only
//! at the end of the file; after [`replace_durably`] returns, a crash brings
//! back the new contents, and before, the old ones or the new, never a mix.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One open file: a segment (written by the backlog writer, read back by
/// recovery and the reader), the temporary file of a replace, or the
/// dead-letter file. Which operations make sense depends on how it was
/// opened (see [`Filesystem`]); the others fail as the system would.
pub trait SegmentFile: Send {
    /// Writes some of `buf` at `offset`; returns how many bytes were
    /// written (possibly fewer than asked: a short write).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// Writes some of `buf` at the end of a file opened with
    /// [`Filesystem::open_append`]; returns how many bytes were written.
    fn append(&self, buf: &[u8]) -> io::Result<usize>;
    /// Reads some bytes at `offset` into `buf`; returns how many (0 at the
    /// end of the file). Recovery and the reader read segments with it.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// The file's length: where a segment's readable data ends, where an
    /// append began.
    fn size(&self) -> io::Result<u64>;
    /// Makes the data written so far durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Cuts or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// The file-system operations of laneway's durable state (see the module
/// documentation for who uses which).
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
    /// Opens an existing file for reading only (segments, as recovery, the
    /// audit and the reader read them).
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Opens a file to append to (and read: [`cut_torn_line`] looks at
    /// its end), creating it for its owner only; an existing file readable
    /// by others is narrowed to its owner (the dead-letter file holds
    /// device data).
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Reads a whole small file (the ledger, a checkpoint, a stored
    /// offset); a missing file is `NotFound`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The paths of the entries of `dir`, in no particular order (recovery
    /// finds the segments with it).
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Creates `dir` and its missing parents, each only its owner can
    /// enter; existing ones are left as they are (they may be shared on
    /// purpose).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFilesystem;

impl SegmentFile for File {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        FileExt::write_at(self, buf, offset)
    }

    fn append(&self, buf: &[u8]) -> io::Result<usize> {
        // Opened with O_APPEND: every write lands at the end.
        (&*self).write(buf)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
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

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        Ok(Box::new(File::open(path)?))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .read(true)
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let permissions = file.metadata()?.permissions();
        if permissions.mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(Box::new(file))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
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

/// Reads up to `buf.len()` bytes at `offset`, stopping early only at the
/// end of the file; returns how many were read.
pub fn read_at_most(file: &dyn SegmentFile, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let rest = buf.get_mut(got..).unwrap_or_default();
        match file.read_at(rest, offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Where the whole lines of a line file (JSONL) of `len` bytes end: just
/// past its last newline, or 0 when it has none. Bytes after it are a line
/// a process killed while writing left torn.
pub fn whole_lines_end(file: &dyn SegmentFile, len: u64) -> io::Result<u64> {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let want = chunk.get_mut(..(end - start) as usize).unwrap_or_default();
        let got = read_at_most(file, want, start)?;
        if got < want.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file became shorter while its end was read",
            ));
        }
        if let Some(i) = want.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Cuts a last line without its newline off the end of a line file opened
/// with [`Filesystem::open_append`] (the dead letters); returns how many
/// bytes were cut. A process killed while writing leaves such a line, and
/// its record was never acknowledged, so it comes again whole; appended
/// to, the torn line would glue the next record onto itself.
pub fn cut_torn_line(file: &dyn SegmentFile) -> io::Result<u64> {
    let len = file.size()?;
    let keep = whole_lines_end(file, len)?;
    if keep < len {
        file.set_len(keep)?;
        file.sync_data()?;
    }
    Ok(len - keep)
}

/// Appends all of `buf` to a file opened with [`Filesystem::open_append`]
/// and makes it durable, or leaves the file as it was: when a write or the
/// fsync fails, the file is cut back to where the append began (best
/// effort), so a retry does not leave half a line before the whole one.
pub fn append_durably(file: &dyn SegmentFile, mut buf: &[u8]) -> io::Result<()> {
    let start = file.size()?;
    let written = (|| {
        while !buf.is_empty() {
            match file.append(buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the file system wrote nothing",
                    ));
                }
                Ok(n) => buf = buf.get(n..).unwrap_or_default(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        file.sync_data()
    })();
    if written.is_err() && file.size().is_ok_and(|len| len > start) {
        let _ = file.set_len(start);
    }
    written
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

    #[test]
    fn a_torn_last_line_is_cut_at_every_length_and_whole_lines_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lines");
        // Lines longer than the 64 KiB read chunk, so the search for the
        // last newline crosses chunks.
        let whole = [
            vec![b'a'; 70_000],
            b"\n".to_vec(),
            vec![b'b'; 3],
            b"\n".to_vec(),
        ]
        .concat();
        let torn = vec![b'c'; 140_000];
        for cut in [0, 1, 65_536, 139_999] {
            for before in [&whole[..0], &whole[..70_001], &whole[..]] {
                std::fs::write(&path, [before, &torn[..cut]].concat()).unwrap();
                let file = RealFilesystem.open_append(&path).unwrap();
                assert_eq!(cut_torn_line(file.as_ref()).unwrap(), cut as u64);
                assert_eq!(std::fs::read(&path).unwrap(), before, "cut {cut}");
            }
        }
    }
}
