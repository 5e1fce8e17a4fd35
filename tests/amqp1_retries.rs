//! The AMQP 1.0 source says what its retries do: a user without
//! permission on the address ends the run (exit 1, one line) before any
//! link attached, as 0-9-1 does with a forbidden queue; and each "no
//! connection" warning states the real next attempt, the
//! `connects_per_minute` pacing included. Against the real RabbitMQ (its
//! AMQP 1.0 plugin) and a port nothing listens on.

#![cfg(all(feature = "amqp", feature = "amqp1", feature = "rabbitmq-tests"))]

use crate::support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use lapin::types::FieldTable;
use support::broker::*;
use support::names::unique;
use support::process::wait_or_kill;

fn laneway_run(dir: &Path, config: &str, extra: &[&str]) -> (Option<i32>, String) {
    std::fs::write(dir.join("l.toml"), config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "-q", "-c", "l.toml", "--data-dir", "data"])
        .args(extra)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_or_kill(child, Duration::from_secs(90));
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_permission_ends_the_run_with_one_line() {
    let _lock = broker_lock(false);
    let queue = unique("amqp1-forbidden");
    let conn = connection().await;
    let ch = conn.create_channel().await.unwrap();
    declare_queue(&ch, &queue, FieldTable::default()).await;
    let user = unique("amqp1-noperm");
    let password = "Np-7734-pw";
    assert!(
        rabbitmqctl(&["add_user", &user, password]),
        "rabbitmqctl add_user"
    );
    // Access to the virtual host, permission on nothing in it.
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
    let config = format!(
        "[[sources]]\ntype = \"amqp1\"\nurl = \"amqp://{user}:{password}@127.0.0.1:5672\"\n\
         address = \"/amq/queue/{queue}\"\nreconnect_initial = \"100ms\"\n\n\
         [[groups]]\nname = \"all\"\nsink = {{ type = \"null\" }}\nbacklog = {{ store = \"memory\" }}\n"
    );
    let (code, all) = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || laneway_run(&dir, &config, &[])
    })
    .await
    .unwrap();
    rabbitmqctl(&["delete_user", &user]);
    cleanup(&ch, &[&queue], &[]).await;
    assert_eq!(code, Some(1), "{all}");
    let errors: Vec<&str> = all.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{all}");
    assert!(errors[0].contains("permission refused"), "{all}");
    assert!(!all.contains(password), "{all}");
}

#[test]
fn each_warning_states_the_real_next_attempt_pacing_included() {
    let dir = tempfile::tempdir().unwrap();
    // Two attempts a minute: after the second failure, the next attempt
    // is about a minute away whatever the 100 ms backoff says.
    let config = "[[sources]]\ntype = \"amqp1\"\nurl = \"amqp://u:p@127.0.0.1:1\"\naddress = \"q\"\n\
                  reconnect_initial = \"100ms\"\nconnects_per_minute = 2\n\n\
                  [[groups]]\nname = \"all\"\nsink = { type = \"null\" }\nbacklog = { store = \"memory\" }\n";
    let (_, all) = laneway_run(dir.path(), config, &["--duration", "3s"]);
    let next: Vec<u64> = all
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("no connection"))
        .map(|l| {
            l.split("next_attempt_in_ms=")
                .nth(1)
                .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("a warning without its next attempt: {l}"))
        })
        .collect();
    assert_eq!(next.len(), 2, "{all}");
    assert!(
        next[0] < 1_000,
        "the first retry is the backoff's: {next:?}\n{all}"
    );
    assert!(
        next[1] >= 55_000,
        "the second states the pacing wait (about 60 s): {next:?}\n{all}"
    );
}
