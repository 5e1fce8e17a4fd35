//! Every series `/metrics` emits has a label set of its own: the embedded
//! default (two simulator sources) parsed by an OpenMetrics parser, with
//! no (metric, labels) pair twice; `/status` names its sources apart.
//!
//! Synchronisation: the admin address comes from the run's stderr line;
//! `/status?after=N` waits for the engine's next sample; the run ends on
//! its own `--duration`.

#![cfg(feature = "admin")]

use crate::support;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

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

#[test]
fn the_embedded_default_emits_every_series_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Watched::spawn(
        Command::new(env!("CARGO_BIN_EXE_laneway"))
            .args([
                "run",
                "--duration",
                "4s",
                "--admin",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path().join("data")),
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
    // After a sample with traffic: every family has its series.
    let status = get(admin, "/status?after=1");
    let mut bytes = status.clone().into_bytes();
    let parsed = simd_json::to_owned_value(&mut bytes).unwrap();
    let names: Vec<String> = parsed["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{status}");
    assert_eq!(
        names.iter().collect::<HashSet<_>>().len(),
        names.len(),
        "/status shows sources with one name: {names:?}"
    );
    let text = get(admin, "/metrics");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let mut seen = HashSet::new();
    for sample in &scrape.samples {
        let labels: BTreeMap<_, _> = sample.labels.iter().collect();
        let key = format!("{}{labels:?}", sample.metric);
        assert!(
            seen.insert(key.clone()),
            "a duplicate series: {key}\n{text}"
        );
    }
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "laneway_source_received_items_total"),
        "{text}"
    );
    let out = run.finish(Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
