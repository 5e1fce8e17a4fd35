//! Looking at a broker backlog from outside (`laneway backlog inspect`):
//! the depth of its three queues, and the first records' kinds, the oldest
//! message's age (from its generate time, as the platform stamped it) and
//! the longest any of them has waited in the backlog (from the time it was
//! stored), read from their headers.
//!
//! Invariant: nothing is removed and nothing is declared. The first
//! records are read with `basic.get` and never acked; they are given back
//! (`basic.nack` with requeue, one by one in queue order) to the head of
//! the queue. A quorum queue counts that as one delivery toward
//! `x-delivery-limit`, and for that moment other instances cannot take
//! them.

use lapin::options::{BasicGetOptions, BasicNackOptions};

use super::AmqpBacklogConfig;
use super::record;
use crate::amqp::core::connect::{AmqpError, Failure, connect};
use crate::amqp::core::declare;
use crate::backlog::BacklogError;
use crate::message::now_epoch_ms;

/// What a broker backlog holds, as the broker tells it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BacklogQueueInspection {
    /// The backlog queue.
    pub queue: String,
    /// Ready messages in the backlog queue.
    pub ready: u64,
    /// Consumers (laneway instances) on the backlog queue.
    pub consumers: u64,
    /// Retries waiting out their backoff in the wait queue.
    pub waiting: u64,
    /// Messages in the poison queue (past the delivery limit, or not
    /// laneway records).
    pub poison: u64,
    /// Age in milliseconds of the oldest message among the first records:
    /// now minus its generate time (a pile ten minutes old reads ten
    /// minutes, however recently it reached the backlog).
    pub oldest_age_ms: Option<i64>,
    /// The longest any of the first records has been in the backlog, in
    /// milliseconds, by its stored-at header.
    pub longest_stored_ms: Option<i64>,
    /// The kind of each of the first records, in queue order (`?` for a
    /// message that is not a laneway record).
    pub first_kinds: Vec<String>,
}

/// Inspects the broker backlog of `group` configured by `config`, reading
/// at most `first` records.
pub async fn inspect(
    config: &AmqpBacklogConfig,
    group: &str,
    first: usize,
) -> Result<BacklogQueueInspection, BacklogError> {
    let (url, names) = config
        .validate(group)
        .map_err(|e| BacklogError::Unavailable(e.to_string()))?;
    let connection = connect(&url, "laneway backlog inspect")
        .await
        .map_err(|e| BacklogError::Unavailable(e.to_string()))?;
    let failed = |what: String, e: lapin::Error| {
        let error = AmqpError::classify(&url, &what, &e, false);
        if error.failure == Failure::NotFound {
            // `inspect` declares nothing: say what creates the queue.
            return BacklogError::Unavailable(format!(
                "{}: {what}: it does not exist; a broker backlog's queues are declared by the first `laneway run` whose group has backlog = {{ store = \"amqp\", queue = \"{}\" }}",
                url.redacted(),
                names.backlog
            ));
        }
        BacklogError::Unavailable(error.to_string())
    };
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| failed("opening a channel".into(), e))?;
    let mut counts = Vec::with_capacity(3);
    for queue in [&names.backlog, &names.wait, &names.poison] {
        let q = declare::counts(&channel, queue)
            .await
            .map_err(|e| failed(format!("checking queue {queue}"), e))?;
        counts.push((u64::from(q.message_count()), u64::from(q.consumer_count())));
    }
    let now = now_epoch_ms();
    let mut first_kinds = Vec::new();
    let mut oldest: Option<i64> = None;
    let mut first_stored: Option<i64> = None;
    let mut tags = Vec::new();
    while first_kinds.len() < first {
        let got = channel
            .basic_get(names.backlog.clone(), BasicGetOptions::default())
            .await
            .map_err(|e| failed(format!("reading queue {}", names.backlog), e))?;
        let Some(got) = got else { break };
        let d = got.delivery;
        tags.push(d.delivery_tag);
        if let Some(at) = record::stored_at(&d.properties) {
            first_stored = Some(first_stored.map_or(at, |o| o.min(at)));
        }
        first_kinds.push(match record::decode(&d.properties, d.data) {
            Ok(r) => {
                let born = r.record.message.generate_time_ms();
                oldest = Some(oldest.map_or(born, |o| o.min(born)));
                r.record.message.kind().as_str().to_string()
            }
            Err(_) => "?".into(),
        });
    }
    // Never acked: given back one by one, in queue order, so they keep
    // their places (closing the channel would give them back all at once,
    // in an order the broker chooses).
    for tag in tags {
        let _ = channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            )
            .await;
    }
    let _ = channel.close(200, "inspected".into()).await;
    let _ = connection.close(200, "inspected".into()).await;
    Ok(BacklogQueueInspection {
        queue: names.backlog.to_string(),
        ready: counts[0].0,
        consumers: counts[0].1,
        waiting: counts[1].0,
        poison: counts[2].0,
        oldest_age_ms: oldest.map(|at| now.saturating_sub(at).max(0)),
        longest_stored_ms: first_stored.map(|at| now.saturating_sub(at).max(0)),
        first_kinds,
    })
}
