//! Assembling an engine: groups with their sinks and stores, sources and
//! options, checked once in [`EngineBuilder::build`] so that a built engine
//! always runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::dead_letter::DeadLetters;
use super::dedup::DuplicateWindow;
use super::group::Group;
use super::group_config::{GroupConfig, GroupConfigError};
use super::router::Router;
use super::run::Engine;
use super::stats::EngineStats;
use crate::backlog::{BacklogStore, MemoryBacklog};
use crate::sink::Sink;
use crate::source::{LanePolicy, Source, SourceHealth};

/// Why an engine cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No group was added: there would be nowhere to deliver.
    #[error("at least one consumer group is needed")]
    NoGroups,
    /// Two groups share a name (names key reports, dead letters, backlogs).
    #[error("two groups are named {0:?}")]
    DuplicateGroup(String),
    /// A group's configuration cannot run.
    #[error(transparent)]
    Group(#[from] GroupConfigError),
    /// A duplicate window was given for a group the builder does not have.
    #[error("a duplicate window was given for group {0:?}, which was not added")]
    WindowWithoutGroup(String),
}

/// Engine-wide knobs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Payloads larger than this are dead letters ("oversize") at ingest.
    pub max_message_bytes: usize,
    /// How long shutdown waits for in-flight deliveries and backlog writes.
    pub shutdown_grace: Duration,
    /// With sources that end (files, a counted simulator), stop once they
    /// have and every group is idle. Without, run until the shutdown future.
    pub finish_when_drained: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_message_bytes: 1 << 20,
            shutdown_grace: Duration::from_secs(10),
            finish_when_drained: true,
        }
    }
}

/// What the builder holds for one group until `build`.
struct GroupParts {
    config: GroupConfig,
    sink: Arc<dyn Sink>,
    backlog: Option<Arc<dyn BacklogStore>>,
}

/// Builds an [`Engine`]: groups with their sinks and backlog stores,
/// sources, and options. Every knob has a documented default.
///
/// ```no_run
/// use laneway::engine::{Engine, GroupConfig};
/// use laneway::sink::NullSink;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = Engine::builder()
///     .group(GroupConfig::named("all"), NullSink)
///     .build()?;
/// let summary = engine.run(async { tokio::signal::ctrl_c().await.ok(); }).await;
/// println!("{}", summary.delivered);
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct EngineBuilder {
    groups: Vec<GroupParts>,
    sources: Vec<(Box<dyn Source>, LanePolicy)>,
    dead_letters: Option<Arc<DeadLetters>>,
    options: EngineOptions,
    windows: Vec<(String, DuplicateWindow)>,
}

impl EngineBuilder {
    /// Adds a group delivering to `sink`, with an in-memory backlog (use
    /// [`EngineBuilder::group_with`] to give it a durable one).
    pub fn group(self, config: GroupConfig, sink: impl Sink) -> Self {
        self.group_with(config, Arc::new(sink), None)
    }

    /// Adds a group with a shared sink and, optionally, its own backlog
    /// store (the in-memory store when `None`).
    pub fn group_with(
        mut self,
        config: GroupConfig,
        sink: Arc<dyn Sink>,
        backlog: Option<Arc<dyn BacklogStore>>,
    ) -> Self {
        self.groups.push(GroupParts {
            config,
            sink,
            backlog,
        });
        self
    }

    /// Adds a source; `policy` decides which lane its messages take.
    pub fn source(mut self, source: impl Source, policy: LanePolicy) -> Self {
        self.sources.push((Box::new(source), policy));
        self
    }

    /// Adds an already boxed source.
    pub fn boxed_source(mut self, source: Box<dyn Source>, policy: LanePolicy) -> Self {
        self.sources.push((source, policy));
        self
    }

    /// Gives the source added last the name `name` in `/status`, the
    /// metric labels and the run summary (a config's `name` knob), in
    /// place of what it reads. Sources sharing a name are still numbered.
    pub fn name_last_source(mut self, name: &str) -> Self {
        if let Some((source, policy)) = self.sources.pop() {
            self.sources
                .push((Box::new(crate::source::Named::new(name, source)), policy));
        }
        self
    }

    /// Gives the group named `group` a duplicate window (see
    /// [`GroupConfig::dedup_window`]), for example one opened with
    /// [`DuplicateWindow::open`] beside its backlog, so that it survives a
    /// restart. A group whose config sets `dedup_window` and is given none
    /// here keeps its window in memory.
    pub fn duplicate_window(mut self, group: impl Into<String>, window: DuplicateWindow) -> Self {
        self.windows.push((group.into(), window));
        self
    }

    /// Where dead letters go (in memory by default).
    pub fn dead_letters(mut self, dead: Arc<DeadLetters>) -> Self {
        self.dead_letters = Some(dead);
        self
    }

    /// Engine-wide options.
    pub fn options(mut self, options: EngineOptions) -> Self {
        self.options = options;
        self
    }

    /// Checks the configuration and builds the engine (nothing runs yet).
    pub fn build(self) -> Result<Engine, EngineError> {
        if self.groups.is_empty() {
            return Err(EngineError::NoGroups);
        }
        let dead = self.dead_letters.unwrap_or_else(DeadLetters::in_memory);
        let progress = Arc::new(Notify::new());
        let mut windows = self.windows;
        if let Some((name, _)) = windows
            .iter()
            .find(|(name, _)| !self.groups.iter().any(|g| &g.config.name == name))
        {
            return Err(EngineError::WindowWithoutGroup(name.clone()));
        }
        let mut groups = Vec::new();
        let mut writers = Vec::new();
        for GroupParts {
            config,
            sink,
            backlog,
        } in self.groups
        {
            if groups.iter().any(|g: &Arc<Group>| g.name() == config.name) {
                return Err(EngineError::DuplicateGroup(config.name));
            }
            let store = backlog.unwrap_or_else(|| Arc::new(MemoryBacklog::default()));
            let given = windows
                .iter()
                .position(|(name, _)| *name == config.name)
                .map(|i| windows.swap_remove(i).1);
            let dedup = given
                .or_else(|| config.dedup_window.map(DuplicateWindow::in_memory))
                .map(Arc::new);
            let (group, writer) = Group::new(
                config,
                store,
                sink,
                Arc::clone(&dead),
                Arc::clone(&progress),
                dedup,
            )?;
            groups.push(group);
            writers.push(writer);
        }
        let health = unique_names(self.sources.iter().map(|(source, _)| source.name()))
            .into_iter()
            .map(|name| (name, SourceHealth::default()))
            .collect();
        let router = Arc::new(Router::new(
            groups,
            health,
            EngineStats::default(),
            Arc::clone(&dead),
            self.options.max_message_bytes,
            progress,
        ));
        Ok(Engine::new(
            router,
            writers,
            self.sources,
            dead,
            self.options,
        ))
    }
}

/// Source names made unique: the second and later sources sharing a name
/// get ` #2`, ` #3`, … appended, so that `/status`, the dashboard and the
/// metric label sets can tell them apart (two series with one label set
/// are invalid OpenMetrics, and a scraper would keep only one).
fn unique_names(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let mut candidate = name.clone();
        let mut n = 1;
        while out.contains(&candidate) {
            n += 1;
            candidate = format!("{name} #{n}");
        }
        out.push(candidate);
    }
    out
}

#[cfg(test)]
mod unique_name_tests {
    use super::unique_names;

    #[test]
    fn repeated_source_names_are_numbered() {
        let names = [
            "simulator",
            "jsonl in",
            "simulator",
            "simulator",
            "simulator #2",
        ];
        assert_eq!(
            unique_names(names.iter().map(|s| s.to_string())),
            [
                "simulator",
                "jsonl in",
                "simulator #2",
                "simulator #3",
                "simulator #2 #2"
            ]
        );
    }
}
