//! A cap on connection attempts per minute, shared by every connection of
//! one source: the platform allows 100 attempts per consumer group per
//! minute, and a fleet restarting together must stay under it.
//!
//! Invariant: in any 60-second window, at most `per_minute` attempts are
//! let through (a sliding log of attempt times, not a refilling bucket, so
//! a burst can never exceed the cap).

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const WINDOW: Duration = Duration::from_secs(60);

/// Lets connection attempts through, at most `per_minute` in any minute.
pub struct ConnectPacer {
    per_minute: usize,
    attempts: Mutex<VecDeque<Instant>>,
}

impl ConnectPacer {
    /// A pacer allowing `per_minute` attempts in any minute (at least one).
    pub fn new(per_minute: u32) -> ConnectPacer {
        ConnectPacer {
            per_minute: (per_minute as usize).max(1),
            attempts: Mutex::new(VecDeque::new()),
        }
    }

    /// How long from now until an attempt could go through if it were
    /// made no sooner than `delay` from now: `delay`, or longer when the
    /// minute's attempts are used up then. At the earliest: other
    /// connections sharing the pacer may take turns meanwhile.
    pub fn next_turn_in(&self, delay: Duration) -> Duration {
        let now = Instant::now();
        let at = now + delay;
        let attempts = self.attempts.lock();
        let live: Vec<Instant> = attempts
            .iter()
            .copied()
            .filter(|&a| at.saturating_duration_since(a) < WINDOW)
            .collect();
        if live.len() < self.per_minute {
            return delay;
        }
        // The attempt that must leave the window before one more fits.
        match live.get(live.len() - self.per_minute) {
            Some(&oldest) => (oldest + WINDOW).saturating_duration_since(now).max(delay),
            None => delay,
        }
    }

    /// Waits until an attempt may be made and counts it: `false` when
    /// `stop` was raised first. `waiting` is told how long, when it must
    /// wait at all (for the log line and the status line).
    pub async fn turn(&self, stop: &CancellationToken, waiting: impl Fn(Duration)) -> bool {
        loop {
            let wait = {
                let now = Instant::now();
                let mut attempts = self.attempts.lock();
                while attempts
                    .front()
                    .is_some_and(|&at| now.duration_since(at) >= WINDOW)
                {
                    attempts.pop_front();
                }
                if attempts.len() < self.per_minute {
                    attempts.push_back(now);
                    return true;
                }
                match attempts.front() {
                    Some(&oldest) => (oldest + WINDOW).saturating_duration_since(now),
                    None => Duration::ZERO,
                }
            };
            waiting(wait);
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_more_than_the_cap_in_any_minute() {
        let pacer = ConnectPacer::new(3);
        let stop = CancellationToken::new();
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..7 {
            assert!(pacer.turn(&stop, |_| {}).await);
            times.push(start.elapsed());
        }
        // Three at once, three a minute later, one a minute after that.
        let secs: Vec<u64> = times.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![0, 0, 0, 60, 60, 60, 120]);
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| u.saturating_sub(*t) < WINDOW)
                .count();
            assert!(
                in_window <= 3,
                "{in_window} attempts within a minute of {t:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_turn_includes_the_pacing_wait() {
        let pacer = ConnectPacer::new(2);
        let stop = CancellationToken::new();
        let delay = Duration::from_millis(200);
        assert_eq!(pacer.next_turn_in(delay), delay);
        assert!(pacer.turn(&stop, |_| {}).await);
        assert_eq!(pacer.next_turn_in(delay), delay);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(pacer.turn(&stop, |_| {}).await);
        // Two in the window: the next waits for the first to leave it.
        assert_eq!(pacer.next_turn_in(delay), Duration::from_secs(50));
        let start = Instant::now();
        tokio::time::sleep(delay).await;
        assert!(pacer.turn(&stop, |_| {}).await);
        assert_eq!(start.elapsed(), Duration::from_secs(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait() {
        let pacer = ConnectPacer::new(1);
        let stop = CancellationToken::new();
        assert!(pacer.turn(&stop, |_| {}).await);
        stop.cancel();
        assert!(!pacer.turn(&stop, |_| {}).await);
    }
}
