//! The admin listener's limits: how long a client may take, how many
//! connections it may hold, and which `Host` names it may use.
//!
//! They exist so that the status port, which any local user can reach,
//! can never take what the data path needs: a client that connects and
//! sends nothing, or half a header, is closed after `header_read_timeout`;
//! a connection that holds no request for `idle_timeout` is closed; at
//! most `max_connections` are open at once (long polls included), so the
//! listener holds a bounded number of file descriptors whatever it is sent.

use std::time::Duration;

/// Limits of the admin listener (the `[admin]` knobs besides `listen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminOptions {
    /// How long a client has to send a complete request head, counted from
    /// when its connection opens or its previous response ends. A client
    /// that sends nothing, or half a header, is closed after it.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request being handled
    /// (a response the client does not read, a body it trickles). Long
    /// polls are requests being handled: they are not idle.
    pub idle_timeout: Duration,
    /// How many connections may be open at once, long polls included. At
    /// the cap a new connection closes the oldest idle one; when none is
    /// idle, the new one is closed at once.
    pub max_connections: usize,
    /// `Host` names accepted besides the loopback names (`localhost`,
    /// `127.0.0.1`, `[::1]`, …) and the listen address; `"*"` accepts any.
    /// Anything else is refused with 403, so that a web page cannot reach
    /// the listener through a name it rebinds to 127.0.0.1.
    pub allowed_hosts: Vec<String>,
}

impl AdminOptions {
    /// The default `header_read_timeout`.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default `idle_timeout`.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// The default `max_connections`: room for a few dashboards, scrapers
    /// and long polls, far below a process's usual 1,024 descriptors.
    pub const MAX_CONNECTIONS: usize = 128;
}

impl Default for AdminOptions {
    fn default() -> Self {
        AdminOptions {
            header_read_timeout: Self::HEADER_READ_TIMEOUT,
            idle_timeout: Self::IDLE_TIMEOUT,
            max_connections: Self::MAX_CONNECTIONS,
            allowed_hosts: Vec::new(),
        }
    }
}
