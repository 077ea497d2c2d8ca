//! `havip-demo`, the README's first command, end to end: a real Sentinel failover, the timeline and a
//! clean exit.

use std::process::Command;

#[test]
fn demo_moves_the_vip_prints_the_timeline_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_havip-demo"))
        .output()
        .expect("run havip-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({:?})\n{stdout}\n{stderr}",
        out.status
    );
    for needle in [
        "local bind: simulated",
        "fault: redis on node",
        "sentinel switch: +switch-master",
        "agent decision: this node is the newest master",
        "vip bound",
        "announce (first gratuitous ARP)",
        "fake cloud: havip moved",
        "cloud confirms",
        "vip released (demoted)",
        "result: node",
        "cleaned up",
    ] {
        assert!(
            stdout.contains(needle),
            "timeline lacks {needle:?}:\n{stdout}"
        );
    }
}

#[test]
fn demo_without_redis_says_what_to_install() {
    let out = Command::new(env!("CARGO_BIN_EXE_havip-demo"))
        .env("PATH", "/nonexistent")
        .output()
        .expect("run havip-demo");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("apt-get install -y redis-server redis-sentinel"),
        "{stderr}"
    );
}
