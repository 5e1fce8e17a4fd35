//! `laneway bench`: run a load scenario in laneway mode, FIFO mode or both,
//! print the side-by-side table, and optionally write JSON and an SVG plot.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::bench::BacklogKind;
#[cfg(feature = "kafka")]
use crate::bench::catch_up::{self, CatchUpOptions};
#[cfg(feature = "kafka")]
use crate::bench::svg::bars;
use crate::bench::svg::render;
use crate::bench::{
    BenchOptions, BenchReport, Mode, Scenario, StoreComparison, StoreReport, run_mode,
};

/// The scenarios `--scenario` names: the load scenarios, and catch-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScenarioChoice {
    /// Load below capacity: throughput and live latency.
    Steady,
    /// The handler stops and returns: live latency while the backlog drains.
    Outage,
    /// A million stale messages waiting at start, beside live traffic.
    Flood,
    /// Time to real-time on a lagging Kafka log, by pile size, laneway
    /// against a plain consumer (starts its own in-memory Kafka cluster).
    #[value(hide = !super::built_with("kafka"))]
    CatchUp,
}

impl ScenarioChoice {
    fn load(self) -> Option<Scenario> {
        match self {
            ScenarioChoice::Steady => Some(Scenario::Steady),
            ScenarioChoice::Outage => Some(Scenario::Outage),
            ScenarioChoice::Flood => Some(Scenario::Flood),
            ScenarioChoice::CatchUp => None,
        }
    }
}

/// Which modes to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeChoice {
    /// laneway only.
    Laneway,
    /// The FIFO baseline only.
    Fifo,
    /// Both, one after the other, same traffic and handler.
    Both,
}

/// Arguments of `bench`. Unset knobs take the scenario's defaults.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// steady: load below capacity; outage: the handler stops and returns;
    /// flood: a million stale messages waiting at start; catch-up: time to
    /// real-time on a lagging Kafka log against its pile's size.
    #[arg(long, value_enum)]
    pub scenario: ScenarioChoice,
    /// Which consumer(s) to run.
    #[arg(long, value_enum, default_value = "both")]
    pub mode: ModeChoice,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw live latency and per-lane rates over time here (SVG).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Live traffic, messages per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Handler cost per message (simulated work), e.g. 100us.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cost: Option<Duration>,
    /// Delivery slots (the handler gets as many servers).
    #[arg(long)]
    pub slots: Option<usize>,
    /// Messages per delivery.
    #[arg(long)]
    pub batch: Option<usize>,
    /// The backlog's guaranteed share of deliveries.
    #[arg(long)]
    pub backlog_share: Option<f64>,
    /// Live lane capacity.
    #[arg(long)]
    pub live_capacity: Option<usize>,
    /// steady: how long to run.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// outage: traffic before the handler goes down.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub before: Option<Duration>,
    /// outage: how long the handler stays down.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub outage: Option<Duration>,
    /// flood: stale messages waiting at start.
    #[arg(long)]
    pub pile: Option<u64>,
    /// Live latency under this counts as real time.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub threshold: Option<Duration>,
    /// Upper bound on each mode's run (catch-up: on each consumer's run to
    /// its first fresh record and the end of its pile).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_run: Option<Duration>,
    /// The backlog store laneway mode uses. Several, comma-separated (for
    /// example `disk,amqp`), run laneway mode once per store in this run
    /// and compare them; `amqp` uses RabbitMQ at `$AMQP_URL`.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub backlog: Vec<BacklogKind>,
    /// Where a disk backlog lives (emptied before each run).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// catch-up: the pile sizes to run, comma-separated (default
    /// 100000,1000000).
    #[arg(long, value_delimiter = ',')]
    pub piles: Vec<u64>,
    /// catch-up: partitions of the Kafka topic. Default: sized from each
    /// pile, about 2,000 records per partition, at most 32 (the in-memory
    /// cluster keeps a few MiB per partition). A pile with fewer than
    /// 1,000 records per partition (the source's catch_up_after) is
    /// refused: no partition would be split.
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Rounds to run: per mode (steady, outage, flood; default 1) or per
    /// pile (catch-up; default 5, each on a new pile). Which mode or
    /// consumer goes first alternates between rounds; the table gives each
    /// figure's median and range, and each ratio as the median of the
    /// per-round ratios; --json keeps every round, --svg draws the last.
    #[arg(long)]
    pub rounds: Option<usize>,
}

impl BenchArgs {
    #[cfg(feature = "kafka")]
    fn catch_up_options(&self) -> Result<CatchUpOptions, String> {
        let mut o = CatchUpOptions::default();
        if !self.piles.is_empty() {
            o.piles = self.piles.clone();
        }
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = self.$field.clone() { o.$field = v; } )* };
        }
        take!(cost, slots, batch, max_run, rounds);
        o.partitions = self.partitions;
        if o.slots == 0 || o.batch == 0 || o.rounds == 0 || o.partitions.is_some_and(|p| p < 1) {
            return Err("--slots, --batch, --rounds and --partitions must be at least 1".into());
        }
        if o.piles.contains(&0) {
            return Err("--piles: each pile must hold at least one record".into());
        }
        Ok(o)
    }

    fn options(&self, scenario: Scenario) -> Result<BenchOptions, String> {
        let mut o = BenchOptions::defaults(scenario);
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = self.$field.clone() { o.$field = v; } )* };
        }
        take!(
            rate,
            cost,
            slots,
            batch,
            backlog_share,
            live_capacity,
            duration,
            before,
            outage,
            pile,
            threshold,
            max_run,
            data_dir
        );
        if self.backlog.contains(&BacklogKind::Amqp) && !super::built_with("amqp") {
            return Err(super::not_built("--backlog amqp", "amqp"));
        }
        if let Some(&first) = self.backlog.first() {
            o.backlog = first;
        }
        if o.slots == 0 || o.batch == 0 || o.live_capacity == 0 || self.rounds == Some(0) {
            return Err("--slots, --batch, --live-capacity and --rounds must be at least 1".into());
        }
        if self.rounds.is_some() && self.backlog.len() > 1 {
            return Err("--rounds with several --backlog stores is not supported: compare the stores in one round, or give one --backlog".into());
        }
        if !(0.0..=1.0).contains(&o.backlog_share) {
            return Err("--backlog-share must be between 0 and 1".into());
        }
        if o.rate.is_nan() || o.rate < 0.0 {
            return Err("--rate must be zero or more".into());
        }
        Ok(o)
    }
}

pub async fn bench(args: BenchArgs) -> ExitCode {
    let Some(scenario) = args.scenario.load() else {
        return bench_catch_up(&args).await;
    };
    let options = match args.options(scenario) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.backlog.len() > 1 {
        return compare_stores(&args, options).await;
    }
    let modes: &[Mode] = match args.mode {
        ModeChoice::Laneway => &[Mode::Laneway],
        ModeChoice::Fifo => &[Mode::Fifo],
        ModeChoice::Both => &[Mode::Laneway, Mode::Fifo],
    };
    let progress = |line: &str| eprintln!("bench: {line}");
    let total = args.rounds.unwrap_or(1);
    let mut rounds = Vec::new();
    for round in 0..total {
        if total > 1 {
            progress(&format!("round {} of {total}", round + 1));
        }
        // The modes' order alternates between rounds, so that neither
        // always runs on a machine the other has just warmed or loaded.
        let order: Vec<Mode> = if round % 2 == 1 {
            modes.iter().rev().copied().collect()
        } else {
            modes.to_vec()
        };
        let mut reports = Vec::new();
        for mode in order {
            match run_mode(&options, mode, &progress).await {
                Ok(r) => reports.push(r),
                Err(e) => {
                    eprintln!("error: {mode:?} run failed: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        reports.sort_by_key(|r| modes.iter().position(|&m| m == r.mode));
        rounds.push(reports);
    }
    let report = BenchReport {
        options: options.clone(),
        modes: rounds.last().cloned().unwrap_or_default(),
        rounds,
    };
    print!("{}", report.table());
    if let Some(path) = &args.json
        && !write_json(path, &report)
    {
        return ExitCode::FAILURE;
    }
    if let Some(path) = &args.svg {
        let title = format!(
            "laneway vs FIFO — {:?}: {} slots × {:?}/msg, live {:.0} msgs/s",
            options.scenario, options.slots, options.cost, options.rate
        );
        let svg = render(
            &title,
            &report.modes,
            options.threshold.as_secs_f64() * 1000.0,
        );
        if let Err(e) = std::fs::write(path, svg) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `--backlog a,b,...`: laneway mode once per store, same knobs, one table.
async fn compare_stores(args: &BenchArgs, options: BenchOptions) -> ExitCode {
    if args.svg.is_some() {
        eprintln!("error: --svg plots one store's run; give one --backlog, or drop --svg");
        return ExitCode::FAILURE;
    }
    let progress = |line: &str| eprintln!("bench: {line}");
    let mut stores = Vec::new();
    for &backlog in &args.backlog {
        let opts = BenchOptions {
            backlog,
            ..options.clone()
        };
        progress(&format!("backlog store {backlog:?}"));
        match run_mode(&opts, Mode::Laneway, &progress).await {
            Ok(report) => stores.push(StoreReport { backlog, report }),
            Err(e) => {
                eprintln!("error: the {backlog:?} store's run failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let comparison = StoreComparison { options, stores };
    print!("{}", comparison.table());
    if let Some(path) = &args.json
        && !write_json(path, &comparison)
    {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The catch-up scenario in a build without the `kafka` feature.
#[cfg(not(feature = "kafka"))]
async fn bench_catch_up(_: &BenchArgs) -> ExitCode {
    eprintln!(
        "error: {}",
        super::not_built("--scenario catch-up", "kafka")
    );
    ExitCode::FAILURE
}

/// `--scenario catch-up`: laneway against a plain consumer, by pile size.
#[cfg(feature = "kafka")]
async fn bench_catch_up(args: &BenchArgs) -> ExitCode {
    let options = match args.catch_up_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let progress = |line: &str| eprintln!("bench: {line}");
    let report = match catch_up::run(&options, &progress).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: catch-up run failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    if let Some(path) = &args.json
        && !write_json(path, &report)
    {
        return ExitCode::FAILURE;
    }
    if let Some(path) = &args.svg {
        let categories: Vec<String> = report
            .points
            .iter()
            .map(|p| format!("pile of {} records", p.pile))
            .collect();
        let series = [
            (
                "laneway (live-first catch-up)",
                "#1f77b4",
                report
                    .points
                    .iter()
                    .map(|p| p.to_fresh_ms.laneway.map(|s| s.median))
                    .collect(),
            ),
            (
                "plain rdkafka consumer",
                "#d62728",
                report
                    .points
                    .iter()
                    .map(|p| p.to_fresh_ms.plain.map(|s| s.median))
                    .collect(),
            ),
        ];
        let title = format!(
            "time to the first fresh record on a lagging Kafka log — handler {} slots × {:?}/msg, median of {} round(s)",
            options.slots, options.cost, options.rounds
        );
        let svg = bars(
            &title,
            "ms from the assignment to the first fresh record",
            &categories,
            &series,
        );
        if let Err(e) = std::fs::write(path, svg) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let missing = |of: fn(&catch_up::Timing) -> Option<f64>| {
        report
            .points
            .iter()
            .flat_map(|p| &p.rounds)
            .any(|r| of(&r.laneway).is_none() || of(&r.plain).is_none())
    };
    if missing(|t| t.to_fresh_ms) {
        eprintln!("error: a consumer handled no fresh record within --max-run");
        return ExitCode::FAILURE;
    }
    if missing(|t| t.pile_done_ms) {
        eprintln!("error: a consumer did not handle its whole pile within --max-run");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Writes `report` as pretty JSON to `path`; false (said on stderr) if it
/// could not.
fn write_json(path: &std::path::Path, report: &impl serde::Serialize) -> bool {
    let written = simd_json::to_string_pretty(report)
        .map_err(|e| e.to_string())
        .and_then(|text| std::fs::write(path, text + "\n").map_err(|e| e.to_string()));
    if let Err(e) = written {
        eprintln!("error: writing {}: {e}", path.display());
        return false;
    }
    true
}
