//! `laneway simulate --amqp1 URL --address A`: the device simulator as the
//! IoT platform's AMQP 1.0 server-side subscription, so the `amqp1` source
//! can be tried against any AMQP 1.0 node (RabbitMQ's AMQP 1.0 plugin, for
//! one) with laneway's own tools.
//!
//! Invariant: a message counts as sent only once the peer settled it as
//! accepted; the exit code is non-zero when any was not.

use fe2o3_amqp::link::SendError;
use fe2o3_amqp::types::messaging::Outcome;

use super::publish_loop::{self, Sent, Settled, Target, Words};
use super::simulate::SimulateArgs;
use laneway::amqp1::Amqp1Publisher;
use laneway::amqp1::config::{DEFAULT_URL, DEFAULT_URL_ENV};
use laneway::amqp1::publisher::Settlement;
use laneway::broker_url::BrokerUrl;
use laneway::message::Message;

/// Publishes; `Ok(false)` when some message was not accepted.
pub async fn publish(args: SimulateArgs) -> Result<bool, String> {
    // The peer the `amqp1` source reads by default, unless told otherwise.
    let url = BrokerUrl::resolve_or(args.amqp1.as_deref(), None, DEFAULT_URL_ENV, DEFAULT_URL)
        .map_err(|e| e.to_string())?;
    let address = args.address.clone().unwrap_or_default();
    let publisher = Amqp1Publisher::open(&url, &address)
        .await
        .map_err(|e| e.to_string())?;
    if !args.quiet {
        eprintln!(
            "simulate: sending over AMQP 1.0 to {url} address {address} ({} products x {} devices{})",
            args.products,
            args.devices,
            args.limit_words()
        );
    }
    publish_loop::publish(&args, Amqp1Target(publisher)).await
}

/// The publish loop's AMQP 1.0 side: one sender link.
struct Amqp1Target(Amqp1Publisher);

impl Target for Amqp1Target {
    type Receipt = Settlement;

    const WORDS: Words = Words {
        sent: "sent",
        ok: "accepted",
        failed: "not accepted",
        first_failure: "first message not accepted",
    };

    async fn send(&mut self, m: &Message) -> Result<Sent<Settlement>, String> {
        self.0
            .send(m)
            .await
            .map(Sent::Out)
            .map_err(|e| e.to_string())
    }

    /// Only `Accepted` means the peer stored it.
    fn settle(&mut self, outcome: Result<Outcome, SendError>) -> Result<Settled, String> {
        Ok(match outcome {
            Ok(Outcome::Accepted(_)) => Settled::Ok,
            Ok(other) => Settled::Failed(format!("{other:?}")),
            Err(e) => Settled::Failed(e.to_string()),
        })
    }

    async fn close(self) -> Result<(), String> {
        self.0.close().await;
        Ok(())
    }
}
