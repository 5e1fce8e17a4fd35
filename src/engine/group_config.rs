//! A consumer group's knobs, with the defaults a user gets when a knob is
//! left out (in code or in `laneway.toml`).
//!
//! Invariant: [`GroupConfig::validate`] accepts only configurations the
//! engine can run (non-zero capacities, a share within 0..=1, a name that is
//! one plain path component, ...), so the engine never has to second-guess
//! its knobs. These defaults are the only ones: a config file that leaves a
//! knob out gets the same value as code that does.

use std::time::Duration;

use super::filter::{Filter, FilterError};
use crate::backoff::Backoff;
use crate::message::Kind;

/// How one consumer group takes, schedules and retries its messages.
#[derive(Debug, Clone, PartialEq)]
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
    pub live_window: Duration,
    /// Deliveries in flight at once (the group's concurrency); with
    /// `adaptive_slots`, the most it may grow to. At most 65,536.
    pub slots: usize,
    /// Let the number of deliveries in flight follow the sink (`slots =
    /// "auto"`): it grows while the sink keeps up and shrinks when it
    /// pushes back, fails or slows down, between `min` and `slots`. For a
    /// handler whose capacity changes (autoscaled, shared, degraded) no
    /// static `slots` is right for long. See
    /// [`concurrency`](super::concurrency) for the rule. Off by
    /// default.
    pub adaptive_slots: Option<AdaptiveSlots>,
    /// The most messages handed to the sink in one delivery. At most
    /// 1,048,576.
    pub batch_size: usize,
    /// The share of deliveries the backlog is guaranteed whenever it is non-empty (0..=1).
    pub backlog_share: f64,
    /// A ceiling on backlog deliveries per second (the degraded mode); none by default.
    pub backlog_rate: Option<f64>,
    /// Delivery attempts before a message becomes a dead letter.
    pub max_attempts: u32,
    /// The first retry's delay; it doubles with each attempt.
    pub retry_initial: Duration,
    /// The longest retry delay.
    pub retry_max: Duration,
    /// A delivery that takes longer than this has failed.
    pub delivery_timeout: Duration,
    /// Check that each payload is JSON; a payload that is not becomes a dead letter.
    pub validate_json: bool,
    /// With `validate_json`: the deepest nesting of arrays and objects a
    /// payload may have (`[[1]]` is 2 deep). Deeper payloads are valid JSON
    /// but crash the recursive parsers downstream consumers use, so they
    /// become dead letters with that reason. Default 512.
    pub max_json_depth: usize,
    /// Remember the ids of the messages this group admitted for this long,
    /// and acknowledge without delivering a message whose id is among them
    /// (a redelivery after a crash or a reconnect). Off by default: it
    /// costs an fsync per settled batch and about 64 bytes of memory per
    /// remembered id. Without a directory for it (see
    /// [`EngineBuilder::duplicate_window`](super::EngineBuilder::duplicate_window))
    /// the window lives in memory and does not survive a restart.
    pub dedup_window: Option<Duration>,
    /// Kinds whose superseded messages (a newer one of the same device and
    /// kind was already delivered: see [`Delivery::superseded`](crate::sink::Delivery::superseded))
    /// are acknowledged without being delivered, so that stale state
    /// (an old online/offline flip, an old property report) never
    /// overwrites fresh state in a handler. Empty by default: every
    /// message is delivered, the flag tells.
    pub skip_superseded: Vec<Kind>,
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
            adaptive_slots: None,
            batch_size: 256,
            backlog_share: 0.2,
            backlog_rate: None,
            max_attempts: 5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            delivery_timeout: Duration::from_secs(30),
            validate_json: true,
            max_json_depth: 512,
            dedup_window: None,
            skip_superseded: Vec::new(),
        }
    }
}

/// The most deliveries a group may have in flight: far beyond what any
/// sink serves, and low enough that the slots' semaphore and the
/// scheduler's window (`batch_size × slots × 2`) stay in range.
pub(crate) const MAX_SLOTS: usize = 1 << 16;

/// The most messages in one delivery (see [`MAX_SLOTS`]).
pub(crate) const MAX_BATCH_SIZE: usize = 1 << 20;

/// The floor of an adaptive group's concurrency (`min_slots`); its
/// ceiling is [`GroupConfig::slots`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveSlots {
    /// The fewest deliveries kept in flight however the sink answers, and
    /// where the limit starts probing from.
    pub min: usize,
}

impl GroupConfig {
    /// A default configuration with this name.
    pub fn named(name: impl Into<String>) -> GroupConfig {
        GroupConfig {
            name: name.into(),
            ..GroupConfig::default()
        }
    }

    /// The backoff of failed deliveries: ceilings from `retry_initial`,
    /// doubling up to `retry_max`, each wait drawn with full jitter.
    pub fn retry_backoff(&self) -> Backoff {
        Backoff::new(self.retry_initial, self.retry_max)
    }

    /// Checks that the engine can run this group; the error names the knob
    /// and its bad value.
    pub fn validate(&self) -> Result<(), GroupConfigError> {
        check_group_name(&self.name)?;
        let fail = |knob: &'static str, value: String, rule: &'static str| {
            Err(GroupConfigError::Knob {
                group: self.name.clone(),
                knob,
                value,
                rule,
            })
        };
        if self.live_capacity == 0 {
            return fail("live_capacity", "0".into(), "must be at least 1");
        }
        if !(1..=MAX_SLOTS).contains(&self.slots) {
            let rule = "must be between 1 and 65536";
            return fail("slots", self.slots.to_string(), rule);
        }
        if let Some(adaptive) = self.adaptive_slots {
            if adaptive.min == 0 {
                return fail("min_slots", "0".into(), "must be at least 1");
            }
            if adaptive.min > self.slots {
                let rule = "must not exceed max_slots";
                return fail("min_slots", adaptive.min.to_string(), rule);
            }
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            let rule = "must be between 1 and 1048576";
            return fail("batch_size", self.batch_size.to_string(), rule);
        }
        if !(0.0..=1.0).contains(&self.backlog_share) {
            let value = self.backlog_share.to_string();
            return fail("backlog_share", value, "must be between 0 and 1");
        }
        if let Some(rate) = self.backlog_rate.filter(|r| r.is_nan() || *r <= 0.0) {
            let rule = "must be a positive number of messages per second";
            return fail("backlog_rate", rate.to_string(), rule);
        }
        if self.max_attempts == 0 {
            return fail("max_attempts", "0".into(), "must be at least 1");
        }
        if self.max_json_depth == 0 {
            return fail("max_json_depth", "0".into(), "must be at least 1");
        }
        if self.delivery_timeout.is_zero() {
            return fail("delivery_timeout", "0s".into(), "must be longer than zero");
        }
        if self.dedup_window.is_some_and(|w| w.is_zero()) {
            return fail("dedup_window", "0s".into(), "must be longer than zero");
        }
        Filter::new(&self.products, &self.kinds)
            .map(|_| ())
            .map_err(|error| GroupConfigError::Filter {
                group: self.name.clone(),
                error,
            })
    }
}

/// Why a [`GroupConfig`] cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupConfigError {
    /// The group's name is not usable.
    #[error(transparent)]
    Name(#[from] GroupNameError),
    /// A knob's value is out of its range.
    #[error("group {group:?}: {knob} {rule} (it is {value})")]
    Knob {
        /// The group.
        group: String,
        /// The knob, as the field (and config key) is named.
        knob: &'static str,
        /// The bad value, as written.
        value: String,
        /// What the value must be.
        rule: &'static str,
    },
    /// `products` or `kinds` names something unknown.
    #[error("group {group:?}: {error}")]
    Filter {
        /// The group.
        group: String,
        /// What is wrong with the filter.
        error: FilterError,
    },
}

impl GroupConfigError {
    /// The knob (field and config key) the error is about.
    pub fn knob(&self) -> &'static str {
        match self {
            GroupConfigError::Name(_) => "name",
            GroupConfigError::Knob { knob, .. } => knob,
            GroupConfigError::Filter { error, .. } => error.knob(),
        }
    }
}

/// Why a group name cannot be used: it names the group in reports and dead
/// letters, and its disk backlog's directory (`<data_dir>/backlog/<name>`),
/// so it must be one plain path component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupNameError {
    /// The name is empty.
    #[error("a group needs a non-empty name")]
    Empty,
    /// `.` or `..`: the directory would be the backlog root or its parent.
    #[error(
        "group name {0:?} is not allowed: it would name the backlog directory itself or its parent"
    )]
    Dots(String),
    /// A path separator, a NUL or another control character.
    #[error(
        "group name {name:?} holds {what}: a name must be one plain path component (letters, digits, '-', '_', '.', ...)"
    )]
    BadCharacter {
        /// The name as given.
        name: String,
        /// Which character, in words.
        what: &'static str,
    },
    /// Longer than a file name may be.
    #[error("group name is {0} bytes long; at most 255 are allowed (it names a directory)")]
    TooLong(usize),
}

/// Checks that a group name is safe as a single directory name.
pub fn check_group_name(name: &str) -> Result<(), GroupNameError> {
    if name.is_empty() {
        return Err(GroupNameError::Empty);
    }
    if name == "." || name == ".." {
        return Err(GroupNameError::Dots(name.to_string()));
    }
    let bad = |what| {
        Err(GroupNameError::BadCharacter {
            name: name.to_string(),
            what,
        })
    };
    for c in name.chars() {
        match c {
            '/' => return bad("a '/'"),
            '\\' => return bad("a '\\'"),
            '\0' => return bad("a NUL character"),
            c if c.is_control() => return bad("a control character"),
            _ => {}
        }
    }
    if name.len() > 255 {
        return Err(GroupNameError::TooLong(name.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_ceilings_double_up_to_the_cap() {
        let b = GroupConfig::default().retry_backoff();
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(2), Duration::from_secs(2));
        assert_eq!(b.ceiling(4), Duration::from_secs(8));
        assert_eq!(b.ceiling(7), Duration::from_secs(60));
        assert_eq!(b.ceiling(1000), Duration::from_secs(60));
    }

    #[test]
    fn validation_names_the_knob() {
        let c = GroupConfig {
            backlog_share: 1.5,
            ..GroupConfig::named("g")
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.knob(), "backlog_share");
        assert!(e.to_string().contains("1.5"), "{e}");
        let c = GroupConfig {
            kinds: vec!["alarm".into()],
            ..GroupConfig::named("g")
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.knob(), "kinds");
        assert!(e.to_string().contains("alarm"), "{e}");
        assert!(GroupConfig::default().validate().is_ok());
    }

    /// A count beyond what the slots' semaphore holds (or one whose
    /// scheduler window overflows) is a config error, not a panic when
    /// the group is built.
    #[test]
    fn slots_and_batch_size_beyond_their_ceiling_are_refused() {
        for (slots, batch_size, knob) in [
            (MAX_SLOTS + 1, 1, "slots"),
            (usize::MAX / 2, 1, "slots"),
            (1, MAX_BATCH_SIZE + 1, "batch_size"),
            (1, usize::MAX, "batch_size"),
        ] {
            let c = GroupConfig {
                slots,
                batch_size,
                ..GroupConfig::named("g")
            };
            let e = c.validate().unwrap_err();
            assert_eq!(e.knob(), knob, "{e}");
        }
        let widest = GroupConfig {
            slots: MAX_SLOTS,
            batch_size: MAX_BATCH_SIZE,
            ..GroupConfig::named("g")
        };
        assert!(widest.validate().is_ok());
        assert!(
            (MAX_SLOTS * MAX_BATCH_SIZE).checked_mul(2).is_some(),
            "the scheduler's window stays in range"
        );
    }
}
