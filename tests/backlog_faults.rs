//! The disk backlog under failing disks: ENOSPC and EIO on a write, EIO on
//! an fsync, short writes, a segment that cannot be created, and a disk that
//! fills up (injected through the store's file-operation seam, walking the
//! free space page by page, and for real on a small tmpfs). After each: nothing acknowledged is lost, nothing
//! torn is left, and what comes out is byte for byte what went in.

use crate::support;

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::disk::{assert_same, drain, rt, sent};

use laneway::backlog::disk::{Filesystem, RealFilesystem, SegmentFile, verify_dir};
use laneway::backlog::{
    BacklogError, BacklogRecord, BacklogStore, DiskBacklog, DiskBacklogConfig, StoredRecord,
};
use parking_lot::Mutex;
use support::wait::poll_until_async;

#[derive(Debug, Clone, Copy)]
enum Fault {
    NoSpace,
    Eio,
    /// Write only this many bytes of the next write.
    Short(usize),
}

impl Fault {
    fn error(self) -> io::Error {
        match self {
            Fault::NoSpace => io::Error::from_raw_os_error(28),
            _ => io::Error::from_raw_os_error(5),
        }
    }
}

/// Faults queued for the next operations, and an optional disk capacity.
#[derive(Default)]
struct Plan {
    writes: VecDeque<Fault>,
    syncs: VecDeque<Fault>,
    creates: VecDeque<Fault>,
    /// Bytes the "disk" holds at most (every file the store writes through
    /// the seam: segments, the ledger, the space reserve), counted in whole
    /// pages like a small tmpfs: a write past it fails with ENOSPC.
    capacity: Option<u64>,
    /// Bytes held by each file.
    sizes: std::collections::HashMap<std::path::PathBuf, u64>,
}

fn is_segment(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "seg")
}

/// Files take whole pages, as on tmpfs.
const PAGE: u64 = 4096;

/// The space reserve's size while its ledger is small.
const MIN_RESERVE_BYTES: u64 = 64 * 1024;

fn pages(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE) * PAGE
}

impl Plan {
    /// Bytes in use, in whole pages.
    fn used(&self) -> u64 {
        self.sizes.values().map(|&b| pages(b)).sum()
    }

    /// The disk as a failure message shows it: capacity, use, and each
    /// file's size.
    fn describe(&self) -> String {
        let mut files: Vec<String> = self
            .sizes
            .iter()
            .map(|(p, b)| {
                format!(
                    "{} {b}",
                    p.file_name().unwrap_or_default().to_string_lossy()
                )
            })
            .collect();
        files.sort();
        format!(
            "disk of {:?} bytes, {} used: {}",
            self.capacity,
            self.used(),
            files.join(", ")
        )
    }
}

/// A real directory as a failure message shows it: each file's size.
fn describe_dir(dir: &Path) -> String {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let len = e.metadata().map_or(0, |m| m.len());
                    format!("{} {len}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.join(", ")
}

#[derive(Clone, Default)]
struct FaultyFs {
    plan: Arc<Mutex<Plan>>,
}

struct FaultyFile {
    inner: Box<dyn SegmentFile>,
    path: std::path::PathBuf,
    plan: Arc<Mutex<Plan>>,
}

impl SegmentFile for FaultyFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let mut plan = self.plan.lock();
        let mut len = buf.len();
        // Queued faults are for segment writes; the ledger and the space
        // reserve meet only the capacity.
        let queued = if is_segment(&self.path) {
            plan.writes.pop_front()
        } else {
            None
        };
        match queued {
            Some(Fault::Short(n)) => len = n.min(len),
            Some(f) => return Err(f.error()),
            None => {}
        }
        let end = offset + len as u64;
        let held = plan.sizes.get(&self.path).copied().unwrap_or(0);
        if let Some(cap) = plan.capacity
            && pages(end) > pages(held)
            && plan.used() + pages(end) - pages(held) > cap
        {
            return Err(Fault::NoSpace.error());
        }
        let n = self.inner.write_at(&buf[..len], offset)?;
        let new_end = offset + n as u64;
        if new_end > held {
            plan.sizes.insert(self.path.clone(), new_end);
        }
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        if is_segment(&self.path)
            && let Some(f) = self.plan.lock().syncs.pop_front()
        {
            return Err(f.error());
        }
        self.inner.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)?;
        self.plan.lock().sizes.insert(self.path.clone(), len);
        Ok(())
    }

    // Reads and appends meet no fault here (tests/state_faults.rs fails
    // them).
    fn append(&self, buf: &[u8]) -> io::Result<usize> {
        self.inner.append(buf)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

impl Filesystem for FaultyFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        if let Some(f) = self.plan.lock().creates.pop_front() {
            return Err(f.error());
        }
        let inner = RealFilesystem.create_new(path)?;
        Ok(Box::new(FaultyFile {
            inner,
            path: path.to_path_buf(),
            plan: Arc::clone(&self.plan),
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        // Queued `creates` faults are for segments (`create_new`) only.
        let inner = RealFilesystem.create(path)?;
        self.plan.lock().sizes.insert(path.to_path_buf(), 0);
        Ok(Box::new(FaultyFile {
            inner,
            path: path.to_path_buf(),
            plan: Arc::clone(&self.plan),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFilesystem.rename(from, to)?;
        let mut plan = self.plan.lock();
        let size = plan.sizes.remove(from).unwrap_or(0);
        plan.sizes.insert(to.to_path_buf(), size);
        Ok(())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let len = std::fs::metadata(path)?.len();
        self.plan.lock().sizes.insert(path.to_path_buf(), len);
        Ok(Box::new(FaultyFile {
            inner: RealFilesystem.open(path)?,
            path: path.to_path_buf(),
            plan: Arc::clone(&self.plan),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealFilesystem.remove_file(path)?;
        self.plan.lock().sizes.remove(path);
        Ok(())
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

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
        RealFilesystem.read_dir(dir)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFilesystem.create_dir_all(dir)
    }
}

fn config(segment_bytes: u64) -> DiskBacklogConfig {
    DiskBacklogConfig {
        segment_bytes,
        commit_interval: Duration::ZERO,
        ledger_interval: Duration::from_millis(5),
        ..DiskBacklogConfig::default()
    }
}

/// One failing operation, then the same append again: the failed append
/// is reported (never "ok"), leaves nothing torn, and the retry stores it
/// once.
#[test]
fn a_failed_write_or_fsync_is_reported_rolled_back_and_stored_once_on_retry() {
    for fault in ["enospc", "eio-write", "eio-fsync", "short-then-enospc"] {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::default();
        rt().block_on(async {
            let store =
                DiskBacklog::open_with(dir.path(), config(1 << 20), Arc::new(fs.clone())).unwrap();
            store
                .append(&(0..10).map(sent).collect::<Vec<_>>())
                .await
                .unwrap();
            {
                let mut plan = fs.plan.lock();
                match fault {
                    "enospc" => plan.writes.push_back(Fault::NoSpace),
                    "eio-write" => plan.writes.push_back(Fault::Eio),
                    "eio-fsync" => plan.syncs.push_back(Fault::Eio),
                    _ => {
                        plan.writes.push_back(Fault::Short(100));
                        plan.writes.push_back(Fault::NoSpace);
                    }
                }
            }
            let batch: Vec<_> = (10..20).map(sent).collect();
            let failed = store.append(&batch).await;
            match (fault, &failed) {
                ("enospc" | "short-then-enospc", Err(BacklogError::Full { stored: 0 })) => {}
                ("eio-write" | "eio-fsync", Err(BacklogError::Io { .. })) => {}
                _ => panic!("{fault}: {failed:?}"),
            }
            store.append(&batch).await.unwrap();
            store
                .append(&(20..25).map(sent).collect::<Vec<_>>())
                .await
                .unwrap();
            assert_same(&drain(&store).await, &(0..25).collect::<Vec<_>>());
            store.close().await.unwrap();
        });
        let v = verify_dir(dir.path()).unwrap();
        assert!(v.ok, "{fault}: {v:?}");
        // And from disk again after a restart, on the real file system.
        rt().block_on(async {
            let store = DiskBacklog::open(dir.path(), config(1 << 20)).unwrap();
            assert_eq!(store.recovery().lost, 0, "{fault}");
            assert!(drain(&store).await.is_empty(), "{fault}: all were released");
        });
    }
}

#[test]
fn short_writes_are_finished_not_torn() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    rt().block_on(async {
        let store =
            DiskBacklog::open_with(dir.path(), config(1 << 20), Arc::new(fs.clone())).unwrap();
        for n in [1, 7, 8, 13, 4096] {
            fs.plan.lock().writes.push_back(Fault::Short(n));
        }
        for chunk in 0..5u64 {
            let batch: Vec<_> = (chunk * 20..chunk * 20 + 20).map(sent).collect();
            store.append(&batch).await.unwrap();
        }
        store.close().await.unwrap();
    });
    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config(1 << 20)).unwrap();
        assert_same(&drain(&store).await, &(0..100).collect::<Vec<_>>());
    });
}

#[test]
fn a_segment_that_cannot_be_created_is_backpressure_then_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    rt().block_on(async {
        let store = DiskBacklog::open_with(dir.path(), config(4096), Arc::new(fs.clone())).unwrap();
        fs.plan.lock().creates.push_back(Fault::NoSpace);
        let batch: Vec<_> = (0..100).map(sent).collect();
        let stored = match store.append(&batch).await {
            Err(BacklogError::Full { stored }) => stored,
            other => panic!("{other:?}"),
        };
        assert!(stored > 0 && stored < 100, "{stored}");
        store.append(&batch[stored..]).await.unwrap();
        assert_same(&drain(&store).await, &(0..100).collect::<Vec<_>>());
    });
}

/// Appends `batch` until it is stored; each time the store is full, first
/// delivers (takes and releases) everything it holds, as a consumer
/// draining the backlog would. Fails after `limit`.
async fn append_while_draining(
    store: &DiskBacklog,
    mut batch: Vec<BacklogRecord>,
    delivered: &mut Vec<StoredRecord>,
    limit: Duration,
    disk: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    while !batch.is_empty() {
        match store.append(&batch).await {
            Ok(()) => batch.clear(),
            Err(BacklogError::Full { stored }) => {
                batch.drain(..stored);
                delivered.extend(drain(store).await);
                // The writer reclaims released space on its next tick.
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the store never took the rest back ({} waiting, depth {:?}; {})",
            batch.len(),
            store.depth(),
            disk()
        );
    }
}

/// A disk smaller than one segment (the default 64 MiB segments on a small
/// volume): once everything in the active segment is delivered, its space
/// is reclaimed and appends go on. Before the fix this stalled for ever.
#[test]
fn a_full_disk_recovers_when_the_active_segment_is_fully_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    fs.plan.lock().capacity = Some(256 * 1024);
    let n = 10_000u64;
    rt().block_on(async {
        let store =
            DiskBacklog::open_with(dir.path(), config(64 << 20), Arc::new(fs.clone())).unwrap();
        let mut delivered = Vec::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let batch: Vec<_> = chunk.iter().copied().map(sent).collect();
            append_while_draining(
                &store,
                batch,
                &mut delivered,
                Duration::from_secs(30),
                || fs.plan.lock().describe(),
            )
            .await;
        }
        assert!(!delivered.is_empty(), "the disk never filled up");
        delivered.extend(drain(&store).await);
        assert_same(&delivered, &(0..n).collect::<Vec<_>>());
        store.close().await.unwrap();
    });
    let v = verify_dir(dir.path()).unwrap();
    assert!(v.ok, "{v:?}");
}

/// The same on a real full file system: a 2 MiB tmpfs (mounted when the
/// test runs as root; otherwise it says it skipped).
#[test]
fn a_real_full_tmpfs_recovers_once_records_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "SKIPPED: mounting a tmpfs needs root; the injected full disk test covers the logic"
        );
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    let n = 30_000u64;
    rt().block_on(async {
        let store = DiskBacklog::open(dir.path(), config(64 << 20)).unwrap();
        let mut delivered = Vec::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let batch: Vec<_> = chunk.iter().copied().map(sent).collect();
            append_while_draining(
                &store,
                batch,
                &mut delivered,
                Duration::from_secs(30),
                || describe_dir(dir.path()),
            )
            .await;
        }
        assert!(!delivered.is_empty(), "2 MiB should have filled up");
        delivered.extend(drain(&store).await);
        assert_same(&delivered, &(0..n).collect::<Vec<_>>());
        store.close().await.unwrap();
    });
}

/// What became of the space reserve when the disk filled.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ReserveWas {
    /// Whole: the store gives it up to save a ledger.
    Whole,
    /// Gone (deleted while the store was closed, or the disk filled while
    /// it was being made), and the disk too full to make it again.
    Lost,
}

/// One full-disk case: a store holding three segments of undelivered
/// records meets a disk with `free` bytes left, then takes `more` records
/// while a consumer delivers. Every record comes out once, byte for byte,
/// and once all are delivered no delivered segment stays on disk.
fn full_disk_case(segment_bytes: u64, free: u64, more: u64, reserve_was: ReserveWas) {
    let what = format!("segment_bytes {segment_bytes}, free {free}, reserve {reserve_was:?}");
    // The capacity is the seam's; a memory file system keeps the many
    // fsyncs of the walk cheap where there is one.
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let fs = FaultyFs::default();
    rt().block_on(async {
        let store = DiskBacklog::open_with(dir.path(), config(segment_bytes), Arc::new(fs.clone()))
            .unwrap();
        let mut next = 0u64;
        while store.segment_count() < 3 {
            store
                .append(&(next..next + 10).map(sent).collect::<Vec<_>>())
                .await
                .unwrap();
            next += 10;
        }
        let reserve = dir.path().join("space.reserve");
        poll_until_async(
            Duration::from_secs(10),
            "the space reserve is made whole",
            || fs.plan.lock().sizes.get(&reserve).copied().unwrap_or(0) >= MIN_RESERVE_BYTES,
        )
        .await;
        let store = match reserve_was {
            ReserveWas::Whole => store,
            ReserveWas::Lost => {
                store.close().await.unwrap();
                drop(store);
                fs.remove_file(&reserve).unwrap();
                let mut plan = fs.plan.lock();
                plan.capacity = Some(plan.used() + free);
                drop(plan);
                DiskBacklog::open_with(dir.path(), config(segment_bytes), Arc::new(fs.clone()))
                    .unwrap()
            }
        };
        {
            let mut plan = fs.plan.lock();
            if plan.capacity.is_none() {
                plan.capacity = Some(plan.used() + free);
            }
        }
        let mut delivered = Vec::new();
        let all: Vec<u64> = (next..next + more).collect();
        for chunk in all.chunks(25) {
            let batch: Vec<_> = chunk.iter().copied().map(sent).collect();
            append_while_draining(
                &store,
                batch,
                &mut delivered,
                Duration::from_secs(20),
                || format!("{what}: {}", fs.plan.lock().describe()),
            )
            .await;
        }
        delivered.extend(drain(&store).await);
        delivered.sort_by_key(|r| r.id);
        assert_same(&delivered, &(0..next + more).collect::<Vec<_>>());
        poll_until_async(
            Duration::from_secs(10),
            &format!("{what}: delivered segments stay on disk"),
            || store.segment_count() == 1,
        )
        .await;
        store.close().await.unwrap();
    });
    let v = verify_dir(dir.path()).unwrap();
    assert!(v.ok, "{what}: {v:?}");
}

/// A full disk recovers whatever the free space left when it fills: walks
/// it from nothing to a few segments, page by page, for several segment
/// sizes. Freeing delivered segments needs a ledger saved first, and that
/// needs a page; a rotation may have taken the last one. Before the space
/// reserve this stalled for ever with delivered segments on disk. The
/// walk is made again with the reserve lost and the disk too full to make
/// it again: before appends waited for the reserve, they took the pages it
/// needed, and a rotation onto the last page stalled the same way.
/// `LANEWAY_FULL_DISK_STRIDE` (pages, default 1) thins the walk.
#[test]
fn a_full_disk_recovers_whatever_the_free_pages_and_segment_size() {
    let stride: usize = std::env::var("LANEWAY_FULL_DISK_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    for segment_bytes in [8 << 10, 16 << 10, 64 << 10] {
        let most = 3 * segment_bytes / PAGE;
        let more = 5 * segment_bytes / 150;
        for free in (0..=most).step_by(stride) {
            full_disk_case(segment_bytes, free * PAGE, more, ReserveWas::Whole);
        }
        // Without a reserve, a ledger needs a free page to be saved, and
        // new records wait until delivered segments free room for the
        // reserve: on a disk where two segments are smaller than it, they
        // would wait for ever (the store says the disk is too full for it).
        if 2 * segment_bytes >= MIN_RESERVE_BYTES {
            for free in (1..=most).step_by(stride) {
                full_disk_case(segment_bytes, free * PAGE, more, ReserveWas::Lost);
            }
        }
    }
}

/// The same on a real tmpfs, filled by another file to a few pages of the
/// brim after the store holds three segments of small (64 KiB) segments
/// (mounted when the test runs as root; otherwise it says it skipped).
#[test]
fn a_real_tmpfs_filled_by_another_file_recovers_with_small_segments() {
    let top = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
        .arg(top.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: mounting a tmpfs needs root; the injected full disk walk covers it");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(top.path());
    for free_pages in [0u64, 1, 2, 3, 5, 9, 17] {
        let dir = top.path().join(format!("backlog-{free_pages}"));
        let junk = top.path().join("junk");
        rt().block_on(async {
            let store = DiskBacklog::open(&dir, config(64 << 10)).unwrap();
            let mut next = 0u64;
            while store.segment_count() < 3 {
                store
                    .append(&(next..next + 10).map(sent).collect::<Vec<_>>())
                    .await
                    .unwrap();
                next += 10;
            }
            let reserve = dir.join("space.reserve");
            poll_until_async(Duration::from_secs(10), "the space reserve is made", || {
                reserve.exists()
            })
            .await;
            // Another program fills the volume, then leaves a few pages.
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&junk).unwrap();
                let page = [0x5au8; PAGE as usize];
                while f.write_all(&page).is_ok() {}
                let len = f.metadata().unwrap().len();
                f.set_len(len.saturating_sub(free_pages * PAGE)).unwrap();
            }
            let mut delivered = Vec::new();
            let more = 3000u64;
            let all: Vec<u64> = (next..next + more).collect();
            for chunk in all.chunks(100) {
                let batch: Vec<_> = chunk.iter().copied().map(sent).collect();
                append_while_draining(
                    &store,
                    batch,
                    &mut delivered,
                    Duration::from_secs(20),
                    || format!("{free_pages} pages left free: {}", describe_dir(&dir)),
                )
                .await;
            }
            delivered.extend(drain(&store).await);
            delivered.sort_by_key(|r| r.id);
            assert_same(&delivered, &(0..next + more).collect::<Vec<_>>());
            poll_until_async(
                Duration::from_secs(10),
                &format!("{free_pages} pages free: delivered segments stay on disk"),
                || store.segment_count() == 1,
            )
            .await;
            store.close().await.unwrap();
        });
        let v = verify_dir(&dir).unwrap();
        assert!(v.ok, "{free_pages} pages free: {v:?}");
        std::fs::remove_file(&junk).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
