//! The median and range of one figure over a benchmark's rounds. The
//! machines the benchmarks run on are shared, and one run's figure moves by
//! half or more between runs; the median of several interleaved rounds, with
//! the range beside it, says both what the figure is and how far to trust it.
//!
//! Invariants: a [`Spread`] is made only from at least one finite value;
//! rounds that gave no figure (a consumer that never got there) are left out
//! of it, never counted as zero.

use serde::Serialize;

/// A figure over rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// The median (of an even count, the mean of the two middle values).
    pub median: f64,
    /// The lowest value.
    pub min: f64,
    /// The highest value.
    pub max: f64,
    /// How many rounds gave a value.
    pub rounds: usize,
}

impl Spread {
    /// The spread of the values that are present and finite; `None` when
    /// there is none.
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Option<Spread> {
        let mut v: Vec<f64> = values
            .into_iter()
            .flatten()
            .filter(|x| x.is_finite())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            rounds: n,
        })
    }

    /// `median (min–max)` with `digits` decimals; the median alone when one
    /// round gave it.
    pub fn show(&self, digits: usize) -> String {
        if self.rounds == 1 {
            format!("{:.digits$}", self.median)
        } else {
            format!(
                "{:.digits$} ({:.digits$}–{:.digits$})",
                self.median, self.min, self.max
            )
        }
    }
}

/// The spread of `a ÷ b` over rounds, each pair from one round: a ratio
/// compares two runs made under the same load. Rounds missing either side,
/// or whose `b` is not positive, are left out.
pub fn ratios(pairs: impl IntoIterator<Item = (Option<f64>, Option<f64>)>) -> Option<Spread> {
    Spread::of(pairs.into_iter().map(|pair| match pair {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }))
}

/// [`Spread::show`], or `missing` when no round gave the figure.
pub fn show(spread: Option<Spread>, digits: usize, missing: &str) -> String {
    spread.map_or_else(|| missing.to_string(), |s| s.show(digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_and_even_counts_give_the_middle() {
        let s = Spread::of([Some(3.0), Some(1.0), Some(2.0)]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.rounds), (2.0, 1.0, 3.0, 3));
        let s = Spread::of([Some(4.0), Some(1.0), Some(2.0), Some(3.0)]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.rounds), (2.5, 1.0, 4.0, 4));
    }

    #[test]
    fn missing_and_non_finite_rounds_are_left_out() {
        let s = Spread::of([None, Some(5.0), Some(f64::NAN), Some(7.0)]).unwrap();
        assert_eq!((s.median, s.rounds), (6.0, 2));
        assert_eq!(Spread::of([None, Some(f64::INFINITY)]), None);
        assert_eq!(show(None, 1, "never"), "never");
    }

    #[test]
    fn ratios_are_taken_per_round_and_skip_incomplete_rounds() {
        let r = ratios([
            (Some(2.0), Some(1.0)),
            (Some(9.0), None),
            (Some(1.0), Some(0.0)),
            (Some(3.0), Some(1.0)),
        ])
        .unwrap();
        assert_eq!((r.median, r.min, r.max, r.rounds), (2.5, 2.0, 3.0, 2));
    }

    #[test]
    fn one_round_shows_no_range() {
        assert_eq!(Spread::of([Some(1.234)]).unwrap().show(2), "1.23");
        assert_eq!(
            Spread::of([Some(1.0), Some(3.0)]).unwrap().show(1),
            "2.0 (1.0–3.0)"
        );
    }
}
