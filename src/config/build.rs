//! Turning a checked [`FileConfig`] into an engine builder: opening dead
//! letters, backlog stores, sinks and sources. Everything that can fail
//! here names the group or file it was opening.

use std::sync::Arc;

#[cfg(not(all(
    feature = "amqp",
    feature = "amqp1",
    feature = "kafka",
    feature = "pulsar",
    feature = "http"
)))]
use super::MissingFeature;
use super::position::path_text;
use super::{BacklogSpec, ConfigError, FileConfig, GroupSpec, SinkSpec, SourceSpec};
#[cfg(feature = "amqp")]
use crate::amqp::{AmqpBacklog, AmqpSink, AmqpSource, AmqpStreamSource};
#[cfg(feature = "amqp1")]
use crate::amqp1::Amqp1Source;
use crate::backlog::{BacklogError, BacklogStore, DiskBacklog, MemoryBacklog, MemoryLimits};
use crate::engine::{DeadLetters, DuplicateWindow, DuplicateWindowError, EngineBuilder};
#[cfg(feature = "http")]
use crate::http::HttpSink;
#[cfg(feature = "kafka")]
use crate::kafka::{KafkaSink, KafkaSource};
#[cfg(feature = "pulsar")]
use crate::pulsar::PulsarSource;
use crate::sink::{JsonlSink, NullSink, SimulatedHandler, Sink};
use crate::source::jsonl::JsonlInput;
use crate::source::{JsonlSource, Simulator};

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
            let sink = build_sink(group).await?;
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
        for source in &self.sources {
            // Refused above already; the arms below keep `match` whole.
            #[cfg(not(all(
                feature = "amqp",
                feature = "amqp1",
                feature = "kafka",
                feature = "pulsar"
            )))]
            let place = || "source".to_string();
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
                #[cfg(feature = "amqp")]
                SourceSpec::Amqp(spec) => {
                    let source =
                        AmqpSource::new(spec.clone()).map_err(|source| ConfigError::Amqp {
                            what: "amqp source".into(),
                            source,
                        })?;
                    builder.source(source, spec.lane)
                }
                #[cfg(feature = "amqp")]
                SourceSpec::AmqpStream(spec) => {
                    let source = AmqpStreamSource::new(spec.clone())
                        .map_err(|source| ConfigError::Amqp {
                            what: "amqp-stream source".into(),
                            source,
                        })?
                        // Its offset lives beside the file sources' checkpoints.
                        .offsets_in(&self.data_dir.join("sources"));
                    builder.source(source, spec.lane)
                }
                #[cfg(feature = "amqp1")]
                SourceSpec::Amqp1(spec) => {
                    let source = Amqp1Source::new((**spec).clone()).map_err(|source| {
                        ConfigError::Amqp1 {
                            what: "amqp1 source".into(),
                            source,
                        }
                    })?;
                    builder.source(source, spec.lane)
                }
                #[cfg(feature = "pulsar")]
                SourceSpec::Pulsar(spec) => {
                    let source = PulsarSource::new((**spec).clone()).map_err(|source| {
                        ConfigError::Pulsar {
                            what: "pulsar source".into(),
                            source,
                        }
                    })?;
                    builder.source(source, spec.lane)
                }
                #[cfg(feature = "kafka")]
                SourceSpec::Kafka(spec) => {
                    let source =
                        KafkaSource::new(spec.clone()).map_err(|source| ConfigError::Kafka {
                            what: "kafka source".into(),
                            source,
                        })?;
                    builder.source(source, spec.lane)
                }
                #[cfg(not(feature = "amqp"))]
                SourceSpec::Amqp(_) => return Err(not_built(place(), MissingFeature::AMQP_SOURCE)),
                #[cfg(not(feature = "amqp"))]
                SourceSpec::AmqpStream(_) => {
                    return Err(not_built(place(), MissingFeature::AMQP_STREAM_SOURCE));
                }
                #[cfg(not(feature = "amqp1"))]
                SourceSpec::Amqp1(_) => {
                    return Err(not_built(place(), MissingFeature::AMQP1_SOURCE));
                }
                #[cfg(not(feature = "pulsar"))]
                SourceSpec::Pulsar(_) => {
                    return Err(not_built(place(), MissingFeature::PULSAR_SOURCE));
                }
                #[cfg(not(feature = "kafka"))]
                SourceSpec::Kafka(_) => {
                    return Err(not_built(place(), MissingFeature::KAFKA_SOURCE));
                }
            };
            if let Some(name) = source.name() {
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
                return Err(not_built(place, MissingFeature::AMQP_BACKLOG));
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

async fn build_sink(group: &GroupSpec) -> Result<Arc<dyn Sink>, ConfigError> {
    #[cfg(not(all(feature = "amqp", feature = "kafka", feature = "http")))]
    let sink_place = || format!("group {:?}: sink", group.name());
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
        #[cfg(feature = "amqp")]
        SinkSpec::Amqp(spec) => {
            Arc::new(
                AmqpSink::new(spec.clone()).map_err(|source| ConfigError::Amqp {
                    what: format!("group {:?}: amqp sink", group.name()),
                    source,
                })?,
            )
        }
        #[cfg(feature = "kafka")]
        SinkSpec::Kafka(spec) => {
            Arc::new(
                KafkaSink::new(spec.clone()).map_err(|source| ConfigError::Kafka {
                    what: format!("group {:?}: kafka sink", group.name()),
                    source,
                })?,
            )
        }
        #[cfg(feature = "http")]
        SinkSpec::Http(spec) => {
            Arc::new(HttpSink::new(spec).map_err(|source| ConfigError::Http {
                what: format!("group {:?}: http sink", group.name()),
                source,
            })?)
        }
        #[cfg(not(feature = "http"))]
        SinkSpec::Http(_) => return Err(not_built(sink_place(), MissingFeature::HTTP_SINK)),
        #[cfg(not(feature = "amqp"))]
        SinkSpec::Amqp(_) => return Err(not_built(sink_place(), MissingFeature::AMQP_SOURCE)),
        #[cfg(not(feature = "kafka"))]
        SinkSpec::Kafka(_) => return Err(not_built(sink_place(), MissingFeature::KAFKA_SOURCE)),
    })
}

/// The error for an entry naming an adapter this build lacks.
#[cfg(not(all(
    feature = "amqp",
    feature = "amqp1",
    feature = "kafka",
    feature = "pulsar",
    feature = "http"
)))]
fn not_built(place: String, missing: MissingFeature) -> ConfigError {
    ConfigError::NotBuilt { place, missing }
}
