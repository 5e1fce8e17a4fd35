//! Sending messages to an AMQP 1.0 node the way the IoT platform's
//! server-side subscription sends them, so that the `amqp1` source can be
//! tried and tested without the platform (`laneway simulate --amqp1`).
//!
//! Each message is durable, carries the application properties `topic`,
//! `messageId` and `generateTime` (epoch milliseconds, a long) and its
//! payload as one data section: the inverse of [`super::mapping`], so a
//! message sent here is received by the source with every field equal.
//!
//! Invariants: a message counts as sent only once the peer settled it as
//! accepted ([`Amqp1Publisher::send`] hands back the settlement to wait
//! for); no error or log line holds the password (the URL is shown
//! redacted, and the login is formatted only as its redacted form).

use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::SendError;
use fe2o3_amqp::link::delivery::DeliveryFut;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Header, Outcome};
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::{Sender, Session};

use super::bounds::{ATTACH_TIMEOUT, CLOSE_TIMEOUT};
use super::login::{self, Login};
use super::mapping::{GENERATE_TIME, MESSAGE_ID, TOPIC};
use crate::broker_url::BrokerUrl;
use crate::message::Message;

/// How long opening the connection may take before it counts as failed.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// The idle time-out offered to the peer.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why publishing over AMQP 1.0 failed; the text names the peer by its
/// redacted URL and never holds a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{peer}: {what}")]
pub struct Amqp1PublishError {
    /// The peer, as its redacted URL.
    pub peer: String,
    /// What failed.
    pub what: String,
}

/// What a wait of at most [`ATTACH_TIMEOUT`] for the peer gave: its
/// answer, or why there is none (its error, or no answer in time).
fn answered<T, E: std::fmt::Display>(
    waited: Result<Result<T, E>, tokio::time::error::Elapsed>,
) -> Result<T, String> {
    match waited {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {ATTACH_TIMEOUT:?}")),
    }
}

/// The settlement of one sent message: await it for the peer's outcome.
pub type Settlement = DeliveryFut<Result<Outcome, SendError>>;

/// One connection, session and sender link to one node.
pub struct Amqp1Publisher {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    sender: Sender,
    peer: String,
}

impl std::fmt::Debug for Amqp1Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Amqp1Publisher({})", self.peer)
    }
}

impl Amqp1Publisher {
    /// Connects to `url` (`amqp://` or `amqps://`, SASL PLAIN with the
    /// URL's user and password) and attaches a sender link to `address`
    /// (on RabbitMQ, `/amq/queue/NAME` for a queue that exists, or
    /// `/queue/NAME`, which declares it).
    pub async fn open(url: &BrokerUrl, address: &str) -> Result<Amqp1Publisher, Amqp1PublishError> {
        let peer = url.redacted().to_string();
        let fail = |what: String| Amqp1PublishError {
            peer: peer.clone(),
            what,
        };
        let login = Login {
            host: url.host().to_string(),
            port: url.port(),
            tls: url.is_tls(),
            username: url.user().into(),
            password: url.password().into(),
            shown_as: peer.clone(),
        };
        let container = format!("laneway-simulate-{}", std::process::id());
        let mut connection = login::open(&login, &container, IDLE_TIMEOUT, None, OPEN_TIMEOUT)
            .await
            .map_err(|e| fail(e.to_string()))?;
        // A peer that never answers the begin or the attach must not hold
        // the caller: each waits at most ATTACH_TIMEOUT, and what was opened
        // is then closed with CLOSE_TIMEOUT's bound.
        let begun = tokio::time::timeout(ATTACH_TIMEOUT, Session::begin(&mut connection)).await;
        let mut session = match answered(begun) {
            Ok(s) => s,
            Err(why) => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close()).await;
                return Err(fail(format!("beginning a session: {why}")));
            }
        };
        let attached = tokio::time::timeout(
            ATTACH_TIMEOUT,
            Sender::attach(&mut session, "laneway-simulate", address),
        )
        .await;
        let unanswered = attached.is_err();
        let sender = match answered(attached) {
            Ok(s) => s,
            Err(why) => {
                // As the source does: a peer that did not answer the attach
                // may not answer an end either, and the client's session
                // task spins while its end waits (docs/amqp1.md, "Known"),
                // so that session is dropped, not ended.
                if !unanswered {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.end()).await;
                }
                drop(session);
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close()).await;
                return Err(fail(format!("attaching a sender to {address}: {why}")));
            }
        };
        Ok(Amqp1Publisher {
            connection,
            session,
            sender,
            peer,
        })
    }

    /// Sends one message as the platform does; the returned settlement
    /// resolves to the peer's outcome (only `Accepted` means it is stored).
    pub async fn send(&mut self, message: &Message) -> Result<Settlement, Amqp1PublishError> {
        let properties = ApplicationProperties::builder()
            .insert(TOPIC, message.topic().to_string())
            .insert(MESSAGE_ID, message.message_id().to_string())
            .insert(GENERATE_TIME, message.generate_time_ms())
            .build();
        let amqp_message = fe2o3_amqp::types::messaging::Message::builder()
            .header(Header::builder().durable(true).build())
            .application_properties(properties)
            .data(Binary::from(message.payload().to_vec()))
            .build();
        self.sender
            .send_batchable(amqp_message)
            .await
            .map_err(|e| Amqp1PublishError {
                peer: self.peer.clone(),
                what: format!("sending: {e}"),
            })
    }

    /// Detaches the link and closes the session and connection, waiting
    /// at most [`CLOSE_TIMEOUT`]: everything sent was settled before, and a
    /// peer that never answers the detach (seen once in a kill campaign
    /// against RabbitMQ, the client spinning) must not hold the caller;
    /// dropping the connection closes its socket.
    pub async fn close(mut self) {
        let closing = async {
            // Detached, not closed: RabbitMQ 3.10 answers a link close with
            // an illegal-state error.
            let _ = self.sender.detach().await;
            let _ = self.session.end().await;
            let _ = self.connection.close().await;
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
            tracing::warn!(peer = %self.peer, "closing the AMQP 1.0 connection took over {CLOSE_TIMEOUT:?}; dropped it");
        }
    }
}
