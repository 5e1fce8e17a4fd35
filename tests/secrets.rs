//! No log level and no error ever prints a broker password: the real binary
//! at `RUST_LOG=trace` against the real RabbitMQ, and broker URLs whose
//! password holds an unescaped `/`, `?` or `#`. The marker probe runs in
//! every build (an adapter the build lacks is refused without the secret);
//! the others need the `amqp` feature, and the Tuya one `pulsar`.

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support;
#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
use support::broker::rabbitmqctl;
use support::broker::{broker_lock, host_port};
#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
use support::names::unique;
#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
use support::process::stderr_lines;
use support::process::wait_or_kill;

const HANG: Duration = Duration::from_secs(90);

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
/// The forms a password takes in a log: as text, and as the byte list the
/// client library's frame dumps print (the SASL response of
/// `Connection.StartOk` shows as `LongString([0, 117, ...])`).
fn leaked_forms(password: &str) -> [String; 2] {
    let bytes: Vec<String> = password.bytes().map(|b| b.to_string()).collect();
    [password.to_string(), bytes.join(", ")]
}

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
fn assert_no_leak(all: &str, password: &str) {
    for form in leaked_forms(password) {
        assert!(!all.contains(&form), "the password was printed as {form:?}");
    }
}

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
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
#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
struct BrokerUser {
    name: String,
    password: String,
}

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
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

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
impl Drop for BrokerUser {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_user", &self.name]);
    }
}

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
#[test]
fn a_trace_level_run_that_logs_in_never_prints_the_password() {
    let _lock = broker_lock(false);
    let Some(user) = BrokerUser::create() else {
        eprintln!("skipped: rabbitmqctl cannot add a user here");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let queue = unique("secret-q");
    let url = format!("amqp://{}:{}@{}/%2f", user.name, user.password, host_port());
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
                let ready =
                    line.contains("laneway::amqp::queue::source") && line.contains("consuming");
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

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
#[test]
fn a_trace_level_run_with_a_wrong_password_never_prints_it() {
    let _lock = broker_lock(false);
    let dir = tempfile::tempdir().unwrap();
    let password = "Wr0ng-Tr4ce-Pw";
    let url = format!("amqp://guest:{password}@{}/%2f", host_port());
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

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
#[test]
fn urls_whose_password_holds_a_delimiter_are_refused_without_showing_it() {
    let _lock = broker_lock(false);
    let dir = tempfile::tempdir().unwrap();
    for password in ["Qx7/Zk9", "Qx7?Zk9", "Qx7#Zk9", "Jv2#Wm4Rt"] {
        let url = format!("amqp://app:{password}@{}/%2f", host_port());
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

/// The marker put in every credential position below.
const MARK: &str = "Zq9-SECRET";

/// Every place a credential can be written, for one URL `url` (built for
/// the kind's scheme by `url_for`): one config per source, sink and
/// backlog kind.
fn credential_configs(url_for: impl Fn(&str) -> String) -> Vec<(&'static str, String)> {
    let group = |extra: &str| {
        format!(
            "[[groups]]\nname = \"all\"\nsink = {{ type = \"null\" }}\nbacklog = {{ store = \"memory\" }}\n{extra}"
        )
    };
    let amqp = url_for("amqp");
    vec![
        (
            "amqp source",
            format!(
                "[[sources]]\ntype = \"amqp\"\nurl = \"{amqp}\"\nqueues = [\"laneway-secret-probe\"]\n\n{}",
                group("")
            ),
        ),
        (
            "amqp-stream source",
            format!(
                "[[sources]]\ntype = \"amqp-stream\"\nurl = \"{amqp}\"\nstream = \"laneway-secret-probe\"\n\n{}",
                group("")
            ),
        ),
        (
            "amqp1 source",
            format!(
                "[[sources]]\ntype = \"amqp1\"\nurl = \"{amqp}\"\naddress = \"/queues/laneway-secret-probe\"\n\n{}",
                group("")
            ),
        ),
        (
            "pulsar source",
            format!(
                "[[sources]]\ntype = \"pulsar\"\nurl = \"{}\"\ntopic = \"t\"\n\n{}",
                url_for("pulsar"),
                group("")
            ),
        ),
        (
            "amqp sink",
            format!(
                "[[sources]]\ntype = \"simulator\"\n\n[[groups]]\nname = \"all\"\nbacklog = {{ store = \"memory\" }}\nsink = {{ type = \"amqp\", url = \"{amqp}\", exchange = \"laneway-secret-probe\" }}\n"
            ),
        ),
        (
            "amqp backlog",
            format!(
                "[[sources]]\ntype = \"simulator\"\n\n[[groups]]\nname = \"all\"\nsink = {{ type = \"null\" }}\nbacklog = {{ store = \"amqp\", url = \"{amqp}\", queue = \"laneway-secret-probe\", max_records = 10 }}\n"
            ),
        ),
    ]
}

/// Runs `laneway` in `dir` with `args` and `RUST_LOG` (unset: the
/// default level), bounded; everything it printed.
fn printed(dir: &Path, args: &[&str], rust_log: Option<&str>) -> String {
    let mut cmd = laneway(dir, args);
    match rust_log {
        Some(level) => cmd.env("RUST_LOG", level),
        None => cmd.env_remove("RUST_LOG"),
    };
    let out = wait(cmd.spawn().unwrap());
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes one URL form for a scheme (`amqp`, `pulsar`, ...).
type UrlForm = Box<dyn Fn(&str) -> String>;

#[test]
fn a_marker_secret_in_any_credential_position_is_never_printed() {
    let _lock = broker_lock(false);
    let host = host_port();
    // Well-formed with a wrong password, an '@' typed for the ':', the
    // secret alone in the URL knob, an unescaped delimiter in the
    // password, and an empty user.
    let forms: Vec<UrlForm> = vec![
        Box::new(move |scheme: &str| {
            let host = if scheme == "pulsar" {
                "127.0.0.1:1"
            } else {
                host.as_str()
            };
            format!("{scheme}://guest:{MARK}@{host}/%2f")
        }),
        Box::new(|scheme: &str| format!("{scheme}://user@{MARK}@127.0.0.1:1/vh")),
        Box::new(|_: &str| MARK.to_string()),
        Box::new(|scheme: &str| format!("{scheme}://app:{MARK}/x@127.0.0.1:1/%2f")),
        Box::new(|scheme: &str| format!("{scheme}://:{MARK}@127.0.0.1:1/%2f")),
    ];
    let mut cases = Vec::new();
    for form in &forms {
        for (kind, config) in credential_configs(form) {
            cases.push((kind, config));
        }
    }
    // The Kafka client's SASL password, given as a librdkafka property: a
    // login in clear is refused unless allowed, so both ways (the allowed
    // one connects and logs at every level).
    for allow in [false, true] {
        cases.push((
            "kafka source",
            format!(
                "[[sources]]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:1\"\ntopics = [\"t\"]\nallow_plaintext = {allow}\n\
                 [sources.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"PLAIN\"\n\
                 \"sasl.username\" = \"probe\"\n\"sasl.password\" = \"{MARK}\"\n\n\
                 [[groups]]\nname = \"all\"\nsink = {{ type = \"null\" }}\nbacklog = {{ store = \"memory\" }}\n"
            ),
        ));
        cases.push((
            "kafka sink",
            format!(
                "[[sources]]\ntype = \"simulator\"\nrate = 100.0\n\n\
                 [[groups]]\nname = \"all\"\nbacklog = {{ store = \"memory\" }}\n\
                 [groups.sink]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:1\"\ntopic = \"t\"\nallow_plaintext = {allow}\n\
                 [groups.sink.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"PLAIN\"\n\
                 \"sasl.username\" = \"probe\"\n\"sasl.password\" = \"{MARK}\"\n"
            ),
        ));
    }
    // One thread per case: the runs are bounded by --duration, and mostly
    // wait on the network.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(kind, config)| {
                scope.spawn(move || {
                    let dir = tempfile::tempdir().unwrap();
                    std::fs::write(dir.path().join("l.toml"), config).unwrap();
                    let mut all = String::new();
                    all.push_str(&printed(dir.path(), &["check-config", "l.toml"], None));
                    for level in [None, Some("info"), Some("trace")] {
                        all.push_str(&printed(
                            dir.path(),
                            &[
                                "run",
                                "-c",
                                "l.toml",
                                "--data-dir",
                                "data",
                                "--duration",
                                "2s",
                            ],
                            level,
                        ));
                    }
                    let leaked =
                        all.contains(MARK) || all.contains("Zq9") || all.contains("SECRET");
                    leaked.then(|| format!("{kind} with\n{config}\nprinted the secret:\n{all}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n----\n"));
}

#[cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]
#[test]
fn messages_that_redact_still_name_the_user_and_an_empty_user_is_refused() {
    let _lock = broker_lock(false);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("amqp://probe-user:{MARK}@{}/%2f", host_port());
    std::fs::write(
        dir.path().join("l.toml"),
        amqp_config(&url, "laneway-unused"),
    )
    .unwrap();
    let all = printed(
        dir.path(),
        &["run", "-c", "l.toml", "--data-dir", "data"],
        None,
    );
    assert!(all.contains("probe-user"), "the user is not named:\n{all}");
    assert!(!all.contains(MARK), "{all}");

    // `amqp://:pw@host` is no login as guest: it is refused before any
    // connection, naming the knob.
    let url = format!("amqp://:{MARK}@{}/%2f", host_port());
    std::fs::write(
        dir.path().join("l.toml"),
        amqp_config(&url, "laneway-unused"),
    )
    .unwrap();
    for args in [
        &["check-config", "l.toml"][..],
        &["run", "-c", "l.toml", "--data-dir", "data"][..],
    ] {
        let mut cmd = laneway(dir.path(), args);
        let out = wait(cmd.spawn().unwrap());
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {all}");
        assert!(all.contains("names no user"), "{args:?}: {all}");
        assert!(!all.contains(MARK), "{all}");
    }
}

#[cfg(feature = "pulsar")]
#[test]
fn the_tuya_preset_never_sends_its_login_in_clear_unless_allowed() {
    // A capture listener: the endpoint a plaintext login would reach.
    let capture = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    capture.set_nonblocking(true).unwrap();
    let port = capture.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("l.toml"),
        format!(
            "[[sources]]\ntype = \"pulsar\"\n[sources.tuya]\naccess_id = \"probeid\"\naccess_key_env = \"LANEWAY_TEST_TUYA_KEY\"\nendpoint = \"pulsar://127.0.0.1:{port}\"\n\n\
             [[groups]]\nname = \"all\"\nsink = {{ type = \"null\" }}\nbacklog = {{ store = \"memory\" }}\n"
        ),
    )
    .unwrap();
    let out = wait(
        laneway(dir.path(), &["run", "-c", "l.toml", "--data-dir", "data"])
            .env("LANEWAY_TEST_TUYA_KEY", "0123456789abcdefghijklmnopqrstuv")
            .spawn()
            .unwrap(),
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("allow_plaintext"), "{all}");
    assert_eq!(
        all.lines().filter(|l| l.contains("error")).count(),
        1,
        "{all}"
    );
    match capture.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the capture listener was reached: {other:?}"),
    }
}
