//! Fan-out, filters, unrouted counting and malformed input, through a real
//! engine. Deliveries are compared with what was sent as whole records.

use crate::support;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use laneway::ack::AckRef;
use laneway::backlog::MemoryBacklog;
use laneway::engine::{Engine, GroupConfig};
use laneway::message::{Message, now_epoch_ms};
use laneway::source::JsonlSource;
use laneway::source::jsonl::JsonlInput;
use laneway::source::{Incoming, LanePolicy, Routed};
use support::engine::{RecordingSink, spawn_engine};
use support::records::{Copies, Record, assert_delivered, json_payload};
use support::wait::wait_until;

fn record(topic: &str, id: &str) -> Record {
    let n = id.len() as u64;
    Record::new(topic, id, now_epoch_ms(), json_payload(n))
}

fn message(r: &Record) -> Incoming {
    Incoming::Message(r.message())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_matching_group_gets_its_own_copy_and_unmatched_are_counted() {
    let p1 = RecordingSink::new();
    let alarms = RecordingSink::new();
    let engine = Engine::builder()
        .group(
            GroupConfig {
                products: vec!["pk1".into()],
                ..GroupConfig::named("p1")
            },
            p1.clone(),
        )
        .group(
            GroupConfig {
                kinds: vec!["event".into(), "status".into()],
                ..GroupConfig::named("alarms")
            },
            alarms.clone(),
        )
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Auto);
    let (monitor, stop, task) = spawn_engine(engine);
    let sent = [
        record("/pk1/d1/thing/event/property/post", "p1-only"),
        record("/pk1/d1/thing/event/alarm/post", "both"),
        record("/as/mqtt/status/pk2/d2", "alarms-only"),
        record("/pk2/d2/thing/event/property/post", "nobody"),
        record("/sys/other", "nobody-2"),
    ];
    ingest
        .submit(sent.iter().map(message).collect(), AckRef::none())
        .await;
    assert!(
        wait_until(&monitor, Duration::from_secs(5), |_| monitor
            .summary()
            .delivered
            == 4)
        .await
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap();

    let mut got_p1: Vec<_> = p1.delivered_counts().into_keys().collect();
    got_p1.sort();
    let mut got_alarms: Vec<_> = alarms.delivered_counts().into_keys().collect();
    got_alarms.sort();
    assert_eq!(got_p1, ["both", "p1-only"]);
    assert_eq!(got_alarms, ["alarms-only", "both"]);
    // Each group's copy is the message as sent.
    assert_delivered(
        &[sent[0].clone(), sent[1].clone()],
        &p1.delivered_records(),
        Copies::ExactlyOnce,
    );
    assert_delivered(
        &[sent[1].clone(), sent[2].clone()],
        &alarms.delivered_records(),
        Copies::ExactlyOnce,
    );
    assert_eq!(summary.unrouted, 2);
    assert_eq!(summary.ingested, 5);
    assert_eq!(summary.delivered, 4);
    assert_eq!(summary.delivered_live, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_and_bodies_become_dead_letters_and_nothing_else_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    let good = |i: u64| {
        Record::new(
            format!("/pk/d{i}/thing/event/property/post"),
            format!("good-{i}"),
            now_epoch_ms(),
            json_payload(i),
        )
    };
    let mut expected_good = Vec::new();
    for i in 0..50 {
        let r = good(i);
        writeln!(f, "{}", r.envelope_line()).unwrap();
        expected_good.push(r);
    }
    writeln!(f, "{{this is not json").unwrap(); // line 51
    writeln!(f, r#"{{"messageId":"x","generateTime":1,"payload":{{}}}}"#).unwrap(); // line 52: no topic
    writeln!(f).unwrap(); // line 53: blank, ignored
    writeln!(
        f,
        r#"{{"topic":"/pk/d/thing/lifecycle","messageId":"big","generateTime":1,"payload":"{}"}}"#,
        "x".repeat(5000)
    )
    .unwrap(); // line 54: too long
    for i in 50..100 {
        let r = good(i);
        writeln!(f, "{}", r.envelope_line()).unwrap();
        expected_good.push(r);
    }
    drop(f);

    let sink = RecordingSink::new();
    let engine = Engine::builder()
        .group(GroupConfig::named("all"), sink.clone())
        .source(
            JsonlSource::new(JsonlInput::File(input.clone()), 4096),
            LanePolicy::Auto,
        )
        .build()
        .unwrap();
    let dead = engine.dead_letters();
    let ingest = engine.ingest(LanePolicy::Auto);
    // A message whose body is not JSON, submitted directly.
    ingest
        .submit(
            vec![Incoming::Message(
                Message::new(
                    "/pk/d/thing/lifecycle",
                    "not-json-body",
                    now_epoch_ms(),
                    Bytes::from_static(b"<xml/>"),
                )
                .unwrap(),
            )],
            AckRef::none(),
        )
        .await;
    let summary = tokio::time::timeout(Duration::from_secs(20), engine.run(std::future::pending()))
        .await
        .expect("the run ends when the file is done and the group is idle");

    assert_delivered(
        &expected_good,
        &sink.delivered_records(),
        Copies::ExactlyOnce,
    );
    let letters = dead.recent();
    let reasons: Vec<(Option<String>, String)> = letters
        .iter()
        .map(|l| (l.origin.clone(), l.reason.clone()))
        .collect();
    assert_eq!(letters.len(), 4, "{reasons:?}");
    let origin = |n: usize| Some(format!("{}:{n}", input.display()));
    assert!(
        reasons
            .iter()
            .any(|(o, r)| *o == origin(51) && r.contains("not valid JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(o, r)| *o == origin(52) && r.contains("\"topic\"")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(o, r)| *o == origin(54) && r.contains("longer than 4096")),
        "{reasons:?}"
    );
    assert!(
        letters
            .iter()
            .any(|l| l.message_id.as_deref() == Some("not-json-body")
                && l.reason.contains("not valid JSON")),
        "{reasons:?}"
    );
    assert_eq!(summary.dead_letter, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_payloads_are_dead_letters_at_ingest() {
    let sink = RecordingSink::new();
    let engine = Engine::builder()
        .group(GroupConfig::named("all"), sink.clone())
        .options(laneway::engine::EngineOptions {
            max_message_bytes: 100,
            ..Default::default()
        })
        .build()
        .unwrap();
    let dead = engine.dead_letters();
    let ingest = engine.ingest(LanePolicy::Auto);
    let (monitor, stop, task) = spawn_engine(engine);
    let big = format!("{{\"x\":\"{}\"}}", "y".repeat(200));
    let small = record("/pk/d/thing/lifecycle", "small");
    ingest
        .submit(
            vec![
                Incoming::Message(
                    Message::new(
                        "/pk/d/thing/lifecycle",
                        "big",
                        now_epoch_ms(),
                        Bytes::from(big),
                    )
                    .unwrap(),
                ),
                message(&small),
            ],
            AckRef::none(),
        )
        .await;
    assert!(
        wait_until(&monitor, Duration::from_secs(5), |_| monitor
            .summary()
            .delivered
            == 1)
        .await
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap();
    assert_eq!(summary.dead_letter, 1);
    let letters = dead.recent();
    assert_eq!(letters[0].message_id.as_deref(), Some("big"));
    assert!(
        letters[0].reason.starts_with("oversize"),
        "{}",
        letters[0].reason
    );
    assert_delivered(&[small], &sink.delivered_records(), Copies::ExactlyOnce);
}

/// A source that reads a pile paces itself by what `submit` says became of
/// its batch, so the verdict must be exact: `Live` exactly when a message
/// took a live lane. The engine is built but not run, so nothing drains the
/// live lane and each verdict is deterministic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_says_whether_any_message_took_a_live_lane() {
    let engine = Engine::builder()
        .group_with(
            GroupConfig {
                products: vec!["pk1".into()],
                live_capacity: 3,
                ..GroupConfig::named("pk1")
            },
            Arc::new(RecordingSink::new()),
            Some(Arc::new(MemoryBacklog::default())),
        )
        .build()
        .unwrap();
    let auto = engine.ingest(LanePolicy::Auto);
    let to_backlog = engine.ingest(LanePolicy::Backlog);
    let fresh = |id: &str| message(&record("/pk1/d1/thing/event/property/post", id));
    let stale = |id: &str| {
        let two_hours_ago = now_epoch_ms() - 2 * 3_600_000;
        let r = Record::new(
            "/pk1/d1/thing/event/property/post",
            id,
            two_hours_ago,
            json_payload(1),
        );
        message(&r)
    };
    let unrouted = message(&record("/pk2/d2/thing/event/property/post", "other"));

    let none = AckRef::none;
    assert_eq!(
        auto.submit(vec![stale("s1"), stale("s2")], none()).await,
        Routed::NotLive
    );
    assert_eq!(auto.submit(vec![unrouted], none()).await, Routed::NotLive);
    assert_eq!(
        to_backlog.submit(vec![fresh("b1")], none()).await,
        Routed::NotLive
    );
    assert_eq!(auto.submit(vec![], none()).await, Routed::NotLive);
    // One fresh message among stale ones is live traffic.
    assert_eq!(
        auto.submit(vec![stale("s3"), fresh("f1"), stale("s4")], none())
            .await,
        Routed::Live
    );
    // The lane holds 3: f2 and f3 fit beside f1, f4 is pushed out.
    assert_eq!(
        auto.submit(vec![fresh("f2"), fresh("f3"), fresh("f4")], none())
            .await,
        Routed::Live
    );
    // Nothing fits now: the whole batch is pushed out.
    assert_eq!(
        auto.submit(vec![fresh("f5"), fresh("f6")], none()).await,
        Routed::NotLive
    );
}
