//! `/metrics`: the engine's counters in the OpenMetrics text format.
//!
//! The counters live in the engine (relaxed atomics on the hot paths);
//! nothing is counted twice here. One [`Registry`] holds one collector
//! that reads a [`Monitor`] at each scrape and writes every metric with
//! typed label sets. Names follow Prometheus conventions: counters end in
//! `_total` (the encoder appends it), units are in the name (`_seconds`,
//! `_bytes`), and each family has HELP text.

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::engine::Monitor;

/// Live latency histogram bucket bounds, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabels {
    group: String,
    lane: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    group: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IngestReason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

/// Reads the monitor at each scrape.
#[derive(Clone)]
struct EngineCollector {
    monitor: Monitor,
}

impl std::fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineCollector")
    }
}

/// One metric family: a name, its help, its type, and its samples.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family of one sample without labels.
fn single<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: M,
) -> Result<(), std::fmt::Error> {
    value.encode(encoder.encode_descriptor(name, help, None, value.metric_type())?)
}

/// One counter per group and reason: `pick` gives a group's counts by reason.
fn by_reason<'a, const N: usize>(
    groups: &'a [crate::engine::GroupSnapshot],
    pick: impl Fn(&crate::engine::GroupSnapshot) -> [(&'static str, u64); N] + 'a,
) -> impl Iterator<Item = (ReasonLabels, ConstCounter<u64>)> + 'a {
    groups.iter().flat_map(move |g| {
        pick(g).map(|(reason, v)| {
            let labels = ReasonLabels {
                group: g.name.clone(),
                reason,
            };
            (labels, counter(v))
        })
    })
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: i64) -> ConstGauge<i64> {
    ConstGauge::new(v)
}

fn gauge_f(v: f64) -> ConstGauge<f64> {
    ConstGauge::new(v)
}

fn gi(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl prometheus_client::collector::Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge, Histogram};
        let groups = self.monitor.groups();
        let by_group = |pick: fn(&crate::engine::GroupSnapshot) -> i64| {
            groups
                .iter()
                .map(move |g| {
                    (
                        GroupLabel {
                            group: g.name.clone(),
                        },
                        gauge(pick(g)),
                    )
                })
                .collect::<Vec<_>>()
        };
        let count_by_group = |pick: fn(&crate::engine::GroupSnapshot) -> u64| {
            groups
                .iter()
                .map(move |g| {
                    (
                        GroupLabel {
                            group: g.name.clone(),
                        },
                        counter(pick(g)),
                    )
                })
                .collect::<Vec<_>>()
        };
        let e = &mut enc;
        family(
            e,
            "laneway_group_live_depth_messages",
            "Messages waiting in the group's live lane.",
            Gauge,
            by_group(|g| gi(g.live_depth)),
        )?;
        family(
            e,
            "laneway_group_live_capacity_messages",
            "The live lane's capacity (live_capacity); beyond it, messages go to the backlog as push limited.",
            Gauge,
            by_group(|g| gi(g.live_capacity)),
        )?;
        family(
            e,
            "laneway_group_backlog_depth_messages",
            "Records in the group's backlog, in flight included.",
            Gauge,
            by_group(|g| gi(g.backlog_depth)),
        )?;
        family(
            e,
            "laneway_group_catch_up_depth_messages",
            "Messages in the group's catch-up lane: read from a lagging log by its catch-up cursor, served on the backlog's schedule, still held by their source.",
            Gauge,
            by_group(|g| gi(g.catch_up_depth)),
        )?;
        family(
            e,
            "laneway_group_backlog_bytes",
            "Bytes the backlog's records take in its store.",
            Gauge,
            by_group(|g| gi(g.backlog_bytes)),
        )?;
        family(
            e,
            "laneway_group_backlog_oldest_stored_seconds",
            "How long the oldest record has waited in the backlog (time stored, not the message's age since its generateTime; the disk store measures it from its oldest segment's creation, so it may overstate by the time that segment took to fill); absent when the backlog is empty or the store cannot tell.",
            Gauge,
            groups.iter().filter_map(|g| {
                g.backlog_oldest_stored_s.map(|a| {
                    (
                        GroupLabel {
                            group: g.name.clone(),
                        },
                        gauge_f(a),
                    )
                })
            }),
        )?;
        family(
            e,
            "laneway_group_admitted_messages",
            "Messages routed to the group.",
            Counter,
            count_by_group(|g| g.admitted),
        )?;
        family(
            e,
            "laneway_group_delivered_messages",
            "Messages delivered, by lane (live or backlog).",
            Counter,
            groups.iter().flat_map(|g| {
                [("live", g.delivered_live), ("backlog", g.delivered_backlog)].map(|(lane, v)| {
                    (
                        LaneLabels {
                            group: g.name.clone(),
                            lane,
                        },
                        counter(v),
                    )
                })
            }),
        )?;
        family(
            e,
            "laneway_group_diverted_messages",
            "Messages sent to the backlog instead of the live lane or after a failure, by reason: stale (older than live_window), push_limited (the live lane was full), failed (a failed delivery, retried from the backlog).",
            Counter,
            groups.iter().flat_map(|g| {
                [
                    ("stale", g.diverted_stale),
                    ("push_limited", g.diverted_full),
                    ("failed", g.diverted_failed),
                ]
                .map(|(reason, v)| {
                    (
                        ReasonLabels {
                            group: g.name.clone(),
                            reason,
                        },
                        counter(v),
                    )
                })
            }),
        )?;
        family(
            e,
            "laneway_group_retries",
            "Messages whose delivery attempt failed and that will be tried again (from the backlog or in their slot).",
            Counter,
            count_by_group(|g| g.failed_attempts),
        )?;
        family(
            e,
            "laneway_group_dead_letters",
            "Messages the group made dead letters, by reason: invalid_json (validate_json), permanent (the sink refused for good), attempts_exhausted (max_attempts failures).",
            Counter,
            by_reason(&groups, |g| {
                let r = g.dead_letter_by_reason;
                [
                    ("invalid_json", r.invalid_json),
                    ("permanent", r.permanent),
                    ("attempts_exhausted", r.attempts_exhausted),
                ]
            }),
        )?;
        family(
            e,
            "laneway_group_slots",
            "Delivery slots (slots).",
            Gauge,
            by_group(|g| gi(g.slots)),
        )?;
        family(
            e,
            "laneway_group_slots_limit",
            "Deliveries allowed in flight now: slots, or with slots = \"auto\" the adaptive limit.",
            Gauge,
            by_group(|g| gi(g.slots_limit)),
        )?;
        family(
            e,
            "laneway_group_superseded_skipped",
            "Messages superseded by a newer delivered one of the same device and kind, acknowledged without delivery (skip_superseded).",
            Counter,
            count_by_group(|g| g.superseded_skipped),
        )?;
        family(
            e,
            "laneway_group_superseded_delivered",
            "Messages delivered with their superseded flag set.",
            Counter,
            count_by_group(|g| g.superseded_delivered),
        )?;
        family(
            e,
            "laneway_group_slots_busy",
            "Delivery slots busy now.",
            Gauge,
            by_group(|g| gi(g.slots_busy)),
        )?;
        family(
            e,
            "laneway_group_backlog_full_episodes",
            "Times the backlog was found full (backpressure reached the sources).",
            Counter,
            count_by_group(|g| g.backlog_full),
        )?;
        family(
            e,
            "laneway_group_duplicates",
            "Messages the group's duplicate window had already seen (dedup_window): acknowledged to their source, not delivered again.",
            Counter,
            count_by_group(|g| g.duplicates),
        )?;
        family(
            e,
            "laneway_group_backlog_lost_records",
            "Records the backlog store gave up, by reason: cut (torn tails cut at recovery; never acknowledged), corrupt (found damaged), expired (past max_age), dropped (drop_oldest made room).",
            Counter,
            by_reason(&groups, |g| {
                let l = g.backlog_lost;
                [
                    ("cut", l.cut),
                    ("corrupt", l.corrupt),
                    ("expired", l.expired),
                    ("dropped", l.dropped),
                ]
            }),
        )?;
        // The live latency histogram, from each group's whole-run record.
        let histograms = self.monitor.live_latency_histograms();
        let mut metric = e.encode_descriptor(
            "laneway_group_live_latency_seconds",
            "Time from receipt to successful delivery of live messages.",
            None,
            Histogram,
        )?;
        for (g, h) in groups.iter().zip(&histograms) {
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                .iter()
                .map(|&b| (b, h.count_between(0, (b * 1e6) as u64)))
                .chain(std::iter::once((f64::INFINITY, h.len())))
                .collect();
            // prometheus-client wants per-bucket counts, not cumulative ones.
            let mut previous = 0;
            let per_bucket: Vec<(f64, u64)> = buckets
                .into_iter()
                .map(|(b, cumulative)| {
                    let n = cumulative.saturating_sub(previous);
                    previous = cumulative;
                    (b, n)
                })
                .collect();
            let sum: f64 = h
                .iter_recorded()
                .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
                .sum::<f64>()
                / 1e6;
            metric
                .encode_family(&GroupLabel {
                    group: g.name.clone(),
                })?
                .encode_histogram::<NoLabelSet>(sum, h.len(), &per_bucket, None)?;
        }

        let intake = self.monitor.intake();
        single(
            e,
            "laneway_ingested_items",
            "Items sources handed to the engine (messages and malformed input).",
            counter(intake.ingested),
        )?;
        single(
            e,
            "laneway_unrouted_messages",
            "Messages no group's filter matched (counted and acknowledged).",
            counter(intake.unrouted),
        )?;
        family(
            e,
            "laneway_ingest_dead_letters",
            "Input made a dead letter before any group, by reason: malformed (not a message), oversize (over max_message_bytes).",
            Counter,
            [
                ("malformed", intake.dead_malformed),
                ("oversize", intake.dead_oversize),
            ]
            .map(|(reason, v)| (IngestReason { reason }, counter(v))),
        )?;

        let sources = self.monitor.sources();
        let label = |name: &String| SourceLabel {
            source: name.clone(),
        };
        family(
            e,
            "laneway_source_received_items",
            "Items the source handed to the engine.",
            Counter,
            sources.iter().map(|(n, s)| (label(n), counter(s.received))),
        )?;
        family(
            e,
            "laneway_source_acked_messages",
            "Messages the source acknowledged to its origin (broker acks, checkpointed lines); only for sources that acknowledge.",
            Counter,
            sources
                .iter()
                .filter_map(|(n, s)| s.acked.map(|a| (label(n), counter(a)))),
        )?;
        family(
            e,
            "laneway_source_in_flight_messages",
            "Messages received and not yet acknowledged to the origin; only for sources that acknowledge.",
            Gauge,
            sources
                .iter()
                .filter_map(|(n, s)| s.in_flight.map(|a| (label(n), gauge(gi(a))))),
        )?;
        family(
            e,
            "laneway_source_reconnects",
            "Times the source lost its connection and started over.",
            Counter,
            sources
                .iter()
                .map(|(n, s)| (label(n), counter(s.reconnects))),
        )?;
        family(
            e,
            "laneway_source_connected",
            "1 while the source is connected to its origin, 0 while it connects or rides out trouble.",
            Gauge,
            sources
                .iter()
                .map(|(n, s)| (label(n), gauge(i64::from(s.connected)))),
        )?;
        family(
            e,
            "laneway_source_consumer_lag_messages",
            "Messages waiting at the origin unread, where the origin tells (Kafka consumer lag).",
            Gauge,
            sources
                .iter()
                .filter_map(|(n, s)| s.lag.map(|l| (label(n), gauge(gi(l))))),
        )?;
        family(
            e,
            "laneway_source_unlogged_errors",
            "Client errors counted but not logged: a retrying source logs one warning per retry interval.",
            Counter,
            sources
                .iter()
                .map(|(n, s)| (label(n), counter(s.unlogged_errors))),
        )?;
        Ok(())
    }
}

/// The registry `/metrics` encodes: one collector over the engine.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry reading `monitor` at each scrape.
    pub fn new(monitor: Monitor) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(EngineCollector { monitor }));
        Metrics { registry }
    }

    /// The OpenMetrics text of every metric now.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
