//! The JSONL sink on a volume that fills up, then has room again: a write
//! cut short is cut back before it is retried, so every line of the output
//! is a whole envelope, each message arrives byte for byte, the failure is
//! said in a WARN (rate-limited) as well as counted, and nothing becomes a
//! dead letter. Runs the real binary with its output on a real small tmpfs
//! (mounted when the test runs as root; otherwise it says it skipped).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support;
use support::process::Watched;
use support::records::{Copies, Record, assert_delivered, json_records};

/// Far in the future: fresh, the live lane.
const FRESH: i64 = 32_503_680_000_000;

const LIMIT: Duration = Duration::from_secs(120);

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_torn_sink_write_on_a_full_volume_is_cut_back_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let volume = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
        .arg(volume.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let _unmount = Unmount(volume.path());
    let sent: Vec<Record> = json_records("f", 20_000, |_| FRESH);
    let mut input = Vec::new();
    for r in &sent {
        input.extend_from_slice(r.envelope_line().as_bytes());
        input.push(b'\n');
    }
    std::fs::write(dir.path().join("in.jsonl"), &input).unwrap();
    // Another file leaves the output 64 KiB of room, far less than it needs.
    let junk = volume.path().join("junk");
    {
        let mut f = std::fs::File::create(&junk).unwrap();
        let page = [0x5au8; 4096];
        while f.write_all(&page).is_ok() {}
        let len = f.metadata().unwrap().len();
        f.set_len(len - 64 * 1024).unwrap();
    }
    let out = volume.path().join("out.jsonl");
    let config = format!(
        "data_dir = {data:?}\nstatus_interval = \"100ms\"\n\
         [[sources]]\ntype = \"jsonl\"\npath = {input:?}\n\
         [[groups]]\nname = \"g\"\nbatch_size = 200\n\
         sink = {{ type = \"jsonl\", path = {out:?} }}\n",
        data = dir.path().join("data"),
        input = dir.path().join("in.jsonl"),
    );
    std::fs::write(dir.path().join("laneway.toml"), config).unwrap();
    let mut run = Watched::spawn(
        Command::new(env!("CARGO_BIN_EXE_laneway"))
            .args(["run", "--json", "-c"])
            .arg(dir.path().join("laneway.toml"))
            .env("RUST_LOG", "warn"),
    );
    run.wait_for_line(LIMIT, "a WARN that the sink failed", |l| {
        l.contains("WARN") && l.contains("sink failed")
    });
    // Room again.
    std::fs::remove_file(&junk).unwrap();
    let output = run.finish(LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let warns = stderr.lines().filter(|l| l.contains("sink failed")).count();
    assert!(warns <= 20, "not rate-limited: {warns} lines\n{stderr}");
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("\"dead_letter\":0,"), "{summary}");
    assert!(!summary.contains("\"failed_attempts\":0,"), "{summary}");
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes.last(), Some(&b'\n'));
    let got: Vec<Record> = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            Record::from_envelope_line(l)
                .unwrap_or_else(|e| panic!("a line that is no whole envelope: {e}"))
        })
        .collect();
    assert_delivered(&sent, &got, Copies::AtLeastOnce);
}
