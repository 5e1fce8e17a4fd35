//! One `[[groups]]` entry: the group's knobs as the file gives them, plus
//! what only a file names (its sink and its backlog store).
//!
//! Invariant: a knob the file leaves out takes [`GroupConfig::default`]'s
//! value, so the library's defaults and the file's are one and the same.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::slots_spec::{DEFAULT_MAX_SLOTS, SlotsSpec};
use super::spec::{BacklogSpec, SinkSpec};
use crate::engine::{AdaptiveSlots, GroupConfig};
use crate::message::Kind;

/// A consumer group as a config file describes it. Each knob means what
/// the [`GroupConfig`] field of the same name means, and defaults the same.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupSpec {
    /// [`GroupConfig::name`] (required in practice: "default" otherwise).
    pub name: Option<String>,
    /// [`GroupConfig::products`].
    pub products: Option<Vec<String>>,
    /// [`GroupConfig::kinds`].
    pub kinds: Option<Vec<String>>,
    /// [`GroupConfig::live_capacity`].
    pub live_capacity: Option<usize>,
    /// [`GroupConfig::live_window`].
    #[serde(with = "crate::knob::duration")]
    pub live_window: Option<Duration>,
    /// [`GroupConfig::slots`], or `"auto"`: [`GroupConfig::adaptive_slots`]
    /// between `min_slots` and `max_slots`.
    pub slots: Option<SlotsSpec>,
    /// With `slots = "auto"`: the fewest deliveries in flight (default 1).
    pub min_slots: Option<usize>,
    /// With `slots = "auto"`: the most deliveries in flight (default
    /// [`DEFAULT_MAX_SLOTS`]).
    pub max_slots: Option<usize>,
    /// [`GroupConfig::batch_size`].
    pub batch_size: Option<usize>,
    /// [`GroupConfig::backlog_share`].
    pub backlog_share: Option<f64>,
    /// [`GroupConfig::backlog_rate`].
    pub backlog_rate: Option<f64>,
    /// [`GroupConfig::max_attempts`].
    pub max_attempts: Option<u32>,
    /// [`GroupConfig::retry_initial`].
    #[serde(with = "crate::knob::duration")]
    pub retry_initial: Option<Duration>,
    /// [`GroupConfig::retry_max`].
    #[serde(with = "crate::knob::duration")]
    pub retry_max: Option<Duration>,
    /// [`GroupConfig::delivery_timeout`].
    #[serde(with = "crate::knob::duration")]
    pub delivery_timeout: Option<Duration>,
    /// [`GroupConfig::validate_json`].
    pub validate_json: Option<bool>,
    /// [`GroupConfig::max_json_depth`].
    pub max_json_depth: Option<usize>,
    /// [`GroupConfig::dedup_window`]; kept on disk beside the group's
    /// backlog (`<data_dir>/dedup/<group>`).
    #[serde(with = "crate::knob::duration")]
    pub dedup_window: Option<Duration>,
    /// [`GroupConfig::skip_superseded`]: kinds such as `["status", "property"]`.
    pub skip_superseded: Option<Vec<Kind>>,
    /// Where the group delivers (a simulated handler by default).
    pub sink: SinkSpec,
    /// Which backlog store the group uses (on disk by default).
    pub backlog: BacklogSpec,
}

impl GroupSpec {
    /// The group's name as the engine will know it.
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| GroupConfig::default().name)
    }

    /// The slot knobs that do not go together: `min_slots` or `max_slots`
    /// without `slots = "auto"`, or a `max_slots` of 0. Gives the knob at
    /// fault and what is wrong with it.
    pub fn slots_conflict(&self) -> Option<(&'static str, String)> {
        let auto = self.slots == Some(SlotsSpec::Auto);
        for (knob, value) in [("min_slots", self.min_slots), ("max_slots", self.max_slots)] {
            if value.is_some() && !auto {
                return Some((
                    knob,
                    format!("{knob} needs slots = \"auto\"; with a fixed slots it has no effect"),
                ));
            }
        }
        (self.max_slots == Some(0)).then(|| {
            (
                "max_slots",
                "max_slots must be at least 1 (it is 0)".to_string(),
            )
        })
    }

    /// The engine's view of this group: every knob given, the rest defaulted.
    pub fn group_config(&self) -> GroupConfig {
        let d = GroupConfig::default();
        GroupConfig {
            name: self.name(),
            products: self.products.clone().unwrap_or(d.products),
            kinds: self.kinds.clone().unwrap_or(d.kinds),
            live_capacity: self.live_capacity.unwrap_or(d.live_capacity),
            live_window: self.live_window.unwrap_or(d.live_window),
            slots: match self.slots {
                None => d.slots,
                Some(SlotsSpec::Fixed(n)) => n,
                Some(SlotsSpec::Auto) => self.max_slots.unwrap_or(DEFAULT_MAX_SLOTS),
            },
            adaptive_slots: match self.slots {
                Some(SlotsSpec::Auto) => Some(AdaptiveSlots {
                    min: self.min_slots.unwrap_or(1),
                }),
                _ => None,
            },
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            backlog_share: self.backlog_share.unwrap_or(d.backlog_share),
            backlog_rate: self.backlog_rate.or(d.backlog_rate),
            max_attempts: self.max_attempts.unwrap_or(d.max_attempts),
            retry_initial: self.retry_initial.unwrap_or(d.retry_initial),
            retry_max: self.retry_max.unwrap_or(d.retry_max),
            delivery_timeout: self.delivery_timeout.unwrap_or(d.delivery_timeout),
            validate_json: self.validate_json.unwrap_or(d.validate_json),
            max_json_depth: self.max_json_depth.unwrap_or(d.max_json_depth),
            dedup_window: self.dedup_window.or(d.dedup_window),
            skip_superseded: self.skip_superseded.clone().unwrap_or(d.skip_superseded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_entry_is_the_library_default() {
        let spec: GroupSpec = toml::from_str("").unwrap();
        assert_eq!(spec.group_config(), GroupConfig::default());
        assert_eq!(spec.sink, SinkSpec::default());
        assert_eq!(spec.backlog, BacklogSpec::default());
    }

    #[test]
    fn given_knobs_override_the_defaults() {
        let spec: GroupSpec =
            toml::from_str("name = \"a\"\nslots = 9\nretry_max = \"5s\"\n").unwrap();
        let c = spec.group_config();
        assert_eq!((c.name.as_str(), c.slots), ("a", 9));
        assert_eq!(c.retry_max, Duration::from_secs(5));
        assert_eq!(c.batch_size, GroupConfig::default().batch_size);
    }
}
