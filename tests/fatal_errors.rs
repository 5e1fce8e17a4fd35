//! Fatal source errors end `laneway run` with exit status 1 and one clear
//! `error:` line naming the source (never a password); transient ones are
//! retried with a WARN line per retry. Runs the real binary against the
//! real RabbitMQ on 127.0.0.1:5672 (or the one `AMQP_URL` names); those
//! tests need the `amqp` feature.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support;
#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
use support::broker::{broker_lock, host_port, rabbitmqctl};
#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
use support::names::unique;
#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
use support::process::stderr_lines;
use support::process::wait_or_kill;

/// How long a run may take before the test calls it hung.
const HANG: Duration = Duration::from_secs(90);

/// Runs `laneway run -q -c laneway.toml` in `dir` with `toml` as the config
/// and waits for it to exit (killing it and failing after [`HANG`]).
fn run_config(dir: &Path, toml: &str) -> Output {
    std::fs::write(dir.join("laneway.toml"), toml).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "-q", "-c", "laneway.toml", "--data-dir", "data"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_or_kill(child, HANG)
}

/// The run failed with status 1 and exactly one `error:` line, which holds
/// every one of `needles`; returns that line.
fn assert_fatal(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "stderr:\n{stderr}");
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "{needle:?} missing in {:?}",
            errors[0]
        );
    }
    errors[0].to_string()
}

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
fn amqp_config(url: &str, queue: &str, declare: bool) -> String {
    format!(
        "[[sources]]\ntype = \"amqp\"\nurl = \"{url}\"\nqueues = [\"{queue}\"]\ndeclare = {declare}\n\
         reconnect_initial = \"100ms\"\n\n[[groups]]\nname = \"all\"\nsink = {{ type = \"null\" }}\n\
         backlog = {{ store = \"memory\" }}\n"
    )
}

#[test]
fn a_missing_jsonl_file_exits_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_config(
        dir.path(),
        "[[sources]]\ntype = \"jsonl\"\npath = \"no-such-input.jsonl\"\n\n\
         [[groups]]\nname = \"all\"\nsink = { type = \"null\" }\n",
    );
    assert_fatal(&out, &["no-such-input.jsonl", "No such file"]);
}

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
#[test]
fn a_missing_queue_with_declare_false_exits_1_naming_the_queue() {
    let _lock = broker_lock(false);
    let dir = tempfile::tempdir().unwrap();
    let queue = unique("missing");
    let url = format!("amqp://guest:guest@{}/%2f", host_port());
    let out = run_config(dir.path(), &amqp_config(&url, &queue, false));
    assert_fatal(&out, &[&queue, "does not exist", "guest:***@"]);
}

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
#[test]
fn a_wrong_password_exits_1_without_showing_it() {
    let _lock = broker_lock(false);
    let dir = tempfile::tempdir().unwrap();
    let password = "Wr0ng-Pa55-Zq81";
    let url = format!("amqp://guest:{password}@{}/%2f", host_port());
    let out = run_config(dir.path(), &amqp_config(&url, "laneway-never-used", true));
    assert_fatal(&out, &["login refused for user \"guest\"", "guest:***@"]);
    for stream in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(stream).contains("Pa55"));
    }
}

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
#[test]
fn a_missing_vhost_exits_1_naming_it() {
    let _lock = broker_lock(false);
    let dir = tempfile::tempdir().unwrap();
    let vhost = unique("no-vhost");
    let url = format!("amqp://guest:guest@{}/{vhost}", host_port());
    let out = run_config(dir.path(), &amqp_config(&url, "laneway-never-used", true));
    // The user name is shown even when it equals the password (guest/guest):
    // the advice names no password, and the URL stays redacted.
    assert_fatal(
        &out,
        &["virtual host", &vhost, "user \"guest\"", "guest:***@"],
    );
}

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
#[test]
fn an_unknown_host_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // No password: nothing would cross the network in clear.
    let url = "amqp://guest@no-such-host.invalid:5672/%2f";
    let out = run_config(dir.path(), &amqp_config(url, "laneway-never-used", true));
    assert_fatal(&out, &["no-such-host.invalid", "does not resolve"]);
}

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
#[test]
fn a_forbidden_queue_exits_1_naming_the_user() {
    let _lock = broker_lock(false);
    let user = unique("forbidden");
    let password = "Forb1dden-Pw-Kx42";
    if !rabbitmqctl(&["add_user", &user, password]) {
        eprintln!("skipped: rabbitmqctl cannot add a user here");
        return;
    }
    // The user may log in to "/" but configure, write and read nothing.
    assert!(rabbitmqctl(&[
        "set_permissions",
        "-p",
        "/",
        &user,
        "^$",
        "^$",
        "^$"
    ]));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("amqp://{user}:{password}@{}/%2f", host_port());
    let out = run_config(dir.path(), &amqp_config(&url, &unique("q"), true));
    rabbitmqctl(&["delete_user", &user]);
    assert_fatal(&out, &[&format!("user {user:?} may not use it")]);
    for stream in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(stream).contains("Kx42"));
    }
}

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
#[test]
fn a_refused_connection_is_retried_with_warnings_and_a_status_line_and_ctrl_c_still_stops() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on the loopback: nothing listens there, the connection is refused.
    let config = amqp_config("amqp://guest:guest@127.0.0.1:1/%2f", "q", true);
    std::fs::write(dir.path().join("laneway.toml"), config).unwrap();
    // Without -q: the status line must say why nothing flows.
    let mut child = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "-c", "laneway.toml", "--data-dir", "data"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let rx = stderr_lines(&mut child);
    // Readiness: the second retry's WARN line (so it did retry, not give
    // up) and a status line that names the trouble.
    let mut seen = Vec::new();
    let (mut warn, mut status) = (None, None);
    while warn.is_none() || status.is_none() {
        match rx.recv_timeout(HANG) {
            Ok(line) => {
                if line.contains("WARN") && line.contains("attempt=2") {
                    warn = Some(line.clone());
                }
                if line.starts_with('[') && line.contains("broker unreachable, retrying in") {
                    status = Some(line.clone());
                }
                seen.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "no retry warning or status; stderr so far:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
    let (warn, status) = (warn.unwrap(), status.unwrap());
    assert!(status.contains("queue q"), "{status}");
    assert!(warn.contains("retrying in"), "{warn}");
    assert!(warn.contains("Connection refused"), "{warn}");
    assert!(warn.contains("queue q"), "{warn}");
    assert!(child.try_wait().unwrap().is_none(), "it gave up: {seen:?}");
    assert!(
        Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = rx.iter().collect();
    assert!(
        !rest.iter().chain(&seen).any(|l| l.starts_with("error:")),
        "{seen:?} {rest:?}"
    );
}
