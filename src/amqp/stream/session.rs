//! One session on one connection: the live cursor, the catch-up cursor
//! when the stored offset lags, and the task that stores the watermark.
//!
//! Order of events: declare the stream; attach the live cursor (at `last`,
//! or `next` on a first run that starts there); its first delivery's offset
//! is the live start `L`; with a stored offset `S < L`, attach the catch-up
//! cursor at `S`, which reads `[S, L)` and stops. The live cursor skips
//! offsets below `max(S, L)`.
//!
//! Invariants: see the module docs of [`super`] and [`super::offsets`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::Connection;
use lapin::types::{AMQPValue, FieldTable, LongString};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::AmqpStreamConfig;
use super::cursor::{Attach, End, Read, StreamCursor};
use super::offsets::{Cursor, StreamOffsets};
use super::stored::{self, Keeper};
use crate::amqp::core::connect::AmqpError;
use crate::amqp::core::declare::Declaration;
use crate::broker_url::BrokerUrl;
use crate::message::now_epoch_ms;
use crate::source::{Incoming, Ingest, LanePolicy, SourceContext};

/// One session's set-up.
pub(super) struct Session<'a> {
    pub config: &'a Arc<AmqpStreamConfig>,
    pub url: &'a BrokerUrl,
    pub keeper: &'a Arc<Keeper>,
    pub ctx: &'a SourceContext,
    /// Where to resume: the stored offset, or the configured start.
    pub attach: Attach,
    /// 1 for the first session, then counting reconnects.
    pub number: u64,
}

/// How a session ended, and what the next one resumes from.
pub(super) struct Outcome {
    pub end: End,
    /// The done watermark at the end (`None`: the session never learnt
    /// where the stream is).
    pub stored: Option<u64>,
    /// The offset after the last record submitted.
    pub read_end: Option<u64>,
}

impl Outcome {
    fn early(end: End) -> Outcome {
        Outcome {
            end,
            stored: None,
            read_end: None,
        }
    }
}

impl Session<'_> {
    pub async fn run(&self, conn: &Connection) -> Outcome {
        let c = &**self.config;
        let failed =
            |what: &str, e: lapin::Error| End::of(AmqpError::classify(self.url, what, &e, false));
        let channel = match conn.create_channel().await {
            Ok(ch) => ch,
            Err(e) => return Outcome::early(failed("opening a channel", e)),
        };
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("stream")),
        );
        let declared = Declaration {
            queue: &c.stream,
            arguments,
            declare: c.declare,
            exchange: c.exchange.as_deref(),
            binding_key: &c.binding_key,
        }
        .apply(&channel, self.url)
        .await;
        if let Err(e) = declared {
            return Outcome::early(End::of(e));
        }
        let live_attach = match self.attach {
            Attach::Next => Attach::Next,
            _ => Attach::Last,
        };
        let name = format!("{}-live", self.number);
        let mut live = match StreamCursor::attach(
            channel,
            self.url,
            &c.stream,
            live_attach,
            c.prefetch,
            c.batch,
            &name,
        )
        .await
        {
            Ok(cursor) => cursor,
            Err(end) => return Outcome::early(end),
        };
        tracing::info!(stream = %c.stream, broker = %self.url, attach = ?self.attach, "consuming the stream; waiting for its end");
        // The first delivery tells where the live cursor starts.
        let first = match live.next(&self.ctx.stop).await {
            Ok(read) => read,
            Err(end) => {
                live.close().await;
                return Outcome::early(end);
            }
        };
        let Some(&(live_first, _)) = first.records.first() else {
            live.close().await;
            return Outcome::early(End::Lost("an empty first batch".into()));
        };
        let from = match self.attach {
            Attach::At(stored) => stored,
            Attach::Last | Attach::Next => live_first,
        };
        let offsets = Arc::new(StreamOffsets::new(from, live_first));
        // A first run that starts at `last` or `next` stores where it
        // started, so a crash before anything is done still resumes there.
        self.keeper.store(from).await;
        let read_end = Arc::new(AtomicU64::new(from));

        let mut catch_up = None;
        if let Some((from, to)) = offsets.catch_up_range() {
            let opened = match conn.create_channel().await {
                Ok(ch) => {
                    let name = format!("{}-catch-up", self.number);
                    StreamCursor::attach(
                        ch,
                        self.url,
                        &c.stream,
                        Attach::At(from),
                        c.prefetch,
                        c.batch,
                        &name,
                    )
                    .await
                }
                Err(e) => Err(failed("opening a channel", e)),
            };
            let cursor = match opened {
                Ok(cursor) => cursor,
                Err(end) => {
                    live.close().await;
                    return Outcome {
                        end,
                        stored: Some(from),
                        read_end: None,
                    };
                }
            };
            tracing::info!(stream = %c.stream, from, to, lag = to - from,
                "the stored offset lags the stream's end: reading the lag with a catch-up cursor while the live cursor reads from the end");
            let task = CatchUp {
                cursor,
                offsets: Arc::clone(&offsets),
                from,
                to,
                live: self.ctx.ingest.clone(),
                config: Arc::clone(self.config),
                stop: self.ctx.stop.clone(),
                read_end: Arc::clone(&read_end),
            };
            catch_up = Some(tokio::spawn(task.run()));
        } else {
            tracing::info!(stream = %c.stream, from = offsets.live_start(), "no lag to catch up: reading live");
        }

        let stuck = CancellationToken::new();
        let end_follow = CancellationToken::new();
        let follower = tokio::spawn(stored::follow(
            Arc::clone(self.keeper),
            Arc::clone(&offsets),
            c.store_every,
            Arc::clone(&read_end),
            stuck.clone(),
            end_follow.clone(),
        ));

        let end = self
            .live_loop(&mut live, first, &offsets, &mut catch_up, &stuck, &read_end)
            .await;
        live.close().await;
        let end = match end {
            // Lost while shutting down (the broker went first): the engine
            // still finishes with what was submitted, so wait for it.
            End::Lost(_) if self.ctx.stop.is_cancelled() => End::Stopped,
            end => end,
        };
        if matches!(end, End::Stopped) {
            // The catch-up cursor sees the same stop; then the engine
            // finishes with everything submitted.
            if let Some(task) = catch_up.take() {
                let _ = task.await;
            }
            self.ctx.drained.cancelled().await;
        } else if let Some(task) = catch_up.take() {
            task.abort();
        }
        end_follow.cancel();
        let _ = follower.await;
        let stored = offsets.stored();
        self.keeper.store(stored).await;
        if matches!(end, End::Stopped) && offsets.outstanding() > 0 {
            tracing::info!(stream = %c.stream, stored, batches = offsets.outstanding(),
                "stopping with unfinished batches; they are read again from the stored offset");
        }
        Outcome {
            end,
            stored: Some(stored),
            read_end: Some(read_end.load(Ordering::Relaxed)),
        }
    }

    /// Submits live batches (skipping offsets before the live start) until
    /// stopped or lost; watches the catch-up cursor and abandoned batches.
    async fn live_loop(
        &self,
        live: &mut StreamCursor,
        first: Read,
        offsets: &StreamOffsets,
        catch_up: &mut Option<JoinHandle<End>>,
        stuck: &CancellationToken,
        read_end: &AtomicU64,
    ) -> End {
        let start = offsets.live_start();
        let mut read = first;
        loop {
            let mut batch = Vec::with_capacity(read.records.len());
            let mut last = None;
            for (offset, incoming) in read.records {
                if offset >= start {
                    batch.push(incoming);
                    last = Some(offset);
                }
            }
            if let Some(last) = last {
                read_end.fetch_max(last + 1, Ordering::Relaxed);
                let ack = offsets.register(Cursor::Live, last);
                let routed = self.ctx.ingest.submit(batch, ack).await;
                live.routed(routed);
            }
            if let Err(end) = live.credit(read.last_tag).await {
                return end;
            }
            if let Some(why) = read.broken {
                return End::Lost(why);
            }
            read = loop {
                tokio::select! {
                    biased;
                    // Before `stuck`: a shutdown abandons what waits in the
                    // catch-up lane, and must still end as a stop.
                    _ = self.ctx.stop.cancelled() => return End::Stopped,
                    _ = stuck.cancelled() => {
                        return End::Lost("a batch was abandoned; restarting the session so its records are read again".into());
                    }
                    joined = join(catch_up), if catch_up.is_some() => {
                        *catch_up = None;
                        match joined {
                            Ok(End::Stopped) => {}
                            Ok(end) => return end,
                            Err(e) => return End::Lost(format!("the catch-up cursor failed: {e}")),
                        }
                    }
                    next = live.next(&self.ctx.stop) => match next {
                        Ok(read) => break read,
                        Err(end) => return end,
                    },
                }
            };
        }
    }
}

/// Waits for a spawned task held in an option (only polled while `Some`).
async fn join(task: &mut Option<JoinHandle<End>>) -> Result<End, tokio::task::JoinError> {
    match task.as_mut() {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// The catch-up cursor of one session: reads `[from, to)` and stops.
struct CatchUp {
    cursor: StreamCursor,
    offsets: Arc<StreamOffsets>,
    from: u64,
    to: u64,
    /// The source's ingest (its lane policy): used when the lag is too
    /// small to split.
    live: Ingest,
    config: Arc<AmqpStreamConfig>,
    stop: CancellationToken,
    read_end: Arc<AtomicU64>,
}

impl CatchUp {
    /// Ends with [`End::Stopped`] once the range is read (or on stop).
    async fn run(mut self) -> End {
        let mut ingest: Option<Ingest> = None;
        let mut seen = false;
        let end = loop {
            let read = match self.cursor.next(&self.stop).await {
                Ok(read) => read,
                Err(end) => break end,
            };
            let mut batch = Vec::with_capacity(read.records.len());
            let (mut last, mut reached) = (None, false);
            for (offset, incoming) in read.records {
                if offset < self.from {
                    continue;
                }
                // Said also when retention took the whole range: the first
                // record seen is then already past it.
                if !seen && offset > self.from {
                    tracing::warn!(stream = %self.config.stream, from = self.from, first = offset,
                        "records before the first one read were removed by the stream's retention before they were delivered");
                }
                seen = true;
                if offset >= self.to {
                    reached = true;
                    break;
                }
                batch.push(incoming);
                last = Some(offset);
                if offset + 1 == self.to {
                    reached = true;
                    break;
                }
            }
            if let Some(last) = last {
                self.read_end.fetch_max(last + 1, Ordering::Relaxed);
                let ingest = ingest.get_or_insert_with(|| self.choose(&batch));
                let ack = self.offsets.register(Cursor::CatchUp, last);
                let routed = ingest.submit(batch, ack).await;
                self.cursor.routed(routed);
            }
            if let Err(end) = self.cursor.credit(read.last_tag).await {
                break end;
            }
            if reached {
                self.offsets.catch_up_read_all();
                tracing::info!(stream = %self.config.stream, to = self.to,
                    "the catch-up cursor has read up to the live start");
                break End::Stopped;
            }
            if let Some(why) = read.broken {
                break End::Lost(why);
            }
        };
        self.cursor.close().await;
        end
    }

    /// Which lanes the range takes, decided on its first batch: the
    /// catch-up lane when catch-up is on and the range is long or old
    /// enough, else the source's own policy.
    fn choose(&self, first: &[Incoming]) -> Ingest {
        let c = &*self.config;
        let lag = self.to - self.from;
        let age_ms = first
            .iter()
            .find_map(|i| match i {
                Incoming::Message(m) | Incoming::MessageAt { message: m, .. } => {
                    Some(m.age_ms(now_epoch_ms()))
                }
                Incoming::Malformed { .. } => None,
            })
            .unwrap_or(0);
        let age = Duration::from_millis(u64::try_from(age_ms).unwrap_or(0));
        let split = c.catch_up && (lag >= c.catch_up_after || age >= c.catch_up_after_age);
        tracing::info!(stream = %c.stream, lag, oldest = ?age, split,
        "{}", if split {
            "catching up on the backlog schedule: the lag takes the catch-up lane, live records go first"
        } else {
            "the lag is small: it takes lanes like live records"
        });
        if split {
            self.live.with_policy(LanePolicy::CatchUp)
        } else {
            self.live.clone()
        }
    }
}
