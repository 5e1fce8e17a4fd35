//! An AMQP 1.0 peer that pre-settles what it may (AMQP 1.0's `mixed`
//! sender settle mode lets a sender send a transfer already settled, and
//! forget it at once): the source asks for unsettled transfers, so a
//! message it has not delivered stays the peer's. The peer is in-process,
//! built with fe2o3-amqp's acceptor, which takes the mode the receiver asks
//! for, as a broker does.

#![cfg(feature = "amqp1")]

use crate::support;

use std::time::Duration;

use fe2o3_amqp::Sendable;
use fe2o3_amqp::acceptor::{ConnectionAcceptor, SaslPlainMechanism};
use fe2o3_amqp::types::messaging::Outcome;
use laneway::amqp1::{Amqp1Source, Amqp1SourceConfig};
use laneway::engine::{Engine, EngineOptions, GroupConfig};
use laneway::source::LanePolicy;
use support::engine::{RecordingSink, spawn_engine};
use support::records::{self, Record};
use support::wait::wait_until;
use tokio::net::TcpListener;

/// A peer on 127.0.0.1 that sends `to_send` on its first link, each
/// transfer marked settled (honoured only where the link's mode allows
/// it), and reports every outcome once all are known.
async fn presettling_peer(
    to_send: Vec<Record>,
) -> (u16, tokio::sync::oneshot::Receiver<Vec<Outcome>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, outcomes) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let acceptor = ConnectionAcceptor::builder()
            .container_id("presettling-peer")
            .sasl_acceptor(SaslPlainMechanism::new("guest", "guest"))
            .build();
        let mut connection = acceptor.accept(tcp).await.unwrap();
        let (session, mut sender) = support::amqp1::accept_sender(&mut connection).await;
        let mut pending = Vec::new();
        for r in &to_send {
            let sendable = Sendable::builder()
                .message(r.amqp1_message())
                .settled(true)
                .build();
            pending.push(sender.send_batchable(sendable).await.unwrap());
        }
        let mut outcomes = Vec::new();
        for delivery in pending {
            outcomes.push(match delivery.await {
                Ok(outcome) => outcome,
                // The link went before an outcome: not accepted.
                Err(_) => Outcome::Released(fe2o3_amqp::types::messaging::Released {}),
            });
        }
        let _ = tx.send(outcomes);
        let _held = (sender, session, connection);
        std::future::pending::<()>().await;
    });
    (port, outcomes)
}

/// Messages the source holds and never delivered (the sink never answers,
/// then the run stops) are released to the peer, not accepted: none was
/// settled at sending. Before, the source's link asked for `mixed`, the
/// peer sent every transfer pre-settled and counted all twenty accepted
/// at once: a crash, or this stop, lost them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_would_presettle_keeps_every_message_the_source_did_not_deliver() {
    let _turn = support::amqp1::turn().await;
    let now = laneway::message::now_epoch_ms();
    let sent: Vec<Record> = (0..20u64)
        .map(|i| {
            Record::new(
                format!("/pk/dev{i}/thing/event/property/post"),
                format!("settle-{i}"),
                now,
                records::binary_payload(i),
            )
        })
        .collect();
    let (port, outcomes) = presettling_peer(sent.clone()).await;
    let config = Amqp1SourceConfig {
        url: Some(format!("amqp://guest:guest@127.0.0.1:{port}")),
        credit: 50,
        ..Amqp1SourceConfig::default()
    };
    // A sink that never answers: nothing is delivered.
    let sink = RecordingSink::new().gated();
    let engine = Engine::builder()
        .group(
            GroupConfig {
                validate_json: false,
                ..GroupConfig::named("g")
            },
            sink.clone(),
        )
        .source(Amqp1Source::new(config).unwrap(), LanePolicy::Live)
        .options(EngineOptions {
            shutdown_grace: Duration::from_millis(300),
            ..EngineOptions::default()
        })
        .build()
        .unwrap();
    let (monitor, stop, run) = spawn_engine(engine);
    assert!(
        wait_until(&monitor, Duration::from_secs(30), |m| m.groups()[0]
            .admitted
            >= 20)
        .await,
        "the source took every message"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run stopped");
    let outcomes = tokio::time::timeout(Duration::from_secs(30), outcomes)
        .await
        .expect("the peer learnt every outcome")
        .unwrap();
    assert_eq!(outcomes.len(), sent.len());
    let accepted = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Accepted(_)))
        .count();
    assert_eq!(
        accepted, 0,
        "messages never delivered counted as accepted: {outcomes:?}"
    );
    assert!(sink.delivered_records().is_empty());
}
