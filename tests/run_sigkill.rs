//! Acceptance: `laneway run` keeps its backlog on disk by default, and a run
//! killed with SIGKILL while messages wait there delivers every one of them
//! after a restart.
//!
//! Phase 1 reads a file of stale messages (so they all go to the backlog)
//! and drains it slowly (`backlog_rate`), then is killed. Phase 2 restarts
//! on the same data directory with an EMPTY input file, so whatever it
//! delivers can only come from the recovered backlog. Every input message
//! must be in the output of phase 1 or phase 2 (duplicates allowed), each
//! copy byte for byte as it was in the input (topic, id, generate time,
//! payload).
//!
//! Synchronisation: phase 1 is killed on one of its own status lines, once
//! the backlog directory holds the whole input and the output file holds a
//! delivery (see [`stored_and_delivering`]); phase 2 is not stopped at all:
//! with its only input exhausted, it ends by itself once every group has
//! drained.

use crate::support;

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use laneway::backlog::disk::inspect_dir;
use support::process::{Watched, wait_or_kill};
use support::records::{Copies, assert_delivered, json_records, records_in_jsonl};

const N: usize = 20_000;

fn write_config(path: &Path, data: &Path, input: &Path, output: &Path, rate: Option<f64>) {
    let rate = rate.map_or(String::new(), |r| format!("backlog_rate = {r:.1}\n"));
    let text = format!(
        "data_dir = {data:?}\nstatus_interval = \"100ms\"\n\
         [[sources]]\ntype = \"jsonl\"\npath = {input:?}\n\
         [[groups]]\nname = \"g\"\nslots = 2\nbatch_size = 100\n{rate}\
         sink = {{ type = \"jsonl\", path = {output:?}, sync = true }}\n"
    );
    std::fs::write(path, text).unwrap();
}

fn ids_in(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let start = l.find("\"messageId\":\"")? + 13;
            let end = start + l[start..].find('"')?;
            Some(l[start..end].to_string())
        })
        .collect()
}

/// Whether the backlog directory `backlog` holds all `N` input records and
/// `output` holds at least one delivered message: the moment phase 1 may be
/// killed.
///
/// Checked on disk, at each of the run's status lines, because the run says
/// neither in an event of its own: "input finished" is logged once the last
/// records are queued for the backlog writer, not once they are written, and
/// the status line's backlog depth falls with deliveries while it rises with
/// the input. What the directory holds is exactly what a restart recovers
/// (a killed process loses nothing already written).
fn stored_and_delivering(backlog: &Path, output: &Path) -> bool {
    let stored: u64 =
        inspect_dir(backlog).map_or(0, |i| i.segments.iter().map(|s| s.records).sum());
    stored as usize >= N && !ids_in(output).is_empty()
}

#[test]
fn sigkill_during_a_run_then_restart_delivers_every_stored_message() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let input = tmp.path().join("in.jsonl");
    let empty = tmp.path().join("empty.jsonl");
    let (out1, out2) = (tmp.path().join("out1.jsonl"), tmp.path().join("out2.jsonl"));
    let an_hour_ago = laneway::message::now_epoch_ms() - 3_600_000;
    // Payloads of every length mod 8 (the disk format pads frames to 8).
    let sent = json_records("m", N as u64, |_| an_hour_ago);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for r in &sent {
        writeln!(f, "{}", r.envelope_line()).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    std::fs::write(&empty, "").unwrap();
    let (c1, c2) = (tmp.path().join("c1.toml"), tmp.path().join("c2.toml"));
    write_config(&c1, &data, &input, &out1, Some(400.0));
    write_config(&c2, &data, &empty, &out2, None);
    let exe = env!("CARGO_BIN_EXE_laneway");
    let backlog = data.join("backlog").join("g");

    // Phase 1: everything is read into the disk backlog, a little delivered.
    let mut run = Watched::run(&c1);
    run.wait_for_status(
        Duration::from_secs(60),
        "a status line after phase 1 stored the input and delivered from it",
        || stored_and_delivering(&backlog, &out1),
    );
    run.kill(); // SIGKILL

    let waiting = inspect_dir(&backlog).unwrap().records as usize;
    assert!(
        waiting > N / 2,
        "only {waiting} messages waited in the backlog at the kill: the test would prove little"
    );

    // Phase 2: same data directory, nothing new to read. The input is
    // exhausted at once, so the run ends by itself once the recovered
    // backlog is delivered and released.
    let run = Command::new(exe)
        .args(["run", "-q", "--config"])
        .arg(&c2)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let phase2 = wait_or_kill(run, Duration::from_secs(100));
    assert!(
        phase2.status.success(),
        "phase 2 failed: {}: {}",
        phase2.status,
        String::from_utf8_lossy(&phase2.stderr)
    );
    let delivered2: HashSet<String> = ids_in(&out2).into_iter().collect();
    assert!(
        delivered2.len() >= waiting - 1000,
        "phase 2 delivered only {}",
        delivered2.len()
    );
    // Every message arrived, in one run or the other, unchanged.
    let mut delivered = records_in_jsonl(&out1);
    delivered.extend(records_in_jsonl(&out2));
    let tally = assert_delivered(&sent, &delivered, Copies::AtLeastOnce);
    eprintln!("{tally:?}");
    assert_eq!(inspect_dir(&backlog).unwrap().records, 0);
}
