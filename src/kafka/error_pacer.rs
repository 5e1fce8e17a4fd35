//! How often the Kafka client's errors are logged: librdkafka reports
//! every failed connection attempt to every broker (hundreds a minute
//! while no broker answers), and retries by itself. One warning per
//! interval says what is wrong and when the next word comes; the errors
//! in between are counted ([`SourceHealth::error_unlogged`]), not logged.
//!
//! Invariants: at most one warning per interval; the interval doubles from
//! [`FIRST`] up to [`LONGEST`] while the trouble lasts, and starts over at
//! [`FIRST`] once a broker answers again.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::source::SourceHealth;

/// The first quiet interval after a logged error.
pub(super) const FIRST: Duration = Duration::from_secs(1);
/// The longest quiet interval.
pub(super) const LONGEST: Duration = Duration::from_secs(60);

/// Decides which client errors are logged.
pub(super) struct ErrorPacer {
    state: Mutex<State>,
    health: SourceHealth,
}

struct State {
    /// No warning before this (none yet: the first error is logged).
    quiet_until: Option<Instant>,
    /// The quiet interval after the next logged warning.
    interval: Duration,
    /// Errors not logged since the last warning.
    unlogged: u64,
}

/// A warning to log now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Warning {
    /// Errors counted, not logged, since the previous warning.
    pub unlogged: u64,
    /// How long further errors stay unlogged.
    pub quiet_for: Duration,
}

impl ErrorPacer {
    /// A pacer counting its unlogged errors in `health`.
    pub(super) fn new(health: SourceHealth) -> ErrorPacer {
        ErrorPacer {
            state: Mutex::new(State {
                quiet_until: None,
                interval: FIRST,
                unlogged: 0,
            }),
            health,
        }
    }

    /// An error happened: `Some` when it is to be logged now.
    pub(super) fn error(&self) -> Option<Warning> {
        let now = Instant::now();
        let mut s = self.state.lock();
        if s.quiet_until.is_some_and(|until| now < until) {
            s.unlogged += 1;
            self.health.error_unlogged();
            return None;
        }
        let warning = Warning {
            unlogged: std::mem::take(&mut s.unlogged),
            quiet_for: s.interval,
        };
        s.quiet_until = Some(now + s.interval);
        s.interval = (s.interval * 2).min(LONGEST);
        Some(warning)
    }

    /// Logs a client error (`what`, from librdkafka) as one warning when
    /// the interval allows, and counts it otherwise.
    pub(super) fn client_error(&self, source: &str, what: &str) {
        if let Some(w) = self.error() {
            tracing::warn!(
                source,
                error = what,
                unlogged = w.unlogged,
                next_warning_in_ms = w.quiet_for.as_millis() as u64,
                "kafka client error; librdkafka reconnects by itself with backoff (reconnect.backoff.ms doubling up to reconnect.backoff.max.ms); further errors for the next {:?} are counted in laneway_source_unlogged_errors, not logged",
                w.quiet_for
            );
        }
    }

    /// A broker answers again: the next error is logged at once.
    pub(super) fn recovered(&self) {
        let mut s = self.state.lock();
        s.quiet_until = None;
        s.interval = FIRST;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_warning_per_doubling_interval_and_the_rest_counted() {
        let health = SourceHealth::default();
        let pacer = ErrorPacer::new(health.clone());
        let mut logged = Vec::new();
        // 100 errors a second for 20 seconds.
        for _ in 0..2_000 {
            if let Some(w) = pacer.error() {
                logged.push(w);
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        // At 0 s, then after 1, 2, 4 and 8 s of quiet: 0, 1, 3, 7, 15 s.
        assert_eq!(logged.len(), 5, "{logged:?}");
        assert_eq!(
            logged
                .iter()
                .map(|w| w.quiet_for.as_secs())
                .collect::<Vec<_>>(),
            [1, 2, 4, 8, 16]
        );
        assert_eq!(logged[0].unlogged, 0);
        assert!(logged[1].unlogged >= 99, "{logged:?}");
        assert_eq!(health.snapshot().unlogged_errors, 2_000 - 5);
        pacer.recovered();
        assert_eq!(pacer.error().map(|w| w.quiet_for), Some(FIRST));
    }
}
