//! A graceful stop of a run reading standard input loses no line it read:
//! Ctrl-C (SIGINT) and `--duration` while lines stream in, and a run whose
//! `--duration` ends with its input still open (it must exit, not hang in a
//! blocked read).
//!
//! The test keeps a second read end of the pipe that is the run's stdin, so
//! after the run exits it reads what the run left in the pipe: the bytes the
//! run read are exactly the rest. Every line among them must come out, byte
//! for byte, in the sink file or in the disk backlog the run leaves.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use laneway::backlog::BacklogStore;

use crate::support;
use support::process::{open_backlog_when_free, wait_or_kill};
use support::records::{
    Copies, Record, assert_delivered, json_records, lines_in, records_in_jsonl,
};
use support::wait::poll_until;

/// Far in the future: fresh, the live lane.
const FRESH: i64 = 32_503_680_000_000;
/// Long ago: stale, straight to the backlog.
const STALE: i64 = 1_700_000_000_000;

const CONFIG: &str = r#"data_dir = "data"

[[sources]]
type = "jsonl"
path = "-"

[[groups]]
name = "g"
sink = { type = "jsonl", path = "out.jsonl" }
"#;

/// How a run is stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGINT once some lines were delivered.
    CtrlC,
    /// `--duration`.
    Duration,
}

/// Runs `laneway run` on a pipe fed with `sent` (kept open after the last
/// line until the run has exited), stops it per `stop`, and checks that
/// every line the run read came out once, byte for byte.
fn stop_loses_nothing_read(stop: Stop, sent: &[Record]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("laneway.toml"), CONFIG).unwrap();
    let (reader, mut writer) = std::io::pipe().unwrap();
    let mut kept = reader.try_clone().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_laneway"));
    cmd.args(["run", "-q", "-c", "laneway.toml"]);
    if let Stop::Duration = stop {
        cmd.args(["--duration", "700ms"]);
    }
    let child = cmd
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::from(reader))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The feeder writes whole lines, a few KiB at a time, until told to
    // stop; then it closes its end.
    let mut input = Vec::new();
    for r in sent {
        input.extend_from_slice(r.envelope_line().as_bytes());
        input.push(b'\n');
    }
    let input = Arc::new(input);
    let stop_feeding = Arc::new(AtomicBool::new(false));
    let fed = Arc::new(AtomicU64::new(0));
    let feeder = {
        let (input, stop_feeding, fed) = (
            Arc::clone(&input),
            Arc::clone(&stop_feeding),
            Arc::clone(&fed),
        );
        std::thread::spawn(move || {
            let mut at = 0;
            while at < input.len() && !stop_feeding.load(Ordering::Acquire) {
                let mut end = (at + 4096).min(input.len());
                while input[end - 1] != b'\n' {
                    end -= 1;
                }
                if writer.write_all(&input[at..end]).is_err() {
                    break;
                }
                at = end;
                fed.store(at as u64, Ordering::Release);
            }
            // Input stays open until the test is done with the run.
            while !stop_feeding.load(Ordering::Acquire) {
                std::thread::park_timeout(Duration::from_millis(20));
            }
            drop(writer);
        })
    };
    if let Stop::CtrlC = stop {
        let out = dir.path().join("out.jsonl");
        poll_until(Duration::from_secs(60), "the run to deliver", || {
            lines_in(&out) >= 100
        });
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
    }
    let output = wait_or_kill(child, Duration::from_secs(60));
    assert!(
        output.status.success(),
        "{stop:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // What the run left in the pipe: the feeder is told to stop, and
    // reading lets a feeder blocked on a full pipe see that.
    stop_feeding.store(true, Ordering::Release);
    feeder.thread().unpark();
    let mut left = Vec::new();
    kept.read_to_end(&mut left).unwrap();
    feeder.join().unwrap();
    let fed = fed.load(Ordering::Acquire) as usize;
    let read = fed - left.len();
    assert_eq!(
        &input[read..fed],
        &left[..],
        "the pipe holds the rest in order"
    );
    // The lines the run read (a line it read only part of is no line: none
    // is cut, the feeder writes whole lines and the run reads whole writes).
    let read_lines = input[..read].iter().filter(|&&b| b == b'\n').count();
    assert!(read_lines > 0, "{stop:?}: the run read nothing");
    let mut got = records_in_jsonl(&dir.path().join("out.jsonl"));
    let backlog = open_backlog_when_free(&dir.path().join("data/backlog/g"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        loop {
            let batch = backlog.take_ready(1000, i64::MAX).await.unwrap();
            if batch.is_empty() {
                break;
            }
            got.extend(batch.iter().map(|r| Record::of(&r.record.message)));
            let ids: Vec<_> = batch.iter().map(|r| r.id).collect();
            backlog.release(&ids).await.unwrap();
        }
    });
    eprintln!(
        "{stop:?}: {} lines fed, {read_lines} read by the run, {} delivered or stored",
        sent.len(),
        got.len()
    );
    assert_delivered(&sent[..read_lines], &got, Copies::AtLeastOnce);
}

fn mixed(n: u64) -> Vec<Record> {
    json_records("s", n, |i| if i % 4 == 0 { STALE } else { FRESH })
}

#[test]
fn ctrl_c_while_stdin_streams_delivers_or_stores_every_line_read() {
    stop_loses_nothing_read(Stop::CtrlC, &mixed(200_000));
}

#[test]
fn duration_while_stdin_streams_delivers_or_stores_every_line_read() {
    stop_loses_nothing_read(Stop::Duration, &mixed(200_000));
}

/// Everything is read long before the end, and stdin stays open: the run
/// must still exit when its `--duration` is up (it used to hang in a
/// blocked read after printing its summary).
#[test]
fn a_duration_run_with_stdin_left_open_exits() {
    stop_loses_nothing_read(Stop::Duration, &mixed(300));
}
