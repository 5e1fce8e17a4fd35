//! The publish loop every `simulate` target runs, written once: it stops at
//! `--count` or `--duration`, keeps to `--rate` (Ctrl-C ends a wait), keeps
//! at most `--in-flight` receipts outstanding (settling the oldest when the
//! window is full), makes each message with the fleet (every Nth with a
//! binary payload, given `--binary-every`), sends and records it, prints
//! the progress line, then settles what is still out, prints the summary
//! and closes the target (last: closing may wait on a peer that no longer
//! answers, and everything was settled before).
//!
//! A protocol plugs in as a [`Target`]: how to send one message and what
//! its receipt settles into; connecting and building its records stay in
//! its own module.
//!
//! Invariant: a message counts as sent once the target took it, and as
//! acknowledged only once its receipt settled as such; the run is `Ok(true)`
//! only when every message sent was acknowledged.

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use super::binary_payloads::BinaryPayloads;
use super::simulate::{ProgressLine, Recorder, SimulateArgs};
use super::status::human;
use laneway::message::{Message, now_epoch_ms};
use laneway::source::simulator::Fleet;

/// What the target did with one message handed to it.
pub enum Sent<R> {
    /// On its way: the receipt to await.
    Out(R),
    /// The client's local queue is full: the loop waits for the oldest
    /// receipt and sends the same message again. With no receipt out there
    /// is nothing to wait for: `Ok` is how long to pause before trying
    /// again, `Err` why the run ends. Only the Kafka and Pulsar clients
    /// have such a queue: a build with neither never makes one.
    #[cfg_attr(not(any(feature = "kafka", feature = "pulsar")), allow(dead_code))]
    QueueFull(Result<Duration, String>),
}

/// What one receipt settled into.
pub enum Settled {
    /// The peer has the message.
    Ok,
    /// The peer refused it, or it was lost on the way: why.
    Failed(String),
}

/// The words of the progress line and the summary, one set a protocol, so
/// each keeps the terms its peer uses.
pub struct Words {
    /// Messages handed to the target ("produced").
    pub sent: &'static str,
    /// Messages the peer acknowledged ("acknowledged").
    pub ok: &'static str,
    /// Messages it did not ("failed").
    pub failed: &'static str,
    /// The line naming the first failure ("first failure").
    pub first_failure: &'static str,
}

impl Words {
    /// A producer's terms (Kafka's and Pulsar's).
    pub const PRODUCED: Words = Words {
        sent: "produced",
        ok: "acknowledged",
        failed: "failed",
        first_failure: "first failure",
    };
}

/// The counts of a run so far.
#[derive(Debug, Default)]
pub struct Tally {
    /// Handed to the target.
    pub sent: u64,
    /// Settled as acknowledged.
    pub ok: u64,
    /// Settled as anything else.
    pub failed: u64,
    /// Why the first one failed.
    pub first_failure: Option<String>,
}

/// One protocol's side of the loop.
pub trait Target {
    /// Resolves once the peer has settled a message sent.
    type Receipt: Future;

    /// The terms of the default progress line and summary.
    const WORDS: Words = Words::PRODUCED;

    /// Hands one message to the client; `Err` ends the run.
    fn send(&mut self, m: &Message) -> impl Future<Output = Result<Sent<Self::Receipt>, String>>;

    /// What a receipt came to; `Err` (the connection is gone, say) ends
    /// the run and leaves the rest unsettled.
    fn settle(&mut self, outcome: <Self::Receipt as Future>::Output) -> Result<Settled, String>;

    /// The message as `--record` writes it, once sent: as the matching
    /// source would hand it on.
    fn recorded(&self, m: Message) -> Message {
        m
    }

    /// Prints the progress line when it is due.
    fn tick(&self, progress: &mut ProgressLine, tally: &Tally) {
        progress.tick(tally.sent, || {
            format!("{} {}", Self::WORDS.sent, tally.sent)
        });
    }

    /// Prints the summary of a run that took `elapsed` seconds.
    fn summary(&self, tally: &Tally, elapsed: f64) {
        let words = Self::WORDS;
        eprintln!(
            "simulate: {} {}, {} {}, {} {} in {elapsed:.1}s ({}/s)",
            words.sent,
            tally.sent,
            words.ok,
            tally.ok,
            words.failed,
            tally.failed,
            human(tally.ok as f64 / elapsed.max(1e-9))
        );
        if let Some(why) = &tally.first_failure {
            eprintln!("simulate: {}: {why}", words.first_failure);
        }
    }

    /// Closes the client once everything sent was settled; `Err` fails
    /// the run.
    fn close(self) -> impl Future<Output = Result<(), String>>;
}

/// Runs the loop against `target`; `Ok(false)` when some message was not
/// acknowledged.
pub async fn publish<T: Target>(args: &SimulateArgs, mut target: T) -> Result<bool, String> {
    let mut recorder = Recorder::open(args.record.as_deref())?;
    let mut fleet = Fleet::new(args.products, args.devices, args.seed);
    let mut binary = BinaryPayloads::new(args.binary_every, args.seed);
    let age_ms = args.age.as_millis() as i64;
    let window = args.in_flight.max(1);
    let mut in_flight: VecDeque<T::Receipt> = VecDeque::with_capacity(window);
    let mut tally = Tally::default();
    let mut failure: Option<String> = None;
    let start = Instant::now();
    let mut progress = ProgressLine::new(start, args.quiet);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if args.count.is_some_and(|n| tally.sent >= n)
            || args.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        if let Some(wait) = args.wait_before_next(start, tally.sent) {
            tokio::select! {
                _ = &mut ctrl_c => break,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        if in_flight.len() >= window
            && let Some(receipt) = in_flight.pop_front()
            && let Err(e) = settle(&mut target, &mut tally, receipt.await)
        {
            failure = Some(e);
            break;
        }
        let m = binary.apply(fleet.next_message(now_epoch_ms() - age_ms));
        match send(&mut target, &mut tally, &mut in_flight, &m).await {
            Ok(receipt) => in_flight.push_back(receipt),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        tally.sent += 1;
        if let Err(e) = recorder.record(&target.recorded(m)) {
            failure = Some(e);
            break;
        }
        target.tick(&mut progress, &tally);
    }
    while let Some(receipt) = in_flight.pop_front() {
        if let Err(e) = settle(&mut target, &mut tally, receipt.await) {
            failure.get_or_insert(e);
            break;
        }
    }
    if let Err(e) = recorder.finish() {
        failure.get_or_insert(e);
    }
    target.summary(&tally, start.elapsed().as_secs_f64());
    if let Err(e) = target.close().await {
        failure.get_or_insert(e);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(tally.failed == 0 && tally.ok == tally.sent)
}

/// Sends `m`, waiting for the oldest receipt (or pausing, when none is
/// out) as often as the client's queue is full.
async fn send<T: Target>(
    target: &mut T,
    tally: &mut Tally,
    in_flight: &mut VecDeque<T::Receipt>,
    m: &Message,
) -> Result<T::Receipt, String> {
    loop {
        match target.send(m).await? {
            Sent::Out(receipt) => return Ok(receipt),
            Sent::QueueFull(when_none_out) => match in_flight.pop_front() {
                Some(oldest) => settle(target, tally, oldest.await)?,
                None => tokio::time::sleep(when_none_out?).await,
            },
        }
    }
}

/// Counts what one receipt came to.
fn settle<T: Target>(
    target: &mut T,
    tally: &mut Tally,
    outcome: <T::Receipt as Future>::Output,
) -> Result<(), String> {
    match target.settle(outcome)? {
        Settled::Ok => tally.ok += 1,
        Settled::Failed(why) => {
            tally.failed += 1;
            tally.first_failure.get_or_insert(why);
        }
    }
    Ok(())
}
