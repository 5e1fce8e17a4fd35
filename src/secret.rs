//! A value that must never be shown: a password, an access key, a client
//! property that may hold either.
//!
//! Invariants: no `Debug`, `Display` or `Serialize` of a [`Secret`] prints
//! its value (they print `***`); the value is reached only through
//! [`Secret::expose`], at the one place that hands it to a client library.
//! Broker URLs, which carry a password inside other text, have their own
//! redacting type (`BrokerUrl`); everything else that holds a credential
//! holds a `Secret`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A credential (or a value that may be one), redacted wherever it could
/// be printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the client library that needs it; never for
    /// a log line or an error.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty (an empty secret is usually a mistake).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_string())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::Secret;

    #[test]
    fn no_printing_shows_the_value() {
        let s = Secret::new("Zq9-MARK");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(***)");
        assert_eq!(s.expose(), "Zq9-MARK");
    }
}
