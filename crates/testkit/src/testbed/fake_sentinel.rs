//! A scripted Sentinel for tests that must choose every answer: just enough RESP for `SENTINEL MASTER`,
//! `SENTINEL GET-MASTER-ADDR-BY-NAME`, `SUBSCRIBE` and `PING` (anything else gets `+OK`). The one fake
//! Sentinel of the project: tests use it rather than writing their own.
//!
//! Owns its listener and a thread running the server; dropping it stops the thread and closes every
//! connection. Real Sentinels (`testbed::redis`) are for behaviour; this is for answers a real one never
//! gives on demand (out of sight, garbage, a chosen epoch).

use std::net::{IpAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

/// How the fake answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every master it is asked about is at `ip:6379` with this config-epoch (flags `master`,
    /// down-after 5000 ms, quorum 2).
    Master {
        /// The master's address.
        ip: IpAddr,
        /// Its config-epoch.
        epoch: u64,
    },
    /// Out of sight: connections are closed unanswered (new ones at once, open ones at their next command).
    Unreachable,
    /// Every `SENTINEL` answer is malformed (wrong type, missing field, bad epoch, a hostname, an error), and
    /// Pub/Sub carries malformed events.
    Garbage,
}

/// The malformed `SENTINEL MASTER` answer number `n` (they are served in turn in [`Mode::Garbage`]), with
/// the `GET-MASTER-ADDR-BY-NAME` answer that goes with it. None is usable; those that parse far enough name a
/// bogus master, 6.6.6.6.
fn garbage_reply(n: usize, name: &str) -> (Vec<u8>, Vec<u8>) {
    let full = |epoch: &str, ip: &str| {
        bulk_array(&[
            "name",
            name,
            "ip",
            ip,
            "port",
            "6379",
            "flags",
            "master",
            "down-after-milliseconds",
            "1000",
            "config-epoch",
            epoch,
            "num-other-sentinels",
            "2",
            "quorum",
            "2",
        ])
    };
    let bogus_addr = bulk_array(&["6.6.6.6", "6379"]);
    match n % 8 {
        0 => (b":42\r\n".to_vec(), bogus_addr),
        1 => (
            bulk_array(&["name", name, "ip", "6.6.6.6", "port", "6379"]),
            bogus_addr,
        ),
        2 => (full("lots", "6.6.6.6"), bogus_addr),
        3 => (full("999", "not-an-ip"), bogus_addr),
        4 => (
            full("999", "redis.internal"),
            bulk_array(&["redis.internal", "6379"]),
        ),
        5 => (full("999", "6.6.6.6"), bulk_array(&["6.6.6.6", "x"])),
        6 => (b"-ERR fake failure\r\n".to_vec(), b"$-1\r\n".to_vec()),
        // Not RESP at all: the client's parser fails and the link must be dropped and rebuilt.
        _ => (b"?hello garbage\r\n".to_vec(), Vec::new()),
    }
}

/// Malformed events on real channel names, published in turn every [`EVENT_EVERY`] on every subscribed
/// connection while in [`Mode::Garbage`].
const GARBAGE_EVENTS: [(&str, &[u8]); 7] = [
    ("+switch-master", b"garbage"),
    ("+switch-master", b"alpha x y z w"),
    ("+switch-master", b"mymaster 6.6.6.6 x 7.7.7.7 6379"),
    ("+promoted-slave", b"slave 6.6.6.6:1 6.6.6.6 1"),
    ("+promoted-slave", b""),
    ("+config-update-from", b"\x01\x02"),
    ("+odown", b"\xff\xfe\xfd"),
];

/// How often events (garbage, or those set with [`FakeSentinel::set_events`]) are published.
pub const EVENT_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Events to publish: `(channel, payload)`.
type Events = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// What the fake has done, for tests to wait on.
#[derive(Debug, Default)]
struct Counters {
    garbage_served: AtomicUsize,
    events_published: AtomicUsize,
    connections: AtomicUsize,
}

/// What every connection of one fake shares.
#[derive(Debug, Clone)]
struct Shared {
    mode: Arc<Mutex<Mode>>,
    events: Events,
    counters: Arc<Counters>,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `k`-th event to publish now, if any.
    fn event(&self, k: usize) -> Option<(String, Vec<u8>)> {
        if self.mode() == Mode::Garbage {
            let (ch, payload) = GARBAGE_EVENTS[k % GARBAGE_EVENTS.len()];
            return Some((ch.to_owned(), payload.to_vec()));
        }
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        (!events.is_empty()).then(|| events[k % events.len()].clone())
    }
}

/// One fake Sentinel. See the module docs.
pub struct FakeSentinel {
    addr: String,
    shared: Shared,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeSentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSentinel")
            .field("addr", &self.addr)
            .field("mode", &self.mode())
            .finish()
    }
}

impl FakeSentinel {
    /// Serves on `listener` (bound by the caller, e.g. inside a network namespace) in `mode`.
    pub fn start_on(listener: TcpListener, mode: Mode) -> std::io::Result<FakeSentinel> {
        let addr = listener.local_addr()?.to_string();
        listener.set_nonblocking(true)?;
        let shared = Shared {
            mode: Arc::new(Mutex::new(mode)),
            events: Arc::default(),
            counters: Arc::default(),
        };
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fake-sentinel-{addr}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let mut stop = stopped.clone();
                    loop {
                        tokio::select! {
                            _ = stop.changed() => return,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                tokio::spawn(serve(stream, sh.clone(), stopped.clone()));
                            }
                        }
                    }
                });
            })?;
        Ok(FakeSentinel {
            addr,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Binds 127.0.0.1 on a free port and serves there.
    pub fn start(mode: Mode) -> std::io::Result<FakeSentinel> {
        Self::start_on(TcpListener::bind("127.0.0.1:0")?, mode)
    }

    /// `ip:port` to put in `sentinel.addresses`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Changes how it answers from the next command on.
    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    /// Outside [`Mode::Garbage`], publishes these `(channel, payload)` events in turn, one every
    /// [`EVENT_EVERY`], on every subscribed connection (none by default).
    pub fn set_events(&self, events: &[(&str, &[u8])]) {
        *self.shared.events.lock().unwrap_or_else(|e| e.into_inner()) = events
            .iter()
            .map(|(c, p)| ((*c).to_owned(), p.to_vec()))
            .collect();
    }

    /// How many malformed `SENTINEL MASTER` answers it has given.
    pub fn garbage_served(&self) -> usize {
        self.shared.counters.garbage_served.load(Ordering::Relaxed)
    }

    /// How many events (garbage or set) it has published.
    pub fn events_published(&self) -> usize {
        self.shared
            .counters
            .events_published
            .load(Ordering::Relaxed)
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> usize {
        self.shared.counters.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FakeSentinel {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one RESP array of bulk strings (a client command); `None` at EOF or on anything else.
pub async fn read_command<R: AsyncBufRead + Unpin>(r: &mut R) -> Option<Vec<String>> {
    let mut line = String::new();
    r.read_line(&mut line).await.ok()?;
    let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).await.ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0u8; len + 2];
        r.read_exact(&mut buf).await.ok()?;
        buf.truncate(len);
        args.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Some(args)
}

fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

fn bulk_array(items: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", items.len());
    for i in items {
        out += &bulk(i);
    }
    out.into_bytes()
}

fn message(channel: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "*3\r\n{}{}${}\r\n",
        bulk("message"),
        bulk(channel),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

fn master_reply(name: &str, ip: IpAddr, epoch: u64) -> Vec<u8> {
    let (ip, epoch) = (ip.to_string(), epoch.to_string());
    bulk_array(&[
        "name",
        name,
        "ip",
        &ip,
        "port",
        "6379",
        "flags",
        "master",
        "down-after-milliseconds",
        "5000",
        "config-epoch",
        &epoch,
        "num-other-sentinels",
        "2",
        "quorum",
        "2",
    ])
}

type Writer = Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>;

/// Publishes events on a subscribed connection, one every [`EVENT_EVERY`], until it closes.
async fn publish(w: Writer, shared: Shared) {
    let mut k = 0;
    loop {
        tokio::time::sleep(EVENT_EVERY).await;
        let Some((ch, payload)) = shared.event(k) else {
            continue;
        };
        k += 1;
        if w.lock()
            .await
            .write_all(&message(&ch, &payload))
            .await
            .is_err()
        {
            return;
        }
        shared
            .counters
            .events_published
            .fetch_add(1, Ordering::Relaxed);
    }
}

async fn serve(stream: tokio::net::TcpStream, shared: Shared, mut stopped: watch::Receiver<bool>) {
    let counters = shared.counters.clone();
    counters.connections.fetch_add(1, Ordering::Relaxed);
    let current = || shared.mode();
    let (r, w) = stream.into_split();
    let w: Writer = Arc::new(tokio::sync::Mutex::new(w));
    let mut r = BufReader::new(r);
    let mut publisher = None;
    loop {
        if current() == Mode::Unreachable {
            break;
        }
        let args = tokio::select! {
            _ = stopped.changed() => break,
            args = read_command(&mut r) => match args { Some(a) => a, None => break },
        };
        let mode_now = current();
        let upper: Vec<String> = args.iter().map(|a| a.to_ascii_uppercase()).collect();
        let words: Vec<&str> = upper.iter().map(String::as_str).collect();
        let name = args.get(2).map(String::as_str).unwrap_or("mymaster");
        let reply: Vec<u8> = match (mode_now, words.as_slice()) {
            (Mode::Unreachable, _) => break,
            (Mode::Garbage, ["SENTINEL", "MASTER", ..]) => {
                let n = counters.garbage_served.fetch_add(1, Ordering::Relaxed);
                garbage_reply(n, name).0
            }
            (Mode::Garbage, ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", ..]) => {
                let n = counters
                    .garbage_served
                    .load(Ordering::Relaxed)
                    .saturating_sub(1);
                garbage_reply(n, name).1
            }
            (Mode::Garbage, ["SENTINEL", ..]) => b"*1\r\n:7\r\n".to_vec(),
            (Mode::Master { ip, epoch }, ["SENTINEL", "MASTER", ..]) if args.len() > 2 => {
                master_reply(name, ip, epoch)
            }
            (Mode::Master { ip, .. }, ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", ..]) => {
                bulk_array(&[&ip.to_string(), "6379"])
            }
            (_, ["SUBSCRIBE", ..]) => {
                let mut out = String::new();
                for (i, ch) in args[1..].iter().enumerate() {
                    out += &format!("*3\r\n{}{}:{}\r\n", bulk("subscribe"), bulk(ch), i + 1);
                }
                publisher.get_or_insert_with(|| tokio::spawn(publish(w.clone(), shared.clone())));
                out.into_bytes()
            }
            (_, ["PING", ..]) => b"+PONG\r\n".to_vec(),
            (_, ["SENTINEL", ..]) => b"-ERR Unknown sentinel subcommand\r\n".to_vec(),
            _ => b"+OK\r\n".to_vec(),
        };
        if w.lock().await.write_all(&reply).await.is_err() {
            break;
        }
    }
    if let Some(p) = publisher {
        p.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use havip_agent::config::SentinelConfig;
    use havip_agent::sentinel::conn::query;

    fn cfg(addrs: &[&str]) -> SentinelConfig {
        toml::from_str(&format!(
            "addresses = [{}]",
            addrs
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn answers_as_set_and_goes_out_of_sight_on_demand() {
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        let fake = FakeSentinel::start(Mode::Master { ip, epoch: 4 }).unwrap();
        let c = cfg(&[fake.addr()]);

        let m = query(fake.addr(), &c, "alpha").await.unwrap();
        assert_eq!((m.ip, m.port, m.config_epoch), (ip, 6379, 4));

        fake.set(Mode::Garbage);
        let e = query(fake.addr(), &c, "alpha").await.unwrap_err();
        assert!(!e.is_link(), "garbage is a reply error: {e}");
        assert_eq!(fake.garbage_served(), 1);

        fake.set(Mode::Unreachable);
        let e = query(fake.addr(), &c, "alpha").await.unwrap_err();
        assert!(e.is_link(), "out of sight is a link error: {e}");
    }
}
