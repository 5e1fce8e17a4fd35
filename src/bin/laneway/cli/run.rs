//! `laneway run`: the dispatcher, with status lines and a final summary.
//!
//! `-q` silences the status lines only: the summary is what a run is for,
//! and it stays unless `--no-summary` (or JSON logs) asks otherwise.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::burst_split::BurstSplit;
use super::logging::LogFormat;
use super::status::{status_line, summary_text};
#[cfg(feature = "admin")]
use laneway::admin::AdminServer;
use laneway::admin::Tracker;
use laneway::config::FileConfig;
use tokio_util::sync::CancellationToken;

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

    /// No status lines (nor the start-up lines); the summary at the end
    /// stays.
    #[arg(short, long)]
    pub quiet: bool,

    /// No text summary at the end (with --json, the JSON line on stdout
    /// stays). With --log-format json the text summary is left out anyway,
    /// so that stderr holds JSON objects only.
    #[arg(long)]
    pub no_summary: bool,

    /// Serve /metrics, /status, the dashboard (/), /healthz and /readyz on
    /// this address (for example 127.0.0.1:9464); overrides the config's
    /// `[admin] listen`. Off unless given here or there.
    #[arg(long, value_name = "ADDR", hide = !super::built_with("admin"))]
    pub admin: Option<std::net::SocketAddr>,
}

/// Runs the dispatcher; `log_format` decides whether the text summary may
/// go to stderr (not among JSON log lines).
pub async fn run(args: RunArgs, log_format: LogFormat) -> ExitCode {
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
    if let Some(addr) = args.admin {
        if !super::built_with("admin") {
            eprintln!("error: {}", super::not_built("--admin", "admin"));
            return ExitCode::FAILURE;
        }
        config.admin.listen = Some(addr);
    }
    // Bound before the engine is built: a taken port fails the start
    // before any backlog store is opened or any source is read. (Without
    // the `admin` feature, a config that sets `listen` was refused when
    // it was read.)
    #[cfg(feature = "admin")]
    let admin = match config.admin.listen {
        Some(addr) => match AdminServer::bind(addr, config.admin.options()).await {
            Ok(server) => Some(server),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
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
    let interval = config.status_interval.max(Duration::from_millis(100));
    let tracker = Tracker::new(monitor.clone(), interval);
    let stop_admin = CancellationToken::new();
    tokio::spawn(tracker.clone().run(stop_admin.clone()));
    #[cfg(not(feature = "admin"))]
    let admin_task: Option<tokio::task::JoinHandle<()>> = None;
    #[cfg(feature = "admin")]
    let admin_task = admin.map(|server| {
        let addr = server.local_addr();
        tracing::info!(%addr, "admin listener: /metrics, /status, /healthz, /readyz and the dashboard at /");
        if !args.quiet {
            eprintln!(
                "laneway: admin listener on http://{addr}/ (dashboard; /metrics, /status, /healthz, /readyz)"
            );
        }
        let (tracker, stop) = (tracker.clone(), stop_admin.clone());
        tokio::spawn(async move {
            if let Err(e) = server.serve(tracker, stop).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        })
    });
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
    }
    let bursts = BurstSplit::of(&config, started).map(|s| Arc::new(parking_lot::Mutex::new(s)));
    {
        let (tracker, bursts, quiet) = (tracker.clone(), bursts.clone(), args.quiet);
        tokio::spawn(async move {
            // One line per tracker sample: the same figures as /status.
            let mut seq = tracker.seq();
            loop {
                tracker.wait_after(seq, Duration::from_secs(3600)).await;
                seq = tracker.seq();
                let burst = bursts.as_ref().is_some_and(|b| {
                    let latency: Vec<_> = tracker.latest_interval().iter().map(|g| g.1).collect();
                    b.lock().interval(Instant::now(), &latency)
                });
                if !quiet {
                    let line = status_line(&tracker, started.elapsed().as_secs_f64());
                    eprintln!("{line}{}", if burst { " (burst)" } else { "" });
                }
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
    stop_admin.cancel();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    if !args.no_summary && log_format == LogFormat::Text {
        eprint!("{}", summary_text(&summary));
        if let Some(b) = &bursts {
            eprint!("{}", b.lock().summary());
        }
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
