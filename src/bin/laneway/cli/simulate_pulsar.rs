//! `laneway simulate --pulsar URL --topic T`: the device simulator as a
//! Pulsar producer, so the `pulsar` source can be tried with laneway's own
//! tools. Each message carries the platform's fields as the properties the
//! source reads (`topic`, `messageId`, `generateTime` in epoch
//! milliseconds), its payload as the message's bytes and its generate time
//! as the event time.
//!
//! Invariant: a message counts as sent only once the broker returned its
//! receipt; the exit code is non-zero when any did not.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use super::simulate::{ProgressLine, Recorder, SimulateArgs};
use super::status::human;
use laneway::message::{Message, now_epoch_ms};
use laneway::pulsar::{GENERATE_TIME, MESSAGE_ID, TOPIC};
use laneway::source::simulator::Fleet;

/// A receipt on its way.
type Receipt = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

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
    let mut producer = tokio::time::timeout(CONNECT_TIMEOUT, connect)
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
    let mut recorder = Recorder::open(args.record.as_deref())?;
    let mut fleet = Fleet::new(args.products, args.devices, args.seed);
    let age_ms = args.age.as_millis() as i64;
    let window = args.in_flight.max(1);
    let mut in_flight: VecDeque<Receipt> = VecDeque::with_capacity(window);
    let (mut produced, mut acked, mut failed) = (0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    let mut failure: Option<String> = None;
    let start = Instant::now();
    let mut progress = ProgressLine::new(start, args.quiet);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut settle = |result: Result<(), String>| match result {
        Ok(()) => acked += 1,
        Err(e) => {
            failed += 1;
            first_error.get_or_insert(e);
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
            && let Some(receipt) = in_flight.pop_front()
        {
            settle(receipt.await);
        }
        let m = fleet.next_message(now_epoch_ms() - age_ms);
        let sent = loop {
            match producer.send_non_blocking(pulsar_message(&m)).await {
                // The connection's outbound queue is full: wait for the
                // oldest receipt (or a moment, when none is out) and send
                // the same message again.
                Err(pulsar::Error::Producer(pulsar::error::ProducerError::Connection(
                    pulsar::error::ConnectionError::SlowDown,
                ))) => match in_flight.pop_front() {
                    Some(receipt) => settle(receipt.await),
                    None => tokio::time::sleep(SLOW_DOWN_PAUSE).await,
                },
                other => break other,
            }
        };
        match sent {
            Ok(future) => in_flight.push_back(Box::pin(async move {
                future.await.map(|_| ()).map_err(|e| e.to_string())
            })),
            Err(e) => {
                failure = Some(format!("pulsar {url}: sending: {e}"));
                break;
            }
        }
        produced += 1;
        if let Err(e) = recorder.record(&m) {
            failure = Some(e);
            break;
        }
        progress.tick(produced, || format!("produced {produced}"));
    }
    while let Some(receipt) = in_flight.pop_front() {
        settle(receipt.await);
    }
    let _ = producer.close().await;
    if let Err(e) = recorder.finish() {
        failure.get_or_insert(e);
    }
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!(
        "simulate: produced {produced}, acknowledged {acked}, failed {failed} in {elapsed:.1}s ({}/s)",
        human(acked as f64 / elapsed.max(1e-9))
    );
    if let Some(e) = first_error {
        eprintln!("simulate: first failure: {e}");
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(failed == 0 && acked == produced)
}
