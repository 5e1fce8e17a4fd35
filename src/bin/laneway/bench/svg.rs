//! The scenario plots, as self-contained SVG: live latency (log scale) and
//! per-lane delivery rate over time, laneway and FIFO on one page; and a
//! grouped bar chart (the catch-up scenario's time to real-time by pile).
//!
//! Invariant: the output is a complete, valid SVG document whatever the
//! data (empty series, missing windows, zero rates).

use std::fmt::Write as _;

use super::scenario::{Mode, ModeReport};

const WIDTH: f64 = 960.0;
const PANEL_H: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const GAP: f64 = 60.0;

/// Colours per series: laneway live, laneway backlog, FIFO.
const LANEWAY: &str = "#1f77b4";
const BACKLOG: &str = "#ff7f0e";
const FIFO: &str = "#d62728";

struct Panel {
    top: f64,
    t_max: f64,
}

impl Panel {
    fn x(&self, t: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (t / self.t_max.max(1e-9)).clamp(0.0, 1.0)
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn polyline(out: &mut String, points: &[(f64, f64)], colour: &str, dashed: bool) {
    if points.is_empty() {
        return;
    }
    let _ = write!(
        out,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5""#
    );
    if dashed {
        out.push_str(r#" stroke-dasharray="5,3""#);
    }
    out.push_str(r#" points=""#);
    for (x, y) in points {
        let _ = write!(out, "{x:.1},{y:.1} ");
    }
    out.push_str("\"/>\n");
}

fn frame(out: &mut String, p: &Panel, title: &str, y_label: &str) {
    let step = nice_step(p.t_max / 8.0);
    let mut ticks = Vec::new();
    let mut t = 0.0;
    while t <= p.t_max + 1e-9 {
        ticks.push((t, format!("{t:.0}s")));
        t += step;
    }
    frame_with(out, p, title, y_label, &ticks);
}

/// A panel's box, title, y label and vertical grid lines at `ticks` (x
/// value, label).
fn frame_with(out: &mut String, p: &Panel, title: &str, y_label: &str, ticks: &[(f64, String)]) {
    let bottom = p.top + PANEL_H;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{}" width="{}" height="{PANEL_H}" fill="none" stroke="#999"/>"##,
        p.top,
        WIDTH - LEFT - RIGHT
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        p.top - 8.0,
        escape(title)
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" font-size="12" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"#,
        p.top + PANEL_H / 2.0,
        p.top + PANEL_H / 2.0,
        escape(y_label)
    );
    for (t, label) in ticks {
        let x = p.x(*t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{}" stroke="#eee"/>"##,
            p.top
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
            bottom + 14.0,
            escape(label)
        );
    }
}

/// A horizontal grid line at `y` with its label on the left axis.
fn y_grid(out: &mut String, y: f64, label: &str) {
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/>"##,
        WIDTH - RIGHT
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{:.1}" font-size="11" text-anchor="end">{label}</text>"#,
        LEFT - 4.0,
        y + 4.0
    );
}

fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn colour(mode: Mode) -> &'static str {
    match mode {
        Mode::Laneway => LANEWAY,
        Mode::Fifo => FIFO,
    }
}

/// Draws the reports (one per mode) of one scenario.
pub fn render(title: &str, reports: &[ModeReport], threshold_ms: f64) -> String {
    let t_max = reports
        .iter()
        .flat_map(|r| r.timeline.last().map(|p| p.t_s))
        .fold(1.0, f64::max);
    let height = TOP + 2.0 * PANEL_H + GAP + 70.0;
    let mut out = open_svg(height, title);

    // Panel 1: live p99 per 100 ms window, log scale from 0.1 ms to 100 s.
    let lat = Panel { top: TOP, t_max };
    frame(
        &mut out,
        &lat,
        "live latency p99 per 100 ms window (log scale)",
        "milliseconds",
    );
    let (lo, hi) = (0.1f64.log10(), 100_000f64.log10());
    let y_lat = |ms: f64| {
        lat.top + PANEL_H * (1.0 - (ms.max(0.1).log10() - lo) / (hi - lo)).clamp(0.0, 1.0)
    };
    for decade in [0.1, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0] {
        y_grid(&mut out, y_lat(decade), &decade.to_string());
    }
    let y = y_lat(threshold_ms);
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#2ca02c" stroke-dasharray="2,2"/>"##,
        WIDTH - RIGHT
    );
    for r in reports {
        // A window without live deliveries breaks the line: no invented values.
        let mut run = Vec::new();
        for p in &r.timeline {
            match p.live_p99_ms {
                Some(ms) => run.push((lat.x(p.t_s), y_lat(ms))),
                None => {
                    polyline(&mut out, &run, colour(r.mode), false);
                    run.clear();
                }
            }
        }
        polyline(&mut out, &run, colour(r.mode), false);
    }

    // Panel 2: deliveries per second by lane.
    let rate = Panel {
        top: TOP + PANEL_H + GAP,
        t_max,
    };
    frame(
        &mut out,
        &rate,
        "deliveries per second by lane",
        "messages / s",
    );
    let r_max = reports
        .iter()
        .flat_map(|r| r.timeline.iter().map(|p| p.live_per_s.max(p.backlog_per_s)))
        .fold(1.0, f64::max);
    let r_step = nice_step(r_max / 5.0);
    let r_top = (r_max / r_step).ceil() * r_step;
    let y_rate = |v: f64| rate.top + PANEL_H * (1.0 - v / r_top);
    let mut v = 0.0;
    while v <= r_top + 1e-9 {
        y_grid(&mut out, y_rate(v), &short(v));
        v += r_step;
    }
    for r in reports {
        let live: Vec<_> = r
            .timeline
            .iter()
            .map(|p| (rate.x(p.t_s), y_rate(p.live_per_s)))
            .collect();
        polyline(&mut out, &live, colour(r.mode), false);
        if r.mode == Mode::Laneway {
            let backlog: Vec<_> = r
                .timeline
                .iter()
                .map(|p| (rate.x(p.t_s), y_rate(p.backlog_per_s)))
                .collect();
            polyline(&mut out, &backlog, BACKLOG, true);
        }
    }

    // Outage markers on both panels.
    if let Some((down, up)) = reports.iter().find_map(|r| r.outage_s) {
        for p in [&lat, &rate] {
            let (x0, x1) = (p.x(down), p.x(up));
            let _ = writeln!(
                out,
                r##"<rect x="{x0:.1}" y="{}" width="{:.1}" height="{PANEL_H}" fill="#888" fill-opacity="0.12"/>"##,
                p.top,
                (x1 - x0).max(0.0)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" font-size="11">handler down</text>"#,
            lat.x(down) + 4.0,
            lat.top + 14.0
        );
    }

    // Legend.
    let ly = rate.top + PANEL_H + 40.0;
    let legend = [
        (LANEWAY, false, "laneway live lane"),
        (BACKLOG, true, "laneway backlog lane"),
        (FIFO, false, "FIFO (one lane)"),
        ("#2ca02c", true, "real-time threshold"),
    ];
    let mut x = LEFT;
    for (c, dashed, label) in legend {
        let dash = if dashed {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/>"#,
            x + 24.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="12">{label}</text>"#,
            x + 30.0,
            ly + 4.0
        );
        x += 200.0;
    }
    out.push_str("</svg>\n");
    out
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A grouped bar chart: one group of bars per category, one bar per series
/// (name, colour, one value per category; `None` draws no bar and says
/// "never"). Values are labelled on their bars.
#[cfg(feature = "kafka")]
pub fn bars(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(&str, &str, Vec<Option<f64>>)],
) -> String {
    let height = TOP + PANEL_H + 90.0;
    let top = TOP;
    let bottom = top + PANEL_H;
    let y_max = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().flatten())
        .fold(1.0f64, |m, v| m.max(*v))
        * 1.15;
    let y = |v: f64| bottom - PANEL_H * (v / y_max).clamp(0.0, 1.0);
    let mut out = open_svg(height, title);
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" font-size="12" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"#,
        top + PANEL_H / 2.0,
        top + PANEL_H / 2.0,
        escape(y_label)
    );
    let step = nice_step(y_max / 6.0);
    let mut v = 0.0;
    while v <= y_max {
        y_grid(&mut out, y(v), &format!("{v:.0}"));
        v += step;
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{}" height="{PANEL_H}" fill="none" stroke="#999"/>"##,
        WIDTH - LEFT - RIGHT
    );
    let group_w = (WIDTH - LEFT - RIGHT) / categories.len().max(1) as f64;
    let bar_w = group_w * 0.7 / series.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        let x0 = LEFT + group_w * c as f64 + group_w * 0.15;
        for (s, (_, colour, values)) in series.iter().enumerate() {
            let x = x0 + bar_w * s as f64;
            let value = values.get(c).copied().flatten();
            let (label, top_y) = match value {
                Some(v) => {
                    let _ = writeln!(
                        out,
                        r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"/>"#,
                        y(v),
                        bar_w * 0.9,
                        bottom - y(v)
                    );
                    (format!("{v:.0}"), y(v))
                }
                None => ("never".to_string(), bottom),
            };
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{label}</text>"#,
                x + bar_w * 0.45,
                top_y - 4.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            x0 + group_w * 0.35,
            bottom + 18.0,
            escape(category)
        );
    }
    for (s, (name, colour, _)) in series.iter().enumerate() {
        let x = LEFT + 200.0 * s as f64;
        let ly = bottom + 50.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="14" height="10" fill="{colour}"/><text x="{}" y="{ly}" font-size="12">{}</text>"#,
            ly - 9.0,
            x + 20.0,
            escape(name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// One line of an x–y chart: its legend label, colour and points (x, y).
pub struct Series {
    /// What the legend calls it.
    pub label: String,
    /// Its stroke colour.
    pub colour: &'static str,
    /// Its points, in x order; a `None` y (nothing measured) breaks the line.
    pub points: Vec<(f64, Option<f64>)>,
}

/// A palette for [`Series`], cycled.
pub const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Two panels against one x axis on a log2 scale (such as slots: 1, 2, 4,
/// ...): on top `upper` with a linear y axis from zero (such as
/// throughput), below `lower` on a log y axis (such as latency in ms) with
/// a dashed `goal` line. Points are drawn as dots joined per series.
pub fn against_log2(
    title: &str,
    x_label: &str,
    upper: (&str, &[Series]),
    lower: (&str, &[Series]),
    goal: Option<f64>,
) -> String {
    let xs = || {
        upper
            .1
            .iter()
            .chain(lower.1)
            .flat_map(|s| s.points.iter().map(|p| p.0.max(1.0).log2()))
    };
    let x_max = xs().fold(1.0, f64::max);
    let ticks: Vec<(f64, String)> = (0..=x_max.ceil() as u32)
        .map(|k| (f64::from(k), format!("{}", 1u64 << k)))
        .collect();
    let height = TOP + 2.0 * PANEL_H + GAP + 60.0 + 18.0 * upper.1.len().div_ceil(4) as f64;
    let mut out = open_svg(height, title);

    let top = Panel {
        top: TOP,
        t_max: x_max.ceil(),
    };
    frame_with(&mut out, &top, upper.0, upper.0, &ticks);
    let y_max = upper
        .1
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|p| p.1))
        .fold(1.0, f64::max);
    let step = nice_step(y_max / 5.0);
    let y_top = (y_max / step).ceil() * step;
    let y_up = |v: f64| top.top + PANEL_H * (1.0 - v / y_top);
    let mut v = 0.0;
    while v <= y_top + 1e-9 {
        y_grid(&mut out, y_up(v), &short(v));
        v += step;
    }
    for s in upper.1 {
        dots(
            &mut out,
            &s.points,
            s.colour,
            |x| top.x(x.max(1.0).log2()),
            y_up,
        );
    }

    let low = Panel {
        top: TOP + PANEL_H + GAP,
        t_max: x_max.ceil(),
    };
    frame_with(&mut out, &low, lower.0, "milliseconds (log scale)", &ticks);
    let (lo, hi) = (0.1f64.log10(), 100_000f64.log10());
    let y_low = |ms: f64| {
        low.top + PANEL_H * (1.0 - (ms.max(0.1).log10() - lo) / (hi - lo)).clamp(0.0, 1.0)
    };
    for decade in [0.1, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0] {
        y_grid(&mut out, y_low(decade), &decade.to_string());
    }
    if let Some(goal) = goal {
        let y = y_low(goal);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#2ca02c" stroke-dasharray="2,2"/>"##,
            WIDTH - RIGHT
        );
    }
    for s in lower.1 {
        dots(
            &mut out,
            &s.points,
            s.colour,
            |x| low.x(x.max(1.0).log2()),
            y_low,
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        low.top + PANEL_H + 32.0,
        escape(x_label)
    );

    // Legend, four to a row.
    for (i, s) in upper.1.iter().enumerate() {
        let x = LEFT + 220.0 * (i % 4) as f64;
        let ly = low.top + PANEL_H + 56.0 + 18.0 * (i / 4) as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="14" height="10" fill="{}"/><text x="{}" y="{ly}" font-size="12">{}</text>"#,
            ly - 9.0,
            s.colour,
            x + 20.0,
            escape(&s.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// A series as dots joined by a line; a missing y breaks the line.
fn dots(
    out: &mut String,
    points: &[(f64, Option<f64>)],
    colour: &str,
    x: impl Fn(f64) -> f64,
    y: impl Fn(f64) -> f64,
) {
    let mut run = Vec::new();
    for &(px, py) in points {
        match py {
            Some(v) => {
                let (cx, cy) = (x(px), y(v));
                let _ = writeln!(
                    out,
                    r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3" fill="{colour}"/>"#
                );
                run.push((cx, cy));
            }
            None => {
                polyline(out, &run, colour, false);
                run.clear();
            }
        }
    }
    polyline(out, &run, colour, false);
}

/// The opening of a chart: the `<svg>` element `height` high, a white
/// background and the title centred on top.
fn open_svg(height: f64, title: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    out.push_str("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    out
}
