//! Crash safety of the disk backlog with real processes: a child appends,
//! hands out and releases records in a loop and is killed with SIGKILL at
//! random moments; after each kill the backlog is reopened and must hold
//! every record the child saw acknowledged and did not release (zero loss),
//! none it released before a ledger checkpoint, and nothing it never sent;
//! every record read back must be byte for byte the one the child stored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use laneway::backlog::{BacklogStore, DiskBacklog, DiskBacklogConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[path = "common/records.rs"]
mod records;
use records::{Copies, Record, assert_delivered, numbered};

fn child_exe() -> PathBuf {
    // Tests run from target/<profile>/deps; examples live in
    // target/<profile>/examples. A plain `cargo test` builds them; a test
    // run alone (`--test backlog_crash`) may not have, so build it then.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let child = dir.join("examples").join("backlog_child");
    if !child.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--example", "backlog_child"]);
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "building examples/backlog_child failed");
    }
    child
}

#[derive(Default, Debug)]
struct Round {
    acked: HashSet<u64>,
    sent_unacked: HashSet<u64>,
    released_durably: HashSet<u64>,
    released_maybe: HashSet<u64>,
    checkpoints: usize,
}

fn parse(out: &str) -> Round {
    let mut r = Round::default();
    let mut since_checkpoint = Vec::new();
    // A kill can cut the last line short: only whole lines count.
    let whole = match out.rfind('\n') {
        Some(i) => &out[..=i],
        None => "",
    };
    for line in whole.lines() {
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
    let exe = child_exe();
    assert!(
        exe.exists(),
        "{} is missing: it is built by `cargo test` (examples/backlog_child.rs)",
        exe.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let mut expected: HashSet<u64> = HashSet::new();
    let (mut total_acked, mut total_released, mut total_checkpoints, mut total_dups) =
        (0usize, 0usize, 0usize, 0usize);
    let rounds = 24;
    for round in 0..rounds {
        let first_id = 1 + round as u64 * 10_000_000;
        let mut child = Command::new(&exe)
            .arg(dir.path())
            .arg(first_id.to_string())
            .arg(rng.random::<u32>().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(40..400)));
        // Child::kill sends SIGKILL on Unix.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(
            !status.success(),
            "round {round}: the child exited by itself: {err}"
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
