//! `laneway tune`: short in-process trials of one group with candidate lane
//! knobs, against a traffic profile and a goal (live p99 under drain, the
//! outage's pile drained in time), and the knobs that meet it.
//!
//! One concept per module: the traffic ([`profile`]), one trial
//! ([`trial`]), which knobs to try ([`search`]), what is said
//! ([`recommendation`]) and writing it into the config ([`apply`]).
//! Invariant: a recommendation is always a trial that ran and met the goal
//! by its own measurements; nothing is extrapolated but the drain time
//! (the pile over the measured drain rate).

pub mod apply;
pub mod profile;
pub mod recommendation;
pub mod search;
pub mod trial;
