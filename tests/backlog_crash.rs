//! Crash safety of the disk backlog with real processes: a child appends,
//! hands out and releases records in a loop and is killed with SIGKILL at
//! random moments; after each kill the backlog is reopened and must hold
//! every record the child saw acknowledged and did not release (zero loss),
//! none it released before a ledger checkpoint, and nothing it never sent;
//! every record read back must be byte for byte the one the child stored.
//!
//! The child is the test binary run again (its own path, nothing to build):
//! with [`CHILD_ENV`] set, the ignored test [`backlog_child`] is the child's
//! whole work. The parent waits for the child's `ready` line (the store is
//! open), then kills it after a random delay: the delay is the random kill
//! moment, not a wait for anything.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use laneway::backlog::{BacklogRecord, BacklogStore, DiskBacklog, DiskBacklogConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::support;
use support::records::{Copies, Record, assert_delivered, numbered};

/// Set in the child's environment to `DIR FIRST_ID SEED`.
const CHILD_ENV: &str = "LANEWAY_BACKLOG_CRASH_CHILD";

/// The full name of the test that is the child's entry point: its path in
/// the integration binary (tests/main.rs), which `--exact` matches.
const CHILD_TEST: &str = "backlog_crash::backlog_child";

fn child_config() -> DiskBacklogConfig {
    DiskBacklogConfig {
        segment_bytes: 64 * 1024,
        commit_interval: Duration::from_micros(500),
        ledger_interval: Duration::from_millis(30),
        ..DiskBacklogConfig::default()
    }
}

/// One line of the child's protocol, written with a single `write` on
/// stderr: unbuffered, so it is in the pipe the moment the step is done,
/// and bypassing the test harness's output capture. (The harness writes
/// its own lines on stdout, never on stderr.)
fn say(line: &str) {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    std::io::stderr()
        .write_all(&bytes)
        .expect("write to the parent");
}

/// The child process: appends, hands out and releases records in a loop
/// until it is killed, saying each step only once the store has confirmed
/// it. Lines on stderr:
/// - `ready`: the store is open; the loop starts;
/// - `sending A B`: records A..=B are about to be appended;
/// - `acked A B`: the append of A..=B resolved (durable: fsync'd);
/// - `released ID,ID,...`: those records were released (delivered);
/// - `checkpoint`: every release said before this line is in the ledger.
///
/// Record N is `records::numbered(N)` (its topic, time and payload bytes
/// follow from N), so the parent can check every record it reads back byte
/// for byte.
#[test]
#[ignore = "the child process of sigkill_at_random_moments_loses_nothing_acknowledged, run by it"]
fn backlog_child() {
    // Run by hand (`--ignored`) it has nothing to do.
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    // From the right: the directory may hold spaces.
    let args: Vec<&str> = args.rsplitn(3, ' ').collect();
    let [seed, first_id, dir] = args[..] else {
        panic!("{CHILD_ENV} must be `DIR FIRST_ID SEED`, not {args:?}");
    };
    let mut next: u64 = first_id.parse().unwrap();
    let mut rng = SmallRng::seed_from_u64(seed.parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = DiskBacklog::open(std::path::Path::new(dir), child_config()).unwrap();
        say("ready");
        let mut step = 0u64;
        loop {
            step += 1;
            let n = rng.random_range(1..=64u64);
            let records: Vec<BacklogRecord> = (next..next + n)
                .map(|id| BacklogRecord::fresh(numbered(id).message()))
                .collect();
            say(&format!("sending {} {}", next, next + n - 1));
            store.append(&records).await.unwrap();
            say(&format!("acked {} {}", next, next + n - 1));
            next += n;
            if rng.random_bool(0.6) {
                let taken = store
                    .take_ready(rng.random_range(1..=80), i64::MAX)
                    .await
                    .unwrap();
                // Release about two thirds; the rest stay in flight (a
                // delivery that never finished when the process died).
                let released: Vec<_> = taken.iter().filter(|_| rng.random_bool(0.66)).collect();
                let ids: Vec<u64> = released.iter().map(|r| r.id).collect();
                store.release(&ids).await.unwrap();
                if !released.is_empty() {
                    let names: Vec<&str> = released
                        .iter()
                        .map(|r| r.record.message.message_id())
                        .collect();
                    say(&format!("released {}", names.join(",")));
                }
            }
            if step.is_multiple_of(7) {
                store.checkpoint().await.unwrap();
                say("checkpoint");
            }
        }
    });
}

/// The whole lines the child writes on stderr, as they come. A line cut
/// short by the kill (no newline) is not passed on: only whole lines count.
fn child_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = Vec::new();
        loop {
            line.clear();
            match stderr.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.ends_with(b"\n") => {
                    line.pop();
                    let text = String::from_utf8_lossy(&line).into_owned();
                    if tx.send(text).is_err() {
                        break;
                    }
                }
                Ok(_) => break, // cut short by the kill
            }
        }
    });
    rx
}

/// Starts the child on `dir`, its ids from `first_id`, and waits (bounded)
/// for its `ready` line.
fn start_child(dir: &std::path::Path, first_id: u64, seed: u32) -> (Child, mpsc::Receiver<String>) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args([CHILD_TEST, "--exact", "--ignored", "--test-threads", "1"])
        .env(CHILD_ENV, format!("{} {first_id} {seed}", dir.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = child_lines(&mut child);
    let limit = Duration::from_secs(60);
    match lines.recv_timeout(limit) {
        Ok(line) if line == "ready" => (child, lines),
        got => {
            let _ = child.kill();
            let _ = child.wait();
            let mut stdout = String::new();
            let _ = child.stdout.take().unwrap().read_to_string(&mut stdout);
            panic!(
                "the child did not say `ready` within {limit:?} (got {got:?}); its stdout:\n{stdout}"
            );
        }
    }
}

#[derive(Default, Debug)]
struct Round {
    acked: HashSet<u64>,
    sent_unacked: HashSet<u64>,
    released_durably: HashSet<u64>,
    released_maybe: HashSet<u64>,
    checkpoints: usize,
}

/// The child's whole lines after `ready`.
fn parse(out: &[String]) -> Round {
    let mut r = Round::default();
    let mut since_checkpoint = Vec::new();
    for line in out {
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("sending"), Some(a), Some(b)) => {
                let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
                r.sent_unacked.extend(a..=b);
            }
            (Some("acked"), Some(a), Some(b)) => {
                let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
                for id in a..=b {
                    r.sent_unacked.remove(&id);
                    r.acked.insert(id);
                }
            }
            (Some("released"), Some(list), None) => {
                since_checkpoint.extend(list.split(',').map(|s| s.parse::<u64>().unwrap()));
            }
            (Some("checkpoint"), None, None) => {
                r.released_durably.extend(since_checkpoint.drain(..));
                r.checkpoints += 1;
            }
            _ => panic!("unexpected child output line {line:?}"),
        }
    }
    r.released_maybe.extend(since_checkpoint);
    r
}

fn reopen_and_read(dir: &std::path::Path) -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = DiskBacklog::open(dir, DiskBacklogConfig::default()).unwrap();
        let mut read = Vec::new();
        loop {
            let got = store.take_ready(10_000, i64::MAX).await.unwrap();
            if got.is_empty() {
                break;
            }
            read.extend(got.iter().map(|r| Record::of(&r.record.message)));
        }
        assert_eq!(store.depth().records, store.depth().in_flight);
        let ids: Vec<u64> = read.iter().map(|r| r.id.parse().unwrap()).collect();
        // Recovered records are the ones stored, unchanged.
        let stored: Vec<Record> = ids.iter().map(|&id| numbered(id)).collect();
        assert_delivered(&stored, &read, Copies::Unchanged);
        ids
    })
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let mut expected: HashSet<u64> = HashSet::new();
    let (mut total_acked, mut total_released, mut total_checkpoints, mut total_dups) =
        (0usize, 0usize, 0usize, 0usize);
    let rounds = 24;
    for round in 0..rounds {
        let first_id = 1 + round as u64 * 10_000_000;
        let (mut child, lines) = start_child(dir.path(), first_id, rng.random::<u32>());
        // The random kill moment, counted from `ready`.
        std::thread::sleep(Duration::from_millis(rng.random_range(40..400)));
        // Child::kill sends SIGKILL on Unix.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        // The child is gone, so its stderr is closed: the reader ends.
        let out: Vec<String> = lines.iter().collect();
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: the child ended by itself ({status}), not by the kill:\n{}\n{stdout}",
            out.join("\n")
        );
        let r = parse(&out);

        let present_list = reopen_and_read(dir.path());
        let present: HashSet<u64> = present_list.iter().copied().collect();
        assert_eq!(
            present.len(),
            present_list.len(),
            "round {round}: a record came out twice"
        );

        let released: HashSet<u64> = r
            .released_durably
            .union(&r.released_maybe)
            .copied()
            .collect();
        let owed: HashSet<u64> = expected
            .union(&r.acked)
            .copied()
            .filter(|id| !released.contains(id))
            .collect();
        let lost: Vec<_> = owed.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged records lost: {lost:?}"
        );
        let resurrected: Vec<_> = present.intersection(&r.released_durably).collect();
        assert!(
            resurrected.is_empty(),
            "round {round}: records released before a checkpoint came back: {resurrected:?}"
        );
        let allowed: HashSet<u64> = expected
            .union(&r.acked)
            .chain(r.sent_unacked.iter())
            .copied()
            .collect();
        let unknown: Vec<_> = present.difference(&allowed).collect();
        assert!(
            unknown.is_empty(),
            "round {round}: records never sent: {unknown:?}"
        );
        // Duplicates (released, then back) are bounded by the releases not
        // yet in the ledger; extras by the one append in flight.
        let dups = present.intersection(&r.released_maybe).count();
        assert!(dups <= r.released_maybe.len());
        assert!(present.difference(&owed).count() <= r.released_maybe.len() + r.sent_unacked.len());

        total_acked += r.acked.len();
        total_released += released.len();
        total_checkpoints += r.checkpoints;
        total_dups += dups;
        expected = present;
    }
    // The rounds did real work (otherwise the checks above prove nothing).
    assert!(
        total_acked > 1000,
        "only {total_acked} records acknowledged"
    );
    assert!(total_released > 100, "only {total_released} released");
    assert!(
        total_checkpoints > 10,
        "only {total_checkpoints} checkpoints"
    );
    eprintln!(
        "{rounds} kills: {total_acked} acknowledged, {total_released} released, {total_dups} delivered again, {} still owed",
        expected.len()
    );
}
