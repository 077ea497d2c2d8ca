//! The agent's HTTP endpoint (`[metrics] listen`): `/metrics`, `/healthz` and `/status`.
//!
//! Owns routing and the HTTP side of each answer. It does not produce the data: `metrics`, `status` and
//! the daemon's [`Health`] beats do. The endpoint is read-only and unauthenticated, which is why it is off
//! by default and the example binds it to loopback.
//!
//! Owns the endpoint's bounds too ([`HttpLimits`], issue 11), so that local clients cannot use up the
//! agent's descriptors or hold up its shutdown: a head timeout (which is also the idle keep-alive
//! timeout), a connection cap that evicts the oldest idle connection so a fresh `/healthz` is still
//! answered, head size limits, no request bodies, and a shutdown that waits for no client longer than a
//! grace period.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

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
    /// The server task; it ends after the shutdown future completes and open requests are answered or
    /// [`HttpLimits::shutdown_grace`] has passed.
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

/// The endpoint's bounds. Every one of them exists so that local clients, idle or hostile, cannot use up
/// the agent's descriptors or hold up its shutdown (issue 11).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// How long a connection may take to send a complete request head, counted from the moment the
    /// server starts waiting for it: after accept, and again after each answer on a kept-alive
    /// connection. It is therefore also the idle keep-alive timeout (hyper's `header_read_timeout`).
    pub header_timeout: Duration,
    /// Open connections at most. A connection past it evicts the oldest one that is not inside a handler,
    /// so a fresh `/healthz` is answered even when every slot is held by an idle client.
    pub max_connections: usize,
    /// Request line plus headers, in bytes (431 past it). hyper's floor is 8192.
    pub max_head_bytes: usize,
    /// Header lines at most (431 past it).
    pub max_headers: usize,
    /// How long shutdown lets open requests finish before it drops their connections.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(5),
            max_connections: 256,
            max_head_bytes: 8192,
            max_headers: 32,
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// Binds `addr` and serves the endpoint on a background task until `shutdown` completes, with the
/// default [`HttpLimits`]. Binding happens before this returns, so a bad address is reported at start-up,
/// not later.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    status: StatusHandle,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<HttpServer, HttpError> {
    serve_with(
        addr,
        HttpLimits::default(),
        router(metrics, status, health),
        shutdown,
    )
    .await
}

/// [`serve`] with explicit limits and any router (tests use short limits and slow handlers).
pub async fn serve_with(
    addr: SocketAddr,
    limits: HttpLimits,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<HttpServer, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    tracing::info!(%local_addr, max_connections = limits.max_connections, "http endpoint listening: /metrics /healthz /status");
    let task = tokio::spawn(accept_loop(listener, limits, app, shutdown));
    Ok(HttpServer { local_addr, task })
}

/// One open connection, as the accept loop sees it.
struct Slot {
    /// Requests of this connection inside a handler right now (0 or 1: HTTP/1.1 without pipelining).
    busy: Arc<AtomicUsize>,
    abort: AbortHandle,
}

/// Open connections by accept order (ids only grow, so the first entry is the oldest).
type Slots = Arc<Mutex<BTreeMap<u64, Slot>>>;

/// The hand-written part: axum's `serve` has no connection cap, so connections are accepted here and each
/// one is served by hyper's HTTP/1 builder, which supplies the head timeout and size limits. The cap is
/// enforced by evicting rather than refusing, so that a flood of idle connections cannot lock out a health
/// check; a connection inside a handler (microseconds: every handler only reads memory) is never evicted.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    limits: HttpLimits,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .max_headers(limits.max_headers);
    let builder = Arc::new(builder);
    let slots: Slots = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut next_id = 0u64;
    let mut cap_log = CapLog::default();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: the limit is the process's, not this client's. Back off briefly
                    // rather than spin; the connections already open are unaffected.
                    tracing::warn!(error = %e, "http endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let id = next_id;
        next_id += 1;
        match make_room(&slots, limits.max_connections) {
            Room::Free => {}
            Room::Evicted => cap_log.hit(),
            Room::AllBusy => {
                cap_log.hit();
                drop(stream);
                continue;
            }
        }
        let busy = Arc::new(AtomicUsize::new(0));
        let conn = serve_conn(
            stream,
            builder.clone(),
            app.clone(),
            busy.clone(),
            stop_rx.clone(),
        );
        let slots_done = slots.clone();
        // Held across the spawn so that a connection ending at once removes its entry after it is inserted.
        let mut open = lock(&slots);
        let abort = conns.spawn(async move {
            conn.await;
            lock(&slots_done).remove(&id);
        });
        open.insert(id, Slot { busy, abort });
    }
    drop(listener);
    // Shutdown: idle connections close at once, open requests get `shutdown_grace` to finish, then
    // whatever is left is dropped. No client can hold this up.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(limits.shutdown_grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.shutdown().await;
    Ok(())
}

/// What [`make_room`] found.
enum Room {
    /// Below the cap.
    Free,
    /// At the cap; the oldest idle connection was closed.
    Evicted,
    /// At the cap and every connection inside a handler: the new one is closed instead.
    AllBusy,
}

/// A warning at most once a minute while the cap is being hit: a flood is worth knowing about, but one
/// line per connection would flood the journal instead.
#[derive(Default)]
struct CapLog {
    last: Option<tokio::time::Instant>,
    since: u64,
}

impl CapLog {
    fn hit(&mut self) {
        self.since += 1;
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            tracing::warn!(
                closed = self.since,
                "http endpoint: connection cap reached; closing the oldest idle connections"
            );
            self.last = Some(now);
            self.since = 0;
        }
    }
}

/// Frees a slot if the cap is reached, by aborting the oldest connection not inside a handler.
fn make_room(slots: &Slots, max: usize) -> Room {
    let mut slots = lock(slots);
    if slots.len() < max.max(1) {
        return Room::Free;
    }
    let victim = slots
        .iter()
        .find(|(_, s)| s.busy.load(Ordering::Acquire) == 0)
        .map(|(id, _)| *id);
    match victim.and_then(|id| slots.remove(&id)) {
        Some(s) => {
            s.abort.abort();
            Room::Evicted
        }
        None => Room::AllBusy,
    }
}

fn lock(slots: &Slots) -> std::sync::MutexGuard<'_, BTreeMap<u64, Slot>> {
    // The map is only ever left consistent (single inserts and removes), so a poisoned lock is usable.
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves one connection until the client leaves, a limit closes it, or shutdown asks it to finish.
async fn serve_conn(
    stream: tokio::net::TcpStream,
    builder: Arc<hyper::server::conn::http1::Builder>,
    app: Router,
    busy: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        let busy = busy.clone();
        async move {
            busy.fetch_add(1, Ordering::AcqRel);
            let _idle_again = scopeguard(move || {
                busy.fetch_sub(1, Ordering::AcqRel);
            });
            if let Some(refusal) = refuse_body(&req) {
                return Ok::<_, std::convert::Infallible>(refusal);
            }
            TowerToHyperService::new(app).call(req).await
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return log_conn_end(r),
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    log_conn_end(conn.await);
}

fn log_conn_end(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        // Timeouts, oversized heads and resets: the client's problem, and frequent under abuse.
        tracing::debug!(error = %e, "http endpoint: connection ended with an error");
    }
}

/// The endpoint reads no request bodies: a request that announces one is answered 413 and the connection
/// closed, so the unread body is never buffered.
fn refuse_body(req: &Request<Incoming>) -> Option<Response> {
    let h = req.headers();
    let length = h
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) != Some(0))
        .unwrap_or(false);
    if !length && !h.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    Some(
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(header::CONNECTION, "close")],
            "request bodies are not accepted\n",
        )
            .into_response(),
    )
}

/// Runs `f` when dropped: the busy count falls back even when the handler future is dropped mid-way.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
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
