//! How a `[[sources]]` entry becomes a running source: the one path every
//! adapter takes (its config table is read, checked, then built), so that
//! the config reader knows no adapter by name. An adapter implements
//! [`SourceAdapter`] on its config type, in its own folder, and is listed
//! once where the config reader registers adapters (`config/spec.rs`).
//!
//! Invariants: [`SourceAdapter::check`] reads nothing outside the table
//! (no file, no environment variable that a restart could change), so a
//! config that passes `laneway check-config` fails later only for what
//! the machine says then; every error names the knob at fault
//! ([`KnobError`]), which the config reader turns into a line and column.

use std::path::PathBuf;

use super::{LanePolicy, Source};
use crate::knob::KnobError;

/// What a source may need from the run it is built for, beyond its own
/// table.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// Where a source keeps what it must remember across restarts (a
    /// file's checkpoint, a stream's offset): `data_dir/sources`.
    pub state_dir: PathBuf,
    /// The largest message the run accepts (`max_message_bytes`), for a
    /// source that must size its reads.
    pub max_message_bytes: usize,
}

/// A source adapter's config table: its checks and how it is built (see
/// the module docs).
pub trait SourceAdapter {
    /// The `name` knob, if the table sets one.
    fn name(&self) -> Option<&str>;

    /// The lane policy its messages take (the `lane` knob).
    fn lane(&self) -> LanePolicy;

    /// Checks the table's knobs on their own (the config reader checks
    /// what spans entries, such as two sources with one name).
    fn check(&self) -> Result<(), KnobError>;

    /// The source, ready for the engine to start.
    fn build(&self, context: &BuildContext) -> Result<Box<dyn Source>, KnobError>;
}

/// A table kept boxed in the config (a large one) is the same adapter.
impl<T: SourceAdapter + ?Sized> SourceAdapter for Box<T> {
    fn name(&self) -> Option<&str> {
        (**self).name()
    }

    fn lane(&self) -> LanePolicy {
        (**self).lane()
    }

    fn check(&self) -> Result<(), KnobError> {
        (**self).check()
    }

    fn build(&self, context: &BuildContext) -> Result<Box<dyn Source>, KnobError> {
        (**self).build(context)
    }
}

/// Implements [`SourceAdapter`] for an adapter's config type whose table
/// has the `name` and `lane` knobs and a `validate` method that checks
/// it; the closure makes the source from the table and the
/// [`BuildContext`]:
/// `source_adapter!(KafkaSourceConfig, |config, _| KafkaSource::new(config.clone()));`
#[cfg(any(
    feature = "amqp",
    feature = "amqp1",
    feature = "kafka",
    feature = "pulsar"
))]
macro_rules! source_adapter {
    ($config:ty, |$table:ident, $context:pat_param| $build:expr) => {
        impl $crate::source::SourceAdapter for $config {
            fn name(&self) -> Option<&str> {
                self.name.as_deref()
            }

            fn lane(&self) -> $crate::source::LanePolicy {
                self.lane
            }

            fn check(&self) -> Result<(), $crate::knob::KnobError> {
                self.validate()?;
                Ok(())
            }

            fn build(
                &self,
                $context: &$crate::source::BuildContext,
            ) -> Result<Box<dyn $crate::source::Source>, $crate::knob::KnobError> {
                let $table = self;
                Ok(Box::new($build?))
            }
        }
    };
}
#[cfg(any(
    feature = "amqp",
    feature = "amqp1",
    feature = "kafka",
    feature = "pulsar"
))]
pub(crate) use source_adapter;
