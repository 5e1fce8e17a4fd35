//! JSONL input from a file or stdin: one envelope per line.
//!
//! A file source remembers how far it is done. Each batch it hands to the
//! engine is registered with an [`AckTracker`]; the batch's end offset is
//! done once every group has delivered its messages, holds them durably in
//! its backlog, or has recorded them as dead letters. A checkpoint of the
//! contiguous done offset (see [`super::checkpoint`]) is written every
//! [`CHECKPOINT_EVERY`] while it moves, and once more when the source ends;
//! a restart resumes there. Lines past the checkpoint that were already
//! delivered before a crash are delivered again (at least once, never lost).
//!
//! Standard input cannot be read twice: lines read from stdin and not yet
//! done when the process is killed are lost. A graceful stop (Ctrl-C,
//! `--duration`, end of input) loses nothing: the source holds intake open
//! (see [`crate::source::Ingest::hold`]) until it has handed in every line it
//! read (those in its buffer, the batch it was assembling, and a last line
//! cut short by the stop), for at most [`HANDOVER_LIMIT`]; the engine then
//! moves what the live lanes hold to the backlog before it exits.
//!
//! Invariants: the checkpoint never passes a line that is not done; a last
//! line without its newline is never covered by the checkpoint (the file may
//! still be growing), so it is read again after a restart, and when it is
//! not a whole envelope yet (a writer mid-line) it is left for then, never
//! made a dead letter; a checkpoint written for another file (truncated
//! below the offset, or any byte below it changed) is reported with a
//! warning and the file is read from line 1; a checkpoint is written only
//! while the bytes on disk below its offset are the bytes the reader read
//! (their CRC32C, kept as they are read), so a file rewritten in place
//! under the reader is never resumed past lines no run read; a malformed
//! line becomes a dead letter naming its file and line number and the run
//! goes on; a line longer than the limit is never held in memory whole (its
//! first bytes are kept for the dead letter, the rest is skipped); blank
//! lines are ignored.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};

use super::Incoming;
use super::checkpoint::{self, Checkpoint, CheckpointError, Position, Verdict};
use super::{Positions, Source, SourceContext, SourceError, SourceHealth};
use crate::ack::{AckRef, AckTracker};
use crate::filesystem::{Filesystem, RealFilesystem};
use crate::message::parse_envelope;
use tokio_util::sync::CancellationToken;

/// Lines handed to the engine per batch (fewer when input pauses).
const BATCH: usize = 256;

/// How often a file source's checkpoint is written while its done offset
/// moves: a restart after a crash reads again at most what was done in
/// this long, plus what was in flight.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

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
    checkpoint_dir: Option<PathBuf>,
    fs: Arc<dyn Filesystem>,
}

impl JsonlSource {
    /// A source reading `input`; lines longer than `max_line_bytes` are dead
    /// letters. It keeps no checkpoint until [`JsonlSource::checkpoint_in`]
    /// says where (`laneway run` always does).
    pub fn new(input: JsonlInput, max_line_bytes: usize) -> JsonlSource {
        JsonlSource {
            input,
            max_line_bytes: max_line_bytes.max(64),
            checkpoint_dir: None,
            fs: Arc::new(RealFilesystem),
        }
    }

    /// Reads and writes the checkpoint through `fs` instead of the
    /// operating system's file system: the seam fault tests use to make a
    /// checkpoint fail to load or store. The input file itself is read
    /// directly (it is not laneway's state).
    pub fn with_filesystem(mut self, fs: Arc<dyn Filesystem>) -> JsonlSource {
        self.fs = fs;
        self
    }

    /// Keeps a file source's checkpoint in `dir` (created 0700 when first
    /// written), so a restart resumes where the last run was done. Stdin
    /// keeps none: it cannot be read again.
    pub fn checkpoint_in(mut self, dir: impl Into<PathBuf>) -> JsonlSource {
        self.checkpoint_dir = Some(dir.into());
        self
    }

    /// Where this source's checkpoint is kept, if it keeps one.
    pub fn checkpoint_path(&self) -> Option<PathBuf> {
        match (&self.input, &self.checkpoint_dir) {
            (JsonlInput::File(file), Some(dir)) => {
                Some(Checkpoint::for_file(dir, file).path().to_path_buf())
            }
            _ => None,
        }
    }

    fn label(&self) -> String {
        match &self.input {
            JsonlInput::File(p) => p.display().to_string(),
            JsonlInput::Stdin => "stdin".into(),
        }
    }
}

/// How long a stopped source may take to hand in what it has read (a
/// backlog that stays full would otherwise hold the shutdown up); lines of
/// standard input still not handed in then are reported lost.
pub const HANDOVER_LIMIT: Duration = Duration::from_secs(10);

/// How long a stopped stdin source waits for a read already under way to
/// finish (its bytes are out of the pipe: they must be handed in).
const STDIN_SETTLE: Duration = Duration::from_millis(100);

/// One line as read: its bytes (cut at the limit) and whether it was cut.
#[derive(Default)]
struct Line {
    bytes: Vec<u8>,
    oversize: bool,
    /// Bytes consumed from the input, newline included.
    consumed: u64,
    /// Whether it ended with a newline (not only with the end of input).
    terminated: bool,
    /// CRC32C of every byte consumed from where the reader started (the
    /// resumed prefix included) through this line, as read.
    crc: u32,
}

impl Line {
    /// An empty line that starts where the bytes read so far have `crc`.
    fn after(crc: u32) -> Line {
        Line {
            crc,
            ..Line::default()
        }
    }

    /// Takes the line read so far, leaving an empty one that starts after it.
    fn take(&mut self) -> Line {
        let next = Line::after(self.crc);
        std::mem::replace(self, next)
    }
}

/// How far the reader has read: the position after the last whole line,
/// and the CRC32C of every byte below it as the reader read them. The
/// checkpoint compares it with the file on disk, so that it never vouches
/// for bytes that were rewritten after they were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ReadTo {
    at: Position,
    crc: u32,
}

/// Reads one line of at most `limit` bytes kept; returns `None` at the end.
///
/// Cancel-safe: the part of a line read so far is kept in `partial`, so a
/// stop while a line is half read loses none of its bytes.
async fn read_line_limited(
    reader: &mut (impl AsyncBufRead + Unpin),
    limit: usize,
    partial: &mut Line,
) -> std::io::Result<Option<Line>> {
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok((partial.consumed > 0).then(|| partial.take()));
        }
        let (take, done) = absorb(partial, chunk, limit);
        reader.consume(take);
        if done {
            return Ok(Some(partial.take()));
        }
    }
}

/// Adds `chunk`'s bytes up to and including the first newline to `line`;
/// returns how many bytes it took and whether the line is now whole.
fn absorb(line: &mut Line, chunk: &[u8], limit: usize) -> (usize, bool) {
    let (take, done) = match memchr_newline(chunk) {
        Some(i) => (i + 1, true),
        None => (chunk.len(), false),
    };
    let content = chunk
        .get(..if done { take - 1 } else { take })
        .unwrap_or_default();
    let room = limit.saturating_sub(line.bytes.len());
    if content.len() > room {
        line.oversize = true;
    }
    line.bytes
        .extend_from_slice(content.get(..content.len().min(room)).unwrap_or_default());
    line.consumed += take as u64;
    line.crc = crc32c::crc32c_append(line.crc, chunk.get(..take).unwrap_or_default());
    line.terminated = done;
    (take, done)
}

/// Takes every line already in `reader`'s buffer, without reading more,
/// and then the line the buffer ends inside (cut short by a stop).
fn buffered_lines(
    reader: &mut BufReader<Box<dyn AsyncRead + Unpin + Send>>,
    limit: usize,
    partial: &mut Line,
) -> Vec<Line> {
    let mut out = Vec::new();
    loop {
        let chunk = reader.buffer();
        if chunk.is_empty() {
            break;
        }
        let (take, done) = absorb(partial, chunk, limit);
        reader.consume(take);
        if done {
            out.push(partial.take());
        }
    }
    if partial.consumed > 0 {
        out.push(partial.take());
    }
    out
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// A file source's acknowledgement state, shared by the reader (which
/// registers each batch with the position after its last line) and the
/// checkpoint task (which takes the done ones).
#[derive(Clone, Default)]
struct Progress(Arc<Mutex<Positions<ReadTo>>>);

impl Progress {
    /// Registers a batch ending at `end` and returns its reference.
    fn register(&self, end: ReadTo) -> AckRef {
        self.0.lock().register(end)
    }

    /// The end of the newest batch now done, if any batch became done.
    fn take_last_done(&self) -> Option<ReadTo> {
        self.0.lock().take_last_done()
    }

    fn tracker(&self) -> Arc<AckTracker> {
        Arc::clone(self.0.lock().tracker())
    }
}

/// Writes the checkpoint while the done offset moves, and a last time when
/// `finish` (the reader is done) or `drained` (the engine has settled
/// everything it will) is raised. Runs beside the reader so a reader
/// waiting on backpressure, even one a shutdown leaves waiting, does not
/// hold the checkpoint back.
async fn keep_checkpoint(
    checkpoint: Checkpoint,
    file: std::fs::File,
    progress: Progress,
    resumed: (ReadTo, Option<checkpoint::Saved>),
    finish: CancellationToken,
    drained: CancellationToken,
    health: SourceHealth,
) {
    let (mut done, resumed) = resumed;
    health.acknowledges();
    let mut written = done;
    // The last checkpoint written (or resumed from): the next one continues
    // its whole-prefix fingerprint instead of reading the file again.
    let mut last_saved = resumed;
    let mut failing = false;
    // Set once the file on disk is found to differ from what was read:
    // no checkpoint can be written for this run after that.
    let mut diverged = false;
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let file = Arc::new(file);
    loop {
        let last = tokio::select! {
            _ = finish.cancelled() => true,
            _ = drained.cancelled() => true,
            _ = tick.tick() => false,
        };
        if let Some(end) = progress.take_last_done() {
            done = end;
        }
        if done != written && !diverged {
            let (cp, f, last) = (checkpoint.clone(), Arc::clone(&file), last_saved.clone());
            let result = tokio::task::spawn_blocking(move || {
                let saved = checkpoint::fingerprint_after(&f, last.as_ref(), done.at).map_err(
                    |source| CheckpointError::Io {
                        path: cp.path().display().to_string(),
                        source,
                    },
                )?;
                if saved.whole.map(|w| w.crc) != Some(done.crc) {
                    return Ok(None);
                }
                cp.store(&saved).map(|()| Some(saved))
            })
            .await;
            match result {
                Ok(Ok(None)) => {
                    tracing::error!(checkpoint = %checkpoint.path().display(), offset = done.at.offset,
                        "the file's bytes below this offset are not the ones read (rewritten in place while it was read); \
                         no checkpoint is written for the rest of this run, so a restart reads it again from the last one written");
                    diverged = true;
                }
                Ok(Ok(Some(saved))) => {
                    last_saved = Some(saved);
                    if failing {
                        tracing::info!(checkpoint = %checkpoint.path().display(), "checkpoint written again");
                    }
                    failing = false;
                    health.acked(done.at.line.saturating_sub(written.at.line));
                    written = done;
                }
                Ok(Err(e)) => {
                    if !failing {
                        tracing::error!(error = %e, "cannot write the checkpoint; a restart will read again from the last one written");
                    }
                    failing = true;
                }
                Err(e) => tracing::error!(error = %e, "the checkpoint writer failed"),
            }
        }
        if last {
            tracing::info!(checkpoint = %checkpoint.path().display(), offset = written.at.offset, line = written.at.line, "checkpoint at the end of the run");
            return;
        }
    }
}

/// Opens `path`, and finds where to start from its checkpoint.
/// Also returns the checkpoint resumed from, if any.
fn open_at_checkpoint(
    path: &Path,
    checkpoint: Option<&Checkpoint>,
) -> Result<(std::fs::File, ReadTo, Option<checkpoint::Saved>), SourceError> {
    let origin = || path.display().to_string();
    let io_err = |source| SourceError::Io {
        origin: origin(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let Some(checkpoint) = checkpoint else {
        return Ok((file, ReadTo::default(), None));
    };
    let (start, resumed) = match checkpoint.load() {
        Ok(None) => (Position::default(), None),
        Ok(Some(saved)) => match checkpoint::verify(&file, &saved).map_err(io_err)? {
            Verdict::Resume(at) => {
                tracing::info!(source = %origin(), offset = at.offset, line = at.line,
                    "resuming after the checkpoint");
                (at, Some(saved))
            }
            Verdict::Replaced(why) => {
                tracing::warn!(source = %origin(), checkpoint = %checkpoint.path().display(),
                    "{why}: the checkpoint does not belong to this file; reading it from line 1");
                (Position::default(), None)
            }
        },
        Err(CheckpointError::Damaged { path, reason }) => {
            tracing::warn!(source = %origin(), checkpoint = %path,
                "the checkpoint is damaged ({reason}); reading the file from line 1");
            (Position::default(), None)
        }
        Err(e) => {
            return Err(SourceError::Origin {
                origin: origin(),
                message: e.to_string(),
            });
        }
    };
    file.seek(SeekFrom::Start(start.offset)).map_err(io_err)?;
    // What the reader carries on from: the prefix's CRC32C, as just
    // verified (a version 1 checkpoint has none: read it once).
    let crc = match resumed.as_ref().map(|saved| saved.whole) {
        Some(Some(whole)) => whole.crc,
        Some(None) => checkpoint::fingerprint(&file, start)
            .map_err(io_err)?
            .whole
            .map_or(0, |w| w.crc),
        None => 0,
    };
    Ok((file, ReadTo { at: start, crc }, resumed))
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
        let mut keeper = None;
        let (raw, start, progress): (Box<dyn AsyncRead + Unpin + Send>, _, _) = match &self.input {
            JsonlInput::File(path) => {
                let checkpoint = self.checkpoint_dir.as_ref().map(|dir| {
                    Checkpoint::for_file(dir, path).with_filesystem(Arc::clone(&self.fs))
                });
                let (path, cp) = (path.clone(), checkpoint.clone());
                let (file, start, resumed) =
                    tokio::task::spawn_blocking(move || open_at_checkpoint(&path, cp.as_ref()))
                        .await
                        .map_err(|e| SourceError::Origin {
                            origin: label.clone(),
                            message: format!("opening the file: {e}"),
                        })??;
                let progress = match checkpoint {
                    Some(checkpoint) => {
                        let progress = Progress::default();
                        let finish = CancellationToken::new();
                        let finished = finish.clone();
                        let task = tokio::spawn(keep_checkpoint(
                            checkpoint,
                            file.try_clone().map_err(io_err)?,
                            progress.clone(),
                            (start, resumed),
                            finished,
                            ctx.drained.clone(),
                            ctx.health.clone(),
                        ));
                        keeper = Some((finish, task));
                        Some(progress)
                    }
                    None => None,
                };
                (Box::new(tokio::fs::File::from_std(file)), start, progress)
            }
            JsonlInput::Stdin => (Box::new(tokio::io::stdin()), ReadTo::default(), None),
        };
        let result = self.read(raw, start, progress.as_ref(), &ctx).await;
        if let Some(progress) = &progress {
            settle(progress, &ctx.drained).await;
        }
        if let Some((finish, task)) = keeper {
            finish_checkpoint(finish, task).await;
        }
        result.map_err(io_err)
    }
}

/// Waits until every batch is done (or can never be: abandoned), or until
/// the engine has drained after a stop.
async fn settle(progress: &Progress, drained: &CancellationToken) {
    let tracker = progress.tracker();
    loop {
        if tracker.outstanding() == 0 || tracker.is_stuck() {
            return;
        }
        tokio::select! {
            _ = drained.cancelled() => return,
            _ = tracker.changed() => {}
            // `changed` only wakes current waiters: look again now and then.
            _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
        }
    }
}

async fn finish_checkpoint(finish: CancellationToken, task: tokio::task::JoinHandle<()>) {
    finish.cancel();
    if let Err(e) = task.await {
        tracing::error!(error = %e, "the checkpoint task failed");
    }
}

impl JsonlSource {
    /// Reads lines from `start` to the end of input (or a stop), handing
    /// batches to the engine.
    async fn read(
        &self,
        raw: Box<dyn AsyncRead + Unpin + Send>,
        start: ReadTo,
        progress: Option<&Progress>,
        ctx: &SourceContext,
    ) -> std::io::Result<()> {
        let label = self.label();
        let stdin = matches!(self.input, JsonlInput::Stdin);
        // Standard input cannot be read again: what was read is handed in
        // even after a stop, intake held open until then.
        let hold = if stdin { ctx.ingest.hold() } else { None };
        let mut reader = BufReader::with_capacity(1 << 16, raw);
        let mut pos = start;
        // The end of the last line a registered batch covers.
        let mut covered = start;
        let mut batch = Vec::with_capacity(BATCH);
        let mut partial = Line::after(start.crc);
        let mut stopped = false;
        // A submission still waiting on backpressure once the engine has
        // drained (a shutdown with full backlogs), or for longer than the
        // hand-over limit after a stop, can never be admitted: give it up.
        // Its reference is dropped, so its batch is abandoned and never
        // covered by the checkpoint: a file's lines are read again next run.
        let submit = async |batch: Vec<Incoming>, end: ReadTo| -> bool {
            let ack = match progress {
                Some(p) => p.register(end),
                None => AckRef::none(),
            };
            let n = batch.len();
            let give_up = async {
                ctx.stop.cancelled().await;
                tokio::time::sleep(HANDOVER_LIMIT).await;
            };
            let taken = tokio::select! {
                _ = ctx.ingest.submit(batch, ack) => true,
                () = ctx.drained.cancelled() => false,
                () = give_up => false,
            };
            if !taken && stdin {
                tracing::warn!(source = %label, lines = n,
                    "shut down while waiting for room: lines read from stdin were not handed in (lost)");
            }
            taken
        };
        loop {
            let next = tokio::select! {
                biased;
                _ = ctx.stop.cancelled() => {
                    stopped = true;
                    break;
                }
                next = read_line_limited(&mut reader, self.max_line_bytes, &mut partial) => next?,
            };
            let Some(line) = next else { break };
            self.take_line(line, &mut pos, &mut batch, &label);
            // Hand over a full batch, or whatever is there when input pauses.
            if batch.len() >= BATCH || (!batch.is_empty() && reader.buffer().is_empty()) {
                if !submit(std::mem::take(&mut batch), pos).await {
                    tracing::warn!(source = %label, line = pos.at.line,
                        "shut down while waiting for room; the rest is read again next run");
                    return Ok(());
                }
                covered = pos;
            }
        }
        if stopped && stdin {
            // A read of stdin may be under way (on a blocking thread): its
            // bytes are taken from the pipe already, so it is finished, for
            // a moment at most (an idle stdin may never answer).
            if reader.buffer().is_empty()
                && let Ok(filled) = tokio::time::timeout(STDIN_SETTLE, reader.fill_buf()).await
            {
                filled?;
            }
            for line in buffered_lines(&mut reader, self.max_line_bytes, &mut partial) {
                self.take_line(line, &mut pos, &mut batch, &label);
            }
            while batch.len() > BATCH {
                let rest = batch.split_off(BATCH);
                if !submit(std::mem::replace(&mut batch, rest), pos).await {
                    return Ok(());
                }
            }
        }
        if !batch.is_empty() {
            // Given up or not, nothing follows it.
            let _ = submit(batch, pos).await;
        } else if let Some(p) = progress.filter(|_| pos != covered) {
            // Blank lines after the last batch: done as soon as read.
            p.register(pos).complete();
        }
        drop(hold);
        tracing::info!(source = %label, lines = pos.at.line, "input finished");
        Ok(())
    }

    /// Turns a line read into what the engine takes (nothing for a blank
    /// line) and moves `pos` past it when it is whole.
    fn take_line(&self, line: Line, pos: &mut ReadTo, batch: &mut Vec<Incoming>, label: &str) {
        let line_no = pos.at.line + 1;
        if line.terminated {
            *pos = ReadTo {
                at: Position {
                    offset: pos.at.offset + line.consumed,
                    line: line_no,
                },
                crc: line.crc,
            };
        }
        let text = line.bytes.trim_ascii();
        if text.is_empty() {
            return;
        }
        let parsed = (!line.oversize).then(|| parse_envelope(text));
        if !line.terminated
            && matches!(self.input, JsonlInput::File(_))
            && (line.oversize || matches!(parsed, Some(Err(_))))
        {
            // A writer still mid-line: the line is neither a message nor a
            // dead letter yet (not even one too long: it becomes that
            // dead letter once, when whole). The checkpoint never covers
            // it, so the next run reads it whole.
            tracing::info!(source = %label, line = line_no,
                "the last line has no newline yet and is incomplete; left for the next run");
            return;
        }
        // A dead letter keeps the line's bytes as read (its newline aside),
        // blanks and carriage return included.
        let raw = line.bytes.as_slice();
        batch.push(if line.oversize {
            Incoming::Malformed {
                raw: Bytes::copy_from_slice(raw.get(..raw.len().min(1024)).unwrap_or_default()),
                origin: format!("{label}:{line_no}"),
                reason: format!("line is longer than {} bytes", self.max_line_bytes),
            }
        } else {
            match parsed.unwrap_or_else(|| parse_envelope(text)) {
                Ok(message) => Incoming::MessageAt {
                    message,
                    line: line_no,
                },
                Err(e) => Incoming::Malformed {
                    raw: Bytes::copy_from_slice(raw),
                    origin: format!("{label}:{line_no}"),
                    reason: e.to_string(),
                },
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(
        source: &JsonlSource,
        bytes: &[u8],
        terminated: bool,
        oversize: bool,
    ) -> Vec<Incoming> {
        let line = Line {
            bytes: bytes.to_vec(),
            oversize,
            consumed: bytes.len() as u64 + u64::from(terminated),
            terminated,
            crc: 0,
        };
        let mut batch = Vec::new();
        source.take_line(line, &mut ReadTo::default(), &mut batch, "in.jsonl");
        batch
    }

    /// A line that is no envelope is a dead letter of its bytes as read:
    /// blanks and a carriage return are not trimmed off.
    #[test]
    fn a_dead_letter_keeps_the_line_untrimmed() {
        let source = JsonlSource::new(JsonlInput::File("in.jsonl".into()), 4096);
        let line = b" not json \x00\xff \r";
        match taken(&source, line, true, false).as_slice() {
            [Incoming::Malformed { raw, .. }] => assert_eq!(raw.as_ref(), line),
            other => panic!("{} items", other.len()),
        }
    }

    /// A last line without its newline waits for the writer even when it
    /// is already too long: it becomes that dead letter once, when whole,
    /// not once a run while it is written.
    #[test]
    fn a_too_long_last_line_without_its_newline_waits() {
        let source = JsonlSource::new(JsonlInput::File("in.jsonl".into()), 64);
        let long = vec![b'x'; 64];
        assert!(taken(&source, &long, false, true).is_empty());
        match taken(&source, &long, true, true).as_slice() {
            [Incoming::Malformed { reason, .. }] => assert!(reason.contains("longer"), "{reason}"),
            other => panic!("{} items", other.len()),
        }
    }

    /// The reader carries on from the CRC32C of the prefix it resumes
    /// after, from any checkpoint version: a wrong start would make every
    /// checkpoint of the run look like a rewritten file.
    #[test]
    fn a_resumed_reader_carries_on_from_the_prefix_crc_of_either_checkpoint_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, b"one\ntwo\nthree\n").unwrap();
        let done = Position { offset: 8, line: 2 };
        let saved = checkpoint::fingerprint(&std::fs::File::open(&path).unwrap(), done).unwrap();
        let v1 = checkpoint::Saved {
            whole: None,
            ..saved.clone()
        };
        for stored in [saved, v1] {
            let cp = Checkpoint::for_file(dir.path(), &path);
            cp.store(&stored).unwrap();
            let (_, start, _) = open_at_checkpoint(&path, Some(&cp)).unwrap();
            assert_eq!(start.at, done);
            assert_eq!(start.crc, crc32c::crc32c(b"one\ntwo\n"));
        }
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_flagged_and_the_next_line_is_intact() {
        let input = format!("{}\nshort\nlast-without-newline", "x".repeat(1000));
        let mut reader = BufReader::with_capacity(64, input.as_bytes());
        let partial = &mut Line::default();
        let first = read_line_limited(&mut reader, 100, partial)
            .await
            .unwrap()
            .unwrap();
        assert!(first.oversize);
        assert_eq!(first.bytes.len(), 100);
        let second = read_line_limited(&mut reader, 100, partial)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.bytes, b"short");
        assert!(!second.oversize);
        let third = read_line_limited(&mut reader, 100, partial)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(third.bytes, b"last-without-newline");
        // What the checkpoint counts: raw bytes consumed, and whether the
        // line was whole (a last line without newline is never covered).
        assert_eq!((first.consumed, first.terminated), (1001, true));
        assert_eq!((second.consumed, second.terminated), (6, true));
        assert_eq!((third.consumed, third.terminated), (20, false));
        // Each line's CRC32C runs on from the last, over every byte read
        // (the part of the long line past the limit included).
        assert_eq!(first.crc, crc32c::crc32c(&input.as_bytes()[..1001]));
        assert_eq!(third.crc, crc32c::crc32c(input.as_bytes()));
        assert!(
            read_line_limited(&mut reader, 100, partial)
                .await
                .unwrap()
                .is_none()
        );
    }
}
