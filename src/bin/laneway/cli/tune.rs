//! `laneway tune`: find lane knobs for one group that meet a goal (live
//! p99 under drain, an outage's pile drained in time), by short trials of
//! the group against its own sink or a simulated handler.
//!
//! Exit status: 0 with a recommendation (and, with `--apply`, the config
//! rewritten and checked); 1 when no setting tried meets the goal (said
//! plainly, with the instances it would take) or on an error naming the
//! flag, file or line at fault; 2 on a malformed command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use laneway::backlog::MemoryLimits;
use laneway::config::{BacklogSpec, FileConfig, GroupSpec, SourceSpec};
use laneway::source::simulator::SimulatorConfig;

use crate::tune::profile::{Burst, Profile, Sample, Traffic};
use crate::tune::recommendation::{Report, conclude, human};
use crate::tune::search::{Goal, Search, Trial};
use crate::tune::trial::{self, Knobs, SinkChoice, StoreChoice, TrialSetup};

/// Stale messages a trial's backlog starts with (it is topped up below half).
const TRIAL_PILE: usize = 20_000;

/// Arguments of `tune` (what the command does is its `--help`, in
/// `Command::Tune`).
#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    /// The config file; without it, the embedded default (what `laneway
    /// run` runs with no config).
    #[arg(short, long)]
    pub config: Option<PathBuf>,

    /// The group to tune; default: the config's first group.
    #[arg(short, long)]
    pub group: Option<String>,

    /// Goal: live latency p99 (from receipt to delivered) while the backlog
    /// drains beside it.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub live_p99: Duration,

    /// Goal: the outage's pile must drain within this, beside live traffic.
    #[arg(long, value_name = "DURATION", default_value = "2h", value_parser = humantime::parse_duration)]
    pub drain_within: Duration,

    /// Live traffic, messages per second from the sources (the group's
    /// filter takes its share). Default: the sample's rate with --sample;
    /// else the config's live simulator sources' rates summed; else the
    /// simulator's default, 10000.
    #[arg(long, value_name = "MSGS_PER_S")]
    pub rate: Option<f64>,

    /// Bursts on top of the rate: SIZE/EVERY, for example 30000/2s.
    /// `live_capacity` is raised when a burst would not fit the live lane.
    #[arg(long, value_name = "SIZE/EVERY")]
    pub burst: Option<Burst>,

    /// The outage the backlog must recover from: its pile is rate × outage
    /// (the group's share of it).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub outage: Duration,

    /// A recorded JSONL sample (envelope lines, as the JSONL sink writes
    /// them): its messages, payload sizes and rate are replayed instead of
    /// the simulated fleet's.
    #[arg(long, value_name = "FILE")]
    pub sample: Option<PathBuf>,

    /// Deliver to a simulated handler spending this per message (for
    /// example 2ms) instead of the config's sink.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub cost: Option<Duration>,

    /// With --cost: the simulated handler's servers working at once (its
    /// capacity is servers / cost); default 4.
    #[arg(
        long,
        value_name = "N",
        requires = "cost",
        default_value_if("cost", clap::builder::ArgPredicate::IsPresent, "4")
    )]
    pub servers: Option<usize>,

    /// How long each trial runs (its first fifth is warm-up, not measured);
    /// longer, up to four times, while too few deliveries have completed
    /// to measure (large batches on a slow handler).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub trial: Duration,

    /// The most slots tried (slots are tried as powers of two up to it).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_slots: usize,

    /// Run the full grid (every slots × batch_size × backlog_share on the
    /// same ladders) instead of the coordinate search: slow, the reference
    /// the cheap search is measured against.
    #[arg(long)]
    pub exhaustive: bool,

    /// Write the report (profile, goal, every trial, the recommendation or
    /// the shortfall) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Draw throughput and live p99 against slots here (SVG).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Write the recommended knobs into the --config file (comments and
    /// layout kept), then check it as `laneway check-config` does.
    #[arg(long)]
    pub apply: bool,

    /// Where trials keep their scratch backlog: in a directory
    /// `laneway-tune-trial` made below this one, emptied before and removed
    /// after each trial; default: <data_dir>/tune/<group>.
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
}

/// Runs `laneway tune`.
pub async fn tune(args: TuneArgs) -> ExitCode {
    match tune_checked(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The live rate of the config's simulator sources whose messages are
/// fresh for `group` (a pile source, stamped in the past, is not live).
fn config_rate(config: &FileConfig, live_window: Duration) -> Option<f64> {
    let rate: f64 = config
        .sources
        .iter()
        .filter_map(|s| match s {
            SourceSpec::Simulator(sim) if sim.rate > 0.0 && sim.age < live_window => Some(sim.rate),
            _ => None,
        })
        .sum();
    (rate > 0.0).then_some(rate)
}

fn check_args(args: &TuneArgs) -> Result<(), String> {
    let positive = |d: Duration, flag: &str| {
        if d.is_zero() {
            Err(format!("{flag} must be above zero"))
        } else {
            Ok(())
        }
    };
    positive(args.live_p99, "--live-p99")?;
    positive(args.drain_within, "--drain-within")?;
    if args.trial < Duration::from_secs(1) {
        return Err(format!(
            "--trial {}: a trial needs at least 1s (its first fifth is warm-up)",
            human(args.trial.as_secs_f64())
        ));
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate >= 0.0)
    {
        return Err(format!(
            "--rate {rate}: must be a number of messages per second, zero or more"
        ));
    }
    if let Some(cost) = args.cost {
        positive(cost, "--cost")?;
    }
    if args.servers == Some(0) {
        return Err("--servers must be at least 1".into());
    }
    if args.max_slots == 0 {
        return Err("--max-slots must be at least 1".into());
    }
    if args.apply && args.config.is_none() {
        return Err(
            "--apply writes into the --config file; the embedded default is not a file (copy laneway.example.toml and pass it with --config)"
                .into(),
        );
    }
    Ok(())
}

async fn tune_checked(args: TuneArgs) -> Result<ExitCode, String> {
    check_args(&args)?;
    let started = Instant::now();
    let (config, shown) = match &args.config {
        Some(path) => (
            FileConfig::load(path).map_err(|e| e.to_string())?,
            path.display().to_string(),
        ),
        None => (FileConfig::embedded(), "the embedded default".to_string()),
    };
    let spec: &GroupSpec = match &args.group {
        Some(name) => config
            .groups
            .iter()
            .find(|g| g.name() == *name)
            .ok_or_else(|| {
                let names: Vec<String> = config.groups.iter().map(GroupSpec::name).collect();
                format!(
                    "--group {name}: {shown} has no group of that name (it has: {})",
                    names.join(", ")
                )
            })?,
        None => config
            .groups
            .first()
            .ok_or_else(|| format!("{shown} has no [[groups]] to tune"))?,
    };
    let group = spec.group_config();
    if group.adaptive_slots.is_some() {
        eprintln!(
            "tune: group {:?} has slots = \"auto\"; tune measures fixed slots (up to max_slots), and --apply writes the pick in place of \"auto\"",
            group.name
        );
    }
    if args.group.is_none() && config.groups.len() > 1 {
        eprintln!(
            "tune: tuning group {:?}, the first of {} (--group picks another)",
            group.name,
            config.groups.len()
        );
    }

    let sample = args.sample.as_deref().map(Sample::load).transpose()?;
    let rate = match (args.rate, &sample) {
        (Some(r), _) => r,
        (None, Some(s)) => s.rate.ok_or_else(|| {
            format!(
                "{}: every message has one generateTime, so the sample has no rate: give --rate",
                s.path.display()
            )
        })?,
        (None, None) => config_rate(&config, group.live_window)
            .unwrap_or_else(|| SimulatorConfig::default().rate),
    };
    let traffic = Arc::new(Traffic::new(sample.as_ref(), &group)?);
    let mut pile_size = TRIAL_PILE;
    if let BacklogSpec::Memory { max_records, .. } = &spec.backlog {
        pile_size = pile_size.min((*max_records / 2).max(1) as usize);
    }
    let (pile, group_share) = traffic.pile(pile_size)?;
    let profile = Profile {
        rate,
        burst: args.burst,
        outage: args.outage,
        group_share,
        pile: (rate * args.outage.as_secs_f64() * group_share).round() as u64,
        messages: match &sample {
            Some(s) => format!(
                "{} ({} messages, {:.0} bytes of payload on average)",
                s.path.display(),
                s.messages.len(),
                s.mean_payload_bytes
            ),
            None => "the simulated fleet".into(),
        },
    };
    let goal = Goal {
        live_p99: args.live_p99,
        drain_within: args.drain_within,
        pile: profile.pile,
    };

    let mut start = Knobs::of(&group);
    if let Some(b) = args.burst {
        // A burst, plus the goal's worth of traffic, must fit the live lane.
        let need = b.size as f64 * group_share + profile.group_rate() * args.live_p99.as_secs_f64();
        let need = ((need * 1.25 / 1000.0).ceil() * 1000.0) as usize;
        if need > start.live_capacity {
            eprintln!(
                "tune: live_capacity {} holds less than a burst: trying {need}",
                start.live_capacity
            );
            start.live_capacity = need;
        }
    }
    let sink = match args.cost {
        Some(cost) => SinkChoice::Simulated {
            cost,
            servers: args.servers.unwrap_or(4),
        },
        None => SinkChoice::Config(spec.sink.clone()),
    };
    let store = match &spec.backlog {
        BacklogSpec::Disk(c) => StoreChoice::Disk(c.clone()),
        BacklogSpec::Memory {
            max_records,
            max_bytes,
        } => StoreChoice::Memory(MemoryLimits {
            max_records: *max_records,
            max_bytes: *max_bytes,
        }),
        other => {
            tracing::warn!(group = %group.name, "trials use a scratch disk backlog in place of the broker store");
            eprintln!(
                "tune: group {:?} keeps its backlog on a broker ({other:?}); trials use a scratch disk backlog instead",
                group.name
            );
            StoreChoice::Disk(Default::default())
        }
    };
    let scratch = args
        .scratch
        .clone()
        .unwrap_or_else(|| config.data_dir.join("tune").join(&group.name));
    tracing::info!(scratch = %scratch.display(), group = %group.name, "tune: trials' scratch directory");
    let setup = TrialSetup {
        group: group.clone(),
        options: config.engine_options(),
        sink,
        store,
        scratch,
        duration: args.trial,
        rate,
        burst: args.burst,
        traffic,
        pile: Arc::new(pile),
        live_goal: args.live_p99,
    };

    let search_name = if args.exhaustive {
        "exhaustive"
    } else {
        "coordinate"
    };
    eprintln!(
        "tune: group {:?}: {search_name} search, trials of {} at {rate:.0} msgs/s with a pile in the backlog",
        group.name,
        human(args.trial.as_secs_f64())
    );
    let mut count = 0usize;
    let run = async |knobs: Knobs| -> Result<Trial, String> {
        count += 1;
        let t = Trial::judge(trial::run(&setup, knobs).await?, &goal);
        eprintln!("tune: trial {count}: {}", progress_line(&t));
        if t.measured.throughput == 0.0 && t.measured.failed_attempts > 0 {
            return Err(format!(
                "group {:?}: the {} sink delivered nothing in a trial and failed {} attempts: is it reachable? (see -v for the errors)",
                group.name,
                spec.sink.type_name(),
                t.measured.failed_attempts
            ));
        }
        Ok(t)
    };
    let mut search = Search::new(run);
    if args.exhaustive {
        search.exhaustive(start, args.max_slots).await?;
    } else {
        search.coordinate(start, args.max_slots).await?;
    }
    let trials = search.trials;
    let (recommendation, shortfall) = conclude(&trials, &goal, &profile);
    // The pick once more, on its own: a figure that met the goal once by
    // luck shows here.
    let validation = match &recommendation {
        Some(best) => {
            let t = Trial::judge(trial::run(&setup, best.measured.knobs).await?, &goal);
            eprintln!("tune: validation run of the pick: {}", progress_line(&t));
            Some(t)
        }
        None => None,
    };
    let report = Report {
        group: group.name.clone(),
        config: shown,
        profile,
        goal,
        search: search_name,
        trials,
        recommendation,
        validation,
        shortfall,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    print!(
        "{}\n{}\n{}",
        report.heading(),
        report.table(),
        report.conclusion()
    );

    if let Some(path) = &args.json {
        let text = simd_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report.svg()).map_err(|e| format!("--svg {}: {e}", path.display()))?;
    }
    let Some(best) = &report.recommendation else {
        return Ok(ExitCode::FAILURE);
    };
    if args.apply
        && let Some(path) = &args.config
    {
        crate::tune::apply::apply(path, &report.group, &best.measured.knobs)?;
        println!(
            "applied to {} (group {:?}); it passes check-config",
            path.display(),
            report.group
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One trial as its progress line says it.
fn progress_line(t: &Trial) -> String {
    let k = t.measured.knobs;
    let p99 = t
        .measured
        .live_p99_ms
        .map_or_else(|| "behind".to_string(), |p| format!("{p:.1} ms"));
    let verdict = match (t.meets_live, t.meets_drain) {
        (true, true) => "goal met",
        (false, true) => "live p99 fails",
        (true, false) => "drain fails",
        (false, false) => "both fail",
    };
    format!(
        "slots {} batch {} share {} live_capacity {}: live p99 {p99}, {:.0} msgs/s, drain {:.0} msgs/s ({}); {verdict}",
        k.slots,
        k.batch_size,
        k.backlog_share,
        k.live_capacity,
        t.measured.throughput,
        t.measured.drain_rate,
        t.drain_time_s.map_or_else(|| "never".into(), human),
    )
}
