//! The lab's writer: appends a unique sequence number to one Redis list through the VIP every few
//! milliseconds, from inside the client namespace, and records every attempt.
//!
//! Owns the client loop and its record ([`Attempt`]). It speaks RESP itself (one `RPUSH` at a time on one
//! connection) so that every timeout is exactly the one configured: connect 20 ms and read 50 ms by
//! default, as in the baseline lab; any error drops the connection and the next attempt reconnects. Times
//! are wall-clock ([`SystemTime`]), the clock every other lab observer uses. The loop is bounded: it stops
//! at its deadline or when asked. It does not judge the results (see `lab::report`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use havip_testkit::testbed::netns::Netns;

/// What the client does.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Where to write: the VIP and the Redis port.
    pub target: SocketAddr,
    /// The list key.
    pub key: String,
    /// One attempt starts every `interval` (the next waits while one is in flight).
    pub interval: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Timeout for the reply to one `RPUSH`.
    pub read_timeout: Duration,
    /// Stop by this time at the latest.
    pub max_run: Duration,
}

impl ClientSpec {
    /// The baseline lab's client: every 2 ms, 20 ms connect and 50 ms read timeouts.
    pub fn baseline(target: SocketAddr, key: &str, max_run: Duration) -> Self {
        Self {
            target,
            key: key.to_owned(),
            interval: Duration::from_millis(2),
            connect_timeout: Duration::from_millis(20),
            read_timeout: Duration::from_millis(50),
            max_run,
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError {
    /// No TCP connection within the connect timeout.
    ConnectTimeout,
    /// The connection was refused or failed (`ECONNREFUSED`, `EHOSTUNREACH`, ...).
    Connect(String),
    /// No reply within the read timeout (also a paused write: `CLIENT PAUSE WRITE`).
    ReadTimeout,
    /// The connection broke while writing or reading.
    Io(String),
    /// Redis answered with an error (e.g. `READONLY` from a replica).
    Reply(String),
}

/// One `RPUSH` attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The sequence number written (unique per attempt, increasing).
    pub seq: u64,
    /// When the attempt started (before connecting, if it had to).
    pub sent: SystemTime,
    /// When it ended.
    pub done: SystemTime,
    /// `Ok(list length)` when acknowledged, else why not.
    pub result: Result<i64, AttemptError>,
}

impl Attempt {
    /// Whether Redis acknowledged the write.
    pub fn acked(&self) -> bool {
        self.result.is_ok()
    }
}

/// A running client. [`Client::stop`] ends it and returns the record.
#[derive(Debug)]
pub struct Client {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Vec<Attempt>>>>,
}

impl Client {
    /// Starts the client on a fresh thread inside `ns` (its own current-thread runtime).
    pub fn start(ns: &Netns, spec: ClientSpec) -> Result<Client> {
        let handle = std::fs::File::open(ns.path())
            .with_context(|| format!("opening {}", ns.path().display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let name = ns.name().to_owned();
        let thread = std::thread::Builder::new()
            .name("lab-client".into())
            .spawn(move || -> Result<Vec<Attempt>> {
                use std::os::fd::AsRawFd;
                // SAFETY: setns(2) with a valid namespace descriptor; affects only this fresh thread.
                if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(anyhow!(
                        "client: setns into {name} failed: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                drop(handle);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("client: building its runtime")?;
                Ok(rt.block_on(run(spec, stop2)))
            })
            .context("spawning the client thread")?;
        Ok(Client {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the client (the attempt in flight finishes) and returns every attempt, oldest first.
    pub fn stop(mut self) -> Result<Vec<Attempt>> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self
            .thread
            .take()
            .expect("client thread present until stop");
        thread
            .join()
            .map_err(|_| anyhow!("the client thread panicked"))?
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The RESP encoding of `RPUSH key value`.
pub fn rpush_command(key: &str, value: &str) -> Vec<u8> {
    format!(
        "*3\r\n$5\r\nRPUSH\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
        key.len(),
        value.len()
    )
    .into_bytes()
}

/// Parses one complete RESP reply line to `RPUSH`: `:<n>` is the new list length, `-<msg>` an error.
/// `None` while the line is incomplete.
pub fn parse_reply(buf: &[u8]) -> Option<Result<i64, AttemptError>> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[..end]);
    Some(match line.as_bytes().first() {
        Some(b':') => line[1..]
            .parse()
            .map_err(|_| AttemptError::Reply(format!("bad integer reply {line:?}"))),
        Some(b'-') => Err(AttemptError::Reply(line[1..].to_owned())),
        _ => Err(AttemptError::Reply(format!("unexpected reply {line:?}"))),
    })
}

async fn run(spec: ClientSpec, stop: Arc<AtomicBool>) -> Vec<Attempt> {
    let deadline = Instant::now() + spec.max_run;
    let mut attempts = Vec::with_capacity((spec.max_run.as_millis() / 2) as usize + 16);
    let mut conn: Option<TcpStream> = None;
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        tick.tick().await;
        seq += 1;
        let sent = SystemTime::now();
        let result = attempt(&spec, &mut conn, seq).await;
        if result.is_err() {
            // Any error: this connection is done; the next attempt reconnects.
            conn = None;
        }
        attempts.push(Attempt {
            seq,
            sent,
            done: SystemTime::now(),
            result,
        });
    }
    attempts
}

async fn attempt(
    spec: &ClientSpec,
    conn: &mut Option<TcpStream>,
    seq: u64,
) -> Result<i64, AttemptError> {
    if conn.is_none() {
        let stream = tokio::time::timeout(spec.connect_timeout, TcpStream::connect(spec.target))
            .await
            .map_err(|_| AttemptError::ConnectTimeout)?
            .map_err(|e| AttemptError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        *conn = Some(stream);
    }
    let stream = conn.as_mut().expect("connected above");
    let cmd = rpush_command(&spec.key, &seq.to_string());
    let exchange = async {
        stream
            .write_all(&cmd)
            .await
            .map_err(|e| AttemptError::Io(e.to_string()))?;
        let mut buf = Vec::with_capacity(32);
        let mut chunk = [0u8; 64];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| AttemptError::Io(e.to_string()))?;
            if n == 0 {
                return Err(AttemptError::Io("connection closed by peer".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(r) = parse_reply(&buf) {
                return r;
            }
        }
    };
    tokio::time::timeout(spec.read_timeout, exchange)
        .await
        .map_err(|_| AttemptError::ReadTimeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_rpush_as_resp_array() {
        assert_eq!(
            rpush_command("k", "42"),
            b"*3\r\n$5\r\nRPUSH\r\n$1\r\nk\r\n$2\r\n42\r\n".to_vec()
        );
    }

    #[test]
    fn parses_rpush_replies() {
        assert_eq!(parse_reply(b":17\r\n"), Some(Ok(17)));
        assert_eq!(parse_reply(b":17"), None);
        assert_eq!(
            parse_reply(b"-READONLY You can't write against a read only replica.\r\n"),
            Some(Err(AttemptError::Reply(
                "READONLY You can't write against a read only replica.".into()
            )))
        );
        assert!(matches!(parse_reply(b"+OK\r\n"), Some(Err(_))));
    }
}
