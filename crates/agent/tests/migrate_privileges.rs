//! `migrate-havip` and its privileges, for real: a copy of the built binary with file capabilities
//! (`setcap cap_net_admin,cap_net_raw+ep`) run by an unprivileged user this test creates must not read a
//! config its caller chose; and a claim drops every capability once its sockets are open and its one
//! address change is made (the binary logs the effective set of all its threads at debug level); and it
//! refuses a VIP outside the subnet on its interface.
//! Needs root, `setcap`, `useradd`/`userdel` and network namespaces (198.18.0.0/15).

mod migrate_support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use havip_testkit::fake::HavipSpec;
use havip_testkit::testbed::fake_sentinel::{FakeSentinel, Mode};
use havip_testkit::testbed::netns::Netns;
use migrate_support::*;

/// A system user that exists for one test and is removed when it ends, passing or not.
struct TempUser(String);

impl TempUser {
    fn create(tag: &str) -> TempUser {
        // Unique per process and test; useradd limits names to 32 characters.
        let name = format!("hvt{}{tag}", std::process::id());
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .output()
            .expect("useradd (passwd) must be installed");
        assert!(out.status.success(), "useradd {name}: {out:?}");
        TempUser(name)
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).output();
    }
}

#[test]
fn with_file_capabilities_it_refuses_a_config_its_unprivileged_caller_chose() {
    // Arrange: the binary with file capabilities, in a directory anyone may enter, and a user-written config.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("migrate-havip");
    std::fs::copy(env!("CARGO_BIN_EXE_migrate-havip"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let setcap = Command::new("setcap")
        .args(["cap_net_admin,cap_net_raw+ep"])
        .arg(&bin)
        .output()
        .expect("setcap (libcap2-bin) must be installed");
    assert!(setcap.status.success(), "setcap: {setcap:?}");
    let user = TempUser::create("cfg");
    let evil = dir.path().join("evil.toml");
    std::fs::write(&evil, "# written by the unprivileged caller\n").unwrap();
    let chown = Command::new("chown")
        .arg(&user.0)
        .arg(&evil)
        .status()
        .unwrap();
    assert!(chown.success());

    // Act: run it as that user (setpriv drops root for good before the exec, as a login would), naming the
    // file in the environment (Sentinel's way) and with --config (an operator's way).
    let run_as_user = |config_flag: bool| {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            &user.0,
            "--regid",
            "nogroup",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .args(["--master", MASTER, "--to", "198.18.0.2"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
        if config_flag {
            cmd.arg("--config").arg(&evil);
        } else {
            cmd.env("HAVIP_AGENT_CONFIG", &evil);
        }
        cmd.output().expect("setpriv (util-linux)")
    };

    // Assert: exit 2, saying why and what to do; the file was not read (so nothing it names was used).
    for (how, out) in [("env", run_as_user(false)), ("--config", run_as_user(true))] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{how}: {stderr}");
        for want in [
            format!("refusing config {}", evil.display()),
            "runs with capabilities its caller lacks".to_owned(),
            format!("reads only {}", havip_agent::privs::TRUSTED_CONFIG_PATH),
            "run it as root or without the file capabilities".to_owned(),
        ] {
            assert!(stderr.contains(&want), "{how}: {want:?} not in:\n{stderr}");
        }
    }
}

#[test]
fn the_same_user_without_file_capabilities_may_choose_its_config() {
    // The control for the test above: the refusal comes from AT_SECURE, not from the user or the path.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("migrate-havip");
    std::fs::copy(env!("CARGO_BIN_EXE_migrate-havip"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let user = TempUser::create("ctl");
    let cfg = dir.path().join("mine.toml");
    std::fs::write(&cfg, "not = [valid\n").unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &user.0,
            "--regid",
            "nogroup",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .args(["--master", MASTER, "--to", "198.18.0.2"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HAVIP_AGENT_CONFIG", &cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("refusing config"), "{stderr}");
    assert!(
        stderr.contains(&cfg.display().to_string()),
        "it read the file: {stderr}"
    );
}

/// The node's address on `eth0` (the VIP 198.18.0.1/24 is in its subnet).
const ME: &str = "198.18.0.2";

fn fake_sentinels_on(ns: &Netns, ip: &str) -> Vec<FakeSentinel> {
    (0..3)
        .map(|_| {
            let listener = ns.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
            FakeSentinel::start_on(
                listener,
                Mode::Master {
                    ip: ip.parse().unwrap(),
                    epoch: 1,
                },
            )
            .unwrap()
        })
        .collect()
}

/// The `cap_eff` of the debug line `capabilities dropped` logged at `stage`.
fn cap_eff_at(stderr: &str, stage: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains("capabilities dropped") && l.contains(stage))
        .unwrap_or_else(|| panic!("no `capabilities dropped` line for {stage:?} in:\n{stderr}"));
    // The human format colours the field names, so take the value from the end of the line (it is last).
    assert!(line.contains("cap_eff"), "no cap_eff in {line}");
    let line = line.trim_end();
    line[line.len().saturating_sub(16)..].to_owned()
}

/// One node in a namespace whose `eth0` carries `node_addr` (this node's address [`ME`] with some prefix),
/// the fake cloud, three fake Sentinels naming this node; runs a claim as root (all capabilities).
fn claim_as_root(prefix: &str, node_addr: &str) -> (Netns, Run) {
    let ns = ns_with_nics(prefix, &[("eth0", "peer0")]);
    ns.add_addr("eth0", node_addr).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fake = rt.block_on(fake_in(&ns));
    fake.add_instance("ins-a", ns.mac("eth0").unwrap());
    fake.add_havip(HavipSpec::new(HAVIP_ID, vip_addr()).holder("ins-b"));
    let _watch = watch_in(&ns, &fake, "peer0");
    let sentinels = fake_sentinels_on(&ns, ME);
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeFile::new(&fake.endpoint(), &dir.path().join("lock"));
    node.sentinels = sentinels.iter().map(|s| s.addr().to_owned()).collect();
    let cfg = node.write(dir.path(), "config.toml");
    let mut env: Vec<(&str, String)> = cred_env()
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
    env.push(("HAVIP_AGENT_CONFIG", cfg.display().to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let r = run(migrate_cmd(&ns, &["--master", MASTER, "--to", ME], &env));
    (ns, r)
}

#[test]
fn a_claim_drops_every_capability_once_its_sockets_are_open_and_the_vip_is_bound() {
    // Arrange + act: a claim run by root (all capabilities, so a drop that did nothing would show).
    let (ns, r) = claim_as_root("mig-caps", &format!("{ME}/24"));

    // Assert: claimed, and the logged effective sets: only CAP_NET_ADMIN (bit 12) after the sockets are
    // open, nothing after the address change.
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(ns.ipv4_addrs("eth0").unwrap().contains(&VIP.to_owned()));
    assert_eq!(
        cap_eff_at(&r.stderr, "after opening the sockets"),
        "0000000000001000",
        "{}",
        r.stderr
    );
    assert_eq!(
        cap_eff_at(&r.stderr, "after the address change"),
        "0000000000000000",
        "{}",
        r.stderr
    );
}

#[test]
fn a_claim_refuses_a_vip_whose_prefix_differs_from_the_subnet_on_the_interface() {
    // The node's subnet is a /25; the configured VIP 198.18.0.1/24 claims a /24 around it.
    let (ns, r) = claim_as_root("mig-subnet", &format!("{ME}/25"));
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    for want in [VIP, "\"eth0\"", &format!("addresses found: {ME}/25")] {
        assert!(r.stderr.contains(want), "{want} not in:\n{}", r.stderr);
    }
    assert_eq!(ns.ipv4_addrs("eth0").unwrap(), [format!("{ME}/25")]);
}
