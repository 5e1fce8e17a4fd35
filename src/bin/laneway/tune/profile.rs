//! The traffic a tuning run assumes: a live rate with optional bursts, the
//! pile an outage leaves, and the messages themselves (the simulated fleet,
//! or a recorded JSONL sample replayed with its payloads).
//!
//! Invariants: every message [`Traffic`] makes for the pile passes the
//! group's filter (a pile the group would never hold is not a pile); live
//! messages are made for the whole source rate and filtered by the engine,
//! as in a run; a sample is refused at its first bad line, naming the file
//! and the line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use laneway::engine::{Filter, GroupConfig};
use laneway::message::{Message, now_epoch_ms, parse_envelope};
use laneway::source::simulator::Fleet;
use parking_lot::Mutex;
use serde::Serialize;

/// How old the pile's messages are stamped: well past any live window.
const PILE_AGE_MS: i64 = 3_600_000;

/// A burst of extra live messages at a fixed period (`--burst 30000/2s`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Burst {
    /// Extra messages at once.
    pub size: u64,
    /// How often.
    #[serde(with = "laneway::knob::duration")]
    pub every: Duration,
}

impl std::str::FromStr for Burst {
    type Err = String;

    /// `SIZE/EVERY`, as `30000/2s`.
    fn from_str(text: &str) -> Result<Burst, String> {
        let (size, every) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not SIZE/EVERY (for example 30000/2s)"))?;
        let size: u64 = size
            .trim()
            .parse()
            .map_err(|_| format!("{size:?} is not a number of messages"))?;
        let every = humantime::parse_duration(every.trim())
            .map_err(|e| format!("{every:?} is not a duration: {e}"))?;
        if size == 0 || every.is_zero() {
            return Err(format!(
                "{text:?}: a burst needs at least one message and a period above zero"
            ));
        }
        Ok(Burst { size, every })
    }
}

/// A recorded JSONL sample: its messages and the rate they came at.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The file it was read from.
    pub path: PathBuf,
    /// Its messages, in file order.
    pub messages: Vec<Message>,
    /// Messages per second over the span of their generate times; `None`
    /// when they all share one instant (then `--rate` must say).
    pub rate: Option<f64>,
    /// The mean payload size, bytes.
    pub mean_payload_bytes: f64,
}

impl Sample {
    /// Reads a sample; an empty file or a line that is not an envelope is
    /// refused, naming `file:line`.
    pub fn load(path: &Path) -> Result<Sample, String> {
        let shown = path.display();
        let bytes = std::fs::read(path).map_err(|e| format!("--sample {shown}: {e}"))?;
        let mut messages = Vec::new();
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let message = parse_envelope(line).map_err(|e| format!("{shown}:{}: {e}", i + 1))?;
            messages.push(message);
        }
        if messages.is_empty() {
            return Err(format!(
                "{shown}: the sample holds no envelope (one JSON object a line, as the JSONL sink writes them)"
            ));
        }
        let (first, last) = messages.iter().fold((i64::MAX, i64::MIN), |(lo, hi), m| {
            (lo.min(m.generate_time_ms()), hi.max(m.generate_time_ms()))
        });
        let span_s = (last - first) as f64 / 1000.0;
        let rate = (span_s > 0.0).then(|| messages.len() as f64 / span_s);
        let mean_payload_bytes = messages
            .iter()
            .map(|m| m.payload().len() as f64)
            .sum::<f64>()
            / messages.len() as f64;
        Ok(Sample {
            path: path.to_path_buf(),
            messages,
            rate,
            mean_payload_bytes,
        })
    }
}

/// The traffic profile as a run report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Live messages per second from the sources (before the group's filter).
    pub rate: f64,
    /// Bursts on top of the rate, if any.
    pub burst: Option<Burst>,
    /// The outage whose pile must drain.
    #[serde(with = "laneway::knob::duration")]
    pub outage: Duration,
    /// The share of the traffic the group's filter takes (0..=1).
    pub group_share: f64,
    /// Messages the outage leaves in the group's backlog:
    /// rate × outage × group_share.
    pub pile: u64,
    /// Where the messages come from: `simulator`, or the sample's path.
    pub messages: String,
}

impl Profile {
    /// Live messages per second the group takes.
    pub fn group_rate(&self) -> f64 {
        self.rate * self.group_share
    }
}

/// Makes the messages of a trial: live ones stamped now, the pile's stamped
/// an hour ago and passing the group's filter.
pub struct Traffic {
    source: Mutex<Source>,
    filter: Filter,
}

enum Source {
    Fleet(Fleet),
    Sample {
        messages: Vec<Message>,
        next: usize,
        made: u64,
    },
}

impl Traffic {
    /// Traffic from the simulated fleet (the simulator's default fleet) or
    /// from `sample`, for the group `group`.
    pub fn new(sample: Option<&Sample>, group: &GroupConfig) -> Result<Traffic, String> {
        let filter = Filter::new(&group.products, &group.kinds)
            .map_err(|e| format!("group {:?}: {e}", group.name))?;
        let source = match sample {
            Some(s) => Source::Sample {
                messages: s.messages.clone(),
                next: 0,
                made: 0,
            },
            None => Source::Fleet(Fleet::new(3, 100, 7)),
        };
        Ok(Traffic {
            source: Mutex::new(source),
            filter,
        })
    }

    fn make(&self, generate_time_ms: i64) -> Message {
        let mut source = self.source.lock();
        match &mut *source {
            Source::Fleet(fleet) => fleet.next_message(generate_time_ms),
            Source::Sample {
                messages,
                next,
                made,
            } => {
                let m = &messages[*next % messages.len()];
                *next += 1;
                *made += 1;
                // The recorded topic and payload, a fresh id and time; a
                // topic the sample read is valid by construction.
                Message::new(
                    m.topic(),
                    format!("tune-{made}"),
                    generate_time_ms,
                    m.payload().clone(),
                )
                .unwrap_or_else(|_| m.clone())
            }
        }
    }

    /// `n` live messages, generated now.
    pub fn live(&self, n: u64) -> Vec<Message> {
        let t = now_epoch_ms();
        (0..n).map(|_| self.make(t)).collect()
    }

    /// Up to `n` stale messages the group takes, and the share of the made
    /// messages its filter passed. Fails when the filter passes none of
    /// the first `n` made (the group would hold no pile).
    pub fn pile(&self, n: usize) -> Result<(Vec<Message>, f64), String> {
        let old = now_epoch_ms() - PILE_AGE_MS;
        let mut kept = Vec::with_capacity(n);
        let mut made = 0usize;
        while kept.len() < n {
            let m = self.make(old);
            made += 1;
            if self.filter.matches(&m) {
                kept.push(m);
            } else if kept.is_empty() && made >= n.max(1000) {
                return Err(format!(
                    "the group's filter takes none of {made} messages of the profile: there is nothing to tune"
                ));
            }
        }
        Ok((kept, n as f64 / made.max(1) as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_size_slash_period() {
        let b: Burst = "30000/2s".parse().unwrap();
        assert_eq!(b.size, 30_000);
        assert_eq!(b.every, Duration::from_secs(2));
        assert!("30000".parse::<Burst>().is_err());
        assert!("x/2s".parse::<Burst>().is_err());
        assert!("10/soon".parse::<Burst>().is_err());
        assert!("0/1s".parse::<Burst>().is_err());
    }

    #[test]
    fn a_sample_gives_its_rate_and_is_refused_at_its_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let line = |t: i64| {
            format!(
                "{{\"topic\":\"/a/b/thing/event/property/post\",\"messageId\":\"{t}\",\"generateTime\":{t},\"payload\":{{\"x\":1}}}}\n"
            )
        };
        let text: String = (0..11).map(|i| line(1_000 + i * 100)).collect();
        std::fs::write(&path, &text).unwrap();
        let sample = Sample::load(&path).unwrap();
        assert_eq!(sample.messages.len(), 11);
        assert!((sample.rate.unwrap() - 11.0).abs() < 1e-9);
        assert_eq!(sample.mean_payload_bytes, 7.0);
        std::fs::write(&path, format!("{text}\n{{\"topic\":1}}\n")).unwrap();
        let e = Sample::load(&path).unwrap_err();
        assert!(e.contains("s.jsonl:13:"), "{e}");
        std::fs::write(&path, "\n").unwrap();
        assert!(Sample::load(&path).unwrap_err().contains("no envelope"));
    }

    #[test]
    fn the_pile_passes_the_filter() {
        let group = GroupConfig {
            kinds: vec!["status".into()],
            ..GroupConfig::named("g")
        };
        let traffic = Traffic::new(None, &group).unwrap();
        let (pile, share) = traffic.pile(100).unwrap();
        assert_eq!(pile.len(), 100);
        assert!(share > 0.0 && share < 1.0, "{share}");
        assert!(pile.iter().all(|m| m.kind().as_str() == "status"));
    }
}
