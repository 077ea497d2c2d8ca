//! Network namespaces for tests, benchmarks and the lab: [`Netns`] (one namespace, deleted on drop) and
//! [`Lab`] (several "hosts" on one bridge, like CVMs on a VPC subnet).
//!
//! Owns creating and removing namespaces and the links in them, and running code or processes inside them.
//! Uses the `ip` tool (iproute2) for set-up, which is fine for a test bed; the agent's own code never does.
//! Does not own what runs inside (redis, the agent, captures): see the callers.
//!
//! Cleanup: every namespace is deleted when its guard drops, also while a failing test unwinds; processes
//! still running inside are killed first (a process keeps its namespace alive after `ip netns delete`), and
//! links inside go with the namespace. Names are `hvt-<prefix>-<pid>-<counter>`, unique across parallel tests
//! and test binaries; namespaces left behind by a test process that was killed outright (no unwinding) are
//! swept by the next process that creates one. Everything here needs root.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, anyhow, bail, ensure};

/// Every namespace name starts with this, so the stale sweep never touches anything else.
const MARKER: &str = "hvt";
/// Where `ip netns` keeps its namespace handles.
const NETNS_DIR: &str = "/run/netns";

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP: std::sync::Once = std::sync::Once::new();

/// A network namespace created for a test; deleted (and its processes killed) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `hvt-<prefix>-<pid>-<n>` with its loopback up. `prefix`: 1..=16 of `[a-z0-9-]`.
    ///
    /// Fails (naming the cause) when not root or when `ip` is missing.
    pub fn new(prefix: &str) -> Result<Self> {
        ensure!(
            (1..=16).contains(&prefix.len())
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "netns prefix {prefix:?} must be 1 to 16 characters of a-z, 0-9 and '-'"
        );
        SWEEP.call_once(sweep_stale);
        let name = format!(
            "{MARKER}-{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name]).with_context(|| {
            format!("creating network namespace {name} (tests need root and iproute2's `ip`)")
        })?;
        // From here on the guard exists, so a failure below still deletes the namespace.
        let ns = Netns { name };
        ns.link_set("lo", true)?;
        Ok(ns)
    }

    /// The namespace name (for `ip netns exec`, `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace handle file, `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n <name> <args>`; returns its stdout, or an error with the command and its stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec <name> <program>`). Add arguments,
    /// environment and stdio as usual. Processes still running when the `Netns` drops are killed.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a fresh OS thread that has entered the namespace, and returns its result. Sockets `f`
    /// opens (netlink, packet, TCP) belong to the namespace. A panic in `f` is re-raised here.
    ///
    /// Panics if the thread cannot enter the namespace (not root); see [`Self::try_run`].
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        self.try_run(f)
            .unwrap_or_else(|e| panic!("running in network namespace {}: {e:#}", self.name))
    }

    /// Like [`Self::run`], but an error when entering the namespace fails.
    pub fn try_run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let handle = self.open_handle()?;
        std::thread::scope(|s| {
            let thread = std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(s, move || -> Result<R> {
                    enter(&handle, &self.name)?;
                    drop(handle);
                    Ok(f())
                })
                .context("spawning a thread")?;
            match thread.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs the future made by `f` to completion on a current-thread tokio runtime (time and I/O enabled) on
    /// a fresh thread inside the namespace. Everything the future opens lives in the namespace; tasks it
    /// spawns end with it.
    pub fn block_on<F, Fut>(&self, f: F) -> Fut::Output
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future,
        Fut::Output: Send,
    {
        self.run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a current-thread tokio runtime")
                .block_on(f())
        })
    }

    /// A multi-thread tokio runtime whose worker and blocking threads all run inside the namespace.
    ///
    /// Only tasks run on those threads: put work in with `rt.spawn(..)`. `rt.block_on(fut)` runs `fut`
    /// itself on the *calling* thread, outside the namespace (tasks it spawns are inside).
    pub fn runtime(&self, workers: usize) -> Result<tokio::runtime::Runtime> {
        // Check once that entering works, so the thread-start hook below cannot fail.
        self.try_run(|| ())?;
        let handle = Arc::new(self.open_handle()?);
        let name = self.name.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .enable_all()
            .thread_name(format!("netns-{name}"))
            .on_thread_start(move || {
                if let Err(e) = enter(&handle, &name) {
                    panic!("tokio thread cannot enter network namespace {name}: {e:#}");
                }
            })
            .build()
            .context("building a tokio runtime")
    }

    /// Creates a veth pair with both ends `a` and `b` in this namespace, both up. (There is no `dummy`
    /// module here; a veth end is the stand-in for a NIC, and the other end is where captures listen.)
    pub fn veth_pair_inside(&self, a: &str, b: &str) -> Result<()> {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        self.link_set(a, true)?;
        self.link_set(b, true)
    }

    /// Adds `cidr` (e.g. `198.18.0.2/24`) to `ifname`.
    pub fn add_addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        self.ip(&["addr", "add", cidr, "dev", ifname]).map(drop)
    }

    /// Removes `cidr` from `ifname` (to simulate an address removed behind the agent's back).
    pub fn del_addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        self.ip(&["addr", "del", cidr, "dev", ifname]).map(drop)
    }

    /// Sets `ifname` up.
    pub fn set_up(&self, ifname: &str) -> Result<()> {
        self.link_set(ifname, true)
    }

    /// Sets `ifname` up or down (down: a link-loss fault).
    pub fn link_set(&self, ifname: &str, up: bool) -> Result<()> {
        self.ip(&["link", "set", "dev", ifname, if up { "up" } else { "down" }])
            .map(drop)
    }

    /// Creates bridge `name` in this namespace, up.
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        self.ip(&["link", "add", name, "type", "bridge"])?;
        self.link_set(name, true)
    }

    /// Connects `other` to bridge `bridge` of this namespace: a veth pair whose end `port` is here, attached
    /// to the bridge, and whose end `other_if` is in `other`; both ends up.
    pub fn attach(&self, bridge: &str, port: &str, other: &Netns, other_if: &str) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            other_if,
            "netns",
            &other.name,
        ])?;
        self.ip(&["link", "set", "dev", port, "master", bridge])?;
        self.link_set(port, true)?;
        other.link_set(other_if, true)
    }

    /// The MAC address of `ifname`.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let out = self.ip(&["-j", "link", "show", "dev", ifname])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).context("parsing `ip -j link` output")?;
        let s = v[0]["address"]
            .as_str()
            .ok_or_else(|| anyhow!("no address for {ifname} in {out}"))?;
        parse_mac(s)
    }

    /// The IPv4 addresses of `ifname` as `addr/prefix`, in kernel order, read with `ip -j -4 addr` (a check
    /// that does not depend on the agent's netlink code).
    pub fn ipv4_addrs(&self, ifname: &str) -> Result<Vec<String>> {
        let out = self.ip(&["-j", "-4", "addr", "show", "dev", ifname])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).context("parsing `ip -j addr` output")?;
        let mut addrs = Vec::new();
        for info in v[0]["addr_info"].as_array().into_iter().flatten() {
            let local = info["local"]
                .as_str()
                .ok_or_else(|| anyhow!("no local in {info}"))?;
            let prefix = info["prefixlen"]
                .as_u64()
                .ok_or_else(|| anyhow!("no prefixlen in {info}"))?;
            addrs.push(format!("{local}/{prefix}"));
        }
        Ok(addrs)
    }

    /// PIDs of the processes inside the namespace.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let out = run_ip(&["netns", "pids", &self.name])?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    fn open_handle(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what runs inside first: a live process keeps the namespace (and its veths) alive.
        let me = std::process::id() as i32;
        match self.pids() {
            Ok(pids) => {
                for pid in pids.into_iter().filter(|p| *p != me) {
                    // SAFETY: kill(2) with a pid listed as living in our own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            Err(e) => eprintln!("netns {}: listing processes failed: {e:#}", self.name),
        }
        if let Err(e) = run_ip(&["netns", "delete", &self.name]) {
            eprintln!("netns {}: delete failed: {e:#}", self.name);
        }
    }
}

/// Enters the namespace behind `handle` on the calling thread.
fn enter(handle: &File, name: &str) -> Result<()> {
    // SAFETY: setns(2) with a valid descriptor of a network namespace; affects only this thread.
    let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!(
            "setns into {name} failed: {} (needs root)",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn run_ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{s:?} is not a MAC address"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow!("{s:?} is not a 6-byte MAC address"))
}

/// Deletes namespaces of ours whose creating process is gone (killed before its guards could run).
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = stale_owner(&name) else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = run_ip(&["netns", "delete", &name]);
        }
    }
}

/// The creating pid of a namespace name of ours (`hvt-<prefix>-<pid>-<n>`), if it is one.
fn stale_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(MARKER)?.strip_prefix('-')?;
    let mut parts = rest.rsplitn(3, '-');
    let _counter: u32 = parts.next()?.parse().ok()?;
    let pid: u32 = parts.next()?.parse().ok()?;
    let _prefix = parts.next().filter(|p| !p.is_empty())?;
    Some(pid)
}

/// A host in a [`Lab`]: its namespace, its NIC name (`eth0`), address and MAC.
#[derive(Debug)]
pub struct LabHost {
    /// The name given to [`LabBuilder::host`].
    pub name: String,
    /// The host's namespace.
    pub ns: Netns,
    /// The NIC inside `ns` (always `eth0`).
    pub ifname: String,
    /// The NIC's address, `addr/prefix`.
    pub cidr: String,
    /// The NIC's MAC.
    pub mac: [u8; 6],
}

/// Several hosts on one L2 segment: each host is a namespace with an `eth0` whose veth peer is a port of
/// bridge `br0` in a separate "switch" namespace. The switch can have its own address on `br0` (to host the
/// fake cloud where every host can reach it) and is the place to watch all ARP on the segment
/// ([`havip_agent::net::ArpCapture`] on `br0` inside [`Lab::switch`]).
#[derive(Debug)]
pub struct Lab {
    // Hosts first: dropping a host namespace removes its veth pair, then the switch goes.
    hosts: Vec<LabHost>,
    switch: Netns,
}

/// Builds a [`Lab`].
#[derive(Debug, Clone)]
pub struct LabBuilder {
    prefix: String,
    switch_cidr: Option<String>,
    hosts: Vec<(String, String)>,
}

impl Lab {
    /// The bridge name in the switch namespace.
    pub const BRIDGE: &'static str = "br0";
    /// Every host's NIC name.
    pub const HOST_IF: &'static str = "eth0";

    /// A lab whose namespace names start with `hvt-<prefix>`.
    pub fn builder(prefix: &str) -> LabBuilder {
        LabBuilder {
            prefix: prefix.to_owned(),
            switch_cidr: None,
            hosts: Vec::new(),
        }
    }

    /// The switch namespace (holds `br0`).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// The host called `name`, if any.
    pub fn host(&self, name: &str) -> Option<&LabHost> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// All hosts, in the order they were added.
    pub fn hosts(&self) -> &[LabHost] {
        &self.hosts
    }
}

impl LabBuilder {
    /// Adds host `name` (1..=8 of `[a-z0-9]`) with `cidr` (e.g. `198.18.1.11/24`) on its `eth0`.
    pub fn host(mut self, name: &str, cidr: &str) -> Self {
        self.hosts.push((name.to_owned(), cidr.to_owned()));
        self
    }

    /// Gives the switch namespace `cidr` on `br0`.
    pub fn switch_addr(mut self, cidr: &str) -> Self {
        self.switch_cidr = Some(cidr.to_owned());
        self
    }

    /// Creates the namespaces, the bridge and the links. On error everything created so far is removed.
    pub fn build(self) -> Result<Lab> {
        let switch = Netns::new(&format!("{}-sw", trimmed(&self.prefix, 13)))?;
        switch.add_bridge(Lab::BRIDGE)?;
        if let Some(cidr) = &self.switch_cidr {
            switch.add_addr(Lab::BRIDGE, cidr)?;
        }
        let mut hosts = Vec::new();
        for (i, (name, cidr)) in self.hosts.into_iter().enumerate() {
            ensure!(
                (1..=8).contains(&name.len())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "lab host name {name:?} must be 1 to 8 characters of a-z and 0-9"
            );
            let ns = Netns::new(&format!("{}-{name}", trimmed(&self.prefix, 7)))?;
            switch.attach(Lab::BRIDGE, &format!("p{i}"), &ns, Lab::HOST_IF)?;
            ns.add_addr(Lab::HOST_IF, &cidr)?;
            let mac = ns.mac(Lab::HOST_IF)?;
            hosts.push(LabHost {
                name,
                ns,
                ifname: Lab::HOST_IF.to_owned(),
                cidr,
                mac,
            });
        }
        Ok(Lab { hosts, switch })
    }
}

/// At most `n` leading characters (the result is still checked by [`Netns::new`]).
fn trimmed(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_owner_reads_the_pid_of_our_names_only() {
        assert_eq!(stale_owner("hvt-net-kernel-1234-7"), Some(1234));
        assert_eq!(stale_owner("hvt-x-1-0"), Some(1));
        assert_eq!(stale_owner("hvt--1-0"), None);
        assert_eq!(stale_owner("other-x-1-0"), None);
        assert_eq!(stale_owner("hvt-x-abc-0"), None);
    }

    #[test]
    fn parses_macs_strictly() {
        assert_eq!(
            parse_mac("52:54:00:ab:cd:ef").unwrap(),
            [0x52, 0x54, 0, 0xab, 0xcd, 0xef]
        );
        assert!(parse_mac("52:54:00:ab:cd").is_err());
        assert!(parse_mac("zz:54:00:ab:cd:ef").is_err());
    }
}
