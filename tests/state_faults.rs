//! laneway's durable state under a failing disk, past the backlog writer
//! (tests/backlog_faults.rs covers that): the backlog's recovery and reader,
//! its ledger, the JSONL source's checkpoint, the dead-letter file, the
//! duplicate window and the stream offset file, each given a
//! fault-injecting [`Filesystem`] over the real one. After each fault: the error is reported (naming its file), no
//! progress is claimed that was not stored, and what was kept comes back
//! byte for byte once the disk heals.

use crate::support;

use std::io;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::disk::{assert_same, drain, drain_at, rt, sent};

use laneway::backlog::disk::{Filesystem, RealFilesystem, SegmentFile};
use laneway::backlog::{BacklogError, BacklogStore, DiskBacklog, DiskBacklogConfig};
use laneway::engine::{DeadLetter, DeadLetters, DuplicateWindow, Mark};
use laneway::engine::{Engine, GroupConfig};
use laneway::message::now_epoch_ms;
use laneway::source::LanePolicy;
use laneway::source::jsonl::{JsonlInput, JsonlSource};
use parking_lot::Mutex;
use support::engine::RecordingSink;
use support::records::{Copies, Record, assert_delivered};
use tokio::sync::watch;

/// Which operation a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// [`Filesystem::read`] of a whole small file.
    Read,
    /// A positioned read of an open file.
    ReadAt,
    /// A rename (matched on the target): the last step of a replace.
    Rename,
    /// A write: an append, or a positioned write (matched on the file).
    Write,
    /// An fsync of a directory (matched on the directory).
    SyncDir,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Eio,
    /// Write only this many bytes.
    Short(usize),
}

/// One planned fault: `op` on a path whose text contains `path_has`, after
/// `skip` such operations have passed, `times` times.
#[derive(Debug, Clone)]
struct Rule {
    op: Op,
    path_has: String,
    skip: usize,
    times: usize,
    fault: Fault,
}

/// The real file system, with faults planned per operation and path.
#[derive(Clone, Default)]
struct FailingFs {
    rules: Arc<Mutex<Vec<Rule>>>,
    /// How many faults were injected (a test waits on it, never sleeps).
    failures: Arc<watch::Sender<usize>>,
}

impl FailingFs {
    fn fail(&self, op: Op, path_has: &str, skip: usize, times: usize, fault: Fault) {
        self.rules.lock().push(Rule {
            op,
            path_has: path_has.into(),
            skip,
            times,
            fault,
        });
    }

    fn heal(&self) {
        self.rules.lock().clear();
    }

    fn failures(&self) -> usize {
        *self.failures.borrow()
    }

    /// The fault planned for `op` on `path` now, if any.
    fn fault(&self, op: Op, path: &Path) -> Option<Fault> {
        let text = path.to_string_lossy();
        let mut rules = self.rules.lock();
        let rule = rules
            .iter_mut()
            .find(|r| r.op == op && r.times > 0 && text.contains(&r.path_has))?;
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        rule.times -= 1;
        let fault = rule.fault;
        drop(rules);
        self.failures.send_modify(|n| *n += 1);
        Some(fault)
    }

    fn wrap(&self, path: &Path, inner: Box<dyn SegmentFile>) -> Box<dyn SegmentFile> {
        Box::new(FailingFile {
            inner,
            path: path.to_path_buf(),
            fs: self.clone(),
        })
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(5)
}

struct FailingFile {
    inner: Box<dyn SegmentFile>,
    path: PathBuf,
    fs: FailingFs,
}

impl SegmentFile for FailingFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        match self.fs.fault(Op::Write, &self.path) {
            Some(Fault::Eio) => Err(eio()),
            Some(Fault::Short(n)) => self.inner.write_at(&buf[..n.min(buf.len())], offset),
            None => self.inner.write_at(buf, offset),
        }
    }

    fn append(&self, buf: &[u8]) -> io::Result<usize> {
        match self.fs.fault(Op::Write, &self.path) {
            Some(Fault::Eio) => Err(eio()),
            Some(Fault::Short(n)) => self.inner.append(&buf[..n.min(buf.len())]),
            None => self.inner.append(buf),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self.fs.fault(Op::ReadAt, &self.path) {
            Some(_) => Err(eio()),
            None => self.inner.read_at(buf, offset),
        }
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl Filesystem for FailingFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        Ok(self.wrap(path, RealFilesystem.create_new(path)?))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        Ok(self.wrap(path, RealFilesystem.create(path)?))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        Ok(self.wrap(path, RealFilesystem.open(path)?))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        match self.fault(Op::Rename, to) {
            Some(_) => Err(eio()),
            None => RealFilesystem.rename(from, to),
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealFilesystem.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match self.fault(Op::SyncDir, dir) {
            Some(_) => Err(eio()),
            None => RealFilesystem.sync_dir(dir),
        }
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        Ok(self.wrap(path, RealFilesystem.open_read(path)?))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        Ok(self.wrap(path, RealFilesystem.open_append(path)?))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        match self.fault(Op::Read, path) {
            Some(_) => Err(eio()),
            None => RealFilesystem.read(path),
        }
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        RealFilesystem.read_dir(dir)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFilesystem.create_dir_all(dir)
    }
}

/// Every file under `dir` with its bytes, sorted by path.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(snapshot(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

// ---- the disk backlog: recovery, the reader, the ledger ----

/// Small segments (several for a few dozen records), commits at once.
fn config() -> DiskBacklogConfig {
    DiskBacklogConfig {
        segment_bytes: 4096,
        commit_interval: Duration::ZERO,
        ledger_interval: Duration::from_millis(5),
        ..DiskBacklogConfig::default()
    }
}

/// A backlog in `dir` holding records `0..n`, closed.
fn fill(dir: &Path, n: u64) {
    rt().block_on(async {
        let store = DiskBacklog::open(dir, config()).unwrap();
        store
            .append(&(0..n).map(sent).collect::<Vec<_>>())
            .await
            .unwrap();
        store.close().await.unwrap();
    });
}

const SEGMENT_2: &str = "00000000000000000002.seg";

#[test]
fn a_recovery_read_that_fails_is_an_error_naming_the_segment_and_repairs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 60);
    assert!(
        dir.path().join(SEGMENT_2).exists(),
        "the records span segments"
    );
    let before = snapshot(dir.path());
    let fs = FailingFs::default();
    fs.fail(Op::ReadAt, SEGMENT_2, 0, usize::MAX, Fault::Eio);
    let opened = DiskBacklog::open_with(dir.path(), config(), Arc::new(fs.clone()));
    let Err(e) = opened else {
        panic!("a backlog whose segment cannot be read opened");
    };
    match &e {
        BacklogError::Io { action, source } => {
            assert!(action.contains(SEGMENT_2), "{e}");
            assert_eq!(source.raw_os_error(), Some(5), "{e}");
        }
        other => panic!("not an I/O error: {other:?}"),
    }
    assert!(fs.failures() > 0);
    // Nothing was cut, moved or rewritten on the strength of a failed read.
    assert_eq!(snapshot(dir.path()), before);
    fs.heal();
    rt().block_on(async {
        let store = DiskBacklog::open_with(dir.path(), config(), Arc::new(fs)).unwrap();
        assert_eq!(store.recovery().lost, 0);
        assert_same(&drain(&store).await, &(0..60).collect::<Vec<_>>());
        store.close().await.unwrap();
    });
}

#[test]
fn a_segment_read_that_fails_while_serving_is_an_error_and_skips_nothing() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 60);
    let fs = FailingFs::default();
    rt().block_on(async {
        let store = DiskBacklog::open_with(dir.path(), config(), Arc::new(fs.clone())).unwrap();
        // The reader opens segment 2 (its header read passes), then its
        // first two reads of records fail: the first after segment 1's
        // records were handed out (the take returns those), the second on
        // the next take, which reports it.
        fs.fail(Op::ReadAt, SEGMENT_2, 1, 2, Fault::Eio);
        let mut got = Vec::new();
        let failed = loop {
            match store.take_ready(1000, 0).await {
                Ok(batch) if batch.is_empty() => panic!("the fault was never met"),
                Ok(batch) => {
                    let ids: Vec<_> = batch.iter().map(|r| r.id).collect();
                    store.release(&ids).await.unwrap();
                    got.extend(batch);
                }
                Err(e) => break e,
            }
        };
        match &failed {
            BacklogError::Io { action, source } => {
                assert!(action.contains(SEGMENT_2), "{failed}");
                assert_eq!(source.raw_os_error(), Some(5), "{failed}");
            }
            other => panic!("not an I/O error: {other:?}"),
        }
        assert_eq!(fs.failures(), 2);
        assert!(
            !got.is_empty(),
            "segment 1's records came out before the error"
        );
        // The next takes read the same records again: none skipped, none
        // taken for damage.
        got.extend(drain(&store).await);
        assert_same(&got, &(0..60).collect::<Vec<_>>());
        assert_eq!(store.depth().records, 0);
        store.close().await.unwrap();
    });
}

/// A retried record is read again where its new copy lies when it is due;
/// a read of it that fails is reported and tried again by the next take,
/// as a read of the segment in order is: the record is never dropped.
#[test]
fn a_retried_record_whose_read_fails_is_handed_out_by_a_later_take() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 60);
    let fs = FailingFs::default();
    rt().block_on(async {
        let store = DiskBacklog::open_with(dir.path(), config(), Arc::new(fs.clone())).unwrap();
        let mut first = store.take_ready(1, 0).await.unwrap();
        assert_same(&first, &[0]);
        first[0].record.attempts = 1;
        first[0].record.not_before_ms = 1_000;
        store.retry(&first).await.unwrap();
        // Due at 2,000: the first read is the retried copy's, and it fails.
        fs.fail(Op::ReadAt, ".seg", 0, 1, Fault::Eio);
        let failed = store.take_ready(1000, 2_000).await;
        assert!(
            matches!(&failed, Err(BacklogError::Io { source, .. }) if source.raw_os_error() == Some(5)),
            "{failed:?}"
        );
        assert_eq!(fs.failures(), 1);
        assert_same(&drain_at(&store, 2_000).await, &(0..60).collect::<Vec<_>>());
        assert_eq!(store.depth().records, 0);
        store.close().await.unwrap();
    });
}

/// A new segment whose directory entry cannot be made durable is taken
/// back: that append fails, and the next roll makes the segment again
/// instead of finding its name taken for the rest of the run.
#[test]
fn a_segment_roll_whose_directory_fsync_fails_fails_that_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FailingFs::default();
    rt().block_on(async {
        let config = DiskBacklogConfig {
            // No ledger save in the window: the fault is the roll's.
            ledger_interval: Duration::from_secs(3600),
            ..config()
        };
        let store = DiskBacklog::open_with(dir.path(), config, Arc::new(fs.clone())).unwrap();
        fs.fail(Op::SyncDir, "", 0, 1, Fault::Eio);
        let mut stored = Vec::new();
        for i in 0..60 {
            if store.append(&[sent(i)]).await.is_ok() {
                stored.push(i);
            }
        }
        assert_eq!(fs.failures(), 1);
        assert_eq!(stored.len(), 59, "only the append that rolled failed");
        assert_same(&drain(&store).await, &stored);
        store.close().await.unwrap();
    });
}

#[test]
fn a_ledger_that_cannot_be_read_is_rebuilt_and_released_records_come_back() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config()).unwrap();
        store
            .append(&(0..30).map(sent).collect::<Vec<_>>())
            .await
            .unwrap();
        let first = store.take_ready(10, 0).await.unwrap();
        assert_same(&first, &(0..10).collect::<Vec<_>>());
        store
            .release(&first.iter().map(|r| r.id).collect::<Vec<_>>())
            .await
            .unwrap();
        store.close().await.unwrap();
    });
    assert!(dir.path().join("ledger").exists());
    let fs = FailingFs::default();
    fs.fail(Op::Read, "ledger", 0, usize::MAX, Fault::Eio);
    rt().block_on(async {
        let store = DiskBacklog::open_with(dir.path(), config(), Arc::new(fs.clone())).unwrap();
        assert_eq!(store.recovery().ledger, "damaged");
        assert_eq!(store.recovery().lost, 0);
        // At least once: the released ten come back with the rest.
        assert_same(&drain(&store).await, &(0..30).collect::<Vec<_>>());
        store.close().await.unwrap();
    });
    assert!(fs.failures() > 0);
}

// ---- the JSONL source's checkpoint ----

fn line(i: usize) -> Record {
    Record::new(
        format!("/pk/d{}/thing/event/property/post", i % 7),
        format!("line-{i}"),
        now_epoch_ms(),
        format!("{{\"n\":{i},\"s\":\"{}\"}}", "x".repeat(i % 13)).into_bytes(),
    )
}

fn append_lines(path: &Path, lines: std::ops::Range<usize>) -> Vec<Record> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let records: Vec<Record> = lines.map(line).collect();
    for r in &records {
        writeln!(f, "{}", r.envelope_line()).unwrap();
    }
    records
}

/// An engine reading `input` with the file source (its checkpoint in
/// `checkpoints` through `fs`) into `sink`.
fn file_engine(input: &Path, checkpoints: &Path, fs: &FailingFs, sink: &RecordingSink) -> Engine {
    let source = JsonlSource::new(JsonlInput::File(input.to_path_buf()), 4096)
        .checkpoint_in(checkpoints)
        .with_filesystem(Arc::new(fs.clone()));
    Engine::builder()
        .group(GroupConfig::named("all"), sink.clone())
        .source(source, LanePolicy::Auto)
        .build()
        .unwrap()
}

/// Runs the file source over `input` to its end, its checkpoint in
/// `checkpoints` through `fs`; returns what the sink was given.
fn run_file(input: &Path, checkpoints: &Path, fs: &FailingFs) -> Vec<Record> {
    let sink = RecordingSink::new();
    let engine = file_engine(input, checkpoints, fs, &sink);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), engine.run(std::future::pending()))
            .await
            .expect("the run ends when the file is done");
    });
    sink.delivered_records()
}

#[test]
fn a_checkpoint_that_cannot_be_stored_claims_no_progress_and_the_lines_are_read_again() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    let checkpoints = tmp.path().join("sources");
    let fs = FailingFs::default();

    let first = append_lines(&input, 0..40);
    assert_delivered(
        &first,
        &run_file(&input, &checkpoints, &fs),
        Copies::ExactlyOnce,
    );
    let stored = snapshot(&checkpoints);
    assert_eq!(stored.len(), 1, "one checkpoint: {stored:?}");

    // The file grows; this run delivers the new lines but cannot replace
    // its checkpoint.
    let more = append_lines(&input, 40..65);
    fs.fail(Op::Rename, ".checkpoint", 0, usize::MAX, Fault::Eio);
    assert_delivered(
        &more,
        &run_file(&input, &checkpoints, &fs),
        Copies::ExactlyOnce,
    );
    assert!(fs.failures() > 0, "the run tried to store its checkpoint");
    let (path, bytes) = &stored[0];
    assert_eq!(
        &std::fs::read(path).unwrap(),
        bytes,
        "the checkpoint on disk is the one stored before"
    );

    // A restart reads the 25 lines again, byte for byte, then stores.
    fs.heal();
    assert_delivered(
        &more,
        &run_file(&input, &checkpoints, &fs),
        Copies::ExactlyOnce,
    );
    assert_ne!(&std::fs::read(path).unwrap(), bytes, "stored at last");
    assert!(
        run_file(&input, &checkpoints, &fs).is_empty(),
        "nothing left"
    );
}

#[test]
fn a_checkpoint_that_cannot_be_read_stops_the_source_with_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    let checkpoints = tmp.path().join("sources");
    let fs = FailingFs::default();
    let lines = append_lines(&input, 0..10);
    assert_delivered(
        &lines,
        &run_file(&input, &checkpoints, &fs),
        Copies::ExactlyOnce,
    );
    fs.fail(Op::Read, ".checkpoint", 0, usize::MAX, Fault::Eio);
    // Reading from line 1 would deliver everything again; reading from
    // nowhere would guess. Neither: the source reports the checkpoint.
    let sink = RecordingSink::new();
    let engine = file_engine(&input, &checkpoints, &fs, &sink);
    let summary = rt().block_on(async {
        tokio::time::timeout(Duration::from_secs(30), engine.run(std::future::pending()))
            .await
            .expect("the run ends")
    });
    assert!(sink.delivered_records().is_empty());
    assert_eq!(summary.failures.len(), 1, "{:?}", summary.failures);
    let error = &summary.failures[0].error;
    assert!(error.contains(".checkpoint"), "{error}");
    assert!(error.contains("Input/output error"), "{error}");
}

/// A file rewritten in place (same inode, same length) after the reader
/// read it and before its checkpoint is written: the checkpoint must not
/// vouch for bytes the reader never read, or the restart would resume past
/// lines no run delivered.
#[test]
fn a_file_rewritten_in_place_before_its_checkpoint_is_read_again_not_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    let checkpoints = tmp.path().join("sources");
    let fs = FailingFs::default();
    let first = append_lines(&input, 0..20);

    let sink = RecordingSink::new().gated();
    let engine = file_engine(&input, &checkpoints, &fs, &sink);
    // The same lines with other ids and payloads, byte for byte as long.
    let rewritten: Vec<Record> = first
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.id = r.id.replace("line", "LINE");
            r.payload = String::from_utf8(r.payload.clone())
                .unwrap()
                .replace('x', "y")
                .into_bytes();
            r
        })
        .collect();
    rt().block_on(async {
        let (monitor, _stop, run) = support::engine::spawn_engine(engine);
        support::wait::eventually(
            &monitor,
            Duration::from_secs(30),
            "every line read and handed in",
            |m| m.intake().ingested >= 20,
        )
        .await;
        let mut text = String::new();
        for r in &rewritten {
            text.push_str(&r.envelope_line());
            text.push('\n');
        }
        assert_eq!(text.len() as u64, std::fs::metadata(&input).unwrap().len());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&input)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.sync_all().unwrap();
        sink.open();
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the run ends when the file is done")
            .unwrap();
    });
    assert_delivered(&first, &sink.delivered_records(), Copies::ExactlyOnce);
    // The rewritten lines were never read: the next run reads them.
    assert_delivered(
        &rewritten,
        &run_file(&input, &checkpoints, &fs),
        Copies::ExactlyOnce,
    );
}

// ---- the duplicate window ----

/// A write to the duplicate window's file cut short and then failing costs
/// no id: after a reopen, the ids recorded after it are there, and so are
/// the failed write's own (queued again, written with the next). Before,
/// its fragment stayed in the file and misaligned every entry after it:
/// after a restart those ids were forgotten (their checksums failed), and
/// a redelivery of their messages was delivered a second time.
#[test]
fn a_duplicate_window_write_cut_short_costs_no_id_after_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ids");
    let window = Duration::from_secs(600);
    let fs = FailingFs::default();
    rt().block_on(async {
        let ids = DuplicateWindow::open_with(&dir, window, Arc::new(fs.clone())).unwrap();
        ids.record(["a", "b"], Mark::Delivered).await.unwrap();
        // 40 bytes (an entry and part of the next) reach the file, then
        // the disk fails.
        fs.fail(Op::Write, "ids-", 0, 1, Fault::Short(40));
        fs.fail(Op::Write, "ids-", 0, 1, Fault::Eio);
        ids.record(["c", "d", "e"], Mark::Delivered)
            .await
            .expect_err("the disk failed");
        assert_eq!(fs.failures(), 2);
        ids.record(["f", "g"], Mark::Admitted).await.unwrap();
    });
    let reopened = DuplicateWindow::open(&dir, window).unwrap();
    assert_eq!(reopened.corrupt(), 0, "no damaged entry");
    for id in ["a", "b", "c", "d", "e"] {
        assert_eq!(reopened.seen(id), Some(Mark::Delivered), "{id}");
    }
    for id in ["f", "g"] {
        assert_eq!(reopened.seen(id), Some(Mark::Admitted), "{id}");
    }
}

// ---- the dead-letter file ----

#[test]
fn a_dead_letter_write_that_fails_is_retried_until_stored_and_leaves_no_half_line() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("dead/letters.jsonl");
    let fs = FailingFs::default();
    // The first attempt writes 7 bytes, then fails; later ones fail whole
    // until the disk heals.
    fs.fail(Op::Write, "letters", 0, 1, Fault::Short(7));
    fs.fail(Op::Write, "letters", 0, usize::MAX, Fault::Eio);
    let dead = DeadLetters::to_file_with(&path, &fs).unwrap();
    let letters: Vec<DeadLetter> = (0..3)
        .map(|i| {
            DeadLetter::for_input(
                format!("{{bad {i}").into_bytes(),
                format!("in:{i}"),
                "not JSON",
            )
        })
        .collect();
    let mut expected = Vec::new();
    for l in &letters {
        l.write_line(&mut expected);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut failures = fs.failures.subscribe();
        let task = tokio::spawn({
            let dead = Arc::clone(&dead);
            async move { dead.record(letters).await }
        });
        // Three failed attempts (the short write and its failing rest, then
        // two more): the letters are still being written, not dropped.
        failures.wait_for(|n| *n >= 4).await.unwrap();
        assert!(!task.is_finished(), "record returned while the disk failed");
        assert!(dead.recent().is_empty());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"",
            "a failed attempt leaves no part of a line"
        );
        fs.heal();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("record returns once the disk heals")
            .unwrap()
            .unwrap();
    });
    assert_eq!(
        std::fs::read(&path).unwrap(),
        expected,
        "each letter once, whole"
    );
    assert_eq!(dead.recent().len(), 3);
}

/// A shutdown while the dead-letter file cannot be written ends within
/// the shutdown grace: the dead letters' batches are left unacknowledged
/// (their source reads them again), and the batches of good messages
/// beside them are delivered unchanged and acknowledged. Before, the run
/// never ended: closing intake waited for a batch whose dead letter was
/// retried for ever.
#[test]
fn a_shutdown_while_dead_letters_cannot_be_written_ends_within_the_grace() {
    use laneway::ack::AckTracker;
    use laneway::engine::EngineOptions;
    use laneway::source::Incoming;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead-letters.jsonl");
    let fs = FailingFs::default();
    fs.fail(Op::Write, "letters", 0, usize::MAX, Fault::Eio);
    let dead = DeadLetters::to_file_with(&path, &fs).unwrap();
    let sink = RecordingSink::new();
    let grace = Duration::from_millis(500);
    let engine = Engine::builder()
        .group(GroupConfig::named("g"), sink.clone())
        .dead_letters(Arc::clone(&dead))
        .options(EngineOptions {
            shutdown_grace: grace,
            ..EngineOptions::default()
        })
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Auto);
    let monitor = engine.monitor();
    let tracker = AckTracker::new();
    let good = [Record::new(
        "/pk/dn/thing/event/property/post",
        "good",
        now_epoch_ms(),
        &b"{\"t\":\"\xc3\xa9\"}"[..],
    )];
    rt().block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(engine.run(async move {
            let _ = stop_rx.await;
        }));
        let mut failures = fs.failures.subscribe();
        let good_batch = good
            .iter()
            .map(|r| Incoming::Message(r.message()))
            .collect();
        ingest.submit(good_batch, tracker.register()).await;
        let delivered =
            support::wait::wait_until(&monitor, Duration::from_secs(30), |m| m.delivered() == 1);
        assert!(delivered.await, "the good message was not delivered");
        let bad = vec![Incoming::Malformed {
            raw: b"{\"bad\xff\0".to_vec().into(),
            origin: "in:2".into(),
            reason: "not JSON".into(),
        }];
        let submitted = tokio::spawn({
            let tracker = Arc::clone(&tracker);
            async move { ingest.submit(bad, tracker.register()).await }
        });
        failures.wait_for(|n| *n >= 1).await.unwrap();
        stop_tx.send(()).unwrap();
        let ended = tokio::time::timeout(grace * 10, run).await;
        assert!(
            ended.is_ok(),
            "the run did not end while dead letters failed"
        );
        let _ = submitted.await;
    });
    assert_delivered(&good, &sink.delivered_records(), Copies::ExactlyOnce);
    assert_eq!(tracker.watermark(), 1, "the good batch only");
    assert!(tracker.is_stuck(), "the bad batch is left for its source");
    assert_eq!(std::fs::read(&path).unwrap(), b"", "no part of a line");
}

// ---- the stream offset file ----

#[cfg(feature = "amqp")]
#[test]
fn a_stream_offset_that_cannot_be_stored_leaves_the_one_stored_before() {
    use laneway::amqp::stream::{OffsetFile, OffsetFileError};
    let tmp = tempfile::tempdir().unwrap();
    let fs = FailingFs::default();
    let file = OffsetFile::in_dir(&tmp.path().join("sources"), "s", "h:5552/%2f/s")
        .with_filesystem(Arc::new(fs.clone()));
    file.store(100).unwrap();
    let before = std::fs::read(file.path()).unwrap();
    fs.fail(Op::Rename, ".offset", 0, usize::MAX, Fault::Eio);
    match file.store(200) {
        Err(e @ OffsetFileError::Io { .. }) => {
            assert!(
                e.to_string().contains(&file.path().display().to_string()),
                "{e}"
            );
        }
        other => panic!("a failed store said {other:?}"),
    }
    assert_eq!(std::fs::read(file.path()).unwrap(), before);
    // What a restart would load: the offset stored before.
    let fresh = OffsetFile::in_dir(&tmp.path().join("sources"), "s", "h:5552/%2f/s");
    assert_eq!(fresh.load().unwrap(), Some(100));
    fs.heal();
    file.store(200).unwrap();
    assert_eq!(fresh.load().unwrap(), Some(200));
}
