//! No log level and no error ever prints a broker password: the real binary
//! at `RUST_LOG=trace` against the real RabbitMQ, and broker URLs whose
//! password holds an unescaped `/`, `?` or `#`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod process;
use process::{broker, rabbitmqctl, stderr_lines, unique, wait_or_kill};

const HANG: Duration = Duration::from_secs(90);

/// The forms a password takes in a log: as text, and as the byte list the
/// client library's frame dumps print (the SASL response of
/// `Connection.StartOk` shows as `LongString([0, 117, ...])`).
fn leaked_forms(password: &str) -> [String; 2] {
    let bytes: Vec<String> = password.bytes().map(|b| b.to_string()).collect();
    [password.to_string(), bytes.join(", ")]
}

fn assert_no_leak(all: &str, password: &str) {
    for form in leaked_forms(password) {
        assert!(!all.contains(&form), "the password was printed as {form:?}");
    }
}

fn amqp_config(url: &str, queue: &str) -> String {
    format!(
        "[[sources]]\ntype = \"amqp\"\nurl = \"{url}\"\nqueues = [\"{queue}\"]\n\n\
         [[groups]]\nname = \"all\"\nsink = {{ type = \"null\" }}\nbacklog = {{ store = \"memory\" }}\n"
    )
}

fn laneway(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_laneway"));
    c.args(args)
        .current_dir(dir)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for `child` to exit, killing it and failing after [`HANG`].
fn wait(child: std::process::Child) -> Output {
    wait_or_kill(child, HANG)
}

/// A user with a distinctive password, removed on drop; `None` when
/// `rabbitmqctl` cannot be used here.
struct BrokerUser {
    name: String,
    password: String,
}

impl BrokerUser {
    fn create() -> Option<BrokerUser> {
        let name = unique("secret-user");
        let password = format!("S3cr3t-{}-Qz", std::process::id());
        if !rabbitmqctl(&["add_user", &name, &password]) {
            return None;
        }
        rabbitmqctl(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"])
            .then_some(BrokerUser { name, password })
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_user", &self.name]);
    }
}

#[test]
fn a_trace_level_run_that_logs_in_never_prints_the_password() {
    let Some(user) = BrokerUser::create() else {
        eprintln!("skipped: rabbitmqctl cannot add a user here");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let queue = unique("secret-q");
    let url = format!("amqp://{}:{}@{}/%2f", user.name, user.password, broker());
    std::fs::write(dir.path().join("laneway.toml"), amqp_config(&url, &queue)).unwrap();
    let mut child = laneway(
        dir.path(),
        &["run", "-q", "-c", "laneway.toml", "--data-dir", "data"],
    )
    .spawn()
    .unwrap();
    let pid = child.id();
    // Read stderr as it comes: readiness is the consumer's "consuming" line,
    // logged once the login and the queue set-up are done.
    let rx = stderr_lines(&mut child);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(HANG) {
            Ok(line) => {
                let ready = line.contains("laneway::amqp::consumer") && line.contains("consuming");
                seen.push(line);
                if ready {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the source never started consuming:\n{}", seen.join("\n"));
            }
        }
    }
    assert!(
        Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    seen.extend(rx.iter());
    let all = format!("{stdout}\n{}", seen.join("\n"));
    // The level really was trace (so the test could have caught a leak).
    assert!(
        all.contains("TRACE") && all.contains("connecting to the broker"),
        "no trace output at all:\n{all}"
    );
    assert_no_leak(&all, &user.password);
    assert!(!all.contains("S3cr3t"), "part of the password was printed");
    rabbitmqctl(&["delete_queue", &queue]);
}

#[test]
fn a_trace_level_run_with_a_wrong_password_never_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let password = "Wr0ng-Tr4ce-Pw";
    let url = format!("amqp://guest:{password}@{}/%2f", broker());
    std::fs::write(
        dir.path().join("laneway.toml"),
        amqp_config(&url, "laneway-unused"),
    )
    .unwrap();
    let out = wait(
        laneway(
            dir.path(),
            &["run", "-c", "laneway.toml", "--data-dir", "data"],
        )
        .spawn()
        .unwrap(),
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("TRACE") && all.contains("connecting to the broker"),
        "no trace output at all:\n{all}"
    );
    assert!(all.contains("login refused"), "{all}");
    assert!(!all.contains("Tr4ce"), "the password was printed:\n{all}");
    assert_no_leak(&all, password);
}

#[test]
fn urls_whose_password_holds_a_delimiter_are_refused_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    for password in ["Qx7/Zk9", "Qx7?Zk9", "Qx7#Zk9", "Jv2#Wm4Rt"] {
        let url = format!("amqp://app:{password}@{}/%2f", broker());
        std::fs::write(dir.path().join("laneway.toml"), amqp_config(&url, "q")).unwrap();
        for args in [
            &["check-config", "laneway.toml"][..],
            &["run", "-c", "laneway.toml", "--data-dir", "data"][..],
        ] {
            let out = wait(laneway(dir.path(), args).spawn().unwrap());
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(1), "{args:?} {password}: {all}");
            assert!(all.contains("invalid broker URL amqp://app:***@"), "{all}");
            assert!(all.contains("percent-encode"), "{all}");
            for piece in password.split(['/', '?', '#']) {
                assert!(!all.contains(piece), "{args:?}: {piece:?} shown in:\n{all}");
            }
        }
    }
}
