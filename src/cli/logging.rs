//! Log set-up for every command: levels, colour, and the caps that keep
//! secrets out of the log.
//!
//! Invariants:
//! - no log line ever holds a broker password, at any level and whatever
//!   `RUST_LOG` says: the AMQP client library (`lapin`) and its protocol
//!   crates (`amq_protocol*`) print protocol frames at debug and trace
//!   level, the `Connection.StartOk` frame among them, which carries the
//!   SASL response with the password; they also log the connection URI. A
//!   second, fixed filter switches them off, and it is combined with the
//!   user's filter so that no `RUST_LOG` directive, however specific, can
//!   turn them back on. laneway itself reports every broker error, redacted;
//! - ANSI colour escapes are written only when stderr is a terminal and
//!   `NO_COLOR` is unset or empty, so a log redirected to a file or a pipe
//!   is plain text.

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{EnvFilter, FilterExt, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

/// Crates whose logs may print protocol frames or connection URIs, and so
/// credentials: never logged, whatever the level asked for.
pub const SILENCED_TARGETS: [&str; 2] = ["lapin", "amq_protocol"];

/// The fixed filter: every target at every level, except the silenced ones.
fn secret_cap() -> Targets {
    SILENCED_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, target| t.with_target(*target, LevelFilter::OFF),
    )
}

/// Whether log lines may carry colour: stderr is a terminal and `NO_COLOR`
/// is unset or empty (<https://no-color.org>).
pub fn colour_wanted() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Installs the global subscriber: `RUST_LOG` when set, else `warn`,
/// `info` (`-v`) or `debug` (`-vv`); always capped by [`SILENCED_TARGETS`].
pub fn init(verbose: u8) {
    let default_level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let user = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour_wanted())
        .with_filter(user.and(secret_cap()));
    // Fails only when a subscriber is already installed (then it stays).
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_silences_client_library_targets_at_every_level() {
        let cap = secret_cap();
        for target in [
            "lapin",
            "lapin::channels",
            "amq_protocol_tcp",
            "amq_protocol::frame",
        ] {
            assert!(
                !cap.would_enable(target, &tracing::Level::ERROR),
                "{target}"
            );
            assert!(
                !cap.would_enable(target, &tracing::Level::TRACE),
                "{target}"
            );
        }
        assert!(cap.would_enable("laneway::amqp::connect", &tracing::Level::TRACE));
    }
}
