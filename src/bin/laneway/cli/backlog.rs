//! `laneway backlog inspect DIR` and `laneway backlog verify DIR`: look at a
//! disk backlog without opening it (safe beside the running process).
//! `laneway backlog inspect --queue Q [--url URL]`: look at a broker
//! backlog through the broker (passive declares and `basic.get` without
//! acks: nothing is removed); that needs the `amqp` feature.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "amqp")]
use laneway::amqp::AmqpBacklogConfig;
#[cfg(feature = "amqp")]
use laneway::amqp::backlog_store::BacklogQueueInspection;
use laneway::backlog::disk::{
    DamageKind, Inspection, LedgerState, Verification, inspect_dir, verify_dir,
};

/// Arguments of `backlog`.
#[derive(Debug, clap::Args)]
pub struct BacklogArgs {
    /// What to do with the backlog directory.
    #[command(subcommand)]
    pub action: BacklogAction,
}

/// The `backlog` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BacklogAction {
    /// Summarise a backlog: records, bytes, segments, how long its oldest
    /// and newest records have been stored, kinds; or, with `--queue`, a
    /// broker backlog: depth, the oldest message's age, the first records'
    /// kinds.
    Inspect(InspectArgs),
    /// Check every record's checksum; exit non-zero if any record is damaged.
    Verify(DirArgs),
}

/// A backlog directory and the output format.
#[derive(Debug, clap::Args)]
pub struct DirArgs {
    /// The backlog directory (for example laneway-data/backlog/all).
    pub dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `backlog inspect` looks at: a disk backlog directory, or a broker
/// backlog queue.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The backlog directory (for example laneway-data/backlog/all).
    #[arg(required_unless_present = "queue", conflicts_with = "queue")]
    pub dir: Option<PathBuf>,
    /// A broker backlog queue (for example laneway.work.backlog). It is
    /// declared by the first `laneway run` whose group has `backlog = {
    /// store = "amqp", queue = ... }`; inspecting declares nothing.
    #[arg(long, hide = !super::built_with("amqp"))]
    pub queue: Option<String>,
    /// The broker URL for `--queue`; `AMQP_URL`, or the local default,
    /// when not given.
    #[arg(long, requires = "queue", hide = !super::built_with("amqp"))]
    pub url: Option<String>,
    /// How many records at the head of the broker queue to read the kinds
    /// and age of.
    #[arg(long, default_value_t = 100, requires = "queue", hide = !super::built_with("amqp"))]
    pub first: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `backlog` subcommand.
pub async fn backlog(args: BacklogArgs) -> ExitCode {
    match args.action {
        BacklogAction::Inspect(InspectArgs {
            queue: Some(queue),
            url,
            first,
            json,
            ..
        }) => inspect_queue(queue, url, first, json).await,
        BacklogAction::Inspect(a) => match inspect_dir(&a.dir.unwrap_or_default()) {
            Ok(i) => print(a.json, &i, inspect_text(&i), ExitCode::SUCCESS),
            Err(e) => fail(&e),
        },
        BacklogAction::Verify(a) => match verify_dir(&a.dir) {
            Ok(v) => {
                let code = if v.ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                };
                print(a.json, &v, verify_text(&v), code)
            }
            Err(e) => fail(&e),
        },
    }
}

/// `backlog inspect --queue`: a broker backlog, through the broker.
#[cfg(feature = "amqp")]
async fn inspect_queue(queue: String, url: Option<String>, first: usize, json: bool) -> ExitCode {
    let config = AmqpBacklogConfig {
        url,
        queue: Some(queue),
        ..AmqpBacklogConfig::default()
    };
    match laneway::amqp::backlog_store::inspect(&config, "", first).await {
        Ok(i) => print(json, &i, broker_text(&i), ExitCode::SUCCESS),
        Err(e) => fail(&e),
    }
}

/// `backlog inspect --queue` in a build without the `amqp` feature.
#[cfg(not(feature = "amqp"))]
async fn inspect_queue(_: String, _: Option<String>, _: usize, _: bool) -> ExitCode {
    fail(&super::not_built("--queue", "amqp"))
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

fn print(json: bool, value: &impl serde::Serialize, text: String, code: ExitCode) -> ExitCode {
    if json {
        match simd_json::to_string(value) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{text}");
    }
    code
}

fn age(ms: Option<i64>) -> String {
    ms.map_or("-".into(), |ms| {
        humantime::format_duration(std::time::Duration::from_millis(
            ms.max(0) as u64 / 1000 * 1000,
        ))
        .to_string()
    })
}

fn inspect_text(i: &Inspection) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: {} records waiting, {} bytes, {} segment{} ({} bytes on disk){}",
        i.dir,
        i.records,
        i.bytes,
        i.segment_count,
        if i.segment_count == 1 { "" } else { "s" },
        i.disk_bytes,
        if i.in_use {
            ", in use by a running process"
        } else {
            ""
        }
    );
    // An empty backlog has no oldest or newest record to give an age of.
    let ages = match (i.records, i.oldest_age_ms, i.newest_age_ms) {
        (0, _, _) => "empty".to_string(),
        (_, Some(oldest), Some(newest)) => format!(
            "oldest stored {} ago, newest {} ago",
            age(Some(oldest)),
            age(Some(newest))
        ),
        _ => "ages unknown".to_string(),
    };
    let _ = writeln!(
        s,
        "  {ages}; {} retried; {} released awaiting deletion; ledger {}",
        i.retried, i.released, i.ledger
    );
    if i.corrupt > 0 || i.lost > 0 || i.tail_bytes > 0 {
        let _ = writeln!(
            s,
            "  damaged: {} records lost, {} damaged places, {} bytes of unusable tail (run `laneway backlog verify` for where)",
            i.lost, i.corrupt, i.tail_bytes
        );
    }
    if !i.kinds.is_empty() {
        let kinds: Vec<String> = i.kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(s, "  kinds: {}", kinds.join(", "));
    }
    for seg in &i.segments {
        let _ = writeln!(
            s,
            "  {}: {} bytes, {} records, {} waiting",
            seg.file, seg.bytes, seg.records, seg.owed
        );
    }
    s
}

#[cfg(feature = "amqp")]
fn broker_text(i: &BacklogQueueInspection) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: {} records ready, {} retries waiting, {} poison; {} consumer{}",
        i.queue,
        i.ready,
        i.waiting,
        i.poison,
        i.consumers,
        if i.consumers == 1 { "" } else { "s" }
    );
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for k in &i.first_kinds {
        match kinds.iter_mut().find(|(n, _)| n == k) {
            Some((_, c)) => *c += 1,
            None => kinds.push((k, 1)),
        }
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    if i.first_kinds.is_empty() {
        let _ = writeln!(s, "  empty");
        return s;
    }
    let _ = writeln!(
        s,
        "  first {}: oldest message {} old (by its generate time), longest in the backlog {}; kinds: {}",
        i.first_kinds.len(),
        age(i.oldest_age_ms),
        age(i.longest_stored_ms),
        kinds.join(", ")
    );
    s
}

fn verify_text(v: &Verification) -> String {
    let mut s = String::new();
    for d in &v.damage {
        let note = if d.kind.is_damage() {
            ""
        } else if d.kind == DamageKind::Delivered {
            "; set aside on the next open, not damage"
        } else {
            "; cut on the next open, not damage"
        };
        let _ = writeln!(
            s,
            "{}: offset {}: {} ({} bytes{note})",
            d.segment, d.offset, d.problem, d.len
        );
    }
    if v.lost > 0 {
        let ranges: Vec<String> = v
            .lost_ids
            .iter()
            .map(|(a, b)| {
                if b - a == 1 {
                    a.to_string()
                } else {
                    format!("{a}..={}", b - 1)
                }
            })
            .collect();
        let more = if (v.lost_ids.iter().map(|(a, b)| b - a).sum::<u64>()) < v.lost {
            ", ..."
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "{}: {} records lost (ids {}{more})",
            v.dir,
            v.lost,
            ranges.join(", ")
        );
    }
    let ledger = match &v.ledger {
        LedgerState::Loaded => "loaded".to_string(),
        LedgerState::Missing => "missing (released records will be delivered again)".to_string(),
        LedgerState::Damaged(why) => format!("DAMAGED ({why})"),
    };
    let damaged = v.damage.iter().filter(|d| d.kind.is_damage()).count();
    let _ = writeln!(
        s,
        "{}: {} records in {} segment{} checked, {} lost, {} damaged place{}; ledger {}; {}",
        v.dir,
        v.records,
        v.segments,
        if v.segments == 1 { "" } else { "s" },
        v.lost,
        damaged,
        if damaged == 1 { "" } else { "s" },
        ledger,
        if v.ok { "ok" } else { "DAMAGED" }
    );
    s
}
