//! Capability checks and the errors a process without CAP_NET_ADMIN / CAP_NET_RAW gets.
//!
//! The tests re-run this test binary as a child with capabilities dropped by `setpriv` (util-linux), with
//! `HAVIP_NET_PROBE` telling the child what to try; the child prints one `PROBE ...` line per result. Needs
//! root (to drop from) and `setpriv`.

use std::process::Command;

use havip_agent::net::{KernelNet, LocalNet, NetError, missing_capabilities, require_capabilities};
use havip_testkit::testbed::netns::Netns;

const PROBE_ENV: &str = "HAVIP_NET_PROBE";
const PROBE_TEST: &str = "capability_probe";

/// Two roles. As a child (`HAVIP_NET_PROBE` set) it runs the probe and prints its results. As a normal test
/// it checks that this process, run as root, has both capabilities (the starting point of the other tests).
#[test]
fn capability_probe() {
    match std::env::var(PROBE_ENV).as_deref() {
        Ok("require") => println!("PROBE require: {}", describe(require_capabilities())),
        Ok("kernel") => kernel_probe(),
        Ok(other) => panic!("unknown {PROBE_ENV}={other}"),
        Err(_) => {
            assert!(
                missing_capabilities().is_empty(),
                "these tests must run as root with CAP_NET_ADMIN and CAP_NET_RAW, missing: {:?}",
                missing_capabilities()
            );
            require_capabilities().expect("root has both capabilities");
        }
    }
}

fn describe(r: Result<(), NetError>) -> String {
    match r {
        Ok(()) => "ok".to_owned(),
        Err(NetError::MissingCapability { capability, hint }) => {
            format!("missing [{capability}] {hint}")
        }
        Err(e) => format!("other error: {e}"),
    }
}

/// Child side: try the real operations on `eth0` of the namespace it was started in.
fn kernel_probe() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let net = match KernelNet::open("eth0").await {
            Ok(n) => n,
            Err(e) => return println!("PROBE open: other error: {e}"),
        };
        println!("PROBE open: ok");
        let vip = "198.18.0.1/24".parse().unwrap();
        println!(
            "PROBE is_bound: {}",
            describe(net.is_bound(vip).await.map(drop))
        );
        println!("PROBE bind: {}", describe(net.bind(vip).await.map(drop)));
        println!(
            "PROBE announce: {}",
            describe(net.announce_round(vip.addr).await.map(drop))
        );
    });
}

/// Runs the probe in a child: `[prefix...] setpriv <drop args> <this test binary> --exact capability_probe`.
fn run_probe(mut cmd: Command, drop: &[&str], probe: &str) -> Vec<String> {
    let exe = std::env::current_exe().expect("path of the test binary");
    cmd.args(drop)
        .arg(exe)
        .args(["--exact", PROBE_TEST, "--nocapture", "--test-threads=1"])
        .env(PROBE_ENV, probe);
    let out = cmd
        .output()
        .expect("running setpriv (util-linux) to drop capabilities: is it installed?");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe child failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = stdout
        .lines()
        // libtest may print "test capability_probe ... " on the same line first.
        .filter_map(|l| l.find("PROBE ").map(|i| l[i + "PROBE ".len()..].to_owned()))
        .collect();
    assert!(
        !lines.is_empty(),
        "the child printed no PROBE line: {stdout}"
    );
    lines
}

fn setpriv() -> Command {
    Command::new("setpriv")
}

#[test]
fn require_capabilities_names_both_missing_capabilities_and_how_to_grant_them() {
    let lines = run_probe(
        setpriv(),
        &["--inh-caps=-all", "--bounding-set=-net_admin,-net_raw"],
        "require",
    );
    let line = &lines[0];
    assert!(
        line.starts_with("require: missing [CAP_NET_ADMIN and CAP_NET_RAW]"),
        "{line}"
    );
    assert!(
        line.contains("AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW"),
        "{line}"
    );
    assert!(
        line.contains("setcap cap_net_admin,cap_net_raw+ep /"),
        "{line}"
    );
}

#[test]
fn require_capabilities_names_only_the_missing_one() {
    let lines = run_probe(
        setpriv(),
        &["--inh-caps=-all", "--bounding-set=-net_raw"],
        "require",
    );
    let line = &lines[0];
    assert!(line.starts_with("require: missing [CAP_NET_RAW]"), "{line}");
    assert!(line.contains("gratuitous ARP"), "{line}");
}

#[test]
fn kernel_net_without_capabilities_reports_which_one_each_operation_needs() {
    let ns = Netns::new("caps").expect("creating a network namespace (run the tests as root)");
    ns.veth_pair_inside("eth0", "peer0").unwrap();
    // The node's address, so that the VIP passes the subnet rule and the capability is what stops it.
    ns.add_addr("eth0", "198.18.0.2/24").unwrap();
    let lines = run_probe(
        ns.command("setpriv"),
        &["--inh-caps=-all", "--bounding-set=-net_admin,-net_raw"],
        "kernel",
    );
    let find = |op: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{op}: ")))
            .unwrap_or_else(|| panic!("no result for {op} in {lines:?}"))
            .clone()
    };
    assert_eq!(find("open"), "open: ok", "reading needs no capability");
    assert_eq!(
        find("is_bound"),
        "is_bound: ok",
        "reading needs no capability"
    );
    let bind = find("bind");
    assert!(bind.starts_with("bind: missing [CAP_NET_ADMIN]"), "{bind}");
    assert!(
        bind.contains("setcap cap_net_admin,cap_net_raw+ep"),
        "{bind}"
    );
    let announce = find("announce");
    assert!(
        announce.starts_with("announce: missing [CAP_NET_RAW]"),
        "{announce}"
    );
    assert!(announce.contains("AmbientCapabilities="), "{announce}");
    assert_eq!(
        ns.ipv4_addrs("eth0").unwrap(),
        ["198.18.0.2/24"],
        "nothing was bound"
    );
}
