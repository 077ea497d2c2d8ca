//! The lab's instruments besides the client: every Sentinel's events ([`SentinelEvents`]) and the VIP's
//! binding on every host over time ([`VipMonitor`]).
//!
//! Owns the subscriptions and monitor processes and their records, all timed with the wall clock the rest of
//! the lab uses. Sentinel events are read from the switch namespace (`PSUBSCRIBE *` on each Sentinel,
//! reconnecting on error); VIP bindings come from `ip -o monitor address` in each host namespace, each line
//! timed when it arrives (netlink delivers it as the kernel changes the address). It does not interpret the
//! records (see `lab::report`). Everything stops and is reaped on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;

use havip_testkit::testbed::netns::Netns;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One Sentinel event as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelEvent {
    /// When it arrived.
    pub at: SystemTime,
    /// Which Sentinel published it (node index).
    pub sentinel: usize,
    /// The channel (the event name, e.g. `+switch-master`).
    pub channel: String,
    /// The payload.
    pub payload: String,
}

/// Subscribes to every event of every Sentinel, from inside a namespace.
#[derive(Debug)]
pub struct SentinelEvents {
    events: Arc<Mutex<Vec<SentinelEvent>>>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl SentinelEvents {
    /// Starts one subscription per address (node order) on a thread inside `ns`, and waits (up to 5 s) until
    /// every one is subscribed, so no event of the run is missed.
    pub fn start(ns: &Netns, sentinels: Vec<SocketAddr>) -> Result<SentinelEvents> {
        let handle = std::fs::File::open(ns.path())
            .with_context(|| format!("opening {}", ns.path().display()))?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<usize>();
        let name = ns.name().to_owned();
        let ev = events.clone();
        let thread = std::thread::Builder::new()
            .name("lab-sentinel-events".into())
            .spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: setns(2) with a valid namespace descriptor; affects only this fresh thread.
                if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    eprintln!(
                        "sentinel events: setns into {name} failed: {}",
                        std::io::Error::last_os_error()
                    );
                    return;
                }
                drop(handle);
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("sentinel events: runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let tasks: Vec<_> = sentinels
                        .into_iter()
                        .enumerate()
                        .map(|(i, addr)| {
                            tokio::spawn(subscribe_loop(
                                i,
                                addr,
                                ev.clone(),
                                stop_rx.clone(),
                                ready_tx.clone(),
                            ))
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            })
            .context("spawning the sentinel event thread")?;
        let me = SentinelEvents {
            events,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        let mut ready = std::collections::BTreeSet::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ready.len() < 3 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match ready_rx.recv_timeout(left) {
                Ok(i) => {
                    ready.insert(i);
                }
                Err(_) => {
                    return Err(anyhow!(
                        "sentinel event subscriptions not ready after 5 s (ready: {ready:?})"
                    ));
                }
            }
        }
        Ok(me)
    }

    /// Every event so far, in arrival order.
    pub fn events(&self) -> Vec<SentinelEvent> {
        lock(&self.events).clone()
    }
}

impl Drop for SentinelEvents {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn subscribe_loop(
    i: usize,
    addr: SocketAddr,
    events: Arc<Mutex<Vec<SentinelEvent>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<usize>,
) {
    let url = format!("redis://{addr}/");
    while !*stop.borrow() {
        let session = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub =
                tokio::time::timeout(Duration::from_millis(500), client.get_async_pubsub())
                    .await
                    .map_err(|_| {
                        redis::RedisError::from((redis::ErrorKind::Io, "connect timed out"))
                    })??;
            pubsub.psubscribe("*").await?;
            let _ = ready.send(i);
            let mut stream = pubsub.on_message();
            while let Some(msg) = stream.next().await {
                let channel = msg.get_channel_name().to_owned();
                if channel.starts_with("__sentinel__") {
                    continue;
                }
                let payload = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                lock(&events).push(SentinelEvent {
                    at: SystemTime::now(),
                    sentinel: i,
                    channel,
                    payload,
                });
            }
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            _ = session => {}
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// An address put on `lo` for a moment to learn that a monitor is listening (outside the lab subnet).
const PROBE_ADDR: &str = "198.19.255.254";

/// A change of the VIP on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipChange {
    /// When the kernel reported it.
    pub at: SystemTime,
    /// The host (node index).
    pub host: usize,
    /// Bound (`true`) or removed.
    pub bound: bool,
}

/// Watches the VIP's binding in every host namespace.
#[derive(Debug)]
pub struct VipMonitor {
    changes: Arc<Mutex<Vec<VipChange>>>,
    children: Vec<Child>,
    readers: Vec<JoinHandle<()>>,
}

impl VipMonitor {
    /// Starts `ip -o monitor address` in each namespace (host index = position) and records changes of
    /// `vip` (`addr/prefix`). The initial state is read after the monitors run, and recorded as a change at
    /// start for every host that already has the VIP.
    ///
    /// Call it from a thread that outlives the monitor (the processes die with it).
    pub fn start(hosts: &[&Netns], ifname: &str, vip: &str) -> Result<VipMonitor> {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let mut me = VipMonitor {
            changes: changes.clone(),
            children: Vec::new(),
            readers: Vec::new(),
        };
        let needle = format!(" inet {vip} ");
        let probe_needle = format!(" inet {PROBE_ADDR}/32 ");
        let (probe_tx, probe_rx) = std::sync::mpsc::channel::<usize>();
        for (i, ns) in hosts.iter().enumerate() {
            let mut cmd = std::process::Command::new("ip");
            cmd.args(["-n", ns.name(), "-o", "monitor", "address"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            havip_testkit::testbed::die_with_parent(&mut cmd);
            let mut child = cmd
                .spawn()
                .context("starting `ip monitor address` (iproute2)")?;
            let stdout = child.stdout.take().expect("piped stdout");
            me.children.push(child);
            let changes = changes.clone();
            let needle = needle.clone();
            let probe_needle = probe_needle.clone();
            let probe_tx = probe_tx.clone();
            let reader = std::thread::Builder::new()
                .name(format!("lab-vip-monitor-{i}"))
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        let at = SystemTime::now();
                        if line.contains(&probe_needle) && !line.starts_with("Deleted") {
                            let _ = probe_tx.send(i);
                            continue;
                        }
                        if !line.contains(&needle) {
                            continue;
                        }
                        let bound = !line.starts_with("Deleted");
                        lock(&changes).push(VipChange { at, host: i, bound });
                    }
                })
                .context("spawning a monitor reader")?;
            me.readers.push(reader);
        }
        // Only read the state once every monitor reports a change (a probe address on `lo`, re-added until
        // seen, since a monitor that is not subscribed yet misses it), so no change can fall in between.
        let probe = format!("{PROBE_ADDR}/32");
        let mut seen = std::collections::BTreeSet::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen.len() < hosts.len() {
            for (i, ns) in hosts.iter().enumerate() {
                if !seen.contains(&i) {
                    let _ = ns.del_addr("lo", &probe);
                    ns.add_addr("lo", &probe)?;
                }
            }
            while let Ok(i) = probe_rx.recv_timeout(Duration::from_millis(50)) {
                seen.insert(i);
            }
            if std::time::Instant::now() > deadline {
                return Err(anyhow!(
                    "`ip monitor address` did not report the probe address within 5 s (hosts seen: {seen:?})"
                ));
            }
        }
        for ns in hosts {
            ns.del_addr("lo", &probe)?;
        }
        let now = SystemTime::now();
        for (i, ns) in hosts.iter().enumerate() {
            if ns.ipv4_addrs(ifname)?.iter().any(|a| a == vip) {
                lock(&changes).push(VipChange {
                    at: now,
                    host: i,
                    bound: true,
                });
            }
        }
        Ok(me)
    }

    /// Every change so far, in arrival order per host.
    pub fn changes(&self) -> Vec<VipChange> {
        let mut c = lock(&self.changes).clone();
        c.sort_by_key(|c| c.at);
        c
    }
}

impl Drop for VipMonitor {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}
