//! Connecting to the broker, each failure classed by whether retrying can
//! help (the sources' reconnect loop is `source::sessions`).
//!
//! Invariants: every error that leaves this module is redacted (it names the
//! broker by its redacted URL and has any quoted password scrubbed) and says
//! whether retrying can help ([`Failure`]): refused credentials, a missing
//! virtual host and a host name that does not resolve are fatal.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties, ErrorKind};

use crate::broker_url::BrokerUrl;
use crate::source::sessions::ConnectFailure;

/// What kind of failure the broker (or the network) reported: whether a
/// retry can help, and if not, what the user has to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// Anything a retry may cure: a refused or dropped connection, a broker
    /// restarting or shutting down (`CONNECTION_FORCED`), a timeout.
    Transient,
    /// The broker refused the login (`ACCESS_REFUSED` at connection): wrong
    /// user name or password.
    LoginRefused,
    /// The virtual host does not exist, or the user may not use it
    /// (`NOT_ALLOWED` at connection).
    VhostNotAllowed,
    /// The broker's host name does not resolve.
    UnknownHost,
    /// A queue or exchange does not exist (`NOT_FOUND`).
    NotFound,
    /// The user may not use a queue or exchange (`ACCESS_REFUSED` on a channel).
    AccessRefused,
    /// The broker refused a declaration or another request outright
    /// (`PRECONDITION_FAILED`, `RESOURCE_LOCKED`, an invalid path, ...).
    Refused,
}

impl Failure {
    /// Whether retrying cannot help: the configuration or the broker's
    /// set-up has to change first.
    pub fn is_fatal(self) -> bool {
        !matches!(self, Failure::Transient)
    }

    /// Classifies a client-library error. `at_login` tells an error during
    /// the connection handshake (where `ACCESS_REFUSED` means bad
    /// credentials) from one on a channel (where it means a forbidden queue).
    pub fn of(error: &lapin::Error, at_login: bool) -> Failure {
        let ErrorKind::ProtocolError(e) = error.kind() else {
            return match error.kind() {
                ErrorKind::AuthProviderError(_) => Failure::LoginRefused,
                ErrorKind::InvalidProtocolVersion(_) => Failure::Refused,
                _ => Failure::Transient,
            };
        };
        // Reply codes from the AMQP 0-9-1 specification.
        match e.get_id() {
            403 if at_login => Failure::LoginRefused,
            403 => Failure::AccessRefused,
            530 if at_login => Failure::VhostNotAllowed,
            404 => Failure::NotFound,
            402 | 405 | 406 | 530 | 540 => Failure::Refused,
            _ => Failure::Transient,
        }
    }

    /// What the user should know, in a few words (empty for transient failures).
    fn advice(self, url: &BrokerUrl) -> String {
        match self {
            Failure::Transient => String::new(),
            Failure::LoginRefused => format!(
                "login refused for user {:?}: check the user name and password",
                url.user()
            ),
            Failure::VhostNotAllowed => format!(
                "virtual host {:?} does not exist or user {:?} may not use it",
                url.vhost(),
                url.user()
            ),
            Failure::UnknownHost => format!("host {:?} does not resolve", url.host()),
            Failure::NotFound => "it does not exist (create it, or set declare = true)".into(),
            Failure::AccessRefused => format!("user {:?} may not use it", url.user()),
            Failure::Refused => "the broker refused it".into(),
        }
    }
}

/// A failure talking to the broker, with the URL redacted.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{broker}: {message}")]
pub struct AmqpError {
    /// The broker, as its redacted URL.
    pub broker: String,
    /// Whether a retry can help.
    pub failure: Failure,
    /// What failed and why.
    pub message: String,
}

impl AmqpError {
    /// The error that ends the source named `origin` (the broker URL stays
    /// out of it: the message already says what failed).
    pub fn ends_source(self, origin: &str) -> crate::source::SourceError {
        crate::source::SourceError::Origin {
            origin: origin.to_string(),
            message: self.message,
        }
    }

    /// An error about `what` on `url`, from any error text; counted as
    /// transient.
    pub fn new(url: &BrokerUrl, what: &str, error: impl std::fmt::Display) -> AmqpError {
        AmqpError {
            broker: url.redacted().to_string(),
            failure: Failure::Transient,
            message: url.scrub(&format!("{what}: {error}")),
        }
    }

    /// An error about `what` on `url` from the client library, classified
    /// (see [`Failure::of`]); a fatal one leads with what to fix.
    pub fn classify(
        url: &BrokerUrl,
        what: &str,
        error: &lapin::Error,
        at_login: bool,
    ) -> AmqpError {
        let failure = Failure::of(error, at_login);
        Self::with_failure(url, what, failure, error)
    }

    fn with_failure(
        url: &BrokerUrl,
        what: &str,
        failure: Failure,
        error: impl std::fmt::Display,
    ) -> AmqpError {
        let advice = failure.advice(url);
        // The advice is built from the user name, host and virtual host,
        // never the password, so it is not scrubbed: scrubbing it would
        // hide a user name that happens to equal the password (guest/guest).
        let message = if advice.is_empty() {
            url.scrub(&format!("{what}: {error}"))
        } else {
            let what = url.scrub(what);
            let error = url.scrub(&error.to_string());
            format!("{what}: {advice} ({error})")
        };
        AmqpError {
            broker: url.redacted().to_string(),
            failure,
            message,
        }
    }

    /// Whether retrying cannot help.
    pub fn is_fatal(&self) -> bool {
        self.failure.is_fatal()
    }
}

/// How long one connection attempt (TCP, the AMQP handshake, the login)
/// may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long closing a channel or connection waits for the broker's answer.
/// A broker that has blocked a publishing connection (a memory or disk
/// alarm) answers nothing until the alarm clears, and a stop must not wait
/// for that: what is not closed by then is dropped, which closes the socket.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `close` (channel and connection closes, best effort) for at most
/// [`CLOSE_TIMEOUT`].
pub async fn close_within<T>(close: impl Future<Output = T>) {
    if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
        tracing::warn!(
            "the broker did not answer a close within {CLOSE_TIMEOUT:?}; the connection is dropped"
        );
    }
}

/// Opens one connection. `name` shows in the broker's management UI.
///
/// The host name is resolved first, so that a name that does not resolve
/// is told apart ([`Failure::UnknownHost`]) from a broker that is down.
pub async fn connect(url: &BrokerUrl, name: &str) -> Result<Connection, AmqpError> {
    tracing::trace!(broker = %url, connection = name, "connecting to the broker");
    if let Err(e) = tokio::net::lookup_host((url.host(), url.port())).await {
        return Err(AmqpError::with_failure(
            url,
            "connecting",
            Failure::UnknownHost,
            e,
        ));
    }
    let props = ConnectionProperties::default().with_connection_name(name.into());
    // Bounded: a broker that accepts the TCP connection but never answers
    // the handshake (one shutting down or starting up) must cost one
    // attempt, not the source.
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url.secret(), props)).await {
        Ok(connected) => connected.map_err(|e| AmqpError::classify(url, "connecting", &e, true)),
        Err(_) => Err(AmqpError::new(
            url,
            "connecting",
            format!("no answer to the handshake within {CONNECT_TIMEOUT:?}"),
        )),
    }
}

/// One connection attempt, its failure classed for the reconnect driver
/// ([`run_sessions`](crate::source::sessions::run_sessions)): a transient
/// failure is retried; a host that does not resolve ends a source that
/// never connected (a typo) and is retried once it has (name service
/// trouble); any other fatal failure (refused credentials, a missing
/// virtual host) ends the source.
pub async fn connect_attempt(url: &BrokerUrl, name: &str) -> Result<Connection, ConnectFailure> {
    connect(url, name).await.map_err(|e| match e.failure {
        Failure::Transient => ConnectFailure::Retry(e.to_string()),
        Failure::UnknownHost => ConnectFailure::Refused(e.message),
        _ => ConnectFailure::Fatal(e.message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
