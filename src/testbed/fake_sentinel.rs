//! A scripted Sentinel for tests that must choose every answer: just enough RESP for `SENTINEL MASTER`,
//! `SENTINEL GET-MASTER-ADDR-BY-NAME`, `SUBSCRIBE` and `PING` (anything else gets `+OK`).
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

/// Malformed `SENTINEL MASTER` answers, served in turn in [`Mode::Garbage`].
const GARBAGE_REPLIES: [&str; 5] = [
    ":42\r\n",
    "*2\r\n$4\r\nname\r\n$5\r\nalpha\r\n",
    "*6\r\n$4\r\nname\r\n$5\r\nalpha\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$12\r\nconfig-epoch\r\n$5\r\nthree\r\n",
    "*4\r\n$4\r\nname\r\n$5\r\nalpha\r\n$2\r\nip\r\n$14\r\nredis.internal\r\n",
    "-ERR garbage\r\n",
];

/// Malformed events on real channel names, published once per subscription in [`Mode::Garbage`].
const GARBAGE_EVENTS: [(&str, &str); 4] = [
    ("+switch-master", "alpha 1.2.3.4"),
    ("+switch-master", "alpha x y z w"),
    ("+config-update-from", "\u{1}\u{2}"),
    ("+promoted-slave", ""),
];

/// One fake Sentinel. See the module docs.
pub struct FakeSentinel {
    addr: String,
    mode: Arc<Mutex<Mode>>,
    garbage_served: Arc<AtomicUsize>,
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
        let mode = Arc::new(Mutex::new(mode));
        let garbage_served = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (m, g) = (mode.clone(), garbage_served.clone());
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
                                let (m, g, stopped) = (m.clone(), g.clone(), stopped.clone());
                                tokio::spawn(serve(stream, m, g, stopped));
                            }
                        }
                    }
                });
            })?;
        Ok(FakeSentinel {
            addr,
            mode,
            garbage_served,
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
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes how it answers from the next command on.
    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    /// How many malformed `SENTINEL MASTER` answers it has given.
    pub fn garbage_served(&self) -> usize {
        self.garbage_served.load(Ordering::Relaxed)
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

fn master_reply(name: &str, ip: IpAddr, epoch: u64) -> String {
    let fields = [
        ("name", name.to_owned()),
        ("ip", ip.to_string()),
        ("port", "6379".to_owned()),
        ("flags", "master".to_owned()),
        ("down-after-milliseconds", "5000".to_owned()),
        ("config-epoch", epoch.to_string()),
        ("num-other-sentinels", "2".to_owned()),
        ("quorum", "2".to_owned()),
    ];
    let mut out = format!("*{}\r\n", fields.len() * 2);
    for (k, v) in fields {
        out += &bulk(k);
        out += &bulk(&v);
    }
    out
}

async fn serve(
    stream: tokio::net::TcpStream,
    mode: Arc<Mutex<Mode>>,
    garbage_served: Arc<AtomicUsize>,
    mut stopped: watch::Receiver<bool>,
) {
    let current = || *mode.lock().unwrap_or_else(|e| e.into_inner());
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        if current() == Mode::Unreachable {
            return;
        }
        let args = tokio::select! {
            _ = stopped.changed() => return,
            args = read_command(&mut r) => match args { Some(a) => a, None => return },
        };
        let mode = current();
        let upper: Vec<String> = args.iter().map(|a| a.to_ascii_uppercase()).collect();
        let words: Vec<&str> = upper.iter().map(String::as_str).collect();
        let reply = match (mode, words.as_slice()) {
            (Mode::Unreachable, _) => return,
            (Mode::Garbage, ["SENTINEL", "MASTER", ..]) => {
                let n = garbage_served.fetch_add(1, Ordering::Relaxed);
                GARBAGE_REPLIES[n % GARBAGE_REPLIES.len()].to_owned()
            }
            (Mode::Garbage, ["SENTINEL", ..]) => "*1\r\n:7\r\n".to_owned(),
            (Mode::Master { ip, epoch }, ["SENTINEL", "MASTER", ..]) if args.len() > 2 => {
                master_reply(&args[2], ip, epoch)
            }
            (Mode::Master { ip, .. }, ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", ..]) => {
                format!("*2\r\n{}{}", bulk(&ip.to_string()), bulk("6379"))
            }
            (_, ["SUBSCRIBE", ..]) => {
                let mut out = String::new();
                for (i, ch) in args[1..].iter().enumerate() {
                    out += &format!("*3\r\n{}{}:{}\r\n", bulk("subscribe"), bulk(ch), i + 1);
                }
                if mode == Mode::Garbage {
                    for (ch, payload) in GARBAGE_EVENTS {
                        out += &format!("*3\r\n{}{}{}", bulk("message"), bulk(ch), bulk(payload));
                    }
                }
                out
            }
            (_, ["PING", ..]) => "+PONG\r\n".to_owned(),
            (_, ["SENTINEL", ..]) => "-ERR Unknown sentinel subcommand\r\n".to_owned(),
            _ => "+OK\r\n".to_owned(),
        };
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SentinelConfig;
    use crate::sentinel::conn::query;

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
