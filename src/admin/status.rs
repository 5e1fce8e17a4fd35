//! The consumer-group status: rates over 1 and 5 minutes, the drain ETA,
//! and a state in words, computed from samples of the engine's counters.
//!
//! One [`Tracker`] samples the [`Monitor`] once per interval and keeps ten
//! minutes of samples; `/status`, the dashboard and the stderr status line
//! all read its samples, so they never disagree. It is the only reader of
//! the engine's interval latencies (each read resets them).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::engine::{GroupSnapshot, LatencySummary, Monitor};
use crate::message::now_epoch_ms;
use crate::source::SourceSnapshot;

/// How long the tracker keeps samples (the dashboard's window and more
/// than the 5-minute rates need).
const KEEP: Duration = Duration::from_secs(600);

/// No delivery for this long while messages wait makes a group `stalled`
/// (or `failing`, when its deliveries fail).
const STALL_AFTER: Duration = Duration::from_secs(10);

/// Samples the engine's counters and derives the status from them.
/// Cheap to clone.
#[derive(Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

struct Inner {
    monitor: Monitor,
    interval: Duration,
    samples: Mutex<VecDeque<Sample>>,
    /// The latest sample's sequence number: `/status?after=` and the status
    /// line wait on it.
    seq: watch::Sender<u64>,
    /// Per group, epoch ms of the last delivery seen (0: none yet).
    last_delivery: Mutex<Vec<i64>>,
}

/// One sample of every group.
#[derive(Clone)]
struct Sample {
    at: Instant,
    epoch_ms: i64,
    groups: Vec<GroupSnapshot>,
    /// Live latency over the interval that ended at this sample.
    latency: Vec<LatencySummary>,
}

/// What `/status` answers: the whole engine at one sample.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The sample's sequence number (pass it as `?after=` to wait for the next).
    pub seq: u64,
    /// When it was taken (epoch milliseconds).
    pub time_ms: i64,
    /// Seconds since the run started.
    pub uptime_s: f64,
    /// One entry per consumer group.
    pub groups: Vec<GroupStatus>,
    /// One entry per source.
    pub sources: Vec<SourceStatus>,
}

/// A group's state, as the platform's consumer-group status names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupState {
    /// The backlog is empty: live messages are delivered as they come.
    Realtime,
    /// The backlog holds records and is being drained (or grows).
    CatchingUp,
    /// Messages wait and nothing was delivered lately, without failures.
    Stalled,
    /// Deliveries fail: attempts fail or dead letters are made, and
    /// nothing was delivered lately.
    Failing,
}

impl GroupState {
    /// The state as `/status` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Realtime => "realtime",
            GroupState::CatchingUp => "catching_up",
            GroupState::Stalled => "stalled",
            GroupState::Failing => "failing",
        }
    }
}

/// Deliveries per second over the last 1 and 5 minutes (or over the
/// samples there are, early in a run).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rates {
    /// Over the last minute.
    pub m1: f64,
    /// Over the last five minutes.
    pub m5: f64,
}

/// One group in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    /// The group's name.
    pub name: String,
    /// Its state.
    pub state: GroupState,
    /// Why, in a few words.
    pub reason: String,
    /// Messages waiting: the live lane plus the backlog.
    pub accumulated: u64,
    /// Messages in the live lane.
    pub live_depth: u64,
    /// The live lane's capacity.
    pub live_capacity: u64,
    /// Records in the backlog.
    pub backlog_depth: u64,
    /// Their bytes in the store.
    pub backlog_bytes: u64,
    /// Seconds the oldest backlog record has waited in the store (time
    /// stored, not the message's age), where the store tells.
    pub backlog_oldest_stored_s: Option<f64>,
    /// Deliveries per second from the live lane.
    pub live_rate: Rates,
    /// Deliveries per second from the backlog.
    pub backlog_rate: Rates,
    /// Net drain: backlog records per second going away, since the
    /// backlog's highest depth within the last minute (negative or zero
    /// while it grows: its highest depth is now).
    pub net_drain_rate: f64,
    /// Seconds until the backlog is empty at the net drain rate; `None`
    /// when it is empty or growing (see `drain_eta`).
    pub drain_eta_s: Option<f64>,
    /// The ETA in words: "drained", "growing", or a duration ("2m 5s").
    pub drain_eta: String,
    /// The last delivery (epoch ms); `None` before the first.
    pub last_delivery_ms: Option<i64>,
    /// Messages delivered so far, both lanes.
    pub delivered: u64,
    /// Dead letters so far.
    pub dead_letters: u64,
    /// Dead letters per second over the last minute.
    pub dead_letter_rate: f64,
    /// Messages the duplicate window recognised and acknowledged without
    /// delivering them again (`dedup_window`).
    pub duplicates: u64,
    /// Live latency over the last interval (ms).
    pub live_latency_ms: LatencySummary,
    /// Messages skipped as superseded (`skip_superseded`), and those
    /// delivered with the flag.
    pub superseded_skipped: u64,
    /// Messages delivered with their `superseded` flag set.
    pub superseded_delivered: u64,
    /// Delivery slots (with `slots = "auto"`, `max_slots`).
    pub slots: u64,
    /// Deliveries allowed in flight now: `slots`, or the adaptive limit.
    pub slots_limit: u64,
    /// Whether the limit follows the sink (`slots = "auto"`).
    pub slots_adaptive: bool,
    /// Slots delivering now.
    pub slots_busy: u64,
}

/// One source in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// The source's name (a path, a queue with its redacted broker URL).
    pub name: String,
    /// `connected`, or `connecting` while it rides out trouble or has not
    /// reached its origin yet.
    pub state: &'static str,
    /// Its counters, trouble and lag.
    #[serde(flatten)]
    pub counters: SourceSnapshot,
}

/// One point of a group's history, for the dashboard's charts.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryPoint {
    /// Epoch milliseconds.
    pub t: i64,
    /// Live deliveries per second over the interval.
    pub live: f64,
    /// Backlog deliveries per second over the interval.
    pub backlog: f64,
    /// Backlog depth.
    pub depth: u64,
    /// Live latency p50 over the interval (ms); `None` without deliveries.
    pub p50: Option<f64>,
    /// Live latency p99 over the interval (ms).
    pub p99: Option<f64>,
}

/// A group's history.
#[derive(Debug, Clone, Serialize)]
pub struct GroupHistory {
    /// The group.
    pub name: String,
    /// Oldest first.
    pub points: Vec<HistoryPoint>,
}

impl Tracker {
    /// A tracker over `monitor`, sampling every `interval` once
    /// [`Tracker::run`] runs. Takes a first sample at once.
    pub fn new(monitor: Monitor, interval: Duration) -> Tracker {
        let groups = monitor.groups();
        let n = groups.len();
        let first = Sample {
            at: Instant::now(),
            epoch_ms: now_epoch_ms(),
            latency: vec![LatencySummary::default(); n],
            groups,
        };
        let (seq, _) = watch::channel(0);
        Tracker {
            inner: Arc::new(Inner {
                monitor,
                interval: interval.max(Duration::from_millis(50)),
                samples: Mutex::new(VecDeque::from([first])),
                seq,
                last_delivery: Mutex::new(vec![0; n]),
            }),
        }
    }

    /// Samples every interval until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.inner.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.sample(),
            }
        }
    }

    /// Takes one sample now.
    pub fn sample(&self) {
        let inner = &*self.inner;
        let sample = Sample {
            at: Instant::now(),
            epoch_ms: now_epoch_ms(),
            groups: inner.monitor.groups(),
            latency: inner.monitor.interval_latencies(),
        };
        {
            let mut samples = inner.samples.lock();
            if let Some(prev) = samples.back() {
                let mut last = inner.last_delivery.lock();
                for (i, (g, p)) in sample.groups.iter().zip(&prev.groups).enumerate() {
                    if delivered(g) > delivered(p)
                        && let Some(slot) = last.get_mut(i)
                    {
                        *slot = sample.epoch_ms;
                    }
                }
            }
            samples.push_back(sample);
            while samples
                .front()
                .is_some_and(|s| s.at.elapsed() > KEEP && samples.len() > 2)
            {
                samples.pop_front();
            }
        }
        inner.seq.send_modify(|s| *s += 1);
    }

    /// The latest sample's sequence number.
    pub fn seq(&self) -> u64 {
        *self.inner.seq.borrow()
    }

    /// Waits until a sample newer than `after` exists, for at most `limit`
    /// (a long poll: `/status?after=N` answers as soon as sample N+1 is
    /// taken, with no polling on either side).
    pub async fn wait_after(&self, after: u64, limit: Duration) {
        let mut rx = self.inner.seq.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|s| *s > after)).await;
    }

    /// The monitor sampled.
    pub fn monitor(&self) -> &Monitor {
        &self.inner.monitor
    }

    /// The status as of the latest sample.
    pub fn status(&self) -> Status {
        let inner = &*self.inner;
        let seq = self.seq();
        let samples = inner.samples.lock();
        let last_delivery = inner.last_delivery.lock().clone();
        let Some(now) = samples.back().cloned() else {
            return Status {
                seq,
                time_ms: now_epoch_ms(),
                uptime_s: 0.0,
                groups: Vec::new(),
                sources: Vec::new(),
            };
        };
        let at = |age: Duration| -> &Sample {
            samples
                .iter()
                .find(|s| now.at.duration_since(s.at) <= age)
                .unwrap_or(&now)
        };
        let (m1, m5) = (at(Duration::from_secs(60)), at(Duration::from_secs(300)));
        let stall = at(STALL_AFTER);
        let groups = now
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let rate = |from: &Sample, pick: fn(&GroupSnapshot) -> u64| -> f64 {
                    let dt = now.at.duration_since(from.at).as_secs_f64();
                    match from.groups.get(i) {
                        Some(p) if dt > 0.0 => pick(g).saturating_sub(pick(p)) as f64 / dt,
                        _ => 0.0,
                    }
                };
                let live_rate = Rates {
                    m1: rate(m1, |g| g.delivered_live),
                    m5: rate(m5, |g| g.delivered_live),
                };
                let backlog_rate = Rates {
                    m1: rate(m1, |g| g.delivered_backlog),
                    m5: rate(m5, |g| g.delivered_backlog),
                };
                // Net drain since the backlog's peak within the last
                // minute: a backlog at its peak now is growing; one that
                // fell from a peak drains at the average rate since.
                let peak = samples
                    .iter()
                    .filter(|s| now.at.duration_since(s.at) <= Duration::from_secs(60))
                    .filter_map(|s| s.groups.get(i).map(|p| (s.at, p.backlog_depth)))
                    .fold(None::<(Instant, u64)>, |best, (at, d)| match best {
                        Some((_, bd)) if bd >= d => best,
                        _ => Some((at, d)),
                    });
                let net_drain_rate = match peak {
                    Some((at, depth)) if depth > g.backlog_depth => {
                        let dt = now.at.duration_since(at).as_secs_f64().max(1e-3);
                        (depth - g.backlog_depth) as f64 / dt
                    }
                    // At its peak: growing (or flat), measured over the minute.
                    _ => {
                        let dt = now.at.duration_since(m1.at).as_secs_f64();
                        match m1.groups.get(i) {
                            Some(p) if dt > 0.0 => {
                                (p.backlog_depth as f64 - g.backlog_depth as f64) / dt
                            }
                            _ => 0.0,
                        }
                    }
                };
                let (drain_eta_s, drain_eta) = eta(g.backlog_depth, net_drain_rate);
                let recent = stall.groups.get(i);
                let delivered_lately = recent.is_none_or(|p| delivered(g) > delivered(p));
                let failing_lately = recent.is_some_and(|p| {
                    g.failed_attempts > p.failed_attempts || g.dead_letter > p.dead_letter
                });
                let waiting = g.live_depth + g.backlog_depth;
                let stalled_for = now.at.duration_since(stall.at).as_secs_f64();
                let (state, reason) = if waiting > 0 && !delivered_lately && failing_lately {
                    (
                        GroupState::Failing,
                        format!(
                            "deliveries failing: nothing delivered for {stalled_for:.0}s, {} failed attempts and {} dead letters so far",
                            g.failed_attempts, g.dead_letter
                        ),
                    )
                } else if waiting > 0 && !delivered_lately && stalled_for >= 1.0 {
                    (
                        GroupState::Stalled,
                        format!("nothing delivered for {stalled_for:.0}s with {waiting} waiting"),
                    )
                } else if g.backlog_depth > 0 {
                    let why = match drain_eta_s {
                        Some(_) => format!(
                            "draining {} backlog records at {:.0}/s net, empty in about {drain_eta}",
                            g.backlog_depth, net_drain_rate
                        ),
                        None => format!(
                            "backlog holds {} records and is growing ({:.0}/s delivered from it)",
                            g.backlog_depth, backlog_rate.m1
                        ),
                    };
                    (GroupState::CatchingUp, why)
                } else {
                    (
                        GroupState::Realtime,
                        "backlog empty: live messages are delivered as they come".to_string(),
                    )
                };
                GroupStatus {
                    name: g.name.clone(),
                    state,
                    reason,
                    accumulated: waiting,
                    live_depth: g.live_depth,
                    live_capacity: g.live_capacity,
                    backlog_depth: g.backlog_depth,
                    backlog_bytes: g.backlog_bytes,
                    backlog_oldest_stored_s: g.backlog_oldest_stored_s,
                    live_rate,
                    backlog_rate,
                    net_drain_rate,
                    drain_eta_s,
                    drain_eta,
                    last_delivery_ms: last_delivery.get(i).copied().filter(|&t| t > 0),
                    delivered: delivered(g),
                    dead_letters: g.dead_letter,
                    dead_letter_rate: rate(m1, |g| g.dead_letter),
                    duplicates: g.duplicates,
                    live_latency_ms: now.latency.get(i).copied().unwrap_or_default(),
                    superseded_skipped: g.superseded_skipped,
                    superseded_delivered: g.superseded_delivered,
                    slots: g.slots,
                    slots_limit: g.slots_limit,
                    slots_adaptive: g.slots_adaptive,
                    slots_busy: g.slots_busy,
                }
            })
            .collect();
        drop(samples);
        let sources = inner
            .monitor
            .sources()
            .into_iter()
            .map(|(name, counters)| SourceStatus {
                name,
                state: if counters.connected {
                    "connected"
                } else {
                    "connecting"
                },
                counters,
            })
            .collect();
        Status {
            seq,
            time_ms: now.epoch_ms,
            uptime_s: inner.monitor.elapsed().as_secs_f64(),
            groups,
            sources,
        }
    }

    /// Each group's history over the samples kept (up to ten minutes).
    pub fn history(&self) -> Vec<GroupHistory> {
        let samples = self.inner.samples.lock();
        let Some(first) = samples.front() else {
            return Vec::new();
        };
        first
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let points = samples
                    .iter()
                    .zip(samples.iter().skip(1))
                    .filter_map(|(p, s)| {
                        let (pg, sg) = (p.groups.get(i)?, s.groups.get(i)?);
                        let dt = s.at.duration_since(p.at).as_secs_f64().max(1e-3);
                        let lat = s.latency.get(i).copied().unwrap_or_default();
                        let has = lat.count > 0;
                        Some(HistoryPoint {
                            t: s.epoch_ms,
                            live: sg.delivered_live.saturating_sub(pg.delivered_live) as f64 / dt,
                            backlog: sg.delivered_backlog.saturating_sub(pg.delivered_backlog)
                                as f64
                                / dt,
                            depth: sg.backlog_depth,
                            p50: has.then_some(lat.p50),
                            p99: has.then_some(lat.p99),
                        })
                    })
                    .collect();
                GroupHistory {
                    name: g.name.clone(),
                    points,
                }
            })
            .collect()
    }

    /// Per group, live latency over the latest interval and delivery rates
    /// over it (live, backlog), for the stderr status line.
    pub fn latest_interval(&self) -> Vec<(GroupSnapshot, LatencySummary, f64, f64)> {
        let samples = self.inner.samples.lock();
        let mut back = samples.iter().rev();
        let (Some(now), prev) = (back.next(), back.next()) else {
            return Vec::new();
        };
        let dt = prev.map_or(0.0, |p| now.at.duration_since(p.at).as_secs_f64());
        now.groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let (live, backlog) = match prev.and_then(|p| p.groups.get(i)) {
                    Some(p) if dt > 0.0 => (
                        g.delivered_live.saturating_sub(p.delivered_live) as f64 / dt,
                        g.delivered_backlog.saturating_sub(p.delivered_backlog) as f64 / dt,
                    ),
                    _ => (0.0, 0.0),
                };
                let lat = now.latency.get(i).copied().unwrap_or_default();
                (g.clone(), lat, live, backlog)
            })
            .collect()
    }
}

fn delivered(g: &GroupSnapshot) -> u64 {
    g.delivered_live + g.delivered_backlog
}

/// The drain ETA: depth ÷ net drain rate, in seconds and in words.
fn eta(depth: u64, net_drain_rate: f64) -> (Option<f64>, String) {
    if depth == 0 {
        return (Some(0.0), "drained".into());
    }
    if net_drain_rate <= 0.0 {
        return (None, "growing".into());
    }
    let s = depth as f64 / net_drain_rate;
    (Some(s), words(s))
}

/// 125.0 → "2m 5s"; 3725.0 → "1h 2m".
pub fn words(seconds: f64) -> String {
    let s = seconds.max(0.0).ceil() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_is_depth_over_net_drain_or_growing() {
        assert_eq!(eta(0, 0.0), (Some(0.0), "drained".to_string()));
        assert_eq!(eta(10, 0.0), (None, "growing".to_string()));
        assert_eq!(eta(10, -3.0), (None, "growing".to_string()));
        assert_eq!(eta(1000, 10.0), (Some(100.0), "1m 40s".to_string()));
        assert_eq!(words(7325.0), "2h 2m");
        assert_eq!(words(0.2), "1s");
    }
}
