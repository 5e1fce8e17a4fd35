//! An AMQP 1.0 peer that accepts the connection and the session but never
//! answers the link's attach (as RabbitMQ's AMQP 1.0 plugin once did in
//! CI, the client's session task spinning): the source gives up on the
//! attach after `ATTACH_TIMEOUT`, connects again, and the second connection
//! delivers every message byte for byte (binary payloads, NULs, invalid
//! UTF-8). Before, the source waited on the attach for ever, silently.
//! The simulator's publisher, against the same peer, gives up on the
//! attach too and says so; before, its open waited for ever.
//! The peer is in-process, built with fe2o3-amqp's acceptor.

#![cfg(feature = "amqp1")]

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, SaslPlainMechanism, SessionAcceptor,
};
use laneway::amqp1::bounds::{ATTACH_TIMEOUT, CLOSE_TIMEOUT};
use laneway::amqp1::{Amqp1Publisher, Amqp1Source, Amqp1SourceConfig};
use laneway::broker_url::BrokerUrl;
use laneway::engine::{Engine, GroupConfig};
use laneway::source::LanePolicy;
use support::engine::{RecordingSink, spawn_engine};
use support::records::{self, Copies, Record, assert_delivered};
use tokio::net::TcpListener;

/// A peer on 127.0.0.1 whose first connection never answers the attach and
/// whose later ones send `to_send`; reports each later connection's
/// outcomes (accepted or not) and counts connections.
async fn peer(
    to_send: Vec<Record>,
    connections: Arc<AtomicUsize>,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Vec<bool>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, outcomes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let n = connections.fetch_add(1, Ordering::SeqCst);
            let acceptor = ConnectionAcceptor::builder()
                .container_id("silent-peer")
                .sasl_acceptor(SaslPlainMechanism::new("guest", "guest"))
                .build();
            let Ok(mut connection) = acceptor.accept(tcp).await else {
                continue;
            };
            let Ok(mut session) = SessionAcceptor::new().accept(&mut connection).await else {
                continue;
            };
            if n == 0 {
                // Hold the connection and the session, answer nothing more.
                tokio::spawn(async move {
                    let _held = (connection, session);
                    std::future::pending::<()>().await;
                });
                continue;
            }
            let tx = tx.clone();
            let to_send = to_send.clone();
            tokio::spawn(async move {
                let Ok(LinkEndpoint::Sender(mut sender)) =
                    LinkAcceptor::builder().build().accept(&mut session).await
                else {
                    return;
                };
                let _ = tx.send(records::send_amqp1(&mut sender, &to_send).await);
                let _ = sender.on_detach().await;
                let _held = connection;
            });
        }
    });
    (port, outcomes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_the_attach_is_left_and_the_next_connection_delivers() {
    let _turn = support::amqp1::turn().await;
    let now = laneway::message::now_epoch_ms();
    let sent: Vec<Record> = (0..200u64)
        .map(|i| {
            Record::new(
                format!("/pk/dev{}/thing/event/property/post", i % 7),
                format!("silent-{i}"),
                now - i as i64,
                records::binary_payload(i),
            )
        })
        .collect();
    let connections = Arc::new(AtomicUsize::new(0));
    let (port, mut outcomes) = peer(sent.clone(), Arc::clone(&connections)).await;
    let config = Amqp1SourceConfig {
        url: Some(format!("amqp://guest:guest@127.0.0.1:{port}")),
        credit: 50,
        reconnect_initial: Duration::from_millis(100),
        ..Amqp1SourceConfig::default()
    };
    let sink = RecordingSink::new();
    let engine = Engine::builder()
        .group(
            GroupConfig {
                // The payloads are binary: delivered as they are, not
                // dead letters for want of JSON.
                validate_json: false,
                ..GroupConfig::named("g")
            },
            sink.clone(),
        )
        .source(Amqp1Source::new(config).unwrap(), LanePolicy::Live)
        .build()
        .unwrap();
    let (_monitor, stop_tx, run) = spawn_engine(engine);
    // The attach timeout, the bounded close, a reconnect and 200 messages.
    let limit = ATTACH_TIMEOUT + Duration::from_secs(30);
    let accepted = tokio::time::timeout(limit, outcomes.recv())
        .await
        .expect("a second connection delivered everything (the source did not stay on the silent attach)")
        .unwrap();
    assert!(accepted.iter().all(|a| *a), "a message was not accepted");
    assert_eq!(accepted.len(), sent.len());
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "one silent, one that served"
    );
    let _ = stop_tx.send(());
    let summary = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run stopped")
        .unwrap();
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_delivered(&sent, &sink.delivered_records(), Copies::ExactlyOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_gives_up_on_a_peer_that_never_answers_the_attach() {
    let _turn = support::amqp1::turn().await;
    let (port, _outcomes) = peer(Vec::new(), Arc::new(AtomicUsize::new(0))).await;
    // The peer's login is guest/guest.
    let url = BrokerUrl::parse(&format!("amqp://guest:guest@127.0.0.1:{port}")).unwrap();
    // The attach's bound, then the bounded close of what was opened.
    let limit = ATTACH_TIMEOUT + CLOSE_TIMEOUT + Duration::from_secs(10);
    let opened = tokio::time::timeout(limit, Amqp1Publisher::open(&url, "/queue/silent"))
        .await
        .expect("the open gave up within its bounds");
    let Err(error) = opened else {
        panic!("the open succeeded against a peer that never answers the attach");
    };
    let text = error.to_string();
    assert!(
        text.contains("attaching a sender to /queue/silent: no answer within"),
        "{text}"
    );
    assert!(!text.contains(":guest@"), "the password leaked: {text}");
}
