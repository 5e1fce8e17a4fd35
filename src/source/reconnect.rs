//! The wait between two sessions of a source that reconnects: the one
//! place that says a session was lost, shows it on the status line and
//! waits its backoff.
//!
//! Invariants: the wait is the backoff's next delay (jittered, growing to
//! its cap; the caller resets it once a session works); a raised `stop`
//! ends the wait at once, and no wait starts after it.

use tokio_util::sync::CancellationToken;

use super::SourceHealth;
use crate::backoff::Backoff;

/// After a source's session was lost (or a connection attempt failed):
/// says so (WARN naming `who` and `why`, then `after`: what the next
/// session does), shows it on the status line, and waits the next backoff
/// delay. False when `stop` was raised meanwhile (or before): the source
/// ends instead of reconnecting.
pub async fn wait_to_reconnect(
    backoff: &mut Backoff,
    stop: &CancellationToken,
    health: &SourceHealth,
    who: &str,
    why: &str,
    after: &str,
) -> bool {
    if stop.is_cancelled() {
        return false;
    }
    let wait = backoff.next_delay();
    tracing::warn!(source = %who, reason = %why, "session lost; retrying in {wait:?}; {after}");
    health.troubled(format!("connection lost, reconnecting in {wait:?}"));
    health.reconnecting();
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}
