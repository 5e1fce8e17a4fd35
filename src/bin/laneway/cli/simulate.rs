//! `laneway simulate`: the device simulator as a publisher, so that every
//! source can be tried with laneway's own tools. It writes the platform's
//! fields the way each source reads them:
//!
//! - `--exchange X` (AMQP 0-9-1, `simulate_amqp.rs`): the `topic` /
//!   `messageId` / `generateTime` headers, with publisher confirms;
//! - `--amqp1 URL --address A` (`simulate_amqp1.rs`): application
//!   properties and a data section, as the platform's AMQP 1.0 subscription;
//! - `--kafka BROKERS --topic T` (`simulate_kafka.rs`): record headers;
//! - `--pulsar URL --topic T` (`simulate_pulsar.rs`): message properties.
//!
//! It is also the load generator of the AMQP and Kafka tests and benchmarks.
//! Each target needs its adapter's cargo feature (`amqp`, `amqp1`, `kafka`,
//! `pulsar`): without it, its options are hidden from `--help` and using
//! them is an error naming the feature.

// A build with none of those features has no target: the helpers the
// targets share go unused then.
#![cfg_attr(
    not(any(
        feature = "amqp",
        feature = "amqp1",
        feature = "kafka",
        feature = "pulsar"
    )),
    allow(dead_code)
)]
//!
//! Invariants: a message counts as sent only once the peer confirmed it;
//! the exit code is non-zero when any message was refused, returned
//! unroutable or left unconfirmed; a URL is only ever shown redacted;
//! `--record` holds every message published, as the JSONL sink would
//! write it, so a test can compare what arrives with what was sent.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::built_with;
#[cfg(feature = "amqp")]
use super::simulate_amqp::publish as publish_amqp;
#[cfg(feature = "amqp1")]
use super::simulate_amqp1::publish as publish_amqp1;
#[cfg(feature = "kafka")]
use super::simulate_kafka::produce as produce_kafka;
#[cfg(feature = "pulsar")]
use super::simulate_pulsar::produce as produce_pulsar;
use super::status::human;
use laneway::message::{Message, write_envelope};

/// Arguments of `simulate`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("limit").args(["count", "duration"])))]
#[command(group(clap::ArgGroup::new("target").args(["exchange", "kafka", "amqp1", "pulsar"]).required(true)))]
pub struct SimulateArgs {
    /// The broker URL (amqp:// or amqps://); default: $AMQP_URL, then
    /// amqp://guest:guest@127.0.0.1:5672/%2f. Shown redacted.
    #[arg(long, value_name = "URL", hide = !built_with("amqp"))]
    pub amqp: Option<String>,

    /// The exchange to publish to (declared as a durable topic exchange).
    #[arg(long, hide = !built_with("amqp"))]
    pub exchange: Option<String>,

    /// Produce to Kafka instead: the bootstrap servers (`host:port,...`).
    #[arg(long, value_name = "BROKERS", requires = "topic", conflicts_with_all = ["amqp", "queue", "no_queue", "routing_key", "transient"], hide = !built_with("kafka"))]
    pub kafka: Option<String>,

    /// With --kafka: create the topic with this many partitions when it
    /// does not exist (without it, a missing topic is an error on a broker
    /// that does not create topics itself).
    #[arg(long, value_name = "N", requires = "kafka", hide = !built_with("kafka"))]
    pub partitions: Option<i32>,

    /// Publish over AMQP 1.0 instead, as the IoT platform's server-side
    /// subscription does (application properties topic, messageId,
    /// generateTime; the payload as a data section), for the `amqp1`
    /// source: the peer's URL (amqp:// or amqps://, no virtual host).
    #[arg(long, value_name = "URL", requires = "address", conflicts_with_all = ["amqp", "queue", "no_queue", "routing_key", "transient"], hide = !built_with("amqp1"))]
    pub amqp1: Option<String>,

    /// With --amqp1: the node to send to. On RabbitMQ, `/queue/NAME`
    /// declares the queue NAME; `/amq/queue/NAME` needs it to exist.
    #[arg(long, requires = "amqp1", hide = !built_with("amqp1"))]
    pub address: Option<String>,

    /// Produce to a Pulsar topic instead, for the `pulsar` source: the
    /// service URL (pulsar:// or pulsar+ssl://); the platform's fields go
    /// in the message properties topic, messageId and generateTime.
    #[arg(long, value_name = "URL", requires = "topic", conflicts_with_all = ["amqp", "queue", "no_queue", "routing_key", "transient"], hide = !built_with("pulsar"))]
    pub pulsar: Option<String>,

    /// The topic to produce to, with --kafka (or --pulsar, in a build with
    /// the `pulsar` feature).
    #[arg(long, hide = !(built_with("kafka") || built_with("pulsar")))]
    pub topic: Option<String>,

    /// Also write every message published to this file, one JSONL envelope
    /// a line (as the JSONL sink writes it): what to compare deliveries
    /// with.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// A durable queue to declare and bind to the exchange with `#`, so
    /// nothing published is lost before a consumer starts; default: a queue
    /// named like the exchange.
    #[arg(long, conflicts_with = "no_queue", hide = !built_with("amqp"))]
    pub queue: Option<String>,

    /// Declare and bind no queue (something else consumes the exchange).
    #[arg(long, hide = !built_with("amqp"))]
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
    #[arg(long, default_value = "{kind}.{product}.{device}", hide = !built_with("amqp"))]
    pub routing_key: String,

    /// Seed for the fleet and the message mix.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,

    /// Every Nth message carries a payload of random bytes (not JSON, not
    /// UTF-8, with a NUL) instead of the fleet's JSON, to check that a path
    /// keeps any bytes. A group delivers such payloads only with
    /// `validate_json = false`; otherwise they become dead letters.
    /// `--record` writes them as `payloadBase64`.
    #[arg(long, value_name = "N")]
    pub binary_every: Option<u64>,

    /// Publish transient messages (default: persistent).
    #[arg(long, hide = !built_with("amqp"))]
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
        // One line, newline included, as the JSONL sink writes it.
        write_envelope(&mut self.line, m);
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

// A target this build lacks: an error naming its feature.
#[cfg(not(feature = "amqp"))]
async fn publish_amqp(_: SimulateArgs) -> Result<bool, String> {
    Err(super::not_built("--exchange", "amqp"))
}
#[cfg(not(feature = "amqp1"))]
async fn publish_amqp1(_: SimulateArgs) -> Result<bool, String> {
    Err(super::not_built("--amqp1", "amqp1"))
}
#[cfg(not(feature = "kafka"))]
async fn produce_kafka(_: SimulateArgs) -> Result<bool, String> {
    Err(super::not_built("--kafka", "kafka"))
}
#[cfg(not(feature = "pulsar"))]
async fn produce_pulsar(_: SimulateArgs) -> Result<bool, String> {
    Err(super::not_built("--pulsar", "pulsar"))
}

/// Runs `simulate`: to the target its options name.
pub async fn simulate(args: SimulateArgs) -> ExitCode {
    let published = if args.kafka.is_some() {
        produce_kafka(args).await
    } else if args.amqp1.is_some() {
        publish_amqp1(args).await
    } else if args.pulsar.is_some() {
        produce_pulsar(args).await
    } else if args.topic.is_some() {
        Err("--topic goes with --kafka or --pulsar".into())
    } else {
        publish_amqp(args).await
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
