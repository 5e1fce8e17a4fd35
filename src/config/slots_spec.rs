//! The `slots` knob as a file writes it: a number of delivery slots, or
//! `"auto"` for a limit that follows the sink.
//!
//! Invariant: any other value is refused while the file is read, with a
//! message that says what `slots` takes and what it found.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The ceiling of an adaptive group when the file gives no `max_slots`.
pub const DEFAULT_MAX_SLOTS: usize = 32;

/// A group's `slots`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotsSpec {
    /// This many deliveries in flight, always.
    Fixed(usize),
    /// Between `min_slots` and `max_slots`, following the sink's round
    /// trips and push-backs.
    Auto,
}

impl Serialize for SlotsSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SlotsSpec::Fixed(n) => serializer.serialize_u64(*n as u64),
            SlotsSpec::Auto => serializer.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for SlotsSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SlotsVisitor;
        impl Visitor<'_> for SlotsVisitor {
            type Value = SlotsSpec;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of delivery slots or \"auto\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SlotsSpec, E> {
                usize::try_from(v).map(SlotsSpec::Fixed).map_err(|_| {
                    E::custom(format!("slots = {v} is more than this machine can count"))
                })
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SlotsSpec, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<SlotsSpec, E> {
                match v {
                    "auto" => Ok(SlotsSpec::Auto),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(SlotsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct T {
        slots: SlotsSpec,
    }

    #[test]
    fn a_number_or_auto_and_nothing_else() {
        let t: T = toml::from_str("slots = 8").unwrap();
        assert_eq!(t.slots, SlotsSpec::Fixed(8));
        let t: T = toml::from_str("slots = \"auto\"").unwrap();
        assert_eq!(t.slots, SlotsSpec::Auto);
        for bad in ["slots = \"many\"", "slots = -1", "slots = 1.5"] {
            let e = toml::from_str::<T>(bad).unwrap_err().to_string();
            assert!(
                e.contains("a number of delivery slots or \"auto\""),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            toml::to_string(&T {
                slots: SlotsSpec::Auto
            })
            .unwrap()
            .trim(),
            "slots = \"auto\""
        );
    }
}
