//! `laneway simulate --exchange X`: the device simulator as an AMQP 0-9-1
//! publisher, with the `topic` / `messageId` / `generateTime` headers and
//! publisher confirms; it declares the exchange (a durable topic exchange)
//! and, unless `--no-queue`, a durable queue bound to it with `#`.
//!
//! Invariant: a message counts as sent only once the broker confirmed it;
//! the exit code is non-zero when any was refused, returned unroutable or
//! left unconfirmed.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection, ExchangeKind, PublisherConfirm};

use super::publish_loop::{self, Sent, Settled, Tally, Target};
use super::simulate::{ProgressLine, SimulateArgs};
use super::status::human;
use laneway::amqp::{AmqpError, BrokerUrl, RoutingKey, connect::connect, headers};
use laneway::message::Message;

/// Publishes; `Ok(false)` when some message was not confirmed.
pub async fn publish(args: SimulateArgs) -> Result<bool, String> {
    let url = BrokerUrl::resolve(args.amqp.as_deref(), None).map_err(|e| e.to_string())?;
    let key = RoutingKey::parse(&args.routing_key).map_err(|e| e.to_string())?;
    let exchange_name = args.exchange.clone().unwrap_or_default();
    let exchange = ShortString::try_new(exchange_name.clone())
        .map_err(|_| "--exchange is longer than 255 bytes".to_string())?;
    let conn = connect(&url, "laneway simulate")
        .await
        .map_err(|e| e.to_string())?;
    let err = |what: &str| {
        let url = url.clone();
        let what = what.to_string();
        move |e: lapin::Error| AmqpError::new(&url, &what, e).to_string()
    };
    let channel = conn
        .create_channel()
        .await
        .map_err(err("opening a channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(err("enabling confirms"))?;
    channel
        .exchange_declare(
            exchange.clone(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(err("declaring the exchange"))?;
    if !args.no_queue {
        let queue = args.queue.clone().unwrap_or_else(|| exchange_name.clone());
        let queue = ShortString::try_new(queue)
            .map_err(|_| "--queue is longer than 255 bytes".to_string())?;
        channel
            .queue_declare(
                queue.clone(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(err("declaring the queue"))?;
        channel
            .queue_bind(
                queue,
                exchange.clone(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err("binding the queue"))?;
    }
    if !args.quiet {
        eprintln!(
            "simulate: publishing to {url} exchange {exchange_name} ({} products x {} devices{})",
            args.products,
            args.devices,
            args.limit_words()
        );
    }
    let target = AmqpTarget {
        channel,
        conn,
        exchange,
        exchange_name,
        key,
        url,
        persistent: !args.transient,
        unroutable: 0,
    };
    publish_loop::publish(&args, target).await
}

/// The publish loop's AMQP 0-9-1 side: one channel with publisher
/// confirms, publishing mandatory to one exchange.
struct AmqpTarget {
    channel: Channel,
    conn: Connection,
    exchange: ShortString,
    exchange_name: String,
    key: RoutingKey,
    url: BrokerUrl,
    persistent: bool,
    /// Messages confirmed but returned unroutable (counted failed too).
    unroutable: u64,
}

impl Target for AmqpTarget {
    type Receipt = PublisherConfirm;

    async fn send(&mut self, m: &Message) -> Result<Sent<PublisherConfirm>, String> {
        let Ok(routing_key) = ShortString::try_new(self.key.render(m)) else {
            return Err("a routing key is longer than 255 bytes".into());
        };
        let props = headers::properties(
            m.topic(),
            m.message_id(),
            m.generate_time_ms(),
            self.persistent,
        );
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        self.channel
            .basic_publish(
                self.exchange.clone(),
                routing_key,
                options,
                m.payload(),
                props,
            )
            .await
            .map(Sent::Out)
            .map_err(|e| AmqpError::new(&self.url, "publishing", e).to_string())
    }

    /// A confirm with the message returned means no queue took it.
    fn settle(&mut self, outcome: Result<Confirmation, lapin::Error>) -> Result<Settled, String> {
        match outcome {
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(Settled::Ok),
            Ok(Confirmation::Ack(Some(_))) => {
                self.unroutable += 1;
                Ok(Settled::Failed("unroutable".into()))
            }
            Ok(Confirmation::Nack(_)) => Ok(Settled::Failed("nacked".into())),
            Err(e) => Err(AmqpError::new(&self.url, "waiting for a confirm", e).to_string()),
        }
    }

    /// The rate follows the confirms, the slower of the two.
    fn tick(&self, progress: &mut ProgressLine, tally: &Tally) {
        progress.tick(tally.ok, || {
            format!("published {} confirmed {}", tally.sent, tally.ok)
        });
    }

    /// Nacked and unroutable apart, with a hint for the unroutable.
    fn summary(&self, tally: &Tally, elapsed: f64) {
        eprintln!(
            "simulate: published {}, confirmed {}, nacked {}, unroutable {} in {elapsed:.1}s ({}/s)",
            tally.sent,
            tally.ok,
            tally.failed - self.unroutable,
            self.unroutable,
            human(tally.ok as f64 / elapsed.max(1e-9))
        );
        if self.unroutable > 0 {
            eprintln!(
                "simulate: {} messages were unroutable: bind a queue to exchange {}",
                self.unroutable, self.exchange_name
            );
        }
    }

    /// Every confirm is in by now: a failed close loses nothing.
    async fn close(self) -> Result<(), String> {
        let _ = self.channel.close(200, "done".into()).await;
        let _ = self.conn.close(200, "done".into()).await;
        Ok(())
    }
}
