//! The HTTP sink against a real HTTP server started here (hyper on
//! 127.0.0.1:0, with TLS from a test CA for one test): every status the
//! sink maps, `Retry-After`, slow and dying servers, per-message results,
//! secrets that never show, and a `laneway run` killed with SIGKILL. Every
//! check compares the records the server was handed (read back with a JSON
//! parser and a base64 decoder of the test's own) with the records sent:
//! topic, id, generate time and payload bytes, binary payloads included.
//!
//! Synchronisation: tests wait on what the server saw (a watch channel
//! bumped on each request) or on the engine's monitor, each with a bound
//! that only guards against a hang; nothing sleeps.

#![cfg(feature = "http")]

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use laneway::ack::AckTracker;
use laneway::engine::{Engine, GroupConfig};
use laneway::http::{BodyFormat, HeaderSource, HttpSink, HttpSinkConfig, ResultMode};
use laneway::message::write_envelope;
use laneway::sink::{BatchError, Delivery, DeliveryError, Lane, Sink};
use laneway::source::{Incoming as Input, LanePolicy};
use parking_lot::Mutex;
use simd_json::prelude::*;
use support::engine::spawn_engine;
use support::process::{Watched, wait_or_kill};
use support::records::{
    Copies, Record, assert_delivered, corpus_records, envelope_record, numbered,
};
use support::wait::wait_until;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A bound on every wait: a hang fails the test, it never times anything.
const HANG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The test server.

/// One request as the server saw it, and what it answered.
#[derive(Clone)]
struct Hit {
    at: Instant,
    /// The client's end of the connection it came on.
    peer: SocketAddr,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    /// The status answered; `None` when the server hung or closed instead.
    status: Option<u16>,
}

impl Hit {
    /// The records in the body (a JSON array or NDJSON, by Content-Type).
    fn records(&self) -> Vec<Record> {
        let kind = self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let elements = match kind {
            "application/json" => json_array_elements(&self.body),
            "application/x-ndjson" => {
                assert_eq!(self.body.last(), Some(&b'\n'), "NDJSON ends each line");
                self.body
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .collect()
            }
            other => panic!("unexpected Content-Type {other:?}"),
        };
        elements.into_iter().map(envelope_record).collect()
    }

    fn accepted(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// What the server does with a request.
enum Reply {
    Answer(u16, Vec<(&'static str, String)>, Vec<u8>),
    /// Never answer (the connection stays open until the client gives up).
    Hang,
    /// Close the connection without an answer.
    Close,
}

fn ok() -> Reply {
    Reply::Answer(200, Vec::new(), Vec::new())
}

type Behaviour = Arc<dyn Fn(usize, &Hit) -> Reply + Send + Sync>;

struct State {
    hits: Mutex<Vec<Hit>>,
    /// The number the next request gets.
    numbered: std::sync::atomic::AtomicUsize,
    count: watch::Sender<usize>,
    behaviour: Mutex<Behaviour>,
}

/// An HTTP (or HTTPS) server on 127.0.0.1 that records every request and
/// answers as its behaviour says (given the request's number from 0).
struct Server {
    addr: SocketAddr,
    state: Arc<State>,
    tls: Option<TlsAcceptor>,
    running: Mutex<Option<(watch::Sender<bool>, JoinHandle<()>)>>,
}

impl Server {
    async fn start(behaviour: impl Fn(usize, &Hit) -> Reply + Send + Sync + 'static) -> Server {
        Self::start_with(Arc::new(behaviour), None).await
    }

    async fn start_with(behaviour: Behaviour, tls: Option<TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(State {
                hits: Mutex::new(Vec::new()),
                numbered: std::sync::atomic::AtomicUsize::new(0),
                count: watch::Sender::new(0),
                behaviour: Mutex::new(behaviour),
            }),
            tls,
            running: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: TcpListener) {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let (state, tls) = (Arc::clone(&self.state), self.tls.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop_rx.wait_for(|&stop| stop) => break,
                };
                let Ok((tcp, peer)) = accepted else { continue };
                let (state, tls) = (Arc::clone(&state), tls.clone());
                connections.spawn(async move {
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(tcp).await {
                                connection(stream, state, peer).await;
                            }
                        }
                        None => connection(tcp, state, peer).await,
                    }
                });
            }
            // Dropping the listener and every connection: the server is gone.
            connections.abort_all();
            while connections.join_next().await.is_some() {}
        });
        *self.running.lock() = Some((stop_tx, task));
    }

    /// Stops listening and cuts every open connection; returns once the
    /// port is closed.
    async fn stop(&self) {
        let (stop, task) = self.running.lock().take().expect("the server runs");
        stop.send_replace(true);
        task.await.unwrap();
    }

    /// Listens again on the same port.
    async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn set_behaviour(&self, behaviour: impl Fn(usize, &Hit) -> Reply + Send + Sync + 'static) {
        *self.state.behaviour.lock() = Arc::new(behaviour);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().clone()
    }

    /// Waits (bounded) until `done` holds for the requests seen so far.
    async fn wait(&self, what: &str, done: impl Fn(&[Hit]) -> bool) {
        let mut rx = self.state.count.subscribe();
        let waited =
            tokio::time::timeout(HANG, rx.wait_for(|_| done(&self.state.hits.lock()))).await;
        assert!(waited.is_ok(), "waited {HANG:?} for {what}");
    }

    /// The records of every request answered 2xx.
    fn accepted_records(&self) -> Vec<Record> {
        self.hits()
            .iter()
            .filter(|h| h.accepted())
            .flat_map(Hit::records)
            .collect()
    }
}

async fn connection<I>(io: I, state: Arc<State>, peer: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let state = Arc::clone(&state);
        async move {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut hit = Hit {
                at: Instant::now(),
                peer,
                path: parts.uri.path().to_string(),
                headers: parts.headers,
                body,
                status: None,
            };
            let behaviour = Arc::clone(&*state.behaviour.lock());
            let n = state
                .numbered
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let reply = behaviour(n, &hit);
            if let Reply::Answer(status, ..) = &reply {
                hit.status = Some(*status);
            }
            // The count is sent after the lock is let go: a waiter reads
            // the hits while it holds the count (lock order: count, hits).
            let seen = {
                let mut hits = state.hits.lock();
                hits.push(hit);
                hits.len()
            };
            state.count.send_replace(seen);
            match reply {
                Reply::Answer(status, headers, body) => {
                    let mut response = Response::builder().status(status);
                    for (k, v) in headers {
                        response = response.header(k, v);
                    }
                    Ok::<_, std::io::Error>(response.body(Full::new(Bytes::from(body))).unwrap())
                }
                Reply::Hang => std::future::pending().await,
                Reply::Close => Err(std::io::Error::other("closing without an answer")),
            }
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

// ---------------------------------------------------------------------------
// Reading bodies back, without laneway's parser.

/// The top-level elements of a JSON array, as the exact bytes of each.
fn json_array_elements(body: &[u8]) -> Vec<&[u8]> {
    // The whole body must be valid JSON for any client to read it.
    let parsed = simd_json::to_owned_value(&mut body.to_vec())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", body.escape_ascii()));
    let count = parsed.as_array().expect("a JSON array").len();
    assert_eq!((body[0], body[body.len() - 1]), (b'[', b']'));
    let inner = &body[1..body.len() - 1];
    let (mut out, mut start, mut depth) = (Vec::new(), 0, 0i32);
    let (mut in_string, mut escaped) = (false, false);
    for (i, &b) in inner.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b',' if depth == 0 => {
                out.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !inner.is_empty() {
        out.push(&inner[start..]);
    }
    assert_eq!(out.len(), count, "elements split apart = elements parsed");
    out
}

// ---------------------------------------------------------------------------
// An engine with the HTTP sink.

/// Binary records (every byte value, NULs, invalid UTF-8) and some JSON
/// ones: the corpus's first `n`.
fn some_records(prefix: &str, n: usize) -> Vec<Record> {
    let mut all = corpus_records(prefix);
    all.truncate(n);
    all
}

fn group(batch_size: usize) -> GroupConfig {
    GroupConfig {
        slots: 1,
        batch_size,
        validate_json: false,
        max_attempts: 50,
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..GroupConfig::named("http")
    }
}

struct Run {
    monitor: laneway::engine::Monitor,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<laneway::engine::RunSummary>,
    dead: Arc<laneway::engine::DeadLetters>,
}

/// An engine delivering to `sink` with `config`, fed `records`.
async fn run_engine(config: GroupConfig, sink: HttpSink, records: &[Record]) -> Run {
    let engine = Engine::builder().group(config, sink).build().unwrap();
    let dead = engine.dead_letters();
    let ingest = engine.ingest(LanePolicy::Auto);
    let (monitor, stop, task) = spawn_engine(engine);
    let batch = records
        .iter()
        .map(|r| Input::Message(r.message()))
        .collect();
    ingest.submit(batch, AckTracker::new().register()).await;
    Run {
        monitor,
        stop,
        task,
        dead,
    }
}

impl Run {
    /// Waits until `n` messages are delivered or dead, then stops the engine.
    async fn finish(
        self,
        n: u64,
    ) -> (
        laneway::engine::RunSummary,
        Vec<laneway::engine::DeadLetter>,
    ) {
        let monitor = &self.monitor;
        let done = wait_until(monitor, HANG, |m| {
            let s = m.summary();
            s.delivered + s.dead_letter >= n
        })
        .await;
        assert!(done, "not all delivered: {:?}", monitor.summary());
        self.stop.send(()).unwrap();
        let summary = self.task.await.unwrap();
        (summary, self.dead.recent())
    }

    fn failed_attempts(&self) -> u64 {
        self.monitor
            .groups()
            .iter()
            .map(|g| g.failed_attempts)
            .sum()
    }
}

fn sink(config: &HttpSinkConfig) -> HttpSink {
    HttpSink::new(config).unwrap()
}

// ---------------------------------------------------------------------------
// Status codes and their outcomes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_delivers_every_batch_exactly_once_byte_for_byte_in_both_formats() {
    for (format, answer) in [(BodyFormat::Json, 204), (BodyFormat::Ndjson, 200)] {
        // A 200 comes with a body larger than one read: only read to its
        // end does it leave the connection free for the next batch.
        let server = Server::start(move |_, _| {
            Reply::Answer(
                answer,
                Vec::new(),
                if answer == 200 {
                    b"accepted ".repeat(4000)
                } else {
                    Vec::new()
                },
            )
        })
        .await;
        let sent = corpus_records("ok");
        let mut config = HttpSinkConfig::new(server.url("/in"));
        config.format = format;
        let run = run_engine(group(40), sink(&config), &sent).await;
        let (summary, dead) = run.finish(sent.len() as u64).await;
        assert!(dead.is_empty(), "{dead:?}");
        assert_eq!(summary.delivered, sent.len() as u64);
        let hits = server.hits();
        assert!(hits.len() > 1, "batches, not one request per run");
        assert!(hits.iter().all(|h| h.path == "/in" && h.accepted()));
        // One slot: batches reuse the pooled keep-alive connection. Not
        // always the one: the client hands a connection back to its pool
        // from a task of its own once the body is read, and a request that
        // starts before that task has run races a new connection against
        // the pool (hyper-util's legacy client). A body left unread would
        // cost every batch a connection of its own.
        let connections: std::collections::HashSet<SocketAddr> =
            hits.iter().map(|h| h.peer).collect();
        assert!(
            connections.len() * 2 <= hits.len(),
            "{format:?}: {} requests on {} connections",
            hits.len(),
            connections.len()
        );
        assert_delivered(&sent, &server.accepted_records(), Copies::ExactlyOnce);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_holds_the_next_request_back_that_long() {
    let server = Server::start(|n, _| {
        if n == 0 {
            Reply::Answer(
                429,
                vec![("retry-after", "1".into())],
                b"slow down".to_vec(),
            )
        } else {
            ok()
        }
    })
    .await;
    let sent = some_records("ra", 60);
    // One attempt only: a push-limited answer must not use it up.
    let config = GroupConfig {
        max_attempts: 1,
        ..group(20)
    };
    let run = run_engine(config, sink(&HttpSinkConfig::new(server.url("/"))), &sent).await;
    let (_, dead) = run.finish(sent.len() as u64).await;
    assert!(dead.is_empty(), "{dead:?}");
    let hits = server.hits();
    assert_eq!(hits[0].status, Some(429));
    let gap = hits[1].at - hits[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "the request after a Retry-After of 1 s came {gap:?} later"
    );
    assert_delivered(&sent, &server.accepted_records(), Copies::ExactlyOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_push_limited_and_honours_a_retry_after_date() {
    let server = Server::start(|n, _| match n {
        // An HTTP date two seconds on (whole seconds: at least one).
        0 => {
            let at = std::time::SystemTime::now() + Duration::from_secs(2);
            Reply::Answer(
                503,
                vec![("retry-after", httpdate::fmt_http_date(at))],
                Vec::new(),
            )
        }
        // Without Retry-After: retried after the group's backoff.
        1..=3 => Reply::Answer(503, Vec::new(), b"busy".to_vec()),
        _ => ok(),
    })
    .await;
    let sent = some_records("u", 30);
    let config = GroupConfig {
        max_attempts: 1,
        ..group(100)
    };
    let run = run_engine(config, sink(&HttpSinkConfig::new(server.url("/"))), &sent).await;
    let (_, dead) = run.finish(sent.len() as u64).await;
    // With max_attempts = 1, a 503 taken for a failure would dead-letter.
    assert!(dead.is_empty(), "{dead:?}");
    let hits = server.hits();
    assert!(hits.len() >= 5, "{} requests", hits.len());
    let gap = hits[1].at - hits[0].at;
    assert!(gap >= Duration::from_secs(1), "{gap:?}");
    assert_delivered(&sent, &server.accepted_records(), Copies::ExactlyOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_retried_and_nothing_is_lost() {
    let server = Server::start(|n, _| {
        if n < 3 {
            Reply::Answer(500, Vec::new(), b"oops".to_vec())
        } else {
            ok()
        }
    })
    .await;
    let sent = some_records("e", 120);
    let run = run_engine(
        group(25),
        sink(&HttpSinkConfig::new(server.url("/"))),
        &sent,
    )
    .await;
    let (summary, dead) = run.finish(sent.len() as u64).await;
    assert!(dead.is_empty(), "{dead:?}");
    let failed: u64 = summary.groups.iter().map(|g| g.failed_attempts).sum();
    assert!(failed >= 3, "{failed} failed attempts");
    assert_eq!(
        server
            .hits()
            .iter()
            .filter(|h| h.status == Some(500))
            .count(),
        3
    );
    assert_delivered(&sent, &server.accepted_records(), Copies::ExactlyOnce);
}

/// After a 413 split, a part answered 429 leaves the parts not yet sent
/// push-limited too (they use up no attempt), as the whole batch would
/// have been.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_413_split_a_429_leaves_the_unsent_parts_push_limited() {
    let server = Server::start(|n, _| match n {
        0 => Reply::Answer(413, Vec::new(), Vec::new()),
        1 => Reply::Answer(429, Vec::new(), Vec::new()),
        _ => ok(),
    })
    .await;
    let sink = sink(&HttpSinkConfig::new(server.url("/")));
    let batch = deliveries(&some_records("split", 4));
    let Err(BatchError::Some(failed)) = sink.deliver(&batch).await else {
        panic!("the split batch did not fail per message");
    };
    assert_eq!(
        failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    for (i, e) in &failed {
        assert!(matches!(e, DeliveryError::PushLimited(_)), "{i}: {e:?}");
    }
    assert_eq!(server.hits().len(), 2, "nothing sent after the 429");
}

/// After a 413 split, a part the service refuses for its content (a 400)
/// fails alone: the parts after it are still sent. A part refused for the
/// service's own trouble (a 500) leaves the parts not yet sent push
/// limited, using up no attempt, since they were never tried. Before,
/// both left the rest unsent as a failed attempt, so with
/// `max_attempts = 1` messages never sent became dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_413_split_a_part_refused_for_its_content_does_not_hold_back_the_rest() {
    let server = Server::start(|n, hit| match n {
        0 => Reply::Answer(413, Vec::new(), Vec::new()),
        _ if hit.body.windows(6).any(|w| w == b"poison") => {
            Reply::Answer(400, Vec::new(), b"unknown device".to_vec())
        }
        _ => ok(),
    })
    .await;
    let first = sink(&HttpSinkConfig::new(server.url("/")));
    let mut sent = some_records("split", 4);
    sent[0] = Record::new(
        "/pk/dn7/thing/event/property/post",
        "poison",
        7,
        b"\xff\0".to_vec(),
    );
    let batch = deliveries(&sent);
    let Err(BatchError::Some(failed)) = first.deliver(&batch).await else {
        panic!("the split batch did not fail per message");
    };
    assert_eq!(failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1]);
    for (i, e) in &failed {
        assert!(matches!(e, DeliveryError::Permanent(_)), "{i}: {e:?}");
    }
    assert_delivered(&sent[2..], &server.accepted_records(), Copies::ExactlyOnce);

    let server = Server::start(|n, _| match n {
        0 => Reply::Answer(413, Vec::new(), Vec::new()),
        1 => Reply::Answer(500, Vec::new(), Vec::new()),
        _ => ok(),
    })
    .await;
    let second = sink(&HttpSinkConfig::new(server.url("/")));
    let Err(BatchError::Some(failed)) = second.deliver(&deliveries(&sent)).await else {
        panic!("the split batch did not fail per message");
    };
    let kinds: Vec<_> = failed
        .iter()
        .map(|(i, e)| (*i, matches!(e, DeliveryError::PushLimited(_))))
        .collect();
    assert_eq!(
        kinds,
        [(0, false), (1, false), (2, true), (3, true)],
        "{failed:?}"
    );
    assert_eq!(server.hits().len(), 2, "nothing sent after the 500");
}

/// A service that takes bodies of at most 4 KiB (as a proxy's body limit
/// does) answers a whole batch 413: the batch is halved until each part
/// fits, so every message is delivered, byte for byte, and none is a dead
/// letter; only a message that alone is too large is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_halves_the_batch_until_it_fits_and_only_a_message_too_large_alone_is_a_dead_letter()
{
    const LIMIT: usize = 4096;
    let server = Server::start(|_, hit| {
        if hit.body.len() > LIMIT {
            Reply::Answer(413, Vec::new(), b"request entity too large".to_vec())
        } else {
            ok()
        }
    })
    .await;
    let mut sent = some_records("big", 100);
    let huge = Record::new(
        "/pk/dn9/thing/event/property/post",
        "huge-1",
        9,
        vec![0xfe; LIMIT * 2],
    );
    sent.insert(41, huge.clone());
    let run = run_engine(
        group(64),
        sink(&HttpSinkConfig::new(server.url("/"))),
        &sent,
    )
    .await;
    let (_, dead) = run.finish(sent.len() as u64).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message_id.as_deref(), Some("huge-1"));
    assert_eq!(dead[0].body.as_ref(), huge.payload.as_slice());
    assert!(dead[0].reason.contains("413"), "{}", dead[0].reason);
    let rest: Vec<Record> = sent.into_iter().filter(|r| r.id != "huge-1").collect();
    assert_delivered(&rest, &server.accepted_records(), Copies::ExactlyOnce);
    assert!(
        server
            .hits()
            .iter()
            .any(|h| h.status == Some(413) && h.records().len() > 1),
        "a whole batch was refused first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_a_dead_letter_with_the_status_and_the_body_at_once() {
    let server = Server::start(|_, hit| {
        if hit.body.windows(6).any(|w| w == b"poison") {
            let mut body = b"device dn7 is unknown: ".to_vec();
            body.extend(std::iter::repeat_n(b'x', 500));
            Reply::Answer(400, Vec::new(), body)
        } else {
            ok()
        }
    })
    .await;
    let mut sent = some_records("b", 40);
    let poison = Record::new(
        "/pk/dn7/thing/event/property/post",
        "poison-1",
        7,
        b"\xff\x00 not json".to_vec(),
    );
    sent.insert(17, poison.clone());
    // One message a batch: the 400 is the poison's alone.
    let run = run_engine(group(1), sink(&HttpSinkConfig::new(server.url("/"))), &sent).await;
    let (_, dead) = run.finish(sent.len() as u64).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter = &dead[0];
    assert_eq!(letter.message_id.as_deref(), Some("poison-1"));
    assert_eq!(
        letter.body.as_ref(),
        poison.payload.as_slice(),
        "the dead letter's body is exact"
    );
    assert!(
        letter.reason.contains("400 Bad Request"),
        "{}",
        letter.reason
    );
    assert!(
        letter.reason.contains("device dn7 is unknown: xxx"),
        "{}",
        letter.reason
    );
    assert!(
        letter.reason.len() < 400,
        "the body is cut: {}",
        letter.reason
    );
    // Permanent: never sent again.
    let poison_hits = server
        .hits()
        .iter()
        .filter(|h| h.status == Some(400))
        .count();
    assert_eq!(poison_hits, 1);
    let rest: Vec<Record> = sent.into_iter().filter(|r| r.id != "poison-1").collect();
    assert_delivered(&rest, &server.accepted_records(), Copies::ExactlyOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_answer_in_time_is_retried() {
    let server = Server::start(|n, _| if n == 0 { Reply::Hang } else { ok() }).await;
    let sent = some_records("t", 50);
    let mut config = HttpSinkConfig::new(server.url("/"));
    config.timeout = Duration::from_millis(300);
    let run = run_engine(group(100), sink(&config), &sent).await;
    let (summary, dead) = run.finish(sent.len() as u64).await;
    assert!(dead.is_empty(), "{dead:?}");
    let failed: u64 = summary.groups.iter().map(|g| g.failed_attempts).sum();
    assert!(failed >= 1);
    let hits = server.hits();
    assert_eq!(hits[0].status, None);
    // The retry waited for the timeout (300 ms from the send, which came a
    // little before the server saw the request: 50 ms of slack for that).
    let gap = hits[1].at - hits[0].at;
    assert!(gap >= Duration::from_millis(250), "retried {gap:?} later");
    assert_delivered(&sent, &server.accepted_records(), Copies::ExactlyOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_server_loses_nothing_once_it_is_back() {
    // Cut connections without an answer, then go away (refused), then back.
    let server = Server::start(|_, _| Reply::Close).await;
    let sent = some_records("d", 200);
    let run = run_engine(
        group(20),
        sink(&HttpSinkConfig::new(server.url("/"))),
        &sent,
    )
    .await;
    server.wait("a request cut short", |h| !h.is_empty()).await;
    server.stop().await;
    let before = run.failed_attempts();
    let refused = wait_until(&run.monitor, HANG, |_| run.failed_attempts() >= before + 2).await;
    assert!(refused, "no failed attempt while the server was down");
    server.set_behaviour(|_, _| ok());
    server.restart().await;
    let (_, dead) = run.finish(sent.len() as u64).await;
    assert!(dead.is_empty(), "{dead:?}");
    assert!(server.hits().iter().any(|h| h.status.is_none()));
    assert_delivered(&sent, &server.accepted_records(), Copies::AtLeastOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_and_reset_are_retry_later() {
    let server = Server::start(|_, _| Reply::Close).await;
    let sink = sink(&HttpSinkConfig::new(server.url("/")));
    let batch = deliveries(&some_records("c", 3));
    let reset = sink.deliver(&batch).await;
    assert!(
        matches!(reset, Err(BatchError::All(DeliveryError::RetryLater(_)))),
        "{reset:?}"
    );
    server.stop().await;
    let refused = sink.deliver(&batch).await;
    let Err(BatchError::All(DeliveryError::RetryLater(reason))) = refused else {
        panic!("{refused:?}");
    };
    assert!(reason.contains(&server.url("/")), "{reason}");
    server.set_behaviour(|_, _| ok());
    server.restart().await;
    sink.deliver(&batch).await.unwrap();
}

fn deliveries(records: &[Record]) -> Vec<Delivery> {
    records
        .iter()
        .map(|r| Delivery {
            message: r.message(),
            attempts: 0,
            lane: Lane::Live,
            superseded: false,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Per-message results.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_results_fail_only_the_messages_they_name() {
    let retried: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let said_ok: Arc<Mutex<Vec<Record>>> = Arc::default();
    let (seen_again, ok_list) = (Arc::clone(&retried), Arc::clone(&said_ok));
    let server = Server::start(move |_, hit| {
        let mut entries = Vec::new();
        for r in hit.records() {
            let entry = if r.id.starts_with("bad") {
                r#"{"ok":false,"permanent":true,"reason":"unknown device"}"#
            } else if r.id.starts_with("again") && seen_again.lock().insert(r.id.clone()) {
                r#"{"ok":false,"reason":"busy"}"#
            } else {
                ok_list.lock().push(r);
                r#"{"ok":true}"#
            };
            entries.push(entry);
        }
        Reply::Answer(
            200,
            Vec::new(),
            format!("[{}]", entries.join(",")).into_bytes(),
        )
    })
    .await;
    let topic = "/pk/d/thing/event/property/post";
    let mut sent = some_records("m", 60);
    sent.push(Record::new(topic, "bad-1", 1, b"\x00\x01".to_vec()));
    sent.insert(10, Record::new(topic, "again-1", 2, b"{}".to_vec()));
    sent.insert(30, Record::new(topic, "again-2", 3, b"\xfe".to_vec()));
    let mut config = HttpSinkConfig::new(server.url("/"));
    config.results = ResultMode::PerMessage;
    let run = run_engine(group(100), sink(&config), &sent).await;
    let (_, dead) = run.finish(sent.len() as u64).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message_id.as_deref(), Some("bad-1"));
    assert_eq!(dead[0].body.as_ref(), b"\x00\x01");
    assert!(
        dead[0].reason.contains("unknown device"),
        "{}",
        dead[0].reason
    );
    assert_eq!(retried.lock().len(), 2);
    // Only the two refused for now were sent again.
    let copies: Vec<Record> = server
        .hits()
        .iter()
        .flat_map(Hit::records)
        .filter(|r| r.id != "bad-1")
        .collect();
    let expected: Vec<Record> = sent.iter().filter(|r| r.id != "bad-1").cloned().collect();
    let tally = assert_delivered(&expected, &copies, Copies::AtLeastOnce);
    assert_eq!(tally.duplicates, 2, "{tally:?}");
    // What the server said ok to: every message but the bad one, once.
    assert_delivered(&expected, &said_ok.lock(), Copies::ExactlyOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_body_that_does_not_fit_the_batch_retries_it_whole() {
    let server = Server::start(|n, _| {
        let body: &[u8] = match n {
            0 => b"[{\"ok\":true}]",
            1 => b"not json",
            _ => b"",
        };
        Reply::Answer(200, Vec::new(), body.to_vec())
    })
    .await;
    let mut config = HttpSinkConfig::new(server.url("/"));
    config.results = ResultMode::PerMessage;
    let sink = sink(&config);
    let batch = deliveries(&some_records("w", 3));
    for _ in 0..2 {
        let answer = sink.deliver(&batch).await;
        assert!(
            matches!(answer, Err(BatchError::All(DeliveryError::RetryLater(_)))),
            "{answer:?}"
        );
    }
    sink.deliver(&batch).await.unwrap();
}

// ---------------------------------------------------------------------------
// TLS with a test CA.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_test_ca_in_ca_file_delivers_and_without_it_is_refused() {
    let tls = support::tls::localhost();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &tls.ca_pem).unwrap();
    let server = Server::start_with(Arc::new(|_, _| ok()), Some(tls.acceptor)).await;
    let url = format!("https://localhost:{}/tls", server.addr.port());
    let batch_records = some_records("s", 40);
    let batch = deliveries(&batch_records);

    let untrusted = sink(&HttpSinkConfig::new(url.clone()))
        .deliver(&batch)
        .await;
    assert!(
        matches!(&untrusted, Err(BatchError::All(DeliveryError::RetryLater(r))) if r.contains("certificate")),
        "{untrusted:?}"
    );
    assert!(server.hits().is_empty());

    let mut config = HttpSinkConfig::new(url);
    config.ca_file = Some(ca_file);
    sink(&config).deliver(&batch).await.unwrap();
    let hits = server.hits();
    assert_eq!(hits.len(), 1);
    assert_delivered(&batch_records, &hits[0].records(), Copies::ExactlyOnce);

    let mut bad = HttpSinkConfig::new("https://localhost:1/");
    bad.ca_file = Some(dir.path().join("missing.pem"));
    let e = HttpSink::new(&bad).unwrap_err().to_string();
    assert!(e.contains("missing.pem"), "{e}");
}

// ---------------------------------------------------------------------------
// Secrets.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_secrets_are_sent_and_never_shown() {
    let server = Server::start(|n, _| {
        if n == 0 {
            Reply::Answer(500, Vec::new(), Vec::new())
        } else {
            ok()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "Zq9-FILE-SECRET\n").unwrap();
    let url = format!("http://app:Zq9-URL-SECRET@{}/in", server.addr);
    let mut config = HttpSinkConfig::new(url);
    config.headers.insert(
        "X-Token".into(),
        HeaderSource::From {
            env: None,
            file: Some(token),
            prefix: Some("Bearer ".into()),
        },
    );
    config.headers.insert(
        "X-Literal".into(),
        HeaderSource::Value("Zq9-LITERAL".into()),
    );
    let sink = sink(&config);
    let batch = deliveries(&some_records("x", 2));
    let failed = sink.deliver(&batch).await.unwrap_err();
    sink.deliver(&batch).await.unwrap();
    let shown = format!("{config:?} {sink:?} {failed} {failed:?}");
    assert!(!shown.contains("Zq9"), "{shown}");
    assert!(shown.contains("app:***@"), "{shown}");
    let hit = &server.hits()[1];
    let header = |name: &str| hit.headers.get(name).unwrap().to_str().unwrap().to_string();
    assert_eq!(header("x-token"), "Bearer Zq9-FILE-SECRET");
    assert_eq!(header("x-literal"), "Zq9-LITERAL");
    let basic = BASE64.encode("app:Zq9-URL-SECRET");
    assert_eq!(header("authorization"), format!("Basic {basic}"));
}

// ---------------------------------------------------------------------------
// `laneway run` processes.

/// A runtime of its own for the server of a test that drives processes
/// (whose waits block).
fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn write_input(path: &Path, records: &[Record]) {
    let mut input = Vec::new();
    for r in records {
        write_envelope(&mut input, &r.message());
    }
    std::fs::write(path, input).unwrap();
}

#[test]
fn laneway_run_posts_the_corpus_exact_and_never_prints_its_secrets() {
    let rt = server_runtime();
    // Every path's first request fails, so the failure is logged.
    let server = rt.block_on(Server::start(|n, _| {
        if n == 0 {
            Reply::Answer(500, Vec::new(), b"first one fails".to_vec())
        } else {
            ok()
        }
    }));
    let dir = tempfile::tempdir().unwrap();
    let sent = corpus_records("p");
    write_input(&dir.path().join("in.jsonl"), &sent);
    let url = format!("http://app:Zq9-URL-SECRET@{}", server.addr);
    std::fs::write(
        dir.path().join("laneway.toml"),
        format!(
            "data_dir = \"data\"\n\n[[sources]]\ntype = \"jsonl\"\npath = \"in.jsonl\"\n\n\
             [[groups]]\nname = \"raw\"\nvalidate_json = false\nretry_initial = \"20ms\"\n\
             sink = {{ type = \"http\", url = \"{url}/raw\", headers = {{ X-Key = {{ env = \"LANEWAY_TEST_HTTP_KEY\" }} }} }}\n\n\
             [[groups]]\nname = \"checked\"\nretry_initial = \"20ms\"\n\
             sink = {{ type = \"http\", url = \"{url}/checked\", format = \"ndjson\" }}\n"
        ),
    )
    .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "-c", "laneway.toml"])
        .current_dir(dir.path())
        .env("RUST_LOG", "debug")
        .env("LANEWAY_TEST_HTTP_KEY", "Zq9-ENV-SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_or_kill(run, Duration::from_secs(120));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{printed}");
    assert!(!printed.contains("Zq9"), "a secret was printed:\n{printed}");
    assert!(
        printed.contains("first one fails"),
        "the failure was not logged:\n{printed}"
    );
    assert!(printed.contains("app:***@"), "{printed}");

    let hits = server.hits();
    let records = |path: &str| -> Vec<Record> {
        hits.iter()
            .filter(|h| h.accepted() && h.path == path)
            .flat_map(Hit::records)
            .collect()
    };
    assert!(
        hits.iter()
            .all(|h| h.headers.get("authorization").is_some())
    );
    let keyed: Vec<&Hit> = hits.iter().filter(|h| h.path == "/raw").collect();
    assert!(!keyed.is_empty());
    for h in keyed {
        assert_eq!(h.headers["x-key"], "Zq9-ENV-SECRET");
    }
    assert_delivered(&sent, &records("/raw"), Copies::ExactlyOnce);
    let json: Vec<Record> = sent
        .iter()
        .filter(|r| r.message().payload_is_json())
        .cloned()
        .collect();
    assert!(
        json.len() >= 5 && sent.len() - json.len() >= 290,
        "{} JSON",
        json.len()
    );
    assert_delivered(&json, &records("/checked"), Copies::ExactlyOnce);
}

#[test]
fn sigkill_mid_run_then_restart_delivers_every_message_exact() {
    let rt = server_runtime();
    // Phase 1: the first batches are taken, then one is never answered.
    let server = rt.block_on(Server::start(|n, _| if n < 5 { ok() } else { Reply::Hang }));
    let dir = tempfile::tempdir().unwrap();
    let mut sent = corpus_records("k");
    sent.extend((0..2_000).map(numbered));
    write_input(&dir.path().join("in.jsonl"), &sent);
    std::fs::write(
        dir.path().join("laneway.toml"),
        format!(
            "data_dir = \"data\"\nstatus_interval = \"100ms\"\n\n[[sources]]\ntype = \"jsonl\"\npath = \"in.jsonl\"\n\n\
             [[groups]]\nname = \"g\"\nvalidate_json = false\nslots = 2\nbatch_size = 50\nretry_initial = \"20ms\"\n\
             sink = {{ type = \"http\", url = \"{}\", timeout = \"60s\" }}\n",
            server.url("/k")
        ),
    )
    .unwrap();
    let exe = env!("CARGO_BIN_EXE_laneway");
    let mut run = Watched::spawn(
        Command::new(exe)
            .args(["run", "-c", "laneway.toml"])
            .current_dir(dir.path()),
    );
    rt.block_on(server.wait("a request left hanging", |h| {
        h.iter().any(|h| h.status.is_none())
    }));
    run.kill(); // SIGKILL, with a batch in flight
    let phase1 = server.hits().iter().filter(|h| h.accepted()).count();
    assert_eq!(phase1, 5);

    // Phase 2: the same data directory; the server takes everything. The
    // input is resumed from its checkpoint, the backlog recovered; the run
    // ends by itself once all is delivered.
    server.set_behaviour(|_, _| ok());
    let run = Command::new(exe)
        .args(["run", "-q", "-c", "laneway.toml"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_or_kill(run, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tally = assert_delivered(&sent, &server.accepted_records(), Copies::AtLeastOnce);
    eprintln!("{tally:?}");
}
