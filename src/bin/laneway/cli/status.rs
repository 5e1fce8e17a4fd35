//! The per-interval status line of `laneway run`.

use std::fmt::Write as _;

use laneway::admin::Tracker;
use laneway::engine::{LatencySummary, RunSummary};

/// One line: per group, lane depths, delivered/s from each lane over the
/// latest interval, live latency over it, the drain ETA while the backlog
/// holds records, and dead letters; then sources in trouble. The figures
/// are the tracker's, the same as `/status`.
pub fn status_line(tracker: &Tracker, elapsed_s: f64) -> String {
    let status = tracker.status();
    let mut line = format!("[{elapsed_s:6.1}s]");
    for ((g, lat, live_rate, backlog_rate), s) in
        tracker.latest_interval().iter().zip(&status.groups)
    {
        let _ = write!(
            line,
            "{}{}: live {} backlog {} | {}/s live {}/s backlog | p50 {} p99 {}",
            if line.ends_with(']') { " " } else { " || " },
            g.name,
            g.live_depth,
            g.backlog_depth,
            human(*live_rate),
            human(*backlog_rate),
            ms(*lat, |l| l.p50),
            ms(*lat, |l| l.p99),
        );
        if g.backlog_depth > 0 {
            let _ = write!(line, " | eta {}", s.drain_eta);
        }
        if g.dead_letter > 0 {
            let _ = write!(line, " dead {}", g.dead_letter);
        }
    }
    for (source, trouble) in tracker.monitor().source_troubles() {
        let _ = write!(line, " || {source}: {trouble}");
    }
    line
}

fn ms(l: LatencySummary, pick: impl Fn(&LatencySummary) -> f64) -> String {
    if l.count == 0 {
        "-".into()
    } else {
        format!("{:.1}ms", pick(&l))
    }
}

/// 12345.6 → "12.3k".
pub fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// The end-of-run summary for people.
pub fn summary_text(s: &RunSummary) -> String {
    let mut out = format!(
        "summary: {:.1}s, ingested {}, delivered {} (live {}, backlog {}), dead letters {}, unrouted {}, live latency p50 {:.2}ms p99 {:.2}ms max {:.2}ms\n",
        s.elapsed_s,
        s.ingested,
        s.delivered,
        s.delivered_live,
        s.delivered_backlog,
        s.dead_letter,
        s.unrouted,
        s.live_latency_ms.p50,
        s.live_latency_ms.p99,
        s.live_latency_ms.max,
    );
    for g in &s.groups {
        let _ = writeln!(
            out,
            "  {}: admitted {}, delivered live {} backlog {}, to backlog: stale {} full {} failed {}, dead {}, duplicates {}, left in backlog {}",
            g.name,
            g.admitted,
            g.delivered_live,
            g.delivered_backlog,
            g.diverted_stale,
            g.diverted_full,
            g.diverted_failed,
            g.dead_letter,
            g.duplicates,
            g.backlog_depth,
        );
    }
    for l in &s.lag {
        let _ = if l.lag == 0 {
            writeln!(out, "  {}: caught up, nothing left to read", l.source)
        } else {
            writeln!(
                out,
                "  {}: lag {}: records left to read (the next run reads them)",
                l.source, l.lag
            )
        };
    }
    out
}
