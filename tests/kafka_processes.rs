//! The Kafka source in real `laneway run` processes against a mock cluster
//! that lives in the test: a SIGKILL mid-stream and a restart lose nothing
//! (duplicates only, counted and bounded by what was in flight), a restart
//! with `idle_exit` right after a SIGKILL waits for the partitions and
//! finishes the topic (and a run stopped before then reports its lag), and
//! two processes in one consumer group
//! share the partitions, one taking over the other's when it is killed.
//! Every check compares the records delivered (topic, id, time, payload)
//! with those sent.

#![cfg(feature = "kafka")]

use crate::support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use laneway::backlog::disk::inspect_dir;
use laneway::message::now_epoch_ms;
use support::kafka::{cluster, committed_and_ends, produce};
use support::process::Watched;
use support::records::{Copies, Record, assert_delivered, json_records, records_in_jsonl};

const PARTITIONS: i32 = 8;
const LIMIT: Duration = Duration::from_secs(180);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A config: the Kafka source in group `group`, one group delivering to
/// `out` as JSONL, status lines every 100 ms (what the tests wait on).
fn config(dir: &Path, name: &str, brokers: &str, group: &str) -> (PathBuf, PathBuf) {
    config_with(dir, name, brokers, group, "")
}

/// [`config`], with `source_extra` added to the source's table.
fn config_with(
    dir: &Path,
    name: &str,
    brokers: &str,
    group: &str,
    source_extra: &str,
) -> (PathBuf, PathBuf) {
    let out = dir.join(format!("{name}.jsonl"));
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"data_dir = "{data}"
status_interval = "100ms"

[[sources]]
type = "kafka"
brokers = "{brokers}"
topics = ["in"]
group_id = "{group}"
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
{source_extra}

[[groups]]
name = "out"
validate_json = false
# The stale share drains at this rate, so a run is still delivering when
# its first offset commit lands.
backlog_rate = 3000.0
sink = {{ type = "jsonl", path = "{out}", sync = false }}
"#,
        data = dir.join(format!("{name}-data")).display(),
        out = out.display(),
    );
    std::fs::write(&path, text).unwrap();
    (path, out)
}

fn start(config: &Path) -> Watched {
    Watched::spawn(
        Command::new(env!("CARGO_BIN_EXE_laneway"))
            .args(["-v", "run", "--config"])
            .arg(config),
    )
}

fn distinct_ids(outputs: &[&Path]) -> usize {
    outputs
        .iter()
        .flat_map(|o| records_in_jsonl(o))
        .map(|r| r.id)
        .collect::<HashSet<_>>()
        .len()
}

/// Waits, on the run's status lines, until the outputs together hold
/// `n` distinct messages.
fn wait_for_distinct(run: &mut Watched, outputs: &[&Path], n: usize) {
    run.wait_for_line(LIMIT, &format!("{n} distinct messages delivered"), |line| {
        line.starts_with('[') && distinct_ids(outputs) >= n
    });
}

fn stale_share(prefix: &str, n: u64) -> Vec<Record> {
    let now = now_epoch_ms();
    json_records(
        prefix,
        n,
        |i| if i % 3 == 0 { now - 3_600_000 } else { now },
    )
}

#[test]
fn a_sigkill_mid_stream_then_a_restart_loses_nothing() {
    const N: u64 = 20_000;
    let rt = runtime();
    let cluster = cluster(&["in"], PARTITIONS);
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (cfg, out) = config(dir.path(), "one", &brokers, "kill");
    let sent = stale_share("s", N);
    rt.block_on(produce(&brokers, "in", &sent));

    let mut first = start(&cfg);
    wait_for_distinct(&mut first, &[&out], N as usize / 4);
    // Kill once a commit has landed, so that the bound on duplicates
    // below says something: it is what a commit had not yet covered.
    first.wait_for_line(LIMIT, "a first offset commit", |line| {
        line.starts_with('[')
            && committed_and_ends(&brokers, "kill", "in", PARTITIONS)
                .iter()
                .any(|(_, committed, _)| *committed > 0)
    });
    first.kill(); // SIGKILL
    let before = records_in_jsonl(&out).len();
    assert!(
        before < N as usize,
        "the kill should land mid-stream ({before} delivered)"
    );
    // What the restart may deliver a second time: what Kafka replays (past
    // the last commit) and what the backlog still holds (not released).
    let replayed: i64 = committed_and_ends(&brokers, "kill", "in", PARTITIONS)
        .iter()
        .map(|(_, committed, end)| end - (*committed).max(0))
        .sum();
    let held = inspect_dir(&dir.path().join("one-data/backlog/out")).map_or(0, |i| i.records);

    let mut second = start(&cfg);
    wait_for_distinct(&mut second, &[&out], N as usize);
    second.interrupt();
    let exit = second.finish(LIMIT);
    assert!(
        exit.status.success(),
        "{}",
        String::from_utf8_lossy(&exit.stderr)
    );

    let delivered = records_in_jsonl(&out);
    let tally = assert_delivered(&sent, &delivered, Copies::AtLeastOnce);
    eprintln!(
        "kill after {before} lines ({replayed} past the last commit, {held} held in the backlog): {} copies, {} duplicates",
        tally.copies, tally.duplicates
    );
    let in_flight = replayed as usize + held as usize;
    assert!(
        tally.duplicates <= in_flight,
        "duplicates ({}) exceed what was in flight at the kill: {replayed} past the last commit + {held} held in the backlog",
        tally.duplicates
    );
}

/// The group's records not yet committed on topic `in`.
fn group_lag(brokers: &str, group: &str) -> u64 {
    committed_and_ends(brokers, group, "in", PARTITIONS)
        .iter()
        .map(|(_, committed, end)| (end - (*committed).max(0)) as u64)
        .sum()
}

/// The `lag` the `--json` summary on `stdout` reports for its one source.
fn reported_lag(stdout: &[u8]) -> u64 {
    use simd_json::prelude::*;
    let summary = support::process::json_summary(stdout);
    summary
        .get("lag")
        .and_then(|l| l.as_array())
        .and_then(|l| l.first())
        .and_then(|s| s.get("lag"))
        .and_then(|l| l.as_u64())
        .unwrap_or_else(|| panic!("no lag in the summary: {summary:?}"))
}

#[test]
fn a_restart_with_idle_exit_right_after_a_sigkill_finishes_the_topic() {
    const N: u64 = 6_000;
    let rt = runtime();
    let cluster = cluster(&["in"], PARTITIONS);
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    // The session timeout is 6 s, the idle period 2 s: a restart that
    // trusted the idle period alone would give up before the dead
    // member's partitions came free.
    let (cfg, out) = config_with(dir.path(), "idle", &brokers, "idle", "idle_exit = \"2s\"");
    let sent = stale_share("i", N);
    rt.block_on(produce(&brokers, "in", &sent));

    let mut first = start(&cfg);
    wait_for_distinct(&mut first, &[&out], N as usize / 4);
    first.kill(); // SIGKILL: the dead member holds the partitions
    let before = records_in_jsonl(&out).len();
    assert!(before < N as usize, "the kill should land mid-topic");

    // Stopped (--duration) while the dead member still holds everything:
    // it read nothing, and says how much is left.
    let stopped = Watched::spawn(
        Command::new(env!("CARGO_BIN_EXE_laneway"))
            .args(["run", "--duration", "1s", "--json", "--config"])
            .arg(&cfg),
    )
    .finish(LIMIT);
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert!(stopped.status.success(), "{stderr}");
    let left = group_lag(&brokers, "idle");
    assert!(left > 0, "records are left after the kill");
    assert_eq!(reported_lag(&stopped.stdout), left, "{stderr}");
    assert!(
        stderr.contains(&format!("lag {left}: records left to read")),
        "the last lines say what is left:\n{stderr}"
    );

    // Started again at once with idle_exit: it must wait for the
    // partitions and read to the end before it ends on its own.
    let second = Watched::spawn(
        Command::new(env!("CARGO_BIN_EXE_laneway"))
            .args(["-v", "run", "--json", "--config"])
            .arg(&cfg),
    );
    let exit = second.finish(LIMIT);
    let stderr = String::from_utf8_lossy(&exit.stderr);
    assert!(exit.status.success(), "{stderr}");
    assert_eq!(
        group_lag(&brokers, "idle"),
        0,
        "the topic is done:\n{stderr}"
    );
    assert_eq!(reported_lag(&exit.stdout), 0, "{stderr}");
    let delivered = records_in_jsonl(&out);
    let tally = assert_delivered(&sent, &delivered, Copies::AtLeastOnce);
    eprintln!(
        "kill after {before} lines; {left} left; then {} copies, {} duplicates",
        tally.copies, tally.duplicates
    );
}

#[test]
fn two_processes_share_the_partitions_and_one_takes_over_from_the_other() {
    const N: u64 = 10_000;
    let rt = runtime();
    let cluster = cluster(&["in"], PARTITIONS);
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (cfg_a, out_a) = config(dir.path(), "a", &brokers, "pair");
    let (cfg_b, out_b) = config(dir.path(), "b", &brokers, "pair");

    let mut a = start(&cfg_a);
    a.wait_for_line(LIMIT, "a's first assignment", |l| {
        l.contains("partitions assigned")
    });
    let mut b = start(&cfg_b);
    // B's assignment ends the rebalance that gives each member a share.
    b.wait_for_line(LIMIT, "b's first assignment", |l| {
        l.contains("partitions assigned")
    });

    let first = stale_share("p", N);
    rt.block_on(produce(&brokers, "in", &first));
    wait_for_distinct(&mut a, &[&out_a, &out_b], N as usize);
    let (got_a, got_b) = (
        records_in_jsonl(&out_a).len(),
        records_in_jsonl(&out_b).len(),
    );
    assert!(
        got_a > 0 && got_b > 0,
        "both members got partitions: a {got_a}, b {got_b}"
    );

    b.kill(); // SIGKILL: its partitions move to a once its session times out
    let second = stale_share("q", N);
    rt.block_on(produce(&brokers, "in", &second));
    wait_for_distinct(&mut a, &[&out_a, &out_b], 2 * N as usize);
    a.interrupt();
    let exit = a.finish(LIMIT);
    assert!(
        exit.status.success(),
        "{}",
        String::from_utf8_lossy(&exit.stderr)
    );

    let mut sent = first;
    sent.extend(second);
    let mut delivered = records_in_jsonl(&out_a);
    delivered.extend(records_in_jsonl(&out_b));
    let tally = assert_delivered(&sent, &delivered, Copies::AtLeastOnce);
    eprintln!(
        "a {got_a}, b {got_b} of the first {N}; after the kill: {} copies, {} duplicates",
        tally.copies, tally.duplicates
    );
}
