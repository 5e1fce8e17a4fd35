//! Turning a checked [`FileConfig`] into an engine builder: opening dead
//! letters, backlog stores, sinks and sources. Everything that can fail
//! here names the group or file it was opening.

use std::sync::Arc;

#[cfg(not(feature = "amqp"))]
use super::MissingFeature;
use super::position::path_text;
use super::{BacklogSpec, ConfigError, FileConfig, GroupSpec, SinkSpec};
#[cfg(feature = "amqp")]
use crate::amqp::AmqpBacklog;
use crate::backlog::{BacklogError, BacklogStore, DiskBacklog, MemoryBacklog, MemoryLimits};
use crate::engine::{DeadLetters, DuplicateWindow, DuplicateWindowError, EngineBuilder};
use crate::knob::KnobError;
use crate::sink::{JsonlSink, NullSink, SimulatedHandler, Sink};
use crate::source::BuildContext;

impl FileConfig {
    /// Opens everything the config names and returns the engine builder.
    pub async fn build(&self) -> Result<EngineBuilder, ConfigError> {
        // An adapter this build lacks is refused before anything is opened
        // (a config read by `parse` was refused there, at its line).
        if let Some((path, missing)) = self.first_missing_feature() {
            return Err(ConfigError::NotBuilt {
                place: path_text(&path),
                missing,
            });
        }
        if self.data_dir.exists() && !self.data_dir.is_dir() {
            return Err(ConfigError::NotADirectory {
                path: self.data_dir.clone(),
            });
        }
        let dead_path = self
            .dead_letters
            .clone()
            .unwrap_or_else(|| self.data_dir.join("dead-letters.jsonl"));
        let dead = DeadLetters::to_file(&dead_path).map_err(|source| ConfigError::DeadLetters {
            path: dead_path.clone(),
            source,
        })?;
        let mut builder = EngineBuilder::default()
            .dead_letters(dead)
            .options(self.engine_options());
        for group in &self.groups {
            let sink = group.build_sink().await?;
            let store = self.build_backlog(group).await?;
            let config = group.group_config();
            if let Some(window) = config.dedup_window {
                let dir = self.dedup_dir(group);
                let failed = |source| ConfigError::DuplicateWindow {
                    group: group.name(),
                    source,
                };
                // Loading reads the whole window: keep it off the runtime.
                let opened =
                    tokio::task::spawn_blocking(move || DuplicateWindow::open(&dir, window))
                        .await
                        .map_err(|e| {
                            failed(DuplicateWindowError::Io {
                                dir: self.dedup_dir(group),
                                source: std::io::Error::other(e),
                            })
                        })?;
                builder = builder.duplicate_window(group.name(), opened.map_err(failed)?);
            }
            builder = builder.group_with(config, sink, Some(store));
        }
        let context = BuildContext {
            state_dir: self.data_dir.join("sources"),
            max_message_bytes: self.max_message_bytes,
        };
        for source in &self.sources {
            let adapter = source.adapter().map_err(|missing| ConfigError::NotBuilt {
                place: format!("{} source", source.type_name()),
                missing,
            })?;
            let built = adapter
                .build(&context)
                .map_err(|source_error| ConfigError::Adapter {
                    what: format!("{} source", source.type_name()),
                    source: source_error,
                })?;
            builder = builder.boxed_source(built, adapter.lane());
            if let Some(name) = adapter.name() {
                builder = builder.name_last_source(name);
            }
        }
        Ok(builder)
    }

    async fn build_backlog(&self, group: &GroupSpec) -> Result<Arc<dyn BacklogStore>, ConfigError> {
        Ok(match &group.backlog {
            BacklogSpec::Disk(config) => {
                let dir = self.backlog_dir(group).unwrap_or_default();
                let failed = |source| ConfigError::Backlog {
                    group: group.name(),
                    dir: dir.clone(),
                    source,
                };
                let (open_dir, config) = (dir.clone(), config.clone());
                // Recovery reads the whole backlog: keep it off the runtime.
                let opened =
                    tokio::task::spawn_blocking(move || DiskBacklog::open(&open_dir, config))
                        .await
                        .map_err(|e| failed(BacklogError::Unavailable(e.to_string())))?;
                Arc::new(opened.map_err(failed)?)
            }
            #[cfg(feature = "amqp")]
            BacklogSpec::Amqp(config) => {
                let name = group.name();
                let opened = AmqpBacklog::open(config.clone(), &name).await;
                Arc::new(opened.map_err(|source| {
                    ConfigError::Backlog {
                        dir: config
                            .queue
                            .clone()
                            .unwrap_or_else(|| crate::amqp::AmqpBacklogConfig::default_queue(&name))
                            .into(),
                        group: name,
                        source,
                    }
                })?)
            }
            #[cfg(not(feature = "amqp"))]
            BacklogSpec::Amqp(_) => {
                let place = format!("group {:?}: backlog", group.name());
                let missing = MissingFeature::AMQP_BACKLOG;
                return Err(ConfigError::NotBuilt { place, missing });
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

impl GroupSpec {
    /// Builds the group's sink, as a run does (`laneway tune` builds the
    /// sink of the group it measures this way too).
    pub async fn build_sink(&self) -> Result<Arc<dyn Sink>, ConfigError> {
        let group = self;
        Ok(match &group.sink {
            SinkSpec::Simulated { cost } => Arc::new(SimulatedHandler::new(*cost)),
            SinkSpec::Null => Arc::new(NullSink),
            SinkSpec::Stdout => Arc::new(JsonlSink::stdout()),
            SinkSpec::Jsonl { path, sync, mode } => Arc::new(
                JsonlSink::file_with_mode(path, *sync, *mode)
                    .await
                    .map_err(|source| ConfigError::SinkFile {
                        group: group.name(),
                        path: path.clone(),
                        source,
                    })?,
            ),
            adapter_sink => {
                let what = || {
                    format!(
                        "group {:?}: {} sink",
                        group.name(),
                        adapter_sink.type_name()
                    )
                };
                match adapter_sink.adapter() {
                    Ok(Some(adapter)) => {
                        adapter.build().map_err(|source| ConfigError::Adapter {
                            what: what(),
                            source,
                        })?
                    }
                    // The built-in sinks are matched above; no adapter left
                    // without one, but say so rather than panic.
                    Ok(None) => {
                        return Err(ConfigError::Adapter {
                            what: what(),
                            source: KnobError::said("type", "no adapter builds this sink"),
                        });
                    }
                    Err(missing) => {
                        return Err(ConfigError::NotBuilt {
                            place: what(),
                            missing,
                        });
                    }
                }
            }
        })
    }
}
