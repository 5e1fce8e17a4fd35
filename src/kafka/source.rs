//! The Kafka source: a consumer in a consumer group that hands records to
//! the engine in batches, one batch per partition run, and commits each
//! partition's done offset (see `offsets.rs`). A partition assigned with a
//! pile behind it is split (`split.rs`): this consumer reads it live from
//! its live start while the catch-up reader (`catch_up.rs`) reads the pile.
//! `idle_exit` ends the run only once the consumer is caught up (`lag.rs`):
//! it holds partitions and has read every one of them, catch-up ranges
//! included, to its end; a run that stops otherwise reports the records its
//! group has left to read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};

use super::catch_up::CatchUpReader;
use super::config::{KafkaSourceConfig, apply_properties, client_refused, resolve_brokers};
use super::error_pacer::ErrorPacer;
use super::lag::{self, Progress};
use super::offsets::Offsets;
use super::record;
use super::split::SplitPolicy;
use crate::knob::KnobError;
use crate::source::source_adapter;
use crate::source::take_ready::{Ended, take_ready};
use crate::source::{Incoming, LanePolicy, Source, SourceContext, SourceError, SourceHealth};

/// Consumes Kafka topics in a consumer group; see the module documentation
/// of [`crate::kafka`] for what it promises.
pub struct KafkaSource {
    config: KafkaSourceConfig,
    client: ClientConfig,
}

impl KafkaSource {
    /// Checks the configuration; nothing connects until the source runs.
    pub fn new(config: KafkaSourceConfig) -> Result<KafkaSource, KnobError> {
        config.validate()?;
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", resolve_brokers(&config.brokers)?)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &config.start)
            // Memory stays bounded by the pre-fetch size, however long the
            // lag. When the local queue is past it, librdkafka pauses
            // fetching for `fetch.queue.backoff.ms` (1 s by default, which
            // stalls a pile in one-second steps): a short pause keeps it
            // flowing.
            .set(
                "queued.max.messages.kbytes",
                config.prefetch_kbytes.to_string(),
            )
            .set("fetch.queue.backoff.ms", "10")
            // How long a broker may hold a fetch that finds nothing new.
            // A broker answers as soon as records arrive, but not every
            // Kafka-protocol broker does (librdkafka's mock holds the full
            // wait): a tenth of a second bounds a live record's wait there,
            // at the cost of ten empty fetches a second per idle broker.
            .set("fetch.wait.max.ms", "100")
            // Consumer lag for the status page comes from these statistics.
            .set("statistics.interval.ms", "5000")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false");
        apply_properties(&mut client, &config.properties, "kafka source");
        Ok(KafkaSource { config, client })
    }
}

/// The consumer's callbacks: on assign, split the partitions that lag; on
/// revoke, commit what is done of the partitions going away before another
/// process takes them.
struct Callbacks {
    offsets: Arc<Offsets>,
    health: SourceHealth,
    split: Option<SplitPolicy>,
    pacer: Arc<ErrorPacer>,
    name: String,
    /// Set once the lag left at the stop is reported: the statistics'
    /// figure (which counts nothing for a member without partitions) must
    /// not replace it.
    lag_final: std::sync::atomic::AtomicBool,
}

impl ClientContext for Callbacks {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_paced(&self.pacer, &self.name, level, fac, log_message);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        if self.lag_final.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        // Without a broker up, the partitions' figures are stale or absent:
        // the lag is unknown, not zero.
        let up = statistics
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        if !up {
            self.health.lag_unknown();
            return;
        }
        self.pacer.recovered();
        // A partition not yet fetched reports -1: it adds nothing.
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0)
            .map(|p| p.consumer_lag.max(0))
            .sum();
        let lag = u64::try_from(lag).unwrap_or(0) + self.offsets.catch_up_left();
        self.health.lag(lag);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka retries connections itself; say so in the status line.
        // An error that ends the source (see `is_fatal`) is reported when
        // the consumer returns it, without a promise of retrying.
        // Others are paced: one warning per interval, the rest counted.
        if is_fatal(&error) {
            tracing::warn!(error = %error, reason, "kafka client error");
        } else {
            self.pacer
                .client_error(&self.name, &format!("{error}: {reason}"));
        }
        self.health.troubled(format!("kafka: {reason}"));
        self.health.lag_unknown();
    }
}

impl ConsumerContext for Callbacks {
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, list: &TopicPartitionList) {
        match result {
            Ok(()) => {
                let done: Vec<(String, i32, i64)> = list
                    .elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some((e.topic().to_string(), e.partition(), o)),
                        _ => None,
                    })
                    .collect();
                let advanced = self.offsets.committed(&done);
                self.health.acked(advanced);
            }
            Err(e) => tracing::warn!(error = %e, "an offset commit failed; the next one covers it"),
        }
    }

    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                tracing::info!(partitions = partitions.count(), "partitions assigned");
                let coming: Vec<(String, i32)> = partitions
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                self.offsets.assign(&coming);
                if let Some(split) = &self.split {
                    split.plan(consumer, partitions, &self.offsets);
                }
                self.health.healthy();
                if cooperative {
                    consumer.incremental_assign(partitions)
                } else {
                    consumer.assign(partitions)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(consumer, partitions);
                if cooperative {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error; dropping the assignment");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "applying a rebalance failed");
        }
    }
}

impl Callbacks {
    /// Commits what is done of the partitions going away and forgets them
    /// (their catch-up ranges too).
    fn revoke(&self, consumer: &BaseConsumer<Self>, list: &TopicPartitionList) {
        let going: Vec<(String, i32)> = list
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let due = self.offsets.revoke(&going);
        tracing::info!(
            partitions = going.len(),
            "partitions revoked; committing what is done of them"
        );
        if !due.is_empty()
            && let Err(e) = commit(consumer, &due, CommitMode::Sync)
        {
            tracing::warn!(error = %e, "committing revoked partitions failed; their new owner replays from the last commit");
        }
    }
}

/// The catch-up reader's consumer context: its client errors are the
/// group consumer's trouble seen twice, so they share its pacer.
pub(super) struct CatchUpContext {
    pacer: Arc<ErrorPacer>,
    name: String,
}

impl ClientContext for CatchUpContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_paced(&self.pacer, &self.name, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.pacer
            .client_error(&self.name, &format!("{error}: {reason}"));
    }
}

impl ConsumerContext for CatchUpContext {}

/// librdkafka's own log lines: warnings and worse go through the pacer
/// (they repeat the errors the error callback reports), the rest at debug.
fn log_paced(pacer: &ErrorPacer, source: &str, level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => pacer.client_error(source, &format!("{fac}: {message}")),
        _ => tracing::debug!(source, fac, message, "librdkafka"),
    }
}

fn commit<C: Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    due: &[(String, i32, i64)],
    mode: CommitMode,
) -> Result<(), KafkaError> {
    let mut list = TopicPartitionList::with_capacity(due.len());
    for (topic, partition, offset) in due {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.commit(&list, mode)
}

/// Whether a consumer error means the source cannot do its job at all.
fn is_fatal(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::Authentication
        )
    )
}

#[async_trait]
impl Source for KafkaSource {
    /// Not ready until the group has assigned it partitions.
    fn connects(&self) -> bool {
        true
    }

    fn name(&self) -> String {
        format!(
            "kafka {} (group {})",
            self.config.topics.join(","),
            self.config.group_id
        )
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let name = self.name();
        let offsets = Arc::new(Offsets::default());
        ctx.health.acknowledges();
        let pacer = Arc::new(ErrorPacer::new(ctx.health.clone()));
        let callbacks = Callbacks {
            offsets: Arc::clone(&offsets),
            health: ctx.health.clone(),
            split: SplitPolicy::of(&self.config),
            pacer: Arc::clone(&pacer),
            name: name.clone(),
            lag_final: std::sync::atomic::AtomicBool::new(false),
        };
        let origin_error = |message: String| SourceError::Origin {
            origin: name.clone(),
            message,
        };
        let consumer: StreamConsumer<Callbacks> = self
            .client
            .create_with_context(callbacks)
            .map_err(|e| origin_error(client_refused(e).to_string()))?;
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| origin_error(format!("subscribing: {e}")))?;
        let consumer = Arc::new(consumer);
        let catch_up_stop = tokio_util::sync::CancellationToken::new();
        let catch_up = match self.config.catch_up {
            true => {
                let reader = CatchUpReader::new(
                    &self.client,
                    &self.config.topics,
                    CatchUpContext {
                        pacer: Arc::clone(&pacer),
                        name: name.clone(),
                    },
                    Arc::clone(&offsets),
                    ctx.ingest.with_policy(LanePolicy::CatchUp),
                    self.config.format,
                    self.config.batch,
                )
                .map_err(|e| {
                    origin_error(format!("making the catch-up reader: {}", client_refused(e)))
                })?;
                Some(tokio::spawn(reader.run(catch_up_stop.clone())))
            }
            false => None,
        };
        // Cancelled when the reader is done (idle): the committer then ends
        // once everything read is settled, without waiting for shutdown.
        let reader_done = tokio_util::sync::CancellationToken::new();
        let committer = tokio::spawn(keep_committing(
            Arc::clone(&consumer),
            Arc::clone(&offsets),
            self.config.commit_every,
            ctx.drained.clone(),
            reader_done.clone(),
        ));

        let mut failure = None;
        let idle_exit = self.config.idle_exit;
        let from_earliest = self.config.start == "earliest";
        // What the last idle period found short of caught up, said once
        // per change so that a wait for a dead member's session is visible.
        let mut last_short = None;
        // The records of one batch; the vector is kept from batch to batch.
        let mut records = Vec::with_capacity(self.config.batch);
        // One stream for the whole run: each `recv()` would make a stream of
        // its own, registering and removing a waker slot under the client's
        // lock for every record.
        let mut stream = consumer.stream();
        loop {
            let first = tokio::select! {
                _ = ctx.stop.cancelled() => break,
                _ = idle(idle_exit) => {
                    let progress = if offsets.catching_up() {
                        Ok(Progress::Behind(offsets.catch_up_left()))
                    } else {
                        let consumer = Arc::clone(&consumer);
                        match tokio::task::spawn_blocking(move || lag::progress(consumer.as_ref(), from_earliest)).await {
                            Ok(found) => found,
                            Err(e) => {
                                tracing::warn!(error = %e, "the caught-up check did not finish");
                                Err(KafkaError::Canceled)
                            }
                        }
                    };
                    match progress {
                        Ok(Progress::CaughtUp) => {
                            tracing::info!(source = %name, "caught up, and no record for the idle_exit period; finishing");
                            break;
                        }
                        Ok(short) => {
                            if last_short.as_ref() != Some(&short) {
                                match &short {
                                    Progress::Unassigned => tracing::info!(source = %name, "idle_exit period passed but no partition is assigned yet (a member that died holds them until its session times out); waiting"),
                                    Progress::Behind(n) => tracing::info!(source = %name, unread = n, "idle_exit period passed but records are unread; waiting"),
                                    Progress::CaughtUp => {}
                                }
                                last_short = Some(short);
                            }
                        }
                        Err(e) => tracing::warn!(source = %name, error = %e, "cannot tell whether the consumer is caught up; idle_exit waits"),
                    }
                    continue;
                }
                r = stream.next() => match r {
                    Some(r) => r,
                    // The client's streams never end; were one to, the
                    // run would end as on a stop.
                    None => break,
                },
            };
            // A client error, met first or while gathering: one that ends
            // the source stops the run; any other is reported, paced, and
            // the client retries by itself.
            let trouble = |e: KafkaError| {
                if is_fatal(&e) {
                    return Some(origin_error(e.to_string()));
                }
                pacer.client_error(&name, &e.to_string());
                ctx.health.troubled(format!("kafka: {e}"));
                None
            };
            let first = match first {
                Ok(m) => m,
                Err(e) => match trouble(e) {
                    Some(fatal) => {
                        failure = Some(fatal);
                        break;
                    }
                    None => continue,
                },
            };
            ctx.health.healthy();
            // Whatever else is ready now joins the batch, without waiting.
            // The batch is stamped received once: its records arrived together.
            records.push(first);
            let ended = take_ready(&mut stream, &mut records, self.config.batch);
            // What was gathered before an error is handed in first.
            submit_by_partition(&ctx, &offsets, &records, self.config.format).await;
            records.clear();
            match ended {
                Some(Ended::Failed(e)) => {
                    if let Some(fatal) = trouble(e) {
                        failure = Some(fatal);
                        break;
                    }
                }
                Some(Ended::Closed) => break,
                None => {}
            }
        }
        catch_up_stop.cancel();
        if let Some(reader) = catch_up {
            let _ = reader.await;
        }
        if let Some(e) = failure {
            // The run stops because of this error: the last commit stands.
            committer.abort();
            return Err(e);
        }
        // Everything submitted is settled once the engine is drained (or,
        // after an idle exit, once every batch is done); the committer then
        // commits the last done offsets and ends.
        reader_done.cancel();
        let _ = committer.await;
        let due = offsets.due();
        if !due.is_empty() {
            commit(consumer.as_ref(), &due, CommitMode::Sync)
                .map_err(|e| origin_error(format!("committing offsets at shutdown: {e}")))?;
        }
        report_lag(
            &name,
            &consumer,
            &self.config.topics,
            from_earliest,
            &ctx.health,
        )
        .await;
        Ok(())
    }
}

/// Looks up, after the last commit, the records the group has left to
/// read on the source's topics, and reports them (the run summary's lag).
async fn report_lag(
    name: &str,
    consumer: &Arc<StreamConsumer<Callbacks>>,
    topics: &[String],
    from_earliest: bool,
    health: &SourceHealth,
) {
    let (looking, topics) = (Arc::clone(consumer), topics.to_vec());
    let found = tokio::task::spawn_blocking(move || {
        lag::group_lag(looking.as_ref(), &topics, from_earliest)
    })
    .await;
    if matches!(found, Ok(Ok(_))) {
        consumer
            .context()
            .lag_final
            .store(true, std::sync::atomic::Ordering::Release);
    }
    match found {
        Ok(Ok(0)) => {
            health.lag(0);
            tracing::info!(source = %name, "stopping with every record of its topics done");
        }
        Ok(Ok(left)) => {
            health.lag(left);
            tracing::warn!(source = %name, lag = left, "stopping with records left to read: the group's next run reads them");
        }
        Ok(Err(e)) => {
            tracing::warn!(source = %name, error = %e, "cannot look up the lag left at the stop");
        }
        Err(e) => {
            tracing::warn!(source = %name, error = %e, "the lag look-up did not finish");
        }
    }
}

/// Resolves after `after`, or never without it.
async fn idle(after: Option<Duration>) {
    match after {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Hands records to the engine, one batch per run of one partition, each
/// with that partition's reference.
async fn submit_by_partition(
    ctx: &SourceContext,
    offsets: &Offsets,
    records: &[BorrowedMessage<'_>],
    format: super::ValueFormat,
) {
    let received_at = Instant::now();
    for run in records.chunk_by(record::same_partition) {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            continue;
        };
        let Some(ack) = offsets.register(
            first.topic(),
            first.partition(),
            first.offset(),
            last.offset(),
        ) else {
            tracing::debug!(
                origin = %record::origin(first),
                records = run.len(),
                "records of a partition revoked while they were read are left to its next owner"
            );
            continue;
        };
        let batch: Vec<Incoming> = run
            .iter()
            .map(|r| record::to_incoming(r, format, received_at))
            .collect();
        ctx.ingest.submit(batch, ack).await;
    }
}

/// Commits done offsets every `every` while they move, and once more at
/// the end: when the engine has drained, or when the reader is done and
/// every batch it read is settled.
async fn keep_committing(
    consumer: Arc<StreamConsumer<Callbacks>>,
    offsets: Arc<Offsets>,
    every: Duration,
    drained: tokio_util::sync::CancellationToken,
    reader_done: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = drained.cancelled() => true,
            _ = tick.tick() => reader_done.is_cancelled() && offsets.outstanding() == 0,
        };
        let due = offsets.due();
        if !due.is_empty() {
            let mode = if last {
                CommitMode::Sync
            } else {
                CommitMode::Async
            };
            // A commit counts once the broker confirms it (the commit
            // callback); until then the next tick asks again.
            if let Err(e) = commit(consumer.as_ref(), &due, mode) {
                tracing::warn!(error = %e, "committing offsets failed; retrying at the next tick");
            }
        }
        if last {
            return;
        }
    }
}

source_adapter!(KafkaSourceConfig, |config, _| KafkaSource::new(
    config.clone()
));
