//! The Pulsar test peer: `pulsar-lite` (from PyPI; scripts/test installs
//! it) started on loopback for one test, and a small frame-normalising
//! proxy between it and the client under test.
//!
//! Why the proxy: pulsar-lite sends MESSAGE frames without the magic
//! number and CRC32C checksum that the Pulsar protocol marks optional, and
//! the `pulsar` crate's decoder insists on them (real Pulsar brokers, such
//! as the platforms', send them). The proxy adds both to every payload
//! frame from the broker, and rewrites topic lookups so that the client
//! keeps talking through it. Everything else passes through unchanged: the
//! real client, the real broker and the real protocol stay in the test.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message as _;
use pulsar::proto::{BaseCommand, base_command::Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The pulsar-lite broker binary: `PULSAR_LITE_BIN`, or the one inside the
/// installed `pulsar-lite` wheel.
fn broker_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("PULSAR_LITE_BIN") {
        return bin.into();
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, pulsar_lite; print(os.path.join(os.path.dirname(pulsar_lite.__file__), 'bin', 'pulsar-lite'))",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pulsar-lite is not installed (scripts/test installs it: pip install pulsar-lite): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A pulsar-lite broker on loopback, its data in a temporary directory;
/// killed when dropped.
pub struct PulsarLite {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl PulsarLite {
    /// Starts a broker and waits (bounded) until it accepts connections.
    pub fn start() -> PulsarLite {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("pulsar-lite.toml");
        // The metrics listener binds 0.0.0.0:8080 unless told otherwise.
        std::fs::write(
            &config,
            format!(
                "addr = \"{addr}\"\ndb_path = \"{}\"\n[metrics]\naddr = \"127.0.0.1:{}\"\n",
                dir.path().join("db").display(),
                free_port()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("broker.log")).unwrap();
        let child = Command::new(broker_binary())
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start pulsar-lite");
        let mut broker = PulsarLite { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = broker.child.try_wait().unwrap() {
                panic!("pulsar-lite exited ({status}): {}", broker.log());
            }
            assert!(
                Instant::now() < deadline,
                "pulsar-lite did not listen within 30s: {}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    /// The broker's own URL (producing works without the proxy).
    pub fn url(&self) -> String {
        format!("pulsar://{}", self.addr)
    }

    /// What the broker logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for PulsarLite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The frame-normalising proxy in front of a broker; runs on its own
/// thread (its own runtime) until the test process ends.
pub struct FrameProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
}

/// The property that makes [`FrameProxy::start_corrupting`] spoil an entry.
pub const CORRUPT: &str = "corrupt-in-proxy";

impl FrameProxy {
    /// Starts a proxy to `broker`.
    pub fn start(broker: SocketAddr) -> FrameProxy {
        FrameProxy::start_with(broker, false)
    }

    /// Starts a proxy to `broker` that hands the client every entry with
    /// the property [`CORRUPT`] as one it cannot decode (a compression
    /// type no client knows), each time the broker delivers it.
    pub fn start_corrupting(broker: SocketAddr) -> FrameProxy {
        FrameProxy::start_with(broker, true)
    }

    fn start_with(broker: SocketAddr, corrupting: bool) -> FrameProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(relay(client, broker, addr, corrupting));
                }
            });
        });
        FrameProxy { addr }
    }

    /// The URL a client uses.
    pub fn url(&self) -> String {
        format!("pulsar://{}", self.addr)
    }
}

async fn relay(
    client: tokio::net::TcpStream,
    broker: SocketAddr,
    me: SocketAddr,
    corrupting: bool,
) {
    let Ok(upstream) = tokio::net::TcpStream::connect(broker).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = upstream.into_split();
    // Client to broker: as is.
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut broker_write).await;
        let _ = broker_write.shutdown().await;
    });
    // Broker to client: frame by frame, normalised.
    let me_url = format!("pulsar://{me}");
    loop {
        let mut size = [0u8; 4];
        if broker_read.read_exact(&mut size).await.is_err() {
            break;
        }
        let mut frame = vec![0u8; u32::from_be_bytes(size) as usize];
        if broker_read.read_exact(&mut frame).await.is_err() {
            break;
        }
        let out = normalise(&frame, &me_url, corrupting);
        if client_write.write_all(&out).await.is_err() {
            break;
        }
    }
    let _ = client_write.shutdown().await;
    up.abort();
}

/// One broker frame (after its total size) as the client expects it,
/// with its total size in front; `corrupting`, see
/// [`FrameProxy::start_corrupting`].
fn normalise(frame: &[u8], me_url: &str, corrupting: bool) -> Vec<u8> {
    let command_size = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    let command = &frame[4..4 + command_size];
    let rest = &frame[4 + command_size..];
    let mut command = command.to_vec();
    if let Ok(mut decoded) = BaseCommand::decode(&command[..])
        && decoded.r#type == Type::LookupResponse as i32
        && let Some(lookup) = decoded.lookup_topic_response.as_mut()
    {
        // Keep the client on this proxy.
        lookup.broker_service_url = Some(me_url.to_string());
        command = decoded.encode_to_vec();
    }
    let mut payload = Vec::new();
    if !rest.is_empty() {
        // Metadata size, metadata and data, after the magic number and
        // checksum where the broker sent them.
        let body = if rest.len() >= 2 && rest[..2] == [0x0e, 0x01] {
            &rest[6..]
        } else {
            rest
        };
        let body = if corrupting {
            spoiled(body).unwrap_or_else(|| body.to_vec())
        } else {
            body.to_vec()
        };
        payload.extend_from_slice(&[0x0e, 0x01]);
        payload.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        payload.extend_from_slice(&body);
    }
    let total = 4 + command.len() + payload.len();
    let mut out = Vec::with_capacity(4 + total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(command.len() as u32).to_be_bytes());
    out.extend_from_slice(&command);
    out.extend_from_slice(&payload);
    out
}

/// An entry's metadata and data with a compression type no client knows,
/// when its metadata has the property [`CORRUPT`].
fn spoiled(body: &[u8]) -> Option<Vec<u8>> {
    let size = u32::from_be_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let mut metadata = pulsar::proto::MessageMetadata::decode(body.get(4..4 + size)?).ok()?;
    if !metadata.properties.iter().any(|p| p.key == CORRUPT) {
        return None;
    }
    metadata.compression = Some(99);
    let metadata = metadata.encode_to_vec();
    let mut out = (metadata.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&metadata);
    out.extend_from_slice(&body[4 + size..]);
    Some(out)
}

/// One message to produce: its properties and its payload.
pub type Outgoing = (Vec<(String, String)>, Vec<u8>);

/// A message as the platform sends it over a plain topic: the properties
/// `topic`, `messageId` and `generateTime`, and the payload.
pub fn platform_message(topic: &str, id: &str, generate_time_ms: i64, payload: &[u8]) -> Outgoing {
    (
        vec![
            ("topic".to_string(), topic.to_string()),
            ("messageId".to_string(), id.to_string()),
            ("generateTime".to_string(), generate_time_ms.to_string()),
        ],
        payload.to_vec(),
    )
}

/// A producer client straight to the broker that batches (`batch` to an
/// entry, as Pulsar's Java client does by default) and compresses with
/// LZ4: the broker keeps each batch as one compressed entry.
pub async fn batching_producer(
    broker: &PulsarLite,
    topic: &str,
    batch: u32,
) -> pulsar::Producer<pulsar::TokioExecutor> {
    let options = pulsar::producer::ProducerOptions {
        batch_size: Some(batch),
        batch_timeout: Some(std::time::Duration::from_millis(50)),
        compression: Some(pulsar::compression::Compression::Lz4(
            pulsar::compression::CompressionLz4::default(),
        )),
        ..Default::default()
    };
    producer_with(broker, topic, options).await
}

/// A producer client straight to the broker.
pub async fn producer(broker: &PulsarLite, topic: &str) -> pulsar::Producer<pulsar::TokioExecutor> {
    producer_with(broker, topic, pulsar::producer::ProducerOptions::default()).await
}

async fn producer_with(
    broker: &PulsarLite,
    topic: &str,
    options: pulsar::producer::ProducerOptions,
) -> pulsar::Producer<pulsar::TokioExecutor> {
    let client = pulsar::Pulsar::builder(broker.url(), pulsar::TokioExecutor)
        .build()
        .await
        .expect("connect to pulsar-lite");
    client
        .producer()
        .with_topic(topic)
        .with_name(format!("test-producer-{}", std::process::id()))
        .with_options(options)
        .build()
        .await
        .expect("producer")
}

/// Sends `messages` (properties, payload) and waits for every receipt.
pub async fn send_all(
    producer: &mut pulsar::Producer<pulsar::TokioExecutor>,
    messages: Vec<Outgoing>,
) {
    for chunk in messages.chunks(100) {
        let mut receipts = Vec::with_capacity(chunk.len());
        for (properties, payload) in chunk {
            let message = pulsar::producer::Message {
                payload: payload.clone(),
                properties: properties.iter().cloned().collect(),
                ..Default::default()
            };
            receipts.push(producer.send_non_blocking(message).await.expect("send"));
        }
        for r in receipts {
            r.await.expect("receipt");
        }
    }
}
