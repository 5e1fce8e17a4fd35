//! Delivery outcomes: calling the sink with a timeout, then, per message,
//! settling what went through and deciding the fate of what failed by its
//! [`DeliveryError`] kind: retry later (backoff, counted), push limited
//! (retried after `retry_initial`'s backoff, not counted), permanent (a
//! dead letter at once).
//!
//! Invariant: a failed message is retried from the backlog, or in its slot
//! when the backlog has no room; it becomes a dead letter only when its
//! attempts are spent or its failure is permanent; a backlog record is
//! released only after its delivery or its dead letter is durable; a
//! message `skip_superseded` leaves out is acknowledged undelivered only
//! when a newer one of its device and kind was delivered (a newer one of
//! its own batch that failed does not count: it is then delivered).

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::Group;
use crate::ack::AckRef;
use crate::backlog::{BacklogError, BacklogRecord, StoredRecord};
use crate::backoff::Backoff;
use crate::engine::concurrency::CallSignal;
use crate::engine::dead_letter::DeadLetter;
use crate::engine::lanes::LiveItem;
use crate::engine::stats::bump;
use crate::message::{Message, now_epoch_ms};
use crate::sink::{BatchError, Delivery, DeliveryError, Lane};

/// A message given up on: the message, its ack, its attempts, the last error.
type Buried = (Message, AckRef, u32, DeliveryError);

/// A sink that keeps failing is logged at most this often (each failure is
/// counted in `failed_attempts` all the same).
pub(super) const SINK_FAILURE_EVERY: Duration = Duration::from_secs(10);

/// What a sink call says about the sink's room: a permanent failure is the
/// message's fault, anything else that failed is the sink's.
fn signal_of(outcome: &Result<(), BatchError>) -> CallSignal {
    let congested = |e: &DeliveryError| !matches!(e, DeliveryError::Permanent(_));
    match outcome {
        Ok(()) => CallSignal::Answered,
        Err(BatchError::All(e)) if congested(e) => CallSignal::Congested,
        Err(BatchError::Some(failed)) if failed.iter().any(|(_, e)| congested(e)) => {
            CallSignal::Congested
        }
        Err(_) => CallSignal::Answered,
    }
}

impl Group {
    /// Hands a batch to the sink, first marking each delivery superseded
    /// or not, and taking out those `skip_superseded` says to acknowledge
    /// without delivering (they count as delivered). Gives each message's
    /// outcome, in batch order.
    async fn call_sink(&self, batch: &mut [Delivery]) -> Vec<Option<DeliveryError>> {
        let keys: Vec<(Option<u64>, i64)> = batch
            .iter()
            .map(|d| (self.freshness.key(&d.message), d.message.generate_time_ms()))
            .collect();
        let flags = self.freshness.superseded(&keys);
        let mut skipping = false;
        for (d, superseded) in batch.iter_mut().zip(flags) {
            d.superseded = superseded;
            skipping |= superseded && self.skips(d);
        }
        let outcomes = if skipping {
            let mut outcomes = vec![None; batch.len()];
            let to_sink: Vec<usize> = (0..batch.len())
                .filter(|&i| !(batch[i].superseded && self.skips(&batch[i])))
                .collect();
            self.call_sink_for(batch, &to_sink, &mut outcomes).await;
            if outcomes.iter().any(Option::is_some) {
                // A skip rests on a newer message being delivered; when
                // one of this batch failed, what it superseded is
                // delivered after all, unless a delivered one supersedes it.
                self.record_delivered(batch, &outcomes, &keys);
                let mut unskipped = Vec::new();
                for (i, (d, &(key, time))) in batch.iter_mut().zip(&keys).enumerate() {
                    if d.superseded && self.skips(d) && !self.freshness.delivered_newer(key, time) {
                        d.superseded = false;
                        unskipped.push(i);
                    }
                }
                self.call_sink_for(batch, &unskipped, &mut outcomes).await;
            }
            outcomes
        } else {
            self.call_sink_as_is(batch).await
        };
        let (mut skipped, mut flagged) = (0, 0);
        for (d, outcome) in batch.iter().zip(&outcomes) {
            if outcome.is_none() && d.superseded {
                if self.skips(d) {
                    skipped += 1;
                } else {
                    flagged += 1;
                }
            }
        }
        bump(&self.stats.superseded_skipped, skipped);
        bump(&self.stats.superseded_delivered, flagged);
        self.record_delivered(batch, &outcomes, &keys);
        outcomes
    }

    /// Delivers the deliveries of `batch` at `indices` in one sink call,
    /// writing their outcomes into `outcomes`.
    async fn call_sink_for(
        &self,
        batch: &[Delivery],
        indices: &[usize],
        outcomes: &mut [Option<DeliveryError>],
    ) {
        if indices.is_empty() {
            return;
        }
        let to_sink: Vec<Delivery> = indices.iter().map(|&i| batch[i].clone()).collect();
        for (&i, outcome) in indices.iter().zip(self.call_sink_as_is(&to_sink).await) {
            outcomes[i] = outcome;
        }
    }

    /// Records in the freshness table the deliveries that went through and
    /// were not superseded (recording one twice changes nothing).
    fn record_delivered(
        &self,
        batch: &[Delivery],
        outcomes: &[Option<DeliveryError>],
        keys: &[(Option<u64>, i64)],
    ) {
        self.freshness.delivered(
            batch
                .iter()
                .zip(outcomes)
                .zip(keys)
                .filter(|((d, outcome), _)| outcome.is_none() && !d.superseded)
                .filter_map(|(_, &(key, time))| Some((key?, time))),
        );
    }

    /// Whether `skip_superseded` names this delivery's kind.
    fn skips(&self, d: &Delivery) -> bool {
        self.config.skip_superseded.contains(&d.message.kind())
    }

    async fn call_sink_as_is(&self, batch: &[Delivery]) -> Vec<Option<DeliveryError>> {
        let timeout = self.config.delivery_timeout;
        let started = Instant::now();
        // A panic inside the sink (a handler unwrapping a field it expected)
        // fails this call like any error worth retrying: the attempt counts,
        // and a message that panics every time ends a dead letter, while the
        // delivery task lives on to settle its counts, records and acks.
        let call = AssertUnwindSafe(self.sink.deliver(batch)).catch_unwind();
        let outcome = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(BatchError::All(DeliveryError::RetryLater(format!(
                "the sink panicked: {}",
                panic_text(panic.as_ref())
            )))),
            Err(_) => Err(BatchError::All(DeliveryError::RetryLater(format!(
                "delivery timed out after {timeout:?}"
            )))),
        };
        if let Some(gate) = &self.gate {
            // A batch under half a full one answers fast whatever the load.
            let timed = batch.len() * 2 >= self.config.batch_size;
            gate.observe(started.elapsed(), signal_of(&outcome), timed);
        }
        match outcome {
            Ok(()) => vec![None; batch.len()],
            Err(e) => {
                self.sink_failed(&e, batch.len());
                e.per_message(batch.len())
            }
        }
    }

    /// Logs a failed sink call, at most once per [`SINK_FAILURE_EVERY`],
    /// with how many calls failed since the last line.
    fn sink_failed(&self, error: &BatchError, messages: usize) {
        let mut said = self.sink_failures.lock();
        said.1 += 1;
        if said.0.is_some_and(|t| t.elapsed() < SINK_FAILURE_EVERY) {
            return;
        }
        let failed_calls = std::mem::take(&mut said.1);
        said.0 = Some(Instant::now());
        drop(said);
        tracing::warn!(group = self.name(), messages, failed_calls, error = %error, "the sink failed; its messages are retried (said at most every 10 s)");
    }

    /// Whether a failed message is done for: it becomes a dead letter.
    /// Counts the attempt unless the failure was "push limited".
    fn spend_attempt(&self, attempts: &mut u32, error: &DeliveryError) -> bool {
        match error {
            DeliveryError::Permanent(_) => {
                *attempts += 1;
                true
            }
            DeliveryError::PushLimited(_) => false,
            _ => {
                *attempts += 1;
                *attempts >= self.config.max_attempts
            }
        }
    }

    /// When a failed message may be tried again: push-limited refusals wait
    /// a first retry's backoff (they use up no attempt), others their
    /// attempt's.
    fn retry_delay(&self, backoff: &Backoff, attempts: u32, error: &DeliveryError) -> Duration {
        match error {
            DeliveryError::PushLimited(_) => backoff.delay(1),
            _ => backoff.delay(attempts),
        }
    }

    /// Delivers messages whose source ack is still open: live ones, and
    /// catch-up ones (`lane` is then [`Lane::Backlog`]). A failure moves a
    /// message to the backlog store (then its ack settles) or retries it in
    /// the slot.
    pub(super) async fn deliver_held(&self, items: Vec<LiveItem>, lane: Lane) {
        let backoff = self.config.retry_backoff();
        let (mut batch, mut acks): (Vec<Delivery>, Vec<AckRef>) = items
            .into_iter()
            .map(|i| {
                let delivery = Delivery {
                    message: i.message,
                    attempts: 0,
                    lane,
                    superseded: false,
                };
                (delivery, i.ack)
            })
            .unzip();
        loop {
            let failed = self.call_sink(&mut batch).await;
            if failed.iter().all(Option::is_none) {
                self.settle_held(&batch, acks, lane).await;
                return;
            }
            let (mut delivered, mut delivered_acks) = (Vec::new(), Vec::new());
            let (mut retry, mut retry_acks) = (Vec::new(), Vec::new());
            let mut dead = Vec::new();
            let mut wait = Duration::ZERO;
            let now_ms = now_epoch_ms();
            let mut records = Vec::new();
            for ((mut d, ack), failure) in batch.into_iter().zip(acks).zip(failed) {
                let Some(error) = failure else {
                    delivered.push(d);
                    delivered_acks.push(ack);
                    continue;
                };
                if self.spend_attempt(&mut d.attempts, &error) {
                    dead.push((d.message, ack, d.attempts, error));
                    continue;
                }
                let delay = self.retry_delay(&backoff, d.attempts, &error);
                wait = wait.max(delay);
                records.push(BacklogRecord {
                    message: d.message.clone(),
                    attempts: d.attempts,
                    not_before_ms: now_ms + delay.as_millis() as i64,
                });
                retry.push(d);
                retry_acks.push(ack);
            }
            self.settle_held(&delivered, delivered_acks, lane).await;
            self.bury(dead).await;
            if retry.is_empty() {
                return;
            }
            bump(&self.stats.failed_attempts, retry.len() as u64);
            // Retry from the backlog; what does not fit there stays in this
            // slot and is retried here after the longest of its backoffs.
            let stored = match self.store.append(&records).await {
                Ok(()) => records.len(),
                Err(BacklogError::Full { stored }) => stored,
                Err(e) => {
                    tracing::error!(group = self.name(), error = %e, "backlog append for a retry failed; retrying in the slot");
                    0
                }
            };
            bump(&self.stats.diverted_failed, stored as u64);
            self.remember_stored(records[..stored].iter().map(|r| &r.message))
                .await;
            let rest_acks = retry_acks.split_off(stored);
            retry_acks.into_iter().for_each(AckRef::complete);
            if stored > 0 {
                self.backlog_appended.notify_one();
            }
            let rest = retry.split_off(stored);
            if rest.is_empty() {
                return;
            }
            tokio::time::sleep(wait).await;
            batch = rest;
            acks = rest_acks;
        }
    }

    /// Counts and acknowledges delivered messages, recording the latency
    /// of live ones (and their ids in the duplicate window, first).
    async fn settle_held(&self, delivered: &[Delivery], acks: Vec<AckRef>, lane: Lane) {
        if delivered.is_empty() {
            return;
        }
        self.remember_delivered(delivered.iter().map(|d| &d.message))
            .await;
        if lane == Lane::Live {
            let now = Instant::now();
            self.stats
                .live_latency
                .record_batch(now, delivered.iter().map(|d| d.message.received_at()));
            bump(&self.stats.delivered_live, delivered.len() as u64);
        } else {
            bump(&self.stats.delivered_backlog, delivered.len() as u64);
        }
        acks.into_iter().for_each(AckRef::complete);
    }

    pub(super) async fn deliver_backlog(&self, records: Vec<StoredRecord>) {
        let (mut records, already) = self.undelivered(records);
        if !already.is_empty() {
            self.until_ok("releasing backlog records already delivered", || {
                self.store.release(&already)
            })
            .await;
        }
        if records.is_empty() {
            return;
        }
        let backoff = self.config.retry_backoff();
        let mut batch: Vec<Delivery> = records
            .iter()
            .map(|r| Delivery {
                message: r.record.message.clone(),
                attempts: r.record.attempts,
                lane: Lane::Backlog,
                superseded: false,
            })
            .collect();
        let failed = self.call_sink(&mut batch).await;
        let now_ms = now_epoch_ms();
        let mut release = Vec::with_capacity(records.len());
        let mut delivered = Vec::with_capacity(records.len());
        let mut retry = Vec::new();
        let mut dead = Vec::new();
        for (mut r, failure) in records.drain(..).zip(failed) {
            let Some(error) = failure else {
                release.push(r.id);
                delivered.push(r.record.message);
                continue;
            };
            if self.spend_attempt(&mut r.record.attempts, &error) {
                dead.push((r, error));
            } else {
                let delay = self.retry_delay(&backoff, r.record.attempts, &error);
                r.record.not_before_ms = now_ms + delay.as_millis() as i64;
                retry.push(r);
            }
        }
        bump(&self.stats.delivered_backlog, release.len() as u64);
        // Before the release: a crash between the two finds the id
        // delivered and the record still stored, and does not deliver it again.
        self.remember_delivered(delivered.iter()).await;
        if !retry.is_empty() {
            bump(&self.stats.failed_attempts, retry.len() as u64);
            self.until_ok("retrying backlog records", || self.store.retry(&retry))
                .await;
        }
        if !dead.is_empty() {
            let ids: Vec<_> = dead.iter().map(|(r, ..)| r.id).collect();
            let buried = dead
                .into_iter()
                .map(|(r, error)| (r.record.message, AckRef::none(), r.record.attempts, error))
                .collect();
            self.bury(buried).await;
            release.extend(ids);
        }
        if !release.is_empty() {
            self.until_ok("releasing delivered backlog records", || {
                self.store.release(&release)
            })
            .await;
        }
    }

    /// Records dead letters, then settles their acks.
    async fn bury(&self, dead: Vec<Buried>) {
        if dead.is_empty() {
            return;
        }
        bump(&self.stats.dead_letters, dead.len() as u64);
        let mut acks = Vec::with_capacity(dead.len());
        let mut messages = Vec::with_capacity(dead.len());
        let letters: Vec<DeadLetter> = dead
            .into_iter()
            .map(|(message, ack, attempts, error)| {
                acks.push(ack);
                let why = match &error {
                    DeliveryError::Permanent(reason) => {
                        bump(&self.stats.dead_permanent, 1);
                        format!("delivery failed permanently: {reason}")
                    }
                    other => {
                        bump(&self.stats.dead_exhausted, 1);
                        format!(
                            "delivery failed {attempts} times; last error: {}",
                            other.reason()
                        )
                    }
                };
                let letter = DeadLetter::for_message(&message, self.name(), attempts, why);
                messages.push(message);
                letter
            })
            .collect();
        if self.write_dead_letters(letters, &messages).await {
            acks.into_iter().for_each(AckRef::complete);
        }
    }

    /// Writes dead letters durably, then remembers their messages as done
    /// (a copy the source gives again is a duplicate); says whether they
    /// were written. When not (the shutdown's grace is over), the caller
    /// leaves their acks unsettled: the source delivers them again.
    pub(super) async fn write_dead_letters(
        &self,
        letters: Vec<DeadLetter>,
        messages: &[Message],
    ) -> bool {
        if self.dead.record(letters).await.is_err() {
            return false;
        }
        self.remember_delivered(messages.iter()).await;
        true
    }

    /// Repeats a store operation until it succeeds (a store error is an I/O
    /// problem that may pass; giving up would lose or duplicate without bound).
    async fn until_ok<'a, F, Fut>(&'a self, what: &str, mut op: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), BacklogError>> + 'a,
    {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(5));
        while let Err(e) = op().await {
            tracing::error!(group = self.name(), error = %e, "{what} failed; retrying");
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// A panic's message, when it carries text (as `panic!` with a message does).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}
