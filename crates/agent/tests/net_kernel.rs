//! KernelNet against the real kernel, each test in its own network namespace with a veth pair
//! (`eth0` = the NIC the agent uses, `peer0` = the wire where captures listen). Addresses: 198.18.0.0/15.
//! Needs root and iproute2; fails with a message naming what is missing otherwise.

use std::io::Write;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use havip_agent::config::VipCidr;
use havip_agent::net::{
    ArpCapture, ArpOp, CapturedFrame, Change, KernelNet, LocalNet, NetError, announce_burst,
};
use havip_testkit::testbed::netns::Netns;
use tokio::time::Instant;

const VIP: &str = "198.18.0.1/24";
const VIP_10: &str = "198.18.0.10/24";

fn cidr(s: &str) -> VipCidr {
    s.parse().expect("test cidr")
}

/// A namespace with `eth0` <-> `peer0`, both up.
fn nic_ns(test: &str) -> Netns {
    let ns = Netns::new(test).expect("creating a network namespace (run the tests as root)");
    ns.veth_pair_inside("eth0", "peer0")
        .expect("creating veth eth0/peer0");
    ns.add_addr("eth0", NODE_ADDR).unwrap();
    ns
}

/// The node's own address on `eth0`: a VIP is bound only inside the subnet of an address already on the
/// interface (`net::check_vip_subnet`), as on a real VPC NIC.
const NODE_ADDR: &str = "198.18.0.200/24";

/// The addresses on `eth0` besides [`NODE_ADDR`].
fn vips(ns: &Netns) -> Vec<String> {
    let mut a = ns.ipv4_addrs("eth0").unwrap();
    a.retain(|a| a != NODE_ADDR);
    a
}

/// A generous bound for polling, never a timing assertion.
fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

#[test]
fn bind_adds_exactly_one_address_and_a_second_bind_is_already_done() {
    let ns = nic_ns("bind");
    let (first, second, bound) = ns.block_on(|| async {
        let net = KernelNet::open("eth0").await.expect("open eth0");
        let first = net.bind(cidr(VIP)).await.expect("first bind");
        let second = net.bind(cidr(VIP)).await.expect("second bind");
        (
            first,
            second,
            net.is_bound(cidr(VIP)).await.expect("is_bound"),
        )
    });
    assert_eq!(first, Change::Applied);
    assert_eq!(second, Change::AlreadyDone);
    assert!(bound);
    assert_eq!(vips(&ns), vec![VIP.to_owned()], "listed once, by `ip`");
}

#[test]
fn unbind_removes_the_address_and_a_second_unbind_is_already_done() {
    let ns = nic_ns("unbind");
    ns.add_addr("eth0", "198.18.0.2/24").unwrap();
    ns.add_addr("eth0", VIP).unwrap();
    let (first, second, bound) = ns.block_on(|| async {
        let net = KernelNet::open("eth0").await.expect("open eth0");
        let first = net.unbind(cidr(VIP)).await.expect("first unbind");
        let second = net.unbind(cidr(VIP)).await.expect("second unbind");
        (
            first,
            second,
            net.is_bound(cidr(VIP)).await.expect("is_bound"),
        )
    });
    assert_eq!(first, Change::Applied);
    assert_eq!(second, Change::AlreadyDone);
    assert!(!bound);
    assert_eq!(
        vips(&ns),
        vec!["198.18.0.2/24".to_owned()],
        "only the VIP went; the host address stays"
    );
}

/// Guards against substring/prefix matching of addresses: 198.18.0.1 is not 198.18.0.10.
#[test]
fn an_address_that_is_a_prefix_of_another_is_matched_exactly() {
    let ns = nic_ns("prefix");
    let (after_bind_10, bind_1, after_bind_1, unbind_1, after_unbind_1, unbind_1_again) = ns
        .block_on(|| async {
            let net = KernelNet::open("eth0").await.expect("open eth0");
            assert_eq!(net.bind(cidr(VIP_10)).await.unwrap(), Change::Applied);
            let after_bind_10 = (
                net.is_bound(cidr(VIP)).await.unwrap(),
                net.is_bound(cidr(VIP_10)).await.unwrap(),
            );
            let bind_1 = net.bind(cidr(VIP)).await.unwrap();
            let after_bind_1 = (
                net.is_bound(cidr(VIP)).await.unwrap(),
                net.is_bound(cidr(VIP_10)).await.unwrap(),
            );
            let unbind_1 = net.unbind(cidr(VIP)).await.unwrap();
            let after_unbind_1 = (
                net.is_bound(cidr(VIP)).await.unwrap(),
                net.is_bound(cidr(VIP_10)).await.unwrap(),
            );
            let unbind_1_again = net.unbind(cidr(VIP)).await.unwrap();
            (
                after_bind_10,
                bind_1,
                after_bind_1,
                unbind_1,
                after_unbind_1,
                unbind_1_again,
            )
        });
    assert_eq!(
        after_bind_10,
        (false, true),
        "with only .10 bound, .1 is not bound"
    );
    assert_eq!(
        bind_1,
        Change::Applied,
        "binding .1 is not a no-op because .10 is there"
    );
    assert_eq!(after_bind_1, (true, true));
    assert_eq!(unbind_1, Change::Applied);
    assert_eq!(after_unbind_1, (false, true), "unbinding .1 leaves .10");
    assert_eq!(
        unbind_1_again,
        Change::AlreadyDone,
        ".10 does not count as .1"
    );
    assert_eq!(vips(&ns), vec![VIP_10.to_owned()]);
}

#[test]
fn an_address_bound_with_another_prefix_counts_as_bound_and_unbind_removes_it() {
    let ns = nic_ns("otherprefix");
    ns.add_addr("eth0", "198.18.0.1/32").unwrap();
    let (bind, unbind) = ns.block_on(|| async {
        let net = KernelNet::open("eth0").await.expect("open eth0");
        (
            net.bind(cidr(VIP)).await.unwrap(),
            net.unbind(cidr(VIP)).await.unwrap(),
        )
    });
    assert_eq!(bind, Change::AlreadyDone);
    assert_eq!(unbind, Change::Applied);
    assert!(vips(&ns).is_empty());
}

#[test]
fn open_of_an_unknown_interface_names_it() {
    let ns = nic_ns("nosuch");
    let err = ns.block_on(|| async { KernelNet::open("eth7").await.map(drop) });
    match err {
        Err(e @ NetError::NoSuchInterface(_)) => {
            assert_eq!(e.to_string(), "no network interface named \"eth7\"")
        }
        other => panic!("want NoSuchInterface, got {other:?}"),
    }
}

#[test]
fn open_of_a_non_ethernet_interface_says_why_it_cannot_be_used() {
    let ns = nic_ns("loopback");
    let err = ns.block_on(|| async { KernelNet::open("lo").await.map(drop) });
    match err {
        Err(e @ NetError::UnsupportedInterface { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("\"lo\"") && text.contains("not Ethernet"),
                "{text}"
            );
        }
        other => panic!("want UnsupportedInterface, got {other:?}"),
    }
}

#[test]
fn open_resolves_the_interface_mac_and_index() {
    let ns = nic_ns("mac");
    let want = ns.mac("eth0").unwrap();
    let (mac, index, kernel_index) = ns.block_on(|| async {
        let net = KernelNet::open("eth0").await.expect("open eth0");
        let idx = nix_ifindex("eth0");
        (net.mac(), net.index(), idx)
    });
    assert_eq!(mac, want);
    assert_eq!(index, kernel_index);
}

fn nix_ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Decodes the raw bytes independently of `ArpFrame::parse`, so a symmetric bug in build and parse shows.
struct Raw<'a>(&'a [u8]);
impl Raw<'_> {
    fn eth_dst(&self) -> &[u8] {
        &self.0[0..6]
    }
    fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.0[12], self.0[13]])
    }
    fn opcode(&self) -> u16 {
        u16::from_be_bytes([self.0[20], self.0[21]])
    }
    fn sha(&self) -> &[u8] {
        &self.0[22..28]
    }
    fn spa(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.0[28], self.0[29], self.0[30], self.0[31])
    }
    fn tha(&self) -> &[u8] {
        &self.0[32..38]
    }
    fn tpa(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.0[38], self.0[39], self.0[40], self.0[41])
    }
}

fn announces(vip: Ipv4Addr) -> impl Fn(&CapturedFrame) -> bool {
    move |f| f.frame.sender_ip == vip
}

#[test]
fn announce_round_sends_a_gratuitous_request_and_reply_from_the_interface_mac() {
    let ns = nic_ns("garp");
    let mac = ns.mac("eth0").unwrap();
    let vip = cidr(VIP);
    let (sent, frames) = ns.block_on(|| async {
        let capture = ArpCapture::open("peer0").expect("capture on peer0");
        let net = KernelNet::open("eth0").await.expect("open eth0");
        net.bind(vip).await.expect("bind");
        let sent = net.announce_round(vip.addr).await.expect("announce");
        let frames = capture
            .collect_until(2, deadline(), announces(vip.addr))
            .await
            .expect("capture");
        (sent, frames)
    });
    assert_eq!(sent, 2);
    assert_eq!(frames.len(), 2, "captured: {frames:?}");
    for f in &frames {
        let raw = Raw(&f.raw);
        assert_eq!(raw.ethertype(), 0x0806, "ethertype ARP");
        assert_eq!(raw.eth_dst(), &[0xff; 6], "broadcast destination");
        assert_eq!(&f.raw[6..12], &mac, "Ethernet source is eth0's MAC");
        assert_eq!(raw.sha(), &mac, "sender MAC is eth0's MAC");
        assert_eq!(raw.spa(), vip.addr, "sender IP is the VIP");
        assert_eq!(raw.tpa(), vip.addr, "target IP is the VIP");
        assert!(!f.outgoing, "seen arriving on the peer end");
    }
    let (req, rep) = (Raw(&frames[0].raw), Raw(&frames[1].raw));
    assert_eq!(
        (req.opcode(), rep.opcode()),
        (1, 2),
        "request first, then reply"
    );
    assert_eq!(
        req.tha(),
        &[0; 6],
        "request: target MAC zero (RFC 5227 announcement)"
    );
    assert_eq!(
        rep.tha(),
        &mac,
        "reply: target MAC = sender MAC (arping -A)"
    );
}

#[test]
fn announce_burst_sends_every_round_in_order_and_none_before_its_time() {
    let ns = nic_ns("burst");
    let vip = cidr(VIP).addr;
    let burst = 4u32;
    let spread = Duration::from_millis(300);
    let (sent, start, frames) = ns.block_on(|| async {
        let capture = ArpCapture::open("peer0").expect("capture on peer0");
        let net = KernelNet::open("eth0").await.expect("open eth0");
        let start = Instant::now();
        let sent = announce_burst(&net, vip, burst, spread)
            .await
            .expect("burst");
        let frames = capture
            .collect_until(2 * burst as usize, deadline(), announces(vip))
            .await
            .expect("capture");
        (sent, start, frames)
    });
    assert_eq!(sent, 2 * burst);
    assert_eq!(frames.len(), 2 * burst as usize, "captured: {frames:?}");
    let ops: Vec<_> = frames.iter().map(|f| f.frame.op).collect();
    let want: Vec<_> = (0..burst)
        .flat_map(|_| [ArpOp::Request, ArpOp::Reply])
        .collect();
    assert_eq!(ops, want, "request, reply per round, rounds in order");
    for (i, round) in frames.chunks(2).enumerate() {
        // A lower bound only: a round can be late on a loaded machine, never early.
        let due = start + spread * i as u32 / (burst - 1);
        assert!(round[0].at >= due, "round {i} captured before it was due");
        if i > 0 {
            assert!(
                round[0].at >= frames[2 * i - 1].at,
                "round {i} before round {}",
                i - 1
            );
        }
    }
}

#[test]
fn announce_burst_sends_the_first_round_without_waiting_for_the_spread() {
    let ns = nic_ns("first");
    let vip = cidr(VIP).addr;
    let frames = ns.block_on(|| async {
        let capture = ArpCapture::open("peer0").expect("capture on peer0");
        let net = KernelNet::open("eth0").await.expect("open eth0");
        // With an hour between rounds, only an immediate first round can reach the capture in time.
        let burst = async {
            announce_burst(&net, vip, 2, Duration::from_secs(3600))
                .await
                .expect("burst")
        };
        let capture = capture.collect_until(2, deadline(), announces(vip));
        tokio::select! {
            _ = burst => panic!("the burst finished: the second round did not wait"),
            frames = capture => frames.expect("capture"),
        }
    });
    let ops: Vec<_> = frames.iter().map(|f| f.frame.op).collect();
    assert_eq!(ops, vec![ArpOp::Request, ArpOp::Reply]);
}

#[test]
fn announce_on_a_down_link_is_an_error_naming_the_interface() {
    let ns = nic_ns("down");
    ns.link_set("eth0", false).unwrap();
    let err = ns.block_on(|| async {
        let net = KernelNet::open("eth0").await.expect("open eth0");
        net.announce_round(cidr(VIP).addr).await
    });
    match err {
        Err(e @ NetError::Io { .. }) => {
            let text = e.to_string();
            assert!(text.contains("\"eth0\""), "{text}");
            assert!(!e.is_permanent());
        }
        other => panic!("want an Io error, got {other:?}"),
    }
}

#[test]
fn kernel_net_follows_an_interface_recreated_under_the_same_name() {
    let ns = nic_ns("recreate");
    let vip = cidr(VIP);
    let (old_mac, new_mac, frames) = ns.block_on(|| async {
        let net = KernelNet::open("eth0").await.expect("open eth0");
        net.announce_round(vip.addr).await.expect("announce before");
        let old_mac = net.mac();
        // A driver reload: same name, new index and MAC.
        ns.ip(&["link", "del", "eth0"]).unwrap();
        ns.veth_pair_inside("eth0", "peer0").unwrap();
        ns.add_addr("eth0", NODE_ADDR).unwrap();
        let capture = ArpCapture::open("peer0").expect("capture on new peer0");
        assert_eq!(net.bind(vip).await.expect("bind after"), Change::Applied);
        net.announce_round(vip.addr).await.expect("announce after");
        let frames = capture
            .collect_until(2, deadline(), announces(vip.addr))
            .await
            .unwrap();
        (old_mac, net.mac(), frames)
    });
    assert_eq!(new_mac, ns.mac("eth0").unwrap());
    assert_ne!(old_mac, new_mac, "veth MACs are random");
    assert_eq!(frames.len(), 2);
    assert!(frames.iter().all(|f| f.frame.sender_mac == new_mac));
    assert_eq!(vips(&ns), vec![VIP.to_owned()]);
}

#[test]
fn kernel_net_reports_a_removed_interface_by_name() {
    let ns = nic_ns("removed");
    let err = ns.block_on(|| async {
        let net = KernelNet::open("eth0").await.expect("open eth0");
        ns.ip(&["link", "del", "eth0"]).unwrap();
        net.bind(cidr(VIP)).await
    });
    assert!(
        matches!(&err, Err(NetError::NoSuchInterface(n)) if n == "eth0"),
        "{err:?}"
    );
}

#[test]
fn kernel_net_drifted_address_is_seen_and_rebound() {
    let ns = nic_ns("drift");
    let vip = cidr(VIP);
    ns.block_on(|| async {
        let net = KernelNet::open("eth0").await.expect("open eth0");
        net.bind(vip).await.unwrap();
        ns.del_addr("eth0", VIP).unwrap();
        assert!(
            !net.is_bound(vip).await.unwrap(),
            "removal behind our back is visible"
        );
        assert_eq!(net.bind(vip).await.unwrap(), Change::Applied);
    });
    assert_eq!(vips(&ns), vec![VIP.to_owned()]);
}

/// Three Sentinels may run migrate-havip at once: the add/remove races must end as no-ops, not errors.
#[test]
fn concurrent_binds_and_unbinds_apply_once_and_never_fail() {
    let ns = nic_ns("race");
    let vip = cidr(VIP);
    let (binds, unbinds) = ns.block_on(|| async {
        let mut nets = Vec::new();
        for _ in 0..4 {
            nets.push(KernelNet::open("eth0").await.expect("open eth0"));
        }
        let binds = futures::future::join_all(nets.iter().map(|n| n.bind(vip))).await;
        let binds: Vec<Change> = binds.into_iter().map(|r| r.expect("bind")).collect();
        let unbinds = futures::future::join_all(nets.iter().map(|n| n.unbind(vip))).await;
        let unbinds: Vec<Change> = unbinds.into_iter().map(|r| r.expect("unbind")).collect();
        (binds, unbinds)
    });
    let applied = |v: &[Change]| v.iter().filter(|c| **c == Change::Applied).count();
    assert_eq!(applied(&binds), 1, "{binds:?}");
    assert_eq!(applied(&unbinds), 1, "{unbinds:?}");
    assert!(vips(&ns).is_empty());
}

/// The daemon runs one task per HAVIP over one `KernelNet`: their reads and writes overlap on one netlink
/// socket, where the kernel runs one dump at a time and refuses a second one with EBUSY while the first is
/// still being read. Every call must still succeed, and every answer must be fresh: a task that bound an
/// address sees it bound right after.
///
/// How many addresses a dump needs to span more than one read depends on the kernel (on some, any address
/// does); with `FILL` addresses on the interface every address dump spans several, and `ROUNDS` reads per
/// task keep the tasks overlapping. Before `KernelNet` serialised its dumps this failed with EBUSY in every
/// run (kernel 6.18).
#[test]
fn concurrent_reads_and_writes_over_one_kernel_net_all_succeed_and_stay_fresh() {
    const HOST: &str = "198.18.0.2/24";
    const FILL: usize = 300;
    const ROUNDS: usize = 5;
    let ns = nic_ns("dumps");
    ns.add_addr("eth0", HOST).unwrap();
    // One /32 each in 198.19.0.0/16, added in one `ip -batch` run.
    let fill: Vec<VipCidr> = (0..FILL)
        .map(|i| cidr(&format!("198.19.{}.{}/32", i / 200, i % 200 + 1)))
        .collect();
    let mut batch = tempfile::NamedTempFile::new().unwrap();
    for v in &fill {
        writeln!(batch, "addr add {v} dev eth0").unwrap();
    }
    batch.flush().unwrap();
    ns.ip(&["-batch", batch.path().to_str().unwrap()])
        .expect("adding the fill addresses");
    // Bound before and unbound concurrently; bound concurrently. One /24 each: deleting the primary
    // address of a subnet takes its secondaries with it.
    let gone: Vec<VipCidr> = (1..=4)
        .map(|i| cidr(&format!("198.18.{}.1/24", 10 + i)))
        .collect();
    let added: Vec<VipCidr> = (1..=4)
        .map(|i| cidr(&format!("198.18.{}.1/24", 20 + i)))
        .collect();
    for v in &gone {
        ns.add_addr("eth0", &v.to_string()).unwrap();
    }
    // The node's address in each subnet a VIP is bound in (a VIP goes only where the NIC has a subnet).
    for i in 1..=4 {
        ns.add_addr("eth0", &format!("198.18.{}.254/24", 20 + i))
            .unwrap();
    }
    let host = cidr(HOST);
    // Like the daemon: one task per caller on a multi-thread runtime, all sharing one KernelNet.
    let rt = ns.runtime(2).expect("a tokio runtime in the namespace");
    let (reads, binds, unbinds, last) = rt.block_on(async {
        let (gone, added) = (gone.clone(), added.clone());
        rt.spawn(async move {
            let net = Arc::new(KernelNet::open("eth0").await.expect("open eth0"));
            // 40 readers, ROUNDS reads each: half ask about the host address, half list every address.
            let reads: Vec<_> = (0..40)
                .map(|i| {
                    let net = net.clone();
                    tokio::spawn(async move {
                        let mut seen = true;
                        for _ in 0..ROUNDS {
                            seen &= if i % 2 == 0 {
                                net.is_bound(host).await?
                            } else {
                                net.addresses().await?.iter().any(|a| a.addr == host.addr)
                            };
                        }
                        Ok::<_, NetError>(seen)
                    })
                })
                .collect();
            // Writers: bind then look (must see it), unbind then look (must not).
            let binds: Vec<_> = added
                .iter()
                .map(|&v| {
                    let net = net.clone();
                    tokio::spawn(async move {
                        let change = net.bind(v).await?;
                        Ok::<_, NetError>((change, net.is_bound(v).await?))
                    })
                })
                .collect();
            let unbinds: Vec<_> = gone
                .iter()
                .map(|&v| {
                    let net = net.clone();
                    tokio::spawn(async move {
                        let change = net.unbind(v).await?;
                        Ok::<_, NetError>((change, net.is_bound(v).await?))
                    })
                })
                .collect();
            let reads = join_tasks(reads).await;
            let binds = join_tasks(binds).await;
            let unbinds = join_tasks(unbinds).await;
            (reads, binds, unbinds, net.addresses().await)
        })
        .await
        .expect("the test task")
    });
    drop(rt);
    // Every error first, so a failure shows how many calls failed and why.
    let mut failed: Vec<String> = reads
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("read {i}: {e}")))
        .collect();
    for (what, v, r) in added
        .iter()
        .zip(&binds)
        .map(|(v, r)| ("bind", v, r))
        .chain(gone.iter().zip(&unbinds).map(|(v, r)| ("unbind", v, r)))
    {
        if let Err(e) = r {
            failed.push(format!("{what} {v}: {e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} tasks failed: {failed:#?}",
        failed.len(),
        reads.len() + binds.len() + unbinds.len()
    );
    assert!(
        reads.iter().all(|r| matches!(r, Ok(true))),
        "every read saw {HOST}"
    );
    for (v, r) in added.iter().zip(binds) {
        let (change, bound) = r.expect("checked above");
        assert_eq!(change, Change::Applied, "bind {v}");
        assert!(bound, "{v} not bound right after its bind: a stale dump");
    }
    for (v, r) in gone.iter().zip(unbinds) {
        let (change, bound) = r.expect("checked above");
        assert_eq!(change, Change::Applied, "unbind {v}");
        assert!(
            !bound,
            "{v} still bound right after its unbind: a stale dump"
        );
    }
    let subnets: Vec<VipCidr> = (1..=4)
        .map(|i| cidr(&format!("198.18.{}.254/24", 20 + i)))
        .collect();
    let mut want: Vec<VipCidr> = [host, cidr(NODE_ADDR)]
        .into_iter()
        .chain(subnets)
        .chain(added.iter().copied())
        .chain(fill.iter().copied())
        .collect();
    want.sort_by_key(|v| v.addr);
    let mut last = last.expect("final addresses");
    last.sort_by_key(|v| v.addr);
    assert_eq!(last, want, "what KernelNet lists at the end");
    let mut listed = ns.ipv4_addrs("eth0").unwrap();
    listed.sort();
    let mut want: Vec<String> = want.iter().map(|v| v.to_string()).collect();
    want.sort();
    assert_eq!(listed, want, "what `ip` lists at the end");
}

/// The results of `tasks`, in order; a task that panicked fails the test.
async fn join_tasks<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("a test task panicked"))
        .collect()
}

/// Issue 13: the daemon's HAVIP tasks check their binding every `poll_interval`, and with 20 HAVIPs that was
/// 20 lookups and 20 dumps a second on a host where nothing changed. Reads are now served from the last
/// lookup and dump while no notification about the interface arrived: many reads, no kernel read.
#[test]
fn reads_while_nothing_changes_ask_the_kernel_nothing() {
    let ns = nic_ns("keptview");
    let vip = cidr(VIP);
    let (before, after, bound) = ns.block_on(|| async {
        let net = KernelNet::open("eth0").await.expect("open eth0");
        net.bind(vip).await.expect("bind");
        // The first read after our own change reads the kernel once; every later one is served kept.
        assert!(net.is_bound(vip).await.unwrap());
        let before = net.kernel_reads();
        let mut bound = 0;
        for _ in 0..100 {
            bound += usize::from(net.is_bound(vip).await.unwrap());
            assert!(!net.addresses().await.unwrap().is_empty());
        }
        (before, net.kernel_reads(), bound)
    });
    assert_eq!(bound, 100);
    assert_eq!(after, before, "200 reads with no change asked the kernel");
}

/// Freshness as strong as dumping every time: a change made by anyone (here `ip`, another process) is seen
/// by the very next read, with no wait, and costs one lookup and one dump however many read after it.
#[test]
fn a_change_by_another_process_is_seen_by_the_next_read_and_read_once() {
    let ns = nic_ns("change");
    let vip = cidr(VIP);
    ns.block_on(|| async {
        let net = Arc::new(KernelNet::open("eth0").await.expect("open eth0"));
        assert!(!net.is_bound(vip).await.unwrap());
        for round in 0..5 {
            ns.add_addr("eth0", VIP).unwrap();
            let before = net.kernel_reads();
            let seen = futures::future::join_all((0..20).map(|_| net.is_bound(vip))).await;
            assert!(
                seen.iter().all(|r| matches!(r, Ok(true))),
                "round {round}: an added address not seen at once: {seen:?}"
            );
            let after = net.kernel_reads();
            assert_eq!(
                after.dumps - before.dumps,
                1,
                "round {round}: 20 readers, one dump"
            );
            assert!(
                after.lookups - before.lookups <= 1,
                "round {round}: {before:?} -> {after:?}"
            );
            ns.del_addr("eth0", VIP).unwrap();
            assert!(
                !net.is_bound(vip).await.unwrap(),
                "round {round}: a removed address still seen"
            );
        }
        // An address on another interface is not a change of this one.
        ns.veth_pair_inside("eth1", "peer1").unwrap();
        assert!(!net.is_bound(vip).await.unwrap());
        let before = net.kernel_reads();
        ns.add_addr("eth1", "198.18.1.1/24").unwrap();
        assert!(!net.is_bound(vip).await.unwrap());
        assert_eq!(
            net.kernel_reads(),
            before,
            "a change on eth1 made eth0 be read again"
        );
    });
}
