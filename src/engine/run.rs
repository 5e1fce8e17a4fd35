//! Running an engine: start the groups and sources, wait for the end (the
//! caller's shutdown future, sources finished and groups idle, or a source
//! failing), then shut down in order.
//!
//! Invariant: shutdown runs in this order, each step waiting on an event,
//! never a timer: stop sources reading → close intake (and wait for the
//! batches being routed; one waiting for room in a full backlog writer's
//! queue is let go unacknowledged, and so is one whose dead letters still
//! cannot be written once the shutdown grace is over) → stop groups (each finishes or returns
//! its in-flight work and stores its live leftovers, each of those steps
//! bounded by the shutdown grace) → tell sources everything is drained, so
//! they settle their last acks → wait for sources (bounded by the shutdown
//! grace).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::builder::{EngineBuilder, EngineOptions};
use super::dead_letter::DeadLetters;
use super::group::WriterQueue;
use super::monitor::{Monitor, RunSummary, SourceFailure};
use super::router::Router;
use crate::source::{Ingest, LanePolicy, Source, SourceContext};

/// A built engine, ready to run.
pub struct Engine {
    router: Arc<Router>,
    writers: Vec<WriterQueue>,
    sources: Vec<(Box<dyn Source>, LanePolicy)>,
    dead: Arc<DeadLetters>,
    options: EngineOptions,
}

impl Engine {
    /// Starts building an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    pub(super) fn new(
        router: Arc<Router>,
        writers: Vec<WriterQueue>,
        sources: Vec<(Box<dyn Source>, LanePolicy)>,
        dead: Arc<DeadLetters>,
        options: EngineOptions,
    ) -> Engine {
        Engine {
            router,
            writers,
            sources,
            dead,
            options,
        }
    }

    /// A handle to watch the engine while it runs; its clock
    /// ([`RunSummary::elapsed_s`]) starts now.
    pub fn monitor(&self) -> Monitor {
        Monitor {
            router: Arc::clone(&self.router),
            started: Instant::now(),
        }
    }

    /// A handle for submitting messages from code (besides the configured
    /// sources), with the given lane policy. Its dead letters at ingest
    /// name the origin "ingest".
    pub fn ingest(&self, policy: LanePolicy) -> Ingest {
        Ingest::new(self.router.clone(), policy, "ingest")
    }

    /// Where this engine's dead letters go.
    pub fn dead_letters(&self) -> Arc<DeadLetters> {
        Arc::clone(&self.dead)
    }

    /// Runs until `shutdown` resolves (or, with `finish_when_drained` and at
    /// least one source, until every source has ended and every group is
    /// idle, or until a source fails), then shuts down gracefully and
    /// returns the summary. A source that returns an error stops the run:
    /// the summary lists it in [`RunSummary::failures`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> RunSummary {
        let monitor = self.monitor();
        let grace = self.options.shutdown_grace;
        let stop_groups = CancellationToken::new();
        let stop_sources = CancellationToken::new();
        let drained = CancellationToken::new();
        let failed = CancellationToken::new();

        let groups = TaskTracker::new();
        for (group, writer) in self.router.groups.iter().cloned().zip(self.writers) {
            groups.spawn(group.run(writer, stop_groups.clone(), grace));
        }
        groups.close();

        let has_sources = !self.sources.is_empty();
        let sources = TaskTracker::new();
        // Counted down by each source as it ends, before it notifies
        // progress (the tracker counts a task until after its last step).
        let running = Arc::new(AtomicUsize::new(self.sources.len()));
        for ((source, policy), (name, health)) in self.sources.into_iter().zip(&self.router.health)
        {
            // The engine's name for it: unique among the sources.
            let name = name.clone();
            health.starting(source.connects());
            let ctx = SourceContext {
                ingest: Ingest::new(self.router.clone(), policy, &name).counting(health.clone()),
                stop: stop_sources.clone(),
                drained: drained.clone(),
                health: health.clone(),
            };
            let router = Arc::clone(&self.router);
            let failed = failed.clone();
            let running = Arc::clone(&running);
            sources.spawn(async move {
                match source.run(ctx).await {
                    Ok(()) => tracing::info!(source = %name, "source finished"),
                    Err(e) => {
                        // Reported once, by whoever runs the engine (the
                        // summary carries it); here only for the record.
                        tracing::info!(source = %name, error = %e, "source failed; stopping the run");
                        router.failures.lock().push(SourceFailure {
                            source: name,
                            error: e.to_string(),
                        });
                        failed.cancel();
                    }
                }
                running.fetch_sub(1, Ordering::AcqRel);
                router.progress.notify_waiters();
            });
        }
        sources.close();

        let finished = async {
            if !(has_sources && self.options.finish_when_drained) {
                return std::future::pending().await;
            }
            monitor
                .until(|m| running.load(Ordering::Acquire) == 0 && m.is_idle())
                .await
        };
        tokio::select! {
            _ = shutdown => tracing::info!("shutting down"),
            _ = finished => tracing::info!("sources finished and every group is idle"),
            _ = failed.cancelled() => tracing::info!("a source failed; shutting down"),
        }

        stop_sources.cancel();
        // A dead-letter file that keeps failing holds whatever waits for
        // it; past the grace those wait no more (their acks stay unsettled).
        let dead = Arc::clone(&self.dead);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            dead.give_up_retrying();
        });
        self.router.close_intake().await;
        stop_groups.cancel();
        groups.wait().await;
        drained.cancel();
        if tokio::time::timeout(grace, sources.wait()).await.is_err() {
            tracing::warn!("a source did not finish within the shutdown grace period");
        }
        monitor.summary()
    }
}
