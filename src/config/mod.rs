//! `laneway.toml`: what a run is made of (sources, groups with their lanes,
//! scheduler knobs, sinks and backlogs), and how it becomes an engine.
//!
//! Invariants: every knob has a default; an unknown key or a wrong type is
//! an error naming its line and column; a config that loads also builds
//! (semantic checks run at load time, not halfway through start-up).

mod spec;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::amqp::{AmqpSink, AmqpSource};
use crate::backlog::{BacklogStore, DiskBacklog, MemoryBacklog, MemoryLimits};
use crate::engine::{DeadLetters, EngineBuilder, EngineOptions, GroupConfig};
use crate::sink::{JsonlSink, NullSink, SimulatedHandler, Sink};
use crate::source::jsonl::JsonlInput;
use crate::source::{JsonlSource, Simulator};

pub use spec::{BacklogSpec, JsonlSpec, SinkSpec, SourceSpec};

/// The embedded default: what `laneway run` does with no `--config`. It is
/// the shipped `laneway.example.toml`, so the two can never disagree.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../laneway.example.toml");

/// A whole config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Where backlogs, dead letters and JSONL file checkpoints live.
    pub data_dir: PathBuf,
    /// How often `run` prints a status line.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// Payloads larger than this are dead letters.
    pub max_message_bytes: usize,
    /// How long shutdown waits for in-flight work.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The dead-letter file (default: `dead-letters.jsonl` in `data_dir`).
    pub dead_letters: Option<PathBuf>,
    /// Where messages come from.
    pub sources: Vec<SourceSpec>,
    /// The consumer groups.
    pub groups: Vec<GroupConfig>,
}

impl Default for FileConfig {
    fn default() -> Self {
        let engine = EngineOptions::default();
        FileConfig {
            data_dir: PathBuf::from("laneway-data"),
            status_interval: Duration::from_secs(1),
            max_message_bytes: engine.max_message_bytes,
            shutdown_grace: engine.shutdown_grace,
            dead_letters: None,
            sources: Vec::new(),
            groups: Vec::new(),
        }
    }
}

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for laneway; the message has line and column.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The file parses, but a value is not usable.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// 1-based line of the offending key when it can be found, else of
        /// its group (or 1 when the problem is file-wide).
        line: usize,
        /// 1-based column of the offending key (1 when only the line is known).
        column: usize,
        /// What is wrong, naming the knob.
        message: String,
    },
    /// Something the config names could not be opened.
    #[error("{0}")]
    Build(String),
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The line where `[[groups]]` entry number `index` starts.
fn group_line(text: &str, index: usize) -> usize {
    table_line(text, "[[groups]]", index)
}

/// One step of a path into the document: a key, or an index into an array
/// (of tables).
#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// 1-based line and column of the last key of `path` that the document
/// has (so a missing key falls back to its table's position); `None` when
/// not even the first step is there.
fn key_position(text: &str, path: &[Step<'_>]) -> Option<(usize, usize)> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
    let mut current: Option<&toml::Spanned<DeValue<'_>>> = None;
    let mut found = None;
    for step in path {
        match *step {
            Step::Key(key) => {
                let Some(t) = table else { break };
                let Some((k, v)) = t.iter().find(|(k, _)| k.get_ref().as_ref() == key) else {
                    break;
                };
                found = Some(k.span());
                current = Some(v);
            }
            Step::Index(i) => {
                let Some(DeValue::Array(items)) = current.map(|v| v.get_ref()) else {
                    break;
                };
                let Some(item) = items.get(i) else { break };
                found = Some(item.span());
                current = Some(item);
            }
        }
        table = match current.map(|v| v.get_ref()) {
            Some(DeValue::Table(t)) => Some(t),
            _ => None,
        };
    }
    found.map(|span| line_col(text, span.start))
}

/// Knobs of a group whose validation errors name them as `group "x": knob ...`.
const GROUP_KNOBS: [&str; 9] = [
    "live_capacity",
    "slots",
    "batch_size",
    "backlog_share",
    "backlog_rate",
    "max_attempts",
    "delivery_timeout",
    "kinds",
    "products",
];

/// Why a group name cannot be used: it names the group's backlog directory
/// (`<data_dir>/backlog/<name>`), so it must be one plain path component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupNameError {
    /// The name is empty.
    #[error("a group needs a non-empty name")]
    Empty,
    /// `.` or `..`: the directory would be the backlog root or its parent.
    #[error(
        "group name {0:?} is not allowed: it would name the backlog directory itself or its parent"
    )]
    Dots(String),
    /// A path separator, a NUL or another control character.
    #[error(
        "group name {name:?} holds {what}: a name must be one plain path component (letters, digits, '-', '_', '.', ...)"
    )]
    BadCharacter {
        /// The name as given.
        name: String,
        /// Which character, in words.
        what: &'static str,
    },
    /// Longer than a file name may be.
    #[error("group name is {0} bytes long; at most 255 are allowed (it names a directory)")]
    TooLong(usize),
}

/// Checks that a group name is safe as a single directory name.
pub fn check_group_name(name: &str) -> Result<(), GroupNameError> {
    if name.is_empty() {
        return Err(GroupNameError::Empty);
    }
    if name == "." || name == ".." {
        return Err(GroupNameError::Dots(name.to_string()));
    }
    let bad = |what| {
        Err(GroupNameError::BadCharacter {
            name: name.to_string(),
            what,
        })
    };
    for c in name.chars() {
        match c {
            '/' => return bad("a '/'"),
            '\\' => return bad("a '\\'"),
            '\0' => return bad("a NUL character"),
            c if c.is_control() => return bad("a control character"),
            _ => {}
        }
    }
    if name.len() > 255 {
        return Err(GroupNameError::TooLong(name.len()));
    }
    Ok(())
}

/// The line where the array-of-tables entry `header` number `index` starts.
fn table_line(text: &str, header: &str, index: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with(header))
        .nth(index)
        .map_or(1, |(i, _)| i + 1)
}

impl FileConfig {
    /// Parses and checks a config; `path` is only used in messages.
    pub fn parse(text: &str, path: &str) -> Result<FileConfig, ConfigError> {
        let config: FileConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            ConfigError::Parse {
                path: path.to_string(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        let invalid = |line, message| ConfigError::Invalid {
            path: path.to_string(),
            line,
            column: 1,
            message,
        };
        // At the key `knob` of group `i` (nested keys after a '.'), else at the group.
        let at_key = |i: usize, knob: &str, message: String| {
            let mut steps = vec![Step::Key("groups"), Step::Index(i)];
            steps.extend(knob.split('.').map(Step::Key));
            let (line, column) = key_position(text, &steps).unwrap_or((group_line(text, i), 1));
            ConfigError::Invalid {
                path: path.to_string(),
                line,
                column,
                message,
            }
        };
        if config.groups.is_empty() {
            return Err(invalid(
                1,
                "no [[groups]]: at least one consumer group is needed".into(),
            ));
        }
        for (i, g) in config.groups.iter().enumerate() {
            check_group_name(&g.name).map_err(|e| at_key(i, "name", e.to_string()))?;
            g.validate().map_err(|m| {
                let prefix = format!("group {:?}: ", g.name);
                let knob = GROUP_KNOBS
                    .iter()
                    .find(|k| {
                        m.strip_prefix(&prefix)
                            .is_some_and(|rest| rest.starts_with(*k))
                    })
                    .or_else(|| GROUP_KNOBS.iter().find(|k| m.contains(*k)));
                match knob {
                    Some(knob) => at_key(i, knob, m),
                    None => invalid(group_line(text, i), m),
                }
            })?;
            if let BacklogSpec::Memory {
                max_records,
                max_bytes,
            } = &g.backlog
            {
                for (knob, value) in [("max_records", max_records), ("max_bytes", max_bytes)] {
                    if *value == 0 {
                        return Err(at_key(
                            i,
                            &format!("backlog.{knob}"),
                            format!(
                                "group {:?}: backlog.{knob} must be at least 1 (a memory backlog that can hold nothing would stop the group at its first diverted message)",
                                g.name
                            ),
                        ));
                    }
                }
            }
            if let BacklogSpec::Disk(d) = &g.backlog {
                d.validate().map_err(|m| {
                    invalid(group_line(text, i), format!("group {:?}: {m}", g.name))
                })?;
                if d.max_payload_bytes() < config.max_message_bytes {
                    return Err(invalid(
                        group_line(text, i),
                        format!(
                            "group {:?}: backlog.segment_bytes ({}) is too small for max_message_bytes ({}): a record never spans two segments",
                            g.name, d.segment_bytes, config.max_message_bytes
                        ),
                    ));
                }
            }
            if let SinkSpec::Amqp(sink) = &g.sink {
                sink.validate().map_err(|e| {
                    invalid(
                        group_line(text, i),
                        format!("group {:?}: amqp sink: {e}", g.name),
                    )
                })?;
            }
            if config.groups[..i].iter().any(|o| o.name == g.name) {
                return Err(invalid(
                    group_line(text, i),
                    format!("two groups are named {:?}", g.name),
                ));
            }
        }
        for (i, source) in config.sources.iter().enumerate() {
            if let SourceSpec::Amqp(spec) = source {
                spec.validate().map_err(|e| {
                    invalid(
                        table_line(text, "[[sources]]", i),
                        format!("amqp source: {e}"),
                    )
                })?;
            }
        }
        if config.max_message_bytes == 0 {
            return Err(invalid(1, "max_message_bytes must be at least 1".into()));
        }
        Ok(config)
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The embedded default configuration.
    pub fn embedded() -> FileConfig {
        // The shipped file is checked by a test; failing here is a build defect.
        Self::parse(EMBEDDED_DEFAULT, "laneway.example.toml")
            .unwrap_or_else(|e| unreachable!("the embedded laneway.example.toml is invalid: {e}"))
    }

    /// Engine options from the file's top-level knobs.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            max_message_bytes: self.max_message_bytes,
            shutdown_grace: self.shutdown_grace,
            ..EngineOptions::default()
        }
    }

    /// Opens everything the config names and returns the engine builder,
    /// plus the switches of simulated handlers (to stage outages).
    pub async fn build(&self) -> Result<EngineBuilder, ConfigError> {
        let dead_path = self
            .dead_letters
            .clone()
            .unwrap_or_else(|| self.data_dir.join("dead-letters.jsonl"));
        let dead = DeadLetters::to_file(&dead_path).map_err(|e| {
            ConfigError::Build(format!("dead-letter file {}: {e}", dead_path.display()))
        })?;
        let mut builder = EngineBuilder::default()
            .dead_letters(dead)
            .options(self.engine_options());
        for group in &self.groups {
            let sink = build_sink(&group.sink).await?;
            let store = self.build_backlog(group).await?;
            builder = builder.group_with(group.clone(), sink, Some(store));
        }
        for source in &self.sources {
            builder = match source {
                SourceSpec::Simulator(sim) => builder.source(Simulator::new(sim.clone()), sim.lane),
                SourceSpec::Jsonl(spec) => {
                    let input = if spec.path.as_os_str() == "-" {
                        JsonlInput::Stdin
                    } else {
                        JsonlInput::File(spec.path.clone())
                    };
                    // A line may carry a payload up to the limit plus its envelope.
                    let max_line = self.max_message_bytes.saturating_mul(2).max(64 * 1024);
                    // A file source resumes where the last run was done.
                    let source = JsonlSource::new(input, max_line)
                        .checkpoint_in(self.data_dir.join("sources"));
                    builder.source(source, spec.lane)
                }
                SourceSpec::Amqp(spec) => {
                    let source = AmqpSource::new(spec.clone())
                        .map_err(|e| ConfigError::Build(format!("amqp source: {e}")))?;
                    builder.source(source, spec.lane)
                }
            };
        }
        Ok(builder)
    }

    /// Where a group's disk backlog lives: its `dir`, or
    /// `<data_dir>/backlog/<group name>`.
    pub fn backlog_dir(&self, group: &GroupConfig) -> Option<PathBuf> {
        match &group.backlog {
            BacklogSpec::Disk(c) => Some(
                c.dir
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("backlog").join(&group.name)),
            ),
            BacklogSpec::Memory { .. } => None,
        }
    }

    async fn build_backlog(
        &self,
        group: &GroupConfig,
    ) -> Result<Arc<dyn BacklogStore>, ConfigError> {
        Ok(match &group.backlog {
            BacklogSpec::Disk(config) => {
                let dir = self.backlog_dir(group).unwrap_or_default();
                let config = config.clone();
                let name = group.name.clone();
                // Recovery reads the whole backlog: keep it off the runtime.
                let opened = tokio::task::spawn_blocking(move || {
                    DiskBacklog::open(&dir, config)
                        .map_err(|e| format!("group {name:?}: backlog {}: {e}", dir.display()))
                })
                .await
                .map_err(|e| ConfigError::Build(format!("opening a backlog: {e}")))?;
                Arc::new(opened.map_err(ConfigError::Build)?)
            }
            BacklogSpec::Memory {
                max_records,
                max_bytes,
            } => Arc::new(MemoryBacklog::new(MemoryLimits {
                max_records: *max_records,
                max_bytes: *max_bytes,
            })),
        })
    }
}

async fn build_sink(spec: &SinkSpec) -> Result<Arc<dyn Sink>, ConfigError> {
    Ok(match spec {
        SinkSpec::Simulated { cost } => Arc::new(SimulatedHandler::new(*cost)),
        SinkSpec::Null => Arc::new(NullSink),
        SinkSpec::Stdout => Arc::new(JsonlSink::stdout()),
        SinkSpec::Jsonl { path, sync } => Arc::new(
            JsonlSink::file(path, *sync)
                .await
                .map_err(|e| ConfigError::Build(format!("sink file {}: {e}", path.display())))?,
        ),
        SinkSpec::Amqp(spec) => Arc::new(
            AmqpSink::new(spec.clone())
                .map_err(|e| ConfigError::Build(format!("amqp sink: {e}")))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_parses() {
        let c = FileConfig::embedded();
        assert_eq!(c.groups.len(), 2);
        assert_eq!(c.groups[1].name, "alarms");
        assert_eq!(c.sources.len(), 2);
        assert!(
            c.groups
                .iter()
                .all(|g| matches!(g.backlog, BacklogSpec::Disk(_)))
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_their_line() {
        let text = "[[groups]]\nname = \"a\"\nslots = 2\nslotz = 3\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:4:"), "{err}");
        assert!(err.contains("slotz"), "{err}");

        let text = "[[groups]]\nname = \"a\"\n\nlive_capacity = \"many\"\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:4:"), "{err}");

        let text =
            "[[sources]]\ntype = \"simulator\"\nrate = 5\nratez = 1\n[[groups]]\nname = \"a\"\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("ratez"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_group_line_and_knob() {
        let text = "[[groups]]\nname = \"a\"\n\n[[groups]]\nname = \"b\"\nbacklog_share = 2.0\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:6:1:"), "{err}");
        assert!(err.contains("backlog_share"), "{err}");
    }

    #[test]
    fn the_disk_backlog_is_the_default_and_its_knobs_parse() {
        let c = FileConfig::parse("[[groups]]\nname = \"a\"\n", "t.toml").unwrap();
        assert_eq!(c.groups[0].backlog, BacklogSpec::Disk(Default::default()));
        assert_eq!(
            c.backlog_dir(&c.groups[0]),
            Some(PathBuf::from("laneway-data/backlog/a"))
        );
        let text = "[[groups]]\nname = \"a\"\nbacklog = { store = \"disk\", dir = \"/x\", max_age = \"1h\", when_full = \"drop_oldest\" }\n";
        let c = FileConfig::parse(text, "t.toml").unwrap();
        assert_eq!(c.backlog_dir(&c.groups[0]), Some(PathBuf::from("/x")));
        let text = "[[groups]]\nname = \"a\"\nbacklog = { store = \"disk\", max_bites = 1 }\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("max_bites"), "{err}");
        let text =
            "[[groups]]\nname = \"a\"\nbacklog = { store = \"disk\", segment_bytes = 65536 }\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("segment_bytes"), "{err}");
        let text = "[[groups]]\nname = \"a\"\nbacklog = { store = \"memory\" }\n";
        assert!(FileConfig::parse(text, "t.toml").is_ok());
    }

    #[test]
    fn amqp_sources_and_sinks_parse_and_are_checked() {
        let text = "[[sources]]\ntype = \"amqp\"\nurl = \"amqp://u:pw@h:5672/%2f\"\nqueues = [\"q\"]\nprefetch = 50\n\
                    [[groups]]\nname = \"a\"\nsink = { type = \"amqp\", url = \"amqp://u:pw@h/\", exchange = \"x\" }\n";
        let c = FileConfig::parse(text, "t.toml").unwrap();
        let SourceSpec::Amqp(s) = &c.sources[0] else {
            panic!("not amqp")
        };
        assert_eq!((s.prefetch, s.batch), (50, 256));
        assert!(!format!("{c:?}").contains("pw"));

        let text =
            "[[groups]]\nname = \"a\"\n\n[[sources]]\ntype = \"amqp\"\nurl = \"amqp://h/\"\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:4:"), "{err}");
        assert!(err.contains("queues"), "{err}");

        let text = "[[groups]]\nname = \"a\"\nsink = { type = \"amqp\", url = \"amqp://h/\", exchange = \"x\", routing_key = \"{colour}\" }\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn the_amqp_example_parses() {
        let c = FileConfig::parse(include_str!("../../examples/amqp.toml"), "amqp.toml").unwrap();
        assert!(matches!(c.sources[0], SourceSpec::Amqp(_)));
        assert!(matches!(c.groups[1].sink, SinkSpec::Amqp(_)));
    }

    #[test]
    fn nested_tables_reject_unknown_keys() {
        let text =
            "[[groups]]\nname = \"a\"\nsink = { type = \"jsonl\", path = \"x\", colour = 1 }\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn unsafe_group_names_are_refused_at_the_name_key() {
        for name in [
            "../../escape",
            "..",
            ".",
            "a/b",
            "/",
            "",
            "a\\b",
            "tab\there",
            "nul\u{0}",
        ] {
            let quoted = toml::Value::String(name.to_string()).to_string();
            let text =
                format!("[[groups]]\nname = \"ok\"\n\n[[groups]]\nslots = 2\n  name = {quoted}\n");
            let err = FileConfig::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(err.starts_with("t.toml:6:3: "), "{name:?}: {err}");
            assert!(
                err.contains("group name") || err.contains("non-empty"),
                "{name:?}: {err}"
            );
        }
        let long = "x".repeat(256);
        let err = FileConfig::parse(&format!("[[groups]]\nname = \"{long}\"\n"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("255"), "{err}");
        for name in ["alarms", "a.b", "产品-1", "x_y", "...", "a..b"] {
            let text =
                format!("[[groups]]\nname = \"{name}\"\nbacklog = {{ store = \"memory\" }}\n");
            assert!(FileConfig::parse(&text, "t.toml").is_ok(), "{name}");
        }
    }

    #[test]
    fn a_memory_backlog_that_holds_nothing_is_refused_at_its_key() {
        let text = "[[groups]]\nname = \"a\"\nbacklog = { store = \"memory\", max_records = 0 }\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:3:31: "), "{err}");
        assert!(
            err.contains("backlog.max_records must be at least 1"),
            "{err}"
        );

        let text =
            "[[groups]]\nname = \"a\"\n\n[groups.backlog]\nstore = \"memory\"\nmax_bytes = 0\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:6:1: "), "{err}");
        assert!(err.contains("backlog.max_bytes"), "{err}");
    }

    #[test]
    fn a_knob_error_points_at_its_key() {
        let text = "# c\n\n[[groups]]\nname = \"a\"\nslots = 2\n\nbacklog_share = 1.5\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:7:1: "), "{err}");
        assert!(err.contains("backlog_share"), "{err}");
    }
}
