//! Declaring what a consumer reads: its queue (with the arguments its kind
//! needs, such as `x-queue-type = stream`), and optionally a topic exchange
//! bound to it. Shared by the queue source, the stream source and the
//! broker backlog store so all declare, bind and classify failures the same
//! way; and reading a queue's counts with a passive declaration, which
//! changes nothing ([`counts`]).
//!
//! Invariant: every error of [`Declaration::apply`] is classified
//! ([`AmqpError::classify`]) and redacted, so a caller can tell "fix the
//! set-up" (fatal) from "reconnect"; [`counts`] never creates a queue.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, ExchangeKind, Queue};

use super::connect::AmqpError;
use crate::broker_url::BrokerUrl;

/// What to declare for one consumer.
pub(crate) struct Declaration<'a> {
    /// The queue (or stream) to consume.
    pub queue: &'a str,
    /// Its arguments (for a stream: `x-queue-type = stream`).
    pub arguments: FieldTable,
    /// Declare missing objects; `false`: check that they exist (passive).
    pub declare: bool,
    /// A topic exchange to bind the queue to, if any.
    pub exchange: Option<&'a str>,
    /// The binding key used with `exchange`.
    pub binding_key: &'a str,
}

impl Declaration<'_> {
    /// Declares the queue (durable), and the exchange and binding when one
    /// is configured.
    pub async fn apply(self, channel: &Channel, url: &BrokerUrl) -> Result<(), AmqpError> {
        let failed = |what: String, e: lapin::Error| AmqpError::classify(url, &what, &e, false);
        channel
            .queue_declare(
                self.queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    passive: !self.declare,
                    ..QueueDeclareOptions::default()
                },
                // A passive declaration takes no arguments: it only checks.
                if self.declare {
                    self.arguments
                } else {
                    FieldTable::default()
                },
            )
            .await
            .map_err(|e| failed(format!("declaring queue {}", self.queue), e))?;
        let Some(exchange) = self.exchange else {
            return Ok(());
        };
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    passive: !self.declare,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| failed(format!("declaring exchange {exchange}"), e))?;
        channel
            .queue_bind(
                self.queue.into(),
                exchange.into(),
                self.binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| failed(format!("binding queue {} to {exchange}", self.queue), e))?;
        Ok(())
    }
}

/// The durable queue `queue` as the broker has it (its ready messages and
/// consumers), by a passive declaration: it declares nothing, and fails
/// (`NOT_FOUND`, which closes the channel) when the queue does not exist.
pub(crate) async fn counts(channel: &Channel, queue: &ShortString) -> Result<Queue, lapin::Error> {
    channel
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                passive: true,
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}
