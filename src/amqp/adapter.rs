//! The AMQP 0-9-1 adapters as entries of a config file: a queue source
//! (`type = "amqp"`), a stream source (`type = "amqp-stream"`, whose
//! offset file lives in the run's state directory) and a sink.

use std::sync::Arc;

use super::{
    AmqpConfigError, AmqpSink, AmqpSinkConfig, AmqpSource, AmqpSourceConfig, AmqpStreamConfig,
    AmqpStreamSource,
};
use crate::knob::KnobError;
use crate::sink::{Sink, SinkAdapter};
use crate::source::{BuildContext, LanePolicy, Source, SourceAdapter};

impl From<AmqpConfigError> for KnobError {
    fn from(e: AmqpConfigError) -> Self {
        KnobError::said(e.knob(), e.to_string())
    }
}

impl SourceAdapter for AmqpSourceConfig {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn lane(&self) -> LanePolicy {
        self.lane
    }

    fn check(&self) -> Result<(), KnobError> {
        Ok(self.validate().map(|_| ())?)
    }

    fn build(&self, _: &BuildContext) -> Result<Box<dyn Source>, KnobError> {
        Ok(Box::new(AmqpSource::new(self.clone())?))
    }
}

impl SourceAdapter for AmqpStreamConfig {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn lane(&self) -> LanePolicy {
        self.lane
    }

    fn check(&self) -> Result<(), KnobError> {
        Ok(self.validate().map(|_| ())?)
    }

    fn build(&self, context: &BuildContext) -> Result<Box<dyn Source>, KnobError> {
        let source = AmqpStreamSource::new(self.clone())?.offsets_in(&context.state_dir);
        Ok(Box::new(source))
    }
}

impl SinkAdapter for AmqpSinkConfig {
    fn check(&self) -> Result<(), KnobError> {
        Ok(self.validate().map(|_| ())?)
    }

    fn build(&self) -> Result<Arc<dyn Sink>, KnobError> {
        Ok(Arc::new(AmqpSink::new(self.clone())?))
    }
}
