//! The AMQP 1.0 source: `connections` connections, each with one session
//! and one receiver link in manual credit mode, reconnecting until stopped.
//!
//! Invariants:
//! - a message is **accepted** only once the engine is done with it
//!   (delivered by every group, or durably held by every group's backlog,
//!   or durably a dead letter): acceptance follows the [`Positions`](crate::source::Positions)'s
//!   contiguous watermark over received batches;
//! - link credit is the window: the peer may have at most `credit`
//!   messages out that are not accepted, since credit is given back only as
//!   messages are accepted. That is also the most a crash redelivers;
//! - on shutdown the link stops taking messages (credit 0), the engine
//!   drains, the done ones are accepted and every undone one is
//!   **released** (the peer delivers it again), never accepted;
//! - a lost connection drops its tracker: its unsettled messages return to
//!   the peer and come again through a new connection (duplicates, never
//!   a loss);
//! - a session's begin and the link's attach wait at most
//!   [`ATTACH_TIMEOUT`] for the peer; a peer that never answers is a lost
//!   connection, dropped and made again, never a source that hangs;
//! - connection attempts are paced (see the `pacing` module) and retried with
//!   jittered backoff; a login refused before any connection worked ends
//!   the source (wrong credentials), later it is retried.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::{CreditMode, Receiver};
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use tokio_rustls::rustls::ClientConfig;
use tokio_util::sync::CancellationToken;

use super::bounds::{ATTACH_TIMEOUT, CLOSE_TIMEOUT};
use super::config::Amqp1SourceConfig;
use super::login::{self, Login, OpenFailure};
use super::mapping;
use super::pacing::ConnectPacer;
use crate::backoff::Backoff;
use crate::broker_url::BrokerUrl;
use crate::knob::KnobError;
use crate::source::sessions::{ConnectFailure, Driver, SessionEnd, Sessions, run_sessions};
use crate::source::settle_loop::{Receiving, SettleRules, receive_and_settle};
use crate::source::source_adapter;
use crate::source::{
    Incoming, Ingest, LanePolicy, Source, SourceContext, SourceError, SourceHealth, first_failure,
};

/// How long one connection attempt may take (TCP, TLS, SASL, open).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads an AMQP 1.0 node into the engine; see the module docs.
pub struct Amqp1Source {
    config: Arc<Amqp1SourceConfig>,
    url: Option<BrokerUrl>,
}

impl Amqp1Source {
    /// A source for this configuration (checked; nothing connects yet).
    pub fn new(config: Amqp1SourceConfig) -> Result<Amqp1Source, KnobError> {
        let url = config.validate()?;
        if let Some(url) = &url {
            url.warn_if_plaintext();
        }
        Ok(Amqp1Source {
            config: Arc::new(config),
            url,
        })
    }

    /// The lane policy its messages take.
    pub fn lane(&self) -> LanePolicy {
        self.config.lane
    }

    fn shown(&self) -> String {
        match (&self.config.aliyun, &self.url) {
            (Some(a), _) => format!(
                "amqp1 aliyun group {} {}",
                a.consumer_group_id, self.config.address
            ),
            (None, Some(url)) => format!("amqp1 {url} {}", self.config.address),
            (None, None) => format!("amqp1 {}", self.config.address),
        }
    }
}

#[async_trait]
impl Source for Amqp1Source {
    fn connects(&self) -> bool {
        true
    }

    fn name(&self) -> String {
        self.shown()
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let origin = self.shown();
        let tls_wanted =
            self.config.aliyun.is_some() || self.url.as_ref().is_some_and(|u| u.is_tls());
        let tls = if tls_wanted {
            let config = login::tls_config(self.config.ca_file.as_deref()).map_err(|e| {
                SourceError::Origin {
                    origin: origin.clone(),
                    message: e.to_string(),
                }
            })?;
            Some(config)
        } else {
            None
        };
        let pacer = Arc::new(ConnectPacer::new(self.config.connects_per_minute));
        let attached_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
        ctx.health.acknowledges();
        let mut tasks = tokio::task::JoinSet::new();
        for number in 1..=self.config.connections {
            let link = LinkRunner {
                config: Arc::clone(&self.config),
                url: self.url.clone(),
                tls: tls.clone(),
                pacer: Arc::clone(&pacer),
                attached_once: Arc::clone(&attached_once),
                number,
                origin: origin.clone(),
                ingest: ctx.ingest.clone(),
                stop: ctx.stop.clone(),
                drained: ctx.drained.clone(),
                health: ctx.health.clone(),
            };
            tasks.spawn(link.run());
        }
        first_failure(tasks, &origin, "a connection task").await
    }
}

/// How one connection's session ended.
enum End {
    /// Shut down on `stop` (everything settled or released), or after
    /// `idle_exit` with everything accepted.
    Finished,
    /// The connection, session or link failed: start over.
    Lost(String),
    /// The peer refused the link for want of permission (the user may not
    /// read the address): fatal before any link of the source was ever
    /// attached, as retrying cannot fix a configuration; afterwards, a
    /// loss like any other (permissions may be restored).
    Forbidden(String),
}

/// Whether an error from the peer is a permission refusal
/// (`amqp:unauthorized-access`), however it arrived (a link detached, a
/// session or connection ended with it).
fn forbidden(error: &impl std::fmt::Debug) -> bool {
    format!("{error:?}").contains("UnauthorizedAccess")
}

/// One connection, reconnecting until stopped.
struct LinkRunner {
    config: Arc<Amqp1SourceConfig>,
    url: Option<BrokerUrl>,
    tls: Option<Arc<ClientConfig>>,
    pacer: Arc<ConnectPacer>,
    /// Whether a link of this source attached once: a permission refusal
    /// is then worth retrying (shared by the source's connections).
    attached_once: Arc<std::sync::atomic::AtomicBool>,
    number: usize,
    origin: String,
    ingest: Ingest,
    stop: CancellationToken,
    drained: CancellationToken,
    health: SourceHealth,
}

impl LinkRunner {
    /// The login for the next attempt (signed now, for a preset).
    fn login(&self) -> Result<Login, String> {
        let c = &self.config;
        match (&c.aliyun, &self.url) {
            (Some(aliyun), _) => {
                let credentials = aliyun.credentials()?;
                aliyun
                    .login(
                        &credentials,
                        crate::message::now_epoch_ms(),
                        self.number,
                        c.connections,
                    )
                    .map_err(|e| e.to_string())
            }
            (None, Some(url)) => Ok(Login {
                host: url.host().to_string(),
                port: url.port(),
                tls: url.is_tls(),
                username: url.user().into(),
                password: url.password().into(),
                shown_as: url.redacted().to_string(),
            }),
            (None, None) => Err("no URL and no preset".into()),
        }
    }

    async fn run(mut self) -> Result<(), SourceError> {
        let c = &self.config;
        let mut backoff = Backoff::new(c.reconnect_initial, c.reconnect_max);
        let (who, stop, health) = (self.origin.clone(), self.stop.clone(), self.health.clone());
        let driver = Driver {
            who: &who,
            after: "unaccepted messages will be redelivered",
            stop: &stop,
            health: &health,
        };
        run_sessions(&mut self, &mut backoff, driver).await
    }

    async fn session(&self, connection: &mut ConnectionHandle<()>) -> End {
        let c = &self.config;
        let begun = tokio::time::timeout(ATTACH_TIMEOUT, fe2o3_amqp::Session::begin(connection));
        let mut session = match begun.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if forbidden(&e) => {
                return End::Forbidden(format!("beginning a session: permission refused: {e}"));
            }
            Ok(Err(e)) => return End::Lost(format!("beginning a session: {e}")),
            Err(_) => {
                return End::Lost(format!(
                    "beginning a session: no answer within {ATTACH_TIMEOUT:?}"
                ));
            }
        };
        let name = format!("laneway-{}-{}", std::process::id(), self.number);
        let attaching = Receiver::builder()
            .name(name)
            .source(c.address.as_str())
            .credit_mode(CreditMode::Manual)
            .auto_accept(false)
            // Every transfer unsettled until laneway settles it: `mixed`
            // (the default) lets the peer pre-settle one and forget it as
            // it sends, before anything is delivered or stored.
            .sender_settle_mode(SenderSettleMode::Unsettled)
            .attach(&mut session);
        let attached = match tokio::time::timeout(ATTACH_TIMEOUT, attaching).await {
            Ok(attached) => attached,
            Err(_) => {
                // Dropped, not ended: a peer that does not answer an
                // attach may not answer an end either.
                drop(session);
                return End::Lost(format!(
                    "attaching to {}: no answer within {ATTACH_TIMEOUT:?}",
                    c.address
                ));
            }
        };
        let mut receiver = match attached {
            Ok(r) => r,
            Err(e) => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.end()).await;
                if forbidden(&e) {
                    return End::Forbidden(format!(
                        "attaching to {}: permission refused (the user may not read it): {e}",
                        c.address
                    ));
                }
                return End::Lost(format!("attaching to {}: {e}", c.address));
            }
        };
        self.attached_once
            .store(true, std::sync::atomic::Ordering::Relaxed);
        match tokio::time::timeout(ATTACH_TIMEOUT, receiver.set_credit(c.credit)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return End::Lost(format!("granting credit: {e}")),
            Err(_) => {
                return End::Lost(format!(
                    "granting credit: not sent within {ATTACH_TIMEOUT:?}"
                ));
            }
        }
        self.health.healthy();
        tracing::info!(source = %self.origin, connection = self.number, credit = c.credit, "receiving");
        let rules = SettleRules {
            who: &self.origin,
            ingest: &self.ingest,
            stop: &self.stop,
            drained: &self.drained,
            health: &self.health,
            batch: c.batch,
            idle_exit: c.idle_exit,
        };
        let mut link = Link {
            origin: &self.origin,
            receiver: &mut receiver,
            window: c.credit,
            unsettled: 0,
        };
        let end = match receive_and_settle(&mut link, rules).await {
            SessionEnd::Lost(why) | SessionEnd::Fatal(why) => End::Lost(why),
            SessionEnd::Finished => End::Finished,
        };
        if matches!(end, End::Finished) {
            let ended = async {
                let _ = receiver.detach().await;
                let _ = session.end().await;
            };
            if tokio::time::timeout(CLOSE_TIMEOUT, ended).await.is_err() {
                tracing::debug!(source = %self.origin, "ending the session timed out; dropped it");
            }
        } else {
            drop(receiver);
            drop(session);
        }
        end
    }
}

#[async_trait]
impl Sessions for LinkRunner {
    type Connection = ConnectionHandle<()>;

    async fn connect(&mut self) -> Result<ConnectionHandle<()>, ConnectFailure> {
        let paced = self
            .pacer
            .turn(&self.stop, |wait| {
                // Whole milliseconds: what a person reads.
                let wait = Duration::from_millis(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
                tracing::warn!(source = %self.origin, "connection attempts are at connects_per_minute; waiting {wait:?}");
                self.health
                    .troubled(format!("pacing connection attempts, next in {wait:?}"));
            })
            .await;
        if !paced {
            // Stopped while waiting its turn: the driver ends on the stop.
            return Err(ConnectFailure::Retry("stopped".into()));
        }
        let login = self.login().map_err(ConnectFailure::Fatal)?;
        let container = format!("laneway-{}-{}", std::process::id(), self.number);
        let c = &self.config;
        match login::open(
            &login,
            &container,
            c.idle_timeout,
            self.tls.as_ref(),
            OPEN_TIMEOUT,
        )
        .await
        {
            Ok(connection) => Ok(connection),
            Err(OpenFailure::Tls(m)) => Err(ConnectFailure::Fatal(m)),
            Err(OpenFailure::Refused(m)) => Err(ConnectFailure::Refused(m)),
            Err(other) => Err(ConnectFailure::Retry(other.to_string())),
        }
    }

    async fn serve(&mut self, mut connection: ConnectionHandle<()>, _: u64) -> SessionEnd {
        let end = self.session(&mut connection).await;
        // Bounded, as every close here: a peer (or the client library)
        // that never finishes the handshake must not hold up the stop;
        // dropping the handle closes it.
        if tokio::time::timeout(CLOSE_TIMEOUT, connection.close())
            .await
            .is_err()
        {
            tracing::debug!(source = %self.origin, "closing the connection timed out; dropped it");
        }
        let attached_once = self
            .attached_once
            .load(std::sync::atomic::Ordering::Relaxed);
        match end {
            End::Finished => SessionEnd::Finished,
            End::Forbidden(why) if !attached_once => SessionEnd::Fatal(why),
            End::Lost(why) | End::Forbidden(why) => SessionEnd::Lost(why),
        }
    }

    fn next_attempt_in(&self, wait: Duration) -> Duration {
        // The backoff, or later when the connects_per_minute cap is used
        // up by then.
        self.pacer.next_turn_in(wait)
    }
}

/// One link: what [`receive_and_settle`] asks of AMQP 1.0. Credit is
/// granted in windows: new credit only once the last grant is used up,
/// as much as the window has room for beside what is still unaccepted.
struct Link<'a> {
    origin: &'a str,
    receiver: &'a mut Receiver,
    /// The most messages received and not yet accepted (`credit`); 0 once
    /// paused at stop.
    window: u32,
    /// Received and not yet accepted.
    unsettled: u32,
}

/// A transfer as received: a message, or one the client could not decode
/// (a string property that is not UTF-8, a property that is a list or a
/// map), which the client has taken off the link all the same. Moved once,
/// from `receive` to `take`: boxing the message would cost an allocation
/// a message to save a copy.
#[allow(clippy::large_enum_variant)]
enum Transfer {
    Message(fe2o3_amqp::link::delivery::Delivery<Body<Value>>),
    Undecodable(fe2o3_amqp::link::MessageDecodeError),
}

#[async_trait]
impl Receiving for Link<'_> {
    type Received = Transfer;
    type Position = DeliveryInfo;

    async fn receive(&mut self) -> Result<Self::Received, String> {
        // `recv` is cancel-safe: a call dropped early loses nothing.
        match self.receiver.recv::<Body<Value>>().await {
            Ok(delivery) => Ok(Transfer::Message(delivery)),
            // Settled as a dead letter like any malformed input: left
            // unsettled, it would hold its place (and the link) forever.
            Err(fe2o3_amqp::link::RecvError::MessageDecode(e)) => Ok(Transfer::Undecodable(e)),
            Err(e) => Err(e.to_string()),
        }
    }

    fn take(&mut self, transfer: Self::Received) -> (Incoming, DeliveryInfo) {
        self.unsettled = self.unsettled.saturating_add(1);
        let origin = self.origin;
        match transfer {
            Transfer::Message(delivery) => {
                let info = DeliveryInfo::from(&delivery);
                let id = info.delivery_id();
                let incoming = mapping::to_incoming(delivery.into_message(), || {
                    format!("{origin} delivery {id}")
                });
                (incoming, info)
            }
            Transfer::Undecodable(e) => {
                let incoming = Incoming::Malformed {
                    raw: bytes::Bytes::new(),
                    origin: format!("{origin} delivery {}", e.info.delivery_id()),
                    reason: format!(
                        "undecodable message (its bytes are not kept: the AMQP client decodes a transfer whole): {}",
                        e.source
                    ),
                };
                (incoming, e.info)
            }
        }
    }

    async fn acknowledge(&mut self, done: Vec<DeliveryInfo>) -> Result<u64, String> {
        let n = done.len();
        self.receiver
            .accept_all(done)
            .await
            .map_err(|e| format!("accepting: {e}"))?;
        self.unsettled = self
            .unsettled
            .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
        // New credit only once the last grant is used up: then no transfer
        // is in flight, and the grant means the same to every peer (a peer
        // that counts credit from its own delivery count, not from the one
        // in the flow frame, would otherwise overrun the link).
        let room = self.window.saturating_sub(self.unsettled);
        if self.receiver.credit() == 0 && room > 0 {
            self.receiver
                .set_credit(room)
                .await
                .map_err(|e| format!("granting credit: {e}"))?;
        }
        Ok(n as u64)
    }

    async fn pause(&mut self) {
        self.window = 0;
        if let Err(e) = self.receiver.set_credit(0).await {
            tracing::debug!(error = %e, "withdrawing credit failed");
        }
    }

    async fn give_back(&mut self, undone: Vec<DeliveryInfo>) {
        let n = undone.len();
        match self.receiver.release_all(undone).await {
            Ok(()) => tracing::info!(source = %self.origin, released = n,
                "released messages the engine had not finished; the peer delivers them again"),
            Err(e) => tracing::warn!(source = %self.origin, error = %e,
                "releasing unfinished messages failed; the peer returns them when the link closes"),
        }
    }
}

source_adapter!(Amqp1SourceConfig, |config, _| Amqp1Source::new(
    config.clone()
));
