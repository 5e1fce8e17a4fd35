//! A source under the name its config gives it (`name = "..."` in a
//! `[[sources]]` table): the name `/status`, the dashboard, the metric
//! labels and the run summary show. Everything else is the inner source's.

use async_trait::async_trait;

use super::{Source, SourceContext, SourceError};

/// `inner`, reported as `name`.
pub struct Named {
    name: String,
    inner: Box<dyn Source>,
}

impl Named {
    /// Wraps `inner` so that it is reported as `name`.
    pub fn new(name: impl Into<String>, inner: Box<dyn Source>) -> Named {
        Named {
            name: name.into(),
            inner,
        }
    }
}

#[async_trait]
impl Source for Named {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        self.inner.run(ctx).await
    }

    fn connects(&self) -> bool {
        self.inner.connects()
    }
}
