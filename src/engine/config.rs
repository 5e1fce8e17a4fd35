//! A consumer group's knobs, with the defaults a user gets when a knob is
//! left out (in code or in `laneway.toml`).
//!
//! Invariant: [`GroupConfig::validate`] accepts only configurations the
//! engine can run (non-zero capacities, a share within 0..=1, ...), so the
//! engine never has to second-guess its knobs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{BacklogSpec, SinkSpec};

/// How one consumer group takes, schedules and retries its messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name, unique in one engine (reports, dead letters, backlog directory).
    pub name: String,
    /// Product keys this group takes; `"*"` takes every product.
    pub products: Vec<String>,
    /// Kinds this group takes (`property`, `event`, `status`, `lifecycle`,
    /// `topology`, `found`, `other`); `"*"` takes every kind.
    pub kinds: Vec<String>,
    /// Messages the live lane holds before new ones go to the backlog ("push limited").
    pub live_capacity: usize,
    /// A message older than this (by its generate time) is stale and goes to the backlog.
    #[serde(with = "humantime_serde")]
    pub live_window: Duration,
    /// Deliveries in flight at once (the group's concurrency).
    pub slots: usize,
    /// The most messages handed to the sink in one delivery.
    pub batch_size: usize,
    /// The share of deliveries the backlog is guaranteed whenever it is non-empty (0..=1).
    pub backlog_share: f64,
    /// A ceiling on backlog deliveries per second (the degraded mode); none by default.
    pub backlog_rate: Option<f64>,
    /// Delivery attempts before a message becomes a dead letter.
    pub max_attempts: u32,
    /// The first retry's delay; it doubles with each attempt.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// The longest retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// A delivery that takes longer than this has failed.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Check that each payload is JSON; a payload that is not becomes a dead letter.
    pub validate_json: bool,
    /// Where the group delivers, when it is built from a config file
    /// ([`EngineBuilder::group`](super::EngineBuilder::group) takes a sink object instead).
    pub sink: SinkSpec,
    /// Which backlog store the group uses, when it is built from a config file.
    pub backlog: BacklogSpec,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            name: "default".into(),
            products: vec!["*".into()],
            kinds: vec!["*".into()],
            live_capacity: 10_000,
            live_window: Duration::from_secs(10),
            slots: 4,
            batch_size: 256,
            backlog_share: 0.2,
            backlog_rate: None,
            max_attempts: 5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            delivery_timeout: Duration::from_secs(30),
            validate_json: true,
            sink: SinkSpec::default(),
            backlog: BacklogSpec::default(),
        }
    }
}

impl GroupConfig {
    /// A default configuration with this name.
    pub fn named(name: impl Into<String>) -> GroupConfig {
        GroupConfig {
            name: name.into(),
            ..GroupConfig::default()
        }
    }

    /// The delay before retry number `attempts` (1 for the first retry).
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.retry_initial
            .saturating_mul(1u32 << doublings)
            .min(self.retry_max)
    }

    /// Checks that the engine can run this group; the error names the knob.
    pub fn validate(&self) -> Result<(), String> {
        let fail = |knob: &str, why: &str| Err(format!("group {:?}: {knob} {why}", self.name));
        if self.name.is_empty() {
            return Err("a group needs a non-empty name".into());
        }
        if self.live_capacity == 0 {
            return fail("live_capacity", "must be at least 1");
        }
        if self.slots == 0 {
            return fail("slots", "must be at least 1");
        }
        if self.batch_size == 0 {
            return fail("batch_size", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.backlog_share) {
            return fail("backlog_share", "must be between 0 and 1");
        }
        if self.backlog_rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return fail(
                "backlog_rate",
                "must be a positive number of messages per second",
            );
        }
        if self.max_attempts == 0 {
            return fail("max_attempts", "must be at least 1");
        }
        if self.delivery_timeout.is_zero() {
            return fail("delivery_timeout", "must be longer than zero");
        }
        super::Filter::new(&self.products, &self.kinds).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let c = GroupConfig::default();
        assert_eq!(c.retry_delay(1), Duration::from_secs(1));
        assert_eq!(c.retry_delay(2), Duration::from_secs(2));
        assert_eq!(c.retry_delay(4), Duration::from_secs(8));
        assert_eq!(c.retry_delay(7), Duration::from_secs(60));
        assert_eq!(c.retry_delay(1000), Duration::from_secs(60));
    }

    #[test]
    fn validation_names_the_knob() {
        let c = GroupConfig {
            backlog_share: 1.5,
            ..GroupConfig::named("g")
        };
        assert!(c.validate().unwrap_err().contains("backlog_share"));
        let c = GroupConfig {
            kinds: vec!["alarm".into()],
            ..GroupConfig::named("g")
        };
        assert!(c.validate().unwrap_err().contains("alarm"));
        assert!(GroupConfig::default().validate().is_ok());
    }
}
