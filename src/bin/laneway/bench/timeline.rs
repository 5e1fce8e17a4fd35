//! What a load scenario measures: every successful delivery, bucketed into
//! fixed windows by delivery time, with its latency and lane.
//!
//! Invariants: latency is measured from the moment the message was created
//! (received) to the moment the sink finished with it; only live-traffic
//! messages count towards live latency (a pre-loaded stale pile does not);
//! windows are dense from the start of the run, so a plot has no gaps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

use laneway::engine::LatencySummary;
use laneway::sink::Lane;
use laneway::sink::{BatchError, Delivery, DeliveryError, Sink};

/// The width of one timeline window.
pub const WINDOW: Duration = Duration::from_millis(100);

fn histogram() -> Histogram<u64> {
    // Microseconds up to ten minutes, two significant figures: small and exact enough.
    Histogram::new_with_bounds(1, 600_000_000, 2)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
}

/// One window's deliveries.
#[derive(Clone)]
pub struct Window {
    /// Live-traffic latencies of deliveries from the live lane (for FIFO: its only lane).
    pub live_latency: Histogram<u64>,
    /// Deliveries from the live lane.
    pub live: u64,
    /// Deliveries from the backlog lane.
    pub backlog: u64,
    /// Backlog depth sampled in this window.
    pub backlog_depth: u64,
    /// Latencies of live-traffic messages delivered from the backlog lane
    /// (the live lane had no room for them): what `laneway tune` counts
    /// towards live latency beside `live_latency`, so a lane that spills
    /// cannot look fast.
    pub spilled_latency: Histogram<u64>,
    /// Pre-loaded pile messages delivered from the backlog lane: the drain
    /// itself, without the live traffic that spilled into the backlog.
    pub pile: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            live_latency: histogram(),
            live: 0,
            backlog: 0,
            backlog_depth: 0,
            spilled_latency: histogram(),
            pile: 0,
        }
    }
}

/// Collects deliveries into windows.
pub struct Timeline {
    start: Instant,
    windows: Mutex<Vec<Window>>,
}

impl Timeline {
    /// A timeline starting now.
    pub fn new() -> Arc<Timeline> {
        Arc::new(Timeline {
            start: Instant::now(),
            windows: Mutex::new(Vec::new()),
        })
    }

    /// When the timeline started.
    pub fn start(&self) -> Instant {
        self.start
    }

    fn index(&self, at: Instant) -> usize {
        (at.saturating_duration_since(self.start).as_nanos() / WINDOW.as_nanos()) as usize
    }

    fn with_window<R>(&self, at: Instant, f: impl FnOnce(&mut Window) -> R) -> R {
        let i = self.index(at);
        let mut windows = self.windows.lock();
        if windows.len() <= i {
            windows.resize_with(i + 1, Window::default);
        }
        f(&mut windows[i])
    }

    /// Records a delivered batch; `live_traffic` tells which messages are
    /// live traffic (not a pre-loaded pile).
    pub fn record(&self, batch: &[Delivery], live_traffic: impl Fn(&Delivery) -> bool) {
        let now = Instant::now();
        self.with_window(now, |w| {
            for d in batch {
                let us = || {
                    let waited = now.saturating_duration_since(d.message.received_at());
                    (waited.as_micros() as u64).max(1)
                };
                match d.lane {
                    Lane::Live => {
                        w.live += 1;
                        if live_traffic(d) {
                            w.live_latency.saturating_record(us());
                        }
                    }
                    Lane::Backlog => {
                        w.backlog += 1;
                        if live_traffic(d) {
                            w.spilled_latency.saturating_record(us());
                        } else {
                            w.pile += 1;
                        }
                    }
                }
            }
        });
    }

    /// Notes the backlog depth now.
    pub fn sample_depth(&self, depth: u64) {
        self.with_window(Instant::now(), |w| {
            w.backlog_depth = w.backlog_depth.max(depth)
        });
    }

    /// A copy of every window so far.
    pub fn windows(&self) -> Vec<Window> {
        self.windows.lock().clone()
    }
}

/// A sink wrapper that records successful deliveries into a timeline.
pub struct MeasuredSink<S> {
    inner: S,
    timeline: Arc<Timeline>,
    /// Messages generated before this epoch-ms instant are the pre-loaded pile.
    pile_before_ms: i64,
}

impl<S> MeasuredSink<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, timeline: Arc<Timeline>, pile_before_ms: i64) -> MeasuredSink<S> {
        MeasuredSink {
            inner,
            timeline,
            pile_before_ms,
        }
    }
}

#[async_trait]
impl<S: Sink> Sink for MeasuredSink<S> {
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        let result = self.inner.deliver(batch).await;
        if result.is_ok() {
            let pile = self.pile_before_ms;
            self.timeline
                .record(batch, |d| d.message.generate_time_ms() >= pile);
        }
        result
    }

    async fn close(&self) -> Result<(), DeliveryError> {
        self.inner.close().await
    }
}

/// Live latency percentiles and lane counts over a span of windows.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// Seconds from the start of the run where the phase starts.
    pub from_s: f64,
    /// Seconds from the start where it ends.
    pub to_s: f64,
    /// Live latency over the phase, in milliseconds.
    pub live_latency_ms: LatencySummary,
    /// Deliveries from the live lane.
    pub delivered_live: u64,
    /// Deliveries from the backlog lane.
    pub delivered_backlog: u64,
}

/// Sums windows `[from, to)` into a phase report.
pub fn phase(windows: &[Window], from: usize, to: usize) -> PhaseReport {
    let mut h = histogram();
    let (mut live, mut backlog) = (0, 0);
    for w in windows.iter().take(to).skip(from) {
        let _ = h.add(&w.live_latency);
        live += w.live;
        backlog += w.backlog;
    }
    let secs = |i: usize| i as f64 * WINDOW.as_secs_f64();
    PhaseReport {
        from_s: secs(from),
        to_s: secs(to.min(windows.len())),
        live_latency_ms: LatencySummary::of(&h),
        delivered_live: live,
        delivered_backlog: backlog,
    }
}

/// The p99 live latency of one window in ms (`None` when it delivered no live traffic).
pub fn window_p99_ms(w: &Window) -> Option<f64> {
    (!w.live_latency.is_empty()).then(|| w.live_latency.value_at_quantile(0.99) as f64 / 1000.0)
}
