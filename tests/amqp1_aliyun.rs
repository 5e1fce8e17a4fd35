//! The `aliyun` preset against an in-process AMQP 1.0 endpoint (built with
//! fe2o3-amqp's acceptor) that checks the SASL PLAIN login exactly as the
//! Alibaba Cloud IoT Platform documents it, over TLS with a test CA:
//!
//! - the user name is `${clientId}|authMode=aksign,signMethod=${m},timestamp=${ms},authId=${id},iotInstanceId=${iid},consumerGroupId=${g}|`;
//! - the password is `base64(HMAC_m(secret, "authId=${id}&timestamp=${ms}"))`,
//!   recomputed here independently of laneway;
//! - a timestamp more than five minutes off is refused.
//!
//! The preset logs in, receives the endpoint's messages and accepts each
//! (every one byte-equal to what was sent); a wrong secret is refused and
//! ends the source with an error that does not hold the secret; a stale
//! signed login is refused. The signature function is also checked against
//! vectors computed with Python's `hmac`.

#![cfg(feature = "amqp1")]

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::acceptor::{ConnectionAcceptor, SaslAcceptor};
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use hmac::{Hmac, Mac};
use laneway::amqp1::aliyun::{Credentials, sign};
use laneway::amqp1::login::{self, OpenFailure};
use laneway::amqp1::{AliyunConfig, Amqp1Source, Amqp1SourceConfig, SignMethod};
use laneway::engine::{Engine, GroupConfig};
use laneway::sink::{Delivery, DeliveryError, handler_fn};
use laneway::source::LanePolicy;
use parking_lot::Mutex;
use support::engine::{RecordingSink, spawn_engine};
use support::records::{self, Copies, Record, assert_delivered};
use tokio::net::TcpListener;

const SECRET: &str = "test-access-key-secret";
const KEY_ID: &str = "LTAI5tTestKeyId";
const GROUP: &str = "DEFAULT_GROUP_X";
const INSTANCE: &str = "iot-06z00test";

#[test]
fn the_signature_matches_independently_computed_vectors() {
    // python3: base64.b64encode(hmac.new(b"s3cr3tKey", content, hashlib.<m>).digest())
    let content = b"authId=LTAI5tExample&timestamp=1700000000000";
    let key = b"s3cr3tKey";
    assert_eq!(
        sign(SignMethod::HmacSha1, key, content),
        "yLB8cvcmvPcFbiP9Uc+CtrRHfVc="
    );
    assert_eq!(
        sign(SignMethod::HmacSha256, key, content),
        "QvWOaqz4JDKOperbwVx+TcKXT0yNhfhRQkDdK6MmPng="
    );
    assert_eq!(
        sign(SignMethod::HmacMd5, key, content),
        "WCJb/ZJ4d0fTLOjkREES9A=="
    );

    // The whole login, aksign and STS, as the platform documents it.
    let config = AliyunConfig {
        uid: "1234567890".into(),
        region: "cn-shanghai".into(),
        consumer_group_id: "G1".into(),
        client_id: "c1".into(),
        access_key_id: "LTAI5tExample".into(),
        instance_id: String::new(),
        ..AliyunConfig::default()
    };
    let plain = Credentials {
        secret: "s3cr3tKey".into(),
        security_token: None,
    };
    let login = config.login(&plain, 1_700_000_000_000, 1, 1).unwrap();
    assert_eq!(
        (login.host.as_str(), login.port, login.tls),
        ("1234567890.iot-amqp.cn-shanghai.aliyuncs.com", 5671, true)
    );
    assert_eq!(
        login.username.expose(),
        "c1|authMode=aksign,signMethod=hmacsha1,timestamp=1700000000000,authId=LTAI5tExample,consumerGroupId=G1|"
    );
    assert_eq!(login.password.expose(), "yLB8cvcmvPcFbiP9Uc+CtrRHfVc=");
    let sts = Credentials {
        secret: "s3cr3tKey".into(),
        security_token: Some("tok123".into()),
    };
    let config = AliyunConfig {
        access_key_id: "STS.NExample".into(),
        instance_id: "iot-1".into(),
        ..config
    };
    let login = config.login(&sts, 1_700_000_000_000, 2, 3).unwrap();
    assert_eq!(
        login.username.expose(),
        "c1-2|authMode=ststoken,securityToken=tok123,signMethod=hmacsha1,timestamp=1700000000000,authId=STS.NExample,iotInstanceId=iot-1,consumerGroupId=G1|"
    );
    // python3: content b"authId=STS.NExample&securityToken=tok123&timestamp=1700000000000"
    assert_eq!(login.password.expose(), "wLn8Ye6Md5G2jnmBybWFB9DEOEg=");
    let shown = format!("{login:?}");
    assert!(
        !shown.contains("tok123") && !shown.contains(login.password.expose()),
        "{shown}"
    );
}

/// What the platform checks at login, written from its documentation.
#[derive(Clone)]
struct PlatformLogin {
    attempts: Arc<Mutex<Vec<SaslCode>>>,
}

impl PlatformLogin {
    fn check(&self, username: &str, password: &str) -> SaslCode {
        let Some(inner) = username.split_once('|').and_then(|(client, rest)| {
            let params = rest.strip_suffix('|')?;
            (!client.is_empty()).then_some(params)
        }) else {
            return SaslCode::Auth;
        };
        let pairs: Vec<(&str, &str)> = inner
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let get = |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
        if keys
            != [
                "authMode",
                "signMethod",
                "timestamp",
                "authId",
                "iotInstanceId",
                "consumerGroupId",
            ]
            || get("authMode") != Some("aksign")
            || get("authId") != Some(KEY_ID)
            || get("iotInstanceId") != Some(INSTANCE)
            || get("consumerGroupId") != Some(GROUP)
        {
            return SaslCode::Auth;
        }
        let Some(ts) = get("timestamp").and_then(|t| t.parse::<i64>().ok()) else {
            return SaslCode::Auth;
        };
        if (laneway::message::now_epoch_ms() - ts).abs() > 5 * 60 * 1000 {
            return SaslCode::Auth; // stale
        }
        let content = format!("authId={KEY_ID}&timestamp={ts}");
        let want = match get("signMethod") {
            Some("hmacsha256") => {
                let mut m = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                m.update(content.as_bytes());
                m.finalize().into_bytes().to_vec()
            }
            Some("hmacsha1") => {
                let mut m = Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
                m.update(content.as_bytes());
                m.finalize().into_bytes().to_vec()
            }
            _ => return SaslCode::Auth,
        };
        if base64::engine::general_purpose::STANDARD.encode(want) == password {
            SaslCode::Ok
        } else {
            SaslCode::Auth
        }
    }
}

impl SaslAcceptor for PlatformLogin {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![Symbol::from("PLAIN")])
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let code = match init.initial_response {
            Some(r) if init.mechanism.as_str() == "PLAIN" => {
                let parts: Vec<&[u8]> = r.split(|b| *b == 0).collect();
                match parts.as_slice() {
                    [_, user, pass] => self.check(
                        std::str::from_utf8(user).unwrap_or(""),
                        std::str::from_utf8(pass).unwrap_or(""),
                    ),
                    _ => SaslCode::Auth,
                }
            }
            _ => SaslCode::Auth,
        };
        self.attempts.lock().push(code.clone());
        SaslServerFrame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        })
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Sys,
            additional_data: None,
        })
    }
}

/// A TLS endpoint for `localhost` with a fresh test CA; returns the port,
/// the CA file, the login attempts seen, and the outcomes of the messages
/// it sent.
struct Endpoint {
    port: u16,
    ca_file: tempfile::NamedTempFile,
    attempts: Arc<Mutex<Vec<SaslCode>>>,
    outcomes: tokio::sync::mpsc::UnboundedReceiver<Vec<bool>>,
}

async fn endpoint(to_send: Vec<Record>) -> Endpoint {
    let support::tls::TestTls {
        acceptor: tls,
        ca_pem,
    } = support::tls::localhost();
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca_pem).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let sasl = PlatformLogin {
        attempts: Arc::clone(&attempts),
    };
    let (tx, outcomes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(stream) = tls.accept(tcp).await else {
                continue;
            };
            let acceptor = ConnectionAcceptor::builder()
                .container_id("platform")
                .sasl_acceptor(sasl.clone())
                .build();
            let Ok(mut connection) = acceptor.accept(stream).await else {
                continue; // a refused login
            };
            let (_session, mut sender) = support::amqp1::accept_sender(&mut connection).await;
            let _ = tx.send(records::send_amqp1(&mut sender, &to_send).await);
            // Hold the link until the client leaves.
            let _ = sender.on_detach().await;
        }
    });
    Endpoint {
        port,
        ca_file,
        attempts,
        outcomes,
    }
}

/// The secret in a file, as a mounted secret is (with a trailing newline).
fn secret_file(secret: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{secret}\n")).unwrap();
    file
}

fn preset(port: u16, ca_file: &std::path::Path, secret: &std::path::Path) -> Amqp1SourceConfig {
    Amqp1SourceConfig {
        ca_file: Some(ca_file.to_path_buf()),
        credit: 50,
        aliyun: Some(AliyunConfig {
            endpoint: Some(format!("amqps://localhost:{port}")),
            instance_id: INSTANCE.into(),
            consumer_group_id: GROUP.into(),
            client_id: "laneway-test".into(),
            access_key_id: KEY_ID.into(),
            access_key_secret_file: Some(secret.to_path_buf()),
            sign_method: SignMethod::HmacSha256,
            ..AliyunConfig::default()
        }),
        ..Amqp1SourceConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preset_logs_in_over_tls_receives_and_accepts() {
    let _turn = support::amqp1::turn().await;
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let sent = records::json_records("aliyun-", 200, |i| {
        laneway::message::now_epoch_ms() - i as i64
    });
    let mut ep = endpoint(sent.clone()).await;
    let secret = secret_file(SECRET);
    let config = preset(ep.port, ep.ca_file.path(), secret.path());

    let sink = RecordingSink::new();
    let engine = Engine::builder()
        .group(GroupConfig::named("g"), sink.clone())
        .source(Amqp1Source::new(config).unwrap(), LanePolicy::Auto)
        .build()
        .unwrap();
    let (_monitor, stop_tx, run) = spawn_engine(engine);
    // The endpoint reports once every message was settled by the client.
    let outcomes = tokio::time::timeout(Duration::from_secs(60), ep.outcomes.recv())
        .await
        .expect("the endpoint sent everything")
        .unwrap();
    assert!(outcomes.iter().all(|a| *a), "a message was not accepted");
    assert_eq!(outcomes.len(), sent.len());
    let _ = stop_tx.send(());
    let summary = run.await.unwrap();
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_delivered(&sent, &sink.delivered_records(), Copies::ExactlyOnce);
    assert_eq!(ep.attempts.lock().as_slice(), &[SaslCode::Ok]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_and_ends_the_source_without_showing_it() {
    let _turn = support::amqp1::turn().await;
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let ep = endpoint(Vec::new()).await;
    let wrong = "not-the-secret-9f8e7d";
    let secret = secret_file(wrong);
    let config = preset(ep.port, ep.ca_file.path(), secret.path());
    let sink = handler_fn(|_d: Delivery| async { Ok::<(), DeliveryError>(()) });
    let engine = Engine::builder()
        .group(GroupConfig::named("g"), sink)
        .source(Amqp1Source::new(config).unwrap(), LanePolicy::Auto)
        .build()
        .unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), engine.run(std::future::pending()))
        .await
        .expect("a refused login ends the run");
    let failure = format!("{:?}", summary.failures);
    assert!(failure.contains("refused the SASL login"), "{failure}");
    assert!(!failure.contains(wrong), "the secret was shown: {failure}");
    assert_eq!(ep.attempts.lock().as_slice(), &[SaslCode::Auth]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_signed_login_is_refused() {
    let _turn = support::amqp1::turn().await;
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let ep = endpoint(Vec::new()).await;
    let secret = secret_file(SECRET);
    let config = preset(ep.port, ep.ca_file.path(), secret.path());
    let aliyun = config.aliyun.clone().unwrap();
    let credentials = Credentials {
        secret: SECRET.into(),
        security_token: None,
    };
    let tls = login::tls_config(Some(ep.ca_file.path())).unwrap();
    let stale = aliyun
        .login(
            &credentials,
            laneway::message::now_epoch_ms() - 20 * 60 * 1000,
            1,
            1,
        )
        .unwrap();
    match login::open(
        &stale,
        "stale",
        Duration::from_secs(60),
        Some(&tls),
        Duration::from_secs(30),
    )
    .await
    {
        Err(OpenFailure::Refused(_)) => {}
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("a twenty-minute-old login was accepted"),
    }
    let fresh = aliyun
        .login(&credentials, laneway::message::now_epoch_ms(), 1, 1)
        .unwrap();
    let mut connection = login::open(
        &fresh,
        "fresh",
        Duration::from_secs(60),
        Some(&tls),
        Duration::from_secs(30),
    )
    .await
    .expect("a fresh login is accepted");
    let _ = connection.close().await;
    assert_eq!(
        ep.attempts.lock().as_slice(),
        &[SaslCode::Auth, SaslCode::Ok]
    );
}
