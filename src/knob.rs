//! The one error every adapter's checks return for a config value it
//! cannot use: which knob, and what is wrong with it. The config reader
//! turns it into `file:line:column: …` at that knob's value, so an adapter
//! never needs to know about files, lines or the other adapters.
//!
//! Invariants: [`KnobError::knob`] is the key's path inside the adapter's
//! own table, dotted for a nested table (`aliyun.uid` is `uid` in
//! `[sources.aliyun]`); the text names the knob (or says plainly what it is
//! about) and never holds a secret's value.

pub mod duration;

use std::borrow::Cow;
use std::fmt::Display;

/// A knob of an adapter's table whose value cannot work (see the module
/// docs). Cheap to build and to clone; compare with `==` in tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct KnobError {
    knob: Cow<'static, str>,
    text: String,
}

impl KnobError {
    /// `knob` is unusable: shown as `knob: message`.
    pub fn new(knob: &'static str, message: impl Display) -> KnobError {
        KnobError {
            text: format!("{knob}: {message}"),
            knob: Cow::Borrowed(knob),
        }
    }

    /// An error placed at `knob` whose `text` says all there is to say
    /// (it names the knob itself, or what refused it: a client library, a
    /// file the knob names).
    pub fn said(knob: &'static str, text: impl Into<String>) -> KnobError {
        KnobError {
            knob: Cow::Borrowed(knob),
            text: text.into(),
        }
    }

    /// The key's path inside the adapter's table (`url`, `aliyun.uid`).
    pub fn knob(&self) -> &str {
        &self.knob
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_knob_error_names_its_knob_and_keeps_its_path() {
        let e = KnobError::new("batch", "must be at least 1");
        assert_eq!(e.to_string(), "batch: must be at least 1");
        assert_eq!(e.knob(), "batch");
        let e = KnobError::said("properties", "the client refused bootstrap.servers");
        assert_eq!(e.to_string(), "the client refused bootstrap.servers");
        assert_eq!(e.knob(), "properties");
    }
}
