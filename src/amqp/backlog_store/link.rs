//! The store's connection to the broker ([`Link`]): one connection with a
//! confirm-mode channel for publishing and a channel for consuming, opened
//! on demand, with the group's three queues declared on it (see the module
//! docs of [`super`]), and reopened with backoff after a failure.
//!
//! Invariants: every link has a generation one above the one before it, so
//! a record taken on an older link is known as such (its original is back
//! in the queue); no new connection is attempted before the backoff after a
//! failure has passed; a link is handed out only while its connection and
//! both channels are up.

use std::sync::Arc;

use lapin::options::ConfirmSelectOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection};
use tokio::time::Instant;

use super::{Inner, unavailable};
use crate::amqp::core::connect::{AmqpError, close_within, connect};
use crate::amqp::core::declare::Declaration;
use crate::backlog::BacklogError;
use crate::backoff::Backoff;

/// The link behind the store's lock, and when the next attempt may be
/// made after a failure.
pub(super) struct LinkState {
    /// The open link, if any.
    pub(super) link: Option<Link>,
    /// The generation of the last link opened.
    pub(super) generation: u64,
    pub(super) backoff: Backoff,
    /// No new connection attempt before this (after a failure).
    pub(super) not_before: Option<Instant>,
}

/// One connection: a confirm-mode channel for publishing, and a channel
/// for consuming (whose delivery tags the record ids map to).
#[derive(Clone)]
pub(super) struct Link {
    pub(super) connection: Arc<Connection>,
    pub(super) publish: Channel,
    pub(super) consume: Channel,
    pub(super) generation: u64,
}

impl Link {
    /// Whether the connection and both channels are still open.
    pub(super) fn is_up(&self) -> bool {
        self.connection.status().connected()
            && self.publish.status().connected()
            && self.consume.status().connected()
    }
}

impl Inner {
    /// The current link, connecting (and declaring) first when needed.
    pub(super) async fn link(&self) -> Result<Link, BacklogError> {
        let mut state = self.link.lock().await;
        if let Some(link) = &state.link {
            if link.is_up() {
                return Ok(link.clone());
            }
            tracing::warn!(broker = %self.url, queue = %self.names.backlog, "broker backlog connection lost; reconnecting (unacked records go back to the queue)");
            state.link = None;
        }
        if let Some(t) = state.not_before
            && Instant::now() < t
        {
            return Err(BacklogError::Unavailable(format!(
                "no connection to {} (reconnecting)",
                self.url
            )));
        }
        let generation = state.generation + 1;
        match self.open(generation).await {
            Ok(link) => {
                state.generation = generation;
                state.link = Some(link.clone());
                state.backoff.reset();
                state.not_before = None;
                Ok(link)
            }
            Err(e) => {
                let wait = state.backoff.next_delay();
                state.not_before = Some(Instant::now() + wait);
                tracing::warn!(error = %e, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "broker backlog cannot reach the broker");
                Err(unavailable(e))
            }
        }
    }

    /// The current link if it is up, without reconnecting.
    pub(super) async fn link_now(&self) -> Result<Link, ()> {
        match &self.link.lock().await.link {
            Some(link) if link.is_up() => Ok(link.clone()),
            _ => Err(()),
        }
    }

    /// Replaces the publishing channel of link `generation` by a new one in
    /// confirm mode (the old one is closed).
    pub(super) async fn renew_publisher(&self, generation: u64) {
        let mut state = self.link.lock().await;
        let Some(link) = state.link.as_mut() else {
            return;
        };
        if link.generation != generation {
            return;
        }
        let fresh = match link.connection.create_channel().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %AmqpError::new(&self.url, "opening a channel", e), "keeping the publishing channel");
                return;
            }
        };
        if fresh
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .is_err()
        {
            return;
        }
        let old = std::mem::replace(&mut link.publish, fresh);
        tokio::spawn(close_within(async move {
            let _ = old.close(200, "laneway renewing".into()).await;
        }));
    }

    /// Drops the link after a failure, so the next call reconnects.
    pub(super) async fn reset(&self, why: &str) {
        let mut state = self.link.lock().await;
        if let Some(link) = state.link.take() {
            tracing::warn!(broker = %self.url, reason = why, "dropping the broker backlog's connection");
            tokio::spawn(close_within(async move {
                let _ = link.connection.close(200, "laneway resetting".into()).await;
            }));
        }
    }

    /// Connects, opens both channels and declares the three queues.
    async fn open(&self, generation: u64) -> Result<Link, AmqpError> {
        let connection = connect(&self.url, "laneway backlog").await?;
        let failed = |what: &str, e: lapin::Error| AmqpError::classify(&self.url, what, &e, false);
        let publish = connection
            .create_channel()
            .await
            .map_err(|e| failed("opening a channel", e))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| failed("enabling publisher confirms", e))?;
        let consume = connection
            .create_channel()
            .await
            .map_err(|e| failed("opening a channel", e))?;
        for (queue, arguments) in self.declarations() {
            Declaration {
                queue: queue.as_str(),
                arguments,
                declare: true,
                exchange: None,
                binding_key: "",
            }
            .apply(&publish, &self.url)
            .await?;
        }
        Ok(Link {
            connection: Arc::new(connection),
            publish,
            consume,
            generation,
        })
    }

    /// The three queues and their arguments (see the module docs).
    fn declarations(&self) -> [(ShortString, FieldTable); 3] {
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        let quorum = || {
            let mut t = FieldTable::default();
            t.insert("x-queue-type".into(), text("quorum"));
            t
        };
        let poison = quorum();
        let mut backlog = quorum();
        backlog.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(self.config.delivery_limit.into()),
        );
        backlog.insert("x-dead-letter-exchange".into(), text(""));
        backlog.insert(
            "x-dead-letter-routing-key".into(),
            text(self.names.poison.as_str()),
        );
        if let Some(max) = self.config.max_records {
            backlog.insert(
                "x-max-length".into(),
                AMQPValue::LongLongInt(i64::try_from(max).unwrap_or(i64::MAX)),
            );
            backlog.insert("x-overflow".into(), text("reject-publish"));
        }
        let mut wait = quorum();
        wait.insert("x-dead-letter-exchange".into(), text(""));
        wait.insert(
            "x-dead-letter-routing-key".into(),
            text(self.names.backlog.as_str()),
        );
        wait.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        wait.insert("x-overflow".into(), text("reject-publish"));
        [
            (self.names.poison.clone(), poison),
            (self.names.backlog.clone(), backlog),
            (self.names.wait.clone(), wait),
        ]
    }
}
