//! The `laneway` program; see `laneway --help`.

use std::process::ExitCode;

use clap::Parser;
use laneway::cli::Cli;
use tracing_subscriber::EnvFilter;

/// Messages are allocated by the thread that reads them and freed by the
/// one that delivers them; mimalloc handles that cross-thread pattern
/// without the long consolidation pauses glibc's allocator can take after a
/// large backlog is freed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // The AMQP transport traces its connection URI, password included, at
    // trace level: cap it, whatever RUST_LOG asks, so no password is logged.
    let filter = match "amq_protocol_tcp=debug".parse() {
        Ok(cap) => filter.add_directive(cap),
        Err(_) => filter,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli.execute())
}
