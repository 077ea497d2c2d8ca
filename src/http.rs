//! The agent's HTTP endpoint (`[metrics] listen`): `/metrics`, `/healthz` and `/status`.
//!
//! Owns routing and the HTTP side of each answer. It does not produce the data: `metrics`, `status` and
//! the daemon's [`Health`] beats do. The endpoint is read-only and unauthenticated, which is why it is off
//! by default and the example binds it to loopback.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::task::JoinHandle;

use crate::metrics::{self, Metrics};
use crate::status::{Health, StatusHandle};

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} ([metrics] listen): {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
}

/// A running endpoint.
#[derive(Debug)]
pub struct HttpServer {
    /// The address actually bound (differs from the one asked for when its port was 0).
    pub local_addr: SocketAddr,
    /// The server task; it ends after the shutdown future completes and open requests are answered.
    pub task: JoinHandle<std::io::Result<()>>,
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    status: StatusHandle,
    health: Health,
}

/// The routes, for embedding or for tests that drive the router directly.
pub fn router(metrics: Metrics, status: StatusHandle, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(get_healthz))
        .route("/status", get(get_status))
        .with_state(AppState {
            metrics,
            status,
            health,
        })
}

/// Binds `addr` and serves the endpoint on a background task until `shutdown` completes.
/// Binding happens before this returns, so a bad address is reported at start-up, not later.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    status: StatusHandle,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<HttpServer, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    let app = router(metrics, status, health);
    tracing::info!(%local_addr, "http endpoint listening: /metrics /healthz /status");
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok(HttpServer { local_addr, task })
}

async fn get_metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        s.metrics.encode(),
    )
        .into_response()
}

async fn get_healthz(State(s): State<AppState>) -> Response {
    match s.health.check() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}\n"),
        )
            .into_response(),
    }
}

async fn get_status(State(s): State<AppState>) -> Response {
    let mut report = s.status.snapshot();
    report.unhealthy = s.health.stale();
    axum::Json(report).into_response()
}
