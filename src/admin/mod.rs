//! The admin HTTP listener: what an operator watches a running engine by.
//!
//! - `/metrics`: every counter in the OpenMetrics text format ([`metrics`]);
//! - `/status`: the consumer-group status as JSON ([`status`]); with
//!   `?after=N` it waits (up to 30 s) for the sample after sample `N`, so a
//!   client follows the status without polling; `/status/history` holds
//!   up to ten minutes of per-group points for charts;
//! - `/`: a live dashboard, one self-contained page embedded in the binary
//!   (no CDN, works offline) that follows `/status`;
//! - `/healthz`: the process answers; `/readyz`: every source is connected
//!   and the engine takes input (its backlog stores are open).
//!
//! The listener is off unless configured; it is meant for loopback (a
//! non-loopback address is allowed but logged as a warning: it has no
//! authentication, and `/status` names sources and groups). It may import
//! `engine`, `source`, `backlog`, `sink` and `message`; `engine` never
//! imports it.

pub mod metrics;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

pub use metrics::Metrics;
pub use status::{GroupState, Status, Tracker};

/// The dashboard page, embedded in the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

/// How long `/status?after=N` waits for a newer sample at most.
const LONG_POLL: Duration = Duration::from_secs(30);

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound (taken, not local, no permission).
    #[error("admin listener: cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A bound admin listener, not yet serving. Binding first lets the caller
/// refuse to start (exit non-zero) on a taken port before the engine runs.
pub struct AdminServer {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl AdminServer {
    /// Binds `addr`. A non-loopback address is allowed but logged as a
    /// warning: the endpoints have no authentication.
    pub async fn bind(addr: SocketAddr) -> Result<AdminServer, AdminError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%bound, "the admin listener is bound to a non-loopback address: /metrics, /status and the dashboard have no authentication");
        }
        Ok(AdminServer {
            listener,
            addr: bound,
        })
    }

    /// The address bound (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop` is cancelled. `tracker` supplies `/status` and
    /// the dashboard; its monitor, `/metrics` and the health checks.
    pub async fn serve(self, tracker: Tracker, stop: CancellationToken) -> std::io::Result<()> {
        let metrics = Metrics::new(tracker.monitor().clone());
        let state = Arc::new(AppState { tracker, metrics });
        let app = Router::new()
            .route("/", get(dashboard))
            .route("/metrics", get(metrics_text))
            .route("/status", get(status_json))
            .route("/status/history", get(history_json))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(state);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    }
}

struct AppState {
    tracker: Tracker,
    metrics: Metrics,
}

type Shared = State<Arc<AppState>>;

fn json<T: serde::Serialize>(value: &T) -> Response {
    match simd_json::to_string(value) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode: {e}\n"),
        )
            .into_response(),
    }
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn metrics_text(State(state): Shared) -> Response {
    match state.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}

/// `?after=N`: the number, if the query has one.
fn after(uri: &Uri) -> Option<u64> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("after="))
        .and_then(|v| v.parse().ok())
}

async fn status_json(State(state): Shared, uri: Uri) -> Response {
    if let Some(n) = after(&uri) {
        state.tracker.wait_after(n, LONG_POLL).await;
    }
    json(&state.tracker.status())
}

async fn history_json(State(state): Shared) -> Response {
    json(&state.tracker.history())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): Shared) -> Response {
    let monitor = state.tracker.monitor();
    let mut waiting: Vec<String> = monitor
        .sources()
        .into_iter()
        .filter(|(_, s)| !s.connected)
        .map(|(name, s)| match s.trouble {
            Some(t) => format!("source {name}: {t}"),
            None => format!("source {name}: not connected yet"),
        })
        .collect();
    if !monitor.accepting() {
        waiting.push("the engine is shutting down".into());
    }
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let mut body = waiting.join("\n");
        body.push('\n');
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}
