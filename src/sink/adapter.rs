//! How a sink adapter's table (`sink = { type = "kafka", … }`) is checked
//! and built: the one path every adapter takes, so that the config reader
//! knows no adapter by name. The built-in sinks (simulated, null, stdout,
//! jsonl) need no adapter.
//!
//! Invariants: [`SinkAdapter::check`] reads nothing outside the table;
//! every error names the knob at fault ([`KnobError`]).

use std::sync::Arc;

use super::Sink;
use crate::knob::KnobError;

/// A sink adapter's config table: its checks and how it is built.
pub trait SinkAdapter {
    /// Checks the table's knobs.
    fn check(&self) -> Result<(), KnobError>;

    /// The sink (a value it reads now, such as a header's secret, can
    /// still fail here).
    fn build(&self) -> Result<Arc<dyn Sink>, KnobError>;
}

/// A table kept boxed in the config (a large one) is the same adapter.
impl<T: SinkAdapter + ?Sized> SinkAdapter for Box<T> {
    fn check(&self) -> Result<(), KnobError> {
        (**self).check()
    }

    fn build(&self) -> Result<Arc<dyn Sink>, KnobError> {
        (**self).build()
    }
}
