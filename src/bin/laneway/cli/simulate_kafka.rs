//! `laneway simulate --kafka BROKERS --topic T`: the device simulator as a
//! Kafka producer (idempotent, `acks=all`), writing records as the platform
//! does: the payload as the value, `topic` / `messageId` / `generateTime` as
//! headers, keyed by product and device.
//!
//! With `--partitions N` it creates the topic first when it is missing;
//! without, a missing topic is said plainly before anything is produced
//! (a broker without auto-create would otherwise fail every record).
//!
//! Invariant: a message counts as sent only once the broker acknowledged
//! it; the exit code is non-zero when any was not.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::simulate::{ProgressLine, Recorder, SimulateArgs};
use super::status::human;
use bytes::Bytes;
use laneway::kafka::{headers_of, key_of};
use laneway::message::{Extras, now_epoch_ms};
use laneway::source::simulator::Fleet;

/// Produces; `Ok(false)` when some message was not acknowledged.
pub async fn produce(args: SimulateArgs) -> Result<bool, String> {
    let brokers = args.kafka.clone().unwrap_or_default();
    let topic = args.topic.clone().unwrap_or_default();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .map_err(|e| format!("kafka producer: {e}"))?;
    if let Some(partitions) = args.partitions
        && !topic_exists(&producer, &brokers, &topic)?
    {
        create_topic(&brokers, &topic, partitions, args.quiet).await?;
    }
    if !topic_exists(&producer, &brokers, &topic)? {
        return Err(format!(
            "kafka {brokers}: topic {topic} does not exist (and the broker does not create topics on first use): create it, or pass --partitions N to have simulate create it"
        ));
    }
    if !args.quiet {
        eprintln!(
            "simulate: producing to kafka {brokers} topic {topic} ({} products x {} devices{})",
            args.products,
            args.devices,
            args.limit_words()
        );
    }
    let mut recorder = Recorder::open(args.record.as_deref())?;
    let mut fleet = Fleet::new(args.products, args.devices, args.seed);
    let age_ms = args.age.as_millis() as i64;
    let window = args.in_flight.max(1);
    let mut in_flight: VecDeque<DeliveryFuture> = VecDeque::with_capacity(window);
    let (mut produced, mut acked, mut failed) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let start = Instant::now();
    let mut progress = ProgressLine::new(start, args.quiet);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut settle =
        |result: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, _>| match result {
            Ok(Ok(_)) => acked += 1,
            Ok(Err((e, _))) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(_) => {
                failed += 1;
                first_error.get_or_insert_with(|| "the producer went away".to_string());
            }
        };
    loop {
        if args.count.is_some_and(|n| produced >= n)
            || args.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        if let Some(wait) = args.wait_before_next(start, produced) {
            tokio::select! {
                _ = &mut ctrl_c => break,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        if in_flight.len() >= window
            && let Some(future) = in_flight.pop_front()
        {
            settle(future.await);
        }
        let m = fleet.next_message(now_epoch_ms() - age_ms);
        let key = key_of(&m);
        let record = FutureRecord::to(&topic)
            .payload(m.payload().as_ref())
            .key(key.as_bytes())
            .headers(headers_of(&m));
        match producer.send_result(record) {
            Ok(future) => in_flight.push_back(future),
            Err((e, _)) => {
                // A full local queue: wait for the oldest, then try again.
                let Some(oldest) = in_flight.pop_front() else {
                    return Err(format!("kafka produce: {e}"));
                };
                settle(oldest.await);
                continue;
            }
        }
        produced += 1;
        // Recorded with its key, as a Kafka source hands it on and the
        // JSONL sink writes it.
        recorder.record(&m.with_extras(Extras {
            key: Some(Bytes::from(key.into_bytes())),
            headers: Vec::new(),
        }))?;
        progress.tick(produced, || format!("produced {produced}"));
    }
    while let Some(future) = in_flight.pop_front() {
        settle(future.await);
    }
    let flushed =
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30))).await;
    recorder.finish()?;
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!(
        "simulate: produced {produced}, acknowledged {acked}, failed {failed} in {elapsed:.1}s ({}/s)",
        human(acked as f64 / elapsed.max(1e-9))
    );
    if let Some(e) = first_error {
        eprintln!("simulate: first failure: {e}");
    }
    if !matches!(flushed, Ok(Ok(()))) {
        return Err("kafka producer: flushing at the end failed".into());
    }
    Ok(failed == 0 && acked == produced)
}

/// How long a metadata request or a topic creation may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Creates `topic` with `partitions` partitions (replicated on up to three
/// brokers) unless it exists.
async fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    quiet: bool,
) -> Result<(), String> {
    if partitions < 1 {
        return Err("--partitions must be at least 1".into());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| format!("kafka admin client: {e}"))?;
    // A blocking call; the runtime has other threads meanwhile.
    let broker_count = tokio::task::block_in_place(|| {
        admin
            .inner()
            .fetch_metadata(None, ADMIN_TIMEOUT)
            .map(|m| m.brokers().len())
    })
    .map_err(|e| format!("kafka {brokers}: reading the cluster's metadata: {e}"))?;
    let replication = i32::try_from(broker_count.clamp(1, 3)).unwrap_or(1);
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let topics = [new];
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let created = admin.create_topics(&topics, &options);
    let results = tokio::time::timeout(ADMIN_TIMEOUT * 2, created)
        .await
        .map_err(|_| format!("kafka {brokers}: creating topic {topic}: no answer"))?
        .map_err(|e| format!("kafka {brokers}: creating topic {topic}: {e}"))?;
    for result in results {
        match result {
            Ok(_) => {
                if !quiet {
                    eprintln!("simulate: created topic {topic} with {partitions} partitions");
                }
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(format!("kafka {brokers}: creating topic {topic}: {code}"));
            }
        }
    }
    Ok(())
}

/// Whether `topic` exists (a broker that creates topics on first use
/// creates it when asked for its metadata).
fn topic_exists(producer: &FutureProducer, brokers: &str, topic: &str) -> Result<bool, String> {
    // A blocking call; the runtime has other threads meanwhile.
    let metadata = tokio::task::block_in_place(|| {
        producer.client().fetch_metadata(Some(topic), ADMIN_TIMEOUT)
    })
    .map_err(|e| format!("kafka {brokers}: reading topic {topic}'s metadata: {e}"))?;
    Ok(metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}
