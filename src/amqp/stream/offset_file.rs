//! The stored offset of a stream source: a small file laneway owns, saying
//! which stream it belongs to and the offset below which every record is
//! done (delivered by every group, held durably by a backlog, or recorded
//! as a dead letter).
//!
//! Invariants:
//! - the file is replaced atomically and durably (temporary file, fsync,
//!   rename, fsync of the directory, as the JSONL source's checkpoint is);
//!   a crash leaves the old offset or the new one;
//! - a file whose checksum is wrong or that cannot be parsed is
//!   [`OffsetFileError::Damaged`], never trusted;
//! - a file written for another stream is refused
//!   ([`OffsetFileError::OtherStream`]): two sources never share an offset;
//! - it is read and written through a [`Filesystem`] (the operating
//!   system's unless one is given), so fault tests reach it: a store that
//!   fails returns the error and leaves the offset stored before.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::filesystem::{Filesystem, RealFilesystem};
use crate::source::checkpoint::{file_stem, replace_durably, seal, unseal};

/// The first line of every offset file; the number is the format version.
const MAGIC: &str = "laneway-stream-offset 1";

/// Why a stored offset could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OffsetFileError {
    /// The file system refused.
    #[error("stream offset file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a valid offset file.
    #[error("stream offset file {path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file belongs to another stream (a copied or shared file).
    #[error("stream offset file {path} belongs to stream {found:?}, not {expected:?}")]
    OtherStream {
        /// The file.
        path: String,
        /// The stream named in the file.
        found: String,
        /// The stream this source reads.
        expected: String,
    },
}

/// Where one stream's offset is kept.
#[derive(Clone)]
pub struct OffsetFile {
    path: PathBuf,
    stream: String,
    fs: Arc<dyn Filesystem>,
}

impl std::fmt::Debug for OffsetFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetFile")
            .field("path", &self.path)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl OffsetFile {
    /// The offset file of `stream` at `path`.
    pub fn at(path: PathBuf, stream: &str) -> OffsetFile {
        OffsetFile {
            path,
            stream: stream.to_string(),
            fs: Arc::new(RealFilesystem),
        }
    }

    /// The same file, read and written through `fs` instead of the
    /// operating system's file system (the seam fault tests use).
    pub fn with_filesystem(mut self, fs: Arc<dyn Filesystem>) -> OffsetFile {
        self.fs = fs;
        self
    }

    /// The default file for `stream` in `dir`: named after the stream
    /// (sanitized) and the CRC32C of `identity` (broker, virtual host and
    /// stream), so two brokers' streams of the same name never share one.
    pub fn in_dir(dir: &Path, stream: &str, identity: &str) -> OffsetFile {
        let crc = crc32c::crc32c(identity.as_bytes());
        let stem = file_stem(stream);
        OffsetFile::at(dir.join(format!("stream-{stem}-{crc:08x}.offset")), stream)
    }

    /// Where the offset is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored offset, or `None` when there is none yet.
    pub fn load(&self) -> Result<Option<u64>, OffsetFileError> {
        let bytes = match self.fs.read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(OffsetFileError::Io {
                    path: self.path.display().to_string(),
                    source,
                });
            }
        };
        let (stream, offset) = decode(&bytes).map_err(|reason| OffsetFileError::Damaged {
            path: self.path.display().to_string(),
            reason,
        })?;
        if stream != self.stream {
            return Err(OffsetFileError::OtherStream {
                path: self.path.display().to_string(),
                found: stream,
                expected: self.stream.clone(),
            });
        }
        Ok(Some(offset))
    }

    /// Replaces the stored offset atomically and durably (blocking: call it
    /// off the runtime's worker threads); on an error the offset stored
    /// before is still the one on disk.
    pub fn store(&self, offset: u64) -> Result<(), OffsetFileError> {
        let bytes = encode(&self.stream, offset);
        replace_durably(self.fs.as_ref(), &self.path, bytes.as_bytes()).map_err(|source| {
            OffsetFileError::Io {
                path: self.path.display().to_string(),
                source,
            }
        })
    }
}

fn encode(stream: &str, offset: u64) -> String {
    seal(format!("{MAGIC}\nstream {stream}\noffset {offset}\n"))
}

fn decode(bytes: &[u8]) -> Result<(String, u64), String> {
    let body = unseal(bytes)?;
    let mut lines = body.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!("the first line is not {MAGIC:?}"));
    }
    let stream = lines
        .next()
        .and_then(|l| l.strip_prefix("stream "))
        .ok_or_else(|| "no stream line".to_string())?;
    let offset = lines
        .next()
        .and_then(|l| l.strip_prefix("offset "))
        .and_then(|o| o.parse().ok())
        .ok_or_else(|| "no readable offset line".to_string())?;
    if lines.next().is_some() {
        return Err("unexpected lines after the offset".into());
    }
    Ok((stream.to_string(), offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_offset_loads_back_and_belongs_to_its_stream() {
        let tmp = tempfile::tempdir().unwrap();
        let file = OffsetFile::in_dir(&tmp.path().join("sources"), "in s/1", "h:5672/%2f/in s/1");
        assert_eq!(file.load().unwrap(), None);
        file.store(123_456).unwrap();
        assert_eq!(file.load().unwrap(), Some(123_456));
        file.store(200_000).unwrap();
        assert_eq!(file.load().unwrap(), Some(200_000));
        let name = file
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with("stream-in_s_1-") && name.ends_with(".offset"));
        let other = OffsetFile::at(file.path().to_path_buf(), "another");
        assert!(matches!(
            other.load(),
            Err(OffsetFileError::OtherStream { .. })
        ));
    }

    #[test]
    fn every_damaged_offset_file_is_refused() {
        let good = encode("s", 987_654_321);
        assert_eq!(decode(good.as_bytes()).unwrap(), ("s".into(), 987_654_321));
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
}
