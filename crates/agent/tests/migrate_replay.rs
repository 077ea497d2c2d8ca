//! `migrate-havip` asks the real Sentinels what is true now: its arguments (Sentinel's seven, or an
//! operator's `--master NAME --to IP`) say when to look, never what to do. A real Sentinel deployment (three
//! `redis-server` and three `redis-sentinel` on 127.0.0.11-13, announce-ip set, all inside one network
//! namespace, the master on node 0 and every Sentinel at config-epoch [`EPOCH`]), each "node" with its own
//! veth pair as its `node.interface`, the fake cloud listening in the namespace and a GARP watcher on every
//! veth peer. The binary is run directly with arguments the test chooses (a replayed or stale call), not by
//! Sentinel. Needs root, iproute2 and redis-server/redis-sentinel.

mod migrate_support;

use std::cell::Cell;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use havip_agent::net::{KernelNet, LocalNet};
use havip_testkit::fake::{FakeCloud, GarpSeen, GarpWatch, HavipSpec};
use havip_testkit::testbed::netns::Netns;
use havip_testkit::testbed::redis::{LabHost, LabSpec, RedisLab};
use migrate_support::*;

const NODES: usize = 3;
/// The config-epoch every Sentinel of the deployment starts with (distinct from any port or address).
const EPOCH: u64 = 4242;

/// One deployment at a time: each is six processes, and this machine may have two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The namespace, the fake cloud, the GARP watchers, one config per node and the real Sentinel deployment.
/// Node 0 is the master (as the Sentinels say), holds the VIP on `n0` and is the only instance in the drift
/// range.
struct Deployment {
    // First: the processes go before the namespace.
    lab: RedisLab,
    watches: Vec<GarpWatch>,
    /// Per node: how much of its watcher's list earlier barriers consumed.
    consumed: Vec<Cell<usize>>,
    /// Barriers so far.
    markers: Cell<u8>,
    fake: FakeCloud,
    configs: Vec<PathBuf>,
    _dir: tempfile::TempDir,
    // Last: removed after everything that lives in it.
    ns: Netns,
}

impl Deployment {
    async fn start(prefix: &str) -> Deployment {
        let pairs: Vec<(String, String)> =
            (0..NODES).map(|i| (node_nic(i), node_peer(i))).collect();
        let pair_refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let ns = ns_with_nics(prefix, &pair_refs);
        let fake = fake_in(&ns).await;
        for i in 0..NODES {
            fake.add_instance(&node_instance(i), ns.mac(&node_nic(i)).unwrap());
        }
        fake.add_havip(
            HavipSpec::new(HAVIP_ID, vip_addr())
                .check_associate(true)
                .associate(node_instance(0))
                .holder(node_instance(0)),
        );
        // Each node's own address first (the primary of the subnet): a VIP is bound only inside the subnet
        // of an address already on the NIC (`net::check_vip_subnet`).
        for i in 0..NODES {
            ns.add_addr(&node_nic(i), &format!("198.18.0.{}/24", 150 + i))
                .unwrap();
        }
        ns.add_addr(&node_nic(0), VIP).unwrap();
        let watches: Vec<_> = (0..NODES)
            .map(|i| watch_in(&ns, &fake, &node_peer(i)))
            .collect();
        let lab = RedisLab::start(LabSpec {
            hosts: Some(
                (0..NODES)
                    .map(|i| LabHost {
                        ip: node_address(i),
                        netns: Some(ns.name().to_owned()),
                    })
                    .collect(),
            ),
            sentinel_conf: vec![format!("sentinel config-epoch {MASTER} {EPOCH}")],
            ..LabSpec::default()
        })
        .await
        .expect("the redis lab starts inside the namespace");
        // Setup checks: the Sentinels name node 0 at EPOCH (else the tests below would prove nothing).
        lab.wait_master(|a| a == lab.redis_addr(0), Duration::from_secs(30))
            .await
            .expect("every sentinel names node 0");
        let info = lab
            .sentinel_command(0, &["SENTINEL", "MASTER", MASTER])
            .await
            .expect("SENTINEL MASTER");
        assert!(
            format!("{info:?}").contains(&EPOCH.to_string()),
            "the lab's sentinels do not report config-epoch {EPOCH}: {info:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let configs = (0..NODES)
            .map(|i| {
                let mut node =
                    NodeFile::new(&fake.endpoint(), &dir.path().join(format!("lock-{i}")));
                node.instance_id = node_instance(i);
                node.address = node_address(i).to_string();
                node.interface = node_nic(i);
                node.sentinels = lab.sentinel_addrs();
                node.write(dir.path(), &format!("node-{i}.toml"))
            })
            .collect();
        Deployment {
            lab,
            consumed: (0..NODES).map(|_| Cell::new(0)).collect(),
            watches,
            markers: Cell::new(0),
            fake,
            configs,
            _dir: dir,
            ns,
        }
    }

    /// Redis `i`'s port, as Sentinel passes it.
    fn port(&self, i: usize) -> String {
        self.lab.redis_addr(i).port().to_string()
    }

    /// Sentinel's seven arguments for a switch from node `from` to node `to`.
    fn seven(&self, role: &str, from: usize, to: usize) -> Vec<String> {
        vec![
            MASTER.to_owned(),
            role.to_owned(),
            "start".to_owned(),
            node_address(from).to_string(),
            self.port(from),
            node_address(to).to_string(),
            self.port(to),
        ]
    }

    /// Runs `migrate-havip <args>` as node `i` (its config and the credentials in the environment).
    fn run(&self, i: usize, args: &[String]) -> Run {
        let cfg = self.configs[i].display().to_string();
        let mut env = cred_env();
        env.push(("HAVIP_AGENT_CONFIG", cfg.as_str()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cmd = migrate_cmd(&self.ns, &args, &env);
        tokio::task::block_in_place(|| run(cmd))
    }

    fn vip_bound(&self, i: usize) -> bool {
        self.ns
            .ipv4_addrs(&node_nic(i))
            .unwrap()
            .contains(&VIP.to_owned())
    }

    /// GARPs for the VIP seen on node `i`'s wire since the last call, up to a marker announced now from its
    /// NIC (one socket, in order: every earlier frame is read before the marker).
    fn garps(&self, i: usize) -> Vec<GarpSeen> {
        self.markers.set(self.markers.get() + 1);
        let marker = Ipv4Addr::new(198, 18, 0, 200 + self.markers.get());
        let ifname = node_nic(i);
        tokio::task::block_in_place(|| {
            self.ns.block_on(|| async move {
                let net = KernelNet::open(&ifname).await.unwrap();
                net.announce_round(marker).await.unwrap();
            });
            let (seen, next) = seen_until(&self.watches[i], self.consumed[i].get(), marker);
            self.consumed[i].set(next);
            seen.into_iter().filter(|s| s.ip == vip_addr()).collect()
        })
    }

    fn associate_calls(&self) -> Vec<String> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| r.action == "AssociateHaVipInstance")
            .map(|r| r.body.to_string())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_release_keeps_the_vip_on_the_host_the_sentinels_name_as_master() {
    // Guards: the 7-argument form decided from <to-ip> alone, so a stale release unbound the live master.
    let _serial = SERIAL.lock().await;
    let d = Deployment::start("replay-release").await;
    d.garps(0);
    d.fake.clear_requests();

    // Act: node 0 gets a call moving the master to node 1, which the Sentinels do not say.
    let r = d.run(0, &d.seven("observer", 0, 1));

    // Assert
    let mut problems = Vec::new();
    if r.code != Some(0) {
        problems.push(format!("exit {:?}, want 0", r.code));
    }
    if !d.vip_bound(0) {
        problems.push(format!(
            "the vip was removed from {} although every sentinel names this host ({}) as master",
            node_nic(0),
            d.lab.redis_addr(0)
        ));
    }
    if !r.stderr.contains("superseded") {
        problems.push("stderr does not say the call was superseded".into());
    }
    assert!(problems.is_empty(), "{problems:#?}\n{}", r.show());
    assert_eq!(
        d.fake.havip(HAVIP_ID).unwrap().instance_id,
        Some(node_instance(0)),
        "{:?}",
        d.fake.moves()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_claim_on_a_host_the_sentinels_do_not_name_binds_nothing_calls_no_api_and_sends_no_garp()
 {
    // Guards: the 7-argument form decided from <to-ip> alone, so a stale claim stole the VIP from the master.
    let _serial = SERIAL.lock().await;
    let d = Deployment::start("replay-claim").await;
    d.garps(1);
    d.fake.clear_requests();

    // Act: node 1 gets a call naming it the new master, which the Sentinels do not say (they name node 0).
    let r = d.run(1, &d.seven("leader", 0, 1));

    // Assert
    let mut problems = Vec::new();
    if r.code != Some(0) {
        problems.push(format!("exit {:?}, want 0", r.code));
    }
    if d.vip_bound(1) {
        problems.push(format!(
            "the vip was bound on {} although the sentinels name {} as master",
            node_nic(1),
            d.lab.redis_addr(0)
        ));
    }
    let associate = d.associate_calls();
    if !associate.is_empty() {
        problems.push(format!("AssociateHaVipInstance was called: {associate:?}"));
    }
    let garps = d.garps(1);
    if !garps.is_empty() {
        problems.push(format!(
            "{} gratuitous ARP frames for the vip on {}: {garps:?}",
            garps.len(),
            node_nic(1)
        ));
    }
    if !r.stderr.contains("superseded") {
        problems.push("stderr does not say the call was superseded".into());
    }
    assert!(problems.is_empty(), "{problems:#?}\n{}", r.show());
    assert!(d.vip_bound(0), "the master lost the vip");
    assert_eq!(
        d.fake.havip(HAVIP_ID).unwrap().instance_id,
        Some(node_instance(0)),
        "{:?}",
        d.fake.moves()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_form_refuses_a_move_the_sentinels_contradict_unless_forced() {
    // Guards: `--master NAME --to IP` moved the VIP to whatever --to said, against what the Sentinels say.
    let _serial = SERIAL.lock().await;
    let d = Deployment::start("replay-operator").await;
    d.garps(1);
    d.fake.clear_requests();
    let to_me = ["--master", MASTER, "--to", "127.0.0.12"].map(String::from);

    // Act: an operator on node 1 asks to move the VIP there; the Sentinels name node 0.
    let r = d.run(1, &to_me);

    // Assert: refused (exit 2, naming what the Sentinels say), nothing touched.
    let mut problems = Vec::new();
    if r.code != Some(2) {
        problems.push(format!("exit {:?}, want 2 (refused)", r.code));
    }
    let named = d.lab.redis_addr(0);
    let last = r.final_error().unwrap_or_default();
    if !(last.contains(&named.ip().to_string()) && last.contains(&named.port().to_string())) {
        problems.push(format!(
            "the final error {last:?} does not name the master the sentinels name ({named})"
        ));
    }
    if d.vip_bound(1) {
        problems.push(format!("the vip was bound on {}", node_nic(1)));
    }
    let associate = d.associate_calls();
    if !associate.is_empty() {
        problems.push(format!("AssociateHaVipInstance was called: {associate:?}"));
    }
    let garps = d.garps(1);
    if !garps.is_empty() {
        problems.push(format!("gratuitous ARP for the vip: {garps:?}"));
    }
    assert!(problems.is_empty(), "{problems:#?}\n{}", r.show());
    assert!(d.vip_bound(0), "the master lost the vip");

    // Act: the same with --force acts on the arguments.
    let forced: Vec<String> = to_me.iter().cloned().chain(["--force".into()]).collect();
    let r = d.run(1, &forced);

    // Assert: claimed on node 1, with the API call and the announcement.
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert!(r.stdout.contains("claimed by ins-1"), "{}", r.show());
    assert!(d.vip_bound(1), "--force did not bind the vip");
    let associate = d.associate_calls();
    assert!(
        associate.len() == 1 && associate[0].contains("ins-1"),
        "{associate:?}"
    );
    assert!(!d.garps(1).is_empty(), "--force bound without announcing");
    assert_eq!(
        d.fake.havip(HAVIP_ID).unwrap().instance_id,
        Some(node_instance(1)),
        "{:?}",
        d.fake.moves()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_prints_the_master_and_epoch_the_sentinels_name() {
    // Guards: --dry-run showed only the plan from the arguments, not what the Sentinels say is true now.
    let _serial = SERIAL.lock().await;
    let d = Deployment::start("replay-dry").await;
    d.garps(1);
    d.fake.clear_requests();

    let r = d.run(
        1,
        &["--dry-run", "--master", MASTER, "--to", "127.0.0.11"].map(String::from),
    );

    assert_eq!(r.code, Some(0), "{}", r.show());
    let master = d.lab.redis_addr(0);
    for (what, want) in [
        ("the master's address", master.ip().to_string()),
        ("the master's port", master.port().to_string()),
        ("the config-epoch", EPOCH.to_string()),
    ] {
        assert!(
            r.stdout.contains(&want),
            "stdout does not print {what} ({want}) the sentinels name:\n{}",
            r.show()
        );
    }
    assert!(r.stdout.contains("epoch"), "{}", r.show());
    // And nothing changed.
    assert!(d.fake.requests().is_empty(), "{:?}", d.fake.requests());
    assert!(d.vip_bound(0) && !d.vip_bound(1));
    assert!(d.garps(1).is_empty());
}
