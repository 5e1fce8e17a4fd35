//! The Kafka sink: an idempotent producer (`acks=all`) that produces each
//! delivered message as a raw record (payload as value, the platform's
//! fields and the message's extra headers as headers), keyed by the
//! message's own key or by product and device (the `key` knob).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::config::{
    KafkaSinkConfig, KeyChoice, apply_properties, client_refused, resolve_brokers,
};
use super::record::{headers_of, mark_superseded, record_key};
use crate::knob::KnobError;
use crate::sink::{BatchError, Delivery, DeliveryError, Sink, SinkAdapter};

/// Produces delivered messages to a Kafka topic.
pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    key: KeyChoice,
    flush_timeout: Duration,
}

impl KafkaSink {
    /// Creates the producer (it connects in the background).
    pub fn new(config: KafkaSinkConfig) -> Result<KafkaSink, KnobError> {
        config.validate()?;
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", resolve_brokers(&config.brokers)?)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            )
            .set("linger.ms", "5");
        apply_properties(&mut client, &config.properties, "kafka sink");
        let producer: FutureProducer = client.create().map_err(client_refused)?;
        Ok(KafkaSink {
            producer,
            topic: config.topic,
            key: config.key,
            flush_timeout: config.delivery_timeout,
        })
    }
}

/// What a failed produce means for the message: no retry fixes an unknown
/// topic or a record too large; anything else (a full queue, a timeout, a
/// broker away) is "push limited": the message waits in the backlog.
fn classify(error: &KafkaError) -> DeliveryError {
    let reason = format!("kafka produce: {error}");
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::TopicAuthorizationFailed,
        ) => DeliveryError::Permanent(reason),
        _ => DeliveryError::PushLimited(reason),
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        let mut failed = Vec::new();
        let mut pending = Vec::with_capacity(batch.len());
        for (i, d) in batch.iter().enumerate() {
            let m = &d.message;
            let key = record_key(m, self.key);
            let record = FutureRecord::to(&self.topic)
                .payload(m.payload().as_ref())
                .key(key.as_ref())
                .headers(if d.superseded {
                    mark_superseded(headers_of(m))
                } else {
                    headers_of(m)
                });
            match self.producer.send_result(record) {
                Ok(future) => pending.push((i, future)),
                Err((e, _)) => failed.push((i, classify(&e))),
            }
        }
        for (i, future) in pending {
            match future.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => failed.push((i, classify(&e))),
                Err(_) => failed.push((
                    i,
                    DeliveryError::RetryLater("kafka producer went away".into()),
                )),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            failed.sort_unstable_by_key(|(i, _)| *i);
            Err(BatchError::Some(failed))
        }
    }

    async fn close(&self) -> Result<(), DeliveryError> {
        let producer = self.producer.clone();
        let timeout = self.flush_timeout;
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| DeliveryError::RetryLater(format!("flushing the producer: {e}")))?
            .map_err(|e| DeliveryError::RetryLater(format!("flushing the producer: {e}")))
    }
}

impl SinkAdapter for KafkaSinkConfig {
    fn check(&self) -> Result<(), KnobError> {
        self.validate()
    }

    fn build(&self) -> Result<Arc<dyn Sink>, KnobError> {
        Ok(Arc::new(KafkaSink::new(self.clone())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A property librdkafka refuses is named, its value never shown: it
    /// may be a password under a misspelt key.
    #[test]
    fn a_refused_property_is_named_and_its_value_never_shown() {
        for (key, value) in [
            ("sasl.pasword", "Zq9-MARK"),
            ("security.protocol", "Zq9-PROTO"),
        ] {
            let mut properties = std::collections::BTreeMap::new();
            properties.insert(
                key.to_string(),
                crate::secret::Secret::new(value.to_string()),
            );
            let config = KafkaSinkConfig {
                brokers: "127.0.0.1:9".into(),
                topic: "t".into(),
                properties,
                ..KafkaSinkConfig::default()
            };
            let Err(e) = KafkaSink::new(config) else {
                panic!("{key} = {value} was taken");
            };
            let e = e.to_string();
            assert!(!e.contains("Zq9"), "{e}");
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn only_errors_no_retry_fixes_are_permanent() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(matches!(classify(&e), DeliveryError::Permanent(_)));
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
        assert!(matches!(classify(&e), DeliveryError::PushLimited(_)));
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(matches!(classify(&e), DeliveryError::PushLimited(_)));
    }
}
