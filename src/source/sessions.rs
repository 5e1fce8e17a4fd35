//! The life of a source that connects to a broker: connect, serve one
//! session, and after a loss wait the backoff and connect again, until
//! stopped. A source supplies the two protocol steps ([`Sessions`]); the
//! driver ([`run_sessions`]) owns the loop, the status line, the logs and
//! the backoff, so every broker source rides out trouble the same way.
//!
//! Invariants: a raised `stop` ends the loop at once while connecting or
//! waiting, and no wait starts after it (a session sees `stop` itself and
//! settles its acks before it ends); the backoff restarts from its first
//! delay once a session worked (lasted [`WORKED_FOR`]); the broker refusing the login before any
//! session ever worked ends the source (a wrong credential stays wrong),
//! while a refusal later is ridden out like any loss (the broker may be
//! restarting with its users not loaded yet).

use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{SourceError, SourceHealth};
use crate::backoff::Backoff;

/// A session that lasted this long worked: the backoff after it starts
/// over. One lost sooner (an attach refused just after connecting) did
/// not, and the waits keep growing, so a broker that takes connections
/// and drops them at once is not hit at the first delay for ever.
pub const WORKED_FOR: Duration = Duration::from_secs(10);

/// How one session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The source is done: stopped, or finished on its own (`idle_exit`).
    Finished,
    /// The connection, channel or link was lost: connect again.
    Lost(String),
    /// Retrying cannot help (a queue that does not exist, permission
    /// refused before any session worked): the source ends with this.
    Fatal(String),
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Worth another attempt (refused connection, timeout, broker down).
    Retry(String),
    /// The broker refused the login: fatal before the first session,
    /// retried after it.
    Refused(String),
    /// Retrying cannot help (a TLS setting that cannot work, a credential
    /// that cannot be read).
    Fatal(String),
}

/// The protocol steps of a source that connects (see the module docs).
#[async_trait]
pub trait Sessions: Send {
    /// An open connection (with whatever the session needs on it).
    type Connection: Send;

    /// One connection attempt.
    async fn connect(&mut self) -> Result<Self::Connection, ConnectFailure>;

    /// Serves one session on `connection` until it ends, and closes the
    /// connection (bounded: a broker that never answers the close must
    /// not hold up the stop). It reports the source healthy once it is
    /// receiving. `number` counts sessions from 1.
    async fn serve(&mut self, connection: Self::Connection, number: u64) -> SessionEnd;

    /// When the next attempt really starts, given the backoff's `wait`
    /// (later when attempts are paced). Default: after `wait`.
    fn next_attempt_in(&self, wait: Duration) -> Duration {
        wait
    }
}

/// What the driver tells about the source it runs.
#[derive(Clone, Copy)]
pub struct Driver<'a> {
    /// The source, as logs and errors name it (never with a password).
    pub who: &'a str,
    /// What a reconnect means for the messages in flight, said with each
    /// loss ("unacknowledged messages will be redelivered").
    pub after: &'a str,
    /// Raised when the source must stop.
    pub stop: &'a CancellationToken,
    /// The source's status line.
    pub health: &'a SourceHealth,
}

/// Runs `sessions` until stopped, finished, or failed for good (see the
/// module docs).
pub async fn run_sessions<S: Sessions>(
    sessions: &mut S,
    backoff: &mut Backoff,
    driver: Driver<'_>,
) -> Result<(), SourceError> {
    let fatal = |message: String| SourceError::Origin {
        origin: driver.who.to_string(),
        message,
    };
    let mut served = 0u64;
    // Failed attempts since the last session that worked.
    let mut attempts = 0u32;
    loop {
        let attempt = tokio::select! {
            biased;
            _ = driver.stop.cancelled() => return Ok(()),
            attempt = sessions.connect() => attempt,
        };
        let lost = match attempt {
            Ok(connection) => {
                served += 1;
                attempts = 0;
                if served > 1 {
                    tracing::info!(source = %driver.who, "reconnected");
                }
                let began = tokio::time::Instant::now();
                match sessions.serve(connection, served).await {
                    SessionEnd::Finished => return Ok(()),
                    SessionEnd::Fatal(message) => return Err(fatal(message)),
                    SessionEnd::Lost(why) => {
                        if began.elapsed() >= WORKED_FOR {
                            backoff.reset();
                        }
                        Lost::Session(why)
                    }
                }
            }
            Err(ConnectFailure::Refused(why)) if served == 0 => return Err(fatal(why)),
            Err(ConnectFailure::Fatal(why)) => return Err(fatal(why)),
            Err(ConnectFailure::Refused(why) | ConnectFailure::Retry(why)) => {
                attempts = attempts.saturating_add(1);
                Lost::Attempt(why, attempts)
            }
        };
        let wait = backoff.next_delay();
        let next = sessions.next_attempt_in(wait);
        if !wait_to_reconnect(wait, next, driver, &lost).await {
            return Ok(());
        }
    }
}

/// What a wait follows: a session that was lost, or the `n`th failed
/// attempt in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lost {
    /// A session ended, for this reason.
    Session(String),
    /// A connection attempt failed, for this reason; the count of failed
    /// attempts in a row.
    Attempt(String, u32),
}

/// After a lost session or a failed attempt: says so (WARN naming the
/// source, why, and when the next attempt starts), shows it on the status
/// line, and sleeps `wait`. False when `stop` was raised meanwhile (or
/// before): the source ends instead of reconnecting.
async fn wait_to_reconnect(
    wait: Duration,
    next: Duration,
    driver: Driver<'_>,
    lost: &Lost,
) -> bool {
    if driver.stop.is_cancelled() {
        return false;
    }
    let next_attempt_in_ms = u64::try_from(next.as_millis()).unwrap_or(u64::MAX);
    match lost {
        Lost::Session(why) => {
            tracing::warn!(source = %driver.who, reason = %why, next_attempt_in_ms,
                "connection lost; reconnecting in {next:?}; {}", driver.after);
            driver
                .health
                .troubled(format!("connection lost, reconnecting in {next:?}"));
            driver.health.reconnecting();
        }
        Lost::Attempt(why, attempt) => {
            tracing::warn!(source = %driver.who, reason = %why, attempt, next_attempt_in_ms,
                "no connection; retrying in {next:?}; {}", driver.after);
            driver.health.troubled(format!(
                "broker unreachable, retrying in {next:?} (attempt {attempt})"
            ));
        }
    }
    tokio::select! {
        _ = driver.stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A scripted broker: each attempt takes the next outcome.
    struct Script {
        attempts: VecDeque<Result<(), ConnectFailure>>,
        sessions: VecDeque<SessionEnd>,
        served: Vec<u64>,
    }

    #[async_trait]
    impl Sessions for Script {
        type Connection = ();

        async fn connect(&mut self) -> Result<(), ConnectFailure> {
            self.attempts
                .pop_front()
                .unwrap_or(Err(ConnectFailure::Fatal("script ran out".into())))
        }

        async fn serve(&mut self, (): (), number: u64) -> SessionEnd {
            self.served.push(number);
            self.sessions.pop_front().unwrap_or(SessionEnd::Finished)
        }
    }

    async fn drive(script: &mut Script) -> Result<(), SourceError> {
        let backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        drive_with(script, backoff).await
    }

    /// Runs `sessions` to its end with `backoff`, never stopped.
    async fn drive_with(
        sessions: &mut impl Sessions,
        mut backoff: Backoff,
    ) -> Result<(), SourceError> {
        let stop = CancellationToken::new();
        let health = SourceHealth::default();
        let driver = Driver {
            who: "test",
            after: "nothing is lost",
            stop: &stop,
            health: &health,
        };
        run_sessions(sessions, &mut backoff, driver).await
    }

    #[tokio::test]
    async fn a_lost_session_is_followed_by_another_until_one_finishes() {
        let mut script = Script {
            attempts: VecDeque::from([Ok(()), Err(ConnectFailure::Retry("down".into())), Ok(())]),
            sessions: VecDeque::from([SessionEnd::Lost("reset".into()), SessionEnd::Finished]),
            served: Vec::new(),
        };
        drive(&mut script).await.unwrap();
        assert_eq!(script.served, vec![1, 2]);
    }

    #[tokio::test]
    async fn a_refused_login_ends_the_source_only_before_its_first_session() {
        let mut first = Script {
            attempts: VecDeque::from([Err(ConnectFailure::Refused("bad password".into()))]),
            sessions: VecDeque::new(),
            served: Vec::new(),
        };
        let e = drive(&mut first).await.unwrap_err();
        assert!(e.to_string().contains("bad password"), "{e}");
        let mut later = Script {
            attempts: VecDeque::from([
                Ok(()),
                Err(ConnectFailure::Refused("users not loaded".into())),
                Ok(()),
            ]),
            sessions: VecDeque::from([SessionEnd::Lost("restart".into()), SessionEnd::Finished]),
            served: Vec::new(),
        };
        drive(&mut later).await.unwrap();
        assert_eq!(later.served, vec![1, 2]);
    }

    /// A broker that takes each connection and loses its session at once
    /// (an attach refused after the first session worked), `left` times.
    struct Flapping {
        left: usize,
        waits: parking_lot::Mutex<Vec<Duration>>,
    }

    #[async_trait]
    impl Sessions for Flapping {
        type Connection = ();

        async fn connect(&mut self) -> Result<(), ConnectFailure> {
            Ok(())
        }

        async fn serve(&mut self, (): (), _: u64) -> SessionEnd {
            if self.left == 0 {
                return SessionEnd::Finished;
            }
            self.left -= 1;
            SessionEnd::Lost("attach refused".into())
        }

        fn next_attempt_in(&self, wait: Duration) -> Duration {
            self.waits.lock().push(wait);
            wait
        }
    }

    /// Sessions lost as soon as they start did not work: the backoff keeps
    /// growing between them instead of starting over each time (which
    /// reconnected at the first delay for ever).
    #[tokio::test(start_paused = true)]
    async fn sessions_lost_at_once_do_not_reset_the_backoff() {
        let mut flapping = Flapping {
            left: 10,
            waits: parking_lot::Mutex::new(Vec::new()),
        };
        let backoff = Backoff::new(Duration::from_millis(1), Duration::from_secs(5));
        drive_with(&mut flapping, backoff).await.unwrap();
        let waits = flapping.waits.into_inner();
        assert_eq!(waits.len(), 10);
        assert!(
            waits.iter().any(|w| *w > Duration::from_millis(2)),
            "every wait drawn from the first delay: {waits:?}"
        );
    }

    #[tokio::test]
    async fn a_raised_stop_ends_the_wait_at_once() {
        let stop = CancellationToken::new();
        let health = SourceHealth::default();
        let driver = Driver {
            who: "test",
            after: "",
            stop: &stop,
            health: &health,
        };
        stop.cancel();
        let hour = Duration::from_secs(3600);
        assert!(!wait_to_reconnect(hour, hour, driver, &Lost::Session("down".into())).await);
        let mut script = Script {
            attempts: VecDeque::from([Err(ConnectFailure::Retry("down".into()))]),
            sessions: VecDeque::new(),
            served: Vec::new(),
        };
        let mut backoff = Backoff::new(hour, hour);
        run_sessions(&mut script, &mut backoff, driver)
            .await
            .unwrap();
        assert!(script.served.is_empty());
    }
}
