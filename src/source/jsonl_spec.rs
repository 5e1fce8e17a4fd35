//! A `type = "jsonl"` entry: its table and how it becomes a
//! [`JsonlSource`]. A file source keeps its checkpoint in the run's state
//! directory, so a restart resumes where the last run was done.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::jsonl::{JsonlInput, JsonlSource};
use super::{BuildContext, LanePolicy, Source, SourceAdapter};
use crate::knob::KnobError;

/// A JSONL source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSpec {
    /// Which lane its messages take.
    #[serde(default)]
    pub lane: LanePolicy,
    /// The source's name in `/status`, the dashboard, metric labels and
    /// the run summary. Default: what it reads (a path, a queue, a topic),
    /// numbered when two sources share it. Two sources may not be given
    /// one name.
    pub name: Option<String>,
    /// The file to read; `-` reads standard input.
    pub path: PathBuf,
}

impl SourceAdapter for JsonlSpec {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn lane(&self) -> LanePolicy {
        self.lane
    }

    fn check(&self) -> Result<(), KnobError> {
        if self.path.as_os_str().is_empty() {
            return Err(KnobError::new(
                "path",
                "name a file, or `-` for standard input",
            ));
        }
        Ok(())
    }

    fn build(&self, context: &BuildContext) -> Result<Box<dyn Source>, KnobError> {
        let input = if self.path.as_os_str() == "-" {
            JsonlInput::Stdin
        } else {
            JsonlInput::File(self.path.clone())
        };
        // A line may carry a payload up to the limit plus its envelope.
        let max_line = context.max_message_bytes.saturating_mul(2).max(64 * 1024);
        let source = JsonlSource::new(input, max_line).checkpoint_in(&context.state_dir);
        Ok(Box::new(source))
    }
}
