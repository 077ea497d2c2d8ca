//! The namespace test bed itself: isolation, cleanup (also on panic), processes, and the bridge lab.
//! Needs root and iproute2.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use havip_agent::net::{ArpCapture, KernelNet, LocalNet};
use havip_testkit::testbed::netns::{Lab, Netns};

/// Polls `cond` until it holds or 30 s pass.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ns(prefix: &str) -> Netns {
    Netns::new(prefix).expect("creating a network namespace (run the tests as root)")
}

#[test]
fn run_executes_the_closure_inside_the_namespace() {
    let ns = ns("tb-run");
    let ns_inode = std::fs::metadata(ns.path()).unwrap().ino();
    let (inside, lo_up) = ns.run(|| {
        let inode = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        let lo_index = {
            let c = std::ffi::CString::new("lo").unwrap();
            // SAFETY: valid NUL-terminated string.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        };
        (inode, lo_index != 0)
    });
    assert_eq!(inside, ns_inode, "the closure's thread is in the namespace");
    assert!(lo_up);
    let here = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    assert_ne!(here, ns_inode, "the calling thread is not moved");
}

#[test]
fn namespace_is_deleted_on_drop_even_when_the_test_panics() {
    let mut path = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = ns("tb-panic");
        ns.veth_pair_inside("eth0", "peer0").unwrap();
        path = Some(ns.path());
        panic!("a failing test");
    }));
    assert!(result.is_err());
    let path = path.expect("namespace was created");
    assert!(!path.exists(), "{} is left behind", path.display());
}

#[test]
fn processes_started_in_the_namespace_are_killed_on_drop() {
    let ns = ns("tb-proc");
    let mut child = ns
        .command("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawning sleep in the namespace");
    let pid = child.id() as i32;
    wait_for("sleep to show up in the namespace", || {
        ns.pids().unwrap().contains(&pid)
    });
    let path = ns.path();
    drop(ns);
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "sleep was killed, not finished: {status}"
    );
    assert!(!path.exists());
}

#[test]
fn parallel_namespaces_get_distinct_names() {
    let a = ns("tb-par");
    let b = ns("tb-par");
    assert_ne!(a.name(), b.name());
    assert!(a.name().starts_with("hvt-tb-par-"));
    assert!(Path::new(&a.path()).exists() && Path::new(&b.path()).exists());
}

#[test]
fn bad_prefix_is_rejected_with_its_name() {
    let err = Netns::new("Bad Prefix").unwrap_err().to_string();
    assert!(err.contains("\"Bad Prefix\""), "{err}");
}

#[test]
fn link_set_down_and_up_is_seen_by_the_kernel() {
    let ns = ns("tb-link");
    ns.veth_pair_inside("eth0", "peer0").unwrap();
    let is_up = |ns: &Netns| {
        let out = ns.ip(&["-j", "link", "show", "dev", "eth0"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP")
    };
    assert!(is_up(&ns));
    ns.link_set("eth0", false).unwrap();
    assert!(!is_up(&ns));
    ns.set_up("eth0").unwrap();
    assert!(is_up(&ns));
}

#[test]
fn lab_hosts_share_one_segment_with_the_switch() {
    let lab = Lab::builder("tb-lab")
        .switch_addr("198.18.1.254/24")
        .host("a", "198.18.1.1/24")
        .host("b", "198.18.1.2/24")
        .build()
        .expect("building the lab");
    let a = lab.host("a").unwrap();
    let b = lab.host("b").unwrap();
    assert_ne!(a.mac, b.mac);
    assert_eq!(
        a.ns.ipv4_addrs("eth0").unwrap(),
        vec!["198.18.1.1/24".to_owned()]
    );

    // A service in the switch namespace (where a lab puts the fake cloud) is reachable from a host.
    let listener = lab
        .switch()
        .run(|| TcpListener::bind("198.18.1.254:0"))
        .expect("listening in the switch namespace");
    let port = listener.local_addr().unwrap().port();
    b.ns.run(|| TcpStream::connect((Ipv4Addr::new(198, 18, 1, 254), port)))
        .expect("host b connects to the switch");

    // A GARP from host a reaches the bridge, where a watcher listens, and host b.
    let vip: havip_agent::config::VipCidr = "198.18.1.100/24".parse().unwrap();
    let (on_bridge, on_b) = std::thread::scope(|s| {
        let deadline = || tokio::time::Instant::now() + Duration::from_secs(30);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ready_tx2 = ready_tx.clone();
        let switch = lab.switch();
        let bridge = s.spawn(move || {
            switch.block_on(|| async move {
                let cap = ArpCapture::open(Lab::BRIDGE).expect("capture on br0");
                ready_tx.send(()).unwrap();
                cap.collect_until(2, deadline(), |f| f.frame.sender_ip == vip.addr)
                    .await
                    .unwrap()
            })
        });
        let host_b = s.spawn(move || {
            b.ns.block_on(|| async move {
                let cap = ArpCapture::open("eth0").expect("capture on b's eth0");
                ready_tx2.send(()).unwrap();
                cap.collect_until(2, deadline(), |f| f.frame.sender_ip == vip.addr)
                    .await
                    .unwrap()
            })
        });
        ready_rx.recv().unwrap();
        ready_rx.recv().unwrap();
        a.ns.block_on(|| async {
            let net = KernelNet::open("eth0").await.unwrap();
            net.bind(vip).await.unwrap();
            net.announce_round(vip.addr).await.unwrap();
        });
        (bridge.join().unwrap(), host_b.join().unwrap())
    });
    for frames in [&on_bridge, &on_b] {
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert!(frames.iter().all(|f| f.frame.sender_mac == a.mac));
    }
}

#[test]
fn lab_is_removed_on_drop() {
    let lab = Lab::builder("tb-labdrop")
        .host("a", "198.18.2.1/24")
        .build()
        .unwrap();
    let paths = [lab.switch().path(), lab.host("a").unwrap().ns.path()];
    drop(lab);
    for p in paths {
        assert!(!p.exists(), "{} is left behind", p.display());
    }
}

#[test]
fn runtime_tasks_run_inside_the_namespace() {
    let ns = ns("tb-rt");
    ns.veth_pair_inside("eth0", "peer0").unwrap();
    let rt = ns.runtime(1).unwrap();
    let mac = rt
        .block_on(async {
            rt.spawn(async { KernelNet::open("eth0").await.map(|n| n.mac()) })
                .await
        })
        .unwrap()
        .expect("eth0 exists only inside the namespace");
    assert_eq!(mac, ns.mac("eth0").unwrap());
}
