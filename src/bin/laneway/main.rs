//! The `laneway` program; see `laneway --help`. The command line (`cli/`),
//! the load scenarios behind `laneway bench` (`bench/`) and the trials and
//! search behind `laneway tune` (`tune/`) live here, on top of the library:
//! they are not part of its API.

mod allocator;
mod bench;
mod cli;
mod tune;

use std::process::ExitCode;

use cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    cli::logging::init(cli.verbose, cli.log_format);
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
    let code = runtime.block_on(cli.execute());
    // Everything is settled and said; a read still blocked on standard
    // input (a run that ended by `--duration` with its input open) must not
    // keep the process alive.
    runtime.shutdown_background();
    code
}
