//! Shared set-up for the claim and `migrate-havip` tests and the `migrate` benchmark: a network namespace
//! with veth "NICs", the fake cloud listening inside it, GARP watchers, node configs, running the binary, and
//! a netlink address-event monitor (to see exactly when, and how often, the kernel got the VIP).
//!
//! Included with `mod migrate_support;` from `tests/*.rs` and with `#[path]` from `benches/migrate.rs`; not
//! every user needs every helper.
#![allow(dead_code)]

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use havip_agent::claim::Claimer;
use havip_agent::cloud::VpcClient;
use havip_agent::config::{
    AnnounceConfig, CloudConfig, Dur, HavipConfig, InstanceType, Scope, VipCidr,
};
use havip_agent::credentials::{Credential, CredentialProvider};
use havip_agent::net::LocalNet;
use havip_agent::secret::Secret;
use havip_testkit::fake::{FakeCloud, GarpSeen, GarpWatch, watch_garp};
use havip_testkit::testbed::fake_sentinel::{FakeSentinel, Mode};
use havip_testkit::testbed::netns::Netns;

/// Sentinel-deployment tests (`migrate_sentinel`, `migrate_replay`): node `i`'s NIC in the namespace.
pub fn node_nic(i: usize) -> String {
    format!("n{i}")
}

/// Node `i`'s NIC's veth peer (where its GARPs are watched).
pub fn node_peer(i: usize) -> String {
    format!("p{i}")
}

/// Node `i`'s instance id in the fake cloud.
pub fn node_instance(i: usize) -> String {
    format!("ins-{i}")
}

/// Node `i`'s Redis address (loopback inside the namespace, announced to Sentinel).
pub fn node_address(i: usize) -> std::net::IpAddr {
    format!("127.0.0.{}", 11 + i).parse().unwrap()
}

/// The key pair the fake accepts.
pub const SECRET_ID: &str = "AKIDmigratetest0001";
/// Its secret half (never printed by the code under test).
pub const SECRET_KEY: &str = "migrate-test-secret-key-0001";
/// The HAVIP every test moves.
pub const HAVIP_ID: &str = "havip-mig00001";
/// The Sentinel master name that maps to it.
pub const MASTER: &str = "mymaster";
/// The VIP.
pub const VIP: &str = "198.18.0.1/24";
/// A different address that has the VIP's text as a prefix.
pub const VIP_10: &str = "198.18.0.10/24";

/// The VIP as a `VipCidr`.
pub fn vip() -> VipCidr {
    VIP.parse().expect("test vip")
}

/// The VIP address.
pub fn vip_addr() -> Ipv4Addr {
    vip().addr
}

/// A generous bound for polling, never a timing assertion.
pub fn patience() -> Duration {
    Duration::from_secs(30)
}

/// A namespace with one veth pair per `(nic, peer)`, all up.
pub fn ns_with_nics(prefix: &str, pairs: &[(&str, &str)]) -> Netns {
    let ns = Netns::new(prefix).expect("creating a network namespace (run the tests as root)");
    for (nic, peer) in pairs {
        ns.veth_pair_inside(nic, peer)
            .unwrap_or_else(|e| panic!("creating veth {nic}/{peer}: {e:#}"));
    }
    ns
}

/// Starts the fake cloud on 127.0.0.1 of the calling thread's network namespace (call it inside the
/// namespace) and registers the test key.
pub async fn fake_here() -> FakeCloud {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding the fake cloud's listener on 127.0.0.1 in the namespace");
    let fake = FakeCloud::start_on(listener).await;
    fake.add_key(SECRET_ID, SECRET_KEY);
    fake
}

/// Starts the fake cloud inside `ns` (from any thread).
pub async fn fake_in(ns: &Netns) -> FakeCloud {
    let listener = ns.run(|| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("binding the fake cloud's listener on 127.0.0.1 in the namespace")
    });
    let fake = FakeCloud::start_on(listener).await;
    fake.add_key(SECRET_ID, SECRET_KEY);
    fake
}

/// Watches `peer` (in `ns`) for GARPs, moving holders in `fake` like the VPC does.
/// Three fake Sentinels listening on 127.0.0.1 inside `ns`, all in `mode`.
#[allow(dead_code)] // Not every binary including this module starts Sentinels.
pub fn fake_sentinels_on(ns: &Netns, mode: Mode) -> Vec<FakeSentinel> {
    (0..3)
        .map(|_| {
            let listener = ns.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
            FakeSentinel::start_on(listener, mode).unwrap()
        })
        .collect()
}

/// Sentinels naming `ip` as the master, at `epoch`.
#[allow(dead_code)]
pub fn master_at(ip: &str, epoch: u64) -> Mode {
    Mode::Master {
        ip: ip.parse().unwrap(),
        epoch,
    }
}

pub fn watch_in(ns: &Netns, fake: &FakeCloud, peer: &str) -> GarpWatch {
    let fake = fake.clone();
    ns.run(move || watch_garp(fake, peer).unwrap_or_else(|e| panic!("garp watcher on {peer}: {e}")))
}

/// Waits until `watch` has seen a GARP for `ip` at index `from` or later; returns what it saw from `from` up
/// to (not including) that frame, and the index after it. Used as a barrier: frames sent before the marker
/// are read before it (one socket, in order).
pub fn seen_until(watch: &GarpWatch, from: usize, ip: Ipv4Addr) -> (Vec<GarpSeen>, usize) {
    let deadline = Instant::now() + patience();
    loop {
        let seen = watch.seen();
        if let Some(i) = seen.iter().skip(from).position(|s| s.ip == ip) {
            return (seen[from..from + i].to_vec(), from + i + 1);
        }
        assert!(
            Instant::now() < deadline,
            "the garp watcher on {} never saw {ip}: {seen:?}",
            watch.interface()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `cond` until it is true or [`patience`] runs out; panics with `what` then.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience();
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `[cloud]` config pointing at `endpoint`.
pub fn cloud_config(endpoint: &str, timeout: Duration) -> CloudConfig {
    CloudConfig {
        region: "ap-guangzhou".into(),
        endpoint: Some(endpoint.to_owned()),
        metadata_endpoint: "http://127.0.0.1:9/latest/meta-data/".into(),
        timeout: Dur(timeout),
        secret_id: None,
        secret_key: None,
        rate_limit: havip_agent::config::DEFAULT_RATE_LIMIT,
        keep_warm: Dur::from_secs(30),
    }
}

/// A VPC client for the fake with the test key.
pub fn vpc_client(endpoint: &str) -> VpcClient {
    let creds = CredentialProvider::fixed(Credential {
        secret_id: Secret::new(SECRET_ID),
        secret_key: Secret::new(SECRET_KEY),
        token: None,
    });
    VpcClient::new(
        &cloud_config(endpoint, Duration::from_secs(2)),
        creds,
        havip_agent::clock::system(),
    )
    .expect("a vpc client for the fake")
}

/// The `[[havip]]` entry.
pub fn havip_config(scope: Scope) -> HavipConfig {
    HavipConfig {
        master: MASTER.into(),
        havip_id: HAVIP_ID.into(),
        vip: vip(),
        scope,
        eip: None,
    }
}

/// Announce settings for tests: 4 rounds over 300 ms.
pub fn announce() -> AnnounceConfig {
    AnnounceConfig {
        burst: 4,
        spread: Dur::from_millis(300),
        refresh_interval: Dur::from_secs(10),
    }
}

/// A claimer for instance `instance_id` on `net`, talking to the fake at `endpoint`.
pub fn claimer(net: Arc<dyn LocalNet>, instance_id: &str, endpoint: &str) -> Claimer {
    Claimer::new(
        Some(vpc_client(endpoint)),
        net,
        instance_id,
        InstanceType::Cvm,
        announce(),
        Duration::from_secs(2),
    )
}

/// One node's config file for `migrate-havip`.
#[derive(Debug, Clone)]
pub struct NodeFile {
    /// `node.instance_id`.
    pub instance_id: String,
    /// `node.address`.
    pub address: String,
    /// `node.interface`.
    pub interface: String,
    /// `cloud.endpoint`.
    pub endpoint: String,
    /// `cloud.metadata_endpoint` (default: a closed port).
    pub metadata: String,
    /// `cloud.timeout`.
    pub cloud_timeout: String,
    /// `claim.deadline`.
    pub deadline: String,
    /// `claim.lock_dir`.
    pub lock_dir: PathBuf,
    /// `sentinel.addresses`.
    pub sentinels: Vec<String>,
    /// `havip.scope`.
    pub scope: &'static str,
}

impl NodeFile {
    /// Defaults for a single-node test: `ins-a` at 198.18.0.2 on `eth0`.
    pub fn new(endpoint: &str, lock_dir: &Path) -> Self {
        Self {
            instance_id: "ins-a".into(),
            address: "198.18.0.2".into(),
            interface: "eth0".into(),
            endpoint: endpoint.to_owned(),
            metadata: "http://127.0.0.1:9/latest/meta-data/".into(),
            cloud_timeout: "1s".into(),
            deadline: "10s".into(),
            lock_dir: lock_dir.to_owned(),
            sentinels: vec!["127.0.0.1:26379".into()],
            scope: "inclusive",
        }
    }

    /// The TOML text.
    pub fn toml(&self) -> String {
        let sentinels: Vec<String> = self.sentinels.iter().map(|s| format!("{s:?}")).collect();
        format!(
            r#"[cloud]
region = "ap-guangzhou"
endpoint = "{endpoint}"
metadata_endpoint = "{metadata}"
timeout = "{timeout}"

[node]
instance_id = "{instance}"
address = "{address}"
interface = "{interface}"

[sentinel]
addresses = [{sentinels}]

[[havip]]
master = "{MASTER}"
havip_id = "{HAVIP_ID}"
vip = "{VIP}"
scope = "{scope}"

[claim]
deadline = "{deadline}"
lock_dir = "{lock_dir}"

[announce]
burst = 4
spread = "300ms"
"#,
            endpoint = self.endpoint,
            metadata = self.metadata,
            timeout = self.cloud_timeout,
            instance = self.instance_id,
            address = self.address,
            interface = self.interface,
            sentinels = sentinels.join(", "),
            scope = self.scope,
            deadline = self.deadline,
            lock_dir = self.lock_dir.display(),
        )
    }

    /// Writes the file (mode 600) as `dir/<name>` and returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, self.toml()).expect("writing the test config");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

/// The `migrate-havip` binary under test.
pub fn migrate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_migrate-havip")
}

/// What a finished `migrate-havip` run left behind.
#[derive(Debug, Clone)]
pub struct Run {
    /// The exit code (None: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error (the logs).
    pub stderr: String,
}

impl Run {
    /// The message of the last error line in the logs: the command reports a failure once, as its last
    /// `ERROR` line (`<timestamp> ERROR <message>` off a terminal).
    pub fn final_error(&self) -> Option<&str> {
        self.stderr
            .lines()
            .rev()
            .find_map(|l| l.split_once(" ERROR ").map(|(_, m)| m.trim_start()))
    }

    /// Both streams, for assertion messages.
    pub fn show(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The environment every run starts from: nothing of the caller's cloud or config settings leaks in.
pub fn clean_env(cmd: &mut Command) {
    for k in [
        "HAVIP_AGENT_CONFIG",
        "TENCENTCLOUD_SECRET_ID",
        "TENCENTCLOUD_SECRET_KEY",
        "TENCENTCLOUD_TOKEN",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("HAVIP_LOG", "info,havip_agent=debug");
}

/// `migrate-havip <args>` inside `ns` (`ip netns exec`), with `env` added to a clean environment.
pub fn migrate_cmd(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = ns.command(migrate_bin());
    cmd.args(args);
    clean_env(&mut cmd);
    cmd.envs(env.iter().copied());
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs the command to completion.
pub fn run(mut cmd: Command) -> Run {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The credentials in the environment, as Sentinel's environment would carry them.
pub fn cred_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("TENCENTCLOUD_SECRET_ID", SECRET_ID),
        ("TENCENTCLOUD_SECRET_KEY", SECRET_KEY),
    ]
}

/// One address change seen by [`AddrMonitor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrEvent {
    /// When the monitor read it.
    pub at: Instant,
    /// `RTM_NEWADDR` (true) or `RTM_DELADDR` (false).
    pub added: bool,
    /// The interface index.
    pub ifindex: u32,
    /// The IPv4 address (`IFA_LOCAL`, else `IFA_ADDRESS`).
    pub addr: Ipv4Addr,
}

/// Listens to the kernel's IPv4 address notifications (`RTMGRP_IPV4_IFADDR`) of one network namespace on a
/// thread of its own, timestamping each on arrival. Independent of the agent's netlink code.
pub struct AddrMonitor {
    events: Arc<Mutex<Vec<AddrEvent>>>,
    stop_tx: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AddrMonitor {
    /// Starts listening in `ns`.
    pub fn start(ns: &Netns) -> AddrMonitor {
        ns.run(|| Self::start_here().expect("opening a netlink address monitor"))
    }

    /// Starts listening in the calling thread's namespace.
    pub fn start_here() -> io::Result<AddrMonitor> {
        // SAFETY: plain socket(2); checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = libc::RTMGRP_IPV4_IFADDR as u32;
        // SAFETY: valid sockaddr_nl and its size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fds = [0; 2];
        // SAFETY: room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors we own.
        let (stop_rx, stop_tx) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let thread = std::thread::spawn(move || monitor_loop(&sock, &stop_rx, &ev));
        Ok(AddrMonitor {
            events,
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<AddrEvent> {
        self.events.lock().unwrap().clone()
    }

    /// The events for `addr`.
    pub fn events_for(&self, addr: Ipv4Addr) -> Vec<AddrEvent> {
        self.events()
            .into_iter()
            .filter(|e| e.addr == addr)
            .collect()
    }

    /// Waits (up to `timeout`) for an event matching `pred` and returns the first one.
    pub fn wait(&self, timeout: Duration, pred: impl Fn(&AddrEvent) -> bool) -> Option<AddrEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Returns once every address event that happened in `ns` before the call has been read: adds and
    /// removes a marker address on `lo` and waits for both notifications (one socket, in order).
    pub fn settle(&self, ns: &Netns) {
        static N: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = Ipv4Addr::new(198, 19, 255, n);
        let cidr = format!("{marker}/32");
        let from = self.events().len();
        ns.add_addr("lo", &cidr)
            .expect("adding the monitor's marker address");
        ns.del_addr("lo", &cidr)
            .expect("removing the monitor's marker address");
        let deadline = Instant::now() + patience();
        while self.events()[from..]
            .iter()
            .filter(|e| e.addr == marker)
            .count()
            < 2
        {
            assert!(
                Instant::now() < deadline,
                "the address monitor never saw its marker"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// [`Self::settle`], then every event except the markers.
    pub fn settled(&self, ns: &Netns) -> Vec<AddrEvent> {
        self.settle(ns);
        self.events()
            .into_iter()
            .filter(|e| e.addr.octets()[..3] != [198, 19, 255])
            .collect()
    }

    /// Forgets the events so far.
    pub fn clear(&self) {
        self.events.lock().unwrap().clear();
    }
}

impl Drop for AddrMonitor {
    fn drop(&mut self) {
        drop(self.stop_tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn monitor_loop(sock: &OwnedFd, stop_rx: &OwnedFd, events: &Mutex<Vec<AddrEvent>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut pfds = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop_rx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if pfds[1].revents != 0 {
            return;
        }
        if pfds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        // SAFETY: buf is valid for its length.
        let len = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let at = Instant::now();
        if len <= 0 {
            continue;
        }
        let parsed = parse_addr_messages(&buf[..len as usize], at);
        events.lock().unwrap().extend(parsed);
    }
}

/// Parses `RTM_NEWADDR`/`RTM_DELADDR` messages for IPv4 out of one netlink datagram.
fn parse_addr_messages(mut b: &[u8], at: Instant) -> Vec<AddrEvent> {
    let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let align = |n: usize| (n + 3) & !3;
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32_at(b, 0) as usize;
        if len < 16 || len > b.len() {
            break;
        }
        let ty = u16_at(b, 4);
        let msg = &b[16..len];
        if (ty == libc::RTM_NEWADDR || ty == libc::RTM_DELADDR)
            && msg.len() >= 8
            && msg[0] == libc::AF_INET as u8
        {
            let ifindex = u32_at(msg, 4);
            let (mut local, mut address) = (None, None);
            let mut attrs = &msg[8..];
            while attrs.len() >= 4 {
                let alen = u16_at(attrs, 0) as usize;
                let aty = u16_at(attrs, 2);
                if alen < 4 || alen > attrs.len() {
                    break;
                }
                if alen == 8 {
                    let ip = Ipv4Addr::new(attrs[4], attrs[5], attrs[6], attrs[7]);
                    match aty {
                        1 => address = Some(ip),
                        2 => local = Some(ip),
                        _ => {}
                    }
                }
                attrs = &attrs[align(alen).min(attrs.len())..];
            }
            if let Some(addr) = local.or(address) {
                out.push(AddrEvent {
                    at,
                    added: ty == libc::RTM_NEWADDR,
                    ifindex,
                    addr,
                });
            }
        }
        b = &b[align(len).min(b.len())..];
    }
    out
}
