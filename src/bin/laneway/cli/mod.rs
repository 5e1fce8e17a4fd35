//! The `laneway` command line: argument parsing and one module per command.
//! Commands return an exit code; they print errors themselves, naming the
//! file, line or knob at fault.

mod backlog;
mod bench;
mod check_config;
mod kafka_mock;
pub mod logging;
mod run;
mod simulate;
mod simulate_kafka;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// laneway: a backlog-aware dispatcher for IoT server-side subscriptions.
///
/// Messages flow from a source (simulator, JSONL, AMQP, Kafka) to consumer groups.
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
    /// Run a load scenario (steady, outage, flood) against a FIFO baseline.
    Bench(bench::BenchArgs),
    /// Look at a backlog: `inspect` summarises a disk directory or a broker queue, `verify` checks every checksum on disk.
    Backlog(backlog::BacklogArgs),
    /// Publish the simulated fleet to an AMQP exchange or a Kafka topic, with confirms, printing the rate.
    Simulate(simulate::SimulateArgs),
    /// Start an in-memory Kafka-protocol broker (for trying laneway without Kafka) and print its address.
    KafkaMock(kafka_mock::KafkaMockArgs),
}

impl Cli {
    /// Runs the chosen command.
    pub async fn execute(self) -> ExitCode {
        match self.command {
            Command::Run(args) => run::run(args).await,
            Command::CheckConfig(args) => check_config::check_config(args),
            Command::Bench(args) => bench::bench(args).await,
            Command::Backlog(args) => backlog::backlog(args).await,
            Command::Simulate(args) => simulate::simulate(args).await,
            Command::KafkaMock(args) => kafka_mock::kafka_mock(args).await,
        }
    }
}
