//! Connecting to the broker, and reconnecting with backoff.
//!
//! Invariants: every error that leaves this module is redacted (it names the
//! broker by its redacted URL and has any quoted password scrubbed); a
//! reconnect loop waits between attempts, doubling from `initial` to `max`,
//! and gives up only when told to stop.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use super::url::BrokerUrl;
use crate::signal::Signal;

/// A failure talking to the broker, with the URL redacted.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{broker}: {message}")]
pub struct AmqpError {
    /// The broker, as its redacted URL.
    pub broker: String,
    /// What failed and why.
    pub message: String,
}

impl AmqpError {
    /// An error about `what` on `url`, from a client-library error.
    pub fn new(url: &BrokerUrl, what: &str, error: impl std::fmt::Display) -> AmqpError {
        AmqpError {
            broker: url.redacted().to_string(),
            message: url.scrub(&format!("{what}: {error}")),
        }
    }
}

/// Exponential backoff between reconnect attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// The wait before the next attempt (and doubles the one after).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Opens one connection. `name` shows in the broker's management UI.
pub async fn connect(url: &BrokerUrl, name: &str) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url.secret(), props)
        .await
        .map_err(|e| AmqpError::new(url, "connecting", e))
}

/// Connects, retrying with `backoff` until it works; `None` once `stop` is raised.
pub async fn connect_with_retry(
    url: &BrokerUrl,
    name: &str,
    backoff: &mut Backoff,
    stop: &Signal,
) -> Option<Connection> {
    loop {
        if stop.is_raised() {
            return None;
        }
        let attempt = tokio::select! {
            biased;
            _ = stop.raised() => return None,
            c = connect(url, name) => c,
        };
        match attempt {
            Ok(conn) => {
                backoff.reset();
                return Some(conn);
            }
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "broker connection failed");
                tokio::select! {
                    _ = stop.raised() => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn errors_scrub_the_password() {
        let url = BrokerUrl::parse("amqp://u:topsecret@h:5672/%2f").unwrap();
        let e = AmqpError::new(
            &url,
            "connecting",
            "refused for amqp://u:topsecret@h:5672/%2f",
        );
        let text = e.to_string();
        assert!(!text.contains("topsecret"), "{text}");
    }
}
