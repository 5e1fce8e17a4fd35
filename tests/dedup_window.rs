//! A group's duplicate window (`dedup_window`) across a SIGKILL: a
//! `laneway run` on a Kafka topic (a mock cluster in the test) that never
//! committed an offset is killed mid-topic, so the restart is given every
//! record again. With the window, what was delivered before the kill is
//! acknowledged and counted, not delivered again: duplicates at the sink
//! stay within what was in flight at the kill (`slots × batch_size`), and
//! every record sent is delivered with its exact bytes (topic, id, time,
//! payload).

#![cfg(feature = "kafka")]

use crate::support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use laneway::message::now_epoch_ms;
use simd_json::prelude::*;
use support::kafka::{cluster, produce};
use support::process::Watched;
use support::records::{Copies, Record, assert_delivered, json_records, records_in_jsonl};

const PARTITIONS: i32 = 4;
const SLOTS: usize = 2;
const BATCH: usize = 50;
const LIMIT: Duration = Duration::from_secs(180);

/// The Kafka source never commits before the kill (`commit_every` is an
/// hour): the restart reads the topic from its start. A third of the
/// records are stale, so they pass through the disk backlog.
fn config(dir: &Path, brokers: &str, window: bool) -> (PathBuf, PathBuf) {
    let out = dir.join("out.jsonl");
    let path = dir.join("run.toml");
    let dedup = if window { "dedup_window = \"10m\"" } else { "" };
    let text = format!(
        r#"data_dir = "{data}"
status_interval = "100ms"

[[sources]]
type = "kafka"
brokers = "{brokers}"
topics = ["in"]
group_id = "dedup"
commit_every = "1h"
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}

[[groups]]
name = "out"
validate_json = false
slots = {SLOTS}
batch_size = {BATCH}
backlog_rate = 3000.0
{dedup}
sink = {{ type = "jsonl", path = "{out}", sync = false }}
"#,
        data = dir.join("data").display(),
        out = out.display(),
    );
    std::fs::write(&path, text).unwrap();
    (path, out)
}

fn start(config: &Path, json: bool) -> Watched {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_laneway"));
    cmd.args(["-v", "run"]);
    if json {
        cmd.arg("--json");
    }
    Watched::spawn(cmd.arg("--config").arg(config))
}

fn distinct(out: &Path) -> usize {
    records_in_jsonl(out)
        .into_iter()
        .map(|r| r.id)
        .collect::<HashSet<_>>()
        .len()
}

fn wait_for_distinct(run: &mut Watched, out: &Path, n: usize) {
    run.wait_for_line(LIMIT, &format!("{n} distinct messages delivered"), |line| {
        line.starts_with('[') && distinct(out) >= n
    });
}

fn records(n: u64) -> Vec<Record> {
    let now = now_epoch_ms();
    json_records("d", n, |i| if i % 3 == 0 { now - 3_600_000 } else { now })
}

#[test]
fn after_a_sigkill_the_window_keeps_duplicates_within_what_was_in_flight() {
    const N: u64 = 4_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = cluster(&["in"], PARTITIONS);
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (cfg, out) = config(dir.path(), &brokers, true);
    let sent = records(N);
    rt.block_on(produce(&brokers, "in", &sent));

    let mut first = start(&cfg, false);
    wait_for_distinct(&mut first, &out, N as usize / 4);
    first.kill(); // SIGKILL: no offset was ever committed
    let before = records_in_jsonl(&out).len();
    assert!(before < N as usize, "the kill should land mid-topic");

    let mut second = start(&cfg, true);
    wait_for_distinct(&mut second, &out, N as usize);
    second.interrupt();
    let exit = second.finish(LIMIT);
    let stderr = String::from_utf8_lossy(&exit.stderr);
    assert!(exit.status.success(), "{stderr}");

    let delivered = records_in_jsonl(&out);
    let tally = assert_delivered(&sent, &delivered, Copies::AtLeastOnce);
    let summary = support::process::json_summary(&exit.stdout);
    let counted = summary
        .get("groups")
        .and_then(|g| g.as_array())
        .and_then(|g| g.first())
        .and_then(|g| g.get("duplicates"))
        .and_then(|d| d.as_u64())
        .unwrap_or_else(|| panic!("no duplicates count in {summary:?}"));
    eprintln!(
        "kill after {before} lines; restart: {} duplicates delivered, {counted} recognised by the window",
        tally.duplicates
    );
    let in_flight = SLOTS * BATCH;
    assert!(
        tally.duplicates <= in_flight,
        "{} duplicates delivered, more than the {in_flight} in flight at the kill",
        tally.duplicates
    );
    // The restart was given every record again: what was delivered before
    // the kill (less what was in flight) came back and was recognised.
    assert!(
        counted as usize + in_flight >= before,
        "the window recognised {counted} of the {before} delivered before the kill"
    );
}
