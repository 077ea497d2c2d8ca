//! The `migrate-havip` binary, run inside a network namespace (`ip netns exec`) as Sentinel or an operator
//! would run it: its exit codes, what it prints, what it changes on the interface (`eth0`, with `peer0` as
//! the wire) and which API calls the fake cloud (listening inside the namespace) recorded. Addresses:
//! 198.18.0.0/15. Needs root, iproute2 and setpriv; fails naming what is missing otherwise.

mod migrate_support;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;

use havip_agent::net::{KernelNet, LocalNet};
use havip_testkit::fake::{
    FakeCloud, FakeMetadata, Fault, FaultKind, GarpSeen, GarpWatch, HavipSpec, MetadataSpec,
    RoleCredentials,
};
use havip_testkit::testbed::fake_sentinel::{FakeSentinel, Mode};
use havip_testkit::testbed::netns::Netns;
use migrate_support::*;

/// This node's address (`node.address`).
const ME: &str = "198.18.0.2";
/// Another node's address.
const OTHER: &str = "198.18.0.3";

/// One node in a namespace with the fake cloud, a GARP watcher on the wire and its config file.
struct Site {
    watch: Option<GarpWatch>,
    /// How much of the watcher's list earlier barriers consumed.
    consumed: std::cell::Cell<usize>,
    /// Barriers so far.
    markers: std::cell::Cell<u8>,
    monitor: AddrMonitor,
    fake: FakeCloud,
    cfg: PathBuf,
    dir: tempfile::TempDir,
    /// Three fake Sentinels in the namespace; they name this node (epoch 1) unless a test says otherwise
    /// ([`Site::sentinels_name`]): `migrate-havip` asks them before it acts.
    sentinels: Vec<FakeSentinel>,
    _rt: tokio::runtime::Runtime,
    // Last: removed after everything that lives in it.
    ns: Netns,
}

impl Site {
    /// `eth0` carries 198.18.0.2/24 (the node's own address, which must never be touched).
    fn new(prefix: &str, havip: HavipSpec, edit: impl FnOnce(&mut NodeFile, &FakeCloud)) -> Site {
        let ns = ns_with_nics(prefix, &[("eth0", "peer0")]);
        ns.add_addr("eth0", "198.18.0.2/24").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let fake = rt.block_on(fake_in(&ns));
        fake.add_instance("ins-a", ns.mac("eth0").unwrap());
        fake.add_instance("ins-b", [0x02, 0, 0, 0, 0, 0x0b]);
        fake.add_havip(havip);
        let watch = Some(watch_in(&ns, &fake, "peer0"));
        let dir = tempfile::tempdir().unwrap();
        let sentinels = fake_sentinels_on(&ns, master_at(ME, 1));
        let mut node = NodeFile::new(&fake.endpoint(), &dir.path().join("lock"));
        node.sentinels = sentinels.iter().map(|s| s.addr().to_owned()).collect();
        edit(&mut node, &fake);
        let cfg = node.write(dir.path(), "config.toml");
        Site {
            sentinels,
            monitor: AddrMonitor::start(&ns),
            watch,
            consumed: std::cell::Cell::new(0),
            markers: std::cell::Cell::new(0),
            fake,
            cfg,
            dir,
            _rt: rt,
            ns,
        }
    }

    /// The default HAVIP: drift-range limiting on, empty range, held by ins-b.
    fn standard(prefix: &str) -> Site {
        Self::new(
            prefix,
            HavipSpec::new(HAVIP_ID, vip_addr())
                .check_associate(true)
                .holder("ins-b"),
            |_, _| {},
        )
    }

    /// The default node file of this site (its fake cloud, lock dir and fake Sentinels).
    fn node_file(&self) -> NodeFile {
        NodeFile {
            sentinels: self.sentinels.iter().map(|s| s.addr().to_owned()).collect(),
            ..NodeFile::new(&self.fake.endpoint(), &self.dir.path().join("lock"))
        }
    }

    /// Makes every fake Sentinel name `ip` as the master, with `epoch`.
    fn sentinels_name(&self, ip: &str, epoch: u64) {
        self.sentinels
            .iter()
            .for_each(|s| s.set(master_at(ip, epoch)));
    }

    fn cfg_env(&self) -> Vec<(&'static str, String)> {
        let mut env: Vec<(&'static str, String)> = cred_env()
            .into_iter()
            .map(|(k, v)| (k, v.to_owned()))
            .collect();
        env.push(("HAVIP_AGENT_CONFIG", self.cfg.display().to_string()));
        env
    }

    /// Runs `migrate-havip <args>` with the config and the credentials in the environment.
    fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &self.cfg_env())
    }

    fn run_env(&self, args: &[&str], env: &[(&str, String)]) -> Run {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run(migrate_cmd(&self.ns, args, &env))
    }

    fn addrs(&self) -> Vec<String> {
        self.ns.ipv4_addrs("eth0").unwrap()
    }

    fn vip_bound(&self) -> bool {
        self.addrs().contains(&VIP.to_owned())
    }

    /// GARPs for the VIP the watcher saw since the last call, up to a marker announced now.
    fn garps(&self) -> Vec<GarpSeen> {
        // A fresh marker address per barrier, so no frame of an earlier one can be taken for it.
        self.markers.set(self.markers.get() + 1);
        let marker = Ipv4Addr::new(198, 18, 0, 200 + self.markers.get());
        self.ns.block_on(|| async {
            let net = KernelNet::open("eth0").await.unwrap();
            net.announce_round(marker).await.unwrap();
        });
        let (seen, next) = seen_until(self.watch.as_ref().unwrap(), self.consumed.get(), marker);
        self.consumed.set(next);
        seen.into_iter().filter(|s| s.ip == vip_addr()).collect()
    }

    fn vip_adds(&self) -> usize {
        self.monitor
            .settled(&self.ns)
            .iter()
            .filter(|e| e.added && e.addr == vip_addr())
            .count()
    }
}

/// The one error line the command logs last.
fn final_error(r: &Run) -> String {
    r.final_error()
        .unwrap_or_else(|| panic!("no final error line: {}", r.show()))
        .to_owned()
}

/// Sentinel's seven arguments for a switch to `to`.
fn sentinel_args(role: &'static str, to: &'static str) -> Vec<&'static str> {
    vec![MASTER, role, "start", OTHER, "6379", to, "6379"]
}

#[test]
fn sentinel_form_claims_with_exit_0_and_a_repeat_exits_0_changing_nothing() {
    let site = Site::standard("mig-claim");
    let mac = site.ns.mac("eth0").unwrap();

    // Act: Sentinel's leader call, config and keys from the environment.
    let r = site.run(&sentinel_args("leader", ME));

    // Assert
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert!(
        r.stdout
            .contains("claimed by ins-a (added to the drift range)"),
        "{}",
        r.show()
    );
    let writes = site.fake.write_requests();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].action, "AssociateHaVipInstance");
    assert!(writes[0].signature_valid);
    assert_eq!(writes[0].secret_id.as_deref(), Some(SECRET_ID));
    assert_eq!(
        site.fake.havip(HAVIP_ID).unwrap().instance_id.as_deref(),
        Some("ins-a")
    );
    assert_eq!(
        site.addrs(),
        vec!["198.18.0.2/24".to_owned(), VIP.to_owned()]
    );
    let garps = site.garps();
    assert!(
        garps.iter().any(|g| g.op == 1) && garps.iter().any(|g| g.op == 2),
        "request and reply forms: {garps:?}"
    );
    assert!(garps.iter().all(|g| g.mac == mac), "{garps:?}");
    assert!(
        !r.stderr.contains(SECRET_KEY),
        "the secret key leaked into the logs"
    );
    assert!(
        r.stderr.contains("cloud.endpoint http://") && r.stderr.contains("in clear"),
        "the fake's http:// endpoint is warned about at start: {}",
        r.show()
    );

    // Act again: an observer's call for the same switch.
    site.fake.clear_requests();
    let again = site.run(&sentinel_args("observer", ME));

    assert_eq!(again.code, Some(0), "{}", again.show());
    assert!(again.stdout.contains("already held"), "{}", again.show());
    assert!(site.fake.write_requests().is_empty());
    assert!(site.garps().is_empty(), "the repeat sent GARPs");
    assert_eq!(site.vip_adds(), 1, "the kernel got the vip once");
    assert_eq!(
        site.addrs(),
        vec!["198.18.0.2/24".to_owned(), VIP.to_owned()]
    );
}

#[test]
fn operator_form_with_config_flag_claims_then_releases_without_an_api_call() {
    let site = Site::standard("mig-oper");
    let cfg = site.cfg.display().to_string();
    // Only the credentials in the environment: the config comes from --config.
    let env: Vec<(&str, String)> = cred_env()
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();

    let r = site.run_env(&["--config", &cfg, "--master", MASTER, "--to", ME], &env);
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert!(site.vip_bound());
    assert_eq!(
        site.fake.havip(HAVIP_ID).unwrap().instance_id.as_deref(),
        Some("ins-a")
    );

    site.fake.clear_requests();
    site.sentinels_name(OTHER, 2);
    let r = site.run_env(&["--config", &cfg, "--master", MASTER, "--to", OTHER], &env);
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert!(r.stdout.contains("removed"), "{}", r.show());
    assert_eq!(site.addrs(), vec!["198.18.0.2/24".to_owned()]);
    assert!(
        site.fake.requests().is_empty(),
        "{:?}",
        site.fake.requests()
    );

    // Sentinel's form naming another node (as the Sentinels do): nothing left to do is still exit 0.
    let r = site.run(&sentinel_args("observer", OTHER));
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert!(r.stdout.contains("nothing to do"), "{}", r.show());
    assert!(site.fake.requests().is_empty());
}

#[test]
fn config_flag_wins_over_the_environment() {
    let site = Site::standard("mig-cfgflag");
    let cfg = site.cfg.display().to_string();
    let mut env = site.cfg_env();
    for (k, v) in env.iter_mut() {
        if *k == "HAVIP_AGENT_CONFIG" {
            *v = "/nonexistent/havip-agent.toml".into();
        }
    }
    let r = site.run_env(
        &[
            "--config",
            &cfg,
            "--dry-run",
            "--master",
            MASTER,
            "--to",
            ME,
        ],
        &env,
    );
    assert_eq!(r.code, Some(0), "{}", r.show());
    let r = site.run_env(&["--dry-run", "--master", MASTER, "--to", ME], &env);
    assert_eq!(r.code, Some(2), "{}", r.show());
    assert!(
        r.stderr.contains("/nonexistent/havip-agent.toml"),
        "{}",
        r.show()
    );
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let site = Site::standard("mig-dry");

    let claim = site.run(&[
        "--dry-run",
        MASTER,
        "leader",
        "start",
        OTHER,
        "6379",
        ME,
        "6379",
    ]);
    site.sentinels_name(OTHER, 2);
    let release = site.run(&["--dry-run", "--master", MASTER, "--to", OTHER]);

    assert_eq!(claim.code, Some(0), "{}", claim.show());
    for want in [
        "dry run",
        "bind 198.18.0.1/24 on eth0",
        "AssociateHaVipInstance ins-a only if",
        "gratuitous ARP",
    ] {
        assert!(claim.stdout.contains(want), "{want:?} in {}", claim.show());
    }
    assert_eq!(release.code, Some(0), "{}", release.show());
    assert!(
        release.stdout.contains("remove 198.18.0.1/24 from eth0"),
        "{}",
        release.show()
    );
    assert!(
        site.fake.requests().is_empty(),
        "{:?}",
        site.fake.requests()
    );
    assert_eq!(site.addrs(), vec!["198.18.0.2/24".to_owned()]);
    assert!(site.garps().is_empty());
    assert_eq!(
        site.monitor.settled(&site.ns).len(),
        0,
        "{:?}",
        site.monitor.settled(&site.ns)
    );
}

/// Settings that keep the unconfirmed cases short: one API call times out after 300 ms, the whole claim
/// gives up after 2 s.
fn short(node: &mut NodeFile) {
    node.cloud_timeout = "300ms".into();
    node.deadline = "2s".into();
}

#[test]
fn api_unreachable_still_binds_and_announces_then_exits_1_saying_the_move_is_unconfirmed() {
    // A port that was just free inside the namespace: connections are refused.
    let site = Site::new(
        "mig-down",
        HavipSpec::new(HAVIP_ID, vip_addr())
            .check_associate(true)
            .holder("ins-b"),
        |node, _| {
            short(node);
            node.endpoint = "http://127.0.0.1:1".into();
        },
    );

    let r = site.run(&sentinel_args("leader", ME));

    assert_eq!(r.code, Some(1), "{}", r.show());
    assert!(site.vip_bound(), "the local bind still happened");
    assert!(!site.garps().is_empty(), "and the announcement");
    assert!(
        r.stderr
            .contains("the drift range and the move could not be confirmed"),
        "{}",
        r.show()
    );
    // The final error names the cause, not just that time ran out.
    let last = final_error(&r);
    assert!(last.contains("cannot reach http://127.0.0.1:1"), "{last}");
    assert!(site.fake.requests().is_empty());
}

#[test]
fn api_answering_503_still_binds_and_exits_1() {
    let site = Site::new(
        "mig-503",
        HavipSpec::new(HAVIP_ID, vip_addr())
            .check_associate(true)
            .holder("ins-b"),
        |node, fake| {
            short(node);
            fake.inject(Fault::always(FaultKind::Http(503)));
        },
    );

    let r = site.run(&sentinel_args("leader", ME));

    assert_eq!(r.code, Some(1), "{}", r.show());
    assert!(site.vip_bound());
    assert!(!site.garps().is_empty());
    let last = final_error(&r);
    assert!(last.contains("HTTP 503"), "{last}");
    assert!(
        r.stderr
            .contains("the drift range and the move could not be confirmed"),
        "{}",
        r.show()
    );
    let requests = site.fake.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|q| q.http_status == 503),
        "{requests:?}"
    );
    assert!(site.fake.write_requests().is_empty());
}

#[test]
fn two_service_unavailable_answers_are_retried_and_the_claim_exits_0() {
    // Regression: the VPC's documented transient codes made the claim exit 2, so Sentinel never retried.
    let site = Site::new(
        "mig-svc",
        HavipSpec::new(HAVIP_ID, vip_addr()).holder("ins-b"),
        |_, fake| fake.inject(Fault::service_unavailable("DescribeHaVips").times(2)),
    );

    let r = site.run(&sentinel_args("leader", ME));

    assert_eq!(r.code, Some(0), "{}", r.show());
    let unavailable = site
        .fake
        .requests()
        .iter()
        .filter(|q| q.error_code.as_deref() == Some("ServiceUnavailable"))
        .count();
    assert_eq!(unavailable, 2);
}

#[test]
fn an_action_locked_until_the_deadline_exits_1_so_sentinel_retries() {
    let site = Site::new(
        "mig-lck",
        HavipSpec::new(HAVIP_ID, vip_addr()).holder("ins-b"),
        |node, fake| {
            short(node);
            fake.inject(Fault::action_locked("DescribeHaVips"));
        },
    );

    let r = site.run(&sentinel_args("leader", ME));

    assert_eq!(r.code, Some(1), "{}", r.show());
    assert!(site.vip_bound());
    assert!(final_error(&r).contains("ActionLocked"), "{}", r.show());
}

#[test]
fn auth_failure_still_binds_and_exits_2_without_leaking_the_key() {
    let site = Site::standard("mig-auth");
    let wrong_key = "definitely-not-the-key-123";
    let mut env = site.cfg_env();
    for (k, v) in env.iter_mut() {
        if *k == "TENCENTCLOUD_SECRET_KEY" {
            *v = wrong_key.into();
        }
    }

    let r = site.run_env(&sentinel_args("leader", ME), &env);

    assert_eq!(r.code, Some(2), "{}", r.show());
    assert!(r.stderr.contains("AuthFailure"), "{}", r.show());
    assert!(site.vip_bound(), "the local bind still happened");
    assert!(!site.garps().is_empty(), "and the announcement");
    assert!(site.fake.write_requests().is_empty());
    assert!(!r.stderr.contains(wrong_key) && !r.stdout.contains(wrong_key));
}

#[test]
fn bad_arguments_exit_2_name_the_argument_make_no_api_call_and_touch_no_interface() {
    let site = Site::standard("mig-badargs");
    let seven = |i: usize, v: &'static str| {
        let mut a = sentinel_args("leader", ME);
        a[i] = v;
        a
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![MASTER, "leader", "start", OTHER, "6379", ME],
            "expected 7 arguments",
        ),
        (
            vec![
                MASTER, "leader", "start", OTHER, "6379", ME, "6379", "extra",
            ],
            "got 8",
        ),
        (vec![], "got 0"),
        (seven(3, "198.18.0.x"), "argument 4 (from-ip)"),
        (seven(5, "not-an-ip"), "argument 6 (to-ip)"),
        (seven(4, "0"), "argument 5 (from-port)"),
        (seven(6, "65536"), "argument 7 (to-port)"),
        (seven(6, "http"), "argument 7 (to-port)"),
        (seven(1, "follower"), "argument 2 (role)"),
        (
            seven(0, "othermaster"),
            "unknown master name \"othermaster\"",
        ),
        (vec!["--master", MASTER, "--to", "nope"], "--to"),
        (vec!["--master", MASTER], "--to"),
        (vec!["--to", ME], "--master"),
        (vec!["--master", "othermaster", "--to", ME], "othermaster"),
    ];
    for (args, needle) in &cases {
        let r = site.run(args);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.show());
        assert!(
            r.stderr.contains(needle),
            "{args:?}: stderr should name {needle:?}: {}",
            r.show()
        );
    }
    // A bad config is permanent too, and named.
    let bad = site.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[cloud]\nregion = \"ap-guangzhou\"\nhosting_type = 1\n",
    )
    .unwrap();
    let r = site.run(&[
        "--config",
        bad.to_str().unwrap(),
        "--master",
        MASTER,
        "--to",
        ME,
    ]);
    assert_eq!(r.code, Some(2), "{}", r.show());
    assert!(r.stderr.contains("hosting_type"), "{}", r.show());
    // So is a node.interface that does not exist.
    let node = NodeFile {
        interface: "nosuch0".into(),
        ..site.node_file()
    };
    let cfg = node.write(site.dir.path(), "nosuch.toml");
    let r = site.run(&[
        "--config",
        cfg.to_str().unwrap(),
        "--master",
        MASTER,
        "--to",
        ME,
    ]);
    assert_eq!(r.code, Some(2), "{}", r.show());
    assert!(final_error(&r).contains("\"nosuch0\""), "{}", r.show());

    assert!(
        site.fake.requests().is_empty(),
        "{:?}",
        site.fake.requests()
    );
    assert_eq!(site.addrs(), vec!["198.18.0.2/24".to_owned()]);
    assert!(
        site.monitor.settled(&site.ns).is_empty(),
        "{:?}",
        site.monitor.settled(&site.ns)
    );
    assert!(site.garps().is_empty());
    assert!(
        !site.dir.path().join("lock").exists(),
        "no lock was taken for a bad call"
    );
}

#[test]
fn missing_capabilities_exit_2_naming_the_capability_and_how_to_grant_it() {
    let site = Site::standard("mig-caps");
    let env = site.cfg_env();
    let dropped = |bounding: &str| {
        let mut cmd = site.ns.command("setpriv");
        cmd.args(["--inh-caps=-all", bounding, migrate_bin()]);
        cmd.args(sentinel_args("leader", ME));
        clean_env(&mut cmd);
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        cmd.stdin(Stdio::null());
        run(cmd)
    };

    let both = dropped("--bounding-set=-net_admin,-net_raw");
    let raw = dropped("--bounding-set=-net_raw");

    assert_eq!(both.code, Some(2), "{}", both.show());
    for want in [
        "CAP_NET_ADMIN and CAP_NET_RAW",
        "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW",
        "setcap cap_net_admin,cap_net_raw+ep",
    ] {
        assert!(both.stderr.contains(want), "{want:?}: {}", both.show());
    }
    assert_eq!(raw.code, Some(2), "{}", raw.show());
    assert!(
        raw.stderr.contains("missing capability CAP_NET_RAW:"),
        "{}",
        raw.show()
    );
    assert!(
        site.fake.requests().is_empty(),
        "{:?}",
        site.fake.requests()
    );
    assert!(!site.vip_bound());
    // The plan needs no privileges: an operator can look before acting.
    let mut cmd = site.ns.command("setpriv");
    cmd.args([
        "--inh-caps=-all",
        "--bounding-set=-net_admin,-net_raw",
        migrate_bin(),
        "--dry-run",
        "--master",
        MASTER,
        "--to",
        ME,
    ]);
    clean_env(&mut cmd);
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let plan = run(cmd);
    assert_eq!(plan.code, Some(0), "{}", plan.show());
    assert!(plan.stdout.contains("dry run"), "{}", plan.show());
    assert!(site.monitor.settled(&site.ns).is_empty());
}

#[test]
fn three_simultaneous_calls_all_exit_0_bind_once_and_associate_at_most_once() {
    // A slow DescribeHaVips makes the three calls overlap inside the claim: without the lock each would
    // find this instance out of range and associate it.
    let site = Site::new(
        "mig-three",
        HavipSpec::new(HAVIP_ID, vip_addr())
            .check_associate(true)
            .holder("ins-b"),
        |_, fake| {
            fake.inject(Fault::on(
                "DescribeHaVips",
                FaultKind::Delay(std::time::Duration::from_millis(150)),
            ))
        },
    );
    let env = site.cfg_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // Act: three Sentinels call at once (one leader, two observers).
    let children: Vec<_> = ["leader", "observer", "observer"]
        .into_iter()
        .map(|role| {
            let mut cmd = migrate_cmd(&site.ns, &sentinel_args(role, ME), &env);
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            cmd.spawn().expect("spawn migrate-havip")
        })
        .collect();
    let runs: Vec<Run> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            Run {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .collect();

    // Assert
    for r in &runs {
        assert_eq!(r.code, Some(0), "{}", r.show());
    }
    let claimed = runs
        .iter()
        .filter(|r| r.stdout.contains("claimed by"))
        .count();
    let held = runs
        .iter()
        .filter(|r| r.stdout.contains("already held"))
        .count();
    assert_eq!((claimed, held), (1, 2), "{runs:#?}");
    assert_eq!(site.vip_adds(), 1, "{:?}", site.monitor.settled(&site.ns));
    assert_eq!(
        site.addrs(),
        vec!["198.18.0.2/24".to_owned(), VIP.to_owned()]
    );
    let writes = site.fake.write_requests();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        writes[0].body["HaVipAssociationSet"][0]["InstanceId"],
        "ins-a"
    );
    assert_eq!(
        site.fake.havip(HAVIP_ID).unwrap().instance_id.as_deref(),
        Some("ins-a")
    );
}

#[test]
fn an_unprivileged_user_with_ambient_capabilities_can_claim_with_a_lock_file_root_created() {
    // As Sentinel's `redis` user with `AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW`, after the daemon
    // (root) has created the lock file with the usual 0644.
    use std::os::unix::fs::PermissionsExt;
    let site = Site::standard("mig-user");
    let lock_dir = site.dir.path().join("lock");
    std::fs::create_dir(&lock_dir).unwrap();
    let lock_file = lock_dir.join(format!("{HAVIP_ID}.lock"));
    std::fs::write(&lock_file, "").unwrap();
    std::fs::set_permissions(&lock_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    for p in [site.dir.path(), lock_dir.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // No secret in it (the keys come from the environment), so it may be world-readable.
    std::fs::set_permissions(&site.cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let env = site.cfg_env();
    let mut cmd = site.ns.command("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+net_admin,+net_raw",
        "--ambient-caps=+net_admin,+net_raw",
        migrate_bin(),
    ]);
    cmd.args(sentinel_args("leader", ME));
    clean_env(&mut cmd);
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    cmd.stdin(Stdio::null());

    let r = run(cmd);

    assert_eq!(r.code, Some(0), "{}", r.show());
    assert!(r.stdout.contains("claimed by ins-a"), "{}", r.show());
    assert!(site.vip_bound());
}

#[test]
fn a_lock_dir_that_cannot_be_created_is_a_permanent_error_naming_the_key() {
    // Retrying cannot fix it, so Sentinel must not retry it (exit 2), and the message says what to change.
    let site = Site::new(
        "mig-lockdir",
        HavipSpec::new(HAVIP_ID, vip_addr())
            .check_associate(true)
            .holder("ins-b"),
        |node, _| node.lock_dir = "/proc/havip-agent-lock".into(),
    );

    let r = site.run(&sentinel_args("leader", ME));

    assert_eq!(r.code, Some(2), "{}", r.show());
    let last = final_error(&r);
    assert!(
        last.contains("/proc/havip-agent-lock") && last.contains("claim.lock_dir"),
        "{last}"
    );
}

/// A fake metadata service for node `ins-a` (198.18.0.2, eth0's MAC) listening inside the site's namespace.
fn metadata_in(site: &Site, role: Option<RoleCredentials>) -> FakeMetadata {
    let listener = site
        .ns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let mut spec = MetadataSpec::new(
        "ins-a",
        Ipv4Addr::new(198, 18, 0, 2),
        site.ns.mac("eth0").unwrap(),
    );
    if let Some(role) = role {
        spec = spec.with_role(role);
    }
    site._rt.block_on(FakeMetadata::start_on(listener, spec))
}

/// Rewrites the site's config with `edit` applied.
fn rewrite(site: &Site, edit: impl FnOnce(&mut NodeFile)) {
    let mut node = site.node_file();
    edit(&mut node);
    node.write(site.dir.path(), "config.toml");
}

#[test]
fn identity_and_role_credentials_from_the_metadata_service_claim_with_a_token() {
    // A CVM without keys on disk: instance id and address "auto", a CAM role's temporary credentials.
    let site = Site::standard("mig-role");
    let expires = havip_agent::clock::unix_seconds(std::time::SystemTime::now()) + 3600;
    site.fake
        .add_temporary_key("AKIDroletmp01", "role-tmp-key-01", "role-token-01");
    let md = metadata_in(
        &site,
        Some(RoleCredentials::new(
            "havip-role",
            "AKIDroletmp01",
            "role-tmp-key-01",
            "role-token-01",
            expires,
        )),
    );
    rewrite(&site, |node| {
        node.metadata = md.endpoint();
        node.instance_id = "auto".into();
        node.address = "auto".into();
    });
    let env = vec![("HAVIP_AGENT_CONFIG", site.cfg.display().to_string())];

    let r = site.run_env(&sentinel_args("leader", ME), &env);

    assert_eq!(r.code, Some(0), "{}", r.show());
    assert!(r.stdout.contains("claimed by ins-a"), "{}", r.show());
    let writes = site.fake.write_requests();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(writes[0].signature_valid, "{:?}", writes[0].signature_error);
    assert_eq!(writes[0].secret_id.as_deref(), Some("AKIDroletmp01"));
    assert_eq!(writes[0].header("x-tc-token"), Some("role-token-01"));
    assert!(site.vip_bound());
    assert!(!r.stderr.contains("role-tmp-key-01") && !r.stderr.contains("role-token-01"));
}

#[test]
fn without_credentials_the_vip_is_still_bound_and_the_exit_code_says_whether_a_retry_can_help() {
    // No keys anywhere and no role bound: an operator must act (exit 2).
    let site = Site::standard("mig-nocreds");
    let md = metadata_in(&site, None);
    rewrite(&site, |node| node.metadata = md.endpoint());
    let env = vec![("HAVIP_AGENT_CONFIG", site.cfg.display().to_string())];

    let r = site.run_env(&sentinel_args("leader", ME), &env);

    assert_eq!(r.code, Some(2), "{}", r.show());
    let last = final_error(&r);
    assert!(
        last.contains("bound and announced locally")
            && last.contains("no Tencent Cloud credentials"),
        "{last}"
    );
    assert!(site.vip_bound());
    assert!(!site.garps().is_empty());
    assert!(site.fake.requests().is_empty());

    // The metadata service does not answer (a blip on a CVM): Sentinel should try again later (exit 1).
    site.ns.del_addr("eth0", VIP).unwrap();
    rewrite(&site, |node| {
        node.metadata = "http://127.0.0.1:9/latest/meta-data/".into()
    });

    let r = site.run_env(&sentinel_args("leader", ME), &env);

    assert_eq!(r.code, Some(1), "{}", r.show());
    assert!(
        final_error(&r).contains("bound and announced locally"),
        "{}",
        r.show()
    );
    assert!(site.vip_bound());
    assert!(site.fake.requests().is_empty());
}

#[test]
fn claims_with_an_empty_path_because_it_never_runs_ip() {
    let site = Site::standard("mig-nopath");
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("iproute2's ip");
    let mut cmd = std::process::Command::new(ip);
    cmd.args(["netns", "exec", site.ns.name(), migrate_bin()]);
    cmd.args(sentinel_args("leader", ME));
    clean_env(&mut cmd);
    cmd.envs(site.cfg_env().iter().map(|(k, v)| (*k, v.clone())));
    cmd.env("PATH", "/nonexistent");
    cmd.stdin(Stdio::null());

    let r = run(cmd);

    assert_eq!(r.code, Some(0), "{}", r.show());
    assert!(site.vip_bound());
}

#[test]
fn without_config_flag_or_environment_the_default_path_is_read() {
    let default = std::path::Path::new("/etc/havip-agent/config.toml");
    assert!(
        !default.exists(),
        "this test expects no {} on the test machine",
        default.display()
    );
    let site = Site::standard("mig-default");
    let env: Vec<(&str, String)> = cred_env()
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();

    let r = site.run_env(&sentinel_args("leader", ME), &env);

    assert_eq!(r.code, Some(2), "{}", r.show());
    assert!(
        final_error(&r).contains("cannot read config file /etc/havip-agent/config.toml"),
        "{}",
        r.show()
    );
    assert!(!site.vip_bound());
}

#[test]
fn a_hanging_api_does_not_hold_the_first_garp_back_for_the_whole_cloud_timeout() {
    // The API accepts the connection and never answers in time; cloud.timeout is long. The local part
    // (bind + GARP) is what clients on the segment need, so it must not wait the full 20 s.
    let site = Site::new(
        "mig-hang",
        HavipSpec::new(HAVIP_ID, vip_addr())
            .check_associate(true)
            .associate("ins-a")
            .holder("ins-b"),
        |node, fake| {
            node.cloud_timeout = "20s".into();
            node.deadline = "30s".into();
            fake.inject(Fault::on(
                "DescribeHaVips",
                FaultKind::Delay(std::time::Duration::from_secs(25)),
            ));
        },
    );
    let env = site.cfg_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut child = migrate_cmd(&site.ns, &sentinel_args("leader", ME), &env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn migrate-havip");

    // Poll (generously, but well under cloud.timeout) for the first GARP.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(12);
    let announced = loop {
        let seen = site.watch.as_ref().unwrap().seen();
        if seen.iter().any(|g| g.ip == vip_addr()) {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();

    assert!(
        announced,
        "no GARP while the first DescribeHaVips hung: the claim waits for the whole cloud.timeout"
    );
    assert!(site.vip_bound());
    assert!(
        site.fake
            .requests()
            .iter()
            .all(|r| r.action == "DescribeHaVips"),
        "{:?}",
        site.fake.requests()
    );
}

/// Three fake Sentinels listening on 127.0.0.1 inside the site's namespace, all in `mode`.
fn fake_sentinels_in(site: &Site, mode: Mode) -> Vec<FakeSentinel> {
    fake_sentinels_on(&site.ns, mode)
}

#[test]
fn as_notification_script_it_releases_when_the_majority_is_out_of_sight_and_reclaims_when_named_again()
 {
    let site = Site::standard("mig-notify");
    let me = Mode::Master {
        ip: ME.parse().unwrap(),
        epoch: 1,
    };
    let sentinels = fake_sentinels_in(&site, me);
    let set = |mode: Mode| sentinels.iter().for_each(|s| s.set(mode));
    rewrite(&site, |node| {
        node.sentinels = sentinels.iter().map(|s| s.addr().to_owned()).collect()
    });
    let r = site.run(&sentinel_args("leader", ME));
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert!(site.vip_bound());
    site.garps();
    site.fake.clear_requests();

    // This host's Sentinel lost the others (the host is cut off): every Sentinel is out of sight.
    set(Mode::Unreachable);
    let cut_off = "sentinel 3f2a 198.18.0.3 26379 @ mymaster 198.18.0.2 6379";

    // An event that is not about reachability is acknowledged and changes nothing, even now.
    let r = site.run(&["+switch-master", "mymaster 198.18.0.2 6379 198.18.0.3 6379"]);
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert!(site.vip_bound(), "a non-reachability event moved the vip");

    let r = site.run(&["+sdown", cut_off]);
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert!(
        !site.vip_bound(),
        "cut off, the vip stayed bound: {}",
        r.show()
    );
    assert!(
        r.stdout.contains("released") && r.stdout.contains("0 of 3 sentinels reachable"),
        "{}",
        r.show()
    );
    assert!(
        site.fake.requests().is_empty(),
        "the fence needs no API call"
    );

    // The majority is back and still names this node: bound again and announced.
    set(me);
    let r = site.run(&["-sdown", cut_off]);
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert!(
        site.vip_bound(),
        "named again, the vip was not re-bound: {}",
        r.show()
    );
    assert!(!site.garps().is_empty(), "re-bound without announcing");

    // The majority names another node with a newer epoch: released.
    set(Mode::Master {
        ip: OTHER.parse().unwrap(),
        epoch: 2,
    });
    let r = site.run(&["-odown", "master mymaster 198.18.0.2 6379"]);
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert!(
        !site.vip_bound(),
        "demoted, the vip stayed bound: {}",
        r.show()
    );
    assert_eq!(site.addrs(), vec!["198.18.0.2/24".to_owned()]);

    // A malformed notification is rejected naming the argument, without touching anything.
    site.fake.clear_requests();
    set(Mode::Master {
        ip: ME.parse().unwrap(),
        epoch: 3,
    });
    for args in [
        ["+sdown", "slave 198.18.0.3:6379 198.18.0.3 6379"],
        ["sdown", cut_off],
    ] {
        let r = site.run(&args);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.show());
        assert!(
            final_error(&r).contains("argument"),
            "{args:?}: {}",
            r.show()
        );
        assert!(!site.vip_bound(), "{args:?} bound the vip");
    }
    assert!(site.fake.requests().is_empty());
}
