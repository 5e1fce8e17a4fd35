//! What a tuning run tells the user: the table of every trial, the
//! recommendation as a TOML fragment with its predictions, or a plain
//! statement that no setting meets the goal (which part fails, the best
//! found, and how many instances it would take), plus the JSON and SVG
//! forms of the same measurements.
//!
//! Invariants: every figure printed comes from a trial's own measurement;
//! the fragment holds exactly the knobs of the picked trial; the instances
//! needed are ceil(needed / best throughput), where needed is the group's
//! live rate plus the pile over the drain goal.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::profile::Profile;
use super::search::{Goal, Trial, pick};
use crate::bench::svg::{PALETTE, Series, against_log2};

/// The outcome of a tuning run, as `--json` writes it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The group tuned.
    pub group: String,
    /// The config file, or "the embedded default".
    pub config: String,
    /// The traffic assumed.
    pub profile: Profile,
    /// The goal.
    pub goal: Goal,
    /// `coordinate` or `exhaustive`.
    pub search: &'static str,
    /// Every trial, in the order run.
    pub trials: Vec<Trial>,
    /// The pick, when a trial met the goal.
    pub recommendation: Option<Trial>,
    /// The pick run once more after the search, on its own.
    pub validation: Option<Trial>,
    /// When none did: why, and what it would take.
    pub shortfall: Option<Shortfall>,
    /// Seconds the whole search took.
    pub elapsed_s: f64,
}

/// Why no trial met the goal, and what would.
#[derive(Debug, Clone, Serialize)]
pub struct Shortfall {
    /// `live p99`, `drain time`, or `live p99 and drain time together`.
    pub failing: &'static str,
    /// The best trial found: the one meeting the live goal with the
    /// fastest drain, else the one with the lowest live p99.
    pub best: Option<Trial>,
    /// Messages per second the goal needs: the group's live rate plus the
    /// pile over the drain goal.
    pub needed_throughput: f64,
    /// The best sustained throughput measured, messages per second.
    pub best_throughput: f64,
    /// ceil(needed / best throughput): instances of the handler (or
    /// laneway consumers in the group) it would take.
    pub instances: u64,
}

/// Judges the trials: the pick, or the shortfall.
pub fn conclude(
    trials: &[Trial],
    goal: &Goal,
    profile: &Profile,
) -> (Option<Trial>, Option<Shortfall>) {
    if let Some(best) = pick(trials) {
        return (Some(best.clone()), None);
    }
    let any_live = trials.iter().any(|t| t.meets_live);
    let any_drain = trials.iter().any(|t| t.meets_drain);
    let failing = match (any_live, any_drain) {
        (false, true) => "live p99",
        (true, false) => "drain time",
        (false, false) => "live p99 and drain time",
        (true, true) => "live p99 and drain time together",
    };
    let best = if any_live {
        trials
            .iter()
            .filter(|t| t.meets_live)
            .max_by(|a, b| a.measured.drain_rate.total_cmp(&b.measured.drain_rate))
    } else if trials.iter().any(|t| t.measured.live_p99_ms.is_some()) {
        trials.iter().min_by(|a, b| {
            let p = |t: &Trial| t.measured.live_p99_ms.unwrap_or(f64::INFINITY);
            p(a).total_cmp(&p(b))
        })
    } else {
        trials
            .iter()
            .max_by(|a, b| a.measured.throughput.total_cmp(&b.measured.throughput))
    }
    .cloned();
    let best_throughput = trials
        .iter()
        .map(|t| t.measured.throughput)
        .fold(0.0, f64::max);
    let needed_throughput =
        profile.group_rate() + goal.pile as f64 / goal.drain_within.as_secs_f64().max(1e-9);
    let instances = if best_throughput > 0.0 {
        (needed_throughput / best_throughput).ceil().max(1.0) as u64
    } else {
        0
    };
    (
        None,
        Some(Shortfall {
            failing,
            best,
            needed_throughput,
            best_throughput,
            instances,
        }),
    )
}

/// A duration as a person reads it: `1h 5m`, `42s`, `350ms`.
pub fn human(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "never".into();
    }
    let d = if seconds >= 60.0 {
        Duration::from_secs(seconds.round() as u64)
    } else if seconds >= 1.0 {
        Duration::from_millis((seconds * 10.0).round() as u64 * 100)
    } else {
        Duration::from_millis((seconds * 1000.0).round() as u64)
    };
    humantime::format_duration(d).to_string()
}

fn p99_text(t: &Trial) -> String {
    t.measured
        .live_p99_ms
        .map_or_else(|| "behind".into(), |p| format!("{p:.1}"))
}

/// Live p99 in a sentence: `12.3 ms`, or that live traffic fell behind.
fn p99_words(t: &Trial) -> String {
    t.measured.live_p99_ms.map_or_else(
        || "behind (live traffic not kept up with)".into(),
        |p| format!("{p:.1} ms"),
    )
}

fn rate_text(v: f64) -> String {
    format!("{v:.0}")
}

impl Report {
    /// The table of every trial.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:>5} {:>6} {:>6} {:>8} {:>12} {:>11} {:>11} {:>12} {:>5}\n",
            "slots",
            "batch",
            "share",
            "live_cap",
            "live p99 ms",
            "msgs/s",
            "drain/s",
            "drain time",
            "goal"
        );
        for t in &self.trials {
            let k = t.measured.knobs;
            let goal = match (t.meets_live, t.meets_drain) {
                (true, true) => "met",
                (false, true) => "p99",
                (true, false) => "drain",
                (false, false) => "both",
            };
            let _ = writeln!(
                out,
                "{:>5} {:>6} {:>6} {:>8} {:>12} {:>11} {:>11} {:>12} {:>5}",
                k.slots,
                k.batch_size,
                k.backlog_share,
                k.live_capacity,
                p99_text(t),
                rate_text(t.measured.throughput),
                rate_text(t.measured.drain_rate),
                t.drain_time_s.map_or_else(|| "never".into(), human),
                goal
            );
        }
        out.push_str(
            "(goal: met, or the part that fails; live p99 \"behind\": live traffic fell behind)\n",
        );
        out
    }

    /// The heading: what was tuned, against what.
    pub fn heading(&self) -> String {
        let p = &self.profile;
        let burst = p
            .burst
            .map(|b| {
                format!(
                    " plus bursts of {} every {}",
                    b.size,
                    human(b.every.as_secs_f64())
                )
            })
            .unwrap_or_default();
        format!(
            "laneway tune: group {:?} of {} ({} search, {} trials in {})\n  traffic: {} msgs/s{burst} from {} ({:.0} % to this group); pile after a {} outage: {} messages\n  goal: live p99 ≤ {}, pile drained within {}\n",
            self.group,
            self.config,
            self.search,
            self.trials.len(),
            human(self.elapsed_s),
            rate_text(p.rate),
            p.messages,
            p.group_share * 100.0,
            human(p.outage.as_secs_f64()),
            p.pile,
            human(self.goal.live_p99.as_secs_f64()),
            human(self.goal.drain_within.as_secs_f64()),
        )
    }

    /// The recommendation as a TOML fragment for the group's table, or
    /// the shortfall in plain words.
    pub fn conclusion(&self) -> String {
        let mut out = String::new();
        if let Some(t) = &self.recommendation {
            let k = t.measured.knobs;
            let _ = writeln!(
                out,
                "# recommended for the [[groups]] table with name = {:?} (laneway tune)",
                self.group
            );
            let _ = writeln!(
                out,
                "# predicted: live p99 {} under drain, sustained {} msgs/s, pile of {} drained in {} ({} msgs/s beside live)",
                p99_words(t),
                rate_text(t.measured.throughput),
                self.goal.pile,
                t.drain_time_s.map_or_else(|| "never".into(), human),
                rate_text(t.measured.drain_rate),
            );
            if let Some(v) = &self.validation {
                let _ = writeln!(
                    out,
                    "# validation run: live p99 {}, {} msgs/s, drain {}: {}",
                    p99_words(v),
                    rate_text(v.measured.throughput),
                    v.drain_time_s.map_or_else(|| "never".into(), human),
                    if v.meets() {
                        "goal met again"
                    } else {
                        "goal missed this time: the pick is at the edge (longer --trial measures it better)"
                    }
                );
            }
            let _ = writeln!(out, "slots = {}", k.slots);
            let _ = writeln!(out, "batch_size = {}", k.batch_size);
            let _ = writeln!(out, "backlog_share = {}", k.backlog_share);
            let _ = writeln!(out, "live_capacity = {}", k.live_capacity);
        }
        if let Some(s) = &self.shortfall {
            let _ = writeln!(out, "no setting tried meets the goal: {} fails.", s.failing);
            if let Some(b) = &s.best {
                let k = b.measured.knobs;
                let _ = writeln!(
                    out,
                    "best found: slots = {}, batch_size = {}, backlog_share = {}: live p99 {}, {} msgs/s, drain {}",
                    k.slots,
                    k.batch_size,
                    k.backlog_share,
                    p99_words(b),
                    rate_text(b.measured.throughput),
                    b.drain_time_s.map_or_else(|| "never".into(), human),
                );
            }
            let _ = writeln!(
                out,
                "the goal needs {} msgs/s ({} live + a pile of {} over {}); one instance sustains at most {} msgs/s: it would take {} instance{} of the handler (or laneway consumers in the group).",
                rate_text(s.needed_throughput),
                rate_text(self.profile.group_rate()),
                self.goal.pile,
                human(self.goal.drain_within.as_secs_f64()),
                rate_text(s.best_throughput),
                s.instances,
                if s.instances == 1 { "" } else { "s" }
            );
            let measured_p99 = s.best.as_ref().and_then(|b| b.measured.live_p99_ms);
            if s.failing.starts_with("live p99") && measured_p99.is_some() {
                let _ = writeln!(
                    out,
                    "live p99 was measured above the goal at every setting tried: more instances help where the wait is queueing (bursts, a busy handler); none helps where it is the handler's own time per delivery."
                );
            } else if s.failing.starts_with("live p99") {
                let _ = writeln!(
                    out,
                    "the live traffic alone is more than one instance sustains."
                );
            }
        }
        out
    }

    /// Throughput and live p99 against slots, one line per
    /// (batch_size, backlog_share) pair tried.
    pub fn svg(&self) -> String {
        let mut pairs: Vec<(usize, f64)> = Vec::new();
        for t in &self.trials {
            let k = t.measured.knobs;
            if !pairs.contains(&(k.batch_size, k.backlog_share)) {
                pairs.push((k.batch_size, k.backlog_share));
            }
        }
        let series = |value: &dyn Fn(&Trial) -> Option<f64>| -> Vec<Series> {
            pairs
                .iter()
                .enumerate()
                .map(|(i, &(batch, share))| {
                    let mut points: Vec<(f64, Option<f64>)> = self
                        .trials
                        .iter()
                        .filter(|t| {
                            t.measured.knobs.batch_size == batch
                                && t.measured.knobs.backlog_share == share
                        })
                        .map(|t| (t.measured.knobs.slots as f64, value(t)))
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Series {
                        label: format!("batch {batch}, share {share}"),
                        colour: PALETTE[i % PALETTE.len()],
                        points,
                    }
                })
                .collect()
        };
        let throughput = series(&|t| Some(t.measured.throughput));
        let p99 = series(&|t| t.measured.live_p99_ms);
        let title = format!(
            "laneway tune — group {:?}: {} msgs/s live, pile {}, goal live p99 ≤ {}",
            self.group,
            rate_text(self.profile.rate),
            self.goal.pile,
            human(self.goal.live_p99.as_secs_f64())
        );
        against_log2(
            &title,
            "slots (deliveries in flight)",
            ("sustained throughput, msgs/s", &throughput),
            ("live p99 under drain, ms (log scale)", &p99),
            Some(self.goal.live_p99.as_secs_f64() * 1000.0),
        )
    }
}
