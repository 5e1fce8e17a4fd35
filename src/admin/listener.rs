//! The listener itself (feature `admin`): binding, the accept loop within
//! [`AdminOptions`]'s limits, the `Host` check and the endpoints. See the
//! module above for what it serves and promises.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connections::{Admitted, BusyHandle, Connections};
use super::host::HostPolicy;
use super::metrics::{self, Metrics};
use super::{AdminOptions, Tracker};

/// The dashboard page, embedded in the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

/// How long `/status?after=N` waits for a newer sample at most.
const LONG_POLL: Duration = Duration::from_secs(30);

/// How long a stop lets requests under way finish before their
/// connections are dropped.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// The pause after a failed `accept` (out of descriptors, say) before the
/// next: the listener gives way instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

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
    options: AdminOptions,
}

impl AdminServer {
    /// Binds `addr`, to serve within `options`. A non-loopback address is
    /// allowed but logged as a warning: the endpoints have no
    /// authentication.
    pub async fn bind(addr: SocketAddr, options: AdminOptions) -> Result<AdminServer, AdminError> {
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
            options,
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
        let options = Arc::new(self.options);
        let hosts = Arc::new(HostPolicy::new(self.addr, &options.allowed_hosts));
        let table = Connections::new(options.max_connections);
        let tasks = TaskTracker::new();
        let mut refused: u64 = 0;
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "admin listener: accept failed");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                    }
                }
            };
            let Some(admitted) = table.admit() else {
                // Every slot holds a request under way: this one is
                // closed at once, unanswered.
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        refused,
                        max_connections = options.max_connections,
                        "admin listener: a connection was refused, every slot holds a request under way"
                    );
                }
                drop(stream);
                continue;
            };
            let service = AdminService {
                app: TowerToHyperService::new(app.clone()),
                hosts: Arc::clone(&hosts),
                busy: admitted.busy_handle(),
            };
            tasks.spawn(connection(
                stream,
                admitted,
                service,
                Arc::clone(&options),
                stop.clone(),
            ));
        }
        drop(self.listener);
        tasks.close();
        tasks.wait().await;
        Ok(())
    }
}

/// Serves one connection until it ends, is evicted, stays idle too long,
/// or the listener stops (then requests under way get [`STOP_GRACE`]).
async fn connection(
    stream: tokio::net::TcpStream,
    admitted: Admitted,
    service: AdminService,
    options: Arc<AdminOptions>,
    stop: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        ended = conn.as_mut() => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "admin listener: connection closed");
            }
            return;
        }
        () = admitted.evicted() => return,
        () = admitted.idle_for(options.idle_timeout) => return,
        () = stop.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(STOP_GRACE, conn).await;
}

/// The endpoints behind the `Host` check, marking their connection busy
/// while a request is handled.
#[derive(Clone)]
struct AdminService {
    app: TowerToHyperService<Router>,
    hosts: Arc<HostPolicy>,
    busy: BusyHandle,
}

impl hyper::service::Service<Request<Incoming>> for AdminService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        if !self.hosts.allows(request.headers().get(header::HOST)) {
            return Box::pin(std::future::ready(Ok((
                StatusCode::FORBIDDEN,
                "this Host is not allowed: use a loopback name or the listen address, or add the name to [admin] allowed_hosts\n",
            )
                .into_response())));
        }
        let busy = self.busy.enter();
        let answer = self.app.call(request);
        Box::pin(async move {
            let response = answer.await;
            drop(busy);
            response
        })
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
