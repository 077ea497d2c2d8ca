//! The HTTP endpoint's bounds (issue 11), on a real loopback socket with raw TCP clients: a head timeout that
//! is also the idle keep-alive timeout, a connection cap that evicts the oldest idle connection (so a fresh
//! `/healthz` is answered) but never one inside a handler, head size limits, no request bodies, and a
//! shutdown that no client can hold up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use havip_agent::http::{self, HttpLimits};
use havip_agent::metrics::Metrics;
use havip_agent::status::{Health, StatusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

/// A bound on waiting for something that should happen much sooner (not a speed claim).
const PATIENCE: Duration = Duration::from_secs(10);

struct Running {
    addr: SocketAddr,
    server: http::HttpServer,
    stop: oneshot::Sender<()>,
}

/// Limits long enough that nothing closes unless the test is about it.
fn roomy() -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_secs(120),
        max_connections: 64,
        shutdown_grace: Duration::from_millis(300),
        ..HttpLimits::default()
    }
}

/// The real routes plus `/slow`, which stays inside its handler until `release` is notified.
fn app(release: Arc<Notify>, entered: Arc<Notify>) -> Router {
    let slow = Router::new().route(
        "/slow",
        get(move || {
            let (release, entered) = (release.clone(), entered.clone());
            async move {
                entered.notify_one();
                release.notified().await;
                "slow\n"
            }
        }),
    );
    // One task that beat recently, so /healthz is 200 for the whole test.
    let health = Health::new(Duration::from_secs(600));
    health.register("test task").beat();
    http::router(Metrics::new(), StatusHandle::default(), health).merge(slow)
}

async fn start(limits: HttpLimits, app: Router) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let server = http::serve_with("127.0.0.1:0".parse().unwrap(), limits, app, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    Running {
        addr: server.local_addr,
        server,
        stop,
    }
}

fn plain_app() -> Router {
    app(Arc::new(Notify::new()), Arc::new(Notify::new()))
}

/// Sends `request` on a fresh connection and reads the answer until the server closes.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_to_close(&mut s).await
}

async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("the server neither answered nor closed");
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits (bounded) until the server closes `s` (EOF or reset), ignoring anything it sends first.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// Whether the server still holds `s` open: nothing to read yet and no EOF.
fn still_open(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn a_silent_or_trickling_client_is_closed_after_the_head_timeout() {
    let limits = HttpLimits {
        header_timeout: Duration::from_millis(300),
        ..roomy()
    };
    let srv = start(limits, plain_app()).await;

    // Silent: connects, sends nothing.
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    // Trickling (slowloris): a head that never ends, one byte at a time.
    let mut trickle = TcpStream::connect(srv.addr).await.unwrap();
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let trickler = async {
        for _ in 0..200 {
            if trickle.write_all(b"X").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    let (silent_closed, trickle_closed) = tokio::join!(closed_by_server(&mut silent), trickler);
    assert!(silent_closed, "a silent connection was kept open");
    assert!(trickle_closed, "a never-ending head was kept open");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let limits = HttpLimits {
        header_timeout: Duration::from_millis(300),
        ..roomy()
    };
    let srv = start(limits, plain_app()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Kept alive after the answer, then idle: the server must close it.
    assert!(
        closed_by_server(&mut s).await,
        "an idle keep-alive connection was kept open"
    );
}

#[tokio::test]
async fn past_the_cap_a_fresh_healthz_is_answered_by_evicting_the_oldest_idle_connection() {
    let limits = HttpLimits {
        max_connections: 4,
        ..roomy()
    };
    let srv = start(limits, plain_app()).await;
    // Fill every slot with idle connections; each one's answered request proves it was accepted, in order.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        idle.push(s);
    }

    let answer = exchange(srv.addr, HEALTHZ).await;

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed_by_server(&mut idle[0]).await,
        "the oldest idle connection was not evicted"
    );
    for (i, s) in idle.iter().enumerate().skip(1) {
        assert!(
            still_open(s),
            "connection {i} was closed too, only the oldest should be"
        );
    }
}

#[tokio::test]
async fn a_connection_inside_a_handler_is_never_evicted() {
    let (release, entered) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let limits = HttpLimits {
        max_connections: 2,
        ..roomy()
    };
    let srv = start(limits, app(release.clone(), entered.clone())).await;
    // The oldest connection is inside a handler, the second one idle.
    let mut busy = TcpStream::connect(srv.addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, entered.notified())
        .await
        .expect("the slow handler never ran");
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();

    let answer = exchange(srv.addr, HEALTHZ).await;

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed_by_server(&mut idle).await,
        "the idle connection was not the one evicted"
    );
    release.notify_one();
    let slow = read_to_close(&mut busy).await;
    assert!(
        slow.starts_with("HTTP/1.1 200") && slow.ends_with("slow\n"),
        "{slow}"
    );
}

#[tokio::test]
async fn oversized_heads_are_431_and_bodies_are_refused_with_413() {
    let srv = start(roomy(), plain_app()).await;

    let long = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let answer = exchange(srv.addr, long.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "a 16 KiB header: {answer}"
    );

    let many: String = (0..64).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}Connection: close\r\n\r\n");
    let answer = exchange(srv.addr, many.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "64 header lines: {answer}"
    );

    let with_body = b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello";
    let answer = exchange(srv.addr, with_body).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "a body: {answer}");

    let chunked =
        b"GET /status HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let answer = exchange(srv.addr, chunked).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "a chunked body: {answer}"
    );

    // An explicit empty body is fine.
    let empty =
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let answer = exchange(srv.addr, empty).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn shutdown_is_not_held_up_by_a_trickling_client_or_a_stuck_request() {
    let (release, entered) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let srv = start(roomy(), app(release, entered.clone())).await;
    // A head that is never finished, an idle kept-alive connection and a request whose handler never ends.
    let mut partial = TcpStream::connect(srv.addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut stuck = TcpStream::connect(srv.addr).await.unwrap();
    stuck
        .write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, entered.notified())
        .await
        .expect("the slow handler never ran");

    let _ = srv.stop.send(());
    let ended = tokio::time::timeout(PATIENCE, srv.server.task).await;

    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the server did not stop: {ended:?}"
    );
    assert!(closed_by_server(&mut partial).await);
    assert!(closed_by_server(&mut stuck).await);
    assert!(
        TcpStream::connect(srv.addr).await.is_err(),
        "still listening"
    );
}
