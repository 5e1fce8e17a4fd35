//! JSONL output: one envelope per line to a file or to stdout.
//!
//! Invariants: a batch is reported delivered only after its lines were
//! written and flushed (and, for a file, fsync'd when `sync` is on), so a
//! crash after the ack cannot lose them; a write to a file that fails part
//! way (a full disk, EIO) is cut back to where the batch began before the
//! failure is reported, so a retry never glues a torn line to the next one
//! and every line in the file is a whole envelope; a file found ending in
//! a torn line when opened (a run killed while writing it) is cut back to
//! its last whole line, since that line's batch was never acknowledged.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncWrite, AsyncWriteExt, Stdout};
use tokio::sync::Mutex;

use super::{BatchError, Delivery, DeliveryError, Sink};
use crate::filesystem::whole_lines_end;
use crate::message::write_delivery_envelope;

/// Writes delivered messages as JSONL envelopes.
pub struct JsonlSink {
    out: Mutex<Output>,
    sync: bool,
    label: String,
}

enum Output {
    File(File),
    Stdout(Stdout),
}

impl JsonlSink {
    /// The permission bits a new output file gets by default: owner only,
    /// since the lines hold device data (as dead letters do).
    pub const DEFAULT_MODE: u32 = 0o600;

    /// Appends to `path` (created with [`JsonlSink::DEFAULT_MODE`] if
    /// missing). With `sync`, every batch is fsync'd before it counts as
    /// delivered.
    pub async fn file(path: &Path, sync: bool) -> std::io::Result<JsonlSink> {
        Self::file_with_mode(path, sync, Self::DEFAULT_MODE).await
    }

    /// [`JsonlSink::file`], a missing file created with the permission
    /// bits `mode` (before the umask; an existing file keeps its own).
    pub async fn file_with_mode(path: &Path, sync: bool, mode: u32) -> std::io::Result<JsonlSink> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        options.mode(mode);
        #[cfg(not(unix))]
        let _ = mode;
        let file = options.open(path).await?;
        cut_torn_tail(&file, path).await?;
        Ok(JsonlSink {
            out: Mutex::new(Output::File(file)),
            sync,
            label: PathBuf::from(path).display().to_string(),
        })
    }

    /// Writes to standard output.
    pub fn stdout() -> JsonlSink {
        JsonlSink {
            out: Mutex::new(Output::Stdout(tokio::io::stdout())),
            sync: false,
            label: "stdout".into(),
        }
    }
}

/// Cuts a last line without its newline off the end of `file`: the line a
/// process killed while writing left torn. Its batch was never reported
/// delivered, so it comes again whole; appended to, the torn line would
/// glue the next envelope onto itself.
async fn cut_torn_tail(file: &File, path: &Path) -> std::io::Result<()> {
    let len = file.metadata().await?.len();
    if len == 0 {
        return Ok(());
    }
    // The file is open for appending only: read through a second handle.
    // A file this process may write but not read is left as it is.
    let reader = match std::fs::File::open(path) {
        Ok(reader) => reader,
        Err(e) => {
            tracing::warn!(output = %path.display(), error = %e,
                "cannot read the JSONL output to check its last line; appending as it is");
            return Ok(());
        }
    };
    let keep = tokio::task::spawn_blocking(move || whole_lines_end(&reader, len))
        .await
        .map_err(std::io::Error::other)??;
    if keep < len {
        file.set_len(keep).await?;
        tracing::warn!(output = %path.display(), cut_bytes = len - keep,
            "the JSONL output ended in a torn line (a run stopped while writing it); cut it off, its message comes again");
    }
    Ok(())
}

async fn write_all(out: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes).await?;
    out.flush().await
}

/// Appends `bytes` to `file` (fsync'd with `sync`), or, when that fails,
/// cuts the file back to its length before, so nothing of the batch stays.
async fn write_whole(file: &mut File, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let start = file.metadata().await?.len();
    let mut written = write_all(file, bytes).await;
    if written.is_ok() && sync {
        written = file.sync_data().await;
    }
    let Err(e) = written else {
        return Ok(());
    };
    let cut = async {
        file.set_len(start).await?;
        file.sync_data().await
    };
    if let Err(cut_error) = cut.await {
        tracing::error!(error = %cut_error, "cannot cut a failed write back out of the JSONL output; its last line may be torn");
    }
    Err(e)
}

#[async_trait]
impl Sink for JsonlSink {
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        let mut lines = Vec::with_capacity(batch.len() * 256);
        for d in batch {
            write_delivery_envelope(&mut lines, &d.message, d.superseded);
        }
        let mut out = self.out.lock().await;
        let result = match &mut *out {
            Output::File(f) => write_whole(f, &lines, self.sync).await,
            Output::Stdout(s) => write_all(s, &lines).await,
        };
        result.map_err(|e| {
            DeliveryError::RetryLater(format!("writing to {}: {e}", self.label)).into()
        })
    }

    async fn close(&self) -> Result<(), DeliveryError> {
        let mut out = self.out.lock().await;
        let result = match &mut *out {
            Output::File(f) => f.sync_all().await,
            Output::Stdout(s) => s.flush().await,
        };
        result.map_err(|e| DeliveryError::RetryLater(format!("closing {}: {e}", self.label)))
    }
}
