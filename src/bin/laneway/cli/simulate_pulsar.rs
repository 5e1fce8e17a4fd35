//! `laneway simulate --pulsar URL --topic T`: the device simulator as a
//! Pulsar producer, so the `pulsar` source can be tried with laneway's own
//! tools. Each message carries the platform's fields as the properties the
//! source reads (`topic`, `messageId`, `generateTime` in epoch
//! milliseconds), its payload as the message's bytes and its generate time
//! as the event time.
//!
//! Invariant: a message counts as sent only once the broker returned its
//! receipt; the exit code is non-zero when any did not.

use std::future::Future;
use std::time::Duration;

use pulsar::error::{ConnectionError, ProducerError};
use pulsar::producer::SendFuture;

use super::publish_loop::{self, Sent, Settled, Target, Words};
use super::simulate::SimulateArgs;
use laneway::message::Message;
use laneway::pulsar::{GENERATE_TIME, MESSAGE_ID, TOPIC};

/// How long connecting and creating the producer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The Pulsar message for one simulated message.
fn pulsar_message(m: &Message) -> pulsar::producer::Message {
    let properties = [
        (TOPIC.to_string(), m.topic().to_string()),
        (MESSAGE_ID.to_string(), m.message_id().to_string()),
        (GENERATE_TIME.to_string(), m.generate_time_ms().to_string()),
    ];
    pulsar::producer::Message {
        payload: m.payload().to_vec(),
        properties: properties.into_iter().collect(),
        event_time: u64::try_from(m.generate_time_ms()).ok(),
        ..Default::default()
    }
}

/// How long to wait before sending again when the broker connection says
/// `SlowDown` and no receipt is out to wait for instead.
const SLOW_DOWN_PAUSE: Duration = Duration::from_millis(10);

/// Produces; `Ok(false)` when some message got no receipt.
pub async fn produce(args: SimulateArgs) -> Result<bool, String> {
    let url = args.pulsar.clone().unwrap_or_default();
    let topic = args.topic.clone().unwrap_or_default();
    let connect = async {
        let client = pulsar::Pulsar::builder(url.as_str(), pulsar::TokioExecutor)
            .build()
            .await
            .map_err(|e| format!("pulsar {url}: connecting: {e}"))?;
        client
            .producer()
            .with_topic(topic.as_str())
            .with_name(format!("laneway-simulate-{}", std::process::id()))
            .build()
            .await
            .map_err(|e| format!("pulsar {url}: creating a producer on {topic}: {e}"))
    };
    let producer = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("pulsar {url}: no producer within {CONNECT_TIMEOUT:?}"))??;
    if !args.quiet {
        eprintln!(
            "simulate: producing to pulsar {url} topic {topic} ({} products x {} devices{})",
            args.products,
            args.devices,
            args.limit_words()
        );
    }
    publish_loop::publish(&args, PulsarTarget { producer, url }).await
}

/// The publish loop's Pulsar side: one producer on one topic.
struct PulsarTarget {
    producer: pulsar::Producer<pulsar::TokioExecutor>,
    /// The service URL, for errors.
    url: String,
}

impl Target for PulsarTarget {
    type Receipt = SendFuture;

    const WORDS: Words = Words::PRODUCED;

    async fn send(&mut self, m: &Message) -> Result<Sent<SendFuture>, String> {
        match self.producer.send_non_blocking(pulsar_message(m)).await {
            Ok(receipt) => Ok(Sent::Out(receipt)),
            // The connection's outbound queue is full: wait for the oldest
            // receipt (or a moment, when none is out) and send the same
            // message again.
            Err(pulsar::Error::Producer(ProducerError::Connection(ConnectionError::SlowDown))) => {
                Ok(Sent::QueueFull(Ok(SLOW_DOWN_PAUSE)))
            }
            Err(e) => Err(format!("pulsar {}: sending: {e}", self.url)),
        }
    }

    fn settle(&mut self, outcome: <SendFuture as Future>::Output) -> Result<Settled, String> {
        Ok(match outcome {
            Ok(_) => Settled::Ok,
            Err(e) => Settled::Failed(e.to_string()),
        })
    }

    /// Every receipt is in by now: a failed close loses nothing.
    async fn close(mut self) -> Result<(), String> {
        let _ = self.producer.close().await;
        Ok(())
    }
}
