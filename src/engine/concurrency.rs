//! Adaptive concurrency (`slots = "auto"`): how many deliveries a group
//! keeps in flight, following what its sink shows.
//!
//! The rule is AIMD on round-trip time, the one Vector's adaptive request
//! concurrency uses (itself after TCP congestion control):
//!
//! - the limit grows by one slot per observation window (about one mean
//!   round trip) in which the group used every slot it had, the sink did
//!   not push back and its round trip was no longer than its moving mean
//!   (more concurrency than the sink can serve shows first as a round
//!   trip above the mean: queueing);
//! - it shrinks to 90 % (at least by one) in a window where the sink said
//!   "push limited", failed in a way worth retrying (timeouts, 5xx,
//!   refused connections), or answered markedly slower than its moving
//!   mean (by more than [`DEVIATION_SCALE`] of its moving deviation).
//!
//! Why this one: a gradient limiter (Netflix's `Gradient2`, Envoy's
//! adaptive concurrency filter) sizes the limit from the ratio of a
//! long-term minimum round trip to the current one, which needs a quiet
//! period to learn the minimum (Envoy pauses traffic for it) and drifts
//! when a handler's cost changes for good, the case a backlog drain meets
//! every day. AIMD needs no baseline, only the direction of change, and its
//! probe (+1 per window) is slow where a wrong step is costly: one slot too
//! many is one more request queued at a struggling handler.
//!
//! Invariants: the limit stays within `min..=max`; it grows only in a
//! window where the group was limited by it (so an idle group does not
//! inflate its limit); the state is plain data driven by the times handed
//! in, so its promises are tested directly.

use std::time::{Duration, Instant};

/// A window's round trip longer than the moving mean by this many moving
/// deviations counts as the sink slowing down.
pub const DEVIATION_SCALE: f64 = 2.5;

/// The weight of the newest window in the moving mean and deviation.
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
    /// Moving mean and deviation of a window's mean round trip (seconds).
    mean: Option<f64>,
    deviation: f64,
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
            deviation: 0.0,
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
        let slower = match (rtt, self.mean) {
            (Some(rtt), Some(mean)) => {
                rtt > mean + DEVIATION_SCALE * self.deviation.max(mean * 0.05)
            }
            _ => false,
        };
        let no_slower = match (rtt, self.mean) {
            (Some(rtt), Some(mean)) => rtt <= mean,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let before = self.limit;
        if window.congested || slower {
            let shrunk = (self.limit as f64 * DECREASE_RATIO).floor() as usize;
            self.limit = shrunk.min(self.limit.saturating_sub(1)).max(self.min);
        } else if window.reached_limit && no_slower {
            self.limit = (self.limit + 1).min(self.max);
        }
        if let (Some(rtt), false) = (rtt, window.congested) {
            // A congested window's round trips are the sink's trouble, not
            // its normal: they would teach the mean to accept them.
            match self.mean {
                None => self.mean = Some(rtt),
                Some(mean) => {
                    let next = mean + EWMA_ALPHA * (rtt - mean);
                    self.deviation += EWMA_ALPHA * ((rtt - mean).abs() - self.deviation);
                    self.mean = Some(next);
                }
            }
        }
        (self.limit != before).then_some(self.limit)
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

    #[test]
    fn a_sink_that_slows_down_loses_slots_and_one_that_recovers_regains_them() {
        let mut limit = AdaptiveLimit::new(1, 32);
        let mut now = Instant::now();
        let fast = Duration::from_millis(20);
        saturate(&mut limit, &mut now, fast, 15);
        let before = limit.limit();
        assert_eq!(before, 16);
        // Four times slower: the first slow window stands far above the
        // mean and takes a tenth off; the next, above the mean still, do
        // not probe upwards.
        saturate(&mut limit, &mut now, fast * 4, 3);
        assert_eq!(limit.limit(), 14);
        let slowed = limit.limit();
        saturate(&mut limit, &mut now, fast, 40);
        assert!(limit.limit() > slowed + 10, "{}", limit.limit());
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
