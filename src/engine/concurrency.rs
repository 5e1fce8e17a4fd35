//! Adaptive concurrency (`slots = "auto"`): how many deliveries a group
//! keeps in flight, following what its sink shows.
//!
//! The rule is additive increase, decrease on congestion, with the queue
//! estimated from round trips (TCP Vegas, as Netflix's concurrency-limits
//! `VegasLimit` applies it to requests) and the no-load round trip
//! re-measured now and then (BBR's "probe RTT"):
//!
//! - the *base* round trip is the shortest a window showed since the last
//!   probe: what one delivery costs the sink without queueing;
//! - a window's queue is `limit × (1 − base / round trip)`: how many of
//!   the deliveries in flight wait at the sink rather than being served;
//! - the limit grows by one slot per window (about one mean round trip) in
//!   which the group used every slot, the sink did not push back and the
//!   queue was under `α = max(1, 2·log10 limit)`; it shrinks by one when the
//!   queue is over `β = max(2, 4·log10 limit)`, and to 90 % (at least by
//!   one) in a window where the sink said "push limited" or failed in a way
//!   worth retrying (timeouts, 5xx, refused connections);
//! - every [`PROBE_EVERY`] the limit drops to a quarter for one window,
//!   whose round trip becomes the new base, and then returns: a sink that
//!   became slower for good gets a base that says so, and one that was
//!   queueing all along shows its true cost (at `min` no probe can lower
//!   the load, so that window's round trip is the base). A queue that shows against a
//!   base older than a second, or a round trip well under it, is checked by
//!   such a probe at once, so a sink that just got slower is not mistaken
//!   for one that is queueing, nor one that got faster measured with a
//!   queue in it.
//!
//! Why not plain AIMD on the round trip's moving mean (Vector's adaptive
//! request concurrency): it sees a change, not a level. Against a service
//! with 4 workers, each added slot raised the round trip by a quarter of a
//! service time, the mean caught up within a few windows, and the limit
//! crept to `max_slots` (32), every request queueing behind 7 others (live
//! p99 202 ms where 4–8 static slots gave 44–94 ms; benches/http.rs). A
//! gradient limiter (Netflix's `Gradient2`, Envoy's adaptive concurrency
//! filter) also keeps a base, but Envoy pauses all traffic to measure it;
//! a quarter of the limit for one window in ten seconds costs the drain
//! under one round trip in ten seconds. Netflix's Vegas thresholds are
//! 3 and 6 × log10 limit; 2 and 4 keep the queue nearer one service time at
//! the small limits a group runs (4 workers: 6 slots, not 8).
//!
//! Invariants: the limit stays within `min..=max`; it grows only in a
//! window where the group was limited by it (so an idle group does not
//! inflate its limit); only round trips of batches that speak for the
//! load are timed; the state is plain data driven by the times handed in,
//! so its promises are tested directly.

use std::time::{Duration, Instant};

/// How often the base round trip is measured afresh (one window at a
/// quarter of the limit).
pub const PROBE_EVERY: Duration = Duration::from_secs(10);

/// A queue against a base at least this old is checked by a probe before
/// the limit shrinks for it.
const EARLY_PROBE_AFTER: Duration = Duration::from_secs(1);

/// The weight of the newest window in the moving mean round trip (which
/// sets the window's length).
const EWMA_ALPHA: f64 = 0.4;

/// The factor a congested window multiplies the limit by.
const DECREASE_RATIO: f64 = 0.9;

/// The shortest observation window, so that a sink answering in
/// microseconds does not change the limit thousands of times a second.
const MIN_WINDOW: Duration = Duration::from_millis(10);

/// What one sink call showed about the sink's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallSignal {
    /// Delivered, or refused for the message's own sake (a permanent
    /// failure says nothing about load).
    Answered,
    /// Push limited, timed out or failed in a way worth retrying: the sink
    /// has less room than the group is using.
    Congested,
}

/// One group's adaptive limit.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    min: usize,
    max: usize,
    limit: usize,
    /// Moving mean of a window's round trip (seconds): the window length.
    mean: Option<f64>,
    /// The shortest window round trip since the last probe (seconds).
    base: Option<f64>,
    /// When the base was last measured by a probe (or first taken).
    base_at: Option<Instant>,
    /// While probing: the limit to return to after the probe window.
    probing: Option<usize>,
    window: Window,
}

#[derive(Debug, Clone, Default)]
struct Window {
    started: Option<Instant>,
    rtt_sum: f64,
    calls: u32,
    congested: bool,
    reached_limit: bool,
}

impl AdaptiveLimit {
    /// A limit between `min` and `max` slots, starting at `min`: it probes
    /// up from there as the sink keeps up.
    pub fn new(min: usize, max: usize) -> AdaptiveLimit {
        let min = min.max(1);
        let max = max.max(min);
        AdaptiveLimit {
            min,
            max,
            limit: min,
            mean: None,
            base: None,
            base_at: None,
            probing: None,
            window: Window::default(),
        }
    }

    /// The number of deliveries allowed in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Notes that a delivery started with every allowed slot in use, which
    /// is what entitles the window to grow the limit.
    pub fn reached_limit(&mut self) {
        self.window.reached_limit = true;
    }

    /// Records one sink call that took `rtt` and ended at `now`; returns
    /// the new limit when this call closed a window that changed it.
    /// `timed` says whether the call's round trip speaks for the sink's
    /// load: a batch well short of a full one (a trickle of live traffic)
    /// answers faster whatever the load, and mixed in with full ones its
    /// round trips would hide queueing. Such a call still carries its
    /// signal.
    pub fn observe(
        &mut self,
        now: Instant,
        rtt: Duration,
        signal: CallSignal,
        timed: bool,
    ) -> Option<usize> {
        // The window opens when its first call began.
        let started = *self
            .window
            .started
            .get_or_insert_with(|| now.checked_sub(rtt).unwrap_or(now));
        if timed {
            self.window.rtt_sum += rtt.as_secs_f64();
            self.window.calls += 1;
        }
        self.window.congested |= signal == CallSignal::Congested;
        let length = self
            .mean
            .map_or(MIN_WINDOW, Duration::from_secs_f64)
            .max(MIN_WINDOW);
        if now.saturating_duration_since(started) < length && !self.window.congested {
            return None;
        }
        let window = std::mem::take(&mut self.window);
        let rtt = (window.calls > 0).then(|| window.rtt_sum / f64::from(window.calls));
        let before = self.limit;
        self.close_window(now, rtt, &window);
        if let (Some(rtt), false) = (rtt, window.congested) {
            // A congested window's round trips are the sink's trouble, not
            // its normal.
            let mean = self.mean.get_or_insert(rtt);
            *mean += EWMA_ALPHA * (rtt - *mean);
        }
        (self.limit != before).then_some(self.limit)
    }

    fn close_window(&mut self, now: Instant, rtt: Option<f64>, window: &Window) {
        if let Some(restore) = self.probing.take() {
            // The probe's window: its round trip is the base from now on.
            if let Some(rtt) = rtt {
                self.base = Some(rtt);
                self.base_at = Some(now);
            }
            self.limit = restore;
        }
        if window.congested {
            let shrunk = (self.limit as f64 * DECREASE_RATIO).floor() as usize;
            self.limit = shrunk.min(self.limit.saturating_sub(1)).max(self.min);
            return;
        }
        let Some(rtt) = rtt else {
            return;
        };
        // A round trip well under the base: the sink got faster, and
        // queueing may hide in this one too.
        let faster = self.base.is_some_and(|b| rtt < b * 0.7);
        let base = self.base.map_or(rtt, |b| b.min(rtt));
        self.base = Some(base);
        let base_age = now.saturating_duration_since(*self.base_at.get_or_insert(now));
        let limit = self.limit as f64;
        let queue = limit * (1.0 - base / rtt.max(f64::MIN_POSITIVE));
        let log = limit.log10();
        let (alpha, beta) = ((2.0 * log).max(1.0), (4.0 * log).max(2.0));
        // Probe on schedule, and early when the base may be stale: a queue
        // shows against it (the sink got slower: shrinking would not help),
        // or the sink got faster.
        let stale = (queue > beta || faster) && base_age >= EARLY_PROBE_AFTER;
        if base_age >= PROBE_EVERY || stale {
            if self.limit > self.min {
                self.probing = Some(self.limit);
                self.limit = (self.limit / 4).max(self.min);
                return;
            }
            // At min no probe can lower the load: this window, at the
            // least load the group can put on the sink, is the base. (A
            // base kept from before the sink got slower would read as a
            // queue for ever, and hold the limit at min.)
            self.base = Some(rtt);
            self.base_at = Some(now);
            return;
        }
        if queue > beta {
            self.limit = self.limit.saturating_sub(1).max(self.min);
        } else if queue < alpha && window.reached_limit {
            self.limit = (self.limit + 1).min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives `limit` through `windows` windows of calls that each take
    /// `rtt` with the limit reached, returning the limit after.
    fn saturate(limit: &mut AdaptiveLimit, start: &mut Instant, rtt: Duration, windows: usize) {
        for _ in 0..windows {
            limit.reached_limit();
            *start += rtt.max(MIN_WINDOW);
            limit.observe(*start, rtt, CallSignal::Answered, true);
        }
    }

    #[test]
    fn a_steady_sink_used_to_the_limit_grows_it_one_slot_per_window_up_to_max() {
        let mut limit = AdaptiveLimit::new(1, 8);
        let mut now = Instant::now();
        saturate(&mut limit, &mut now, Duration::from_millis(20), 3);
        assert_eq!(limit.limit(), 4);
        saturate(&mut limit, &mut now, Duration::from_millis(20), 50);
        assert_eq!(limit.limit(), 8);
    }

    #[test]
    fn a_group_that_does_not_use_its_slots_does_not_grow_them() {
        let mut limit = AdaptiveLimit::new(2, 8);
        let mut now = Instant::now();
        for _ in 0..50 {
            now += Duration::from_millis(20);
            limit.observe(now, Duration::from_millis(20), CallSignal::Answered, true);
        }
        assert_eq!(limit.limit(), 2);
    }

    #[test]
    fn push_back_shrinks_the_limit_at_once_but_never_below_min() {
        let mut limit = AdaptiveLimit::new(2, 64);
        let mut now = Instant::now();
        saturate(&mut limit, &mut now, Duration::from_millis(20), 30);
        assert_eq!(limit.limit(), 32);
        now += Duration::from_millis(1);
        let shrunk = limit.observe(now, Duration::from_millis(20), CallSignal::Congested, true);
        assert_eq!(shrunk, Some(28));
        for _ in 0..100 {
            now += Duration::from_millis(1);
            limit.observe(now, Duration::from_millis(20), CallSignal::Congested, true);
        }
        assert_eq!(limit.limit(), 2);
    }

    /// A service with `workers` workers whose calls each take `service`:
    /// `windows` calls one after the other at the limit in force (a call
    /// beyond the workers waits its turn), giving the limit after each.
    fn serve(
        limit: &mut AdaptiveLimit,
        now: &mut Instant,
        workers: usize,
        service: Duration,
        windows: usize,
    ) -> Vec<usize> {
        (0..windows)
            .map(|_| {
                let queueing = (limit.limit() as f64 / workers as f64).max(1.0);
                let rtt = service.mul_f64(queueing);
                limit.reached_limit();
                *now += rtt;
                limit.observe(*now, rtt, CallSignal::Answered, true);
                limit.limit()
            })
            .collect()
    }

    #[test]
    fn against_four_workers_the_limit_settles_just_past_them_fast_or_four_times_slower() {
        let mut limit = AdaptiveLimit::new(1, 32);
        let mut now = Instant::now();
        let fast = Duration::from_millis(20);
        for (service, windows) in [(fast, 2_000), (fast * 4, 1_000), (fast, 2_000)] {
            let limits = serve(&mut limit, &mut now, 4, service, windows);
            let settled = &limits[100..];
            // Never far past the workers (each slot beyond them only
            // queues), and never under them but for the probes' windows.
            assert!(settled.iter().all(|&l| l <= 8), "{settled:?}");
            let under = settled.iter().filter(|&&l| l < 4).count();
            assert!(
                under * 20 < settled.len(),
                "{under} windows under 4 ({service:?}): {settled:?}"
            );
        }
    }

    #[test]
    fn a_probe_every_ten_seconds_drops_to_a_quarter_for_one_window() {
        let mut limit = AdaptiveLimit::new(1, 16);
        let mut now = Instant::now();
        // No queueing whatever the limit: it grows to 16 and stays, but
        // for the probes.
        let limits = serve(&mut limit, &mut now, 1_000, Duration::from_millis(50), 600);
        let probes = limits.iter().filter(|&&l| l == 4).count();
        // 600 windows of 50 ms: 30 s, so two or three probes.
        assert!((2..=3).contains(&probes), "{probes}: {limits:?}");
        assert_eq!(limits.last(), Some(&16));
    }

    #[test]
    fn short_batches_do_not_hide_queueing_behind_their_quick_answers() {
        let mut limit = AdaptiveLimit::new(1, 32);
        let mut now = Instant::now();
        let full = Duration::from_millis(20);
        saturate(&mut limit, &mut now, full, 7);
        assert_eq!(limit.limit(), 8);
        // Full batches now queue (twice as slow) while a trickle of tiny
        // live batches answers in a millisecond: the limit must not grow.
        for _ in 0..20 {
            for _ in 0..10 {
                now += Duration::from_millis(1);
                limit.reached_limit();
                limit.observe(now, Duration::from_millis(1), CallSignal::Answered, false);
            }
            now += Duration::from_millis(30);
            limit.observe(now, full * 2, CallSignal::Answered, true);
        }
        assert!(limit.limit() <= 8, "{}", limit.limit());
    }

    #[test]
    fn a_sink_that_got_slower_while_the_limit_sat_at_min_is_measured_again_and_grown_past_it() {
        let mut limit = AdaptiveLimit::new(4, 32);
        let mut now = Instant::now();
        // The base is taken at 10 ms; push back drives the limit to min.
        saturate(&mut limit, &mut now, Duration::from_millis(10), 3);
        for _ in 0..50 {
            now += Duration::from_millis(1);
            limit.observe(now, Duration::from_millis(10), CallSignal::Congested, true);
        }
        assert_eq!(limit.limit(), 4);
        // The service is back, at 20 ms a call and with room for many
        // more: no queue grows at the sink whatever the limit, so the
        // limit must leave min once the stale base is measured again.
        let limits = serve(
            &mut limit,
            &mut now,
            1_000,
            Duration::from_millis(20),
            1_500,
        );
        assert!(
            limits.last().is_some_and(|&l| l > 8),
            "stuck near min: {:?}",
            &limits[limits.len() - 20..]
        );
    }

    #[test]
    fn small_limits_still_shrink_by_at_least_one() {
        let mut limit = AdaptiveLimit::new(1, 4);
        let mut now = Instant::now();
        saturate(&mut limit, &mut now, Duration::from_millis(20), 3);
        assert_eq!(limit.limit(), 4);
        now += Duration::from_millis(1);
        assert_eq!(
            limit.observe(now, Duration::from_millis(20), CallSignal::Congested, true),
            Some(3)
        );
    }
}
