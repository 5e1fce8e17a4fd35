//! The RabbitMQ the broker tests share: one variable names it, `AMQP_URL`
//! (default the local broker, `amqp://guest:guest@127.0.0.1:5672/%2f`); its
//! host and port, its login and the AMQP 1.0 URL are derived from it. Also
//! the broker lock, `rabbitmqctl`, and small publishing and inspection
//! helpers.
//!
//! Every test uses its own queue and exchange names (see
//! [`super::names::unique`]), so tests sharing one broker never see each other's
//! messages. The broker-restart test takes [`broker_lock`] exclusively;
//! every other RabbitMQ test takes it shared, so a restart never happens
//! under them.

use std::fs::File;
use std::process::{Command, Stdio};

use super::records::Record;
// Part of the tree: a binary may use none of it (see `support/mod.rs`).
#[allow(unused_imports)]
#[cfg(feature = "amqp")]
pub use client::*;

/// The broker the tests use: `AMQP_URL`, or the local default.
pub fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// What lies between the scheme and the vhost of [`url`]: the login (when
/// given) and the host and port.
fn authority() -> String {
    let url = url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// The broker's `host:port` (from [`url`]; port 5672 when it names none).
pub fn host_port() -> String {
    let authority = authority();
    let host = authority
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, h)| h);
    if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_string()
    } else {
        format!("{host}:5672")
    }
}

/// The login of [`url`] (user and password, as written there), guest and
/// guest when it names none.
pub fn login() -> (String, String) {
    let authority = authority();
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => match userinfo.split_once(':') {
            Some((user, password)) => (user.to_string(), password.to_string()),
            None => (userinfo.to_string(), String::new()),
        },
        None => ("guest".into(), "guest".into()),
    }
}

/// The same broker for AMQP 1.0 (no vhost in the URL): the login and
/// [`host_port`] of [`url`].
pub fn url1() -> String {
    let (user, password) = login();
    format!("amqp://{user}:{password}@{}", host_port())
}

/// Holds the broker lock while alive.
pub struct BrokerLock(File);

/// Takes the broker lock: shared for ordinary tests, exclusive for the
/// test that restarts the broker.
pub fn broker_lock(exclusive: bool) -> BrokerLock {
    let path = std::env::temp_dir().join("laneway-rabbitmq-tests.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("open the broker lock file");
    if exclusive {
        file.lock().expect("lock the broker exclusively");
    } else {
        file.lock_shared().expect("lock the broker shared");
    }
    BrokerLock(file)
}

/// Runs `rabbitmqctl` quietly; whether it succeeded.
pub fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Publishes `sent` to the queue over AMQP 1.0, as the platform does:
/// durable, the three application properties, the payload as one data
/// section; every transfer settled as accepted by the broker.
pub async fn publish1(queue: &str, sent: &[Record]) {
    use fe2o3_amqp::types::messaging::{Header, Outcome};
    let (username, password) = login();
    let mut connection = fe2o3_amqp::Connection::builder()
        .container_id(super::names::unique("amqp1-publisher"))
        .sasl_profile(fe2o3_amqp::sasl_profile::SaslProfile::Plain { username, password })
        .open(format!("amqp://{}", host_port()).as_str())
        .await
        .expect("AMQP 1.0 on RabbitMQ (rabbitmq_amqp1_0 enabled)");
    let mut session = fe2o3_amqp::Session::begin(&mut connection).await.unwrap();
    let mut sender =
        fe2o3_amqp::Sender::attach(&mut session, "publisher", format!("/amq/queue/{queue}"))
            .await
            .unwrap();
    for chunk in sent.chunks(500) {
        let mut pending = Vec::with_capacity(chunk.len());
        for r in chunk {
            let mut message = r.amqp1_message();
            message.header = Some(Header::builder().durable(true).build());
            pending.push(sender.send_batchable(message).await.unwrap());
        }
        for fut in pending {
            let outcome = fut.await.unwrap();
            assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
        }
    }
    // Every transfer is accepted: what is left is the close, which may
    // wait on a spinning session task (docs/amqp1.md, "Known"), so each
    // step waits at most `CLOSE_WAIT`, as laneway's own closes do, and the
    // handles are dropped after.
    let _ = tokio::time::timeout(CLOSE_WAIT, sender.detach()).await;
    let _ = tokio::time::timeout(CLOSE_WAIT, session.end()).await;
    let _ = tokio::time::timeout(CLOSE_WAIT, connection.close()).await;
}

/// How long each step of [`publish1`]'s close may wait.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What speaks AMQP 0-9-1 (lapin, with the `amqp` feature).
#[cfg(feature = "amqp")]
mod client {
    use std::time::Duration;

    use futures_util::StreamExt;
    use lapin::options::BasicConsumeOptions;
    use lapin::options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

    use super::super::records::Record;
    use super::url;

    /// A connection for the test itself (publishing, inspecting).
    ///
    /// One attempt: the broker is up before any test runs (`scripts/test` waits
    /// for it, and the broker-restart test reconnects only after `rabbitmqctl
    /// await_startup`), so a refused connection is a broken setup, reported at
    /// once rather than retried.
    pub async fn connection() -> Connection {
        match Connection::connect(&url(), ConnectionProperties::default()).await {
            Ok(c) => c,
            Err(e) => panic!(
                "RabbitMQ is not answering at {} (start it first, e.g. with scripts/test): {e}",
                laneway::amqp::url::redact(&url())
            ),
        }
    }

    /// A channel in confirm mode.
    pub async fn confirm_channel(conn: &Connection) -> Channel {
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        ch
    }

    /// Declares a durable queue with `args`.
    pub async fn declare_queue(ch: &Channel, name: &str, args: FieldTable) {
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .expect("queue_declare");
    }

    /// Declares a durable topic exchange.
    pub async fn declare_exchange(ch: &Channel, name: &str) {
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange_declare");
    }

    /// Binds `queue` to `exchange` for every routing key.
    pub async fn bind_all(ch: &Channel, queue: &str, exchange: &str) {
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue_bind");
    }

    /// Messages ready in a queue (not counting unacknowledged ones).
    pub async fn ready(ch: &Channel, name: &str) -> u32 {
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive queue_declare")
        .message_count()
    }

    /// Publishes one raw message to the default exchange (straight to `queue`)
    /// and waits for its confirm.
    pub async fn publish_raw(ch: &Channel, queue: &str, body: &[u8], props: BasicProperties) {
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker refused a test message");
    }

    /// Deletes what a test declared (best effort).
    pub async fn cleanup(ch: &Channel, queues: &[&str], exchanges: &[&str]) {
        for q in queues {
            let _ = ch
                .queue_delete((*q).into(), QueueDeleteOptions::default())
                .await;
        }
        for x in exchanges {
            let _ = ch
                .exchange_delete((*x).into(), ExchangeDeleteOptions::default())
                .await;
        }
    }

    /// Runs `laneway simulate` to publish `count` messages to `exchange`, with
    /// a queue of the same name bound to it. Extra arguments are appended.
    pub fn simulate(exchange: &str, count: u64, extra: &[&str]) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_laneway"))
            .args(["simulate", "--amqp", &url(), "--exchange", exchange, "-q"])
            .args(["--count", &count.to_string()])
            .args(extra)
            .output()
            .expect("run laneway simulate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "simulate failed: {stderr}");
        assert!(
            stderr.contains(&format!("confirmed {count},")),
            "simulate did not confirm every message: {stderr}"
        );
        assert!(
            !stderr.contains("guest:guest"),
            "simulate printed the password: {stderr}"
        );
    }

    /// An AMQP source config for `queue` on the test broker.
    pub fn source_config(queue: &str) -> laneway::amqp::AmqpSourceConfig {
        laneway::amqp::AmqpSourceConfig {
            url: Some(url()),
            queues: vec![queue.to_string()],
            ..laneway::amqp::AmqpSourceConfig::default()
        }
    }

    /// The record an AMQP message carries, read straight from the wire form
    /// the platform uses (the `topic`, `messageId` and `generateTime` headers
    /// and the body), independently of laneway's own reading.
    pub fn record_of(properties: &BasicProperties, body: &[u8]) -> Record {
        let headers = properties.headers().as_ref().expect("platform headers");
        let text = |key: &str| match headers.inner().get(key) {
            Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).unwrap(),
            other => panic!("header {key} is {other:?}"),
        };
        let time = match headers.inner().get("generateTime") {
            Some(AMQPValue::LongLongInt(t)) => *t,
            other => panic!("header generateTime is {other:?}"),
        };
        Record::new(text("topic"), text("messageId"), time, body.to_vec())
    }

    /// Declares `exchange` (as `laneway simulate` does) and a mirror queue
    /// bound to it for every routing key, before anything is published: the
    /// mirror receives a copy of everything sent, to compare deliveries with.
    pub async fn mirror(ch: &Channel, exchange: &str) -> String {
        declare_exchange(ch, exchange).await;
        let name = format!("{exchange}.mirror");
        declare_queue(ch, &name, FieldTable::default()).await;
        bind_all(ch, &name, exchange).await;
        name
    }

    /// Consumes `count` messages from `queue` (acknowledging them) and returns
    /// their records, in arrival order.
    pub async fn read_records(conn: &Connection, queue: &str, count: usize) -> Vec<Record> {
        let ch = conn.create_channel().await.expect("channel");
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "mirror-reader".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("basic_consume");
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let next = tokio::time::timeout(Duration::from_secs(60), consumer.next()).await;
            match next {
                Ok(Some(Ok(d))) => out.push(record_of(&d.properties, &d.data)),
                other => panic!(
                    "reading {queue}: {} of {count} messages, then {other:?}",
                    out.len()
                ),
            }
        }
        let _ = ch.close(200, "done".into()).await;
        out
    }
}
