//! The durability rule of the disk backlog's appends, checked against the
//! order in which its file operations really happened (recorded through
//! the store's file-operation seam, with segment fsyncs held at a gate the
//! test opens, so no step depends on timing):
//!
//! - an append resolves `Ok` only once an fsync of its segment that *began
//!   after its bytes were written* has succeeded: the first such fsync, and
//!   no fsync of that segment failed between its first write and that one;
//! - when an fsync fails, every append not yet covered by a good fsync
//!   fails, and none of its records is ever read back (not now, not after a
//!   restart), while every acknowledged record is read back exactly once.
//!
//! Holds whether the writer writes the next group while an fsync runs or
//! waits for it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use laneway::backlog::disk::{Filesystem, RealFilesystem, SegmentFile, verify_dir};
use laneway::backlog::{BacklogError, BacklogRecord, BacklogStore, DiskBacklog, DiskBacklogConfig};
use laneway::message::Message;
use parking_lot::{Condvar, Mutex};
use tokio::task::JoinHandle;

/// A guard against a hang, never a timing assertion.
const LIMIT: Duration = Duration::from_secs(60);
const PER_APPEND: u64 = 20;

#[derive(Debug, Clone)]
enum Event {
    /// A segment write completed; the appends whose records it carried.
    Write {
        path: PathBuf,
        tags: Vec<u64>,
    },
    SyncBegin {
        path: PathBuf,
    },
    SyncEnd {
        path: PathBuf,
        ok: bool,
    },
}

/// What the gate says to a held fsync.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Pass,
    Fail,
}

#[derive(Default)]
struct State {
    events: Vec<Event>,
    /// Hold every segment fsync at the gate until a verdict is given.
    hold: bool,
    /// Fsyncs waiting at the gate.
    held: usize,
    /// Verdicts for held fsyncs, taken one each.
    verdicts: Vec<Verdict>,
}

#[derive(Clone, Default)]
struct Recorder {
    state: Arc<Mutex<State>>,
    changed: Arc<Condvar>,
}

impl Recorder {
    fn push(&self, event: Event) {
        self.state.lock().events.push(event);
        self.changed.notify_all();
    }

    fn now(&self) -> usize {
        self.state.lock().events.len()
    }

    fn events(&self) -> Vec<Event> {
        self.state.lock().events.clone()
    }

    fn hold(&self, on: bool) {
        self.state.lock().hold = on;
        self.changed.notify_all();
    }

    /// Waits until an fsync is held at the gate.
    fn wait_held(&self) {
        let mut s = self.state.lock();
        while s.held == 0 {
            if self.changed.wait_for(&mut s, LIMIT).timed_out() {
                panic!("no fsync reached the gate within {LIMIT:?}");
            }
        }
    }

    /// Lets the held fsync go on, or fail.
    fn release(&self, verdict: Verdict) {
        self.state.lock().verdicts.push(verdict);
        self.changed.notify_all();
    }

    /// Waits until `tag`'s records were written.
    fn wait_written(&self, tag: u64) {
        let mut s = self.state.lock();
        while !s
            .events
            .iter()
            .any(|e| matches!(e, Event::Write { tags, .. } if tags.contains(&tag)))
        {
            if self.changed.wait_for(&mut s, LIMIT).timed_out() {
                panic!("append {tag} was not written within {LIMIT:?}");
            }
        }
    }

    /// An fsync of a segment: recorded, held while the gate is shut.
    fn sync(&self, path: &Path, inner: &dyn SegmentFile) -> io::Result<()> {
        self.push(Event::SyncBegin {
            path: path.to_path_buf(),
        });
        let verdict = {
            let mut s = self.state.lock();
            if s.hold {
                s.held += 1;
                self.changed.notify_all();
                while s.verdicts.is_empty() {
                    if self.changed.wait_for(&mut s, LIMIT).timed_out() {
                        panic!("a held fsync got no verdict within {LIMIT:?}");
                    }
                }
                s.held -= 1;
                s.verdicts.remove(0)
            } else {
                Verdict::Pass
            }
        };
        let result = match verdict {
            Verdict::Pass => inner.sync_data(),
            Verdict::Fail => Err(io::Error::from_raw_os_error(5)),
        };
        self.push(Event::SyncEnd {
            path: path.to_path_buf(),
            ok: result.is_ok(),
        });
        result
    }
}

/// The tags (append numbers) of the records in `buf`: every `@@<tag>:` in it.
fn tags_in(buf: &[u8]) -> Vec<u64> {
    let mut tags = BTreeSet::new();
    let mut at = 0;
    while let Some(p) = buf[at..].windows(2).position(|w| w == b"@@") {
        let start = at + p + 2;
        let digits: Vec<u8> = buf[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .copied()
            .collect();
        if buf.get(start + digits.len()) == Some(&b':')
            && let Ok(tag) = String::from_utf8(digits).unwrap().parse()
        {
            tags.insert(tag);
        }
        at = start;
    }
    tags.into_iter().collect()
}

struct RecordingFile {
    inner: Box<dyn SegmentFile>,
    path: PathBuf,
    rec: Recorder,
}

fn is_segment(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "seg")
}

impl SegmentFile for RecordingFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let n = self.inner.write_at(buf, offset)?;
        if is_segment(&self.path) {
            self.rec.push(Event::Write {
                path: self.path.clone(),
                tags: tags_in(&buf[..n]),
            });
        }
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        if is_segment(&self.path) {
            self.rec.sync(&self.path, self.inner.as_ref())
        } else {
            self.inner.sync_data()
        }
    }

    fn append(&self, buf: &[u8]) -> io::Result<usize> {
        self.inner.append(buf)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

#[derive(Clone, Default)]
struct RecordingFs {
    rec: Recorder,
}

impl RecordingFs {
    fn wrap(&self, path: &Path, inner: Box<dyn SegmentFile>) -> Box<dyn SegmentFile> {
        Box::new(RecordingFile {
            inner,
            path: path.to_path_buf(),
            rec: self.rec.clone(),
        })
    }
}

impl Filesystem for RecordingFs {
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
        RealFilesystem.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealFilesystem.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealFilesystem.sync_dir(dir)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        RealFilesystem.open_read(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        RealFilesystem.open_append(path)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        RealFilesystem.read(path)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        RealFilesystem.read_dir(dir)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFilesystem.create_dir_all(dir)
    }
}

/// Record `k` of append `tag`: its message id and payload carry the tag.
fn record(tag: u64, k: u64) -> BacklogRecord {
    BacklogRecord::fresh(
        Message::new(
            "/pk/dn/thing/event/property/post",
            format!("@@{tag}:{k}"),
            1_700_000_000_000,
            format!("payload of @@{tag}:{k} ").repeat((k % 7 + 1) as usize),
        )
        .unwrap(),
    )
}

fn batch(tag: u64) -> Vec<BacklogRecord> {
    (0..PER_APPEND).map(|k| record(tag, k)).collect()
}

fn config() -> DiskBacklogConfig {
    DiskBacklogConfig {
        // One segment: every append's bytes go to the same file.
        segment_bytes: 64 << 20,
        commit_interval: Duration::ZERO,
        ledger_interval: Duration::from_millis(5),
        ..DiskBacklogConfig::default()
    }
}

/// How an append ended, and when (in the event log) the test saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    ok: bool,
    at: usize,
}

/// The appends under way and their outcomes.
struct Appends {
    store: Arc<DiskBacklog>,
    rec: Recorder,
    running: BTreeMap<u64, JoinHandle<Result<(), BacklogError>>>,
    seen: BTreeMap<u64, Seen>,
}

impl Appends {
    fn start(&mut self, rt: &tokio::runtime::Runtime, tag: u64) {
        let store = Arc::clone(&self.store);
        let handle = rt.spawn(async move { store.append(&batch(tag)).await });
        self.running.insert(tag, handle);
    }

    /// Collects the appends that have finished by now.
    fn collect(&mut self, rt: &tokio::runtime::Runtime) {
        let done: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(&t, _)| t)
            .collect();
        for tag in done {
            let at = self.rec.now();
            let handle = self.running.remove(&tag).unwrap();
            let result = rt.block_on(handle).unwrap();
            if let Err(e) = &result {
                assert!(matches!(e, BacklogError::Io { .. }), "append {tag}: {e:?}");
            }
            self.seen.insert(
                tag,
                Seen {
                    ok: result.is_ok(),
                    at,
                },
            );
        }
    }

    /// Waits for `tag` to finish; returns whether it was acknowledged.
    fn finish(&mut self, rt: &tokio::runtime::Runtime, tag: u64) -> bool {
        if let Some(handle) = self.running.remove(&tag) {
            let result = rt
                .block_on(async { tokio::time::timeout(LIMIT, handle).await })
                .expect("the append ends")
                .unwrap();
            if let Err(e) = &result {
                assert!(matches!(e, BacklogError::Io { .. }), "append {tag}: {e:?}");
            }
            let at = self.rec.now();
            self.seen.insert(
                tag,
                Seen {
                    ok: result.is_ok(),
                    at,
                },
            );
        }
        self.seen[&tag].ok
    }

    /// Checks the rule for every append acknowledged so far.
    fn check(&mut self, rt: &tokio::runtime::Runtime) {
        self.collect(rt);
        check_rule(&self.rec.events(), &self.seen);
    }
}

/// The durability rule (see the module documentation) for every append in
/// `seen` that was acknowledged, against the recorded events.
fn check_rule(events: &[Event], seen: &BTreeMap<u64, Seen>) {
    for (&tag, s) in seen.iter().filter(|(_, s)| s.ok) {
        let writes: Vec<(usize, &PathBuf)> = events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Event::Write { path, tags } if tags.contains(&tag) => Some((i, path)),
                _ => None,
            })
            .collect();
        let (Some(&(first, path)), Some(&(last, _))) = (writes.first(), writes.last()) else {
            panic!("append {tag} was acknowledged but never written");
        };
        assert!(
            last < s.at,
            "append {tag}: acknowledged before it was written"
        );
        let begin = events
            .iter()
            .enumerate()
            .skip(last + 1)
            .find(|(_, e)| matches!(e, Event::SyncBegin { path: p } if p == path))
            .map(|(i, _)| i)
            .unwrap_or_else(|| {
                panic!("append {tag}: acknowledged with no fsync begun after its write")
            });
        // The first fsync to end after it began is its own (fsyncs of one
        // segment do not overlap: each is awaited before the next begins).
        let (end, ok) = events
            .iter()
            .enumerate()
            .skip(begin + 1)
            .find_map(|(i, e)| match e {
                Event::SyncEnd { path: p, ok } if p == path => Some((i, *ok)),
                _ => None,
            })
            .unwrap_or_else(|| {
                panic!("append {tag}: acknowledged while the fsync after its write still ran")
            });
        assert!(
            ok,
            "append {tag}: acknowledged though the fsync after its write failed"
        );
        assert!(
            end < s.at,
            "append {tag}: acknowledged before the fsync after its write ended"
        );
        let failed_between = events[first..begin]
            .iter()
            .any(|e| matches!(e, Event::SyncEnd { path: p, ok: false } if p == path));
        assert!(
            !failed_between,
            "append {tag}: acknowledged though an fsync failed after its first write and before the fsync that covered it"
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Every record read back is one of an acknowledged append, each exactly
/// once, and every acknowledged record is read back.
async fn assert_holds_exactly(store: &DiskBacklog, acknowledged: &BTreeSet<u64>) {
    let mut got = Vec::new();
    loop {
        let taken = store.take_ready(1000, 0).await.unwrap();
        if taken.is_empty() {
            break;
        }
        let ids: Vec<_> = taken.iter().map(|r| r.id).collect();
        store.release(&ids).await.unwrap();
        got.extend(taken);
    }
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| r.record.message.message_id().to_string())
        .collect();
    ids.sort();
    let mut want: Vec<String> = acknowledged
        .iter()
        .flat_map(|&t| (0..PER_APPEND).map(move |k| format!("@@{t}:{k}")))
        .collect();
    want.sort();
    assert_eq!(ids, want, "what is read back is what was acknowledged");
    for r in &got {
        let id = r.record.message.message_id();
        let (tag, k) = id
            .trim_start_matches("@@")
            .split_once(':')
            .map(|(t, k)| (t.parse().unwrap(), k.parse().unwrap()))
            .unwrap();
        assert_eq!(r.record.message.payload(), record(tag, k).message.payload());
    }
}

/// Reopens the store on the real file system: nothing lost, nothing
/// owed (everything acknowledged was read back and released).
fn assert_recovers_clean(dir: &Path) {
    let v = verify_dir(dir).unwrap();
    assert!(v.ok, "{v:?}");
    let rt = runtime();
    rt.block_on(async {
        let store = DiskBacklog::open(dir, config()).unwrap();
        assert_eq!(store.recovery().lost, 0);
        assert_eq!(store.recovery().damaged, 0);
        assert_eq!(store.take_ready(1000, 0).await.unwrap().len(), 0);
    });
}

/// Appends arriving while an fsync runs are not acknowledged by it; a
/// failed fsync fails what it covered; retries are stored once.
#[test]
fn an_append_is_acknowledged_only_after_an_fsync_begun_after_its_write() {
    let dir = tempfile::tempdir().unwrap();
    let fs = RecordingFs::default();
    let rec = fs.rec.clone();
    let rt = runtime();
    let store = Arc::new(DiskBacklog::open_with(dir.path(), config(), Arc::new(fs)).unwrap());
    let mut a = Appends {
        store: Arc::clone(&store),
        rec: rec.clone(),
        running: BTreeMap::new(),
        seen: BTreeMap::new(),
    };

    // 1. Append 1's fsync is held; append 2 arrives meanwhile. Neither is
    // acknowledged until an fsync begun after its write has ended.
    rec.hold(true);
    a.start(&rt, 1);
    rec.wait_held();
    a.start(&rt, 2);
    a.check(&rt);
    assert!(a.seen.is_empty(), "nothing is durable yet: {:?}", a.seen);
    rec.release(Verdict::Pass);
    assert!(a.finish(&rt, 1));
    // Append 2 began after that fsync did: another one must cover it.
    rec.wait_held();
    a.check(&rt);
    assert!(
        !a.seen.contains_key(&2),
        "append 2 rode an fsync begun before its write"
    );
    rec.release(Verdict::Pass);
    assert!(a.finish(&rt, 2));
    a.check(&rt);

    // 2. Append 3's fsync fails while appends 4 and 5 arrive: 3 fails;
    // 4 and 5 fail too if they were written before a good fsync (they
    // were not covered by one), or are stored if written after.
    a.start(&rt, 3);
    rec.wait_held();
    a.start(&rt, 4);
    a.start(&rt, 5);
    a.check(&rt);
    rec.release(Verdict::Fail);
    assert!(!a.finish(&rt, 3), "append 3's fsync failed");
    a.check(&rt);
    // Whatever fsyncs follow pass.
    rec.hold(false);
    rec.release(Verdict::Pass);
    rec.release(Verdict::Pass);
    a.finish(&rt, 4);
    a.finish(&rt, 5);
    a.check(&rt);

    // 3. Each failed append is sent again (as a new append) until stored.
    let failed: Vec<u64> = a
        .seen
        .iter()
        .filter(|(_, s)| !s.ok)
        .map(|(&t, _)| t)
        .collect();
    for (i, _) in failed.iter().enumerate() {
        let tag = 100 + i as u64;
        a.start(&rt, tag);
        assert!(a.finish(&rt, tag), "a retry after a healed disk is stored");
    }
    a.check(&rt);
    let acknowledged: BTreeSet<u64> = a
        .seen
        .iter()
        .filter(|(_, s)| s.ok)
        .map(|(&t, _)| t)
        .collect();
    rt.block_on(assert_holds_exactly(&store, &acknowledged));
    rt.block_on(store.close()).unwrap();
    drop(a);
    drop(store);
    assert_recovers_clean(dir.path());
}

/// The writer writes the next group while an fsync runs, and a failed
/// fsync fails every group written since the last good one, including
/// those written while it ran; their retries are stored once.
#[test]
fn groups_written_while_an_fsync_runs_fail_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let fs = RecordingFs::default();
    let rec = fs.rec.clone();
    let rt = runtime();
    let store = Arc::new(DiskBacklog::open_with(dir.path(), config(), Arc::new(fs)).unwrap());
    let mut a = Appends {
        store: Arc::clone(&store),
        rec: rec.clone(),
        running: BTreeMap::new(),
        seen: BTreeMap::new(),
    };
    a.start(&rt, 1);
    assert!(a.finish(&rt, 1));

    rec.hold(true);
    a.start(&rt, 2);
    rec.wait_held();
    a.start(&rt, 3);
    rec.wait_written(3);
    a.start(&rt, 4);
    rec.wait_written(4);
    a.check(&rt);
    rec.release(Verdict::Fail);
    rec.hold(false);
    for tag in [2, 3, 4] {
        assert!(
            !a.finish(&rt, tag),
            "append {tag} was not covered by a good fsync"
        );
    }
    a.check(&rt);
    for tag in [5, 6, 7] {
        a.start(&rt, tag);
        assert!(a.finish(&rt, tag));
    }
    a.check(&rt);
    rt.block_on(assert_holds_exactly(&store, &BTreeSet::from([1, 5, 6, 7])));
    rt.block_on(store.close()).unwrap();
    drop(a);
    drop(store);
    assert_recovers_clean(dir.path());
}
