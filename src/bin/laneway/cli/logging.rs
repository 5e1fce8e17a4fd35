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
//!   turn them back on. The Pulsar client library (`pulsar`) is off too:
//!   at trace level it prints every frame it sends, the `CONNECT` frame
//!   among them, whose auth data holds the Tuya login's password. laneway
//!   itself reports every broker error, redacted;
//! - ANSI colour escapes are written only when stderr is a terminal and
//!   `NO_COLOR` is unset or empty, so a log redirected to a file or a pipe
//!   is plain text;
//! - with `--log-format json`, every log event is one JSON object on one
//!   line (`timestamp`, `level`, `target`, `fields` with `message`, `spans`).

use std::fmt::Write as _;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{EnvFilter, FilterExt, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use laneway::message::write_json_string;

/// How log events are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Crates whose logs may print protocol frames or connection URIs, and so
/// credentials: never logged, whatever the level asked for.
pub const SILENCED_TARGETS: [&str; 3] = ["lapin", "amq_protocol", "pulsar"];

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
pub fn init(verbose: u8, format: LogFormat) {
    let default_level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let user = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let filter = user.and(secret_cap());
    let base = fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Text => base.with_ansi(colour_wanted()).with_filter(filter).boxed(),
        LogFormat::Json => base
            .with_ansi(false)
            .event_format(JsonLines)
            .with_filter(filter)
            .boxed(),
    };
    // Fails only when a subscriber is already installed (then it stays).
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Formats each event as one JSON object on one line.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"timestamp\":");
        write_json_string(&mut out, timestamp.trim());
        out.extend_from_slice(b",\"level\":");
        write_json_string(&mut out, meta.level().as_str());
        out.extend_from_slice(b",\"target\":");
        write_json_string(&mut out, meta.target());
        out.extend_from_slice(b",\"fields\":{");
        let mut fields = JsonFields { out, first: true };
        event.record(&mut fields);
        let mut out = fields.out;
        out.push(b'}');
        if let Some(scope) = ctx.event_scope() {
            out.extend_from_slice(b",\"spans\":[");
            for (i, span) in scope.from_root().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(&mut out, span.name());
            }
            out.push(b']');
        }
        out.push(b'}');
        writer.write_str(&String::from_utf8_lossy(&out))?;
        writer.write_char('\n')
    }
}

/// Writes an event's fields as JSON members: numbers and booleans as such,
/// everything else as strings.
struct JsonFields {
    out: Vec<u8>,
    first: bool,
}

impl JsonFields {
    fn key(&mut self, field: &Field) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_json_string(&mut self.out, field.name());
        self.out.push(b':');
    }

    fn raw(&mut self, field: &Field, value: std::fmt::Arguments<'_>) {
        self.key(field);
        let mut text = String::new();
        let _ = text.write_fmt(value);
        self.out.extend_from_slice(text.as_bytes());
    }
}

impl Visit for JsonFields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.raw(field, format_args!("{value}"));
        } else {
            self.record_str(field, &value.to_string());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        write_json_string(&mut self.out, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
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
            "pulsar",
            "pulsar::connection",
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
        assert!(cap.would_enable("laneway::amqp::core::connect", &tracing::Level::TRACE));
        assert!(cap.would_enable("laneway::pulsar::source", &tracing::Level::TRACE));
    }
}
