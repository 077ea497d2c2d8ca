//! KernelNet against the real kernel, each test in its own network namespace with a veth pair
//! (`eth0` = the NIC the agent uses, `peer0` = the wire where captures listen). Addresses: 198.18.0.0/15.
//! Needs root and iproute2; fails with a message naming what is missing otherwise.

use std::net::Ipv4Addr;
use std::time::Duration;

use havip_agent::config::VipCidr;
use havip_agent::net::{
    ArpCapture, ArpOp, CapturedFrame, Change, KernelNet, LocalNet, NetError, announce_burst,
};
use havip_agent::testbed::netns::Netns;
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
    ns
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
    assert_eq!(
        ns.ipv4_addrs("eth0").unwrap(),
        vec![VIP.to_owned()],
        "listed once, by `ip`"
    );
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
        ns.ipv4_addrs("eth0").unwrap(),
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
    assert_eq!(ns.ipv4_addrs("eth0").unwrap(), vec![VIP_10.to_owned()]);
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
    assert!(ns.ipv4_addrs("eth0").unwrap().is_empty());
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
    assert_eq!(ns.ipv4_addrs("eth0").unwrap(), vec![VIP.to_owned()]);
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
    assert_eq!(ns.ipv4_addrs("eth0").unwrap(), vec![VIP.to_owned()]);
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
    assert!(ns.ipv4_addrs("eth0").unwrap().is_empty());
}
