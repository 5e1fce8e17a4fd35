//! A one-way, many-reader signal (stop reading, shutdown, drained).
//!
//! Invariant: once raised, a signal stays raised, and every waiter (present
//! or future) sees it.

use std::sync::Arc;

use tokio::sync::watch;

/// The raising side of a [`Signal`].
#[derive(Clone)]
pub struct Trigger {
    tx: Arc<watch::Sender<bool>>,
}

/// The waiting side: cheap to clone, resolves once the trigger fires.
#[derive(Clone)]
pub struct Signal {
    rx: watch::Receiver<bool>,
}

/// A new trigger and its signal, not yet raised.
pub fn signal() -> (Trigger, Signal) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx: Arc::new(tx) }, Signal { rx })
}

impl Trigger {
    /// Raises the signal for good.
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }

    /// A signal that follows this trigger.
    pub fn signal(&self) -> Signal {
        Signal {
            rx: self.tx.subscribe(),
        }
    }
}

impl Signal {
    /// Whether the signal was raised.
    pub fn is_raised(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the signal is raised (at once if it already was). A
    /// trigger dropped without firing never resolves this.
    pub async fn raised(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|raised| *raised).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
