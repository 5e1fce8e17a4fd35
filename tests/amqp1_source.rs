//! The AMQP 1.0 source against a real AMQP 1.0 peer: RabbitMQ's
//! `rabbitmq_amqp1_0` plugin (enabled by scripts/test), reading a durable
//! queue through the address `/amq/queue/NAME`. Messages are published
//! over AMQP 1.0 as the platform sends them (durable, the application
//! properties `topic`, `messageId` and `generateTime`, the payload as a
//! data section), and every delivered copy is compared with what was sent
//! byte for byte (topic, id, generate time, payload).
//!
//! - a `laneway run` process reads 50,000 messages, each exactly once, and
//!   leaves the queue empty (everything accepted);
//! - a `laneway run` killed with SIGKILL part way, then restarted, delivers
//!   every message; what comes twice is within the credit window (from the
//!   queue) and what the disk backlog held at the restart;
//! - fresh messages behind a stale pile are handled long before the pile
//!   (read through at the broker's speed into the backlog lane);
//! - acceptance waits for the engine: while a sink holds every message,
//!   none is accepted (a dropped connection gives them all back), and a
//!   graceful stop releases what is undone instead of accepting it;
//! - a transfer the client cannot decode is a dead letter with its reason,
//!   settled, and the messages around it arrive byte for byte.

#![cfg(all(feature = "amqp", feature = "amqp1", feature = "rabbitmq-tests"))]

use crate::support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use laneway::amqp1::{Amqp1Source, Amqp1SourceConfig};
use laneway::engine::{Engine, GroupConfig};
use laneway::sink::{BatchError, Delivery, Sink};
use laneway::source::LanePolicy;
use lapin::types::FieldTable;
use simd_json::prelude::*;
use support::broker::*;
use support::names::unique;
use support::process::{Watched, wait_or_kill};
use support::records::{self, Copies, Record, assert_delivered};
use support::wait::{eventually, poll_until};

/// Declares the durable queue `name` (the AMQP 1.0 address
/// `/amq/queue/NAME` needs it to exist).
async fn durable_queue(ch: &lapin::Channel, name: &str) {
    declare_queue(ch, name, FieldTable::default()).await;
}

/// `n` records as the platform sends them (JSON payloads of every length
/// mod 8, generate times an hour old and older: the test reads them all
/// through the backlog lane as well as the live one).
fn records_to_send(prefix: &str, n: u64) -> Vec<Record> {
    let now = laneway::message::now_epoch_ms();
    records::json_records(prefix, n, |i| now - (i % 2) as i64 * 3_600_000)
}

/// A durable queue `name` holding `count` records sent over AMQP 1.0; the
/// connection and channel that declared it (to watch and clean it up), and
/// the records.
async fn queue_holding(name: &str, count: u64) -> (lapin::Connection, lapin::Channel, Vec<Record>) {
    let conn = connection().await;
    let ch = conn.create_channel().await.unwrap();
    durable_queue(&ch, name).await;
    let sent = records_to_send(name, count);
    publish1(name, &sent).await;
    (conn, ch, sent)
}

fn write_config(path: &Path, data: &Path, queue: &str, out: &Path, credit: u32, idle: bool) {
    let idle = if idle { "idle_exit = \"2s\"\n" } else { "" };
    std::fs::write(
        path,
        format!(
            r#"
data_dir = "{data}"
[[sources]]
type = "amqp1"
url_env = "LANEWAY_TEST_AMQP1_URL"
address = "/amq/queue/{queue}"
credit = {credit}
{idle}
[[groups]]
name = "all"
sink = {{ type = "jsonl", path = "{out}", sync = true }}
"#,
            data = data.display(),
            out = out.display(),
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_messages_arrive_exactly_once_byte_for_byte() {
    let _turn = support::amqp1::turn().await;
    const COUNT: u64 = 50_000;
    let _lock = broker_lock(false);
    let name = unique("amqp1-roundtrip");
    let (_conn, ch, sent) = queue_holding(&name, COUNT).await;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let config = dir.path().join("laneway.toml");
    write_config(&config, &dir.path().join("data"), &name, &out, 500, true);
    let run = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "--json", "-q", "--config"])
        .arg(&config)
        .env("LANEWAY_TEST_AMQP1_URL", url1())
        .output()
        .expect("run laneway");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "laneway run failed: {stderr}");
    assert!(
        !stderr.contains("guest:guest"),
        "a password was printed: {stderr}"
    );

    let delivered = records::records_in_jsonl(&out);
    assert_delivered(&sent, &delivered, Copies::ExactlyOnce);
    assert_eq!(ready(&ch, &name).await, 0, "everything was accepted");
    cleanup(&ch, &[&name], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_with_sigkill_then_restarted_loses_nothing() {
    let _turn = support::amqp1::turn().await;
    const COUNT: u64 = 20_000;
    const CREDIT: u32 = 300;
    let _lock = broker_lock(false);
    let name = unique("amqp1-sigkill");
    let (_conn, ch, sent) = queue_holding(&name, COUNT).await;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let data = dir.path().join("data");
    let config = dir.path().join("laneway.toml");
    write_config(&config, &data, &name, &out, CREDIT, false);
    let exe = env!("CARGO_BIN_EXE_laneway");
    let mut run = Watched::spawn(
        Command::new(exe)
            .args(["run", "--config"])
            .arg(&config)
            .env("LANEWAY_TEST_AMQP1_URL", url1()),
    );
    // Killed once part of the queue is delivered: polling the output file
    // for the run's own progress (bounded), not sleeping for a guess.
    poll_until(
        Duration::from_secs(60),
        "the first run to deliver enough to kill",
        || records::lines_in(&out) >= 5_000,
    );
    run.kill();
    let before = records::lines_in(&out);
    assert!(
        (before as u64) < COUNT,
        "the first run finished before the kill: the test would prove little"
    );

    write_config(&config, &data, &name, &out, CREDIT, true);
    let second = Command::new(exe)
        .args(["run", "-q", "--json", "--config"])
        .arg(&config)
        .env("LANEWAY_TEST_AMQP1_URL", url1())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = wait_or_kill(second, Duration::from_secs(240));
    assert!(
        output.status.success(),
        "the restarted run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = RunSummary::of(&output.stdout);
    let delivered = records::records_in_jsonl(&out);
    let tally = assert_delivered(&sent, &delivered, Copies::AtLeastOnce);

    // Two ways a message comes twice, each with its own bound:
    // - from the queue: delivered by the first run and not accepted when
    //   it died. The credit window holds at most CREDIT of those (credit is
    //   granted only after acceptances, which reach the broker first).
    // - from the disk backlog: the fresh half went live, the stale half
    //   through the backlog, whose records delivered since its ledger was
    //   last saved (at most 200 ms of releases) come again at the restart;
    //   the second run delivers at most what its backlog held at the start
    //   from the first run's share.
    // Fresh records never touch the backlog (nothing was diverted for a
    // full lane or a failure), so their duplicates are the queue's alone.
    let now = laneway::message::now_epoch_ms();
    let fresh_duplicates = duplicates_where(&delivered, |r| r.generate_time_ms > now - 1_800_000);
    let held_at_restart = summary
        .delivered_backlog
        .saturating_sub(summary.diverted_stale + summary.diverted_other);
    println!(
        "killed after {before} deliveries; {} duplicates after the restart: {fresh_duplicates} \
         of fresh records (the queue's), the rest stale; the backlog held {held_at_restart} \
         records at the restart",
        tally.duplicates
    );
    assert_eq!(
        summary.diverted_other, 0,
        "only stale records were diverted"
    );
    assert!(
        fresh_duplicates <= CREDIT as usize,
        "{fresh_duplicates} fresh records came twice: more than the credit window ({CREDIT})"
    );
    assert!(
        tally.duplicates <= CREDIT as usize + held_at_restart as usize,
        "{} duplicates: more than the credit window ({CREDIT}) and the {held_at_restart} \
         records the backlog held at the restart",
        tally.duplicates
    );
    assert_eq!(ready(&ch, &name).await, 0, "everything was accepted");
    cleanup(&ch, &[&name], &[]).await;
}

/// What the restarted run's `--json` summary says of where its deliveries
/// came from.
struct RunSummary {
    /// Delivered from the backlog lane.
    delivered_backlog: u64,
    /// Sent to the backlog by this run, for being stale.
    diverted_stale: u64,
    /// Sent to the backlog by this run for a full live lane or a failure.
    diverted_other: u64,
}

impl RunSummary {
    fn of(stdout: &[u8]) -> RunSummary {
        let summary = support::process::json_summary(stdout);
        let group = &summary["groups"][0];
        let n = |v: &simd_json::OwnedValue| v.as_u64().unwrap_or_else(|| panic!("{summary:?}"));
        RunSummary {
            delivered_backlog: n(&summary["delivered_backlog"]),
            diverted_stale: n(&group["diverted_stale"]),
            diverted_other: n(&group["diverted_full"]) + n(&group["diverted_failed"]),
        }
    }
}

/// Copies beyond the first of the delivered records that `which` picks.
fn duplicates_where(delivered: &[Record], which: impl Fn(&Record) -> bool) -> usize {
    let mut seen = std::collections::HashSet::new();
    delivered
        .iter()
        .filter(|r| which(r))
        .filter(|r| !seen.insert(r.id.as_str()))
        .count()
}

/// A sink that holds every batch until opened, counting what it was given.
struct Gate {
    open: AtomicBool,
    opened: tokio::sync::Notify,
    given: AtomicU64,
}

#[async_trait::async_trait]
impl Sink for Gate {
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        self.given.fetch_add(batch.len() as u64, Ordering::SeqCst);
        while !self.open.load(Ordering::SeqCst) {
            let opened = self.opened.notified();
            if self.open.load(Ordering::SeqCst) {
                break;
            }
            opened.await;
        }
        Ok(())
    }
}

async fn ready_becomes(ch: &lapin::Channel, queue: &str, want: u32, what: &str) {
    // Broker-side state, read with a bounded poll.
    let mut polls = 0;
    loop {
        let n = ready(ch, queue).await;
        if n == want {
            return;
        }
        polls += 1;
        assert!(polls < 3_000, "{what}: {n} ready, not {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_accepted_before_it_is_done_and_a_stop_releases_the_rest() {
    let _turn = support::amqp1::turn().await;
    const COUNT: u64 = 1_000;
    const CREDIT: u32 = 100;
    let _lock = broker_lock(false);
    let name = unique("amqp1-settle");
    let (_conn, ch, sent) = queue_holding(&name, COUNT).await;
    let config = Amqp1SourceConfig {
        url: Some(url1()),
        address: format!("/amq/queue/{name}"),
        credit: CREDIT,
        ..Amqp1SourceConfig::default()
    };

    // Both runs share one durable backlog, like two processes of one
    // deployment: live messages the first stores at its stop are done
    // (held durably) and accepted, and the second delivers them.
    let backlog_dir = tempfile::tempdir().unwrap();
    let backlog = || -> Arc<dyn laneway::backlog::BacklogStore> {
        Arc::new(support::process::open_backlog_when_free(backlog_dir.path()))
    };

    // 1. Every message the engine holds is unaccepted: the peer has handed
    //    out exactly the credit window, and the rest waits in the queue.
    let gate = Arc::new(Gate {
        open: AtomicBool::new(false),
        opened: tokio::sync::Notify::new(),
        given: AtomicU64::new(0),
    });
    let engine = Engine::builder()
        .group_with(
            GroupConfig::named("held"),
            Arc::clone(&gate) as Arc<dyn Sink>,
            Some(backlog()),
        )
        .source(Amqp1Source::new(config.clone()).unwrap(), LanePolicy::Live)
        .build()
        .unwrap();
    let monitor = engine.monitor();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(engine.run(async move {
        let _ = stop_rx.await;
    }));
    ready_becomes(
        &ch,
        &name,
        (COUNT - u64::from(CREDIT)) as u32,
        "with the sink holding everything",
    )
    .await;
    assert_eq!(
        monitor.sources()[0].1.acked,
        Some(0),
        "a message was accepted before the sink had it"
    );

    // 2. A graceful stop while the sink still holds them: what the sink
    //    finishes and what the group stores in its backlog is accepted;
    //    every other message is released, so it is back in the queue.
    let _ = stop_tx.send(());
    // The engine waits for the sink's batches: let them end, then the
    // source settles.
    gate.open.store(true, Ordering::SeqCst);
    gate.opened.notify_waiters();
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run stopped")
        .unwrap();
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    let given = gate.given.load(Ordering::SeqCst);
    let accepted = monitor.sources()[0].1.acked.unwrap();
    drop(monitor); // it holds the first run's backlog (and its lock)
    assert!(
        given <= accepted && accepted <= u64::from(CREDIT),
        "{given} finished by the sink, {accepted} accepted, credit {CREDIT}"
    );
    // The broker requeues released messages asynchronously: a bounded poll.
    ready_becomes(&ch, &name, (COUNT - accepted) as u32, "after the stop").await;

    // 3. The next run gets, from the queue and the backlog, every message
    //    the sink did not finish, unchanged and once each: a message
    //    accepted before it was done (not finished, not stored) would be
    //    missing.
    let copies = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = Arc::clone(&copies);
    let sink = laneway::sink::handler_fn(move |d: Delivery| {
        seen.lock().push(records::Record::of(&d.message));
        async { Ok::<(), laneway::sink::DeliveryError>(()) }
    });
    let engine = Engine::builder()
        .group_with(GroupConfig::named("held"), Arc::new(sink), Some(backlog()))
        .source(
            Amqp1Source::new(Amqp1SourceConfig {
                idle_exit: Some(Duration::from_secs(1)),
                ..config
            })
            .unwrap(),
            LanePolicy::Live,
        )
        .build()
        .unwrap();
    let summary =
        tokio::time::timeout(Duration::from_secs(120), engine.run(std::future::pending()))
            .await
            .expect("the second run finished");
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    let rest = copies.lock().clone();
    let tally = assert_delivered(&sent, &rest, Copies::Unchanged);
    assert_eq!(
        (tally.copies as u64, tally.duplicates),
        (COUNT - given, 0),
        "the released and the stored ones came back, once each"
    );
    assert_eq!(ready(&ch, &name).await, 0);
    cleanup(&ch, &[&name], &[]).await;
}

/// A slow handler (2 ms a message per slot) that records when the first
/// fresh message and the last pile message were handled.
struct Slow {
    start: std::time::Instant,
    pile: u64,
    seen: parking_lot::Mutex<PileTimeline>,
}

#[derive(Default)]
struct PileTimeline {
    stale: u64,
    first_fresh: Option<(Duration, u64)>,
    pile_done: Option<Duration>,
    delivered: Vec<Record>,
}

#[async_trait::async_trait]
impl Sink for Slow {
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        tokio::time::sleep(Duration::from_millis(2) * batch.len() as u32).await;
        let now = laneway::message::now_epoch_ms();
        let at = self.start.elapsed();
        let mut t = self.seen.lock();
        for d in batch {
            t.delivered.push(Record::of(&d.message));
            if d.message.age_ms(now) > 30 * 60 * 1000 {
                t.stale += 1;
                if t.stale == self.pile {
                    t.pile_done = Some(at);
                }
            } else if t.first_fresh.is_none() {
                t.first_fresh = Some((at, t.stale));
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_messages_behind_a_stale_pile_are_handled_long_before_the_pile() {
    let _turn = support::amqp1::turn().await;
    // The handler is several times slower than reading the pile, in debug
    // builds (slower reading, so one slot) as in release ones.
    const PILE: u64 = if cfg!(debug_assertions) {
        10_000
    } else {
        20_000
    };
    const SLOTS: usize = if cfg!(debug_assertions) { 1 } else { 2 };
    const FRESH: u64 = 200;
    let _lock = broker_lock(false);
    let name = unique("amqp1-pile");
    let conn = connection().await;
    let ch = conn.create_channel().await.unwrap();
    durable_queue(&ch, &name).await;
    // The pile, an hour old, then fresh messages behind it in the queue.
    let hour_ago = laneway::message::now_epoch_ms() - 3_600_000;
    let mut sent = records::json_records("pile-", PILE, |i| hour_ago + i as i64);
    publish1(&name, &sent).await;
    let fresh = records::json_records("fresh-", FRESH, |_| laneway::message::now_epoch_ms());
    publish1(&name, &fresh).await;
    sent.extend(fresh);

    let sink = Arc::new(Slow {
        start: std::time::Instant::now(),
        pile: PILE,
        seen: parking_lot::Mutex::new(PileTimeline::default()),
    });
    let config = Amqp1SourceConfig {
        url: Some(url1()),
        address: format!("/amq/queue/{name}"),
        ..Amqp1SourceConfig::default()
    };
    let group = GroupConfig {
        // Fresh messages stay fresh however long the pile takes to read.
        live_window: Duration::from_secs(600),
        slots: SLOTS,
        batch_size: 64,
        validate_json: false,
        ..GroupConfig::named("slow")
    };
    let engine = Engine::builder()
        .group_with(group, Arc::clone(&sink) as Arc<dyn Sink>, None)
        .source(Amqp1Source::new(config).unwrap(), LanePolicy::Auto)
        .build()
        .unwrap();
    let monitor = engine.monitor();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(engine.run(async move {
        let _ = stop_rx.await;
    }));
    let watched = Arc::clone(&sink);
    eventually(
        &monitor,
        Duration::from_secs(600),
        "the pile and the fresh messages",
        move |_| {
            let t = watched.seen.lock();
            t.pile_done.is_some() && t.delivered.len() as u64 >= PILE + FRESH
        },
    )
    .await;
    let _ = stop_tx.send(());
    let summary = run.await.unwrap();
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);

    let t = std::mem::take(&mut *sink.seen.lock());
    let (first_fresh, stale_before) = t.first_fresh.expect("fresh messages were handled");
    let pile_done = t.pile_done.expect("the pile was handled");
    println!(
        "pile {PILE}: first fresh at {first_fresh:?} after {stale_before} stale; pile done at {pile_done:?}"
    );
    assert!(first_fresh * 3 < pile_done, "fresh first, by a wide margin");
    assert!(
        stale_before * 3 < PILE,
        "{stale_before} of {PILE} stale were handled first"
    );
    assert_delivered(&sent, &t.delivered, Copies::ExactlyOnce);
    assert_eq!(ready(&ch, &name).await, 0);
    cleanup(&ch, &[&name], &[]).await;
}

/// AMQP 1.0 sections as bytes: application properties holding one pair,
/// `bad` and `value` (already encoded), then a data section.
fn sections_with_property(value: &[u8]) -> Vec<u8> {
    let mut pair = vec![0xa1, 3, b'b', b'a', b'd'];
    pair.extend_from_slice(value);
    let mut bytes = vec![0x00, 0x53, 0x74, 0xc1, (pair.len() + 1) as u8, 2];
    bytes.extend_from_slice(&pair);
    let body = b"{\"n\":1}";
    bytes.extend_from_slice(&[0x00, 0x53, 0x75, 0xa0, body.len() as u8]);
    bytes.extend_from_slice(body);
    bytes
}

/// A transfer the client cannot decode (an application property that is
/// not UTF-8, or a list, which the specification forbids there) is a dead
/// letter with the decoder's reason and is settled; the messages around it
/// arrive byte for byte and the queue ends empty. RabbitMQ passes a 0-9-1
/// message of type `amqp-1.0` to AMQP 1.0 consumers as the sections its
/// body holds, which is how such bytes reach the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_the_client_cannot_decode_is_a_dead_letter_and_the_rest_arrive() {
    use lapin::types::ShortString;
    let _turn = support::amqp1::turn().await;
    let _lock = broker_lock(false);
    let name = unique("amqp1-undecodable");
    let (_conn, ch, mut sent) = queue_holding(&name, 20).await;
    // A str8 of bytes that are not UTF-8; a list8 of one `true`.
    let undecodable = [
        sections_with_property(&[0xa1, 4, b'a', 0xff, 0xfe, b'z']),
        sections_with_property(&[0xc0, 2, 1, 0x41]),
    ];
    for body in &undecodable {
        ch.basic_publish(
            ShortString::from(""),
            ShortString::from(name.as_str()),
            lapin::options::BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_type(ShortString::from("amqp-1.0")),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let after = records::json_records(&format!("{name}-after"), 20, |_| {
        laneway::message::now_epoch_ms()
    });
    publish1(&name, &after).await;
    sent.extend(after);

    let sink = support::engine::RecordingSink::new();
    let dead = laneway::engine::DeadLetters::in_memory();
    let source = Amqp1Source::new(Amqp1SourceConfig {
        url: Some(url1()),
        address: format!("/amq/queue/{name}"),
        idle_exit: Some(Duration::from_secs(2)),
        ..Amqp1SourceConfig::default()
    })
    .unwrap();
    let engine = Engine::builder()
        .group(GroupConfig::named("all"), sink.clone())
        .source(source, LanePolicy::Auto)
        .dead_letters(Arc::clone(&dead))
        .build()
        .unwrap();
    let summary =
        tokio::time::timeout(Duration::from_secs(120), engine.run(std::future::pending()))
            .await
            .expect("the run finishes once the queue is idle");
    assert_delivered(&sent, &sink.delivered_records(), Copies::ExactlyOnce);
    let letters = dead.recent();
    assert_eq!(letters.len(), 2, "{letters:#?}");
    for (letter, why) in letters.iter().zip(["UTF-8", "SimpleValue"]) {
        assert!(
            letter.reason.starts_with("undecodable message"),
            "{letter:?}"
        );
        assert!(letter.reason.contains(why), "{letter:?}");
        assert!(letter.origin.as_deref().is_some_and(|o| o.contains(&name)));
    }
    assert_eq!(summary.dead_letter, 2);
    assert_eq!(ready(&ch, &name).await, 0, "everything was settled");
    cleanup(&ch, &[&name], &[]).await;
}
