//! Durations in config files: humantime text (`"30s"`, `"5m"`, `"2h"`),
//! bounded so that any of them can be added to a clock reading.
//!
//! Invariant: no duration this module accepts is over [`MAX`], so
//! `Instant::now() + d` (which panics past the clock's range) holds for
//! every timeout, interval and age a config gives. A value past it is a
//! typo, refused where it is written (`file:line:column`), not a panic at
//! the first connection that uses it.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest duration a config may give: a hundred years (of 365.25
/// days, as humantime counts a year).
pub const MAX: Duration = Duration::from_secs(100 * 31_557_600);

/// A duration knob's type: a duration, or an optional one.
pub trait Bounded: Sized {
    /// Itself, or the error that it is over [`MAX`].
    fn bounded<E: serde::de::Error>(self) -> Result<Self, E>;
}

impl Bounded for Duration {
    fn bounded<E: serde::de::Error>(self) -> Result<Duration, E> {
        if self > MAX {
            return Err(E::custom(format!(
                "the duration {} is out of range: at most {} (100 years)",
                humantime::format_duration(self),
                humantime::format_duration(MAX)
            )));
        }
        Ok(self)
    }
}

impl Bounded for Option<Duration> {
    fn bounded<E: serde::de::Error>(self) -> Result<Option<Duration>, E> {
        self.map(Bounded::bounded).transpose()
    }
}

/// Writes a duration (or an optional one) as humantime text (serde's
/// `with`).
pub fn serialize<T, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error>
where
    for<'a> humantime_serde::Serde<&'a T>: Serialize,
{
    humantime_serde::Serde::from(value).serialize(serializer)
}

/// Reads a duration (or an optional one) from humantime text, refusing
/// one over [`MAX`].
pub fn deserialize<'de, T: Bounded, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error>
where
    humantime_serde::Serde<T>: Deserialize<'de>,
{
    let value: humantime_serde::Serde<T> = Deserialize::deserialize(deserializer)?;
    value.into_inner().bounded()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Serialize)]
    struct Knobs {
        #[serde(with = "super")]
        every: Duration,
        #[serde(with = "super", default)]
        within: Option<Duration>,
    }

    #[test]
    fn a_duration_past_a_hundred_years_is_refused_and_one_within_is_read() {
        let read: Knobs = toml::from_str("every = \"30s\"\nwithin = \"100y\"").expect("valid");
        assert_eq!(read.every, Duration::from_secs(30));
        assert!(read.within.is_some());
        for text in [
            "every = \"300000000000y\"",
            "every = \"1s\"\nwithin = \"101y\"",
        ] {
            let Err(e) = toml::from_str::<Knobs>(text) else {
                panic!("{text} was accepted");
            };
            assert!(e.to_string().contains("out of range"), "{e}");
        }
        let written = toml::to_string(&read).expect("serializes");
        assert!(written.contains("every = \"30s\""), "{written}");
    }
}
