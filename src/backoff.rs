//! The one wait before every retry in laneway (reconnecting to a broker,
//! retrying a failed delivery, a backlog append or release that failed):
//! exponential, capped, with full jitter.
//!
//! Invariant: a delay is never longer than its ceiling
//! (`initial × 2^(attempt-1)`, capped at `max`), never shorter than one
//! millisecond, and a whole number of milliseconds (so a log line reads
//! `retrying in 1.055s`, not `1.05533057s`). Full jitter (a uniform draw below the ceiling) keeps many
//! clients that failed together from retrying together.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// Attempts made since the last success (for [`Backoff::next_delay`]).
    attempt: u32,
}

/// The shortest delay handed out, so that a retry never spins.
const FLOOR: Duration = Duration::from_millis(1);

impl Backoff {
    /// Ceilings start at `initial` and double up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(FLOOR);
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The longest wait before retry number `attempt` (1 for the first).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// A wait before retry number `attempt`: drawn uniformly between one
    /// millisecond and [`Backoff::ceiling`], in whole milliseconds.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis)).max(FLOOR)
    }

    /// The wait before the next attempt of a run of failures.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.delay(self.attempt)
    }

    /// Starts a new run of failures, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_whole_milliseconds() {
        let b = Backoff::new(Duration::from_millis(1000), Duration::from_secs(30));
        for attempt in 1..=8 {
            for _ in 0..200 {
                let d = b.delay(attempt);
                assert_eq!(d.subsec_nanos() % 1_000_000, 0, "{d:?}");
                assert!(d >= FLOOR && d <= b.ceiling(attempt), "{d:?}");
            }
        }
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<_> = (1..=4).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(got, [100, 200, 350, 350]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(350));
    }

    #[test]
    fn delays_stay_under_their_ceiling_and_spread_out() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            b.reset();
            let first = b.next_delay();
            assert!(
                first >= FLOOR && first <= Duration::from_millis(100),
                "{first:?}"
            );
            let third = {
                b.next_delay();
                b.next_delay()
            };
            assert!(third <= Duration::from_millis(400), "{third:?}");
            seen.insert(first.as_millis());
        }
        assert!(seen.len() > 10, "jitter spreads delays: {seen:?}");
    }

    #[test]
    fn a_zero_initial_delay_still_waits() {
        let b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.ceiling(1), FLOOR);
        assert_eq!(b.delay(5), FLOOR);
    }
}
