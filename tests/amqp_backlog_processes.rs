//! Acceptance: three `laneway run` processes of one group share one backlog
//! queue on RabbitMQ (`backlog = { store = "amqp" }`); one is killed with
//! SIGKILL while the backlog drains, and the two survivors deliver every
//! message, the killed one's included, without it being restarted.
//!
//! Each process reads its third of a stale pile on stdin (so every message
//! goes to the shared backlog) and keeps stdin open, so it keeps running
//! while the backlog has work. Every message must come out at least once,
//! byte for byte as sent; duplicates (what the killed process delivered
//! and had not acked) are counted and bounded by its in-flight window.
//!
//! A second run has a backlog queue that holds 200 records and a stale
//! pile of 3,000: the source is held back (backpressure) whenever the queue
//! is full, and every message still comes out. A third run has the broker
//! restarted (`stop_app` / `start_app`) while it drains its backlog queue:
//! it reconnects and every message comes out.
//!
//! Synchronisation: the kill happens on one of the victim's status lines,
//! once its output holds a (random) number of deliveries and its last input
//! record has come out of the queue (so all of its input was appended: a
//! killed reader of a pipe loses what it had not stored); the survivors are
//! told to finish (stdin closed) on one of their status lines once the
//! outputs hold every message, and then end by themselves.

#![cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]

use crate::support;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::broker::broker_lock;
use support::names::unique;
use support::process::{Watched, laneway_run};
use support::records::{Copies, assert_delivered, json_records, records_in_jsonl};

const N: u64 = 6_000;
const SLOTS: usize = 2;
const BATCH: usize = 50;

fn write_config(path: &Path, data: &Path, output: &Path, queue: &str) {
    let url = support::broker::url();
    let text = format!(
        "data_dir = {data:?}\nstatus_interval = \"100ms\"\n\
         [[sources]]\ntype = \"jsonl\"\npath = \"-\"\n\
         [[groups]]\nname = \"g\"\nslots = {SLOTS}\nbatch_size = {BATCH}\nbacklog_rate = 500.0\n\
         sink = {{ type = \"jsonl\", path = {output:?}, sync = true }}\n\
         backlog = {{ store = \"amqp\", url = {url:?}, queue = {queue:?}, read_ahead = 64 }}\n"
    );
    std::fs::write(path, text).unwrap();
}

fn ids_in(path: &Path) -> HashSet<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashSet::new();
    };
    text.lines()
        .filter_map(|l| {
            let start = l.find("\"messageId\":\"")? + 13;
            let end = start + l[start..].find('"')?;
            Some(l[start..end].to_string())
        })
        .collect()
}

fn all_delivered(outputs: &[PathBuf]) -> bool {
    let mut seen = HashSet::new();
    for o in outputs {
        seen.extend(ids_in(o));
    }
    seen.len() as u64 >= N
}

#[test]
fn survivors_deliver_what_a_killed_instance_accumulated() {
    let _lock = broker_lock(false);
    let tmp = tempfile::tempdir().unwrap();
    let queue = unique("backlog-procs");
    let an_hour_ago = laneway::message::now_epoch_ms() - 3_600_000;
    let sent = json_records("p", N, |_| an_hour_ago);
    let outputs: Vec<PathBuf> = (0..3)
        .map(|i| tmp.path().join(format!("out{i}.jsonl")))
        .collect();
    let mut runs = Vec::new();
    for (i, output) in outputs.iter().enumerate() {
        let config = tmp.path().join(format!("c{i}.toml"));
        write_config(
            &config,
            &tmp.path().join(format!("data{i}")),
            output,
            &queue,
        );
        let mut run = Watched::spawn(laneway_run(&config).stdin(Stdio::piped()));
        let mut stdin = run.take_stdin().unwrap();
        for r in sent.iter().skip(i).step_by(3) {
            writeln!(stdin, "{}", r.envelope_line()).unwrap();
        }
        stdin.flush().unwrap();
        runs.push((run, Some(stdin)));
    }

    // Kill instance 0 at a random point of its draining, once its whole
    // input is in the shared queue: what it read from stdin and had not
    // appended yet dies with it (a pipe cannot send it again), and no store
    // delivers what it never held. Its store appends in input order on one
    // confirmed channel, so once its last input record has come out of the
    // queue (in any instance's output), every earlier one went in.
    let victim_last = &sent.iter().step_by(3).next_back().unwrap().id;
    let at = 100 + (laneway::message::now_epoch_ms() as usize % 900);
    let (victim, _) = &mut runs[0];
    victim.wait_for_status(
        Duration::from_secs(120),
        "the victim's status line once its input was all appended and its deliveries began",
        || {
            ids_in(&outputs[0]).len() >= at
                && outputs.iter().any(|o| ids_in(o).contains(victim_last))
        },
    );
    victim.kill(); // SIGKILL
    let by_victim = ids_in(&outputs[0]).len();

    // The survivors deliver the rest, the victim's unacked records included.
    {
        let (survivor, _) = &mut runs[1];
        let line = survivor.wait_for_status(
            Duration::from_secs(180),
            "a survivor's status line once every message was delivered",
            || all_delivered(&outputs),
        );
        eprintln!("survivor 1: {line}");
    }
    for (mut run, stdin) in runs.drain(..).skip(1) {
        drop(stdin); // end of input: the run ends once its group is drained
        let end = run.wait_for_line(Duration::from_secs(60), "the survivor's summary", |l| {
            l.starts_with("summary:")
        });
        eprintln!("{end}");
        let out = run.finish(Duration::from_secs(60));
        assert!(
            out.status.success(),
            "a survivor failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let mut delivered = Vec::new();
    for o in &outputs {
        delivered.extend(records_in_jsonl(o));
    }
    let tally = assert_delivered(&sent, &delivered, Copies::AtLeastOnce);
    eprintln!("killed after {by_victim} deliveries (aimed at {at}); {tally:?}");
    // Duplicates: what the victim delivered and had not acked yet, at most
    // its deliveries in flight and awaiting their release.
    assert!(
        tally.duplicates <= 2 * SLOTS * BATCH,
        "{} duplicates",
        tally.duplicates
    );

    let conn = support::broker::connection();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = conn.await;
        let ch = conn.create_channel().await.unwrap();
        assert_eq!(support::broker::ready(&ch, &queue).await, 0);
        let names = [
            queue.clone(),
            format!("{queue}.wait"),
            format!("{queue}.poison"),
        ];
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        support::broker::cleanup(&ch, &names, &[]).await;
    });
}

#[test]
fn a_full_backlog_queue_holds_the_source_back_and_drops_nothing() {
    let _lock = broker_lock(false);
    let tmp = tempfile::tempdir().unwrap();
    let queue = unique("backlog-full-run");
    let an_hour_ago = laneway::message::now_epoch_ms() - 3_600_000;
    let n = 3_000;
    let sent = json_records("f", n, |_| an_hour_ago);
    let input = tmp.path().join("in.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for r in &sent {
        writeln!(f, "{}", r.envelope_line()).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let output = tmp.path().join("out.jsonl");
    let config = tmp.path().join("c.toml");
    let url = support::broker::url();
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nstatus_interval = \"100ms\"\n\
             [[sources]]\ntype = \"jsonl\"\npath = {input:?}\n\
             [[groups]]\nname = \"g\"\nslots = 2\nbatch_size = 50\nbacklog_rate = 1000.0\n\
             sink = {{ type = \"jsonl\", path = {output:?}, sync = true }}\n\
             backlog = {{ store = \"amqp\", url = {url:?}, queue = {queue:?}, max_records = 200, read_ahead = 32 }}\n",
            tmp.path().join("data")
        ),
    )
    .unwrap();
    // The whole pile is stale: it can only reach the sink through a backlog
    // queue that holds 200, so the source is held back again and again.
    let run = Watched::run(&config);
    let out = run.finish(Duration::from_secs(180));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(
        stderr.contains("backlog is full"),
        "the backlog never filled: {stderr}"
    );
    let tally = assert_delivered(&sent, &records_in_jsonl(&output), Copies::AtLeastOnce);
    eprintln!("{tally:?}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = support::broker::connection().await;
        let ch = conn.create_channel().await.unwrap();
        assert_eq!(support::broker::ready(&ch, &queue).await, 0);
        let names = [
            queue.clone(),
            format!("{queue}.wait"),
            format!("{queue}.poison"),
        ];
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        support::broker::cleanup(&ch, &names, &[]).await;
    });
}

#[test]
fn a_broker_restart_mid_run_loses_nothing() {
    // Exclusive: no other RabbitMQ test runs while the broker restarts.
    let _lock = broker_lock(true);
    let tmp = tempfile::tempdir().unwrap();
    let queue = unique("backlog-restart-run");
    let an_hour_ago = laneway::message::now_epoch_ms() - 3_600_000;
    let n = 4_000;
    let sent = json_records("r", n, |_| an_hour_ago);
    let input = tmp.path().join("in.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for r in &sent {
        writeln!(f, "{}", r.envelope_line()).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let output = tmp.path().join("out.jsonl");
    let config = tmp.path().join("c.toml");
    let url = support::broker::url();
    let mut run = Watched::start_run(
        &config,
        &format!(
            "data_dir = {:?}\nstatus_interval = \"100ms\"\n\
             [[sources]]\ntype = \"jsonl\"\npath = {input:?}\n\
             [[groups]]\nname = \"g\"\nslots = 2\nbatch_size = 50\nbacklog_rate = 400.0\n\
             sink = {{ type = \"jsonl\", path = {output:?}, sync = true }}\n\
             backlog = {{ store = \"amqp\", url = {url:?}, queue = {queue:?}, read_ahead = 32, \
             reconnect_initial = \"100ms\", reconnect_max = \"1s\" }}\n",
            tmp.path().join("data")
        ),
    );
    run.wait_for_status(
        Duration::from_secs(60),
        "a status line once deliveries from the backlog began",
        || ids_in(&output).len() >= 300,
    );
    rabbitmqctl(&["stop_app"]);
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    let out = run.finish(Duration::from_secs(180));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(!stderr.contains("guest:guest"), "a password in the logs");
    let tally = assert_delivered(&sent, &records_in_jsonl(&output), Copies::AtLeastOnce);
    eprintln!("{tally:?}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = support::broker::connection().await;
        let ch = conn.create_channel().await.unwrap();
        assert_eq!(support::broker::ready(&ch, &queue).await, 0);
        let names = [
            queue.clone(),
            format!("{queue}.wait"),
            format!("{queue}.poison"),
        ];
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        support::broker::cleanup(&ch, &names, &[]).await;
    });
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is installed");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
