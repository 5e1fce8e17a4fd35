//! What every AMQP product's configuration shares: the error a check
//! returns ([`AmqpConfigError`]), the limit on broker names, and the three
//! broker knobs (`url`, `url_env`, `allow_plaintext`), resolved and shown
//! the same way everywhere.
//!
//! Invariants: a config's URL is shown only redacted ([`debug_broker`]
//! goes through [`crate::broker_url::redact`]), since it may hold a
//! password; a URL that would send a password in clear to another machine
//! is refused unless `allow_plaintext` says otherwise ([`resolve_url`]);
//! every error names the knob it is about.

use std::fmt::DebugStruct;

use lapin::types::ShortString;

use crate::broker_url::{self, BrokerUrl, UrlError};

/// Why an AMQP source or sink configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpConfigError {
    /// The URL is missing or invalid.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A knob is wrong.
    #[error("{knob}: {message}")]
    Invalid {
        /// The knob (field and config key).
        knob: &'static str,
        /// What is wrong, with the bad value.
        message: String,
    },
}

impl AmqpConfigError {
    /// The error for a wrong `knob`, saying what is wrong with it.
    pub(crate) fn invalid(knob: &'static str, message: impl Into<String>) -> AmqpConfigError {
        AmqpConfigError::Invalid {
            knob,
            message: message.into(),
        }
    }

    /// The knob the error is about (`url` for a URL error).
    pub fn knob(&self) -> &'static str {
        match self {
            AmqpConfigError::Url(_) => "url",
            AmqpConfigError::Invalid { knob, .. } => knob,
        }
    }
}

/// Checks that `name` fits an AMQP short string (queue, exchange, key).
pub(crate) fn short(knob: &'static str, name: &str) -> Result<ShortString, AmqpConfigError> {
    ShortString::try_new(name.to_string())
        .map_err(|_| AmqpConfigError::invalid(knob, format!("{name:?} is longer than 255 bytes")))
}

/// The broker URL the knobs name: `url`, or else the variable `url_env`
/// (see [`BrokerUrl::resolve`]); refused when it would send a password in
/// clear to another machine and `allow_plaintext` is off.
pub(crate) fn resolve_url(
    url: Option<&str>,
    url_env: Option<&str>,
    allow_plaintext: bool,
) -> Result<BrokerUrl, AmqpConfigError> {
    let url = BrokerUrl::resolve(url, url_env)?;
    url.check_plaintext(allow_plaintext)?;
    Ok(url)
}

/// Adds the broker knobs to a config's `Debug`, the URL redacted (it may
/// hold a password), in the order the configs declare them.
pub(crate) fn debug_broker<'d, 'a, 'b>(
    debug: &'d mut DebugStruct<'a, 'b>,
    url: &Option<String>,
    url_env: &Option<String>,
    allow_plaintext: bool,
) -> &'d mut DebugStruct<'a, 'b> {
    debug
        .field("url", &url.as_deref().map(broker_url::redact))
        .field("url_env", url_env)
        .field("allow_plaintext", &allow_plaintext)
}
