//! `laneway tune` as a user meets it, on a simulated handler (`--cost`)
//! with short trials: a reachable goal gives a TOML fragment that
//! `--apply` writes into the file (comments kept, check-config passing),
//! an impossible one exits non-zero naming the instances it would take,
//! and a malformed flag or sample is refused naming it.
//!
//! No assertion here depends on how fast this machine is: each checks the
//! structure of what is said, and what must hold by the tool's own
//! measurements (the recommended trial met the goal it was given).

use std::path::Path;
use std::process::{Command, Output};

use simd_json::prelude::*;

fn laneway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_laneway"))
}

/// A config with one group and comments of its own; its data (the
/// trials' scratch backlog) lives in `dir`.
fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("laneway.toml");
    let text = format!(
        "# my service's config\ndata_dir = {:?}\n\n[[groups]]\nname = \"work\"\nslots = 1              # keep this comment\nbatch_size = 16\n# a note between knobs\nmax_attempts = 3\nsink = {{ type = \"simulated\", cost = \"1ms\" }}\nbacklog = {{ store = \"memory\" }}\n",
        dir.join("data").display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_reachable_goal_is_recommended_and_applied_keeping_the_comments() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path());
    let json = dir.path().join("tune.json");
    let svg = dir.path().join("tune.svg");
    let out = laneway()
        .arg("tune")
        .arg("--config")
        .arg(&file)
        .args(["--cost", "2ms", "--servers", "2", "--rate", "200"])
        .args([
            "--outage",
            "1m",
            "--drain-within",
            "1h",
            "--live-p99",
            "500ms",
        ])
        .args(["--trial", "1s", "--max-slots", "4", "--apply"])
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("tune: trial 1: slots 1"),
        "one progress line a trial:\n{stderr}"
    );
    assert!(
        stdout.contains("slots  batch  share"),
        "the table:\n{stdout}"
    );
    assert!(stdout.contains("# predicted: live p99"), "{stdout}");
    assert!(stdout.contains("applied to"), "{stdout}");

    // The recommendation met the goal by the tool's own measurement.
    let mut bytes = std::fs::read(&json).unwrap();
    let report = simd_json::to_owned_value(&mut bytes).unwrap();
    let best = report.get("recommendation").expect("a recommendation");
    assert_eq!(best.get("meets_live").and_then(|v| v.as_bool()), Some(true));
    assert_eq!(
        best.get("meets_drain").and_then(|v| v.as_bool()),
        Some(true)
    );
    let drain_s = best.get("drain_time_s").and_then(|v| v.cast_f64()).unwrap();
    assert!(drain_s <= 3600.0, "{drain_s}");
    let knobs = best.get("knobs").unwrap();
    let knob = |k: &str| knobs.get(k).and_then(|v| v.cast_f64()).unwrap();
    let trials = report.get("trials").and_then(|v| v.as_array()).unwrap();
    assert!(!trials.is_empty());
    assert!(trials.iter().all(|t| {
        t.get("knobs")
            .and_then(|k| k.get("slots"))
            .and_then(|v| v.as_u64())
            .unwrap()
            <= 4
    }));

    // The fragment printed is the file's knobs now, comments kept.
    let applied = std::fs::read_to_string(&file).unwrap();
    for key in ["slots", "batch_size", "live_capacity"] {
        let line = format!("{key} = {}", knob(key) as u64);
        assert!(stdout.contains(&line), "{line} in\n{stdout}");
        assert!(applied.contains(&line), "{line} in\n{applied}");
    }
    assert!(applied.contains(&format!("backlog_share = {}", knob("backlog_share"))));
    assert!(applied.starts_with("# my service's config\n"), "{applied}");
    assert!(applied.contains("# keep this comment"), "{applied}");
    assert!(
        applied.contains("# a note between knobs\nmax_attempts = 3"),
        "{applied}"
    );
    let check = laneway().arg("check-config").arg(&file).output().unwrap();
    assert!(check.status.success(), "{}", text(&check).1);

    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.trim_end().ends_with("</svg>"));
}

/// The number in "it would take N instance(s)".
fn instances(stdout: &str) -> u64 {
    let (_, rest) = stdout
        .split_once("it would take ")
        .unwrap_or_else(|| panic!("no instance count in\n{stdout}"));
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_rate_far_beyond_the_handler_exits_non_zero_naming_the_instances_needed() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path());
    // One server at 2 ms a message sustains 500 msgs/s; 20,000 are asked.
    let out = laneway()
        .arg("tune")
        .arg("--config")
        .arg(&file)
        .args(["--cost", "2ms", "--servers", "1", "--rate", "20000"])
        .args(["--trial", "1s", "--max-slots", "2"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("no setting tried meets the goal: live p99"),
        "{stdout}"
    );
    assert!(stdout.contains("best found:"), "{stdout}");
    assert!(instances(&stdout) >= 10, "{stdout}");
    let before = std::fs::read_to_string(&file).unwrap();
    assert!(before.contains("slots = 1              # keep this comment"));
}

#[test]
fn a_live_p99_below_the_handlers_own_time_exits_non_zero_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path());
    let out = laneway()
        .arg("tune")
        .arg("--config")
        .arg(&file)
        .args(["--cost", "5ms", "--servers", "2", "--rate", "50"])
        .args(["--live-p99", "1ms", "--trial", "1s", "--max-slots", "1"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("no setting tried meets the goal: live p99"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the handler's own time per delivery"),
        "{stdout}"
    );
    assert!(instances(&stdout) >= 1, "{stdout}");
}

#[test]
fn malformed_flags_and_samples_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path());
    let sample = dir.path().join("sample.jsonl");
    std::fs::write(
        &sample,
        "{\"topic\":\"/a/b/thing/event/property/post\",\"messageId\":\"1\",\"generateTime\":1000,\"payload\":{}}\nnot json\n",
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["--live-p99", "soon"], "--live-p99".into()),
        (vec!["--burst", "100"], "--burst".into()),
        (vec!["--rate", "lots"], "--rate".into()),
        (vec!["--trial", "10ms"], "--trial".into()),
        (vec!["--servers", "2"], "--cost".into()),
        (vec!["--group", "nope"], "--group nope".into()),
        (
            vec!["--sample", sample.to_str().unwrap()],
            format!("{}:2:", sample.display()),
        ),
    ];
    for (flags, named) in cases {
        let out = laneway()
            .arg("tune")
            .arg("--config")
            .arg(&file)
            .args(&flags)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{flags:?} was taken:\n{stdout}");
        assert!(
            stderr.contains(&named),
            "{flags:?}: {named} not named in\n{stderr}"
        );
        assert!(
            !stderr.contains("tune: trial"),
            "{flags:?} ran trials:\n{stderr}"
        );
    }
    // --apply needs a file to write into.
    let out = laneway()
        .args(["tune", "--apply"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).1.contains("--apply"), "{}", text(&out).1);
}
