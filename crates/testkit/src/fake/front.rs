//! A TCP front for a fake server that behaves like a far-away HTTPS endpoint: each NEW connection pays a
//! handshake delay (standing for DNS + TCP + TLS), and a connection idle longer than a set time is closed,
//! as real servers do with idle keep-alive connections.
//!
//! Owns the proxying and the connection count. It knows nothing of HTTP: bytes are copied as they come.
//! Used by the warm-path benchmark and tests: a client that keeps its connection warm pays the delay
//! once; one that lets it go idle pays it again on its next call.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the front behaves.
#[derive(Debug, Clone, Copy)]
pub struct FrontOptions {
    /// Added before the first byte of each new connection is forwarded.
    pub handshake_delay: Duration,
    /// A connection with no bytes either way for this long is closed; `None` = never.
    pub idle_close: Option<Duration>,
}

/// A running front on 127.0.0.1. Stops accepting when dropped.
#[derive(Debug)]
pub struct FakeFront {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeFront {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr, options: FrontOptions) -> std::io::Result<FakeFront> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(pipe(client, upstream, options));
            }
        });
        Ok(FakeFront {
            addr,
            accepted,
            task,
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many connections were accepted so far (each paid the handshake delay).
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

async fn pipe(mut client: TcpStream, upstream: SocketAddr, options: FrontOptions) {
    tokio::time::sleep(options.handshake_delay).await;
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_r, mut client_w) = client.split();
    let (mut server_r, mut server_w) = server.split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    // Far enough to mean "never" for any test, without overflowing an Instant.
    let idle = options
        .idle_close
        .unwrap_or(Duration::from_secs(365 * 24 * 3600));
    loop {
        // Both reads are cancel-safe: a read that loses the race has consumed nothing.
        tokio::select! {
            n = client_r.read(&mut up) => match n {
                Ok(n) if n > 0 => {
                    if server_w.write_all(&up[..n]).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
            n = server_r.read(&mut down) => match n {
                Ok(n) if n > 0 => {
                    if client_w.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
            _ = tokio::time::sleep(idle) => {
                tracing::debug!(idle_ms = idle.as_millis() as u64, "fake front closes an idle connection");
                return;
            }
        }
    }
}
