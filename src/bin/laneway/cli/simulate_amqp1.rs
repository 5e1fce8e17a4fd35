//! `laneway simulate --amqp1 URL --address A`: the device simulator as the
//! IoT platform's AMQP 1.0 server-side subscription, so the `amqp1` source
//! can be tried against any AMQP 1.0 node (RabbitMQ's AMQP 1.0 plugin, for
//! one) with laneway's own tools.
//!
//! Invariant: a message counts as sent only once the peer settled it as
//! accepted; the exit code is non-zero when any was not.

use std::collections::VecDeque;
use std::time::Instant;

use fe2o3_amqp::types::messaging::Outcome;

use super::simulate::{ProgressLine, Recorder, SimulateArgs};
use super::status::human;
use laneway::amqp1::Amqp1Publisher;
use laneway::amqp1::config::{DEFAULT_URL, DEFAULT_URL_ENV};
use laneway::amqp1::publisher::Settlement;
use laneway::broker_url::BrokerUrl;
use laneway::message::now_epoch_ms;
use laneway::source::simulator::Fleet;

/// Publishes; `Ok(false)` when some message was not accepted.
pub async fn publish(args: SimulateArgs) -> Result<bool, String> {
    // The peer the `amqp1` source reads by default, unless told otherwise.
    let url = BrokerUrl::resolve_or(args.amqp1.as_deref(), None, DEFAULT_URL_ENV, DEFAULT_URL)
        .map_err(|e| e.to_string())?;
    let address = args.address.clone().unwrap_or_default();
    let mut publisher = Amqp1Publisher::open(&url, &address)
        .await
        .map_err(|e| e.to_string())?;
    if !args.quiet {
        eprintln!(
            "simulate: sending over AMQP 1.0 to {url} address {address} ({} products x {} devices{})",
            args.products,
            args.devices,
            args.limit_words()
        );
    }
    let mut recorder = Recorder::open(args.record.as_deref())?;
    let mut fleet = Fleet::new(args.products, args.devices, args.seed);
    let age_ms = args.age.as_millis() as i64;
    let window = args.in_flight.max(1);
    let mut in_flight: VecDeque<Settlement> = VecDeque::with_capacity(window);
    let (mut sent, mut accepted, mut refused) = (0u64, 0u64, 0u64);
    let mut first_refusal: Option<String> = None;
    let mut failure: Option<String> = None;
    let start = Instant::now();
    let mut progress = ProgressLine::new(start, args.quiet);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut settle = |outcome: Result<Outcome, fe2o3_amqp::link::SendError>| match outcome {
        Ok(Outcome::Accepted(_)) => accepted += 1,
        Ok(other) => {
            refused += 1;
            first_refusal.get_or_insert_with(|| format!("{other:?}"));
        }
        Err(e) => {
            refused += 1;
            first_refusal.get_or_insert_with(|| e.to_string());
        }
    };
    loop {
        if args.count.is_some_and(|n| sent >= n)
            || args.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        if let Some(wait) = args.wait_before_next(start, sent) {
            tokio::select! {
                _ = &mut ctrl_c => break,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        if in_flight.len() >= window
            && let Some(settlement) = in_flight.pop_front()
        {
            settle(settlement.await);
        }
        let m = fleet.next_message(now_epoch_ms() - age_ms);
        match publisher.send(&m).await {
            Ok(settlement) => in_flight.push_back(settlement),
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
        sent += 1;
        if let Err(e) = recorder.record(&m) {
            failure = Some(e);
            break;
        }
        progress.tick(sent, || format!("sent {sent}"));
    }
    while let Some(settlement) = in_flight.pop_front() {
        settle(settlement.await);
    }
    publisher.close().await;
    if let Err(e) = recorder.finish() {
        failure.get_or_insert(e);
    }
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!(
        "simulate: sent {sent}, accepted {accepted}, not accepted {refused} in {elapsed:.1}s ({}/s)",
        human(accepted as f64 / elapsed.max(1e-9))
    );
    if let Some(why) = first_refusal {
        eprintln!("simulate: first message not accepted: {why}");
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(refused == 0 && accepted == sent)
}
