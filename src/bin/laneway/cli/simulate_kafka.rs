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
//! it; the exit code is non-zero when any was not. A broker that deleted
//! records of the topic while it ran (a low watermark moved: retention, or
//! the mock cluster's 5 MiB per partition) is said in a warning.

use std::future::Future;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::publish_loop::{self, Sent, Settled, Target, Words};
use super::simulate::SimulateArgs;
use bytes::Bytes;
use laneway::kafka::{headers_of, key_of};
use laneway::message::{Extras, Message};

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
    let before = Watermarks::read(&producer, &topic);
    let checker = producer.clone();
    let acknowledged = publish_loop::publish(
        &args,
        KafkaTarget {
            producer,
            topic: topic.clone(),
        },
    )
    .await?;
    // Acknowledged is not kept: a broker may delete the oldest records of
    // a partition at once (its retention), and then says nothing.
    if let (Ok(before), Ok(after)) = (before, Watermarks::read(&checker, &topic))
        && let Some(warning) = before.dropped_since(&after, &topic)
    {
        eprintln!("simulate: warning: {warning}");
    }
    Ok(acknowledged)
}

/// The low and high watermark of each partition of a topic: what a broker
/// holds of it.
struct Watermarks(Vec<(i64, i64)>);

impl Watermarks {
    fn read(producer: &FutureProducer, topic: &str) -> Result<Watermarks, KafkaError> {
        // Blocking calls; the runtime has other threads meanwhile.
        tokio::task::block_in_place(|| {
            let client = producer.client();
            let metadata = client.fetch_metadata(Some(topic), ADMIN_TIMEOUT)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            partitions
                .into_iter()
                .map(|p| client.fetch_watermarks(topic, p, ADMIN_TIMEOUT))
                .collect::<Result<_, _>>()
                .map(Watermarks)
        })
    }

    /// When the broker deleted records between `self` and `after` (a low
    /// watermark moved: retention, or a size limit such as the 5 MiB per
    /// partition librdkafka's mock cluster keeps), what to tell the user.
    fn dropped_since(&self, after: &Watermarks, topic: &str) -> Option<String> {
        if self.0.len() != after.0.len() {
            return None;
        }
        let dropped: i64 = self
            .0
            .iter()
            .zip(&after.0)
            .map(|((low, _), (later, _))| (later - low).max(0))
            .sum();
        let held: i64 = after.0.iter().map(|(low, high)| high - low).sum();
        (dropped > 0).then(|| {
            format!(
                "topic {topic} now holds {held} records: the broker deleted {dropped} of its oldest while this ran \
                 (its retention; librdkafka's mock cluster, `laneway kafka-mock`, keeps at most 5 MiB per partition), \
                 so a consumer starting from the earliest offset reads only the {held} left: produce fewer, or to more partitions"
            )
        })
    }
}

/// The publish loop's Kafka side: one producer, one topic.
struct KafkaTarget {
    producer: FutureProducer,
    topic: String,
}

impl Target for KafkaTarget {
    type Receipt = DeliveryFuture;

    const WORDS: Words = Words::PRODUCED;

    async fn send(&mut self, m: &Message) -> Result<Sent<DeliveryFuture>, String> {
        let key = key_of(m);
        let record = FutureRecord::to(&self.topic)
            .payload(m.payload().as_ref())
            .key(key.as_bytes())
            .headers(headers_of(m));
        match self.producer.send_result(record) {
            Ok(future) => Ok(Sent::Out(future)),
            // The local queue fills while deliveries are out; with none
            // out, nothing will drain it.
            Err((e @ KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Ok(Sent::QueueFull(Err(format!("kafka produce: {e}"))))
            }
            Err((e, _)) => Err(format!("kafka produce: {e}")),
        }
    }

    fn settle(&mut self, outcome: <DeliveryFuture as Future>::Output) -> Result<Settled, String> {
        Ok(match outcome {
            Ok(Ok(_)) => Settled::Ok,
            Ok(Err((e, _))) => Settled::Failed(e.to_string()),
            // The delivery's sender was dropped.
            Err(_) => Settled::Failed("the producer went away".to_string()),
        })
    }

    /// Recorded with its key, as a Kafka source hands it on and the JSONL
    /// sink writes it.
    fn recorded(&self, m: Message) -> Message {
        let key = key_of(&m);
        m.with_extras(Extras {
            key: Some(Bytes::from(key.into_bytes())),
            headers: Vec::new(),
        })
    }

    async fn close(self) -> Result<(), String> {
        let producer = self.producer;
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30))).await;
        match flushed {
            Ok(Ok(())) => Ok(()),
            _ => Err("kafka producer: flushing at the end failed".into()),
        }
    }
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
