//! `laneway simulate --exchange X`: the device simulator as an AMQP 0-9-1
//! publisher, with the `topic` / `messageId` / `generateTime` headers and
//! publisher confirms; it declares the exchange (a durable topic exchange)
//! and, unless `--no-queue`, a durable queue bound to it with `#`.
//!
//! Invariant: a message counts as sent only once the broker confirmed it;
//! the exit code is non-zero when any was refused, returned unroutable or
//! left unconfirmed.

use std::collections::VecDeque;
use std::time::Instant;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Confirmation, ExchangeKind, PublisherConfirm};

use super::simulate::{ProgressLine, Recorder, SimulateArgs};
use super::status::human;
use laneway::amqp::{AmqpError, BrokerUrl, RoutingKey, connect::connect, headers};
use laneway::message::now_epoch_ms;
use laneway::source::simulator::Fleet;

#[derive(Default)]
struct Counts {
    published: u64,
    confirmed: u64,
    nacked: u64,
    unroutable: u64,
}

/// Publishes; `Ok(false)` when some message was not confirmed.
pub async fn publish(args: SimulateArgs) -> Result<bool, String> {
    let url = BrokerUrl::resolve(args.amqp.as_deref(), None).map_err(|e| e.to_string())?;
    let key = RoutingKey::parse(&args.routing_key).map_err(|e| e.to_string())?;
    let exchange_name = args.exchange.clone().unwrap_or_default();
    let exchange = ShortString::try_new(exchange_name.clone())
        .map_err(|_| "--exchange is longer than 255 bytes".to_string())?;
    let conn = connect(&url, "laneway simulate")
        .await
        .map_err(|e| e.to_string())?;
    let err = |what: &str| {
        let url = url.clone();
        let what = what.to_string();
        move |e: lapin::Error| AmqpError::new(&url, &what, e).to_string()
    };
    let channel = conn
        .create_channel()
        .await
        .map_err(err("opening a channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(err("enabling confirms"))?;
    channel
        .exchange_declare(
            exchange.clone(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(err("declaring the exchange"))?;
    if !args.no_queue {
        let queue = args.queue.clone().unwrap_or_else(|| exchange_name.clone());
        let queue = ShortString::try_new(queue)
            .map_err(|_| "--queue is longer than 255 bytes".to_string())?;
        channel
            .queue_declare(
                queue.clone(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(err("declaring the queue"))?;
        channel
            .queue_bind(
                queue,
                exchange.clone(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err("binding the queue"))?;
    }
    if !args.quiet {
        eprintln!(
            "simulate: publishing to {url} exchange {exchange_name} ({} products x {} devices{})",
            args.products,
            args.devices,
            args.limit_words()
        );
    }
    let mut recorder = Recorder::open(args.record.as_deref())?;
    let mut fleet = Fleet::new(args.products, args.devices, args.seed);
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let age_ms = args.age.as_millis() as i64;
    let window = args.in_flight.max(1);
    let mut in_flight: VecDeque<PublisherConfirm> = VecDeque::with_capacity(window);
    let mut counts = Counts::default();
    let start = Instant::now();
    let mut progress = ProgressLine::new(start, args.quiet);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut failure = None;
    loop {
        if args.count.is_some_and(|n| counts.published >= n)
            || args.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        if let Some(wait) = args.wait_before_next(start, counts.published) {
            tokio::select! {
                _ = &mut ctrl_c => break,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        if in_flight.len() >= window
            && let Some(confirm) = in_flight.pop_front()
            && let Err(e) = settle(confirm, &mut counts).await
        {
            failure = Some(AmqpError::new(&url, "waiting for a confirm", e).to_string());
            break;
        }
        let m = fleet.next_message(now_epoch_ms() - age_ms);
        let Ok(routing_key) = ShortString::try_new(key.render(&m)) else {
            return Err("a routing key is longer than 255 bytes".into());
        };
        let props = headers::properties(
            m.topic(),
            m.message_id(),
            m.generate_time_ms(),
            !args.transient,
        );
        match channel
            .basic_publish(exchange.clone(), routing_key, options, m.payload(), props)
            .await
        {
            Ok(confirm) => in_flight.push_back(confirm),
            Err(e) => {
                failure = Some(AmqpError::new(&url, "publishing", e).to_string());
                break;
            }
        }
        counts.published += 1;
        if let Err(e) = recorder.record(&m) {
            failure = Some(e);
            break;
        }
        progress.tick(counts.confirmed, || {
            format!(
                "published {} confirmed {}",
                counts.published, counts.confirmed
            )
        });
    }
    while let Some(confirm) = in_flight.pop_front() {
        if let Err(e) = settle(confirm, &mut counts).await {
            failure.get_or_insert(AmqpError::new(&url, "waiting for a confirm", e).to_string());
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = channel.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    if let Err(e) = recorder.finish() {
        failure.get_or_insert(e);
    }
    let ok = failure.is_none()
        && counts.nacked == 0
        && counts.unroutable == 0
        && counts.confirmed == counts.published;
    eprintln!(
        "simulate: published {}, confirmed {}, nacked {}, unroutable {} in {elapsed:.1}s ({}/s)",
        counts.published,
        counts.confirmed,
        counts.nacked,
        counts.unroutable,
        human(counts.confirmed as f64 / elapsed.max(1e-9))
    );
    if counts.unroutable > 0 {
        eprintln!(
            "simulate: {} messages were unroutable: bind a queue to exchange {exchange_name}",
            counts.unroutable
        );
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(ok)
}

async fn settle(confirm: PublisherConfirm, counts: &mut Counts) -> Result<(), lapin::Error> {
    match confirm.await? {
        Confirmation::Ack(None) | Confirmation::NotRequested => counts.confirmed += 1,
        Confirmation::Ack(Some(_)) => counts.unroutable += 1,
        Confirmation::Nack(_) => counts.nacked += 1,
    }
    Ok(())
}
