//! The seed's `notify_mymaster.sh` (the lab's seed-script method) works with either `arping`: iputils'
//! (`-A -I`, what the seed article wrote) and Thomas Habets' (Debian's `arping` package: `-U -P -S -i`).
//! The two packages conflict, so each is stood in for by a fake `arping` first on `PATH` that answers `-V`
//! like the real one and records its arguments. The script runs in a network namespace this test creates
//! (its `ip addr add` binds the VIP there). Needs root and iproute2.

use std::os::unix::fs::PermissionsExt;

use havip_lab::method::seed_script;
use havip_lab::topology::{HOST_IPS, VIP};
use havip_testkit::testbed::netns::{Lab, Netns};

/// A fake `arping` that prints `banner` for `-V` and appends its argv to `log` otherwise.
fn fake_arping(dir: &std::path::Path, banner: &str) -> std::path::PathBuf {
    let log = dir.join("arping.args");
    let path = dir.join("arping");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -V ] && {{ echo '{banner}' >&2; exit 2; }}; done\n\
             echo \"$*\" >> '{}'\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    log
}

/// Runs host 0's seed script as Sentinel would after promoting host 0; returns what `arping` was given.
fn announce_with(banner: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = fake_arping(dir.path(), banner);
    let script = dir.path().join("notify_mymaster.sh");
    std::fs::write(&script, seed_script(0)).unwrap();
    let ns = Netns::new("seedarp").expect("a network namespace (run as root, with iproute2)");
    ns.veth_pair_inside(Lab::HOST_IF, "seedpeer").unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let master = HOST_IPS[0].to_string();
    let out = ns
        .command("bash")
        .arg(&script)
        .args([
            "mymaster",
            "leader",
            "start",
            "198.18.0.9",
            "6379",
            &master,
            "6379",
        ])
        .env("PATH", path)
        .output()
        .expect("run the seed script");
    assert!(
        out.status.success(),
        "seed script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bound = ns.ipv4_addrs(Lab::HOST_IF).unwrap();
    assert!(
        bound.iter().any(|a| a.starts_with(&VIP.to_string())),
        "the script binds the VIP: {bound:?}"
    );
    std::fs::read_to_string(&log).unwrap_or_default()
}

#[test]
fn iputils_arping_gets_the_seeds_own_flags() {
    let args = announce_with("arping from iputils 20221126");
    assert_eq!(args.trim(), format!("-q -c 3 -A -I {} {VIP}", Lab::HOST_IF));
}

#[test]
fn habets_arping_gets_the_same_frames_with_its_flags() {
    let args = announce_with("ARPing 2.23, by Thomas Habets <thomas@habets.se>");
    assert_eq!(
        args.trim(),
        format!("-q -c 3 -U -P -S {VIP} -i {} {VIP}", Lab::HOST_IF)
    );
}
