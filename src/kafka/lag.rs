//! How far a consumer is from the log end: what `idle_exit` waits for, and
//! what a run that stops early reports as left to read.
//!
//! "Caught up" means: the consumer holds an assignment (a group still
//! waiting for a dead member's session to time out has given it none), no
//! catch-up range is left, and on every assigned partition its position
//! has reached the high watermark. The lag left at a stop is counted over
//! every partition of the source's topics, from the group's committed
//! offset to the high watermark: the records the group's next run still
//! has to read, whoever held them.
//!
//! Every look-up here asks the brokers and blocks, so callers run these
//! off the async runtime; a look-up that fails or times out answers
//! "not caught up" (an idle exit waits rather than stops with records
//! unread) and "unknown" for the lag.

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

/// How long one broker look-up may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the consumer has read every assigned partition to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Progress {
    /// Nothing assigned to this member yet.
    Unassigned,
    /// Records still unread on the assigned partitions.
    Behind(u64),
    /// Every assigned partition read to its high watermark.
    CaughtUp,
}

/// Where the consumer stands on its assigned partitions. `from_earliest`:
/// a partition with neither a position nor a commit is read from its log
/// start (`start = "earliest"`), else from its end.
pub(super) fn progress<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    from_earliest: bool,
) -> KafkaResult<Progress> {
    let assigned = consumer.assignment()?;
    if assigned.count() == 0 {
        return Ok(Progress::Unassigned);
    }
    let positions = consumer.position()?;
    let committed = consumer.committed_offsets(assigned.clone(), LOOKUP_TIMEOUT)?;
    let mut behind = 0u64;
    for e in assigned.elements() {
        let (topic, partition) = (e.topic(), e.partition());
        let (low, high) = consumer.fetch_watermarks(topic, partition, LOOKUP_TIMEOUT)?;
        let at = |list: &TopicPartitionList| match list.find_partition(topic, partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        let read_to = at(&positions)
            .or_else(|| at(&committed))
            .unwrap_or(if from_earliest { low } else { high });
        behind += u64::try_from(high - read_to.max(low)).unwrap_or(0);
    }
    Ok(if behind == 0 {
        Progress::CaughtUp
    } else {
        Progress::Behind(behind)
    })
}

/// Records of `topics` the consumer's group has not committed: the sum,
/// over every partition, of the high watermark less the committed offset
/// (where nothing is committed: less the log start with `from_earliest`,
/// else nothing, as the group would start at the end).
pub(super) fn group_lag<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topics: &[String],
    from_earliest: bool,
) -> KafkaResult<u64> {
    let mut all = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), LOOKUP_TIMEOUT)?;
        for t in metadata.topics() {
            for p in t.partitions() {
                all.add_partition(t.name(), p.id());
            }
        }
    }
    let committed = consumer.committed_offsets(all, LOOKUP_TIMEOUT)?;
    let mut lag = 0u64;
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), LOOKUP_TIMEOUT)?;
        let from = match e.offset() {
            Offset::Offset(o) => o.max(low),
            _ if from_earliest => low,
            _ => high,
        };
        lag += u64::try_from(high - from).unwrap_or(0);
    }
    Ok(lag)
}
