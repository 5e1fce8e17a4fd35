//! The AMQP 0-9-1 adapters as entries of a config file: a queue source
//! (`type = "amqp"`), a stream source (`type = "amqp-stream"`, whose
//! offset file lives in the run's state directory) and a sink.

use std::sync::Arc;

use super::{
    AmqpSink, AmqpSinkConfig, AmqpSource, AmqpSourceConfig, AmqpStreamConfig, AmqpStreamSource,
};
use crate::knob::KnobError;
use crate::sink::{Sink, SinkAdapter};
use crate::source::source_adapter;

source_adapter!(AmqpSourceConfig, |config, _| AmqpSource::new(
    config.clone()
));
source_adapter!(AmqpStreamConfig, |config, context| {
    // Its offset lives beside the file sources' checkpoints.
    AmqpStreamSource::new(config.clone()).map(|source| source.offsets_in(&context.state_dir))
});

impl SinkAdapter for AmqpSinkConfig {
    fn check(&self) -> Result<(), KnobError> {
        self.validate().map(|_| ())
    }

    fn build(&self) -> Result<Arc<dyn Sink>, KnobError> {
        Ok(Arc::new(AmqpSink::new(self.clone())?))
    }
}
