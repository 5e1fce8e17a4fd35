//! Dead letters: messages that can never be delivered, kept with their reason.
//!
//! Invariants: a dead letter is written (and fsync'd, for a file) before the
//! source is acknowledged for it; nothing reaches the dead letters without a
//! reason; the most recent ones stay readable in memory for library users
//! and tests; the file is readable by its owner only (0600, its directories
//! 0700 when laneway creates them), since it holds customer device data; a
//! dead letter's body (and a message's key and headers) are kept exactly:
//! whole, and as `bodyBase64` when they are not UTF-8, never converted; a
//! write that fails is retried until it succeeds (dropping a dead letter
//! would lose a message), and leaves no part of a line behind (the file is
//! cut back to where the failed write began), and a file found ending in a
//! torn line when opened (a run killed while writing it) is cut back to its
//! last whole line, since that letter's message was never acknowledged; the
//! file is opened and written through a [`Filesystem`] (the operating
//! system's unless one is given), so fault tests reach it.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::filesystem::{Filesystem, RealFilesystem, SegmentFile, append_durably, cut_torn_line};
use crate::message::{Extras, Message, write_base64, write_extras, write_json_string};

/// How many dead letters stay in memory for [`DeadLetters::recent`].
const RECENT: usize = 10_000;

/// One undeliverable message (or input that never became one).
///
/// In the file, one JSON object a line: `reason`, `group`, `origin`,
/// `attempts`, `topic`, `messageId`, `generateTime` (a message's, in
/// milliseconds; `null` for input that never became one), then a message's `key` (or
/// `keyBase64`) and `headers` when it had them (as in the JSONL envelope),
/// and last the body: `body`, a string, when it is UTF-8, else
/// `bodyBase64`; either way its exact bytes.
#[derive(Debug, Clone)]
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
    pub message_id: Option<String>,
    /// The message's generate time (epoch milliseconds), if there was one:
    /// a dead letter is the message's only copy once its source is
    /// acknowledged, so it keeps every field.
    pub generate_time_ms: Option<i64>,
    /// A message's key and extra headers, when it had any.
    pub extras: Option<Extras>,
    /// The body or raw input, exactly (shared with the message, not copied).
    pub body: Bytes,
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
            generate_time_ms: Some(message.generate_time_ms()),
            extras: message.extras().cloned(),
            body: message.payload().clone(),
        }
    }

    /// A dead letter for input that never became a message.
    pub fn for_input(
        raw: impl Into<Bytes>,
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
            generate_time_ms: None,
            extras: None,
            body: raw.into(),
        }
    }

    /// Appends this dead letter as one line of the file (see [`DeadLetter`]).
    pub fn write_line(&self, out: &mut Vec<u8>) {
        let text = |out: &mut Vec<u8>, name: &str, value: Option<&str>| {
            write_json_string(out, name);
            out.push(b':');
            match value {
                Some(v) => write_json_string(out, v),
                None => out.extend_from_slice(b"null"),
            }
            out.push(b',');
        };
        out.push(b'{');
        text(out, "reason", Some(&self.reason));
        text(out, "group", self.group.as_deref());
        text(out, "origin", self.origin.as_deref());
        // Writing to a Vec cannot fail.
        let _ = write!(out, "\"attempts\":{},", self.attempts);
        text(out, "topic", self.topic.as_deref());
        write_json_string(out, "messageId");
        out.push(b':');
        match &self.message_id {
            Some(id) => write_json_string(out, id),
            None => out.extend_from_slice(b"null"),
        }
        match self.generate_time_ms {
            Some(ms) => {
                let _ = write!(out, ",\"generateTime\":{ms}");
            }
            None => out.extend_from_slice(b",\"generateTime\":null"),
        }
        if let Some(extras) = &self.extras {
            write_extras(out, extras);
        }
        match std::str::from_utf8(&self.body) {
            Ok(body) => {
                out.extend_from_slice(b",\"body\":");
                write_json_string(out, body);
            }
            Err(_) => {
                out.extend_from_slice(b",\"bodyBase64\":");
                write_base64(out, &self.body);
            }
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Where dead letters go: an append-only JSONL file, plus the recent ones in memory.
pub struct DeadLetters {
    file: Option<(PathBuf, Mutex<Box<dyn SegmentFile>>)>,
    recent: Mutex<VecDeque<DeadLetter>>,
    /// Cancelled when a shutdown's grace is over: a write still failing
    /// then gives up (see [`DeadLetters::record`]).
    give_up: CancellationToken,
}

/// Dead letters that were not written: retrying was given up at shutdown.
/// Their messages must stay unacknowledged, so their source keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("dead letters not written: the shutdown's grace ran out while their file failed")]
pub struct NotWritten;

impl DeadLetters {
    /// Dead letters kept only in memory (library use, tests).
    pub fn in_memory() -> Arc<DeadLetters> {
        Arc::new(DeadLetters {
            file: None,
            recent: Mutex::new(VecDeque::new()),
            give_up: CancellationToken::new(),
        })
    }

    /// Dead letters appended to a JSONL file, created 0600 (directories
    /// it has to create, 0700). A file that already exists with wider
    /// permissions is narrowed to 0600; existing directories are left as
    /// they are (they may be shared on purpose).
    pub fn to_file(path: &Path) -> std::io::Result<Arc<DeadLetters>> {
        DeadLetters::to_file_with(path, &RealFilesystem)
    }

    /// Dead letters appended to a JSONL file opened and written through
    /// `fs` (see [`DeadLetters::to_file`]): the seam fault tests use to make
    /// the writes fail.
    pub fn to_file_with(path: &Path, fs: &dyn Filesystem) -> std::io::Result<Arc<DeadLetters>> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs.create_dir_all(dir)?;
        }
        let file = fs.open_append(path)?;
        let cut = cut_torn_line(file.as_ref())?;
        if cut > 0 {
            tracing::warn!(path = %path.display(), cut_bytes = cut,
                "the dead-letter file ended in a torn line (a run stopped while writing it); cut it off, its message is dead-lettered again");
        }
        Ok(Arc::new(DeadLetters {
            file: Some((path.to_path_buf(), Mutex::new(file))),
            recent: Mutex::new(VecDeque::new()),
            give_up: CancellationToken::new(),
        }))
    }

    /// The file dead letters are written to, if any.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(p, _)| p.as_path())
    }

    /// Records dead letters durably; only after it returns `Ok` may the
    /// source be acknowledged for them. Retries on I/O errors until it
    /// succeeds, since dropping a dead letter would lose a message; each
    /// failure is logged, naming the file, and leaves no part of a line in
    /// it. Once [`DeadLetters::give_up_retrying`] was called (a shutdown
    /// whose grace is over), a failed write returns [`NotWritten`]: the
    /// caller then leaves the messages' acks unsettled, so the run can end
    /// and the source reads them again.
    pub async fn record(self: &Arc<Self>, letters: Vec<DeadLetter>) -> Result<(), NotWritten> {
        if letters.is_empty() {
            return Ok(());
        }
        for l in &letters {
            // Optional fields are plain strings when present and left out
            // when absent (not `Some("...")` / `None` debug text).
            tracing::warn!(group = shown(&l.group), origin = shown(&l.origin), topic = shown(&l.topic), reason = %l.reason, "dead letter");
        }
        if self.file.is_some() {
            let mut lines = Vec::new();
            for l in &letters {
                l.write_line(&mut lines);
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
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = self.give_up.cancelled() => {
                        tracing::error!(path = self.path().map(|p| tracing::field::display(p.display())), letters = letters.len(),
                            "shutting down while dead letters cannot be written: their messages stay unacknowledged, and their source delivers them again");
                        return Err(NotWritten);
                    }
                }
            }
        }
        let mut recent = self.recent.lock();
        for l in letters {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(l);
        }
        Ok(())
    }

    /// Makes a [`DeadLetters::record`] whose write fails give up instead of
    /// retrying, from now on (the engine calls it when a shutdown's grace
    /// is over; a library that runs a second engine on the same dead
    /// letters makes them anew).
    pub fn give_up_retrying(&self) {
        self.give_up.cancel();
    }

    fn write_durably(&self, lines: &[u8]) -> std::io::Result<()> {
        if let Some((_, file)) = &self.file {
            append_durably(file.lock().as_ref(), lines)?;
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

    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn bodies_keys_and_headers_are_written_exactly() {
        use crate::message::{Header, parse_envelope};
        let raw = Bytes::from_static(b"\xff\0{\"a\":1}");
        let mut line = Vec::new();
        DeadLetter::for_input(raw.clone(), "q", "no topic").write_line(&mut line);
        let value = simd_json::to_owned_value(&mut line.clone()).unwrap();
        assert_eq!(
            value["bodyBase64"],
            "/wB7ImEiOjF9",
            "{}",
            line.escape_ascii()
        );
        assert_eq!(value["topic"], ());
        let message = Message::new("/pk/dn/thing/lifecycle", "m\"1", 3, raw.clone())
            .unwrap()
            .with_extras(Extras {
                key: Some(Bytes::from_static(b"\x80k")),
                headers: vec![Header::new("h", &b"v"[..])],
            });
        let mut line = Vec::new();
        DeadLetter::for_message(&message, "g", 2, "invalid JSON").write_line(&mut line);
        // A message's dead letter reads back as an envelope would (the
        // body standing for the payload): every byte is there.
        let text = String::from_utf8(line.clone()).unwrap();
        let as_envelope = text.replace("\"bodyBase64\"", "\"payloadBase64\"");
        let back = parse_envelope(as_envelope.trim_end().as_bytes())
            .unwrap_or_else(|e| panic!("{e}: {as_envelope}"));
        assert_eq!(back.generate_time_ms(), 3);
        assert_eq!(back.payload(), &raw);
        assert_eq!(back.message_id(), "m\"1");
        assert_eq!(back.extras(), message.extras());
        let mut line = Vec::new();
        DeadLetter::for_input(Bytes::from_static("caf\u{e9}\n".as_bytes()), "f:1", "x")
            .write_line(&mut line);
        let value = simd_json::to_owned_value(&mut line).unwrap();
        assert_eq!(value["body"], "caf\u{e9}\n");
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
