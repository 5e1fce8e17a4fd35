//! The `laneway` command line: argument parsing and one module per command.
//! Commands return an exit code; they print errors themselves, naming the
//! file, line or knob at fault.

mod backlog;
mod bench;
#[cfg(any(
    feature = "amqp",
    feature = "amqp1",
    feature = "kafka",
    feature = "pulsar"
))]
mod binary_payloads;
mod burst_split;
mod check_config;
mod kafka_mock;
pub mod logging;
#[cfg(any(
    feature = "amqp",
    feature = "amqp1",
    feature = "kafka",
    feature = "pulsar"
))]
mod publish_loop;
mod run;
mod simulate;
#[cfg(feature = "amqp")]
mod simulate_amqp;
#[cfg(feature = "amqp1")]
mod simulate_amqp1;
#[cfg(feature = "kafka")]
mod simulate_kafka;
#[cfg(feature = "pulsar")]
mod simulate_pulsar;
mod status;
mod tune;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use laneway::config::MissingFeature;

/// The adapters a build may have, as cargo features.
const FEATURES: [&str; 6] = ["amqp", "amqp1", "kafka", "pulsar", "http", "admin"];

/// Whether this laneway was built with the cargo feature `feature`.
pub fn built_with(feature: &'static str) -> bool {
    MissingFeature { what: "", feature }.is_built()
}

/// The error for a command-line option or command that needs a feature this
/// build lacks, such as ``--kafka: this laneway was built without the
/// `kafka` feature (cargo build --release --features kafka)``.
pub fn not_built(what: &'static str, feature: &'static str) -> String {
    MissingFeature { what, feature }.to_string()
}

/// The line `--help` ends with: which adapters this build has. Options
/// and commands that need a missing one are hidden from `--help`, and
/// refused, naming the feature, when used.
fn features_line() -> String {
    let (with, without): (Vec<&str>, Vec<&str>) = FEATURES.iter().partition(|f| built_with(f));
    let mut line = format!("Built with the features: {}", or_none(&with));
    if !without.is_empty() {
        line.push_str(&format!(
            "; without: {} (see README.md, Cargo features).",
            or_none(&without)
        ));
    }
    line
}

fn or_none(features: &[&str]) -> String {
    if features.is_empty() {
        "none".into()
    } else {
        features.join(", ")
    }
}

/// laneway: a backlog-aware dispatcher for IoT server-side subscriptions.
///
/// Messages flow from sources (the simulator, a JSONL file or stdin, an AMQP
/// 0-9-1 queue, a RabbitMQ stream, Kafka, AMQP 1.0 such as Alibaba Cloud
/// IoT, Pulsar such as Tuya) to consumer groups, each delivering to its sink
/// (a handler, JSONL or stdout, null, an AMQP exchange, a Kafka topic).
/// Each group serves its live lane first and drains its durable backlog
/// beside it, so a consumer back from an outage is real-time again at once.
#[derive(Debug, Parser)]
#[command(name = "laneway", version, propagate_version = true)]
pub struct Cli {
    /// Log more (-v: info, -vv: debug). RUST_LOG overrides; the AMQP client
    /// library's own logs stay off at every level (they print credentials).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// How log lines are written to stderr: `text`, or `json` (one object
    /// per line; add -q to `run` to keep status lines out of the stream).
    #[arg(long, value_enum, default_value_t = logging::LogFormat::Text, global = true)]
    pub log_format: logging::LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the dispatcher: the embedded default (simulator → two groups), or a config file.
    Run(run::RunArgs),
    /// Check a config file and report the first error with its line and column.
    CheckConfig(check_config::CheckConfigArgs),
    /// Run a benchmark: a load scenario (steady, outage, flood) against a FIFO baseline, or catch-up on a lagging Kafka log.
    Bench(bench::BenchArgs),
    /// Look at a backlog: `inspect` summarises a disk directory or a broker queue, `verify` checks every checksum on disk.
    Backlog(backlog::BacklogArgs),
    /// Publish the simulated fleet, confirmed, to an AMQP exchange, an AMQP 1.0 node, a Kafka topic or a Pulsar topic (each as the build's features allow).
    Simulate(simulate::SimulateArgs),
    /// Start an in-memory Kafka-protocol broker (for trying laneway without Kafka) and print its address.
    #[command(hide = !built_with("kafka"))]
    KafkaMock(kafka_mock::KafkaMockArgs),
    /// Find lane knobs (slots, batch_size, backlog_share) that meet a goal: live p99 under drain, an outage's pile drained in time.
    ///
    /// Runs short trials of one consumer group in this process (each a few
    /// seconds: live traffic at the profile's rate, and a pile of stale
    /// messages in the group's backlog, so the backlog drains beside live
    /// traffic, the hard case), searches `slots`, `batch_size` and
    /// `backlog_share`, and prints every trial, then the knobs that meet
    /// the goal as lines for the group's table with the live p99,
    /// sustained throughput and drain time measured. When nothing meets
    /// the goal it says which part fails and how many instances of the
    /// handler it would take, and exits 1.
    ///
    /// Trials deliver to the group's own sink as the config describes it
    /// (an HTTP sink posts the trial messages to your service; a JSONL or
    /// stdout sink writes a scratch file instead), or to a simulated
    /// handler with --cost and --servers.
    Tune(tune::TuneArgs),
}

impl Cli {
    /// Parses the command line (exiting on an error or `--help`), with the
    /// build's features at the end of `--help`.
    pub fn parse_args() -> Cli {
        let matches = Cli::command().after_help(features_line()).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// Runs the chosen command.
    pub async fn execute(self) -> ExitCode {
        match self.command {
            Command::Run(args) => run::run(args, self.log_format).await,
            Command::CheckConfig(args) => check_config::check_config(args),
            Command::Bench(args) => bench::bench(args).await,
            Command::Backlog(args) => backlog::backlog(args).await,
            Command::Simulate(args) => simulate::simulate(args).await,
            Command::KafkaMock(args) => kafka_mock::kafka_mock(args).await,
            Command::Tune(args) => tune::tune(args).await,
        }
    }
}
