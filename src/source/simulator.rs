//! The device simulator: a fleet of devices across products emitting every
//! kind of message at a target rate, with topics and bodies shaped like the
//! platform's (see the samples in the design's `messages/`).
//!
//! Invariants: message ids are unique within a run and across runs started
//! in different milliseconds; the rate is held over the run (a slow consumer
//! makes the simulator catch up in larger batches, not fall behind for good);
//! generation is deterministic for a given seed, apart from timestamps.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::Incoming;
use super::{BuildContext, LanePolicy, Source, SourceAdapter, SourceContext, SourceError};
use crate::ack::AckRef;
use crate::knob::KnobError;
use crate::message::{Kind, Message, now_epoch_ms};

/// What the simulator emits and how fast.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Which lane its messages take (in a config file).
    pub lane: crate::source::LanePolicy,
    /// The source's name in `/status`, the dashboard, metric labels and
    /// the run summary. Default: what it reads (a path, a queue, a topic),
    /// numbered when two sources share it. Two sources may not be given
    /// one name.
    pub name: Option<String>,
    /// Products in the fleet (each with its own product key).
    pub products: usize,
    /// Devices per product.
    pub devices: usize,
    /// Messages per second over the whole fleet; 0 means as fast as the
    /// engine takes them.
    pub rate: f64,
    /// Stop after this many messages (none: run until stopped).
    pub count: Option<u64>,
    /// Stop after this long (none: run until stopped).
    #[serde(with = "crate::knob::duration")]
    pub duration: Option<Duration>,
    /// Every `burst_every`, emit `burst_size` extra messages at once.
    #[serde(with = "crate::knob::duration")]
    pub burst_every: Option<Duration>,
    /// The size of each burst.
    pub burst_size: u64,
    /// Stamp messages this much in the past (to simulate a stale pile).
    #[serde(with = "crate::knob::duration")]
    pub age: Duration,
    /// Seed for the fleet and the message mix.
    pub seed: u64,
    /// Messages handed to the engine per batch.
    pub batch: usize,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            lane: crate::source::LanePolicy::Auto,
            name: None,
            products: 3,
            devices: 100,
            rate: 10_000.0,
            count: None,
            duration: None,
            burst_every: None,
            burst_size: 0,
            age: Duration::ZERO,
            seed: 7,
            batch: 256,
        }
    }
}

/// A fleet of simulated devices that turns a sequence number into a message.
pub struct Fleet {
    products: Vec<String>,
    gateway_product: String,
    devices: usize,
    rng: SmallRng,
    id_prefix: u64,
    seq: u64,
    body: String,
}

/// The share of each kind in the simulated traffic, in parts per 100.
const MIX: [(Kind, u32); 6] = [
    (Kind::Property, 60),
    (Kind::Event, 15),
    (Kind::Status, 12),
    (Kind::Lifecycle, 5),
    (Kind::Topology, 4),
    (Kind::Found, 4),
];

const EVENTS: [&str; 4] = [
    "overload_alarm",
    "door_open",
    "low_battery",
    "temperature_alarm",
];

impl Fleet {
    /// A fleet of `products × devices` devices plus a gateway product.
    pub fn new(products: usize, devices: usize, seed: u64) -> Fleet {
        let mut rng = SmallRng::seed_from_u64(seed);
        let key = |rng: &mut SmallRng| -> String {
            const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789";
            let tail: String = (0..9)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect();
            format!("a1{tail}")
        };
        let product_keys = (0..products.max(1)).map(|_| key(&mut rng)).collect();
        let gateway_product = key(&mut rng);
        Fleet {
            products: product_keys,
            gateway_product,
            devices: devices.max(1),
            rng,
            id_prefix: now_epoch_ms() as u64,
            seq: 0,
            body: String::with_capacity(512),
        }
    }

    /// The next message, generated at `generate_time_ms`.
    pub fn next_message(&mut self, generate_time_ms: i64) -> Message {
        let (topic, id, body) = self.next_parts(generate_time_ms);
        // A simulated topic is never empty nor overlong.
        Message::new(topic, id, generate_time_ms, Bytes::from(body))
            .unwrap_or_else(|e| unreachable!("simulated topics are valid: {e}"))
    }

    /// The next message as its platform fields: topic, message id, JSON body.
    pub fn next_parts(&mut self, t: i64) -> (String, String, String) {
        self.seq += 1;
        let id = format!("{}{:010}", self.id_prefix, self.seq);
        let roll = self.rng.random_range(0..100u32);
        let mut acc = 0;
        let kind = MIX
            .iter()
            .find(|(_, w)| {
                acc += w;
                roll < acc
            })
            .map_or(Kind::Property, |(k, _)| *k);
        let p = self.rng.random_range(0..self.products.len());
        let d = self.rng.random_range(0..self.devices);
        let pk = &self.products[p];
        let dn = format!("device-{d:05}");
        let iot_id = format!("Ti{p:04}{d:06}q3C8bQ2e9VvQk1yZ");
        let b = &mut self.body;
        b.clear();
        let topic = match kind {
            Kind::Property => {
                let v = 200.0 + self.rng.random_range(0..400) as f64 / 10.0;
                let c = self.rng.random_range(0..1000) as f64 / 100.0;
                let _ = write!(
                    b,
                    r#"{{"iotId":"{iot_id}","productKey":"{pk}","deviceName":"{dn}","gmtCreate":{t},"deviceType":"ElectricityMeter","items":{{"Power":{{"value":"on","time":{t}}},"Voltage":{{"value":{v:.1},"time":{t}}},"Current":{{"value":{c:.2},"time":{t}}}}}}}"#
                );
                format!("/{pk}/{dn}/thing/event/property/post")
            }
            Kind::Event => {
                let ev = EVENTS[self.rng.random_range(0..EVENTS.len())];
                let v = self.rng.random_range(0..1000) as f64 / 10.0;
                let _ = write!(
                    b,
                    r#"{{"identifier":"{ev}","name":"{ev}","type":"alert","iotId":"{iot_id}","productKey":"{pk}","deviceName":"{dn}","gmtCreate":{t},"value":{{"Value":{v:.1},"Threshold":30.0}},"time":{t}}}"#
                );
                format!("/{pk}/{dn}/thing/event/{ev}/post")
            }
            Kind::Status => {
                let status = if self.rng.random_bool(0.5) {
                    "online"
                } else {
                    "offline"
                };
                let _ = write!(
                    b,
                    r#"{{"status":"{status}","iotId":"{iot_id}","productKey":"{pk}","deviceName":"{dn}","time":"{t}","utcTime":"{t}","lastTime":"{t}","utcLastTime":"{t}","clientIp":"203.0.113.7"}}"#
                );
                format!("/as/mqtt/status/{pk}/{dn}")
            }
            Kind::Lifecycle => {
                let action = ["create", "delete", "enable", "disable"][self.rng.random_range(0..4)];
                let _ = write!(
                    b,
                    r#"{{"action":"{action}","iotId":"{iot_id}","productKey":"{pk}","deviceName":"{dn}","messageCreateTime":{t}}}"#
                );
                format!("/{pk}/{dn}/thing/lifecycle")
            }
            Kind::Topology | Kind::Found | Kind::Other => {
                let gp = &self.gateway_product;
                let gw = format!("gateway-{:03}", d % 100);
                let sub = format!("thermo-{:05}", self.rng.random_range(0..100_000));
                if kind == Kind::Topology {
                    let action = if self.rng.random_bool(0.5) {
                        "add"
                    } else {
                        "remove"
                    };
                    let _ = write!(
                        b,
                        r#"{{"action":"{action}","gwIotId":"Gw{d:06}","gwProductKey":"{gp}","gwDeviceName":"{gw}","devices":[{{"iotId":"Sd{d:06}","productKey":"{pk}","deviceName":"{sub}"}}],"messageCreateTime":{t}}}"#
                    );
                    format!("/{gp}/{gw}/thing/topo/lifecycle")
                } else {
                    let _ = write!(
                        b,
                        r#"{{"gwIotId":"Gw{d:06}","gwProductKey":"{gp}","gwDeviceName":"{gw}","devices":[{{"productKey":"{pk}","deviceName":"{sub}"}}]}}"#
                    );
                    format!("/{gp}/{gw}/thing/list/found")
                }
            }
        };
        (topic, id, self.body.clone())
    }
}

/// The simulator as a source.
pub struct Simulator {
    config: SimulatorConfig,
}

impl Simulator {
    /// A simulator with this configuration.
    pub fn new(config: SimulatorConfig) -> Simulator {
        Simulator { config }
    }
}

impl SourceAdapter for SimulatorConfig {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn lane(&self) -> LanePolicy {
        self.lane
    }

    fn check(&self) -> Result<(), KnobError> {
        Ok(())
    }

    fn build(&self, _: &BuildContext) -> Result<Box<dyn Source>, KnobError> {
        Ok(Box::new(Simulator::new(self.clone())))
    }
}

#[async_trait]
impl Source for Simulator {
    fn name(&self) -> String {
        "simulator".into()
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let c = self.config;
        let mut fleet = Fleet::new(c.products, c.devices, c.seed);
        let batch = c.batch.max(1) as u64;
        let age_ms = c.age.as_millis() as i64;
        let start = Instant::now();
        let mut sent = 0u64;
        loop {
            if ctx.stop.is_cancelled() || c.count.is_some_and(|n| sent >= n) {
                break;
            }
            let elapsed = start.elapsed();
            if c.duration.is_some_and(|d| elapsed >= d) {
                break;
            }
            let bursts = match c.burst_every {
                Some(every) if !every.is_zero() => {
                    (elapsed.as_nanos() / every.as_nanos()) as u64 * c.burst_size
                }
                _ => 0,
            };
            let due = if c.rate > 0.0 {
                (elapsed.as_secs_f64() * c.rate) as u64 + bursts
            } else {
                sent + batch
            };
            let remaining = c.count.map_or(u64::MAX, |n| n - sent);
            let n = due.saturating_sub(sent).min(batch).min(remaining);
            if n == 0 {
                let next_due = Duration::from_secs_f64((sent + 1) as f64 / c.rate.max(1e-9));
                let wait = next_due
                    .saturating_sub(elapsed)
                    .clamp(Duration::from_millis(1), Duration::from_millis(50));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.stop.cancelled() => break,
                }
                continue;
            }
            let t = now_epoch_ms() - age_ms;
            let messages = (0..n)
                .map(|_| Incoming::Message(fleet.next_message(t)))
                .collect();
            ctx.ingest.submit(messages, AckRef::none()).await;
            sent += n;
        }
        tracing::info!(sent, "simulator stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::parse_envelope;

    #[test]
    fn the_fleet_emits_every_kind_with_valid_json_and_unique_ids() {
        let mut fleet = Fleet::new(3, 50, 1);
        let mut seen = std::collections::HashSet::new();
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..5_000 {
            let m = fleet.next_message(1_700_000_000_000);
            assert!(
                m.payload_is_json(),
                "{:?}",
                String::from_utf8_lossy(m.payload())
            );
            assert!(m.product_key().is_some() && m.device_name().is_some());
            assert!(seen.insert(m.message_id().to_string()));
            kinds.insert(m.kind());
            // The envelope writer and parser agree on simulated messages.
            let mut line = Vec::new();
            crate::message::write_envelope(&mut line, &m);
            assert_eq!(
                parse_envelope(line.trim_ascii_end()).unwrap().kind(),
                m.kind()
            );
        }
        // Every kind but `Other`, which no platform topic maps to.
        for k in Kind::ALL.into_iter().filter(|k| *k != Kind::Other) {
            assert!(kinds.contains(&k), "{k} never emitted");
        }
    }
}
