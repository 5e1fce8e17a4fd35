//! The Kafka source in real `laneway run` processes against a mock cluster
//! that lives in the test: a SIGKILL mid-stream and a restart lose nothing
//! (duplicates only, counted and bounded by what was in flight), and two processes in one consumer group
//! share the partitions, one taking over the other's when it is killed.
//! Every check compares the records delivered (topic, id, time, payload)
//! with those sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod kafka_common;
mod process;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::records::{Record, json_records, records_in_jsonl};
use common::{Copies, assert_delivered};
use kafka_common::{cluster, committed_and_ends, produce};
use laneway::backlog::disk::inspect_dir;
use laneway::message::now_epoch_ms;
use process::Watched;

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
