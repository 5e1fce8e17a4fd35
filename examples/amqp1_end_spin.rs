//! Does an AMQP 1.0 client session (fe2o3-amqp) spin on a core while it
//! waits for a peer's answer to its End? The experiment behind
//! docs/amqp1.md, "Known: an AMQP 1.0 client session that spins".
//!
//! An fe2o3-amqp acceptor in this process takes one connection and one
//! session through a proxy; the proxy then goes silent (it keeps both
//! sockets open and forwards nothing more), so the client's End is never
//! answered. The process's CPU time (user + system, every thread) is read
//! over four phases of the same length:
//!
//! 1. the session open and idle: the baseline;
//! 2. `session.end()`, bounded by the phase's length as laneway bounds it;
//! 3. after that bounded end, the session's handle still held;
//! 4. after the handle is dropped;
//! 5. the connection's `close()`, bounded the same way;
//! 6. after the connection's handle is dropped.
//!
//! A spinning session or connection costs about a whole phase of CPU time
//! or more; a waiting one costs next to nothing.
//!
//! Usage: `cargo run --release --example amqp1_end_spin
//! [-- SECONDS]` (each phase; default 2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fe2o3_amqp::acceptor::{ConnectionAcceptor, SaslPlainMechanism, SessionAcceptor};
use fe2o3_amqp::sasl_profile::SaslProfile;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// This process's CPU time so far (user + system), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Bytes the silent proxy read and dropped, both ways: a session that
/// spins without sending shows none.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Copies `from` to `to` until `silent`, then reads and drops what comes.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // Keep the other side's socket open: a closed one would
                // end the wait this experiment measures.
                std::future::pending::<()>().await;
                return;
            }
            Ok(n) => n,
        };
        if silent.load(Ordering::SeqCst) {
            DROPPED.fetch_add(n as u64, Ordering::SeqCst);
        } else if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The acceptor on one port, and a proxy to it on another; returns the
/// proxy's port.
async fn peer_behind_proxy(silent: Arc<AtomicBool>) -> u16 {
    let acceptor_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor_port = acceptor_listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = acceptor_listener.accept().await.unwrap();
        let acceptor = ConnectionAcceptor::builder()
            .container_id("end-spin-peer")
            .sasl_acceptor(SaslPlainMechanism::new("guest", "guest"))
            .build();
        let mut connection = acceptor.accept(tcp).await.unwrap();
        let session = SessionAcceptor::new()
            .accept(&mut connection)
            .await
            .unwrap();
        let _held = (connection, session);
        std::future::pending::<()>().await;
    });
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = proxy.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (client, _) = proxy.accept().await.unwrap();
        let upstream = TcpStream::connect(("127.0.0.1", acceptor_port))
            .await
            .unwrap();
        let (client_read, client_write) = client.into_split();
        let (upstream_read, upstream_write) = upstream.into_split();
        tokio::spawn(forward(client_read, upstream_write, Arc::clone(&silent)));
        tokio::spawn(forward(upstream_read, client_write, silent));
        std::future::pending::<()>().await;
    });
    proxy_port
}

/// A phase that only waits.
async fn idle(wall: Duration) -> &'static str {
    tokio::time::sleep(wall).await;
    ""
}

/// A phase that waits for `answer`, at most `wall`; says whether it came.
async fn bounded<T>(wall: Duration, answer: impl Future<Output = T>) -> &'static str {
    match tokio::time::timeout(wall, answer).await {
        Ok(_) => " (answered)",
        Err(_) => " (no answer)",
    }
}

/// Runs one phase and prints the CPU time it took.
async fn measure(label: &str, wall: Duration, work: impl Future<Output = &'static str>) {
    let cpu = cpu_seconds();
    let outcome = work.await;
    report(&format!("{label}{outcome}"), cpu_seconds() - cpu, wall);
}

/// Prints one phase's CPU time against its wall time, and the bytes the
/// proxy dropped so far.
fn report(phase: &str, cpu: f64, wall: Duration) {
    println!(
        "{phase:<50} CPU {cpu:>5.2} s in {:>4.2} s ({:>3.0} % of a core); dropped so far: {} bytes",
        wall.as_secs_f64(),
        100.0 * cpu / wall.as_secs_f64(),
        DROPPED.load(Ordering::SeqCst)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let phase = Duration::from_secs_f64(seconds);
    let silent = Arc::new(AtomicBool::new(false));
    let port = peer_behind_proxy(Arc::clone(&silent)).await;

    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut connection = fe2o3_amqp::Connection::builder()
        .container_id("end-spin-client")
        .scheme("amqp")
        .hostname("127.0.0.1")
        .sasl_profile(SaslProfile::Plain {
            username: "guest".into(),
            password: "guest".into(),
        })
        .open_with_stream(tcp)
        .await
        .unwrap();
    let mut session = fe2o3_amqp::Session::begin(&mut connection).await.unwrap();
    silent.store(true, Ordering::SeqCst);
    println!("fe2o3-amqp session against a peer that answers nothing more:");

    measure("1. open, idle", phase, idle(phase)).await;
    measure("2. end(), bounded", phase, bounded(phase, session.end())).await;
    measure(
        "3. after the bounded end, the handle held",
        phase,
        idle(phase),
    )
    .await;
    drop(session);
    measure("4. after the handle is dropped", phase, idle(phase)).await;
    let close = bounded(phase, connection.close());
    measure("5. the connection's close(), bounded", phase, close).await;
    drop(connection);
    measure("6. after its handle is dropped", phase, idle(phase)).await;
}
