//! Live latency between the simulator's bursts and in them, told apart.
//!
//! A simulator with `burst_every` drops `burst_size` messages at once; a
//! whole-run p99 is then the bursts' figure, and says nothing of the
//! latency a steady message sees between them. Each status interval is
//! filed as "with a burst" (a burst instant fell in it) or "between
//! bursts", and the summary gives the p99 of each kind of interval.
//!
//! Invariant: an interval is filed by the bursts' schedule alone (the
//! simulator's: burst k at k × `burst_every` after the start, counted in
//! the interval whose first half, or whose predecessor's second half, it
//! fell in), never by the latency it showed, so a slow interval without a
//! burst counts against "between bursts".

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use laneway::config::{FileConfig, SourceSpec};
use laneway::engine::LatencySummary;

/// Per group, the p99s of the intervals of each kind.
pub struct BurstSplit {
    periods: Vec<Duration>,
    started: Instant,
    last: Instant,
    names: Vec<String>,
    between: Vec<Vec<f64>>,
    with_burst: Vec<Vec<f64>>,
}

impl BurstSplit {
    /// A split for `config`'s groups, if one of its simulators has bursts.
    pub fn of(config: &FileConfig, started: Instant) -> Option<BurstSplit> {
        let periods: Vec<Duration> = config
            .sources
            .iter()
            .filter_map(|s| match s {
                SourceSpec::Simulator(c) if c.burst_size > 0 => c.burst_every,
                _ => None,
            })
            .filter(|every| !every.is_zero())
            .collect();
        if periods.is_empty() {
            return None;
        }
        let names: Vec<String> = config.groups.iter().map(|g| g.name()).collect();
        let n = names.len();
        Some(BurstSplit {
            periods,
            started,
            last: started,
            names,
            between: vec![Vec::new(); n],
            with_burst: vec![Vec::new(); n],
        })
    }

    /// Files the interval that ended at `now` with each group's live
    /// latency over it; says whether a burst fell in it.
    pub fn interval(&mut self, now: Instant, latency: &[LatencySummary]) -> bool {
        // A burst is delivered over the moments after it: it belongs to
        // the interval it fell in when it fell in its first half, else to
        // the next (sampling and bursting both on the second, a burst lands
        // just after a sample and its latency shows in the next interval).
        let half = now.saturating_duration_since(self.last) / 2;
        let burst_number = |at: Instant, every: &Duration| {
            let since = at.saturating_duration_since(self.started);
            since.saturating_sub(half).as_nanos() / every.as_nanos()
        };
        let burst = self
            .periods
            .iter()
            .any(|every| burst_number(now, every) > burst_number(self.last, every));
        self.last = now;
        let file = if burst {
            &mut self.with_burst
        } else {
            &mut self.between
        };
        for (kind, l) in file.iter_mut().zip(latency) {
            if l.count > 0 {
                kind.push(l.p99);
            }
        }
        burst
    }

    /// Lines for the summary: per group, the median and the highest
    /// interval p99 between bursts and with one.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (i, name) in self.names.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {name}: live p99 per status interval: between bursts {}; with a burst {}",
                describe(&self.between[i]),
                describe(&self.with_burst[i]),
            );
        }
        out
    }
}

fn describe(p99s: &[f64]) -> String {
    if p99s.is_empty() {
        return "none measured".into();
    }
    let mut sorted = p99s.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!(
        "median {:.1}ms, highest {:.1}ms ({} intervals)",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        sorted.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lat(p99: f64) -> LatencySummary {
        LatencySummary {
            count: 10,
            p50: p99 / 2.0,
            p99,
            max: p99,
        }
    }

    #[test]
    fn intervals_are_filed_by_the_schedule_and_summarised_per_kind() {
        let config = FileConfig::embedded();
        let start = Instant::now();
        let mut split = BurstSplit::of(&config, start).unwrap();
        let groups = config.groups.len();
        // The embedded default bursts every 2 s; intervals of 1 s, sampled
        // a few milliseconds after the second: the burst at 2 s is
        // delivered in the interval that ends at 3 s.
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(!split.interval(at(1_004), &vec![lat(5.0); groups]));
        assert!(!split.interval(at(2_004), &vec![lat(9.0); groups]));
        assert!(split.interval(at(3_004), &vec![lat(150.0); groups]));
        assert!(!split.interval(at(4_004), &vec![lat(9.0); groups]));
        assert!(split.interval(at(5_004), &vec![lat(140.0); groups]));
        let text = split.summary();
        assert!(
            text.contains("between bursts median 9.0ms, highest 9.0ms (3 intervals); with a burst median 150.0ms, highest 150.0ms (2 intervals)"),
            "{text}"
        );
    }
}
