//! How long laneway waits for an AMQP 1.0 peer at each step after the
//! connection is open. A peer answers in milliseconds; one that never does
//! must not hold a source or the simulator for ever, and the client's
//! session task spins on a core while its End waits for the peer's, as its
//! connection task does while its Close waits (docs/amqp1.md, "Known";
//! `examples/amqp1_end_spin.rs` measures both), so every such wait is
//! bounded and the handle dropped when the bound is reached.

use std::time::Duration;

/// How long the peer may take to answer a session's begin and the link's
/// attach (and the client to send the first credit). One that never does
/// (seen in CI: RabbitMQ's AMQP 1.0 plugin with no answer to an attach, the
/// client's session task spinning) is a lost connection: dropped, and made
/// again by the source.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a close (a link's detach, a session's end, the connection's
/// close) waits for the peer before the handle is dropped: everything sent
/// was settled before, and dropping the connection closes its socket.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
