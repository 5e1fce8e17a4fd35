//! A JSONL output that a killed run left ending in a torn line: the next
//! run cuts the torn line off before it appends, so every line of the file
//! stays a whole envelope (the torn line's batch was never acknowledged
//! and comes again). Real files, real bytes: the whole lines before the
//! torn one are kept byte for byte.

use crate::support;

use laneway::sink::{Delivery, JsonlSink, Lane, Sink};
use support::records::{Record, binary_payload, records_in_jsonl};

fn delivery(record: &Record) -> Delivery {
    Delivery {
        message: record.message(),
        attempts: 0,
        lane: Lane::Live,
        superseded: false,
    }
}

fn record(n: u64) -> Record {
    Record::new(
        format!("/pk/dev{n}/thing/event/property/post"),
        format!("id-{n}"),
        1_700_000_000_000 + n as i64,
        binary_payload(n),
    )
}

/// Writes `records` through a sink opened on `path`, as one run would.
async fn run_writing(path: &std::path::Path, records: &[Record]) {
    let sink = JsonlSink::file(path, true).await.unwrap();
    let batch: Vec<Delivery> = records.iter().map(delivery).collect();
    sink.deliver(&batch).await.unwrap();
}

#[tokio::test]
async fn a_torn_last_line_is_cut_before_the_next_run_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    let first = [record(1), record(2)];
    run_writing(&path, &first).await;
    let whole = std::fs::read(&path).unwrap();

    // The run killed halfway through its third line: every cut of it.
    run_writing(&dir.path().join("third.jsonl"), &[record(3)]).await;
    let third = std::fs::read(dir.path().join("third.jsonl")).unwrap();
    for cut in [1, third.len() / 2, third.len() - 1] {
        let mut torn = whole.clone();
        torn.extend_from_slice(&third[..cut]);
        std::fs::write(&path, &torn).unwrap();

        let next = [record(3), record(4)];
        run_writing(&path, &next).await;
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.starts_with(&whole),
            "cut {cut}: the whole lines before the torn one changed"
        );
        let expected: Vec<Record> = first.iter().chain(&next).cloned().collect();
        assert_eq!(
            records_in_jsonl(&path),
            expected,
            "cut {cut}: every line a whole envelope, each as it was sent"
        );
        assert!(bytes.ends_with(b"\n"), "cut {cut}");
    }
}

#[tokio::test]
async fn a_file_of_one_torn_line_is_emptied_and_a_whole_file_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    std::fs::write(&path, b"{\"topic\":\"/pk/dev1/thi").unwrap();
    run_writing(&path, &[record(5)]).await;
    assert_eq!(records_in_jsonl(&path), vec![record(5)]);

    let before = std::fs::read(&path).unwrap();
    let sink = JsonlSink::file(&path, true).await.unwrap();
    drop(sink);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a whole file is not touched"
    );
}
