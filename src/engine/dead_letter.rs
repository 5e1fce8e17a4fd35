//! Dead letters: messages that can never be delivered, kept with their reason.
//!
//! Invariants: a dead letter is written (and fsync'd, for a file) before the
//! source is acknowledged for it; nothing reaches the dead letters without a
//! reason; the most recent ones stay readable in memory for library users
//! and tests; the file is readable by its owner only (0600, its directories
//! 0700 when laneway creates them), since it holds customer device data.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;

use crate::backoff::Backoff;
use crate::message::Message;

/// How many dead letters stay in memory for [`DeadLetters::recent`].
const RECENT: usize = 10_000;

/// One undeliverable message (or input that never became one).
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Why it can never be delivered.
    pub reason: String,
    /// The group that gave up on it; `None` when it failed at ingest.
    pub group: Option<String>,
    /// Where it came from (file and line, queue, ...), when known.
    pub origin: Option<String>,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The topic, if there was one.
    pub topic: Option<String>,
    /// The message id, if there was one.
    #[serde(rename = "messageId")]
    pub message_id: Option<String>,
    /// The body or raw input, lossily as text.
    pub body: String,
}

impl DeadLetter {
    /// A dead letter for a message a group gave up on.
    pub fn for_message(
        message: &Message,
        group: &str,
        attempts: u32,
        reason: impl Into<String>,
    ) -> DeadLetter {
        DeadLetter {
            reason: reason.into(),
            group: Some(group.to_string()),
            origin: None,
            attempts,
            topic: Some(message.topic().to_string()),
            message_id: Some(message.message_id().to_string()),
            body: body_text(message.payload()),
        }
    }

    /// A dead letter for input that never became a message.
    pub fn for_input(
        raw: &[u8],
        origin: impl Into<String>,
        reason: impl Into<String>,
    ) -> DeadLetter {
        DeadLetter {
            reason: reason.into(),
            group: None,
            origin: Some(origin.into()),
            attempts: 0,
            topic: None,
            message_id: None,
            body: body_text(raw),
        }
    }
}

/// Bodies are kept whole up to this many bytes, then cut (the reason says why).
const BODY_LIMIT: usize = 64 * 1024;

fn body_text(raw: &[u8]) -> String {
    let cut = &raw[..raw.len().min(BODY_LIMIT)];
    String::from_utf8_lossy(cut).into_owned()
}

/// Where dead letters go: an append-only JSONL file, plus the recent ones in memory.
pub struct DeadLetters {
    file: Option<(PathBuf, Mutex<File>)>,
    recent: Mutex<VecDeque<DeadLetter>>,
}

impl DeadLetters {
    /// Dead letters kept only in memory (library use, tests).
    pub fn in_memory() -> Arc<DeadLetters> {
        Arc::new(DeadLetters {
            file: None,
            recent: Mutex::new(VecDeque::new()),
        })
    }

    /// Dead letters appended to a JSONL file, created 0600 (directories
    /// it has to create, 0700). A file that already exists with wider
    /// permissions is narrowed to 0600; existing directories are left as
    /// they are (they may be shared on purpose).
    pub fn to_file(path: &Path) -> std::io::Result<Arc<DeadLetters>> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let permissions = file.metadata()?.permissions();
        if permissions.mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(Arc::new(DeadLetters {
            file: Some((path.to_path_buf(), Mutex::new(file))),
            recent: Mutex::new(VecDeque::new()),
        }))
    }

    /// The file dead letters are written to, if any.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(p, _)| p.as_path())
    }

    /// Records dead letters durably; only after this returns may the source
    /// be acknowledged for them. Retries on I/O errors until it succeeds, since
    /// dropping a dead letter would lose a message.
    pub async fn record(self: &Arc<Self>, letters: Vec<DeadLetter>) {
        if letters.is_empty() {
            return;
        }
        for l in &letters {
            // Optional fields are plain strings when present and left out
            // when absent (not `Some("...")` / `None` debug text).
            tracing::warn!(group = shown(&l.group), origin = shown(&l.origin), topic = shown(&l.topic), reason = %l.reason, "dead letter");
        }
        if self.file.is_some() {
            let mut lines = Vec::new();
            for l in &letters {
                // Serializing a plain struct of strings into a Vec cannot fail.
                let _ = simd_json::to_writer(&mut lines, l);
                lines.push(b'\n');
            }
            let lines = Bytes::from(lines);
            let mut backoff = Backoff::new(
                std::time::Duration::from_millis(10),
                std::time::Duration::from_secs(5),
            );
            loop {
                let me = Arc::clone(self);
                let chunk = lines.clone();
                let written = tokio::task::spawn_blocking(move || me.write_durably(&chunk)).await;
                match written {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => {
                        tracing::error!(path = self.path().map(|p| tracing::field::display(p.display())), error = %e, "cannot write dead letters; retrying")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "dead-letter writer task failed; retrying")
                    }
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
        let mut recent = self.recent.lock();
        for l in letters {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(l);
        }
    }

    fn write_durably(&self, lines: &[u8]) -> std::io::Result<()> {
        if let Some((_, file)) = &self.file {
            let mut f = file.lock();
            f.write_all(lines)?;
            f.sync_data()?;
        }
        Ok(())
    }

    /// The most recent dead letters (up to ten thousand), oldest first.
    pub fn recent(&self) -> Vec<DeadLetter> {
        self.recent.lock().iter().cloned().collect()
    }
}

/// An optional field for a log line: its plain text when present, left out
/// of the line when absent (never `Some("...")` or `None`).
fn shown(value: &Option<String>) -> Option<tracing::field::DisplayValue<&str>> {
    value.as_deref().map(tracing::field::display)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_file_is_0600_and_new_directories_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("data/dead/letters.jsonl");
        let _dead = DeadLetters::to_file(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&tmp.path().join("data/dead")), 0o700);
        assert_eq!(mode(&tmp.path().join("data")), 0o700);

        let open = tmp.path().join("open.jsonl");
        std::fs::write(&open, b"").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _dead = DeadLetters::to_file(&open).unwrap();
        assert_eq!(mode(&open), 0o600);
    }
}
