//! `laneway.toml`: what a run is made of (sources, groups with their lanes,
//! scheduler knobs, sinks and backlogs), and how it becomes an engine.
//!
//! Invariants: every knob has a default; an unknown key or a wrong type is
//! an error naming its line and column; a config that loads also builds
//! (semantic checks run at load time, not halfway through start-up).

mod build;
mod group_spec;
mod position;
mod slots_spec;
mod spec;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::admin::AdminOptions;
use crate::backlog::BacklogError;
use crate::engine::EngineOptions;

pub use crate::source::JsonlSpec;
pub use group_spec::GroupSpec;
pub use slots_spec::{DEFAULT_MAX_SLOTS, SlotsSpec};
pub use spec::{BacklogSpec, Disabled, MissingFeature, SinkSpec, SourceSpec};

use crate::source::checkpoint::resolved;
use position::{Step, deepest_line, line_col, value_position};

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
    #[serde(with = "crate::knob::duration")]
    pub status_interval: Duration,
    /// Payloads larger than this are dead letters.
    pub max_message_bytes: usize,
    /// How long shutdown waits for in-flight work.
    #[serde(with = "crate::knob::duration")]
    pub shutdown_grace: Duration,
    /// The dead-letter file (default: `dead-letters.jsonl` in `data_dir`).
    pub dead_letters: Option<PathBuf>,
    /// Where messages come from.
    pub sources: Vec<SourceSpec>,
    /// The consumer groups.
    pub groups: Vec<GroupSpec>,
    /// The admin HTTP listener (`/metrics`, `/status`, the dashboard);
    /// off unless `listen` is set.
    pub admin: AdminSpec,
}

/// The `[admin]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSpec {
    /// Where the admin listener listens (for example `"127.0.0.1:9464"`);
    /// unset: no listener. A non-loopback address works but is logged as a
    /// warning (the endpoints have no authentication).
    pub listen: Option<std::net::SocketAddr>,
    /// See [`AdminOptions::header_read_timeout`](crate::admin::AdminOptions::header_read_timeout).
    #[serde(with = "crate::knob::duration")]
    pub header_read_timeout: Duration,
    /// See [`AdminOptions::idle_timeout`](crate::admin::AdminOptions::idle_timeout).
    #[serde(with = "crate::knob::duration")]
    pub idle_timeout: Duration,
    /// See [`AdminOptions::max_connections`](crate::admin::AdminOptions::max_connections).
    pub max_connections: usize,
    /// See [`AdminOptions::allowed_hosts`](crate::admin::AdminOptions::allowed_hosts).
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminSpec {
    fn default() -> Self {
        let options = AdminOptions::default();
        AdminSpec {
            listen: None,
            header_read_timeout: options.header_read_timeout,
            idle_timeout: options.idle_timeout,
            max_connections: options.max_connections,
            allowed_hosts: options.allowed_hosts,
        }
    }
}

impl AdminSpec {
    /// The listener's limits, as `AdminServer::bind` (feature `admin`) takes them.
    pub fn options(&self) -> AdminOptions {
        AdminOptions {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            allowed_hosts: self.allowed_hosts.clone(),
        }
    }
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
            admin: AdminSpec::default(),
        }
    }
}

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
        /// 1-based line of the offending value (of its table when the
        /// value is missing; 1 when the problem is file-wide).
        line: usize,
        /// 1-based column of the offending value.
        column: usize,
        /// What is wrong, naming the knob and the bad value.
        message: String,
    },
    /// `data_dir` names something that is not a directory (a file).
    #[error("data_dir {path}: not a directory (it holds backlogs, dead letters and checkpoints)")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// The dead-letter file could not be opened.
    #[error("dead-letter file {path}: {source}")]
    DeadLetters {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A group's backlog store could not be opened.
    #[error("group {group:?}: backlog {dir}: {source}")]
    Backlog {
        /// The group.
        group: String,
        /// The store's directory.
        dir: PathBuf,
        /// Why it could not be opened.
        #[source]
        source: BacklogError,
    },
    /// A group's duplicate window could not be opened.
    #[error("group {group:?}: {source}")]
    DuplicateWindow {
        /// The group.
        group: String,
        /// Why it could not be opened (names the directory).
        #[source]
        source: crate::engine::DuplicateWindowError,
    },
    /// A group's JSONL sink file could not be opened.
    #[error("group {group:?}: sink file {path}: {source}")]
    SinkFile {
        /// The group.
        group: String,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An adapter (a source or a sink) could not be set up: a knob that
    /// only fails when it is used (a header value that could not be read,
    /// a `ca_file` that holds no certificate, a client library that refuses
    /// its settings).
    #[error("{what}: {source}")]
    Adapter {
        /// Which (`kafka source`, or `group "x": http sink`).
        what: String,
        /// Why, naming the knob.
        #[source]
        source: crate::knob::KnobError,
    },
    /// The config names an adapter this laneway was built without. A file
    /// read by [`FileConfig::parse`] is refused there, at its line; this is
    /// for a [`FileConfig`] built in code.
    #[error("{place}: {missing}")]
    NotBuilt {
        /// Where in the config (`sources[1].type`, `groups[0].backlog.store`).
        place: String,
        /// The adapter and its feature.
        missing: MissingFeature,
    },
}

impl FileConfig {
    /// Parses and checks a config; `path` is only used in messages.
    pub fn parse(text: &str, file: &str) -> Result<FileConfig, ConfigError> {
        let config: FileConfig = toml::from_str(text).map_err(|e| {
            // An error without a place (the parser's nesting limit) is put
            // at the most deeply nested line.
            let (line, column) = e
                .span()
                .map_or_else(|| deepest_line(text), |s| line_col(text, s.start));
            ConfigError::Parse {
                path: file.to_string(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        // At the value of `path` (or the nearest table the file has).
        let at = |path: &[Step<'_>], message: String| {
            let (line, column) = value_position(text, path).unwrap_or((1, 1));
            ConfigError::Invalid {
                path: file.to_string(),
                line,
                column,
                message,
            }
        };
        // An adapter this build lacks is refused first, at its `type` (or
        // `store`) key: nothing else about a file this laneway cannot run
        // matters.
        if let Some((path, missing)) = config.first_missing_feature() {
            return Err(at(&path, missing.to_string()));
        }
        if config.groups.is_empty() {
            return Err(at(
                &[],
                "no [[groups]]: at least one consumer group is needed".into(),
            ));
        }
        if config.max_message_bytes == 0 {
            return Err(at(
                &[Step::Key("max_message_bytes")],
                "max_message_bytes must be at least 1 (it is 0)".into(),
            ));
        }
        let admin = |key| [Step::Key("admin"), Step::Key(key)];
        for (key, value) in [
            ("header_read_timeout", config.admin.header_read_timeout),
            ("idle_timeout", config.admin.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(at(
                    &admin(key),
                    format!(
                        "admin.{key} must be more than 0 (a client would be closed before it could ask)"
                    ),
                ));
            }
        }
        if config.admin.max_connections == 0 {
            return Err(at(
                &admin("max_connections"),
                "admin.max_connections must be at least 1 (it is 0: nothing could be served)"
                    .into(),
            ));
        }
        for (i, spec) in config.groups.iter().enumerate() {
            let group = [Step::Key("groups"), Step::Index(i)];
            let knob = |key: &'static str| [group[0], group[1], Step::Key(key)];
            // At `key` of the group's `table` (`backlog`, `sink`).
            let at_in = |table: &'static str, key: &str, message: String| {
                at(
                    &[group[0], group[1], Step::Key(table), Step::Key(key)],
                    message,
                )
            };
            if let Some((key, message)) = spec.slots_conflict() {
                let name = spec.name();
                return Err(at(&knob(key), format!("group {name:?}: {message}")));
            }
            let g = spec.group_config();
            g.validate()
                .map_err(|e| at(&knob(e.knob()), e.to_string()))?;
            if config.groups[..i].iter().any(|o| o.name() == g.name) {
                return Err(at(
                    &knob("name"),
                    format!("two groups are named {:?}", g.name),
                ));
            }
            match &spec.backlog {
                BacklogSpec::Memory {
                    max_records,
                    max_bytes,
                } => {
                    for (key, value) in [("max_records", max_records), ("max_bytes", max_bytes)] {
                        if *value == 0 {
                            return Err(at_in(
                                "backlog",
                                key,
                                format!(
                                    "group {:?}: backlog.{key} must be at least 1 (it is 0; a memory backlog that can hold nothing would stop the group at its first diverted message)",
                                    g.name
                                ),
                            ));
                        }
                    }
                }
                #[cfg(feature = "amqp")]
                BacklogSpec::Amqp(b) => {
                    b.check(&g.name).map_err(|e| {
                        at_in(
                            "backlog",
                            e.knob(),
                            format!("group {:?}: amqp backlog: {e}", g.name),
                        )
                    })?;
                }
                BacklogSpec::Disk(d) => {
                    d.validate().map_err(|e| {
                        at_in("backlog", e.knob(), format!("group {:?}: {e}", g.name))
                    })?;
                    if d.max_payload_bytes() < config.max_message_bytes {
                        return Err(at_in(
                            "backlog",
                            "segment_bytes",
                            format!(
                                "group {:?}: backlog.segment_bytes ({}) is too small for max_message_bytes ({}): a record never spans two segments",
                                g.name, d.segment_bytes, config.max_message_bytes
                            ),
                        ));
                    }
                }
                // Refused above, at its `store` key.
                #[cfg(not(feature = "amqp"))]
                BacklogSpec::Amqp(_) => {}
            }
            // An adapter this build lacks was refused above.
            if let Ok(Some(adapter)) = spec.sink.adapter() {
                adapter.check().map_err(|e| {
                    let sink = spec.sink.type_name();
                    at_in(
                        "sink",
                        e.knob(),
                        format!("group {:?}: {sink} sink: {e}", g.name),
                    )
                })?;
            }
        }
        for (i, source) in config.sources.iter().enumerate() {
            let knob = |key| [Step::Key("sources"), Step::Index(i), Step::Key(key)];
            if let Some(name) = source.name() {
                if name.trim().is_empty() {
                    return Err(at(
                        &knob("name"),
                        "a source's name must not be empty (leave `name` out for the default)"
                            .into(),
                    ));
                }
                if config.sources[..i].iter().any(|o| o.name() == Some(name)) {
                    return Err(at(
                        &knob("name"),
                        format!(
                            "two sources are named {name:?}: a name tells a source apart in /status and the metrics"
                        ),
                    ));
                }
            }
            // An adapter this build lacks was refused above.
            if let Ok(adapter) = source.adapter() {
                adapter.check().map_err(|e| {
                    // A preset's knobs are nested: `aliyun.uid` is [sources.aliyun] uid.
                    let mut path = vec![Step::Key("sources"), Step::Index(i)];
                    path.extend(e.knob().split('.').map(Step::Key));
                    at(&path, format!("{} source: {e}", source.type_name()))
                })?;
            }
            if let SourceSpec::Jsonl(spec) = source {
                // One file, one reader: two would deliver every line
                // twice and overwrite each other's checkpoint.
                let same = |o: &SourceSpec| {
                    matches!(o, SourceSpec::Jsonl(p) if p.path == spec.path
                        || (spec.path.as_os_str() != "-"
                            && p.path.as_os_str() != "-"
                            && resolved(&p.path) == resolved(&spec.path)))
                };
                if config.sources[..i].iter().any(same) {
                    let what = if spec.path.as_os_str() == "-" {
                        "standard input".to_string()
                    } else {
                        spec.path.display().to_string()
                    };
                    return Err(at(
                        &knob("path"),
                        format!(
                            "two jsonl sources read {what}: one reader per file (they would share its checkpoint)"
                        ),
                    ));
                }
            }
        }
        Ok(config)
    }

    /// The first entry that names an adapter this build lacks: the path
    /// to its `type` (or `store`, or `[admin] listen`) key, and what it
    /// needs.
    fn first_missing_feature(&self) -> Option<(Vec<Step<'static>>, MissingFeature)> {
        if let Some(missing) = self.admin_missing_feature() {
            return Some((vec![Step::Key("admin"), Step::Key("listen")], missing));
        }
        for (i, group) in self.groups.iter().enumerate() {
            let key = |table, key| {
                let steps = [Step::Key(table), Step::Key(key)];
                [Step::Key("groups"), Step::Index(i)]
                    .into_iter()
                    .chain(steps)
                    .collect()
            };
            if let Some(missing) = group.sink.missing_feature() {
                return Some((key("sink", "type"), missing));
            }
            if let Some(missing) = group.backlog.missing_feature() {
                return Some((key("backlog", "store"), missing));
            }
        }
        self.sources.iter().enumerate().find_map(|(i, source)| {
            let missing = source.missing_feature()?;
            let key = vec![Step::Key("sources"), Step::Index(i), Step::Key("type")];
            Some((key, missing))
        })
    }

    /// What `[admin] listen` needs when it is set and this build has no
    /// admin listener.
    pub fn admin_missing_feature(&self) -> Option<MissingFeature> {
        self.admin.listen?;
        MissingFeature::ADMIN_LISTEN.if_missing()
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            // Where the first byte that is not UTF-8 sits.
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let (line, column) = line_col(&String::from_utf8_lossy(valid), valid.len());
            ConfigError::Parse {
                path: shown.clone(),
                line,
                column,
                message: "invalid UTF-8: a config file must be UTF-8 text".into(),
            }
        })?;
        Self::parse(&text, &shown)
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

    /// Where a group's duplicate window lives: beside its backlog, in
    /// `<data_dir>/dedup/<group name>` (whatever store the backlog uses, the
    /// window is this process's own file).
    pub fn dedup_dir(&self, group: &GroupSpec) -> PathBuf {
        self.data_dir.join("dedup").join(group.name())
    }

    /// Where a group's disk backlog lives: its `dir`, or
    /// `<data_dir>/backlog/<group name>`; `None` for a memory or broker
    /// backlog.
    pub fn backlog_dir(&self, group: &GroupSpec) -> Option<PathBuf> {
        match &group.backlog {
            BacklogSpec::Disk(c) => Some(
                c.dir
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("backlog").join(group.name())),
            ),
            BacklogSpec::Memory { .. } | BacklogSpec::Amqp(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_parses() {
        let c = FileConfig::embedded();
        assert_eq!(c.groups.len(), 2);
        assert_eq!(c.groups[1].name(), "alarms");
        assert_eq!(c.sources.len(), 2);
        assert!(
            c.groups
                .iter()
                .all(|g| matches!(g.backlog, BacklogSpec::Disk(_)))
        );
    }

    #[test]
    fn two_sources_given_one_name_are_refused_at_the_second_name() {
        let text = "[[groups]]\nname = \"a\"\n\
                    [[sources]]\ntype = \"simulator\"\nname = \"fleet\"\n\
                    [[sources]]\ntype = \"simulator\"\nname = \"other\"\n\
                    [[sources]]\ntype = \"jsonl\"\npath = \"in.jsonl\"\nname = \"fleet\"\n";
        let e = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert_eq!(
            e,
            "t.toml:12:8: two sources are named \"fleet\": a name tells a source apart in /status and the metrics"
        );
        let blank = "[[groups]]\nname = \"a\"\n[[sources]]\ntype = \"simulator\"\nname = \" \"\n";
        let e = FileConfig::parse(blank, "t.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml:5:8: a source's name must not be empty"),
            "{e}"
        );
        let named =
            "[[groups]]\nname = \"a\"\n[[sources]]\ntype = \"simulator\"\nname = \"fleet\"\n";
        let c = FileConfig::parse(named, "t.toml").unwrap();
        assert_eq!(c.sources[0].name(), Some("fleet"));
    }

    #[test]
    fn two_jsonl_sources_on_one_file_are_refused_at_the_second() {
        let text = "[[groups]]\nname = \"g\"\n\
                    [[sources]]\ntype = \"jsonl\"\npath = \"in.jsonl\"\n\
                    [[sources]]\ntype = \"jsonl\"\npath = \"other.jsonl\"\n\
                    [[sources]]\ntype = \"jsonl\"\npath = \"in.jsonl\"\n";
        let e = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert_eq!(
            e,
            "t.toml:11:8: two jsonl sources read in.jsonl: one reader per file (they would share its checkpoint)"
        );
    }

    /// Two spellings of one file (relative, `./`, through a link) share
    /// one checkpoint, so they are one file here too.
    #[test]
    fn two_spellings_of_one_file_are_refused_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.jsonl");
        std::fs::write(&file, b"").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let dotted = dir.path().join(".").join("in.jsonl");
        for other in [&link, &dotted] {
            let text = format!(
                "[[groups]]\nname = \"g\"\n[[sources]]\ntype = \"jsonl\"\npath = {:?}\n[[sources]]\ntype = \"jsonl\"\npath = {:?}\n",
                file.display().to_string(),
                other.display().to_string()
            );
            let e = FileConfig::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(e.contains("one reader per file"), "{e}");
        }
        let text = "[[groups]]\nname = \"g\"\n[[sources]]\ntype = \"jsonl\"\npath = \"in.jsonl\"\n[[sources]]\ntype = \"jsonl\"\npath = \"./in.jsonl\"\n";
        let e = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("one reader per file"), "{e}");
    }

    #[cfg(feature = "amqp")]
    #[test]
    fn a_password_in_clear_to_another_machine_is_refused_at_its_url() {
        let text = "[[groups]]\nname = \"a\"\n\n[[sources]]\ntype = \"amqp\"\nqueues = [\"q\"]\nurl = \"amqp://app:Zq9-MARK@rabbit.example/%2f\"\n";
        let e = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "t.toml:7:7: amqp source: amqp://app:***@rabbit.example/%2f: a plain connection"
            ),
            "{e}"
        );
        assert!(
            e.contains("allow_plaintext") && !e.contains("Zq9-MARK"),
            "{e}"
        );
        let allowed = text.replace("queues = [", "allow_plaintext = true\nqueues = [");
        FileConfig::parse(&allowed, "t.toml").unwrap();
    }

    #[cfg(feature = "amqp")]
    #[test]
    fn an_amqp_backlog_parses_and_hides_its_password() {
        let text = "[[groups]]\nname = \"work\"\n\
                    backlog = { store = \"amqp\", url = \"amqp://u:topsecret@h:5672/%2f\", allow_plaintext = true, queue = \"q.backlog\", max_records = 10 }\n";
        let c = FileConfig::parse(text, "t.toml").unwrap();
        let BacklogSpec::Amqp(b) = &c.groups[0].backlog else {
            panic!("not an amqp backlog: {:?}", c.groups[0].backlog)
        };
        assert_eq!(b.queue.as_deref(), Some("q.backlog"));
        assert_eq!(b.max_records, Some(10));
        assert!(c.backlog_dir(&c.groups[0]).is_none());
        let shown = format!("{c:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
        // The default queue is named after the group.
        let text = "[[groups]]\nname = \"work\"\nbacklog = { store = \"amqp\" }\n";
        let c = FileConfig::parse(text, "t.toml").unwrap();
        let BacklogSpec::Amqp(b) = &c.groups[0].backlog else {
            panic!("not an amqp backlog")
        };
        assert_eq!(b.queue, None);
        assert_eq!(
            crate::amqp::AmqpBacklogConfig::default_queue("work"),
            "laneway.work.backlog"
        );
        let text = "[[groups]]\nname = \"work\"\nbacklog = { store = \"amqp\", read_ahead = 0 }\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("read_ahead"), "{err}");
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
        assert!(err.starts_with("t.toml:6:17:"), "{err}");
        assert!(err.contains("it is 2"), "{err}");
        assert!(err.contains("backlog_share"), "{err}");
    }

    #[test]
    fn slots_auto_takes_min_and_max_and_the_slot_knobs_are_checked_at_their_line() {
        let text = "[[groups]]\nname = \"a\"\nslots = \"auto\"\nmin_slots = 2\nmax_slots = 12\n\
                    skip_superseded = [\"status\", \"property\"]\n";
        let c = FileConfig::parse(text, "t.toml").unwrap();
        let g = c.groups[0].group_config();
        assert_eq!(g.slots, 12);
        assert_eq!(
            g.adaptive_slots,
            Some(crate::engine::AdaptiveSlots { min: 2 })
        );
        use crate::message::Kind;
        assert_eq!(g.skip_superseded, [Kind::Status, Kind::Property]);
        let auto = "[[groups]]\nname = \"a\"\nslots = \"auto\"\n";
        let g = FileConfig::parse(auto, "t.toml").unwrap().groups[0].group_config();
        assert_eq!(
            (g.slots, g.adaptive_slots.map(|a| a.min)),
            (DEFAULT_MAX_SLOTS, Some(1))
        );
        for (text, at, says) in [
            (
                "slots = 4\nmin_slots = 2\n",
                "t.toml:4:13:",
                "min_slots needs slots = \"auto\"",
            ),
            (
                "max_slots = 8\n",
                "t.toml:3:13:",
                "max_slots needs slots = \"auto\"",
            ),
            (
                "slots = \"auto\"\nmax_slots = 0\n",
                "t.toml:4:13:",
                "at least 1",
            ),
            (
                "slots = \"auto\"\nmin_slots = 9\nmax_slots = 8\n",
                "t.toml:4:13:",
                "must not exceed max_slots",
            ),
            (
                "slots = \"lots\"\n",
                "t.toml:3:9:",
                "a number of delivery slots or \"auto\"",
            ),
            ("skip_superseded = [\"stale\"]\n", "t.toml:3:", "stale"),
        ] {
            let text = format!("[[groups]]\nname = \"a\"\n{text}");
            let e = FileConfig::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(e.starts_with(at) && e.contains(says), "{text}: {e}");
        }
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

    #[cfg(feature = "amqp")]
    #[test]
    fn amqp_sources_and_sinks_parse_and_are_checked() {
        let text = "[[sources]]\ntype = \"amqp\"\nurl = \"amqp://u:pw@127.0.0.1:5672/%2f\"\nqueues = [\"q\"]\nprefetch = 50\n\
                    [[groups]]\nname = \"a\"\nsink = { type = \"amqp\", url = \"amqp://u:pw@localhost/\", exchange = \"x\" }\n";
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

    #[cfg(feature = "amqp")]
    #[test]
    fn amqp_stream_sources_parse_and_are_checked() {
        let text = "[[sources]]\ntype = \"amqp-stream\"\nurl = \"amqp://u:pw@127.0.0.1/\"\nstream = \"s\"\ncatch_up_after = 500\n\
                    [[groups]]\nname = \"a\"\n";
        let c = FileConfig::parse(text, "t.toml").unwrap();
        let SourceSpec::AmqpStream(s) = &c.sources[0] else {
            panic!("not amqp-stream")
        };
        assert_eq!(
            (s.catch_up_after, s.catch_up, s.prefetch),
            (500, true, 1000)
        );
        assert_eq!(s.start, crate::amqp::StreamStart::First);
        assert!(!format!("{c:?}").contains("pw"));

        let text = "[[groups]]\nname = \"a\"\n\n[[sources]]\ntype = \"amqp-stream\"\nurl = \"amqp://h/\"\nstream = \"s\"\nprefetch = 0\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:8:"), "{err}");
        assert!(err.contains("prefetch"), "{err}");

        // A wrong value inside a tagged table is placed at its table.
        let text = "[[groups]]\nname = \"a\"\n[[sources]]\ntype = \"amqp-stream\"\nstream = \"s\"\nstart = \"middle\"\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:3:"), "{err}");
        assert!(err.contains("middle"), "{err}");
    }

    #[cfg(feature = "amqp")]
    #[test]
    fn the_amqp_stream_example_parses() {
        let c = FileConfig::parse(
            include_str!("../../examples/amqp-stream.toml"),
            "amqp-stream.toml",
        )
        .unwrap();
        assert!(matches!(c.sources[0], SourceSpec::AmqpStream(_)));
    }

    #[cfg(feature = "amqp")]
    #[test]
    fn the_amqp_example_parses() {
        let c = FileConfig::parse(include_str!("../../examples/amqp.toml"), "amqp.toml").unwrap();
        assert!(matches!(c.sources[0], SourceSpec::Amqp(_)));
        assert!(matches!(c.groups[1].sink, SinkSpec::Amqp(_)));
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn the_kafka_example_parses_and_kafka_knobs_are_checked_at_their_value() {
        let c = FileConfig::parse(include_str!("../../examples/kafka.toml"), "kafka.toml").unwrap();
        let SourceSpec::Kafka(k) = &c.sources[0] else {
            panic!("not kafka")
        };
        assert_eq!((k.group_id.as_str(), k.batch), ("laneway", 256));
        assert!(matches!(c.groups[1].sink, SinkSpec::Kafka(_)));
        let text = "[[sources]]\ntype = \"kafka\"\ntopics = [\"t\"]\nstart = \"middle\"\n[[groups]]\nname = \"a\"\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:4:9: "), "{err}");
        assert!(err.contains("middle"), "{err}");
    }

    #[cfg(feature = "http")]
    #[test]
    fn the_http_example_parses_and_http_knobs_are_checked_at_their_value() {
        let c = FileConfig::parse(include_str!("../../examples/http.toml"), "http.toml").unwrap();
        let SinkSpec::Http(h) = &c.groups[0].sink else {
            panic!("not http")
        };
        assert_eq!(h.url, "http://127.0.0.1:8080/messages");
        let line = "sink = { type = \"http\", url = \"http://u:Zq9-MARK@example.com/\" }";
        let text = format!("[[groups]]\nname = \"a\"\n{line}\n");
        let err = FileConfig::parse(&text, "t.toml").unwrap_err().to_string();
        let column = line.find("\"http://u").unwrap() + 1;
        assert!(err.starts_with(&format!("t.toml:3:{column}: ")), "{err}");
        assert!(err.contains("allow_plaintext"), "{err}");
        assert!(!err.contains("Zq9"), "{err}");
        let c =
            FileConfig::parse(&text.replace(" }", ", allow_plaintext = true }"), "t.toml").unwrap();
        assert!(!format!("{c:?}").contains("Zq9"));
        let line = "sink = { type = \"http\", url = \"http://h/\", timeout = \"0s\" }";
        let err = FileConfig::parse(&format!("[[groups]]\nname = \"a\"\n{line}\n"), "t.toml")
            .unwrap_err()
            .to_string();
        let column = line.find("\"0s\"").unwrap() + 1;
        assert!(err.starts_with(&format!("t.toml:3:{column}: ")), "{err}");
        assert!(err.contains("http sink: timeout"), "{err}");
    }

    #[cfg(not(feature = "http"))]
    #[test]
    fn an_http_sink_without_the_feature_is_refused_at_its_type() {
        let text = "[[groups]]\nname = \"a\"\nsink = { type = \"http\", url = \"http://h/\" }\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            "t.toml:3:17: type = \"http\": this laneway was built without the `http` feature (cargo build --release --features http)"
        );
    }

    #[test]
    fn the_admin_table_is_off_by_default_and_checked() {
        let c = FileConfig::parse("[[groups]]\nname = \"a\"\n", "t.toml").unwrap();
        assert_eq!(c.admin.listen, None);
        let text = "[admin]\nlisten = \"127.0.0.1:9464\"\n[[groups]]\nname = \"a\"\n";
        #[cfg(feature = "admin")]
        {
            let c = FileConfig::parse(text, "t.toml").unwrap();
            assert_eq!(c.admin.listen, Some("127.0.0.1:9464".parse().unwrap()));
        }
        #[cfg(not(feature = "admin"))]
        {
            let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
            assert_eq!(
                err,
                "t.toml:2:10: [admin] listen: this laneway was built without the `admin` feature (cargo build --release --features admin)"
            );
        }
        let text = "[admin]\nlisten = \"localhost\"\n[[groups]]\nname = \"a\"\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:2:10: "), "{err}");
        let text = "[admin]\nlisten = \"127.0.0.1:1\"\nport = 3\n[[groups]]\nname = \"a\"\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("t.toml:3:1: ") && err.contains("port"),
            "{err}"
        );
        // Past what a clock reading can have added to it: refused at its
        // value, not a panic at the first connection.
        let text = "[admin]\nidle_timeout = \"300000000000y\"\n[[groups]]\nname = \"a\"\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("t.toml:2:16: ") && err.contains("out of range"),
            "{err}"
        );
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
            assert!(err.starts_with("t.toml:6:10: "), "{name:?}: {err}");
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
        assert!(err.starts_with("t.toml:3:45: "), "{err}");
        assert!(
            err.contains("backlog.max_records must be at least 1"),
            "{err}"
        );

        let text =
            "[[groups]]\nname = \"a\"\n\n[groups.backlog]\nstore = \"memory\"\nmax_bytes = 0\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:6:13: "), "{err}");
        assert!(err.contains("backlog.max_bytes"), "{err}");
    }

    #[test]
    fn every_rule_points_at_the_offending_value() {
        let text = "# c\n\n[[groups]]\nname = \"a\"\nslots = 2\n\nbacklog_share = 1.5\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:7:17: "), "{err}");
        assert!(
            err.contains("backlog_share") && err.contains("1.5"),
            "{err}"
        );
        // One case per rule: (line 3 of a group entry, the bad value in it).
        let cases = [
            ("live_capacity = 0", "0"),
            ("slots = 0", "0"),
            ("batch_size = 0", "0"),
            ("backlog_rate = -1.0", "-1.0"),
            ("max_attempts = 0", "0"),
            ("delivery_timeout = \"0s\"", "\"0s\""),
            ("kinds = [\"alarm\"]", "[\"alarm\"]"),
            ("name = \"a/b\"", "\"a/b\""),
            ("backlog = { store = \"disk\", max_bytes = 0 }", "0"),
            ("backlog = { store = \"disk\", segment_bytes = 100 }", "100"),
            ("backlog = { store = \"disk\", max_age = \"0s\" }", "\"0s\""),
            ("backlog = { store = \"memory\", max_bytes = 0 }", "0"),
            #[cfg(feature = "amqp")]
            (
                "sink = { type = \"amqp\", url = \"amqp://h/\", exchange = \"x\", max_in_flight = 0 }",
                "0",
            ),
            #[cfg(feature = "amqp")]
            (
                "sink = { type = \"amqp\", url = \"amqp://h/\", exchange = \"x\", routing_key = \"{x}\" }",
                "\"{x}\"",
            ),
        ];
        for (line, value) in cases {
            let column = line.rfind(value).unwrap() + 1;
            let mut text = format!("[[groups]]\nvalidate_json = true\n{line}\n");
            if !line.starts_with("name") {
                text.push_str("name = \"g\"\n");
            }
            let err = FileConfig::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("t.toml:3:{column}: ")),
                "{line}: {err}"
            );
        }
        let text = "max_message_bytes = 0\n[[groups]]\nname = \"a\"\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:1:21: "), "{err}");
        let text = "[[groups]]\nname = \"a\"\n[[groups]]\nname = \"a\"\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:4:8: "), "{err}");
        let text = "[[sources]]\ntype = \"amqp\"\nurl = \"amqp://h/\"\nqueues = [\"q\"]\nprefetch = 0\n[[groups]]\nname = \"a\"\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        #[cfg(feature = "amqp")]
        assert!(err.starts_with("t.toml:5:12: "), "{err}");
        #[cfg(not(feature = "amqp"))]
        assert!(err.starts_with("t.toml:2:8: "), "{err}");
    }

    #[cfg(not(feature = "pulsar"))]
    #[test]
    fn a_pulsar_source_without_the_feature_is_refused_at_its_type() {
        let text = "[[groups]]\nname = \"a\"\n[[sources]]\ntype = \"pulsar\"\ntopic = \"t\"\nno_such_knob = 1\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            "t.toml:4:8: type = \"pulsar\": this laneway was built without the `pulsar` feature (cargo build --release --features pulsar; it needs protoc)"
        );
        // A config built in code is refused by `build`, before anything opens.
        let config: FileConfig = toml::from_str(text).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let Err(err) = runtime.block_on(config.build()) else {
            panic!("a pulsar source was built without the feature");
        };
        assert!(
            err.to_string()
                .starts_with("sources[0].type: type = \"pulsar\": this laneway was built without"),
            "{err}"
        );
        assert!(
            matches!(err, ConfigError::NotBuilt { missing, .. } if missing.feature == "pulsar"),
            "{err}"
        );
    }

    #[cfg(not(feature = "kafka"))]
    #[test]
    fn a_kafka_source_or_sink_without_the_feature_is_refused_at_its_type() {
        let text = "[[groups]]\nname = \"a\"\nsink = { type = \"kafka\", topic = \"t\" }\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            "t.toml:3:17: type = \"kafka\": this laneway was built without the `kafka` feature (cargo build --release --features kafka)"
        );
        let text = "[[sources]]\n  type = \"kafka\"\n[[groups]]\nname = \"a\"\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:2:10: type = \"kafka\": "), "{err}");
    }

    #[cfg(not(feature = "amqp"))]
    #[test]
    fn amqp_entries_without_the_feature_are_refused_at_their_key() {
        let text = "[[groups]]\nname = \"a\"\n[groups.backlog]\nstore = \"amqp\"\nqueue = \"q\"\n";
        let err = FileConfig::parse(text, "t.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            "t.toml:4:9: store = \"amqp\": this laneway was built without the `amqp` feature (cargo build --release --features amqp)"
        );
        for (source, what) in [
            ("amqp", "type = \"amqp\""),
            ("amqp-stream", "type = \"amqp-stream\""),
        ] {
            let text = format!("[[groups]]\nname = \"a\"\n[[sources]]\ntype = \"{source}\"\n");
            let err = FileConfig::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(err.starts_with(&format!("t.toml:4:8: {what}: ")), "{err}");
            assert!(err.contains("--features amqp)"), "{err}");
        }
    }

    #[cfg(not(feature = "amqp1"))]
    #[test]
    fn an_amqp1_source_without_the_feature_is_refused_at_its_type() {
        let text = include_str!("../../examples/aliyun.toml");
        let err = FileConfig::parse(text, "aliyun.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("aliyun.toml:19:8: type = \"amqp1\": this laneway was built without the `amqp1` feature"),
            "{err}"
        );
    }
}
