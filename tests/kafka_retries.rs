//! A Kafka source with no broker to reach says so quietly: one warning per
//! retry interval (the interval doubling), the other client errors counted
//! in `laneway_source_unlogged_errors`, and its lag shown as unknown
//! (null), not as 0. Through the real binary at the default log level.
//!
//! Synchronisation: the admin address comes from the run's stderr line;
//! `/status?after=N` waits on the engine's sampling; the run ends on its
//! own `--duration`. Every wait has a deadline.

#![cfg(all(feature = "kafka", feature = "admin"))]

use crate::support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use simd_json::OwnedValue;
use simd_json::prelude::*;
use support::process::Watched;

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{raw}");
    body.to_string()
}

fn json(text: &str) -> OwnedValue {
    let mut bytes = text.as_bytes().to_vec();
    simd_json::to_owned_value(&mut bytes).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn no_broker_means_one_warning_per_interval_and_an_unknown_lag() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("l.toml");
    std::fs::write(
        &config,
        "status_interval = \"200ms\"\n[[sources]]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:1\"\ntopics = [\"t\"]\n\
         [[groups]]\nname = \"g\"\nsink = { type = \"null\" }\nbacklog = { store = \"memory\" }\n",
    )
    .unwrap();
    let mut run = Watched::spawn(
        Command::new(env!("CARGO_BIN_EXE_laneway"))
            .args(["run", "--duration", "9s", "--admin", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG"),
    );
    let line = run.wait_for_line(Duration::from_secs(60), "the admin listener's line", |l| {
        l.contains("admin listener on http://")
    });
    let admin: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    // Past librdkafka's first statistics (every 5 s): the lag is unknown.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = 0u64;
    let status = loop {
        let status = json(&get(admin, &format!("/status?after={after}")));
        after = status["seq"].as_u64().unwrap();
        if status["uptime_s"].as_f64().unwrap() >= 6.5 {
            break status;
        }
        assert!(Instant::now() < deadline, "{status:?}");
    };
    let source = &status["sources"][0];
    assert!(source["lag"].is_null(), "lag shown as known: {source:?}");
    assert!(!source["trouble"].is_null(), "no trouble shown: {source:?}");
    let metrics = get(admin, "/metrics");
    let unlogged: f64 = metrics
        .lines()
        .find(|l| l.starts_with("laneway_source_unlogged_errors_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or_else(|| panic!("no unlogged errors counted:\n{metrics}"));
    assert!(unlogged > 0.0, "{metrics}");

    let out = run.finish(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    // 9 s: warnings at about 0, 1, 3 and 7 s (quiet 1, 2, 4, then 8 s).
    assert!(
        (1..=5).contains(&warnings.len()),
        "{} warnings in 9 s:\n{}",
        warnings.len(),
        warnings.join("\n")
    );
    assert!(
        warnings[0].contains("next_warning_in_ms"),
        "the warning does not say when the next comes: {}",
        warnings[0]
    );
}
