//! The `laneway` program as a user meets it: the embedded default run with
//! its JSON summary, check-config errors with line numbers, and --help.

use crate::support;

use std::process::Command;
use std::time::Duration;

use simd_json::prelude::*;
use support::process::Watched;

fn laneway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_laneway"))
}

#[test]
fn the_embedded_default_runs_and_ends_with_a_json_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = laneway()
        .args(["run", "--duration", "3s", "--json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let status_lines = stderr
        .lines()
        .filter(|l| l.starts_with('[') && l.contains("all: live"))
        .count();
    assert!(status_lines >= 2, "one status line a second:\n{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summary = support::process::json_summary(stdout.as_bytes());
    let field = |k: &str| {
        summary
            .get(k)
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("no {k} in {stdout}"))
    };
    assert!(field("delivered") > 0);
    assert!(field("delivered_live") > 0);
    assert!(
        field("delivered_backlog") > 0,
        "the default's burst overflows the live lanes: {stdout}"
    );
    let _ = field("dead_letter");
    let _ = field("unrouted");
    let latency = summary.get("live_latency_ms").expect("latency");
    assert!(latency.get("p50").and_then(|v| v.as_f64()).is_some());
    assert!(latency.get("p99").and_then(|v| v.as_f64()).is_some());
}

#[test]
fn check_config_names_the_line_of_an_unknown_key_or_a_wrong_type() {
    let dir = tempfile::tempdir().unwrap();
    let bad_key = dir.path().join("bad-key.toml");
    std::fs::write(
        &bad_key,
        "[[groups]]\nname = \"a\"\n\nslots = 2\nlive_capacty = 5\n",
    )
    .unwrap();
    let out = laneway()
        .args(["check-config"])
        .arg(&bad_key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad-key.toml:5:"), "{stderr}");
    assert!(stderr.contains("live_capacty"), "{stderr}");

    let bad_type = dir.path().join("bad-type.toml");
    std::fs::write(&bad_type, "[[groups]]\nname = \"a\"\nslots = \"four\"\n").unwrap();
    let out = laneway()
        .args(["check-config"])
        .arg(&bad_type)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad-type.toml:3:"), "{stderr}");

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/laneway.example.toml");
    let out = laneway().args(["check-config", example]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = laneway()
        .args(["run", "--config", "/nonexistent/laneway.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("/nonexistent/laneway.toml"), "{stderr}");
}

#[test]
fn help_explains_the_commands() {
    let out = laneway().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for command in ["run", "check-config"] {
        assert!(text.contains(command), "{text}");
    }
    let out = laneway().args(["run", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--duration") && text.contains("--json"),
        "{text}"
    );
}

/// `--rounds`: every round in the JSON, both modes in each (in the same
/// order, although the order they ran in alternates), and the table's
/// figures as medians with their ranges.
#[test]
fn a_scenario_in_rounds_keeps_every_round_and_gives_medians_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = laneway()
        .args(["bench", "--scenario", "outage", "--mode", "both"])
        .args(["--rate", "2000", "--before", "300ms", "--outage", "500ms"])
        .args(["--max-run", "20s", "--rounds", "2", "--json"])
        .arg(&json)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("round 2 of 2"), "{stderr}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("2 rounds"), "{table}");
    let p99 = table
        .lines()
        .find(|l| l.starts_with("live latency p99 ms"))
        .unwrap_or_else(|| panic!("no p99 row:\n{table}"));
    assert_eq!(p99.matches('–').count(), 3, "a range per cell: {p99}");

    let mut bytes = std::fs::read(&json).unwrap();
    let report = simd_json::to_owned_value(&mut bytes).unwrap();
    let rounds = report.get("rounds").and_then(|r| r.as_array()).unwrap();
    assert_eq!(rounds.len(), 2);
    for round in rounds {
        let names: Vec<_> = round
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m.get("mode").and_then(|v| v.as_str()))
            .collect();
        assert_eq!(names, ["laneway", "fifo"]);
    }
    let modes = report.get("modes").and_then(|m| m.as_array()).unwrap();
    assert_eq!(modes.len(), 2, "the last round's, for the chart");
}

#[test]
fn a_short_outage_scenario_reports_both_modes_and_draws_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let svg = dir.path().join("out.svg");
    let out = laneway()
        .args([
            "bench",
            "--scenario",
            "outage",
            "--mode",
            "both",
            "--rate",
            "2000",
            "--before",
            "300ms",
            "--outage",
            "700ms",
            "--max-run",
            "20s",
            "--json",
        ])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("time to real-time ms") && table.contains("fifo/laneway"),
        "{table}"
    );

    let mut bytes = std::fs::read(&json).unwrap();
    let report = simd_json::to_owned_value(&mut bytes).unwrap();
    let modes = report
        .get("modes")
        .and_then(|m| m.as_array())
        .expect("modes");
    let names: Vec<_> = modes
        .iter()
        .filter_map(|m| m.get("mode").and_then(|v| v.as_str()))
        .collect();
    assert_eq!(names, ["laneway", "fifo"]);
    for m in modes {
        for field in [
            "scenario",
            "throughput_msgs_per_s",
            "live_latency_ms",
            "time_to_realtime_ms",
            "backlog_peak",
            "backlog_drain_ms",
            "phases",
        ] {
            assert!(m.get(field).is_some(), "{field} missing");
        }
        let phases = m.get("phases").unwrap();
        for p in ["1_before", "2_outage", "3_recovery"] {
            assert!(phases.get(p).is_some(), "phase {p} missing");
        }
        assert!(
            m.get("throughput_msgs_per_s")
                .and_then(|v| v.as_f64())
                .unwrap()
                > 0.0
        );
    }
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<polyline"), "the plot has lines");
}

#[test]
fn ctrl_c_stops_a_run_gracefully_with_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Watched::spawn(laneway().args(["run", "--json"]).current_dir(dir.path()));
    // The first status line ("[   1.0s] all: live ...") comes one status
    // interval after the engine started, whose first step listens for
    // Ctrl-C: from then on SIGINT stops the run instead of killing it.
    run.wait_for_line(Duration::from_secs(60), "the first status line", |l| {
        l.starts_with('[') && l.contains("all: live")
    });
    run.interrupt();
    let out = run.finish(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stderr.contains("stopping"), "{stderr}");
    assert!(stderr.contains("summary:"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("{\"elapsed_s\"")),
        "{stdout}"
    );
}

#[test]
fn every_shipped_example_config_passes_check_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs: Vec<_> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.push(root.join("laneway.example.toml"));
    assert!(configs.len() >= 5, "{configs:?}");
    // A build without some adapter refuses the examples that name it, and
    // says which feature it lacks; with every adapter, all of them pass.
    let every_adapter = cfg!(all(
        feature = "amqp",
        feature = "amqp1",
        feature = "kafka",
        feature = "pulsar",
        feature = "http"
    ));
    for config in configs {
        let out = laneway().arg("check-config").arg(&config).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success()
                || (!every_adapter && stderr.contains("this laneway was built without the `")),
            "{}: {stderr}",
            config.display(),
        );
    }
}

#[test]
fn help_says_which_features_were_built_and_hides_what_is_missing() {
    let out = laneway().arg("--help").output().unwrap();
    let top = String::from_utf8(out.stdout).unwrap();
    assert!(top.contains("Built with the features: "), "{top}");
    let out = laneway().args(["simulate", "--help"]).output().unwrap();
    let simulate = String::from_utf8(out.stdout).unwrap();
    // An option's own line, not a mention in another's text.
    let lists = |option: &str| {
        simulate
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{option} ")))
    };
    assert_eq!(lists("--pulsar"), cfg!(feature = "pulsar"), "{simulate}");
    assert_eq!(lists("--kafka"), cfg!(feature = "kafka"), "{simulate}");
    #[cfg(not(feature = "pulsar"))]
    {
        assert!(top.contains("without: ") && top.contains("pulsar"), "{top}");
        let out = laneway()
            .args([
                "simulate",
                "--pulsar",
                "pulsar://127.0.0.1:1",
                "--topic",
                "t",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("--pulsar: this laneway was built without the `pulsar` feature"),
            "{stderr}"
        );
    }
}

#[test]
fn quiet_hides_the_status_lines_and_keeps_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = laneway()
        .args(["run", "-q", "--duration", "2s", "--data-dir", "data"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.lines().any(|l| l.starts_with('[')),
        "-q keeps status lines out:\n{stderr}"
    );
    assert!(
        stderr.lines().any(|l| l.starts_with("summary:")),
        "-q keeps the summary:\n{stderr}"
    );
    let out = laneway()
        .args(["run", "-q", "--no-summary", "--duration", "1s"])
        .args(["--data-dir", "data2"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("summary:"), "--no-summary:\n{stderr}");
}

// Options of an adapter the build lacks are hidden.
#[cfg(all(
    feature = "amqp",
    feature = "amqp1",
    feature = "kafka",
    feature = "pulsar"
))]
#[test]
fn help_lists_every_scenario_source_and_sink_and_holds_no_code_reference() {
    let help = |args: &[&str]| {
        let out = laneway().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let top = help(&["--help"]);
    for word in [
        "JSONL",
        "AMQP 0-9-1",
        "stream",
        "Kafka",
        "AMQP 1.0",
        "Pulsar",
        "handler",
        "null",
        "catch-up",
    ] {
        assert!(top.contains(word), "laneway --help lacks {word:?}:\n{top}");
    }
    let bench = help(&["bench", "--help"]);
    for scenario in ["steady", "outage", "flood", "catch-up"] {
        assert!(
            bench.contains(scenario),
            "bench --help lacks {scenario}:\n{bench}"
        );
    }
    assert!(bench.contains("laneway.bench.backlog"), "{bench}");
    let simulate = help(&["simulate", "--help"]);
    for flag in [
        "--exchange",
        "--amqp1",
        "--kafka",
        "--partitions",
        "--pulsar",
        "--record",
    ] {
        assert!(
            simulate.contains(flag),
            "simulate --help lacks {flag}:\n{simulate}"
        );
    }
    let inspect = help(&["backlog", "inspect", "--help"]);
    assert!(inspect.contains("declared by the first"), "{inspect}");
    for (what, text) in [
        ("--help", &top),
        ("bench --help", &bench),
        ("simulate --help", &simulate),
        ("backlog inspect --help", &inspect),
        ("run --help", &help(&["run", "--help"])),
    ] {
        assert!(
            !text.contains("[`"),
            "{what} holds a code reference:\n{text}"
        );
    }
}

/// `laneway bench --scenario catch-up --piles 20000` with `args`, which
/// must fail before it starts anything: its stderr.
#[cfg(feature = "kafka")]
fn catch_up_refusal(args: &[&str]) -> String {
    let out = laneway()
        .args(["bench", "--scenario", "catch-up", "--piles", "20000"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    stderr
}

#[cfg(feature = "kafka")]
#[test]
fn the_catch_up_bench_refuses_a_pile_no_partition_would_split() {
    // 20,000 records over 32 partitions is 625 each, below the Kafka
    // source's catch_up_after (1,000): nothing would be split, so the
    // comparison would measure two plain consumers.
    let stderr = catch_up_refusal(&["--partitions", "32", "--max-run", "5s"]);
    assert!(stderr.contains("no partition would be split"), "{stderr}");
    assert!(stderr.contains("catch_up_after (1000)"), "{stderr}");
}

#[cfg(feature = "kafka")]
#[test]
fn the_catch_up_bench_refuses_zero_rounds() {
    let stderr = catch_up_refusal(&["--partitions", "8", "--rounds", "0"]);
    assert!(stderr.contains("--rounds"), "{stderr}");
}

/// A JSONL input with one line that is not an envelope: a dead letter at
/// ingest, which has no group.
fn dead_letter_run(dir: &std::path::Path, format: &str) -> String {
    std::fs::write(
        dir.join("in.jsonl"),
        concat!(
            r#"{"topic":"/pk/dn/thing/event/property/post","messageId":"1","generateTime":1795869908045,"payload":{}}"#,
            "\n",
            "not an envelope\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("laneway.toml"),
        "[[sources]]\ntype = \"jsonl\"\npath = \"in.jsonl\"\n[[groups]]\nname = \"all\"\nsink = { type = \"null\" }\n",
    )
    .unwrap();
    let out = laneway()
        .args(["run", "-q", "--no-summary", "--log-format", format])
        .args(["--config", "laneway.toml", "--data-dir", format])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

#[test]
fn a_dead_letter_log_line_has_plain_values_and_no_absent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let text = dead_letter_run(dir.path(), "text");
    let line = text
        .lines()
        .find(|l| l.contains("dead letter"))
        .unwrap_or_else(|| panic!("no dead-letter line in:\n{text}"));
    assert!(line.contains("origin=in.jsonl:2"), "{line}");
    for debug in ["Some(", "None", "group="] {
        assert!(!line.contains(debug), "{debug:?} in {line}");
    }

    let json = dead_letter_run(dir.path(), "json");
    let line = json
        .lines()
        .find(|l| l.contains("dead letter"))
        .unwrap_or_else(|| panic!("no dead-letter line in:\n{json}"));
    let mut bytes = line.as_bytes().to_vec();
    let value = simd_json::to_owned_value(&mut bytes).unwrap();
    let fields = value.get("fields").expect("fields");
    assert_eq!(
        fields.get("origin").and_then(|v| v.as_str()),
        Some("in.jsonl:2"),
        "{line}"
    );
    let group = fields.get("group");
    assert!(
        group.is_none() || group.is_some_and(|g| g.is_null()),
        "an absent group is left out or null: {line}"
    );
    assert!(!line.contains("None") && !line.contains("Some("), "{line}");
    // Every line on stderr is JSON: no text summary among them.
    for l in json.lines() {
        let mut b = l.as_bytes().to_vec();
        assert!(simd_json::to_owned_value(&mut b).is_ok(), "not JSON: {l}");
    }
}

#[test]
fn inspecting_an_empty_backlog_says_it_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        r#"{"topic":"/pk/dn/thing/event/property/post","messageId":"1","generateTime":1795869908045,"payload":{}}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("laneway.toml"),
        "[[sources]]\ntype = \"jsonl\"\npath = \"in.jsonl\"\n[[groups]]\nname = \"all\"\nsink = { type = \"null\" }\n",
    )
    .unwrap();
    let run = laneway()
        .args([
            "run",
            "-q",
            "--config",
            "laneway.toml",
            "--data-dir",
            "data",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out = laneway()
        .args(["backlog", "inspect", "data/backlog/all"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 records waiting"), "{text}");
    assert!(text.contains("empty"), "{text}");
    assert!(!text.contains("- old"), "{text}");
}

/// The program commits its allocator's memory as it is used and returns
/// freed pages at once (what keeps the embedded default under 64 MB),
/// set before the first allocation; an operator's
/// `MIMALLOC_ARENA_EAGER_COMMIT` or `MIMALLOC_PURGE_DELAY` still wins, each
/// apart. mimalloc's verbose start-up lists its options by name, which also
/// proves the options the program sets by number are the ones it means.
#[test]
fn the_allocator_commits_on_demand_and_purges_at_once_unless_the_operator_says_otherwise() {
    let options = |variables: &[(&str, &str)]| {
        let mut command = laneway();
        command.arg("--version").env("MIMALLOC_VERBOSE", "1");
        for (name, value) in variables {
            command.env(name, value);
        }
        let out = command.output().unwrap();
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let option = |name: &str| {
            let prefix = format!("option '{name}': ");
            stderr
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in mimalloc's start-up:\n{stderr}"))
        };
        (option("arena_eager_commit"), option("purge_delay"))
    };
    let owned = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(options(&[]), owned("0", "0"));
    assert_eq!(
        options(&[("MIMALLOC_ARENA_EAGER_COMMIT", "1")]),
        owned("1", "0")
    );
    assert_eq!(
        options(&[("MIMALLOC_ARENA_EAGER_COMMIT", "2")]),
        owned("2", "0")
    );
    assert_eq!(
        options(&[("MIMALLOC_PURGE_DELAY", "1000")]),
        owned("0", "1000")
    );
}
