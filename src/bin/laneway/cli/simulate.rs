//! `laneway simulate`: the device simulator as a publisher, so that every
//! source can be tried with laneway's own tools. It writes the platform's
//! fields the way each source reads them:
//!
//! - `--exchange X` (AMQP 0-9-1, here): the `topic` / `messageId` /
//!   `generateTime` headers, with publisher confirms;
//! - `--amqp1 URL --address A` (`simulate_amqp1.rs`): application
//!   properties and a data section, as the platform's AMQP 1.0 subscription;
//! - `--kafka BROKERS --topic T` (`simulate_kafka.rs`): record headers;
//! - `--pulsar URL --topic T` (`simulate_pulsar.rs`): message properties.
//!
//! It is also the load generator of the AMQP and Kafka tests and benchmarks.
//!
//! Invariants: a message counts as sent only once the peer confirmed it;
//! the exit code is non-zero when any message was refused, returned
//! unroutable or left unconfirmed; a URL is only ever shown redacted;
//! `--record` holds every message published, as the JSONL sink would
//! write it, so a test can compare what arrives with what was sent.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Confirmation, ExchangeKind, PublisherConfirm};

use super::status::human;
use laneway::amqp::{AmqpError, BrokerUrl, RoutingKey, connect::connect, headers};
use laneway::message::{Message, now_epoch_ms, write_envelope};
use laneway::source::simulator::Fleet;

/// Arguments of `simulate`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("limit").args(["count", "duration"])))]
#[command(group(clap::ArgGroup::new("target").args(["exchange", "kafka", "amqp1", "pulsar"]).required(true)))]
pub struct SimulateArgs {
    /// The broker URL (amqp:// or amqps://); default: $AMQP_URL, then
    /// amqp://guest:guest@127.0.0.1:5672/%2f. Shown redacted.
    #[arg(long, value_name = "URL")]
    pub amqp: Option<String>,

    /// The exchange to publish to (declared as a durable topic exchange).
    #[arg(long)]
    pub exchange: Option<String>,

    /// Produce to Kafka instead: the bootstrap servers (`host:port,...`).
    #[arg(long, value_name = "BROKERS", requires = "topic", conflicts_with_all = ["amqp", "queue", "no_queue", "routing_key", "transient"])]
    pub kafka: Option<String>,

    /// With --kafka: create the topic with this many partitions when it
    /// does not exist (without it, a missing topic is an error on a broker
    /// that does not create topics itself).
    #[arg(long, value_name = "N", requires = "kafka")]
    pub partitions: Option<i32>,

    /// Publish over AMQP 1.0 instead, as the IoT platform's server-side
    /// subscription does (application properties topic, messageId,
    /// generateTime; the payload as a data section), for the `amqp1`
    /// source: the peer's URL (amqp:// or amqps://, no virtual host).
    #[arg(long, value_name = "URL", requires = "address", conflicts_with_all = ["amqp", "queue", "no_queue", "routing_key", "transient"])]
    pub amqp1: Option<String>,

    /// With --amqp1: the node to send to. On RabbitMQ, `/queue/NAME`
    /// declares the queue NAME; `/amq/queue/NAME` needs it to exist.
    #[arg(long, requires = "amqp1")]
    pub address: Option<String>,

    /// Produce to a Pulsar topic instead, for the `pulsar` source: the
    /// service URL (pulsar:// or pulsar+ssl://); the platform's fields go
    /// in the message properties topic, messageId and generateTime.
    #[arg(long, value_name = "URL", requires = "topic", conflicts_with_all = ["amqp", "queue", "no_queue", "routing_key", "transient"])]
    pub pulsar: Option<String>,

    /// The Kafka or Pulsar topic to produce to (with --kafka or --pulsar).
    #[arg(long)]
    pub topic: Option<String>,

    /// Also write every message published to this file, one JSONL envelope
    /// a line (as the JSONL sink writes it): what to compare deliveries
    /// with.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// A durable queue to declare and bind to the exchange with `#`, so
    /// nothing published is lost before a consumer starts; default: a queue
    /// named like the exchange.
    #[arg(long, conflicts_with = "no_queue")]
    pub queue: Option<String>,

    /// Declare and bind no queue (something else consumes the exchange).
    #[arg(long)]
    pub no_queue: bool,

    /// Messages per second (0: as fast as confirms allow).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,

    /// Devices per product.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,

    /// Products in the fleet.
    #[arg(long, default_value_t = 3)]
    pub products: usize,

    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,

    /// Stop after this long (for example 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Stamp messages this far in the past (a stale pile), for example 1h.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub age: Duration,

    /// Unconfirmed messages allowed in flight.
    #[arg(long, default_value_t = 4096)]
    pub in_flight: usize,

    /// The routing-key template ({kind}, {product}, {device}).
    #[arg(long, default_value = "{kind}.{product}.{device}")]
    pub routing_key: String,

    /// Seed for the fleet and the message mix.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,

    /// Publish transient messages (default: persistent).
    #[arg(long)]
    pub transient: bool,

    /// No progress lines.
    #[arg(short, long)]
    pub quiet: bool,
}

impl SimulateArgs {
    /// The run's limit in words, for the first progress line.
    pub fn limit_words(&self) -> String {
        match (self.count, self.duration) {
            (Some(n), _) => format!(", {n} messages"),
            (_, Some(d)) => format!(", for {d:?}"),
            _ => ", until Ctrl-C".into(),
        }
    }

    /// How long to wait before the next message to keep to `--rate`, when
    /// `sent` have gone since `start`; `None` when it is due now.
    pub fn wait_before_next(&self, start: Instant, sent: u64) -> Option<Duration> {
        if self.rate <= 0.0 || sent < (start.elapsed().as_secs_f64() * self.rate) as u64 {
            return None;
        }
        let next = Duration::from_secs_f64((sent + 1) as f64 / self.rate);
        Some(
            next.saturating_sub(start.elapsed())
                .max(Duration::from_millis(1)),
        )
    }
}

#[derive(Default)]
struct Counts {
    published: u64,
    confirmed: u64,
    nacked: u64,
    unroutable: u64,
}

/// Every message published, as JSONL envelopes, when `--record` asks.
pub struct Recorder {
    out: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    line: Vec<u8>,
}

impl Recorder {
    /// Creates (truncates) the file, when there is one.
    pub fn open(path: Option<&Path>) -> Result<Recorder, String> {
        let out = match path {
            Some(p) => {
                let file = std::fs::File::create(p)
                    .map_err(|e| format!("--record {}: {e}", p.display()))?;
                Some((p.to_path_buf(), std::io::BufWriter::new(file)))
            }
            None => None,
        };
        Ok(Recorder {
            out,
            line: Vec::with_capacity(1024),
        })
    }

    /// Writes one message published.
    pub fn record(&mut self, m: &Message) -> Result<(), String> {
        let Some((path, out)) = &mut self.out else {
            return Ok(());
        };
        self.line.clear();
        write_envelope(&mut self.line, m);
        self.line.push(b'\n');
        out.write_all(&self.line)
            .map_err(|e| format!("--record {}: {e}", path.display()))
    }

    /// Flushes the file to disk.
    pub fn finish(self) -> Result<(), String> {
        let Some((path, out)) = self.out else {
            return Ok(());
        };
        let file = out
            .into_inner()
            .map_err(|e| format!("--record {}: {}", path.display(), e.error()))?;
        file.sync_all()
            .map_err(|e| format!("--record {}: {e}", path.display()))
    }
}

pub async fn simulate(args: SimulateArgs) -> ExitCode {
    let published = if args.kafka.is_some() {
        super::simulate_kafka::produce(args).await
    } else if args.amqp1.is_some() {
        super::simulate_amqp1::publish(args).await
    } else if args.pulsar.is_some() {
        super::simulate_pulsar::produce(args).await
    } else if args.topic.is_some() {
        Err("--topic goes with --kafka or --pulsar".into())
    } else {
        publish(args).await
    };
    match published {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Publishes; `Ok(false)` when some message was not confirmed.
async fn publish(args: SimulateArgs) -> Result<bool, String> {
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
    let mut recorder = Recorder::open(args.record.as_deref())?;
    let mut fleet = Fleet::new(args.products, args.devices, args.seed);
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let age_ms = args.age.as_millis() as i64;
    let window = args.in_flight.max(1);
    let mut in_flight: VecDeque<PublisherConfirm> = VecDeque::with_capacity(window);
    let mut counts = Counts::default();
    let start = Instant::now();
    let mut progress = ProgressLine::new(start, args.quiet);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut failure = None;
    loop {
        if args.count.is_some_and(|n| counts.published >= n)
            || args.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        if let Some(wait) = args.wait_before_next(start, counts.published) {
            tokio::select! {
                _ = &mut ctrl_c => break,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        if in_flight.len() >= window
            && let Some(confirm) = in_flight.pop_front()
            && let Err(e) = settle(confirm, &mut counts).await
        {
            failure = Some(AmqpError::new(&url, "waiting for a confirm", e).to_string());
            break;
        }
        let m = fleet.next_message(now_epoch_ms() - age_ms);
        let Ok(routing_key) = ShortString::try_new(key.render(&m)) else {
            return Err("a routing key is longer than 255 bytes".into());
        };
        let props = headers::properties(
            m.topic(),
            m.message_id(),
            m.generate_time_ms(),
            !args.transient,
        );
        match channel
            .basic_publish(exchange.clone(), routing_key, options, m.payload(), props)
            .await
        {
            Ok(confirm) => in_flight.push_back(confirm),
            Err(e) => {
                failure = Some(AmqpError::new(&url, "publishing", e).to_string());
                break;
            }
        }
        counts.published += 1;
        if let Err(e) = recorder.record(&m) {
            failure = Some(e);
            break;
        }
        progress.tick(counts.confirmed, || {
            format!(
                "published {} confirmed {}",
                counts.published, counts.confirmed
            )
        });
    }
    while let Some(confirm) = in_flight.pop_front() {
        if let Err(e) = settle(confirm, &mut counts).await {
            failure.get_or_insert(AmqpError::new(&url, "waiting for a confirm", e).to_string());
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = channel.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    if let Err(e) = recorder.finish() {
        failure.get_or_insert(e);
    }
    let ok = failure.is_none()
        && counts.nacked == 0
        && counts.unroutable == 0
        && counts.confirmed == counts.published;
    eprintln!(
        "simulate: published {}, confirmed {}, nacked {}, unroutable {} in {elapsed:.1}s ({}/s)",
        counts.published,
        counts.confirmed,
        counts.nacked,
        counts.unroutable,
        human(counts.confirmed as f64 / elapsed.max(1e-9))
    );
    if counts.unroutable > 0 {
        eprintln!(
            "simulate: {} messages were unroutable: bind a queue to exchange {exchange_name}",
            counts.unroutable
        );
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(ok)
}

async fn settle(confirm: PublisherConfirm, counts: &mut Counts) -> Result<(), lapin::Error> {
    match confirm.await? {
        Confirmation::Ack(None) | Confirmation::NotRequested => counts.confirmed += 1,
        Confirmation::Ack(Some(_)) => counts.unroutable += 1,
        Confirmation::Nack(_) => counts.nacked += 1,
    }
    Ok(())
}

/// Prints a simulate run's progress line at most once a second (unless
/// quiet): the time since the start, what was sent, and the rate of
/// `count` since the previous line. One place for every protocol's loop.
pub struct ProgressLine {
    start: Instant,
    last: (Instant, u64),
    quiet: bool,
}

impl ProgressLine {
    /// Starts counting from `start`, with nothing sent yet.
    pub fn new(start: Instant, quiet: bool) -> ProgressLine {
        ProgressLine {
            start,
            last: (start, 0),
            quiet,
        }
    }

    /// Prints `[elapsed] {what} | rate/s` when a second has passed since
    /// the previous line; `count` is the figure the rate follows.
    pub fn tick(&mut self, count: u64, what: impl FnOnce() -> String) {
        if self.quiet || self.last.0.elapsed() < Duration::from_secs(1) {
            return;
        }
        let now = Instant::now();
        let rate = count.saturating_sub(self.last.1) as f64
            / now.duration_since(self.last.0).as_secs_f64();
        eprintln!(
            "[{:6.1}s] {} | {}/s",
            self.start.elapsed().as_secs_f64(),
            what(),
            human(rate)
        );
        self.last = (now, count);
    }
}
