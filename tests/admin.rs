//! The admin listener through the real binary: `/metrics` parsed by an
//! exposition-format parser matches the run's JSON summary; `/status`
//! follows a pile draining (depth falls, the ETA is finite and shrinks,
//! `catching_up` becomes `realtime`); the dashboard renders in headless
//! Chromium (through chromedriver) with data and the state `/status`
//! gives; a taken port is refused; no listener unless configured.
//!
//! Synchronisation: the admin address comes from the run's own stderr line;
//! `/status?after=N` is a long poll that answers when the tracker takes its
//! next sample (every `status_interval`), so following the status is waiting
//! on the engine, never sleeping; the browser is waited on with an async
//! script that resolves on the page's own update event. Every wait has a
//! deadline. A run is ended by closing its stdin source (it then drains and
//! exits with its summary).

#![cfg(feature = "admin")]

use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use simd_json::OwnedValue;
use simd_json::prelude::*;
use support::process::Watched;
use support::records::{Copies, Record, assert_delivered, json_records, records_in_jsonl};

const RUN_LIMIT: Duration = Duration::from_secs(180);

/// One HTTP/1.1 request to `addr` (Connection: close); the status code and
/// the body. Bounded by a read timeout.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Headers, then the body by its length (a server may keep the
    // connection open despite `Connection: close`), or to the end.
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap());
    let mut raw = Vec::new();
    match length {
        Some(n) => {
            raw.resize(n, 0);
            reader.read_exact(&mut raw).unwrap();
        }
        None => {
            reader.read_to_end(&mut raw).unwrap();
        }
    }
    let rest = String::from_utf8_lossy(&raw).into_owned();
    let body = if lower.contains("transfer-encoding: chunked") {
        unchunk(&rest)
    } else {
        rest
    };
    (code, body)
}

fn unchunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, tail) = rest.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, None)
}

fn json(text: &str) -> OwnedValue {
    let mut bytes = text.as_bytes().to_vec();
    simd_json::to_owned_value(&mut bytes).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Writes `records` as envelope lines, with `malformed` lines that are no
/// envelope at the end.
fn write_pile(path: &Path, records: &[Record], malformed: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for r in records {
        writeln!(f, "{}", r.envelope_line()).unwrap();
    }
    for i in 0..malformed {
        writeln!(f, "not an envelope {i}").unwrap();
    }
    f.flush().unwrap();
}

struct Run {
    watched: Watched,
    admin: SocketAddr,
    stdin: Option<std::process::ChildStdin>,
    _tmp: tempfile::TempDir,
    out: PathBuf,
}

/// Starts `laneway run --admin 127.0.0.1:0 --json` on a config of a pile
/// file, stdin (which keeps the run alive until the test closes it) and
/// one group `g` with `group_extra` knobs, writing to a JSONL sink.
fn start(pile: &[Record], malformed: usize, group_extra: &str) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (input, out, config) = (
        dir.join("pile.jsonl"),
        dir.join("out.jsonl"),
        dir.join("l.toml"),
    );
    write_pile(&input, pile, malformed);
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\nstatus_interval = \"200ms\"\n\
             [[sources]]\ntype = \"jsonl\"\npath = {input:?}\n\
             [[sources]]\ntype = \"jsonl\"\npath = \"-\"\n\
             [[groups]]\nname = \"g\"\nslots = 2\nbatch_size = 100\n{group_extra}\n\
             sink = {{ type = \"jsonl\", path = {out:?} }}\n",
            data = dir.join("data"),
        ),
    )
    .unwrap();
    let mut watched = Watched::spawn(
        Command::new(env!("CARGO_BIN_EXE_laneway"))
            .args(["run", "--json", "--admin", "127.0.0.1:0", "--config"])
            .arg(&config)
            .stdin(Stdio::piped()),
    );
    let stdin = watched.take_stdin();
    let line = watched.wait_for_line(Duration::from_secs(60), "the admin listener's line", |l| {
        l.contains("admin listener on http://")
    });
    let admin = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    Run {
        watched,
        admin,
        stdin,
        _tmp: tmp,
        out,
    }
}

impl Run {
    /// Follows `/status` sample by sample until `done` holds for one.
    fn follow(&self, what: &str, mut each: impl FnMut(&OwnedValue) -> bool) -> OwnedValue {
        let deadline = Instant::now() + RUN_LIMIT;
        let mut after = None::<u64>;
        loop {
            assert!(
                Instant::now() < deadline,
                "no /status sample showed {what} within {RUN_LIMIT:?}"
            );
            let path = after.map_or("/status".to_string(), |n| format!("/status?after={n}"));
            let (code, body) = get(self.admin, &path);
            assert_eq!(code, 200, "{body}");
            let status = json(&body);
            after = status["seq"].as_u64();
            if each(&status) {
                return status;
            }
        }
    }

    /// Closes stdin; the run drains and exits. Its JSON summary.
    fn finish(self) -> (OwnedValue, PathBuf, tempfile::TempDir) {
        let (summary, out, tmp, _) = self.finish_with_stderr();
        (summary, out, tmp)
    }

    /// [`Run::finish`], with the run's stderr.
    fn finish_with_stderr(mut self) -> (OwnedValue, PathBuf, tempfile::TempDir, String) {
        drop(self.stdin.take());
        let out = self.watched.finish(RUN_LIMIT);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let summary = support::process::json_summary(&out.stdout);
        (summary, self.out, self._tmp, stderr)
    }
}

fn group(status: &OwnedValue) -> &OwnedValue {
    &status["groups"][0]
}

/// A pile: `stale` records an hour old and `fresh` ones stamped in the
/// future (fresh by any window), ids unique.
fn pile(stale: u64, fresh: u64) -> Vec<Record> {
    let now = laneway::message::now_epoch_ms();
    let mut r = json_records("s", stale, |i| now - 3_600_000 - i as i64);
    r.extend(json_records("f", fresh, |i| now + 3_600_000 + i as i64));
    r
}

#[test]
fn metrics_after_a_stale_pile_match_the_json_summary() {
    let sent = pile(6_000, 2_000);
    let run = start(&sent, 3, "");
    // Drained: every message delivered and the backlog empty.
    run.follow("the pile delivered", |s| {
        let g = group(s);
        // Time in the backlog is named for what it is (not an age), and
        // the disk store tells it whenever it holds a record.
        assert!(g.get("backlog_oldest_age_s").is_none(), "{g:?}");
        let stored = g
            .get("backlog_oldest_stored_s")
            .expect("backlog_oldest_stored_s");
        if g["backlog_depth"].as_u64() > Some(0) {
            assert!(stored.as_f64().is_some_and(|s| s >= 0.0), "{g:?}");
        }
        g["delivered"].as_u64() == Some(sent.len() as u64) && g["backlog_depth"].as_u64() == Some(0)
    });
    let (code, text) = get(run.admin, "/metrics");
    assert_eq!(code, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let found: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?} in:\n{text}");
        match found[0].value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    // HELP text for every family.
    for family in [
        "laneway_group_delivered_messages",
        "laneway_group_live_latency_seconds",
        "laneway_source_received_items",
    ] {
        assert!(
            scrape.docs.get(family).is_some_and(|d| !d.is_empty()),
            "no HELP for {family}"
        );
    }
    let metrics_live = value(
        "laneway_group_delivered_messages_total",
        &[("group", "g"), ("lane", "live")],
    );
    let metrics_backlog = value(
        "laneway_group_delivered_messages_total",
        &[("group", "g"), ("lane", "backlog")],
    );
    let stale = value(
        "laneway_group_diverted_messages_total",
        &[("group", "g"), ("reason", "stale")],
    );
    let push_limited = value(
        "laneway_group_diverted_messages_total",
        &[("group", "g"), ("reason", "push_limited")],
    );
    let admitted = value("laneway_group_admitted_messages_total", &[("group", "g")]);
    let malformed = value(
        "laneway_ingest_dead_letters_total",
        &[("reason", "malformed")],
    );
    let ingested = value("laneway_ingested_items_total", &[]);
    let latency_count = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "laneway_group_live_latency_seconds" && s.labels.get("group") == Some("g")
        })
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            other => panic!("{other:?}"),
        })
        .expect("the latency histogram");
    let received: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "laneway_source_received_items_total")
        .map(|s| match s.value {
            // prometheus-parse reads an OpenMetrics counter's `_total`
            // samples as untyped (its TYPE line names the family).
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(
        value("laneway_group_backlog_depth_messages", &[("group", "g")]),
        0.0
    );
    assert_eq!(
        value("laneway_group_live_capacity_messages", &[("group", "g")]),
        10_000.0
    );
    assert_eq!(value("laneway_group_slots", &[("group", "g")]), 2.0);

    let (summary, out, _tmp) = run.finish();
    let g = &summary["groups"][0];
    let n = |v: &OwnedValue| v.as_u64().unwrap() as f64;
    assert_eq!(metrics_live, n(&summary["delivered_live"]));
    assert_eq!(metrics_backlog, n(&summary["delivered_backlog"]));
    assert_eq!(metrics_live + metrics_backlog, sent.len() as f64);
    assert_eq!(stale, n(&g["diverted_stale"]));
    assert_eq!(stale, 6_000.0, "every stale record went to the backlog");
    assert_eq!(push_limited, n(&g["diverted_full"]));
    assert_eq!(admitted, n(&g["admitted"]));
    assert_eq!(malformed, n(&summary["dead_letter"]));
    assert_eq!(malformed, 3.0);
    assert_eq!(ingested, n(&summary["ingested"]));
    assert_eq!(received, ingested);
    assert_eq!(latency_count, n(&g["live_latency_ms"]["count"]));
    assert_eq!(latency_count, metrics_live);
    // What was delivered is what was sent, byte for byte.
    assert_delivered(&sent, &records_in_jsonl(&out), Copies::ExactlyOnce);
}

#[test]
fn status_follows_a_pile_from_catching_up_to_realtime() {
    // 20,000 stale records drained at 4,000/s: about five seconds of
    // catching up, sampled every 200 ms.
    let sent = pile(20_000, 0);
    let run = start(&sent, 0, "backlog_rate = 4000.0");
    let mut seen = Vec::new();
    let last = run.follow("realtime after the pile", |s| {
        let g = group(s);
        let state = g["state"].as_str().unwrap().to_string();
        seen.push((
            state.clone(),
            g["backlog_depth"].as_u64().unwrap(),
            g["drain_eta_s"].as_f64(),
            g["drain_eta"].as_str().unwrap().to_string(),
            g["delivered"].as_u64().unwrap(),
        ));
        state == "realtime" && g["delivered"].as_u64() == Some(sent.len() as u64)
    });
    let trace = || format!("{seen:#?}");
    let catching: Vec<_> = seen.iter().filter(|s| s.0 == "catching_up").collect();
    assert!(
        catching.len() >= 3,
        "too few catching_up samples: {}",
        trace()
    );
    assert!(catching.iter().all(|s| s.1 > 0), "{}", trace());
    // From the peak on, the depth only falls.
    let peak = seen.iter().enumerate().max_by_key(|(_, s)| s.1).unwrap().0;
    assert!(
        seen[peak..].windows(2).all(|w| w[1].1 <= w[0].1),
        "{}",
        trace()
    );
    // The ETA is finite while draining, and shrinks.
    let etas: Vec<f64> = seen[peak..]
        .iter()
        .filter(|s| s.0 == "catching_up")
        .filter_map(|s| s.2)
        .collect();
    assert!(etas.len() >= 2, "no finite ETAs: {}", trace());
    assert!(
        etas.iter().all(|e| e.is_finite() && *e > 0.0),
        "{}",
        trace()
    );
    assert!(
        etas.last().unwrap() < etas.first().unwrap(),
        "the ETA did not shrink: {}",
        trace()
    );
    // No state other than these two on the way.
    assert!(
        seen.iter()
            .all(|s| s.0 == "catching_up" || s.0 == "realtime"),
        "{}",
        trace()
    );
    assert_eq!(group(&last)["drain_eta"].as_str(), Some("drained"));
    // Sources are connected, and /readyz says so; /healthz answers.
    assert!(
        last["sources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"].as_str() == Some("connected"))
    );
    assert_eq!(get(run.admin, "/readyz").0, 200);
    assert_eq!(get(run.admin, "/healthz"), (200, "ok\n".to_string()));
    // The status line shows the ETA while catching up.
    let (summary, out, _tmp, stderr) = run.finish_with_stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with('[') && l.contains("| eta ")),
        "{stderr}"
    );
    assert_eq!(summary["delivered_backlog"].as_u64(), Some(20_000));
    assert_delivered(&sent, &records_in_jsonl(&out), Copies::ExactlyOnce);
}

#[test]
fn a_taken_port_is_refused_and_no_listener_runs_unless_configured() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = support::process::wait_or_kill(
        Command::new(env!("CARGO_BIN_EXE_laneway"))
            .args([
                "run",
                "--quiet",
                "--duration",
                "30s",
                "--admin",
                &addr.to_string(),
            ])
            .current_dir(tempfile::tempdir().unwrap().path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("error: admin listener: cannot listen on {addr}"))
            && stderr.contains("in use"),
        "{stderr}"
    );

    // Without --admin or [admin], nothing listens: the run's stderr never
    // announces a listener (its status lines come, its summary ends it).
    let sent = pile(10, 0);
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    write_pile(&input, &sent, 0);
    let config = tmp.path().join("l.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[[sources]]\ntype = \"jsonl\"\npath = {input:?}\n[[groups]]\nname = \"g\"\nsink = {{ type = \"null\" }}\n",
            tmp.path().join("data")
        ),
    )
    .unwrap();
    let out = support::process::wait_or_kill(
        Command::new(env!("CARGO_BIN_EXE_laneway"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        RUN_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("admin listener"), "{stderr}");
}

// ------------------------------------------------------------- the browser

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian packages chromium and chromium-driver; scripts/test installs them)");
    // Ready once it says so on stdout.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("chromedriver did not start within 30 s");
        if line.contains("started successfully") {
            break;
        }
    }
    Driver {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// One WebDriver command; its `value`.
fn wd(driver: &Driver, method: &str, path: &str, body: Option<&str>) -> OwnedValue {
    let (code, text) = http(driver.addr, method, path, body);
    assert_eq!(code, 200, "{method} {path}: {text}");
    json(&text)["value"].clone()
}

fn base64_decode(text: &str) -> Vec<u8> {
    let table = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u32> = text.bytes().filter_map(table).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | d << (18 - 6 * i));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

#[test]
#[cfg_attr(
    not(feature = "browser-tests"),
    ignore = "needs Chromium and ChromeDriver: scripts/test installs them and turns on browser-tests"
)]
fn the_dashboard_renders_charts_and_the_state_of_status_in_chromium() {
    // A pile drained slowly beside a live stream: the charts have both lanes.
    let mut sent = pile(30_000, 0);
    sent.extend(pile(0, 3_000));
    let run = start(&sent, 0, "backlog_rate = 3000.0");
    // A few samples in, so the charts have history.
    run.follow("a few samples of catching up", |s| {
        s["seq"].as_u64() >= Some(8) && group(s)["state"].as_str() == Some("catching_up")
    });
    let driver = chromedriver();
    let caps = r#"{"capabilities":{"alwaysMatch":{"goog:chromeOptions":{"args":["--headless=new","--no-sandbox","--disable-gpu","--disable-dev-shm-usage","--window-size=1280,1000"]}}}}"#;
    let session = wd(&driver, "POST", "/session", Some(caps));
    let id = session["sessionId"].as_str().unwrap().to_string();
    let base = format!("/session/{id}");
    wd(
        &driver,
        "POST",
        &format!("{base}/timeouts"),
        Some(r#"{"script":60000,"pageLoad":60000}"#),
    );
    wd(
        &driver,
        "POST",
        &format!("{base}/url"),
        Some(&format!(r#"{{"url":"http://{}/"}}"#, run.admin)),
    );
    // Wait, in the page, for its third render (each follows a /status sample).
    let script = r#"{"script":"const done = arguments[arguments.length - 1]; const check = () => { if (Number(document.body.dataset.updates || 0) >= 3) { done(true); } else { new MutationObserver((_, o) => { o.disconnect(); check(); }).observe(document.body, {attributes: true}); } }; check();","args":[]}"#;
    assert_eq!(
        wd(
            &driver,
            "POST",
            &format!("{base}/execute/async"),
            Some(script)
        )
        .as_bool(),
        Some(true)
    );
    // What the page shows, and /status right after.
    let read = r#"{"script":"const g = document.querySelector('section.group[data-group=g]'); return { state: g.querySelector('.state').dataset.state, stateText: g.querySelector('.state').textContent, eta: g.querySelector('.eta').textContent, points: [...g.querySelectorAll('svg')].map(s => Number(s.dataset.points)), paths: g.querySelectorAll('svg path.series').length, seq: document.getElementById('meta').textContent };","args":[]}"#;
    let page = wd(&driver, "POST", &format!("{base}/execute/sync"), Some(read));
    let (_, body) = get(run.admin, "/status");
    let status = json(&body);
    let png = base64_decode(
        wd(&driver, "GET", &format!("{base}/screenshot"), None)
            .as_str()
            .unwrap(),
    );
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG screenshot");
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("dashboard.png"), &png).unwrap();
    let _ = http(driver.addr, "DELETE", &base, None);

    // Three charts, each drawn with data points.
    let points: Vec<u64> = page["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(points.len(), 3, "{page:?}");
    assert!(
        points.iter().all(|&p| p >= 2),
        "charts without data: {page:?}"
    );
    assert!(page["paths"].as_u64() >= Some(4), "{page:?}");
    // The state the page shows is the one /status gives (the pile is
    // still draining at 3,000/s, so both say catching up).
    let state = group(&status)["state"].as_str().unwrap();
    assert_eq!(
        page["state"].as_str(),
        Some(state),
        "page {page:?} vs status {body}"
    );
    assert_eq!(
        page["stateText"].as_str(),
        Some(state.replace('_', " ").as_str())
    );
    assert!(
        page["eta"].as_str().unwrap().contains("drained in about")
            || page["eta"].as_str().unwrap().contains("growing"),
        "{page:?}"
    );
    let (summary, out, _tmp) = run.finish();
    assert_eq!(summary["delivered"].as_u64(), Some(sent.len() as u64));
    assert_delivered(&sent, &records_in_jsonl(&out), Copies::ExactlyOnce);
}
