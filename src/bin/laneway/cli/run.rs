//! `laneway run`: the dispatcher, with status lines and a final summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::status::{StatusLine, summary_text};
use laneway::config::FileConfig;

/// Arguments of `run`.
///
/// Exit status: 0 when the run ends normally (Ctrl-C, `--duration`, finite
/// sources exhausted); 1 when the config cannot be used or a source fails
/// for good (a missing input file or queue, refused credentials, a missing
/// virtual host, an unknown broker host), with one `error:` line on stderr
/// naming the source; 130 on a second Ctrl-C.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A config file (see laneway.example.toml); without it, the embedded
    /// default runs: the simulator feeding the groups `all` and `alarms`.
    #[arg(short, long)]
    pub config: Option<PathBuf>,

    /// Stop after this long (for example 10s, 2m); default: until Ctrl-C, or
    /// until finite sources are exhausted and every group has drained.
    #[arg(short, long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// End with one JSON summary line on stdout (status lines stay on stderr).
    #[arg(long)]
    pub json: bool,

    /// Override the config's data directory (backlogs, dead letters).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// No status lines.
    #[arg(short, long)]
    pub quiet: bool,
}

pub async fn run(args: RunArgs) -> ExitCode {
    let mut config = match &args.config {
        Some(path) => match FileConfig::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => FileConfig::embedded(),
    };
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let engine = match config.build().await.map(|b| b.build()) {
        Ok(Ok(engine)) => engine,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let monitor = engine.monitor();
    let started = Instant::now();
    if !args.quiet {
        let what = args
            .config
            .as_ref()
            .map_or("the embedded default".to_string(), |p| {
                p.display().to_string()
            });
        eprintln!(
            "laneway: running {what} ({} group{}); Ctrl-C stops",
            config.groups.len(),
            if config.groups.len() == 1 { "" } else { "s" }
        );
        let monitor = monitor.clone();
        let interval = config.status_interval.max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut line = StatusLine::new(&monitor);
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", line.next(&monitor, started.elapsed().as_secs_f64()));
            }
        });
    }
    let duration = args.duration;
    let shutdown = async move {
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = deadline => {}
            _ = tokio::signal::ctrl_c() => {
                eprintln!("laneway: stopping (Ctrl-C again to quit at once)");
                tokio::spawn(async {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        std::process::exit(130);
                    }
                });
            }
        }
    };
    let summary = engine.run(shutdown).await;
    if !args.quiet {
        eprint!("{}", summary_text(&summary));
    }
    if args.json {
        match simd_json::to_string(&summary) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: cannot encode the summary: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Last, so that it is the line a user sees: one per failed source.
    for failure in &summary.failures {
        eprintln!("error: source failed, run stopped: {}", failure.error);
    }
    if summary.failed() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
