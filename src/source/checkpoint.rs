//! How far a JSONL file source is done, kept on disk so a restart resumes
//! there instead of at line 1.
//!
//! A checkpoint records a byte offset (and the line number there) below
//! which every line is done: delivered by every group, held durably by
//! every group's backlog, or recorded as a dead letter. It also records
//! fingerprints of the file: the CRC32C of everything below the offset
//! (kept incrementally: each checkpoint reads only the bytes done since the
//! last one), and, as version 1 did, of up to 4 KiB at its start and up to
//! 4 KiB just before the offset. A restart tells the same file from one
//! that was replaced, rewritten (anywhere below the offset, its middle
//! included) or truncated.
//!
//! Invariants:
//! - a checkpoint is written atomically: a temporary file, fsync, rename
//!   over the old one, fsync of the directory; a crash leaves the old
//!   checkpoint or the new one, never a mix;
//! - checkpoint files are created 0600 and their directory 0700 (they name
//!   customer files);
//! - every read and write of a checkpoint goes through a
//!   [`Filesystem`] (the operating system's unless one is given), so fault
//!   tests reach it: a store that fails returns the error and leaves the
//!   previous checkpoint as it was, so no progress is claimed that was not
//!   stored;
//! - a checkpoint that cannot be parsed or whose checksum is wrong is
//!   reported as [`CheckpointError::Damaged`], never trusted: the caller
//!   starts over (duplicates, never a loss);
//! - [`verify`] only says [`Verdict::Resume`] when the file is at least as
//!   long as the offset and every fingerprint matches; a version 1
//!   checkpoint (no whole-prefix fingerprint) is still read and checked as
//!   before, and the next checkpoint written is version 2.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::filesystem::{self, Filesystem, RealFilesystem};

/// A name made safe for a file name: ASCII letters, digits, `.`, `-` and
/// `_` kept, anything else `_`, at most 64 characters. Files laneway keeps
/// beside its data (checkpoints, stream offsets) start with one.
pub(crate) fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// How many bytes each fingerprint covers (fewer when the offset is smaller).
const FINGERPRINT_BYTES: u64 = 4096;

/// The first line of every checkpoint file; the number is the format version.
const MAGIC: &str = "laneway-jsonl-checkpoint 2";
/// The first line of a version 1 checkpoint (no `whole` line), still read.
const MAGIC_V1: &str = "laneway-jsonl-checkpoint 1";
/// Bytes read at once when fingerprinting a span.
const READ_CHUNK: usize = 1 << 20;

/// A place in a file: the byte offset just after a line, and that line's
/// number (1-based; 0 at the start of the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Bytes from the start of the file.
    pub offset: u64,
    /// Lines before `offset`.
    pub line: u64,
}

/// CRC32C of a span of the file, with the span's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Bytes covered.
    pub len: u64,
    /// Their CRC32C.
    pub crc: u32,
}

/// What a checkpoint file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Everything before this position is done.
    pub done: Position,
    /// The file's first bytes.
    pub head: Fingerprint,
    /// The bytes just before `done.offset`.
    pub tail: Fingerprint,
    /// Every byte below `done.offset` (`None` in a version 1 checkpoint).
    pub whole: Option<Fingerprint>,
}

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system refused.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The checkpoint file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint file exists but is not a valid checkpoint.
    #[error("checkpoint {path} is damaged: {reason}")]
    Damaged {
        /// The checkpoint file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The checkpoint of one source file.
#[derive(Clone)]
pub struct Checkpoint {
    path: PathBuf,
    fs: Arc<dyn Filesystem>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The file a source path names, as its checkpoint is keyed: the real
/// path when it exists (links followed), else the absolute one; two
/// spellings of one file (`in.jsonl`, `./in.jsonl`, a link) give one.
pub fn resolved(source: &Path) -> PathBuf {
    std::fs::canonicalize(source)
        .or_else(|_| std::path::absolute(source))
        .unwrap_or_else(|_| source.to_path_buf())
}

impl Checkpoint {
    /// The checkpoint of `source` in `dir`: its name is the file's name
    /// (sanitized) plus the CRC32C of its absolute path, so two files with
    /// the same name in different directories never share a checkpoint, and
    /// the same path always finds its own.
    pub fn for_file(dir: &Path, source: &Path) -> Checkpoint {
        let absolute = resolved(source);
        let crc = crc32c::crc32c(absolute.as_os_str().as_encoded_bytes());
        let stem = file_stem(
            &source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        Checkpoint {
            path: dir.join(format!("{stem}-{crc:08x}.checkpoint")),
            fs: Arc::new(RealFilesystem),
        }
    }

    /// The same checkpoint, read and written through `fs` instead of the
    /// operating system's file system (the seam fault tests use).
    pub fn with_filesystem(mut self, fs: Arc<dyn Filesystem>) -> Checkpoint {
        self.fs = fs;
        self
    }

    /// Where the checkpoint is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> CheckpointError {
        CheckpointError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The saved checkpoint, or `None` when there is none yet.
    pub fn load(&self) -> Result<Option<Saved>, CheckpointError> {
        let text = match self.fs.read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        decode(&text)
            .map(Some)
            .map_err(|reason| CheckpointError::Damaged {
                path: self.path.display().to_string(),
                reason,
            })
    }

    /// Replaces the checkpoint atomically and durably; on an error the
    /// previous checkpoint is still the one on disk.
    pub fn store(&self, saved: &Saved) -> Result<(), CheckpointError> {
        replace_durably(self.fs.as_ref(), &self.path, encode(saved).as_bytes())
            .map_err(|e| self.io(e))
    }
}

/// Replaces `path` with `bytes` atomically and durably through `fs`
/// ([`filesystem::replace_durably`]), creating its directory (0700) when
/// missing. Also used for the stream sources' stored offsets.
pub(crate) fn replace_durably(
    fs: &dyn Filesystem,
    path: &Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs.create_dir_all(dir)?;
    }
    filesystem::replace_durably(fs, path, bytes)
}

fn encode(saved: &Saved) -> String {
    let body = format!(
        "{}\noffset {}\nline {}\nhead {} {:08x}\ntail {} {:08x}\n",
        if saved.whole.is_some() {
            MAGIC
        } else {
            MAGIC_V1
        },
        saved.done.offset,
        saved.done.line,
        saved.head.len,
        saved.head.crc,
        saved.tail.len,
        saved.tail.crc
    );
    let body = match saved.whole {
        Some(w) => format!("{body}whole {} {:08x}\n", w.len, w.crc),
        None => body,
    };
    seal(body)
}

/// `body` with a last line `crc32c XXXXXXXX` of its CRC32C: how laneway's
/// small state files (checkpoints, stream offsets) guard their text.
pub(crate) fn seal(body: String) -> String {
    let crc = crc32c::crc32c(body.as_bytes());
    format!("{body}crc32c {crc:08x}\n")
}

/// The body of text made by [`seal`], once its checksum line is read and
/// matches; why not, otherwise.
pub(crate) fn unseal(bytes: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let crc_at = text
        .rfind("crc32c ")
        .ok_or_else(|| "no checksum line".to_string())?;
    let (body, crc_line) = text.split_at(crc_at);
    let digits = crc_line["crc32c ".len()..]
        .strip_suffix('\n')
        .filter(|d| d.len() == 8 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| "unreadable checksum".to_string())?;
    let stated = u32::from_str_radix(digits, 16).map_err(|_| "unreadable checksum".to_string())?;
    if crc32c::crc32c(body.as_bytes()) != stated {
        return Err("checksum mismatch".into());
    }
    Ok(body)
}

fn decode(bytes: &[u8]) -> Result<Saved, String> {
    let body = unseal(bytes)?;
    let mut lines = body.lines();
    let version = match lines.next() {
        Some(MAGIC) => 2,
        Some(MAGIC_V1) => 1,
        _ => return Err(format!("the first line is not {MAGIC:?}")),
    };
    let mut field = |name: &str| -> Result<Vec<&str>, String> {
        let line = lines.next().ok_or_else(|| format!("no {name} line"))?;
        let mut words = line.split(' ');
        if words.next() != Some(name) {
            return Err(format!("expected a {name} line, found {line:?}"));
        }
        Ok(words.collect())
    };
    let number = |w: Option<&&str>, what: &str| -> Result<u64, String> {
        w.and_then(|w| w.parse().ok())
            .ok_or_else(|| format!("unreadable {what}"))
    };
    let hex = |w: Option<&&str>, what: &str| -> Result<u32, String> {
        w.and_then(|w| u32::from_str_radix(w, 16).ok())
            .ok_or_else(|| format!("unreadable {what}"))
    };
    let offset = number(field("offset")?.first(), "offset")?;
    let line = number(field("line")?.first(), "line")?;
    let head = field("head")?;
    let head = Fingerprint {
        len: number(head.first(), "head length")?,
        crc: hex(head.get(1), "head checksum")?,
    };
    let tail = field("tail")?;
    let tail = Fingerprint {
        len: number(tail.first(), "tail length")?,
        crc: hex(tail.get(1), "tail checksum")?,
    };
    if head.len > offset.min(FINGERPRINT_BYTES) || tail.len > offset.min(FINGERPRINT_BYTES) {
        return Err("a fingerprint is longer than the offset".into());
    }
    let whole = if version == 2 {
        let whole = field("whole")?;
        let whole = Fingerprint {
            len: number(whole.first(), "whole length")?,
            crc: hex(whole.get(1), "whole checksum")?,
        };
        if whole.len != offset {
            return Err("the whole-prefix fingerprint does not end at the offset".into());
        }
        Some(whole)
    } else {
        None
    };
    if lines.next().is_some() {
        return Err("lines after the last field".into());
    }
    Ok(Saved {
        done: Position { offset, line },
        head,
        tail,
        whole,
    })
}

fn crc_of(file: &File, start: u64, len: u64) -> std::io::Result<Fingerprint> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, start)?;
    Ok(Fingerprint {
        len,
        crc: crc32c::crc32c(&buf),
    })
}

/// CRC32C of `[start, end)` of `file`, continuing `crc` (the CRC32C of
/// the bytes before `start`), read in bounded chunks.
fn crc_span(file: &File, start: u64, end: u64, mut crc: u32) -> std::io::Result<u32> {
    let mut buf = vec![0u8; READ_CHUNK.min(end.saturating_sub(start) as usize)];
    let mut at = start;
    while at < end {
        let n = ((end - at) as usize).min(buf.len());
        let chunk = buf.get_mut(..n).unwrap_or_default();
        file.read_exact_at(chunk, at)?;
        crc = crc32c::crc32c_append(crc, chunk);
        at += n as u64;
    }
    Ok(crc)
}

/// The checkpoint for `done` in `file` (read with positioned reads: the
/// file's cursor does not move). Reads every byte below `done`; see
/// [`fingerprint_after`] to read only what is new.
pub fn fingerprint(file: &File, done: Position) -> std::io::Result<Saved> {
    fingerprint_after(file, None, done)
}

/// The checkpoint for `done` in `file`, continuing `last` (an earlier
/// checkpoint of the same file, at or below `done`): only the bytes done
/// since are read for the whole-prefix fingerprint.
pub fn fingerprint_after(
    file: &File,
    last: Option<&Saved>,
    done: Position,
) -> std::io::Result<Saved> {
    let len = done.offset.min(FINGERPRINT_BYTES);
    let (from, crc) = match last.and_then(|l| l.whole.map(|w| (l.done.offset, w))) {
        Some((offset, w)) if offset <= done.offset => (offset, w.crc),
        _ => (0, 0),
    };
    Ok(Saved {
        done,
        head: crc_of(file, 0, len)?,
        tail: crc_of(file, done.offset - len, len)?,
        whole: Some(Fingerprint {
            len: done.offset,
            crc: crc_span(file, from, done.offset, crc)?,
        }),
    })
}

/// Whether a saved checkpoint belongs to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Same file: resume at the saved position.
    Resume(Position),
    /// Not the file the checkpoint was written for (or no longer): why.
    Replaced(String),
}

/// Checks `saved` against `file` as it is now.
pub fn verify(file: &File, saved: &Saved) -> std::io::Result<Verdict> {
    let size = file.metadata()?.len();
    if size < saved.done.offset {
        return Ok(Verdict::Replaced(format!(
            "the file is {size} bytes, shorter than the checkpoint's offset {} (truncated or replaced)",
            saved.done.offset
        )));
    }
    let now = fingerprint(file, saved.done)?;
    if now.head != saved.head {
        return Ok(Verdict::Replaced(
            "the file's first bytes differ from those the checkpoint was written for (replaced or rewritten)".into(),
        ));
    }
    if now.tail != saved.tail {
        return Ok(Verdict::Replaced(format!(
            "the bytes before offset {} differ from those the checkpoint was written for (rewritten)",
            saved.done.offset
        )));
    }
    if saved.whole.is_some() && now.whole != saved.whole {
        return Ok(Verdict::Replaced(format!(
            "the bytes below offset {} differ from those the checkpoint was written for (rewritten in the middle)",
            saved.done.offset
        )));
    }
    Ok(Verdict::Resume(saved.done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn a_stored_checkpoint_loads_back_and_matches_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        let data = file_with(tmp.path(), "in.jsonl", &b"line\n".repeat(2000));
        let cp = Checkpoint::for_file(&tmp.path().join("sources"), &data);
        assert_eq!(cp.load().unwrap(), None);
        let f = File::open(&data).unwrap();
        let saved = fingerprint(
            &f,
            Position {
                offset: 5000,
                line: 1000,
            },
        )
        .unwrap();
        cp.store(&saved).unwrap();
        assert_eq!(cp.load().unwrap(), Some(saved.clone()));
        assert_eq!(verify(&f, &saved).unwrap(), Verdict::Resume(saved.done));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(cp.path()), 0o600);
        assert_eq!(mode(&tmp.path().join("sources")), 0o700);
    }

    #[test]
    fn a_truncated_or_rewritten_file_is_told_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let data = file_with(tmp.path(), "in.jsonl", &b"abcdefghi\n".repeat(1000));
        let f = File::open(&data).unwrap();
        let saved = fingerprint(
            &f,
            Position {
                offset: 6000,
                line: 600,
            },
        )
        .unwrap();
        std::fs::write(&data, b"abcdefghi\n".repeat(100)).unwrap();
        let f = File::open(&data).unwrap();
        assert!(matches!(verify(&f, &saved).unwrap(), Verdict::Replaced(_)));
        let mut other = b"abcdefghi\n".repeat(1000);
        other[5990] = b'X';
        std::fs::write(&data, &other).unwrap();
        let f = File::open(&data).unwrap();
        assert!(matches!(verify(&f, &saved).unwrap(), Verdict::Replaced(_)));
        other[5990] = b'a';
        other[0] = b'X';
        std::fs::write(&data, &other).unwrap();
        let f = File::open(&data).unwrap();
        assert!(matches!(verify(&f, &saved).unwrap(), Verdict::Replaced(_)));
        // Appending to the same file keeps the checkpoint valid.
        let mut grown = b"abcdefghi\n".repeat(1000);
        grown.extend_from_slice(b"more\n");
        std::fs::write(&data, &grown).unwrap();
        let f = File::open(&data).unwrap();
        assert_eq!(verify(&f, &saved).unwrap(), Verdict::Resume(saved.done));
    }

    #[test]
    fn every_damaged_checkpoint_is_refused_never_trusted() {
        let saved = Saved {
            done: Position {
                offset: 123456,
                line: 789,
            },
            head: Fingerprint {
                len: 4096,
                crc: 0xdead_beef,
            },
            tail: Fingerprint { len: 4096, crc: 7 },
            whole: Some(Fingerprint {
                len: 123456,
                crc: 0x0bad_f00d,
            }),
        };
        let good = encode(&saved);
        assert_eq!(decode(good.as_bytes()).unwrap(), saved);
        for i in 0..good.len() {
            let mut bad = good.clone().into_bytes();
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_err(), "a flipped bit at {i} was accepted");
            assert!(
                decode(&good.as_bytes()[..i]).is_err(),
                "a cut at {i} was accepted"
            );
        }
    }

    /// A rewrite of the middle that keeps the first 4 KiB and the 4 KiB
    /// before the offset: only the whole-prefix fingerprint sees it.
    #[test]
    fn a_rewritten_middle_is_told_apart_and_a_version_1_checkpoint_still_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let original = b"0123456789abcdef\n".repeat(4000);
        let data = file_with(tmp.path(), "in.jsonl", &original);
        let f = File::open(&data).unwrap();
        let done = Position {
            offset: 17 * 3000,
            line: 3000,
        };
        // Kept incrementally, in three steps, it equals one read of it all.
        let mut last = None;
        for step in [1000u64, 2000, 3000] {
            let at = Position {
                offset: 17 * step,
                line: step,
            };
            last = Some(fingerprint_after(&f, last.as_ref(), at).unwrap());
        }
        let saved = last.unwrap();
        assert_eq!(saved, fingerprint(&f, done).unwrap());
        let mut rewritten = original.clone();
        rewritten[17 * 1500 + 3] = b'X';
        std::fs::write(&data, &rewritten).unwrap();
        let f = File::open(&data).unwrap();
        assert!(matches!(verify(&f, &saved).unwrap(), Verdict::Replaced(_)));
        // A version 1 checkpoint loads and is checked as it was.
        let v1 = Saved {
            whole: None,
            ..saved.clone()
        };
        let text = encode(&v1);
        assert!(text.starts_with(MAGIC_V1));
        assert_eq!(decode(text.as_bytes()).unwrap(), v1);
        assert_eq!(verify(&f, &v1).unwrap(), Verdict::Resume(done));
    }

    #[test]
    fn names_are_stable_and_distinct_per_path() {
        let dir = Path::new("/data/sources");
        let a = Checkpoint::for_file(dir, Path::new("/x/in put.jsonl"));
        let b = Checkpoint::for_file(dir, Path::new("/y/in put.jsonl"));
        assert_ne!(a.path(), b.path());
        assert_eq!(
            a.path(),
            Checkpoint::for_file(dir, Path::new("/x/in put.jsonl")).path()
        );
        let name = a.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("in_put.jsonl-") && name.ends_with(".checkpoint"));
    }
}
