//! The GARP watcher on a real interface: a veth pair inside a network namespace this test creates,
//! a real gratuitous ARP sent by the project's own sender (`net::garp::send_gratuitous`, so the test does
//! not depend on which `arping` flavour is installed), and the fake moving (or not moving) the HAVIP's
//! holder.
//!
//! Needs root (CAP_SYS_ADMIN for `ip netns`, CAP_NET_RAW for the socket) and iproute2; fails naming
//! what is missing otherwise.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use havip_agent::net::garp::send_gratuitous;
use havip_testkit::fake::{FakeCloud, GarpOutcome, GarpSeen, GarpWatch, HavipSpec, watch_garp};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The MAC the sending veth end gets.
const SENDER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
const SENDER_MAC_TEXT: &str = "02:00:5e:00:00:01";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {} (this test needs root)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace with a veth pair `ga` (sender, fixed MAC) <-> `gb` (watched), removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        let name = format!(
            "fakegarp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "add", "ga", "type", "veth", "peer", "name", "gb"]);
        ns.ip(&["link", "set", "ga", "address", SENDER_MAC_TEXT]);
        ns.ip(&["link", "set", "ga", "up"]);
        ns.ip(&["link", "set", "gb", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Starts the watcher on `ifname` from a thread that has entered the namespace.
    fn watch(&self, fake: &FakeCloud, ifname: &str) -> GarpWatch {
        let path = format!("/var/run/netns/{}", self.name);
        let fake = fake.clone();
        let ifname = ifname.to_owned();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on this thread only; the fd is valid for the call.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {path}: {}",
                std::io::Error::last_os_error()
            );
            watch_garp(fake, &ifname).expect("start the garp watcher (needs CAP_NET_RAW)")
        })
        .join()
        .expect("watcher thread")
    }

    /// Sends one gratuitous ARP for `ip` from `ga` (`reply`: the reply form instead of the request).
    fn garp(&self, ip: Ipv4Addr, reply: bool) {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on this thread only; the fd is valid for the call.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {path}: {}",
                std::io::Error::last_os_error()
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(send_gratuitous("ga", SENDER_MAC, ip, reply))
                .expect("send a gratuitous arp (needs CAP_NET_RAW)");
        })
        .join()
        .expect("sender thread");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn wait_for_seen(watch: &GarpWatch, n: usize) -> Vec<GarpSeen> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = watch.seen();
        if seen.len() >= n {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher saw {} gratuitous ARPs, expected {n}: {seen:?}",
            seen.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_garp_from_an_in_range_instance_moves_the_holder() {
    let ns = Netns::new();
    let fake = FakeCloud::start().await;
    fake.add_instance("ins-aaaaaaaa", SENDER_MAC);
    fake.add_havip(
        HavipSpec::new("havip-00000001", VIP)
            .check_associate(true)
            .associate("ins-aaaaaaaa")
            .associate("ins-bbbbbbbb")
            .holder("ins-bbbbbbbb"),
    );
    let watch = ns.watch(&fake, "gb");

    ns.garp(VIP, false);
    let seen = wait_for_seen(&watch, 1);

    assert_eq!(seen[0].mac, SENDER_MAC);
    assert_eq!(seen[0].ip, VIP);
    assert_eq!(seen[0].op, 1, "the request form");
    assert!(seen[0].moved, "{seen:?}");
    let h = fake.havip("havip-00000001").unwrap();
    assert_eq!(h.instance_id.as_deref(), Some("ins-aaaaaaaa"));
    assert!(h.flushed_time.is_some());
    assert_eq!(fake.moves().len(), 1);
}

#[tokio::test]
async fn a_garp_from_an_out_of_range_instance_is_ignored_while_check_associate_is_on() {
    let ns = Netns::new();
    let fake = FakeCloud::start().await;
    fake.add_instance("ins-cccccccc", SENDER_MAC);
    fake.add_havip(
        HavipSpec::new("havip-00000001", VIP)
            .check_associate(true)
            .associate("ins-bbbbbbbb")
            .holder("ins-bbbbbbbb"),
    );
    let watch = ns.watch(&fake, "gb");

    ns.garp(VIP, false);
    let ignored = wait_for_seen(&watch, 1);
    let holder_after_ignored = fake.havip("havip-00000001").unwrap().instance_id;
    fake.set_check_associate("havip-00000001", false);
    ns.garp(VIP, true);
    let seen = wait_for_seen(&watch, 2);

    assert!(!ignored[0].moved, "{ignored:?}");
    assert_eq!(holder_after_ignored.as_deref(), Some("ins-bbbbbbbb"));
    assert_eq!(seen[1].op, 2, "the reply form");
    assert!(
        seen[1].moved,
        "with CheckAssociate off the GARP moves the holder: {seen:?}"
    );
    assert_eq!(
        fake.havip("havip-00000001").unwrap().instance_id.as_deref(),
        Some("ins-cccccccc")
    );
}

#[tokio::test]
async fn the_watcher_sees_a_garp_crossing_a_bridge() {
    // The lab's shape: hosts on veth ports of one bridge, the watcher on the bridge device itself.
    let ns = Netns::new();
    ns.ip(&["link", "add", "gbr", "type", "bridge"]);
    ns.ip(&["link", "set", "gb", "master", "gbr"]);
    ns.ip(&["link", "set", "gbr", "up"]);
    let fake = FakeCloud::start().await;
    fake.add_instance("ins-aaaaaaaa", SENDER_MAC);
    fake.add_havip(
        HavipSpec::new("havip-00000001", VIP)
            .check_associate(true)
            .associate("ins-aaaaaaaa"),
    );
    let watch = ns.watch(&fake, "gbr");

    ns.garp(VIP, true);
    let seen = wait_for_seen(&watch, 1);

    assert!(seen[0].moved, "{seen:?}");
    assert_eq!(
        fake.havip("havip-00000001").unwrap().instance_id.as_deref(),
        Some("ins-aaaaaaaa")
    );
}

#[tokio::test]
async fn with_a_move_delay_the_watcher_records_a_scheduled_move_and_the_holder_follows_later() {
    let ns = Netns::new();
    let fake = FakeCloud::start().await;
    fake.add_instance("ins-aaaaaaaa", SENDER_MAC);
    fake.add_havip(
        HavipSpec::new("havip-00000001", VIP)
            .check_associate(true)
            .associate("ins-aaaaaaaa")
            .associate("ins-bbbbbbbb")
            .holder("ins-bbbbbbbb"),
    );
    fake.set_move_delay(Duration::from_millis(300)).unwrap();
    let (tx, moves) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    fake.on_move(move |mv| {
        let _ = tx.lock().unwrap().send(mv.clone());
    });
    let watch = ns.watch(&fake, "gb");

    ns.garp(VIP, false);
    let seen = wait_for_seen(&watch, 1);
    let mv = moves
        .recv_timeout(Duration::from_secs(10))
        .expect("the scheduled move is applied");

    let GarpOutcome::MoveScheduled { to, due, .. } = &seen[0].outcome else {
        panic!("the GARP only schedules the move: {seen:?}");
    };
    assert_eq!(to, "ins-aaaaaaaa");
    assert!(!seen[0].moved, "{seen:?}");
    assert!(mv.at >= *due, "applied at {:?}, due {due:?}", mv.at);
    assert_eq!(
        fake.havip("havip-00000001").unwrap().instance_id.as_deref(),
        Some("ins-aaaaaaaa")
    );
}

#[tokio::test]
async fn the_watcher_names_a_missing_interface() {
    let fake = FakeCloud::start().await;

    let err = watch_garp(fake, "nosuchif0").unwrap_err();

    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("nosuchif0"), "{err}");
}
