//! The HTTP sink against a service, two ways (`cargo bench --bench http
//! --features http`; docs/benchmarks.md has a run):
//!
//! 1. **sink vs a plain client.** The same messages, in the same batches
//!    (256 a batch, JSON arrays of envelopes written by the same writer),
//!    POSTed to the same service: by laneway (an engine whose group
//!    delivers through the HTTP sink on 4 slots) and by a plain keep-alive
//!    reqwest client with 4 tasks; and the HTTP sink alone, called by 4
//!    tasks as the engine's slots would. Rounds interleave; each reports msgs/s
//!    and the CPU time per message of this process (the service runs in a
//!    child process, so its CPU is not counted).
//! 2. **a service whose capacity changes.** The service has 4 workers and
//!    spends a cost per message: fast, then 4× slower, then fast again.
//!    Live traffic flows at a fixed rate beside a pile of stale messages.
//!    `slots = "auto"` runs beside a sweep of static `slots`; each reports
//!    its throughput (live and pile together) and its live p99 in each
//!    phase.
//!
//! `LANEWAY_BENCH_MESSAGES` (default 1,000,000) sizes part 1,
//! `LANEWAY_BENCH_ROUNDS` (default 5) its rounds, `LANEWAY_BENCH_PHASE`
//! (seconds, default 5) each phase of part 2; `LANEWAY_BENCH_PART` = 1 or 2 runs
//! one part. Without `--bench` (`cargo test --benches`) it runs a smoke:
//! 20,000 messages, one round, phases of 0.3 s.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support"]
#[allow(dead_code)]
mod support {
    pub mod engine;
    pub mod measure;
    pub mod records;
}

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use laneway::ack::AckTracker;
use laneway::engine::{AdaptiveSlots, Engine, GroupConfig, Monitor};
use laneway::http::{HttpSink, HttpSinkConfig};
use laneway::message::{Message, now_epoch_ms, write_envelope};
use laneway::sink::{Delivery, Lane, Sink};
use laneway::source::{Incoming, LanePolicy};
use support::engine::spawn_engine;
use support::measure::{cpu_time, env_or, median_range};
use tokio::sync::Semaphore;

/// Set in the child process that plays the service.
const SERVE: &str = "LANEWAY_BENCH_HTTP_SERVE";
const BATCH: usize = 256;
const SLOTS: usize = 4;

fn main() {
    if let Ok(workers) = std::env::var(SERVE) {
        serve(workers.parse().unwrap_or(4096));
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` (CI) runs
    // without it: a smoke then, a few seconds, every path taken once.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (messages, rounds, phase, sweep): (usize, usize, f64, &[usize]) = if smoke {
        (20_000, 1, 0.3, &[4])
    } else {
        (1_000_000, 5, 5.0, &[1, 2, 4, 8, 16, 32])
    };
    let messages = env_or("LANEWAY_BENCH_MESSAGES", messages);
    let rounds = env_or("LANEWAY_BENCH_ROUNDS", rounds);
    let phase = Duration::from_secs_f64(env_or("LANEWAY_BENCH_PHASE", phase));
    let part: u32 = env_or("LANEWAY_BENCH_PART", 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if part != 2 {
        rt.block_on(sink_against_plain_client(messages, rounds));
    }
    if part != 1 {
        rt.block_on(changing_capacity(phase, sweep));
    }
}

// ---------------------------------------------------------------------------
// The service, in a child process.

/// A service handle: the child and the URLs of its ingest and cost knobs.
struct Service {
    child: Child,
    base: String,
}

impl Service {
    /// Starts the service with `workers` workers.
    fn start(workers: usize) -> Service {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(SERVE, workers.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Service {
            child,
            base: format!("http://{}", line.trim()),
        }
    }

    fn ingest_url(&self) -> String {
        format!("{}/ingest", self.base)
    }

    /// Sets the service's cost per message.
    async fn set_cost(&self, client: &reqwest::Client, cost: Duration) {
        let url = format!("{}/cost/{}", self.base, cost.as_micros());
        let answer = client.post(url).send().await.unwrap();
        assert!(answer.status().is_success());
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child: answers `POST /ingest` with 200 after holding one of
/// `workers` workers for its cost per message × the messages in the body,
/// and `POST /cost/<µs>` by setting that cost.
fn serve(workers: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        let workers = Arc::new(Semaphore::new(workers));
        let cost_us = Arc::new(AtomicU64::new(0));
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (workers, cost_us) = (Arc::clone(&workers), Arc::clone(&cost_us));
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (workers, cost_us) = (Arc::clone(&workers), Arc::clone(&cost_us));
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await?.to_bytes();
                        if let Some(us) = path.strip_prefix("/cost/") {
                            cost_us.store(us.parse().unwrap_or(0), Ordering::SeqCst);
                        } else {
                            let messages = count(&body, b"\"topic\":") as u64;
                            let cost = cost_us.load(Ordering::SeqCst) * messages;
                            if cost > 0 {
                                let _worker = workers.acquire().await.unwrap();
                                tokio::time::sleep(Duration::from_micros(cost)).await;
                            }
                        }
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

// ---------------------------------------------------------------------------
// Measuring.

/// Messages of the fleet: JSON payloads and, every fourth, bytes that are
/// not text.
fn messages(n: usize, generate_time_ms: impl Fn(usize) -> i64) -> Vec<Message> {
    messages_from("m", 0, n, generate_time_ms)
}

/// `n` messages with ids `<prefix>-<first>` onwards.
fn messages_from(
    prefix: &str,
    first: usize,
    n: usize,
    generate_time_ms: impl Fn(usize) -> i64,
) -> Vec<Message> {
    (first..first + n)
        .map(|i| {
            let payload: Vec<u8> = if i % 4 == 3 {
                (0..120).map(|b| (b * 7 + i) as u8).collect()
            } else {
                format!(
                    "{{\"temperature\":{}.5,\"humidity\":{},\"seq\":{i}}}",
                    i % 40,
                    i % 100
                )
                .into_bytes()
            };
            Message::new(
                format!("/pk{}/dev-{}/thing/event/property/post", i % 3, i % 1000),
                format!("{prefix}-{i}"),
                generate_time_ms(i),
                payload,
            )
            .unwrap()
        })
        .collect()
}

fn http_sink(url: &str) -> HttpSink {
    let config: HttpSinkConfig = toml::from_str(&format!("url = \"{url}\"")).unwrap();
    HttpSink::new(&config).unwrap()
}

#[derive(Clone, Copy)]
struct Round {
    rate: f64,
    cpu_us: f64,
}

// ---------------------------------------------------------------------------
// Part 1.

async fn sink_against_plain_client(n: usize, rounds: usize) {
    let service = Service::start(4096);
    let url = service.ingest_url();
    let now = now_epoch_ms();
    let sent = messages(n, |_| now);
    eprintln!("part 1: {n} messages, batches of {BATCH}, {SLOTS} at once, {rounds} rounds");
    let (mut lw, mut alone, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let p = plain_client(&url, &sent).await;
        let a = sink_alone(&url, &sent).await;
        let l = through_laneway(&url, &sent).await;
        eprintln!(
            "  round {}: laneway {:.0} msgs/s {:.2} µs/msg, sink alone {:.0} msgs/s {:.2} µs/msg, plain client {:.0} msgs/s {:.2} µs/msg",
            round + 1,
            l.rate,
            l.cpu_us,
            a.rate,
            a.cpu_us,
            p.rate,
            p.cpu_us
        );
        lw.push(l);
        alone.push(a);
        plain.push(p);
    }
    let stat =
        |rs: &[Round], f: fn(&Round) -> f64, digits: usize| median_range(rs.iter().map(f), digits);
    // Ratios per round, then their median: the machine drifts between rounds.
    let ratio = |of: &[Round], f: fn(&Round) -> f64| {
        median_range(of.iter().zip(&plain).map(|(x, p)| f(x) / f(p)), 2)
    };
    let rate: fn(&Round) -> f64 = |r| r.rate;
    let cpu: fn(&Round) -> f64 = |r| r.cpu_us;
    println!(
        "| {n} messages, batches of {BATCH}, 4 at once, {rounds} rounds | laneway (engine + HTTP sink) | HTTP sink alone | plain keep-alive client | laneway / plain | sink alone / plain |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| msgs/s, median (range) | {} | {} | {} | {} | {} |",
        stat(&lw, rate, 0),
        stat(&alone, rate, 0),
        stat(&plain, rate, 0),
        ratio(&lw, rate),
        ratio(&alone, rate)
    );
    println!(
        "| CPU µs per message, median (range) | {} | {} | {} | {} | {} |",
        stat(&lw, cpu, 2),
        stat(&alone, cpu, 2),
        stat(&plain, cpu, 2),
        ratio(&lw, cpu),
        ratio(&alone, cpu)
    );
}

/// A plain reqwest client, `SLOTS` tasks taking the next batch in turn.
async fn plain_client(url: &str, sent: &[Message]) -> Round {
    let client = reqwest::Client::new();
    let batches: Arc<Vec<Vec<Message>>> =
        Arc::new(sent.chunks(BATCH).map(<[Message]>::to_vec).collect());
    let next = Arc::new(AtomicU64::new(0));
    let (start, cpu) = (Instant::now(), cpu_time());
    let tasks: Vec<_> = (0..SLOTS)
        .map(|_| {
            let (client, batches, next, url) = (
                client.clone(),
                Arc::clone(&batches),
                Arc::clone(&next),
                url.to_string(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                    let Some(batch) = batches.get(i) else { return };
                    let mut body = Vec::with_capacity(batch.len() * 256 + 2);
                    body.push(b'[');
                    for (j, m) in batch.iter().enumerate() {
                        if j > 0 {
                            body.push(b',');
                        }
                        write_envelope(&mut body, m);
                        body.pop();
                    }
                    body.push(b']');
                    let answer = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert!(answer.status().is_success());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    round(sent.len(), start, cpu)
}

/// The HTTP sink without the engine: `SLOTS` tasks handing it the next
/// batch in turn, as the engine's slots would.
async fn sink_alone(url: &str, sent: &[Message]) -> Round {
    let sink = Arc::new(http_sink(url));
    let batches: Arc<Vec<Vec<Delivery>>> = Arc::new(
        sent.chunks(BATCH)
            .map(|c| {
                c.iter()
                    .map(|m| Delivery {
                        message: m.clone(),
                        attempts: 0,
                        lane: Lane::Live,
                        superseded: false,
                    })
                    .collect()
            })
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let (start, cpu) = (Instant::now(), cpu_time());
    let tasks: Vec<_> = (0..SLOTS)
        .map(|_| {
            let (sink, batches, next) =
                (Arc::clone(&sink), Arc::clone(&batches), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                    let Some(batch) = batches.get(i) else { return };
                    sink.deliver(batch).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    round(sent.len(), start, cpu)
}

fn round(n: usize, start: Instant, cpu: Duration) -> Round {
    let elapsed = start.elapsed().as_secs_f64();
    Round {
        rate: n as f64 / elapsed,
        cpu_us: (cpu_time() - cpu).as_secs_f64() * 1e6 / n as f64,
    }
}

/// The engine: every message live, one group on `SLOTS` slots delivering
/// through the HTTP sink.
async fn through_laneway(url: &str, sent: &[Message]) -> Round {
    let config = GroupConfig {
        slots: SLOTS,
        batch_size: BATCH,
        live_capacity: sent.len(),
        live_window: Duration::from_secs(3600),
        validate_json: false,
        ..GroupConfig::named("bench")
    };
    let engine = Engine::builder()
        .group(config, http_sink(url))
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Auto);
    let (monitor, stop, run) = spawn_engine(engine);
    let tracker = AckTracker::new();
    let (start, cpu) = (Instant::now(), cpu_time());
    for chunk in sent.chunks(BATCH) {
        let batch = chunk.iter().cloned().map(Incoming::Message).collect();
        ingest.submit(batch, tracker.register()).await;
    }
    let n = sent.len() as u64;
    monitor.until(|m| m.delivered() >= n).await;
    let result = round(sent.len(), start, cpu);
    let _ = stop.send(());
    run.await.unwrap();
    result
}

// ---------------------------------------------------------------------------
// Part 2.

/// One configuration's run through the three phases.
struct CapacityRun {
    name: String,
    throughput: f64,
    p99_ms: [f64; 3],
    mean_limit: [f64; 3],
}

async fn changing_capacity(phase: Duration, sweep: &[usize]) {
    const WORKERS: usize = 4;
    const BATCH2: usize = 32;
    let fast = Duration::from_micros(200);
    let live_rate = 2_000.0;
    // Enough pile that no run drains it: the fast phases' capacity and more.
    let capacity_fast = WORKERS as f64 / fast.as_secs_f64();
    let pile = (capacity_fast * phase.as_secs_f64() * 2.5) as usize;
    eprintln!(
        "part 2: {WORKERS} workers at {fast:?}/msg ({capacity_fast:.0} msgs/s), then 4× slower, then fast; phases of {phase:?}; live {live_rate} msgs/s beside a pile of {pile}; batches of {BATCH2}"
    );
    let service = Service::start(WORKERS);
    let control = reqwest::Client::new();
    let mut runs = Vec::new();
    let configs: Vec<(String, usize, Option<AdaptiveSlots>)> = std::iter::once((
        "auto (1..=32)".to_string(),
        32,
        Some(AdaptiveSlots { min: 1 }),
    ))
    .chain(sweep.iter().map(|&s| (format!("static {s}"), s, None)))
    .collect();
    for (name, slots, adaptive) in configs {
        service.set_cost(&control, fast).await;
        let run = capacity_run(
            &service, &control, &name, slots, adaptive, BATCH2, phase, fast, live_rate, pile,
        )
        .await;
        eprintln!(
            "  {name}: {:.0} msgs/s, live p99 {:.1} / {:.1} / {:.1} ms, mean limit {:.1} / {:.1} / {:.1}",
            run.throughput,
            run.p99_ms[0],
            run.p99_ms[1],
            run.p99_ms[2],
            run.mean_limit[0],
            run.mean_limit[1],
            run.mean_limit[2]
        );
        runs.push(run);
    }
    let best = runs
        .iter()
        .filter(|r| r.name.starts_with("static"))
        .max_by(|a, b| a.throughput.total_cmp(&b.throughput))
        .unwrap();
    let auto = &runs[0];
    println!();
    println!(
        "| slots | msgs/s | / best static | live p99 fast, slow, fast (ms) | mean limit fast, slow, fast |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for r in &runs {
        println!(
            "| {} | {:.0} | {:.2} | {:.1}, {:.1}, {:.1} | {:.1}, {:.1}, {:.1} |",
            r.name,
            r.throughput,
            r.throughput / best.throughput,
            r.p99_ms[0],
            r.p99_ms[1],
            r.p99_ms[2],
            r.mean_limit[0],
            r.mean_limit[1],
            r.mean_limit[2]
        );
    }
    println!(
        "\nauto / best static ({}): {:.2}",
        best.name,
        auto.throughput / best.throughput
    );
}

#[allow(clippy::too_many_arguments)]
async fn capacity_run(
    service: &Service,
    control: &reqwest::Client,
    name: &str,
    slots: usize,
    adaptive_slots: Option<AdaptiveSlots>,
    batch_size: usize,
    phase: Duration,
    fast: Duration,
    live_rate: f64,
    pile: usize,
) -> CapacityRun {
    let config = GroupConfig {
        slots,
        adaptive_slots,
        batch_size,
        live_capacity: 10_000,
        validate_json: false,
        max_attempts: u32::MAX,
        delivery_timeout: Duration::from_secs(60),
        ..GroupConfig::named(name.replace(['(', ')', ' ', '.', '='], "-"))
    };
    let engine = Engine::builder()
        .group_with(
            config,
            Arc::new(http_sink(&service.ingest_url())) as Arc<dyn Sink>,
            None,
        )
        .build()
        .unwrap();
    let ingest = engine.ingest(LanePolicy::Auto);
    let (monitor, stop, run) = spawn_engine(engine);
    let tracker = AckTracker::new();
    let old = now_epoch_ms() - 3_600_000;
    for chunk in messages_from("pile", 0, pile, |_| old).chunks(1024) {
        let batch = chunk.iter().cloned().map(Incoming::Message).collect();
        ingest.submit(batch, tracker.register()).await;
    }
    // The pile is in once the group took all of it (it drains from the
    // first record on).
    monitor
        .until(|m| m.groups()[0].admitted >= pile as u64)
        .await;

    // Live traffic, 100 ticks a second, until told to stop.
    let stop_live = tokio_util::sync::CancellationToken::new();
    let live = {
        let (ingest, stop) = (ingest.clone(), stop_live.clone());
        tokio::spawn(async move {
            let tracker = AckTracker::new();
            let per_tick = (live_rate / 100.0).max(1.0) as usize;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut seq = 0usize;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = now_epoch_ms();
                let batch = messages_from("live", seq, per_tick, |_| now)
                    .into_iter()
                    .map(Incoming::Message)
                    .collect();
                seq += per_tick;
                ingest.submit(batch, tracker.register()).await;
            }
        })
    };

    let start = Instant::now();
    let delivered_at_start = monitor.delivered();
    let mut p99_ms = [0.0; 3];
    let mut mean_limit = [0.0; 3];
    let costs = [fast, fast * 4, fast];
    for (i, cost) in costs.into_iter().enumerate() {
        service.set_cost(control, cost).await;
        let before = monitor.live_latency_histograms().remove(0);
        let (limits, samples) = sample_limit(&monitor, phase).await;
        mean_limit[i] = limits / samples.max(1) as f64;
        let mut after = monitor.live_latency_histograms().remove(0);
        after.subtract(&before).unwrap();
        p99_ms[i] = after.value_at_quantile(0.99) as f64 / 1000.0;
    }
    let throughput =
        (monitor.delivered() - delivered_at_start) as f64 / start.elapsed().as_secs_f64();
    stop_live.cancel();
    live.await.unwrap();
    let _ = stop.send(());
    run.await.unwrap();
    CapacityRun {
        name: name.to_string(),
        throughput,
        p99_ms,
        mean_limit,
    }
}

/// Samples the group's slot limit every 50 ms for `phase`: their sum and count.
async fn sample_limit(monitor: &Monitor, phase: Duration) -> (f64, usize) {
    let end = Instant::now() + phase;
    let (mut sum, mut n) = (0.0, 0);
    while Instant::now() < end {
        sum += monitor.groups()[0].slots_limit as f64;
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (sum, n)
}
