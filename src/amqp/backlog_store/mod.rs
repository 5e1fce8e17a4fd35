//! A group's backlog on the broker: one durable quorum queue per group that
//! every instance of the group appends to and consumes, behind the same
//! [`BacklogStore`] trait as the memory and disk stores.
//!
//! It lives in `amqp` (not in `backlog`) so that dependencies keep pointing
//! one way: `backlog` owns the trait and imports only `message`; this store
//! implements the trait with the broker pieces of the family's core
//! (`connect`, `declare`, `headers`, `config`), and uses no other product.
//!
//! Its files, one job each: `config` (the group's table and the queue
//! names), `link` (the connection, its two channels and the declared
//! queues), `publish` (appends, retries and parked records, confirmed),
//! `read` (the consumer, held records, takes and releases), `depth` (the
//! counts and their refresh), `record` (a record as an AMQP message) and
//! `inspect` (`laneway backlog inspect`). This file holds the store and
//! its [`BacklogStore`] face.
//!
//! Three queues per backlog, declared by the store:
//! - `<queue>`: the backlog (quorum, `x-delivery-limit`, dead-lettering to
//!   `<queue>.poison`; with `max_records`, `x-max-length` and
//!   `x-overflow = reject-publish`);
//! - `<queue>.wait`: retries waiting out their backoff as a per-message TTL,
//!   dead-lettered back into `<queue>` (`at-least-once` dead-lettering, so
//!   a full backlog queue makes them wait, never drops them);
//! - `<queue>.poison`: messages past the delivery limit, and messages in the
//!   backlog queue that are not laneway records.
//!
//! Invariants:
//! - `append` resolves `Ok` only when the broker confirmed every record
//!   (publisher confirms, `mandatory`, persistent); a record the full queue
//!   refused is reported as [`BacklogError::Full`], never dropped;
//! - a record id is this store's own counter, mapped to the delivery tag on
//!   the consuming channel it came from; a record is acked (`release`) or
//!   its retry confirmed in the wait queue before the original is acked
//!   (`retry`), so a crash in between delivers it twice, never loses it;
//! - a lost channel or connection (or a killed process) leaves every
//!   unacked record to the broker, which delivers it again, to this
//!   instance after its reconnect or to another one: at-least-once. A
//!   release or retry of a record taken on an older channel does nothing
//!   (its original is back in the queue);
//! - "nothing ready" is decided by `basic.get` answering empty on the
//!   consuming channel, followed by one more round trip on that channel,
//!   after which every delivery the broker pushed before the answer has
//!   arrived; so `take_ready` returns nothing only when the queue had
//!   nothing ready for this instance, and records come out in queue order.
//!
//! What the counts mean: `depth().records` is this instance's view: the
//! ready messages of the backlog and wait queues (from the broker, read
//! every `refresh_interval` and whenever a take finds nothing, adjusted by
//! this instance's own appends and takes in between), plus the records this instance holds or has in
//! flight. Records other instances have taken are not counted. `bytes` is
//! not known (0), nor is `oldest_ms` (the metric is absent; `laneway
//! backlog inspect --queue` reads the head's age from its header).
//!
//! Order: records come out in the queue's order. The wait queue expires
//! messages from its head only, so a retry may wait longer than its backoff
//! when a retry with a longer backoff is ahead of it (never shorter).

mod config;
mod depth;
mod inspect;
mod link;
mod publish;
mod read;
mod record;

pub use config::AmqpBacklogConfig;
pub use inspect::{BacklogQueueInspection, inspect};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use self::config::QueueNames;
use self::link::LinkState;
use self::read::Reader;
use crate::amqp::core::connect::{AmqpError, close_within};
use crate::backlog::{
    BacklogDepth, BacklogError, BacklogRecord, BacklogStore, RecordId, StoredRecord,
};
use crate::backoff::Backoff;
use crate::broker_url::BrokerUrl;
use crate::knob::KnobError;

/// A backlog store on a RabbitMQ quorum queue, shared by every instance of
/// a group; see the module docs.
pub struct AmqpBacklog {
    inner: Arc<Inner>,
    stop: CancellationToken,
}

/// The store's state, shared with its background refresh; its methods are
/// spread over the files of this module by job.
struct Inner {
    url: BrokerUrl,
    names: QueueNames,
    config: AmqpBacklogConfig,
    link: tokio::sync::Mutex<LinkState>,
    reader: tokio::sync::Mutex<Reader>,
    /// Publishes (appends, retries, parks) under way, and how many have
    /// ended: a recount that overlapped one is not stored, so it never
    /// counts a record that the publish is about to count again.
    publishing: AtomicU64,
    published: AtomicU64,
    /// Ready messages in the backlog and wait queues, as far as this
    /// instance knows.
    ready: AtomicU64,
    /// Records received and not handed out yet.
    held: AtomicU64,
    /// Records handed out and not released or retried yet.
    in_flight: AtomicU64,
    /// The background refresh lowered the count (other instances took
    /// records): `has_waiting` stays true until the next `take_ready`, so
    /// the engine takes once more and so learns the new depth. (The engine
    /// re-checks whether a group is idle after each take, not when a count
    /// changes by itself.)
    recheck: AtomicBool,
}

/// A broker failure as the store reports it: the records stay with the
/// caller, to be offered again.
fn unavailable(e: AmqpError) -> BacklogError {
    BacklogError::Unavailable(e.to_string())
}

impl AmqpBacklog {
    /// Connects, declares the group's three queues, and starts refreshing
    /// the depth; fails on a fatal set-up error (bad credentials, a queue
    /// declared with other arguments) and when the broker cannot be
    /// reached.
    pub async fn open(config: AmqpBacklogConfig, group: &str) -> Result<AmqpBacklog, BacklogError> {
        let (url, names) = config
            .validate(group)
            .map_err(|e: KnobError| BacklogError::Unavailable(e.to_string()))?;
        url.warn_if_plaintext();
        let inner = Arc::new(Inner {
            link: tokio::sync::Mutex::new(LinkState {
                link: None,
                generation: 0,
                backoff: Backoff::new(config.reconnect_initial, config.reconnect_max),
                not_before: None,
            }),
            reader: tokio::sync::Mutex::new(Reader::default()),
            publishing: AtomicU64::new(0),
            published: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            held: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            recheck: AtomicBool::new(false),
            url,
            names,
            config,
        });
        inner.link().await?;
        inner.refresh().await?;
        let stop = CancellationToken::new();
        inner.refresh_every(&stop);
        tracing::info!(broker = %inner.url, queue = %inner.names.backlog, "broker backlog open");
        Ok(AmqpBacklog { inner, stop })
    }

    /// The backlog queue's name.
    pub fn queue(&self) -> &str {
        self.inner.names.backlog.as_str()
    }
}

impl Drop for AmqpBacklog {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl BacklogStore for AmqpBacklog {
    async fn append(&self, records: &[BacklogRecord]) -> Result<(), BacklogError> {
        self.inner.append(records).await
    }

    async fn retry(&self, records: &[StoredRecord]) -> Result<(), BacklogError> {
        self.inner.retry(records).await
    }

    async fn take_ready(&self, max: usize, now_ms: i64) -> Result<Vec<StoredRecord>, BacklogError> {
        self.inner.take_ready(max, now_ms).await
    }

    async fn release(&self, ids: &[RecordId]) -> Result<(), BacklogError> {
        self.inner.release(ids).await
    }

    fn has_waiting(&self) -> bool {
        self.inner.has_waiting()
    }

    fn depth(&self) -> BacklogDepth {
        self.inner.depth()
    }

    async fn close(&self) -> Result<(), BacklogError> {
        self.stop.cancel();
        let mut reader = self.inner.reader.lock().await;
        reader.consumer = None;
        let mut state = self.inner.link.lock().await;
        if let Some(link) = state.link.take() {
            close_within(async {
                let _ = link.consume.close(200, "laneway closing".into()).await;
                let _ = link.publish.close(200, "laneway closing".into()).await;
                let _ = link.connection.close(200, "laneway closing".into()).await;
            })
            .await;
        }
        Ok(())
    }
}
