//! Opening one AMQP 1.0 connection: TCP, TLS when asked (rustls with the
//! system's roots or a configured CA file), SASL PLAIN, then the AMQP open
//! with the configured idle time-out.
//!
//! Invariants: the user name and the password of a [`Login`] are never
//! formatted (its `Debug` shows only `shown_as`), and errors are built from
//! what failed, never from the login; a SASL refusal is told apart
//! ([`OpenFailure::Refused`]) because retrying cannot fix it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::{ConnectionHandle, OpenError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::secret::Secret;

/// Where and as whom one connection logs in.
pub struct Login {
    /// The peer's host name (also the TLS server name).
    pub host: String,
    /// The peer's port.
    pub port: u16,
    /// Whether to speak TLS (the platform: always).
    pub tls: bool,
    /// The SASL PLAIN user name (the platform's carries an STS token, when
    /// there is one: a secret too).
    pub username: Secret,
    /// The SASL PLAIN password.
    pub password: Secret,
    /// How the login is named in logs and errors: never a secret.
    pub shown_as: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Login({})", self.shown_as)
    }
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum OpenFailure {
    /// The peer refused the login (SASL): wrong credentials, or a login
    /// the platform does not accept. Retrying with the same credentials
    /// cannot help.
    Refused(String),
    /// The TLS set-up cannot work (an unreadable CA file, a bad host name).
    Tls(String),
    /// Anything else (unreachable, reset, timed out): worth retrying.
    Transient(String),
}

impl std::fmt::Display for OpenFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenFailure::Refused(m) => write!(f, "login refused: {m}"),
            OpenFailure::Tls(m) => write!(f, "TLS: {m}"),
            OpenFailure::Transient(m) => f.write_str(m),
        }
    }
}

/// The TLS client set-up: the CA file's certificates, or the system's.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, OpenFailure> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| OpenFailure::Tls(format!("reading {}: {e}", path.display())))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| OpenFailure::Tls(format!("reading {}: {e}", path.display())))?;
                roots.add(cert).map_err(|e| {
                    OpenFailure::Tls(format!("a certificate in {}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(OpenFailure::Tls(format!(
                    "{} holds no certificate",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system certificate rustls cannot use is skipped.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(OpenFailure::Tls(
                    "no usable certificate authority on this system (set ca_file)".into(),
                ));
            }
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OpenFailure::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens a connection for `login`, giving up after `timeout`.
pub async fn open(
    login: &Login,
    container_id: &str,
    idle_timeout: Duration,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
) -> Result<ConnectionHandle<()>, OpenFailure> {
    match tokio::time::timeout(timeout, open_now(login, container_id, idle_timeout, tls)).await {
        Ok(result) => result,
        Err(_) => Err(OpenFailure::Transient(format!(
            "{}: no answer within {timeout:?}",
            login.shown_as
        ))),
    }
}

async fn open_now(
    login: &Login,
    container_id: &str,
    idle_timeout: Duration,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<ConnectionHandle<()>, OpenFailure> {
    let at = &login.shown_as;
    let tcp = TcpStream::connect((login.host.as_str(), login.port))
        .await
        .map_err(|e| OpenFailure::Transient(format!("{at}: connecting: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let profile = SaslProfile::Plain {
        username: login.username.expose().to_string(),
        password: login.password.expose().to_string(),
    };
    let idle_ms = u32::try_from(idle_timeout.as_millis()).unwrap_or(u32::MAX);
    let builder = fe2o3_amqp::Connection::builder()
        .container_id(container_id)
        .scheme("amqp")
        .hostname(login.host.as_str())
        .sasl_profile(profile)
        .idle_time_out(idle_ms);
    let opened = if login.tls {
        let config = match tls {
            Some(c) => Arc::clone(c),
            None => tls_config(None)?,
        };
        let name = ServerName::try_from(login.host.clone())
            .map_err(|e| OpenFailure::Tls(format!("{at}: server name: {e}")))?;
        let stream = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| OpenFailure::Transient(format!("{at}: TLS handshake: {e}")))?;
        builder.open_with_stream(stream).await
    } else {
        builder.open_with_stream(tcp).await
    };
    opened.map_err(|e| classify(at, e))
}

fn classify(at: &str, e: OpenError) -> OpenFailure {
    match e {
        OpenError::SaslError { code, .. } => {
            OpenFailure::Refused(format!("{at}: the peer refused the SASL login ({code:?})"))
        }
        // The library's own text names no credential (it formats codes and
        // I/O errors), but keep it to the variant's description.
        other => OpenFailure::Transient(format!("{at}: opening the connection: {other}")),
    }
}
