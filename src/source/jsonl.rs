//! JSONL input from a file or stdin: one envelope per line.
//!
//! Invariants: a malformed line becomes a dead letter naming its file and
//! line number and the run goes on; a line longer than the limit is never
//! held in memory whole (its first bytes are kept for the dead letter, the
//! rest is skipped); blank lines are ignored.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};

use super::{Source, SourceContext, SourceError};
use crate::ack::AckRef;
use crate::engine::Incoming;
use crate::message::parse_envelope;

/// Lines handed to the engine per batch (fewer when input pauses).
const BATCH: usize = 256;

/// Where the lines come from.
#[derive(Debug, Clone)]
pub enum JsonlInput {
    /// A file, read to its end.
    File(PathBuf),
    /// Standard input, read until it closes.
    Stdin,
}

/// Reads JSONL envelopes.
pub struct JsonlSource {
    input: JsonlInput,
    max_line_bytes: usize,
}

impl JsonlSource {
    /// A source reading `input`; lines longer than `max_line_bytes` are dead letters.
    pub fn new(input: JsonlInput, max_line_bytes: usize) -> JsonlSource {
        JsonlSource {
            input,
            max_line_bytes: max_line_bytes.max(64),
        }
    }

    fn label(&self) -> String {
        match &self.input {
            JsonlInput::File(p) => p.display().to_string(),
            JsonlInput::Stdin => "stdin".into(),
        }
    }
}

/// One line as read: its bytes (cut at the limit) and whether it was cut.
struct Line {
    bytes: Vec<u8>,
    oversize: bool,
}

/// Reads one line of at most `limit` bytes kept; returns `None` at the end.
async fn read_line_limited(
    reader: &mut (impl AsyncBufRead + Unpin),
    limit: usize,
) -> std::io::Result<Option<Line>> {
    let mut line = Line {
        bytes: Vec::new(),
        oversize: false,
    };
    let mut read_any = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(read_any.then_some(line));
        }
        read_any = true;
        let (take, done) = match memchr_newline(chunk) {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let content = &chunk[..if done { take - 1 } else { take }];
        let room = limit.saturating_sub(line.bytes.len());
        if content.len() > room {
            line.oversize = true;
        }
        line.bytes
            .extend_from_slice(&content[..content.len().min(room)]);
        reader.consume(take);
        if done {
            return Ok(Some(line));
        }
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

#[async_trait]
impl Source for JsonlSource {
    fn name(&self) -> String {
        self.label()
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let label = self.label();
        let io_err = |source| SourceError::Io {
            origin: label.clone(),
            source,
        };
        let raw: Box<dyn AsyncRead + Unpin + Send> = match &self.input {
            JsonlInput::File(path) => Box::new(tokio::fs::File::open(path).await.map_err(io_err)?),
            JsonlInput::Stdin => Box::new(tokio::io::stdin()),
        };
        let mut reader = BufReader::with_capacity(1 << 16, raw);
        let mut line_no = 0u64;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let next = tokio::select! {
                biased;
                _ = ctx.stop.raised() => break,
                next = read_line_limited(&mut reader, self.max_line_bytes) => next.map_err(io_err)?,
            };
            let Some(line) = next else { break };
            line_no += 1;
            let text = line.bytes.trim_ascii();
            if !text.is_empty() {
                batch.push(if line.oversize {
                    Incoming::Malformed {
                        raw: Bytes::copy_from_slice(&text[..text.len().min(1024)]),
                        origin: format!("{label}:{line_no}"),
                        reason: format!("line is longer than {} bytes", self.max_line_bytes),
                    }
                } else {
                    match parse_envelope(text) {
                        Ok(message) => Incoming::MessageAt {
                            message,
                            line: line_no,
                        },
                        Err(e) => Incoming::Malformed {
                            raw: Bytes::copy_from_slice(text),
                            origin: format!("{label}:{line_no}"),
                            reason: e.to_string(),
                        },
                    }
                });
            }
            // Hand over a full batch, or whatever is there when input pauses.
            if batch.len() >= BATCH || (!batch.is_empty() && reader.buffer().is_empty()) {
                ctx.ingest
                    .submit(std::mem::take(&mut batch), AckRef::none())
                    .await;
            }
        }
        if !batch.is_empty() {
            ctx.ingest.submit(batch, AckRef::none()).await;
        }
        tracing::info!(source = %label, lines = line_no, "input finished");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_cut_and_flagged_and_the_next_line_is_intact() {
        let input = format!("{}\nshort\nlast-without-newline", "x".repeat(1000));
        let mut reader = BufReader::with_capacity(64, input.as_bytes());
        let first = read_line_limited(&mut reader, 100).await.unwrap().unwrap();
        assert!(first.oversize);
        assert_eq!(first.bytes.len(), 100);
        let second = read_line_limited(&mut reader, 100).await.unwrap().unwrap();
        assert_eq!(second.bytes, b"short");
        assert!(!second.oversize);
        let third = read_line_limited(&mut reader, 100).await.unwrap().unwrap();
        assert_eq!(third.bytes, b"last-without-newline");
        assert!(read_line_limited(&mut reader, 100).await.unwrap().is_none());
    }
}
