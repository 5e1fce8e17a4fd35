//! The RabbitMQ stream source: one stream queue (`x-queue-type = stream`)
//! read over AMQP 0-9-1, with laneway storing how far it is done, and a
//! lagging offset read live-first ("lag split"; see docs/streams.md).
//!
//! Each session (one connection) attaches a live cursor at the stream's
//! end (`x-stream-offset = last`: the broker's first delivery is the first
//! record of its last chunk, so the live start is known at once, traffic
//! or not). When the stored offset is behind that start, a catch-up cursor
//! reads `[stored, live start)` at the same time, into the groups'
//! catch-up lanes (served on the backlog's schedule, never copied to
//! disk) when the lag is large or old enough, and stops at the live start.
//!
//! Invariants:
//! - within a session every offset is submitted by exactly one cursor
//!   (see the `offsets` module); across sessions (a reconnect, a restart) only what
//!   was past the stored offset is read again: duplicates are bounded by
//!   what was in flight plus what was done since the last store;
//! - the stored offset is the contiguous done watermark over the catch-up
//!   range, then the live range: a crash at any moment replays from it and
//!   loses nothing;
//! - on shutdown the cursors stop reading first, the engine drains, then
//!   the final watermark is stored; what the engine abandoned (catch-up
//!   messages still waiting in a lane) stays after it;
//! - no text it logs or returns contains a broker password.

mod config;
mod cursor;
pub mod offset_file;
mod offsets;
mod session;
mod stored;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

pub use config::{AmqpStreamConfig, StreamStart};
pub use offset_file::{OffsetFile, OffsetFileError};

use crate::amqp::core::connect::{close_within, connect_attempt};
use crate::backoff::Backoff;
use crate::broker_url::BrokerUrl;
use crate::filesystem::{Filesystem, RealFilesystem};
use crate::knob::KnobError;
use crate::source::sessions::{ConnectFailure, Driver, SessionEnd, Sessions, run_sessions};
use crate::source::{Source, SourceContext, SourceError};
use cursor::{Attach, End};
use session::Session;
use stored::Keeper;

/// Where offset files go when neither `offset_file` nor a directory
/// ([`AmqpStreamSource::offsets_in`]) is given: the config's default
/// `data_dir`.
const DEFAULT_DIR: &str = "laneway-data/sources";

/// Reads one RabbitMQ stream into the engine; see the module docs.
pub struct AmqpStreamSource {
    config: Arc<AmqpStreamConfig>,
    url: BrokerUrl,
    file: OffsetFile,
    fs: Arc<dyn Filesystem>,
}

impl AmqpStreamSource {
    /// A source for this configuration (checked, URL resolved; nothing
    /// connects yet). Its offset file is `offset_file`, or the default name
    /// in `laneway-data/sources` until [`AmqpStreamSource::offsets_in`].
    pub fn new(config: AmqpStreamConfig) -> Result<AmqpStreamSource, KnobError> {
        let url = config.validate()?;
        url.warn_if_plaintext();
        let file = match &config.offset_file {
            Some(path) => OffsetFile::at(path.clone(), &config.stream),
            None => Self::default_file(Path::new(DEFAULT_DIR), &url, &config.stream),
        };
        Ok(AmqpStreamSource {
            config: Arc::new(config),
            url,
            file,
            fs: Arc::new(RealFilesystem),
        })
    }

    fn default_file(dir: &Path, url: &BrokerUrl, stream: &str) -> OffsetFile {
        let identity = format!("{}:{}/{}/{stream}", url.host(), url.port(), url.vhost());
        OffsetFile::in_dir(dir, stream, &identity)
    }

    /// Keeps the offset file in `dir` (the run's `<data_dir>/sources`),
    /// unless the config names one with `offset_file`.
    pub fn offsets_in(mut self, dir: &Path) -> AmqpStreamSource {
        if self.config.offset_file.is_none() {
            let fs = Arc::clone(&self.fs);
            self.file = Self::default_file(dir, &self.url, &self.config.stream).with_filesystem(fs);
        }
        self
    }

    /// Reads and writes the stored offset through `fs` instead of the
    /// operating system's file system: the seam fault tests use to make a
    /// store fail.
    pub fn with_filesystem(mut self, fs: Arc<dyn Filesystem>) -> AmqpStreamSource {
        self.file = self.file.with_filesystem(Arc::clone(&fs));
        self.fs = fs;
        self
    }

    /// Where the stream offset is stored.
    pub fn offset_file(&self) -> &Path {
        self.file.path()
    }

    fn origin(&self) -> String {
        format!("amqp {} stream {}", self.url, self.config.stream)
    }

    /// Where the first session attaches (the stored offset, or per
    /// `start`), and the offset the file holds.
    fn first_attach(&self) -> Result<(Attach, Option<u64>), SourceError> {
        match self.file.load() {
            Ok(Some(offset)) => {
                tracing::info!(stream = %self.config.stream, offset, file = %self.file.path().display(), "resuming at the stored offset");
                Ok((Attach::At(offset), Some(offset)))
            }
            Ok(None) => Ok((
                match self.config.start {
                    StreamStart::First => Attach::At(0),
                    StreamStart::Last => Attach::Last,
                    StreamStart::Next => Attach::Next,
                },
                None,
            )),
            Err(e @ OffsetFileError::Damaged { .. }) => {
                // Duplicates, never a loss: read what the stream retains.
                tracing::warn!(stream = %self.config.stream, error = %e,
                    "the stored offset is unreadable; reading the stream from its first record");
                Ok((Attach::At(0), None))
            }
            Err(e) => Err(SourceError::Origin {
                origin: self.origin(),
                message: e.to_string(),
            }),
        }
    }
}

#[async_trait]
impl Source for AmqpStreamSource {
    fn connects(&self) -> bool {
        true
    }

    fn name(&self) -> String {
        self.origin()
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let who = self.origin();
        let (attach, loaded) = self.first_attach()?;
        let mut backoff = Backoff::new(self.config.reconnect_initial, self.config.reconnect_max);
        ctx.health.acknowledges();
        let mut sessions = StreamSessions {
            keeper: Keeper::new(self.file.clone(), ctx.health.clone(), loaded),
            source: &self,
            ctx: &ctx,
            attach,
            read_end: None,
        };
        let driver = Driver {
            who: &who,
            after: "resuming at the stored offset",
            stop: &ctx.stop,
            health: &ctx.health,
        };
        run_sessions(&mut sessions, &mut backoff, driver).await
    }
}

/// The stream source's sessions, and what carries from one to the next:
/// where the next one attaches, and where the last one stopped reading.
struct StreamSessions<'a> {
    source: &'a AmqpStreamSource,
    ctx: &'a SourceContext,
    keeper: Arc<Keeper>,
    attach: Attach,
    /// Where the last session stopped reading: what a new session reads
    /// again (past the stored offset) is counted from it.
    read_end: Option<u64>,
}

#[async_trait]
impl Sessions for StreamSessions<'_> {
    type Connection = lapin::Connection;

    async fn connect(&mut self) -> Result<lapin::Connection, ConnectFailure> {
        let name = format!("laneway stream {}", self.source.config.stream);
        connect_attempt(&self.source.url, &name).await
    }

    async fn serve(&mut self, conn: lapin::Connection, number: u64) -> SessionEnd {
        self.ctx.health.healthy();
        let config = &self.source.config;
        if let (Attach::At(from), Some(end)) = (self.attach, self.read_end)
            && end > from
        {
            tracing::info!(stream = %config.stream, from, records = end - from,
                "reading again the records in flight when the last session ended (duplicates at most this many)");
        }
        let session = Session {
            config,
            url: &self.source.url,
            keeper: &self.keeper,
            ctx: self.ctx,
            attach: self.attach,
            number,
        };
        let outcome = session.run(&conn).await;
        // Closing may fail when the connection is already gone.
        close_within(conn.close(200, "laneway closing".into())).await;
        if let Some(stored) = outcome.stored {
            self.attach = Attach::At(stored);
        }
        self.read_end = outcome.read_end.or(self.read_end);
        match outcome.end {
            End::Stopped => SessionEnd::Finished,
            End::Fatal(message) => SessionEnd::Fatal(message),
            End::Lost(why) => SessionEnd::Lost(why),
        }
    }
}
