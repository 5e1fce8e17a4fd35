//! The admin listener cannot starve the data path: a run limited to 1,024
//! file descriptors keeps delivering and writing its backlog ledger while
//! 1,100 connections that send nothing sit on its admin port, and
//! `/healthz` still answers; a client that sends half a header is closed
//! after `header_read_timeout`; long polls count against
//! `max_connections`; a request naming the listener by a foreign `Host`
//! (DNS rebinding) is refused unless `allowed_hosts` names it.
//!
//! Synchronisation: the admin address comes from the run's stderr line;
//! progress is followed through `/status` (a long poll on the engine's
//! sampling), closes through a blocking read with a bounded timeout; every
//! wait has a deadline. A run ends by closing its stdin source.

#![cfg(feature = "admin")]

use crate::support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use simd_json::OwnedValue;
use simd_json::prelude::*;
use support::process::Watched;
use support::records::{Copies, Record, assert_delivered, json_records, records_in_jsonl};

const RUN_LIMIT: Duration = Duration::from_secs(120);

/// How many idle connections the flood opens (the probe: more than
/// the run's 1,024 descriptors).
fn flood_size() -> usize {
    std::env::var("LANEWAY_ADMIN_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_100)
}

/// One request on a fresh connection with the given `Host` header line
/// (none when `None`); the status code and body, or the I/O error (a
/// connection closed unanswered). Bounded by `limit` per read.
fn request(
    addr: SocketAddr,
    path: &str,
    host: Option<&str>,
    limit: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    let host = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
    write!(s, "GET {path} HTTP/1.1\r\n{host}Connection: close\r\n\r\n")?;
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            if head.is_empty() {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            break;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {head:?}")))?;
    let mut body = String::new();
    reader.read_to_string(&mut body)?;
    Ok((code, body))
}

fn json(text: &str) -> OwnedValue {
    let mut bytes = text.as_bytes().to_vec();
    simd_json::to_owned_value(&mut bytes).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Reads until the peer closes; `Ok` when it closed (EOF or reset) within
/// `limit`, `Err` with what happened otherwise.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Result<(), String> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!(
            "it answered: {:?}",
            String::from_utf8_lossy(&buf[..n])
        )),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => Ok(()),
        Err(e) => Err(format!("still open after {limit:?} ({e})")),
    }
}

struct Run {
    watched: Watched,
    admin: SocketAddr,
    stdin: Option<std::process::ChildStdin>,
    tmp: tempfile::TempDir,
}

impl Run {
    /// Starts `laneway run --admin 127.0.0.1:0` under `ulimit -n
    /// {nofile}`, reading stdin into one group `g` with a disk backlog and
    /// a JSONL sink, with `admin_extra` knobs in `[admin]`.
    fn start(nofile: u32, admin_extra: &str) -> Run {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let config = dir.join("l.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\nstatus_interval = \"200ms\"\n\
                 [admin]\n{admin_extra}\n\
                 [[sources]]\ntype = \"jsonl\"\npath = \"-\"\n\
                 [[groups]]\nname = \"g\"\nslots = 2\nbatch_size = 50\n\
                 sink = {{ type = \"jsonl\", path = {out:?} }}\n",
                data = dir.join("data"),
                out = dir.join("out.jsonl"),
            ),
        )
        .unwrap();
        let mut watched = Watched::spawn(
            Command::new("sh")
                .arg("-c")
                .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
                .arg(env!("CARGO_BIN_EXE_laneway"))
                .args(["run", "--admin", "127.0.0.1:0", "--config"])
                .arg(&config)
                .stdin(Stdio::piped()),
        );
        let stdin = watched.take_stdin();
        let line =
            watched.wait_for_line(Duration::from_secs(60), "the admin listener's line", |l| {
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
            tmp,
        }
    }

    fn send(&mut self, records: &[Record]) {
        let stdin = self.stdin.as_mut().unwrap();
        let mut text = String::new();
        for r in records {
            text.push_str(&r.envelope_line());
            text.push('\n');
        }
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Follows `/status` until group `g` has delivered `n`, retrying a
    /// request that fails (the listener may be busy shedding connections),
    /// all within `limit`.
    fn wait_delivered(&self, n: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut after: Option<u64> = None;
        let mut last = String::new();
        while Instant::now() < deadline {
            let path = after.map_or("/status".to_string(), |s| format!("/status?after={s}"));
            let host = self.admin.to_string();
            match request(self.admin, &path, Some(&host), Duration::from_secs(40)) {
                Ok((200, body)) => {
                    let status = json(&body);
                    after = status["seq"].as_u64();
                    if status["groups"][0]["delivered"].as_u64() == Some(n) {
                        return;
                    }
                    last = body;
                }
                Ok((code, body)) => last = format!("{code} {body}"),
                Err(e) => last = e.to_string(),
            }
        }
        panic!("group g did not deliver {n} within {limit:?}; last /status: {last}");
    }

    /// Closes stdin; the run drains and exits 0. Its stderr and what the
    /// sink holds.
    fn finish(mut self) -> (String, Vec<Record>, tempfile::TempDir) {
        drop(self.stdin.take());
        let out = self.watched.finish(RUN_LIMIT);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let delivered = records_in_jsonl(&self.tmp.path().join("out.jsonl"));
        (stderr, delivered, self.tmp)
    }
}

/// Stale records (an hour old: they go through the disk backlog and its
/// ledger) and fresh ones, with payloads that are JSON strings holding
/// escapes, NULs and non-ASCII text besides objects.
fn records(prefix: &str, n: u64) -> Vec<Record> {
    let now = laneway::message::now_epoch_ms();
    let mut r = json_records(prefix, n, |i| {
        if i % 2 == 0 {
            now - 3_600_000 - i as i64
        } else {
            now + 3_600_000
        }
    });
    for (i, rec) in r.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
        rec.payload = format!("\"\\u0000 é \\\"{i}\\\" \\ud83d\\ude00\"").into_bytes();
    }
    r
}

fn files_under(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn a_flood_of_idle_connections_does_not_starve_the_data_path() {
    let mut run = Run::start(1024, "header_read_timeout = \"2s\"");
    let first = records("a", 2_000);
    run.send(&first);
    run.wait_delivered(first.len() as u64, RUN_LIMIT);

    // Half a header: closed after header_read_timeout.
    let mut half = TcpStream::connect(run.admin).unwrap();
    half.write_all(b"GET /status HTTP/1.1\r\nHo").unwrap();
    // The flood: connections that send nothing, held open by the test.
    let mut flood = Vec::with_capacity(flood_size());
    let mut refused = 0usize;
    for _ in 0..flood_size() {
        match TcpStream::connect_timeout(&run.admin, Duration::from_secs(2)) {
            Ok(s) => flood.push(s),
            Err(_) => refused += 1,
        }
    }
    // While it sits there, the data path delivers through its backlog and
    // writes its ledger, and the health check answers.
    let second = records("b", 2_000);
    run.send(&second);
    let host = run.admin.to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let healthy = loop {
        match request(run.admin, "/healthz", Some(&host), Duration::from_secs(5)) {
            Ok((200, body)) => break body,
            Ok(other) => panic!("/healthz answered {other:?}"),
            Err(e) if Instant::now() < deadline => {
                eprintln!("/healthz not answered yet: {e}");
            }
            Err(e) => panic!(
                "/healthz did not answer within 30 s of a flood of {} connections: {e}",
                flood.len()
            ),
        }
    };
    assert_eq!(healthy, "ok\n");
    run.wait_delivered((first.len() + second.len()) as u64, RUN_LIMIT);
    closed_within(&mut half, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("a connection that sent half a header: {e}"));
    eprintln!(
        "flood: {} connections held, {refused} not established",
        flood.len()
    );
    drop(flood);

    let (stderr, delivered, tmp) = run.finish();
    let mut sent = first;
    sent.extend(second);
    assert_delivered(&sent, &delivered, Copies::AtLeastOnce);
    for bad in ["Too many open files", "ledger", "checkpoint"] {
        assert!(
            !stderr.contains(bad),
            "the data path reported trouble ({bad}):\n{stderr}"
        );
    }
    // The backlog was used (stale records) and its ledger written.
    let mut files = Vec::new();
    files_under(&tmp.path().join("data"), &mut files);
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().contains("backlog")),
        "no backlog files in {files:?}"
    );
}

#[test]
fn long_polls_count_against_the_connection_cap() {
    let mut run = Run::start(1024, "max_connections = 3");
    run.send(&records("c", 10));
    run.wait_delivered(10, RUN_LIMIT);
    // Three long polls for a sample far in the future hold every slot.
    let host = run.admin.to_string();
    let poll = || {
        let mut s = TcpStream::connect(run.admin).unwrap();
        write!(
            s,
            "GET /status?after=999999999 HTTP/1.1\r\nHost: {host}\r\n\r\n"
        )
        .unwrap();
        s.set_nonblocking(true).unwrap();
        s
    };
    let mut polls: Vec<TcpStream> = (0..3).map(|_| poll()).collect();
    // A fourth connection is closed unanswered once the three are being
    // handled. Until the listener has read a poll's request, that poll is
    // idle and a newer connection may take its slot: such a poll is
    // opened again, and the check repeats (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut served = 0;
    loop {
        for s in &mut polls {
            let mut buf = [0u8; 16];
            match s.read(&mut buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Ok(0) | Err(_) => *s = poll(),
                Ok(_) => panic!("a long poll was answered early"),
            }
        }
        match request(run.admin, "/healthz", Some(&host), Duration::from_secs(5)) {
            Err(_) => break,
            Ok(answer) => {
                served += 1;
                assert!(
                    Instant::now() < deadline,
                    "a fourth connection was served beside three long polls ({served} times): {answer:?}"
                );
            }
        }
    }
    drop(polls);
    run.finish();
}

#[test]
fn a_foreign_host_is_refused_unless_allowed() {
    let mut run = Run::start(1024, "allowed_hosts = [\"dash.example\"]");
    let port = run.admin.port();
    let limit = Duration::from_secs(10);
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "dash.example".to_string(),
        format!("DASH.example:{port}"),
    ] {
        let answer = request(run.admin, "/healthz", Some(&host), limit).unwrap();
        assert_eq!(answer, (200, "ok\n".to_string()), "Host: {host}");
    }
    for host in [
        Some(format!("rebound.example:{port}")),
        Some("127.0.0.1.rebound.example".to_string()),
        None,
    ] {
        let (code, body) = request(run.admin, "/status", host.as_deref(), limit).unwrap();
        assert_eq!(code, 403, "Host: {host:?}: {body}");
        assert!(!body.contains("groups"), "{body}");
    }
    run.send(&records("d", 5));
    run.wait_delivered(5, RUN_LIMIT);
    run.finish();
}
