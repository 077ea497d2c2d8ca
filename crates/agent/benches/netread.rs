//! What one binding check costs the daemon: `KernelNet::is_bound` served from the kept view (issue 13, "read
//! once per change"), against the read every check made before, an interface lookup plus an IPv4 address
//! dump over rtnetlink, measured in the same run on the same interface.
//!
//! Run: `cargo bench -p havip-agent --bench netread` (knobs: `NETREAD_CALLS`, default 2000 per block;
//! `NETREAD_BLOCKS`, default 5, alternating the two ways). Needs root and iproute2: it creates a network
//! namespace with a veth pair and 20 VIPs on it (198.18.0.0/15), as on a host holding 20 HAVIPs.
//!
//! Prints, per way, the median over blocks of the mean wall time and the mean CPU time (this thread's and
//! the kernel's work for it: `CLOCK_THREAD_CPUTIME_ID`) per check, the kernel reads the kept view made, and
//! the ratio.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use havip_agent::config::VipCidr;
use havip_agent::net::{KernelNet, LocalNet};
use havip_testkit::testbed::netns::Netns;
use rtnetlink::packet_route::AddressFamily;

const HAVIPS: u32 = 20;

fn main() {
    let calls: u32 = knob("NETREAD_CALLS", 2000);
    let blocks: u32 = knob("NETREAD_BLOCKS", 5);
    let ns = Netns::new("netread").expect("a network namespace (run as root)");
    ns.veth_pair_inside("eth0", "peer0").expect("veth pair");
    ns.add_addr("eth0", "198.18.0.200/24").unwrap();
    for i in 1..=HAVIPS {
        ns.add_addr("eth0", &format!("198.18.0.{i}/24")).unwrap();
    }
    let vip: VipCidr = "198.18.0.20/24".parse().unwrap();
    let (kept, dumped, reads) = ns.block_on(|| async move {
        let net = KernelNet::open("eth0").await.expect("open eth0");
        let (conn, handle, _) = rtnetlink::new_connection().expect("a netlink socket");
        tokio::spawn(conn);
        assert!(net.is_bound(vip).await.unwrap());
        let start_reads = net.kernel_reads();
        let (mut kept, mut dumped) = (Vec::new(), Vec::new());
        for _ in 0..blocks {
            kept.push(
                timed(calls, || async {
                    assert!(net.is_bound(vip).await.unwrap());
                })
                .await,
            );
            dumped.push(
                timed(calls, || async {
                    assert!(lookup_and_dump(&handle, vip).await);
                })
                .await,
            );
        }
        let end_reads = net.kernel_reads();
        (kept, dumped, (start_reads, end_reads))
    });
    let (kw, kc) = medians(&kept);
    let (dw, dc) = medians(&dumped);
    println!(
        "binding check, {HAVIPS} addresses on the interface, {calls} checks per block, {blocks} blocks, medians of block means"
    );
    println!("| way | wall per check | CPU per check |");
    println!("|---|---:|---:|");
    println!("| kept view (`KernelNet::is_bound`) | {kw:.2} µs | {kc:.2} µs |");
    println!("| lookup + dump (before) | {dw:.2} µs | {dc:.2} µs |");
    println!("| ratio kept / before | {:.3} | {:.3} |", kw / dw, kc / dc);
    println!(
        "kernel reads by the kept view over {} checks: {:?} -> {:?}",
        calls * blocks,
        reads.0,
        reads.1
    );
}

fn knob(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?}: not a count"))
        })
        .unwrap_or(default)
}

/// Mean wall and CPU microseconds per call of `f`, over `calls` calls.
async fn timed<F, Fut>(calls: u32, mut f: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (w0, c0) = (Instant::now(), thread_cpu());
    for _ in 0..calls {
        f().await;
    }
    let (w, c) = (w0.elapsed(), thread_cpu() - c0);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(calls);
    (per(w), per(c))
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for a clock every Linux has.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn medians(v: &[(f64, f64)]) -> (f64, f64) {
    let mid = |mut x: Vec<f64>| {
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    (
        mid(v.iter().map(|p| p.0).collect()),
        mid(v.iter().map(|p| p.1).collect()),
    )
}

/// The read each check made before: look the interface up by name, dump its IPv4 addresses, look for `vip`.
async fn lookup_and_dump(handle: &rtnetlink::Handle, vip: VipCidr) -> bool {
    let link = handle
        .link()
        .get()
        .match_name("eth0".to_owned())
        .execute()
        .try_next()
        .await
        .unwrap()
        .expect("eth0");
    let mut req = handle
        .address()
        .get()
        .set_link_index_filter(link.header.index);
    req.message_mut().header.family = AddressFamily::Inet;
    let all: Vec<_> = req.execute().try_collect().await.unwrap();
    all.iter().any(|m| {
        m.attributes.iter().any(|a| {
            matches!(a, rtnetlink::packet_route::address::AddressAttribute::Local(std::net::IpAddr::V4(ip)) if *ip == vip.addr)
        })
    })
}
