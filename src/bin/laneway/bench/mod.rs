//! `laneway bench`: load scenarios that show live-first scheduling under an
//! outage and a flood, against a FIFO baseline, in process and reproducibly.
//! Latencies come from HDR histograms; the handler's cost per message is a
//! knob, so the scenarios measure scheduling, not the machine.

#[cfg(feature = "kafka")]
pub mod catch_up;
#[cfg(feature = "kafka")]
pub mod cpu;
pub mod fifo;
pub mod scenario;
pub mod spread;
pub mod svg;
pub mod timeline;

use std::fmt::Write as _;

use spread::{Spread, ratios, show};

pub use scenario::{BacklogKind, BenchOptions, Mode, ModeReport, Scenario, run_mode};

/// A scenario's result in every mode that ran, as `--json` writes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// The knobs the run used.
    pub options: BenchOptions,
    /// One report per mode, of the last round (what `--svg` draws).
    pub modes: Vec<ModeReport>,
    /// Every round's reports, the last included; the table gives each
    /// figure's median and range over them.
    pub rounds: Vec<Vec<ModeReport>>,
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "never".into(), |v| format!("{v:.1}"))
}

fn ratio(fifo: Option<f64>, laneway: Option<f64>) -> String {
    match (fifo, laneway) {
        (Some(f), Some(l)) if l > 0.0 => format!("{:.1}×", f / l),
        _ => "-".into(),
    }
}

impl BenchReport {
    /// The side-by-side table printed on stdout.
    pub fn table(&self) -> String {
        let o = &self.options;
        let mut out = format!(
            "scenario {:?}: handler {} slots × {:?}/msg (capacity {:.0} msgs/s), live traffic {:.0} msgs/s, backlog_share {}\n",
            o.scenario,
            o.slots,
            o.cost,
            o.capacity(),
            o.rate,
            o.backlog_share
        );
        let rounds = self.rounds.len();
        if rounds > 1 {
            let _ = writeln!(
                out,
                "{rounds} rounds, the modes' order alternating: median (range) over the rounds, the ratio the median of the per-round ratios"
            );
        }
        let (width, ratio_digits) = if rounds > 1 { (32, 2) } else { (14, 1) };
        let _ = writeln!(
            out,
            "{:<34}{:>width$}{:>width$}{:>width$}",
            "", "laneway", "fifo", "fifo/laneway"
        );
        let of = |round: &[ModeReport], m: Mode, f: &dyn Fn(&ModeReport) -> Option<f64>| {
            round.iter().find(|r| r.mode == m).and_then(f)
        };
        let mut row = |name: &str, f: &dyn Fn(&ModeReport) -> Option<f64>| {
            let each = |m: Mode| Spread::of(self.rounds.iter().map(|r| of(r, m, f)));
            let ratios = ratios(
                self.rounds
                    .iter()
                    .map(|r| (of(r, Mode::Fifo, f), of(r, Mode::Laneway, f))),
            );
            let _ = writeln!(
                out,
                "{name:<34}{:>width$}{:>width$}{:>width$}",
                show(each(Mode::Laneway), 1, "never"),
                show(each(Mode::Fifo), 1, "never"),
                ratios.map_or_else(|| "-".into(), |r| format!("{}×", r.show(ratio_digits))),
            );
        };
        row("throughput msgs/s", &|r| Some(r.throughput_msgs_per_s));
        row("live latency p50 ms", &|r| Some(r.live_latency_ms.p50));
        row("live latency p99 ms", &|r| Some(r.live_latency_ms.p99));
        row("live latency max ms", &|r| Some(r.live_latency_ms.max));
        row("time to real-time ms", &|r| r.time_to_realtime_ms);
        row("backlog peak", &|r| Some(r.backlog_peak as f64));
        row("backlog drain ms", &|r| r.backlog_drain_ms);
        row("drain rate msgs/s", &|r| r.drain_rate_msgs_per_s);
        let phases: Vec<String> = self
            .modes
            .first()
            .map(|r| r.phases.keys().cloned().collect())
            .unwrap_or_default();
        for p in phases {
            let get = |r: &ModeReport| r.phases.get(&p).map(|x| x.live_latency_ms.p99);
            row(&format!("{p}: live p99 ms"), &get);
            let live = |r: &ModeReport| r.phases.get(&p).map(|x| x.delivered_live as f64);
            row(&format!("{p}: delivered live"), &live);
            let backlog = |r: &ModeReport| r.phases.get(&p).map(|x| x.delivered_backlog as f64);
            row(&format!("{p}: delivered backlog"), &backlog);
        }
        out
    }
}

/// The same scenario in laneway mode once per backlog store, in one run
/// (`--backlog disk,amqp`): what the store costs live traffic.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreComparison {
    /// The knobs every store's run used (`backlog` is the first store's).
    pub options: BenchOptions,
    /// One laneway-mode report per store, in the order run.
    pub stores: Vec<StoreReport>,
}

/// One store's run in a [`StoreComparison`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreReport {
    /// The store.
    pub backlog: BacklogKind,
    /// Its laneway-mode report.
    pub report: ModeReport,
}

impl StoreComparison {
    /// The table printed on stdout: one column per store, and each store's
    /// ratio to the first.
    pub fn table(&self) -> String {
        let o = &self.options;
        let mut out = format!(
            "scenario {:?} per backlog store: handler {} slots × {:?}/msg, live {:.0} msgs/s, pile {}, backlog_share {}\n",
            o.scenario, o.slots, o.cost, o.rate, o.pile, o.backlog_share
        );
        let Some(first) = self.stores.first() else {
            return out;
        };
        let _ = write!(out, "{:<30}", "");
        for s in &self.stores {
            let _ = write!(out, "{:>14}", format!("{:?}", s.backlog).to_lowercase());
        }
        for s in &self.stores[1..] {
            let name = format!("{:?}/{:?}", s.backlog, first.backlog).to_lowercase();
            let _ = write!(out, "{name:>14}");
        }
        out.push('\n');
        let mut row = |name: &str, f: &dyn Fn(&ModeReport) -> Option<f64>| {
            let _ = write!(out, "{name:<30}");
            for s in &self.stores {
                let _ = write!(out, "{:>14}", ms(f(&s.report)));
            }
            for s in &self.stores[1..] {
                let r = ratio(f(&s.report), f(&first.report));
                let _ = write!(out, "{r:>14}");
            }
            out.push('\n');
        };
        row("live latency p50 ms", &|r| Some(r.live_latency_ms.p50));
        row("live latency p99 ms", &|r| Some(r.live_latency_ms.p99));
        row("live latency max ms", &|r| Some(r.live_latency_ms.max));
        row("throughput msgs/s", &|r| Some(r.throughput_msgs_per_s));
        row("backlog delivered", &|r| Some(r.delivered_backlog as f64));
        row("backlog msgs/s (whole run)", &|r| {
            Some(r.delivered_backlog as f64 / r.elapsed_s.max(1e-9))
        });
        row("backlog drain ms", &|r| r.backlog_drain_ms);
        row("run s", &|r| Some(r.elapsed_s));
        out
    }
}
