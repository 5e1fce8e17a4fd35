//! The Pulsar source: one consumer on a failover subscription, reconnecting
//! until stopped.
//!
//! Invariants:
//! - a message is **acknowledged** (individually, by id) only once the
//!   engine is done with it (delivered by every group, or durably held by
//!   every group's backlog, or durably a dead letter): acks follow the
//!   contiguous watermark over received batches ([`Positions`]). No
//!   cumulative ack is sent: a redelivered older message may still be
//!   undone behind a newer done one;
//! - on shutdown the source stops taking messages, the engine drains, the
//!   done ones are acknowledged and every undone one is **negatively
//!   acknowledged** (the broker delivers it again), then the consumer is
//!   closed;
//! - a lost connection drops its tracker: the broker redelivers every
//!   unacknowledged message to the next consumer (duplicates, never a
//!   loss); a batch the engine abandoned is negatively acknowledged;
//! - the receive queue bounds what the broker pushes ahead; what the
//!   engine holds is bounded by its lanes (`submit` waits when they are
//!   full);
//! - a login refused before any connection worked ends the source (wrong
//!   credentials); later refusals are retried with jittered backoff.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use pulsar::consumer::InitialPosition;
use pulsar::error::{ConnectionError, ConsumerError, ServiceDiscoveryError};
use pulsar::proto::{MessageIdData, ServerError};
use pulsar::{
    Authentication, ConnectionRetryOptions, Consumer, ConsumerOptions, Pulsar, SubType,
    TokioExecutor,
};

use super::batch_acks::BatchAcks;
use super::config::{PulsarSourceConfig, Resolved};
use super::mapping::{self, Received};
use super::tuya::TuyaCredentials;
use crate::backoff::Backoff;
use crate::knob::KnobError;
use crate::source::sessions::{ConnectFailure, Driver, SessionEnd, Sessions, run_sessions};
use crate::source::settle_loop::{Receiving, SettleRules, receive_and_settle};
use crate::source::source_adapter;
use crate::source::{Incoming, LanePolicy, Source, SourceContext, SourceError};

/// How long one connection attempt (client, lookup, subscribe) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long closing the consumer may take before it is dropped instead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

type PulsarConsumer = Consumer<Vec<u8>, TokioExecutor>;

/// Reads a Pulsar topic into the engine; see the module docs.
pub struct PulsarSource {
    config: Arc<PulsarSourceConfig>,
    resolved: Resolved,
}

impl PulsarSource {
    /// A source for this configuration (checked; nothing connects yet).
    pub fn new(config: PulsarSourceConfig) -> Result<PulsarSource, KnobError> {
        let resolved = config.validate()?;
        Ok(PulsarSource {
            config: Arc::new(config),
            resolved,
        })
    }

    /// The lane policy its messages take.
    pub fn lane(&self) -> LanePolicy {
        self.config.lane
    }

    fn shown(&self) -> String {
        match &self.config.tuya {
            Some(_) => format!("pulsar tuya {}", self.resolved.topic),
            None => format!(
                "pulsar {} {}",
                crate::broker_url::redact(&self.resolved.url),
                self.resolved.topic
            ),
        }
    }
}

#[async_trait]
impl Source for PulsarSource {
    fn connects(&self) -> bool {
        true
    }

    fn name(&self) -> String {
        self.shown()
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let origin = self.shown();
        let c = &self.config;
        ctx.health.acknowledges();
        if self.resolved.plaintext_login {
            tracing::warn!(source = %origin, "tuya.allow_plaintext: the login (access ID and a password derived from the access key, replayable) crosses this non-TLS connection in clear");
        }
        let ca = match &c.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| SourceError::Origin {
                origin: origin.clone(),
                message: format!("reading ca_file {}: {e}", path.display()),
            })?),
            None => None,
        };
        let mut backoff = Backoff::new(c.reconnect_initial, c.reconnect_max);
        let (stop, health) = (ctx.stop.clone(), ctx.health.clone());
        let mut runner = Runner {
            origin,
            config: self.config,
            resolved: self.resolved,
            ca,
            ctx,
        };
        let driver = Driver {
            who: &runner.origin.clone(),
            after: "unacknowledged messages will be redelivered",
            stop: &stop,
            health: &health,
        };
        run_sessions(&mut runner, &mut backoff, driver).await
    }
}

/// One consumer's sessions.
struct Runner {
    origin: String,
    config: Arc<PulsarSourceConfig>,
    resolved: Resolved,
    /// The certificate authorities `ca_file` names, read once at start.
    ca: Option<Vec<u8>>,
    ctx: SourceContext,
}

/// A session's client, its consumer, and the preset's credentials it
/// logged in with.
type Connected = (
    Pulsar<TokioExecutor>,
    PulsarConsumer,
    Option<TuyaCredentials>,
);

#[async_trait]
impl Sessions for Runner {
    type Connection = Connected;

    async fn connect(&mut self) -> Result<Connected, ConnectFailure> {
        let credentials = match &self.config.tuya {
            // Read at each attempt, so a rotated key is picked up.
            Some(tuya) => Some(tuya.credentials().map_err(ConnectFailure::Fatal)?),
            None => None,
        };
        let opened = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.open(credentials.as_ref(), self.ca.as_deref()),
        )
        .await;
        match opened {
            Ok(Ok((client, consumer))) => Ok((client, consumer, credentials)),
            Ok(Err(e)) if refused(&e) => Err(ConnectFailure::Refused(format!(
                "the broker refused the login: {e}"
            ))),
            Ok(Err(e)) => Err(ConnectFailure::Retry(e.to_string())),
            Err(_) => Err(ConnectFailure::Retry(format!(
                "connecting took longer than {CONNECT_TIMEOUT:?}"
            ))),
        }
    }

    async fn serve(&mut self, connected: Connected, _: u64) -> SessionEnd {
        let (client, mut consumer, credentials) = connected;
        self.ctx.health.healthy();
        tracing::info!(source = %self.origin, subscription = %self.resolved.subscription, "receiving");
        let rules = SettleRules {
            who: &self.origin,
            ingest: &self.ctx.ingest,
            stop: &self.ctx.stop,
            drained: &self.ctx.drained,
            health: &self.ctx.health,
            batch: self.config.batch,
            idle_exit: self.config.idle_exit,
        };
        let mut session = PulsarSession {
            runner: self,
            consumer: &mut consumer,
            access_key: credentials.as_ref().map(|k| k.access_key()),
            batches: BatchAcks::default(),
        };
        let end = receive_and_settle(&mut session, rules).await;
        // Bounded: a broker that does not answer the close must not hold
        // up the stop (dropping the client closes the connection, and the
        // broker redelivers what is unacked).
        match tokio::time::timeout(CLOSE_TIMEOUT, consumer.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "closing the consumer failed"),
            Err(_) => tracing::debug!("closing the consumer timed out"),
        }
        drop(client);
        end
    }
}

impl Runner {
    /// A client and a consumer on the failover subscription.
    async fn open(
        &self,
        credentials: Option<&TuyaCredentials>,
        ca: Option<&[u8]>,
    ) -> Result<(Pulsar<TokioExecutor>, PulsarConsumer), pulsar::Error> {
        let c = &self.config;
        let mut builder = Pulsar::builder(self.resolved.url.as_str(), TokioExecutor)
            // One attempt per connect here: the loop above owns the
            // backoff, so a broker that is down shows as trouble at once.
            .with_connection_retry_options(ConnectionRetryOptions {
                max_retries: 1,
                ..ConnectionRetryOptions::default()
            });
        if let Some(credentials) = credentials {
            builder = builder.with_auth(Authentication {
                name: "auth1".into(),
                data: credentials.auth_data(),
            });
        }
        if let Some(ca) = ca {
            builder = builder.with_certificate_chain(ca.to_vec());
        }
        let client = builder.build().await?;
        let consumer = client
            .consumer()
            .with_topic(self.resolved.topic.as_str())
            .with_subscription(self.resolved.subscription.as_str())
            .with_subscription_type(SubType::Failover)
            .with_consumer_name(format!("laneway-{}", std::process::id()))
            .with_batch_size(c.receive_queue)
            .with_options(
                ConsumerOptions::default().with_initial_position(InitialPosition::Earliest),
            )
            .build::<Vec<u8>>()
            .await?;
        Ok((client, consumer))
    }

    fn to_incoming(
        &self,
        topic: &str,
        id: &MessageIdData,
        payload: pulsar::Payload,
        access_key: Option<&str>,
    ) -> Incoming {
        let pulsar::Payload { metadata, data } = payload;
        let properties: Vec<(String, String)> = metadata
            .properties
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        let shown_id = match id.batch_index {
            Some(b) if b >= 0 => format!("{}:{}:{b}", id.ledger_id, id.entry_id),
            _ => format!("{}:{}", id.ledger_id, id.entry_id),
        };
        let received = Received {
            properties: &properties,
            data,
            event_time_ms: metadata.event_time,
            publish_time_ms: metadata.publish_time,
            id: shown_id.clone(),
        };
        let origin = || format!("pulsar {topic} message {shown_id}");
        match access_key {
            Some(key) => mapping::tuya(received, key, origin),
            None => mapping::plain(received, origin),
        }
    }
}

/// Whether a connect error is the broker refusing the login.
fn refused(e: &pulsar::Error) -> bool {
    let server = |c: &ConnectionError| {
        matches!(
            c,
            ConnectionError::Authentication(_)
                | ConnectionError::PulsarError(
                    Some(ServerError::AuthenticationError | ServerError::AuthorizationError),
                    _
                )
        )
    };
    match e {
        pulsar::Error::Authentication(_) => true,
        pulsar::Error::Connection(c) => server(c),
        pulsar::Error::Consumer(ConsumerError::Connection(c)) => server(c),
        pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Connection(c)) => server(c),
        _ => false,
    }
}

/// Whether the client failed one entry (its compression, its batch), not
/// the connection: it reports such a failure once and reads on.
fn undecodable(e: &pulsar::Error) -> bool {
    matches!(
        e,
        pulsar::Error::Consumer(ConsumerError::Io(_))
            | pulsar::Error::Connection(ConnectionError::Decoding(_))
            | pulsar::Error::Consumer(ConsumerError::Connection(ConnectionError::Decoding(_)))
    )
}

/// One session on a consumer: what [`receive_and_settle`] asks of Pulsar.
struct PulsarSession<'a> {
    runner: &'a Runner,
    consumer: &'a mut PulsarConsumer,
    /// The preset's access key, which decrypts its payloads.
    access_key: Option<&'a str>,
    /// Batched entries not yet wholly done: one ack covers a whole entry.
    batches: BatchAcks,
}

#[async_trait]
impl Receiving for PulsarSession<'_> {
    type Received = pulsar::consumer::Message<Vec<u8>>;
    /// A message's topic and id: what acknowledging it takes.
    type Position = (String, MessageIdData);

    async fn receive(&mut self) -> Result<Self::Received, String> {
        // `next` on the consumer is cancel-safe, and so is this loop.
        loop {
            match self.consumer.next().await {
                Some(Ok(m)) => return Ok(m),
                // The client reports such an entry once, without its id or
                // bytes, and goes on: ending the session would meet it
                // first again on every new one, and nothing after it would
                // ever be read. It stays on the subscription, unacknowledged.
                Some(Err(e)) if undecodable(&e) => {
                    tracing::error!(source = %self.runner.origin, error = %e,
                        "the client cannot decode an entry; it is left unacknowledged on the subscription (the broker keeps it and delivers it again on the next connection) and the messages after it are read");
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the consumer's stream ended".into()),
            }
        }
    }

    fn take(&mut self, m: Self::Received) -> (Incoming, Self::Position) {
        let id = m.message_id().clone();
        self.batches
            .received(&m.topic, &id, m.message_id.batch_size);
        let incoming = self
            .runner
            .to_incoming(&m.topic, &id, m.payload, self.access_key);
        (incoming, (m.topic, id))
    }

    /// An ack that cannot be sent (the consumer is gone) is left to the
    /// broker, which redelivers the message to the next consumer.
    async fn acknowledge(&mut self, done: Vec<Self::Position>) -> Result<u64, String> {
        let mut acked = 0u64;
        for (topic, id) in done {
            // A batched message waits for the rest of its entry: the
            // broker takes any ack of it as the whole entry's.
            let Some((id, covers)) = self.batches.done(&topic, id) else {
                continue;
            };
            match self.consumer.ack_with_id(&topic, id).await {
                Ok(()) => acked += covers,
                Err(e) => {
                    tracing::debug!(error = %e, "an ack could not be sent; the broker redelivers")
                }
            }
        }
        Ok(acked)
    }

    async fn give_back(&mut self, undone: Vec<Self::Position>) {
        let mut n = 0usize;
        for (topic, id) in undone {
            self.batches.given_back(&topic, &id);
            if self.consumer.nack_with_id(&topic, id).await.is_ok() {
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(source = %self.runner.origin, negatively_acknowledged = n,
                "gave back messages the engine had not finished; the broker delivers them again");
        }
    }
}

source_adapter!(PulsarSourceConfig, |config, _| PulsarSource::new(
    config.clone()
));
