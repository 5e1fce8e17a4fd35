//! Deciding, as partitions are assigned, which ones lag enough to be read
//! with two cursors (live-first catch-up), and where the live cursor starts.
//!
//! For each assigned partition: `C` is the group's committed offset (or,
//! with none, where `start` says: the log start for `earliest`; `latest`
//! has no pile), `H` the log end, and `L` the first record younger than
//! `catch_up_live_from` (offsets-for-times; the log end when there is none,
//! as a broker answers when every record is older). When `L - C` reaches
//! `catch_up_after`, the partition is split: the group consumer is assigned
//! at `L`, and `[C, L)` becomes a catch-up range for the reader.
//!
//! Invariants: `C <= L <= H`; a partition whose offsets cannot be looked up
//! (a broker that does not answer in time) is not split, and is consumed
//! from its committed offset as a plain consumer would: nothing is skipped
//! on any path.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaSourceConfig;
use super::offsets::Offsets;
use crate::message::now_epoch_ms;

/// How long each offset lookup may take inside a rebalance.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The catch-up knobs the planner needs.
pub(super) struct SplitPolicy {
    after: u64,
    live_from: Duration,
    from_earliest: bool,
}

impl SplitPolicy {
    /// The policy of `config`, or `None` when catch-up is off.
    pub fn of(config: &KafkaSourceConfig) -> Option<SplitPolicy> {
        config.catch_up.then(|| SplitPolicy {
            after: config.catch_up_after,
            live_from: config.catch_up_live_from,
            from_earliest: config.start == "earliest",
        })
    }

    /// Splits the lagging partitions of `assigned`: sets their offset in
    /// `assigned` to the live start and hands their catch-up ranges to
    /// `offsets`. Called inside the rebalance, before the assignment.
    pub fn plan<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        assigned: &mut TopicPartitionList,
        offsets: &Offsets,
    ) {
        let committed = match consumer.committed_offsets(assigned.clone(), LOOKUP_TIMEOUT) {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "looking up committed offsets failed; no partition is split this time");
                return;
            }
        };
        // (topic, partition, C, H) of each partition that lags enough.
        let mut lagging = Vec::new();
        for e in committed.elements() {
            let (topic, partition) = (e.topic(), e.partition());
            let (low, high) = match consumer.fetch_watermarks(topic, partition, LOOKUP_TIMEOUT) {
                Ok(w) => w,
                Err(err) => {
                    tracing::warn!(topic, partition, error = %err, "looking up the log end failed; the partition is not split");
                    continue;
                }
            };
            let from = match e.offset() {
                Offset::Offset(o) if o >= low => o,
                // Nothing committed, or committed before what the log
                // still holds: where `start` says.
                _ if self.from_earliest => low,
                _ => continue,
            };
            if high.saturating_sub(from) >= self.after as i64 {
                lagging.push((topic.to_string(), partition, from, high));
            }
        }
        if lagging.is_empty() {
            return;
        }
        let live_starts = self.live_starts(consumer, &lagging);
        for ((topic, partition, from, high), live) in lagging.into_iter().zip(live_starts) {
            let to = live.unwrap_or(high).clamp(from, high);
            if to.saturating_sub(from) < self.after as i64 {
                continue;
            }
            if let Err(e) = assigned.set_partition_offset(&topic, partition, Offset::Offset(to)) {
                tracing::warn!(topic, partition, error = %e, "setting the live start failed; the partition is not split");
                continue;
            }
            tracing::info!(
                topic,
                partition,
                from,
                live_from = to,
                pile = to - from,
                "partition lags: reading it live from its live start while catching up from its committed offset"
            );
            offsets.split(&topic, partition, from, to);
        }
    }

    /// Each lagging partition's first offset younger than `live_from`
    /// (`None`: there is none, or it cannot be told).
    fn live_starts<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        lagging: &[(String, i32, i64, i64)],
    ) -> Vec<Option<i64>> {
        if self.live_from.is_zero() {
            return vec![None; lagging.len()];
        }
        let since = now_epoch_ms() - self.live_from.as_millis() as i64;
        let mut query = TopicPartitionList::with_capacity(lagging.len());
        for (topic, partition, ..) in lagging {
            if query
                .add_partition_offset(topic, *partition, Offset::Offset(since))
                .is_err()
            {
                return vec![None; lagging.len()];
            }
        }
        let answer = match consumer.offsets_for_times(query, LOOKUP_TIMEOUT) {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(error = %e, "offsets-for-times failed; live cursors start at the log end");
                return vec![None; lagging.len()];
            }
        };
        lagging
            .iter()
            .map(|(topic, partition, ..)| {
                match answer.find_partition(topic, *partition)?.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                }
            })
            .collect()
    }
}
