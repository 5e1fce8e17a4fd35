//! Running the real `laneway` binary from tests: waiting for it with a
//! bound (a hang fails the test instead of stalling the suite), reading its
//! stderr line by line as it comes (for readiness), and the broker helpers
//! the tests that log in share.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Waits for `child` to exit; after `limit` it is killed and the test fails.
pub fn wait_or_kill(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("laneway did not exit within {limit:?}");
        }
    }
}

/// The lines `child` writes to stderr (which must be piped), as they come.
pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The broker's `host:port`: `AMQP_HOST_PORT`, or the local default.
pub fn broker() -> String {
    std::env::var("AMQP_HOST_PORT").unwrap_or_else(|_| "127.0.0.1:5672".into())
}

/// A unique name for a queue, user or vhost.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("laneway-{tag}-{}-{nanos}", std::process::id())
}

/// Runs `rabbitmqctl` quietly; whether it succeeded.
pub fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
