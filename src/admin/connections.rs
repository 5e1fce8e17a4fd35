//! The admin listener's open connections: a cap on how many, which one
//! gives way at the cap, and when one has been idle too long.
//!
//! Invariants: at most `max` connections are admitted at once; a
//! connection is busy while a request of it is being handled (a long poll
//! included) and idle otherwise; at the cap a new connection closes the
//! oldest idle one, and is itself refused only when every admitted
//! connection is busy. A connection's slot is freed when its task ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a connection is doing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Activity {
    /// A request of it is being handled.
    busy: bool,
    /// When it last became idle (or was accepted).
    since: Instant,
}

struct Slot {
    activity: watch::Receiver<Activity>,
    close: CancellationToken,
}

/// The table of admitted connections, in the order they were accepted.
pub(crate) struct Connections {
    max: usize,
    open: Mutex<BTreeMap<u64, Slot>>,
    next: Mutex<u64>,
}

impl Connections {
    /// A table admitting at most `max` connections (at least one).
    pub(crate) fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max: max.max(1),
            open: Mutex::new(BTreeMap::new()),
            next: Mutex::new(0),
        })
    }

    /// Admits a new connection, closing the oldest idle one at the cap;
    /// `None` when the cap is reached and every connection is busy.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut open = self.open.lock();
        if open.len() >= self.max {
            let oldest_idle = open
                .iter()
                .find(|(_, s)| !s.activity.borrow().busy)
                .map(|(id, _)| *id)?;
            if let Some(slot) = open.remove(&oldest_idle) {
                slot.close.cancel();
            }
        }
        let id = {
            let mut next = self.next.lock();
            *next += 1;
            *next
        };
        let (activity, watching) = watch::channel(Activity {
            busy: false,
            since: Instant::now(),
        });
        let close = CancellationToken::new();
        open.insert(
            id,
            Slot {
                activity: watching.clone(),
                close: close.clone(),
            },
        );
        Some(Admitted {
            id,
            table: Arc::clone(self),
            activity: Arc::new(activity),
            watching,
            close,
        })
    }

    /// How many connections are admitted now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.lock().len()
    }
}

/// One admitted connection; dropping it frees its slot.
pub(crate) struct Admitted {
    id: u64,
    table: Arc<Connections>,
    activity: Arc<watch::Sender<Activity>>,
    watching: watch::Receiver<Activity>,
    close: CancellationToken,
}

impl Admitted {
    /// Marks the connection busy until the returned guard is dropped.
    pub(crate) fn busy_handle(&self) -> BusyHandle {
        BusyHandle(Arc::clone(&self.activity))
    }

    /// Resolves when a newer connection took this one's slot.
    pub(crate) async fn evicted(&self) {
        self.close.cancelled().await;
    }

    /// Resolves once the connection has been idle for `limit` in one go.
    pub(crate) async fn idle_for(&self, limit: Duration) {
        let mut rx = self.watching.clone();
        loop {
            let now = *rx.borrow_and_update();
            if now.busy {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep_until(now.since + limit) => return,
                changed = rx.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.table.open.lock().remove(&self.id);
    }
}

/// Hands out [`Busy`] guards for one connection's requests.
#[derive(Clone)]
pub(crate) struct BusyHandle(Arc<watch::Sender<Activity>>);

impl BusyHandle {
    /// Marks the connection busy until the guard is dropped.
    pub(crate) fn enter(&self) -> Busy {
        self.0.send_modify(|a| a.busy = true);
        Busy(Arc::clone(&self.0))
    }
}

/// A request being handled: its connection is not idle meanwhile.
pub(crate) struct Busy(Arc<watch::Sender<Activity>>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_replace(Activity {
            busy: false,
            since: Instant::now(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_oldest_idle_gives_way_and_busy_ones_do_not() {
        let table = Connections::new(2);
        let first = table.admit().unwrap();
        let second = table.admit().unwrap();
        let _busy = first.busy_handle().enter();
        // The first is busy: the second, idle, gives way.
        let third = table.admit().unwrap();
        assert!(second.close.is_cancelled());
        assert!(!first.close.is_cancelled());
        assert_eq!(table.len(), 2);
        // Every admitted one busy: a new one is refused.
        let _busy3 = third.busy_handle().enter();
        assert!(table.admit().is_none());
        drop(third);
        assert_eq!(table.len(), 1);
        assert!(table.admit().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_request_for_the_whole_limit() {
        let table = Connections::new(4);
        let c = table.admit().unwrap();
        let handle = c.busy_handle();
        let busy = handle.enter();
        let limit = Duration::from_secs(5);
        let idle = c.idle_for(limit);
        tokio::pin!(idle);
        // Busy for longer than the limit: not idle.
        assert!(
            tokio::time::timeout(Duration::from_secs(20), idle.as_mut())
                .await
                .is_err()
        );
        let freed = Instant::now();
        drop(busy);
        idle.await;
        assert!(Instant::now() >= freed + limit);
    }
}
