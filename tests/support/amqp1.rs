//! The turn that every test driving AMQP 1.0 clients inside the test
//! process takes (laneway's AMQP 1.0 source, the publisher of
//! [`super::broker::publish1`], an in-process peer).
//!
//! Run side by side in one process on two cores, such tests now and then
//! left a client's session task spinning (fe2o3-amqp's session event loop)
//! and what waited on it stopped; taking turns, they have not. The tests
//! are one binary (tests/main.rs), so the turn is the process's, not a
//! file's. See docs/amqp1.md, "Known".

use tokio::sync::{Mutex, MutexGuard};

static TURN: Mutex<()> = Mutex::const_new(());

/// Waits for the turn; it is held until the guard is dropped.
pub async fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().await
}

/// For an in-process peer: accepts the client's session on `connection`,
/// then its receiving link, and gives the sender this peer sends with
/// (keep the session: dropping it ends the link). Panics when the client
/// attaches anything else.
#[cfg(feature = "amqp1")]
pub async fn accept_sender(
    connection: &mut fe2o3_amqp::acceptor::ListenerConnectionHandle,
) -> (
    fe2o3_amqp::acceptor::ListenerSessionHandle,
    fe2o3_amqp::Sender,
) {
    use fe2o3_amqp::acceptor::{LinkAcceptor, LinkEndpoint, SessionAcceptor};
    let mut session = SessionAcceptor::new().accept(connection).await.unwrap();
    let LinkEndpoint::Sender(sender) = LinkAcceptor::builder()
        .build()
        .accept(&mut session)
        .await
        .unwrap()
    else {
        panic!("the client attached a sender, not a receiver");
    };
    (session, sender)
}
