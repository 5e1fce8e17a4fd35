//! What every AMQP product's configuration shares: the limit on broker
//! names, and the three
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

use crate::broker_url::{self, BrokerUrl};
use crate::knob::KnobError;

/// Checks that `name` fits an AMQP short string (queue, exchange, key).
pub(crate) fn short(knob: &'static str, name: &str) -> Result<ShortString, KnobError> {
    ShortString::try_new(name.to_string())
        .map_err(|_| KnobError::new(knob, format!("{name:?} is longer than 255 bytes")))
}

/// The broker URL the knobs name: `url`, or else the variable `url_env`
/// (see [`BrokerUrl::resolve`]); refused when it would send a password in
/// clear to another machine and `allow_plaintext` is off.
pub(crate) fn resolve_url(
    url: Option<&str>,
    url_env: Option<&str>,
    allow_plaintext: bool,
) -> Result<BrokerUrl, KnobError> {
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
