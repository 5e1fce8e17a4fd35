//! The AMQP sink: publishes a group's deliveries to an exchange with
//! publisher confirms.
//!
//! Outcomes per message, as the engine sees them:
//! - confirmed (`ack`) → delivered;
//! - "push limited": the broker refused it (`nack`, for example a queue
//!   declared with `x-overflow: reject-publish` that is full) or the
//!   in-flight window was full → a retryable failure: the group keeps it in
//!   its backlog and retries it with backoff, while new messages go live;
//! - "push failed": no connection, a publish error, or no confirm within
//!   `confirm_timeout` → retryable as well; the channel is dropped and
//!   reopened (with backoff) on a later delivery;
//! - unroutable (returned by the broker under `mandatory`) or a routing key
//!   or header that cannot be built → permanent: a dead letter with the
//!   reason.
//!
//! A message's key and extra headers (a Kafka record's) go out as headers:
//! `recordKey` and each under its own name (see `headers::properties_of`).
//!
//! Invariants: `Ok` is returned only when every message of the batch was
//! confirmed by the broker; a returned message is charged to the message it
//! is (same routing key, id and payload), never to the confirm the client
//! hands it with: the client gives each return to whichever confirm it
//! resolves next, and a confirm of several messages resolves them in no
//! fixed order. Each delivery in flight publishes on a channel of its own,
//! so every return its confirms carry is one of its own messages; the
//! in-flight window counts published, unconfirmed messages across every
//! concurrent delivery; a batch that mixes retryable and permanent failures
//! reports them all as retryable (a permanent one fails alone on its next
//! attempt, and is then buried), so a retryable failure is never buried by
//! mistake.

use std::sync::Arc;

use async_trait::async_trait;
use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection, ExchangeKind};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::config::AmqpSinkConfig;
use super::routing_key::RoutingKey;
use crate::amqp::core::config::short;
use crate::amqp::core::connect::{AmqpError, close_within, connect};
use crate::amqp::core::headers;
use crate::backoff::Backoff;
use crate::broker_url::BrokerUrl;
use crate::knob::KnobError;
use crate::sink::{BatchError, Delivery, DeliveryError, Sink};

/// The open connection and its idle confirm-mode channels (one is taken
/// by each delivery in flight, and given back when it ends well).
struct Link {
    connection: Connection,
    idle: Vec<Channel>,
}

impl Link {
    /// Closes the connection (and so every channel on it) in the
    /// background, waiting at most `close_within`'s bound for the broker.
    fn close_later(self, reason: &'static str) {
        tokio::spawn(close_within(async move {
            let _ = self.connection.close(200, reason.into()).await;
        }));
    }
}

/// The connection state behind the sink's lock.
struct LinkState {
    link: Option<Link>,
    backoff: Backoff,
    /// No new connection attempt before this (after a failure).
    not_before: Option<Instant>,
}

/// Publishes deliveries to an exchange with confirms; see the module docs.
pub struct AmqpSink {
    config: AmqpSinkConfig,
    url: BrokerUrl,
    key: RoutingKey,
    exchange: ShortString,
    window: Arc<Semaphore>,
    state: tokio::sync::Mutex<LinkState>,
}

impl AmqpSink {
    /// A sink for this configuration; it connects on the first delivery.
    pub fn new(config: AmqpSinkConfig) -> Result<AmqpSink, KnobError> {
        let (url, key) = config.validate()?;
        url.warn_if_plaintext();
        let exchange = short("exchange", &config.exchange)?;
        Ok(AmqpSink {
            window: Arc::new(Semaphore::new(config.max_in_flight)),
            state: tokio::sync::Mutex::new(LinkState {
                link: None,
                backoff: Backoff::new(config.reconnect_initial, config.reconnect_max),
                not_before: None,
            }),
            exchange,
            url,
            key,
            config,
        })
    }

    /// A confirm-mode channel for one delivery alone, connecting first
    /// when needed.
    async fn channel(&self) -> Result<Channel, String> {
        let mut state = self.state.lock().await;
        if let Some(link) = &mut state.link {
            if link.connection.status().connected() {
                while let Some(channel) = link.idle.pop() {
                    if channel.status().connected() {
                        return Ok(channel);
                    }
                }
                match confirm_channel(&link.connection, &self.url).await {
                    Ok(channel) => return Ok(channel),
                    Err(e) => {
                        tracing::warn!(error = %e, "sink cannot open another channel; reconnecting")
                    }
                }
            }
            if let Some(link) = state.link.take() {
                link.close_later("laneway reconnecting");
            }
        }
        if let Some(t) = state.not_before
            && Instant::now() < t
        {
            return Err(format!(
                "push failed: no connection to {} (reconnecting)",
                self.url
            ));
        }
        match self.open().await {
            Ok((link, channel)) => {
                state.link = Some(link);
                state.backoff.reset();
                state.not_before = None;
                tracing::info!(broker = %self.url, exchange = %self.config.exchange, "sink connected");
                Ok(channel)
            }
            Err(e) => {
                let wait = state.backoff.next_delay();
                state.not_before = Some(Instant::now() + wait);
                tracing::warn!(error = %e, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "sink cannot reach the broker");
                Err(format!("push failed: {e}"))
            }
        }
    }

    /// Hands a channel back after a delivery that left it sound, unless its
    /// connection was replaced meanwhile.
    async fn give_back(&self, channel: Channel) {
        let mut state = self.state.lock().await;
        if let Some(link) = &mut state.link
            && channel.status().connected()
            && link.connection.status().connected()
        {
            link.idle.push(channel);
        }
    }

    /// A new connection, with the exchange declared, and its first channel.
    async fn open(&self) -> Result<(Link, Channel), AmqpError> {
        let connection = connect(&self.url, "laneway sink").await?;
        let channel = confirm_channel(&connection, &self.url).await?;
        channel
            .exchange_declare(
                self.exchange.clone(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    passive: !self.config.declare_exchange,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                AmqpError::new(
                    &self.url,
                    &format!("declaring exchange {}", self.config.exchange),
                    e,
                )
            })?;
        Ok((
            Link {
                connection,
                idle: Vec::new(),
            },
            channel,
        ))
    }

    /// Drops the link after a failure, so the next delivery reconnects.
    async fn reset(&self, why: &str) {
        let mut state = self.state.lock().await;
        if let Some(link) = state.link.take() {
            tracing::warn!(broker = %self.url, reason = why, "dropping the sink's channel");
            link.close_later("laneway resetting");
        }
    }
}

/// Opens a channel on `connection` and puts it in confirm mode.
async fn confirm_channel(connection: &Connection, url: &BrokerUrl) -> Result<Channel, AmqpError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| AmqpError::new(url, "opening a channel", e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| AmqpError::new(url, "enabling publisher confirms", e))?;
    Ok(channel)
}

/// The acknowledged messages the broker returned, each with the reason
/// it gave. A return is matched to the message it is (routing key, id and
/// payload; messages alike in all three route alike, so either is right);
/// one that matches none (it cannot, on a channel of its own) falls back
/// to the message whose confirm carried it.
fn charge_returns(
    batch: &[Delivery],
    keys: &[Option<ShortString>],
    acked: &[usize],
    returned: Vec<(usize, BasicReturnMessage)>,
) -> Vec<(usize, String)> {
    let mut open: Vec<usize> = acked.to_vec();
    let mut charged = Vec::with_capacity(returned.len());
    for (carrier, r) in returned {
        let id = r.delivery.properties.headers().as_ref().and_then(|h| {
            match h.inner().get(headers::MESSAGE_ID) {
                Some(AMQPValue::LongString(s)) => Some(s.as_bytes().to_vec()),
                _ => None,
            }
        });
        let is_it = |&i: &usize| {
            let m = &batch[i].message;
            keys[i].as_ref() == Some(&r.delivery.routing_key)
                && m.payload().as_ref() == r.delivery.data.as_slice()
                && id.as_deref() == Some(m.message_id().as_bytes())
        };
        let at = open
            .iter()
            .position(is_it)
            .or_else(|| open.iter().position(|&i| i == carrier));
        match at {
            Some(at) => charged.push((
                open.swap_remove(at),
                format!("{} {}", r.reply_code, r.reply_text),
            )),
            None => {
                tracing::warn!(routing_key = %r.delivery.routing_key, "a returned message matches no message of its delivery")
            }
        }
    }
    charged
}

/// What became of each message of a batch.
#[derive(Default)]
struct Outcome {
    limited_window: Vec<usize>,
    nacked: Vec<usize>,
    failed: Vec<(usize, String)>,
    unroutable: Vec<(usize, String)>,
}

impl Outcome {
    /// Each failed message with its own kind: refusals (nacks, a full
    /// window) are "push limited" and use up no attempt, a broken channel
    /// is worth a retry, an unroutable message is a dead letter at once.
    fn into_result(self) -> Result<(), BatchError> {
        let nacked = DeliveryError::PushLimited(
            "push limited: the broker refused it (nack; a queue may be full)".into(),
        );
        let window = DeliveryError::PushLimited("push limited: over the in-flight window".into());
        let mut failed: Vec<(usize, DeliveryError)> = self
            .nacked
            .into_iter()
            .map(|i| (i, nacked.clone()))
            .chain(self.limited_window.into_iter().map(|i| (i, window.clone())))
            .chain(
                self.failed
                    .into_iter()
                    .map(|(i, why)| (i, DeliveryError::RetryLater(why))),
            )
            .chain(
                self.unroutable
                    .into_iter()
                    .map(|(i, why)| (i, DeliveryError::Permanent(why))),
            )
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        failed.sort_unstable_by_key(|(i, _)| *i);
        Err(BatchError::Some(failed))
    }
}

#[async_trait]
impl Sink for AmqpSink {
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        let channel = self
            .channel()
            .await
            .map_err(|e| BatchError::All(DeliveryError::RetryLater(e)))?;
        let options = BasicPublishOptions {
            mandatory: self.config.mandatory,
            ..BasicPublishOptions::default()
        };
        let mut outcome = Outcome::default();
        let mut pending = Vec::with_capacity(batch.len());
        // The routing key each published message went out with.
        let mut keys: Vec<Option<ShortString>> = vec![None; batch.len()];
        let mut acked = Vec::with_capacity(batch.len());
        let mut returned = Vec::new();
        let mut broken = None;
        for (i, d) in batch.iter().enumerate() {
            if broken.is_some() {
                outcome
                    .failed
                    .push((i, "push failed: the channel broke".into()));
                continue;
            }
            let Ok(permit) = Arc::clone(&self.window).try_acquire_owned() else {
                outcome.limited_window.push(i);
                continue;
            };
            let m = &d.message;
            let key = self.key.render(m);
            let Ok(key) = ShortString::try_new(key) else {
                outcome.unroutable.push((
                    i,
                    "unroutable: the routing key is longer than 255 bytes".into(),
                ));
                continue;
            };
            let props = match headers::properties_of(m, self.config.persistent) {
                Ok(props) if d.superseded => headers::mark_superseded(props),
                Ok(props) => props,
                Err(why) => {
                    outcome
                        .unroutable
                        .push((i, format!("unpublishable: {why}")));
                    continue;
                }
            };
            match channel
                .basic_publish(
                    self.exchange.clone(),
                    key.clone(),
                    options,
                    m.payload(),
                    props,
                )
                .await
            {
                Ok(confirm) => {
                    keys[i] = Some(key);
                    pending.push((i, permit, confirm));
                }
                Err(e) => {
                    let e = AmqpError::new(&self.url, "publishing", e);
                    outcome.failed.push((i, format!("push failed: {e}")));
                    broken = Some(e.to_string());
                }
            }
        }
        let deadline = Instant::now() + self.config.confirm_timeout;
        for (i, permit, confirm) in pending {
            // A timeout still polls the confirm once, so late ones are seen.
            match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::NotRequested)) => {}
                Ok(Ok(Confirmation::Ack(r))) => {
                    acked.push(i);
                    returned.extend(r.map(|r| (i, r)));
                }
                Ok(Ok(Confirmation::Nack(r))) => {
                    outcome.nacked.push(i);
                    returned.extend(r.map(|r| (i, r)));
                }
                Ok(Err(e)) => {
                    let e = AmqpError::new(&self.url, "waiting for a confirm", e);
                    outcome.failed.push((i, format!("push failed: {e}")));
                    broken.get_or_insert(e.to_string());
                }
                Err(_) => {
                    outcome.failed.push((
                        i,
                        format!(
                            "push failed: no confirm within {:?}",
                            self.config.confirm_timeout
                        ),
                    ));
                    broken.get_or_insert_with(|| "confirm timeout".into());
                }
            }
            drop(permit);
        }
        for (i, why) in charge_returns(batch, &keys, &acked, returned) {
            // One reason covers the batch's unroutable messages, so it
            // names no single routing key.
            let why = format!(
                "unroutable: {why} (exchange {}: no queue is bound for the message's routing key)",
                self.config.exchange
            );
            outcome.unroutable.push((i, why));
        }
        match broken {
            Some(why) => self.reset(&why).await,
            None => self.give_back(channel).await,
        }
        outcome.into_result()
    }

    async fn close(&self) -> Result<(), DeliveryError> {
        let mut state = self.state.lock().await;
        if let Some(link) = state.link.take() {
            close_within(link.connection.close(200, "laneway closing".into())).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failed_message_keeps_its_own_kind() {
        let mixed = Outcome {
            nacked: vec![2],
            limited_window: vec![3],
            failed: vec![(1, "push failed: the channel broke".into())],
            unroutable: vec![(0, "unroutable: 312 NO_ROUTE".into())],
        };
        let Err(BatchError::Some(failed)) = mixed.into_result() else {
            panic!("a batch with failures must fail")
        };
        let kinds: Vec<(usize, &str)> = failed
            .iter()
            .map(|(i, e)| {
                let kind = match e {
                    DeliveryError::Permanent(_) => "permanent",
                    DeliveryError::PushLimited(_) => "limited",
                    _ => "retry",
                };
                (*i, kind)
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (0, "permanent"),
                (1, "retry"),
                (2, "limited"),
                (3, "limited")
            ]
        );
        assert_eq!(failed[0].1.reason(), "unroutable: 312 NO_ROUTE");
        assert!(Outcome::default().into_result().is_ok());
    }
}
