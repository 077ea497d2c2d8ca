//! `migrate-havip` as the `client-reconfig-script` of a real Sentinel deployment: three `redis-server` and
//! three `redis-sentinel` in one network namespace on 127.0.0.11-13 (announce-ip set), each "node" with its
//! own veth pair as its `node.interface`, the fake cloud listening in the namespace and its GARP watcher on
//! every veth peer (real GARPs move the holder). The master is killed; Sentinel fails over and runs the
//! script on every Sentinel with that node's config. Needs root, iproute2 and redis-server/redis-sentinel.

mod migrate_support;

use std::time::Duration;

use havip_testkit::fake::HavipSpec;
use havip_testkit::testbed::redis::{LabHost, LabSpec, RedisLab};
use migrate_support::*;
use tokio::time::Instant;

const NODES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_moves_the_vip_to_the_new_master_through_the_reconfig_script() {
    // Arrange: the namespace, its three NICs and the fake cloud inside it.
    let pairs: Vec<(String, String)> = (0..NODES).map(|i| (node_nic(i), format!("p{i}"))).collect();
    let pair_refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let ns = ns_with_nics("mig-sentinel", &pair_refs);
    let fake = fake_in(&ns).await;
    for i in 0..NODES {
        fake.add_instance(&node_instance(i), ns.mac(&node_nic(i)).unwrap());
    }
    // Node 0 is the master and holds the VIP; only it is in the drift range.
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
    let _watches: Vec<_> = (0..NODES)
        .map(|i| watch_in(&ns, &fake, &format!("p{i}")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let configs: Vec<_> = (0..NODES)
        .map(|i| dir.path().join(format!("node-{i}.toml")))
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
        reconfig_script: Some(migrate_bin().into()),
        sentinel_env: configs
            .iter()
            .map(|cfg| {
                let mut env: Vec<(String, String)> = cred_env()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                env.push(("HAVIP_AGENT_CONFIG".into(), cfg.display().to_string()));
                env
            })
            .collect(),
        // `-script-child <pid> <signal> <exit code>` is a debug-level event.
        sentinel_conf: vec!["loglevel debug".into()],
        ..LabSpec::default()
    })
    .await
    .expect("the redis lab starts inside the namespace");
    // The configs are read when the script runs, after the failover; the lab picked the ports.
    for (i, cfg) in configs.iter().enumerate() {
        let mut node = NodeFile::new(&fake.endpoint(), &dir.path().join(format!("lock-{i}")));
        node.instance_id = node_instance(i);
        node.address = node_address(i).to_string();
        node.interface = node_nic(i);
        node.sentinels = lab.sentinel_addrs();
        node.write(dir.path(), cfg.file_name().unwrap().to_str().unwrap());
    }

    // Act: the master dies.
    let old = lab.redis_addr(0);
    lab.kill_redis(0);
    let new = lab
        .wait_master(|a| a != old, Duration::from_secs(30))
        .await
        .expect("sentinels fail over");
    let w = lab.node_of(new).expect("the new master is a lab node");
    assert_ne!(w, 0);

    // Assert: every Sentinel ran the script, and every run exited 0.
    let deadline = Instant::now() + patience();
    loop {
        let done = (0..NODES)
            .filter(|i| lab.sentinel_log(*i).contains("-script-child"))
            .count();
        if done == NODES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every sentinel ran the script:\n{}\n{}",
            lab.logs_tail(30),
            script_output(&lab)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..NODES {
        let log = lab.sentinel_log(i);
        let exits: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("-script-child"))
            .collect();
        assert!(
            exits.iter().all(|l| l.ends_with(" 0 0")) && !log.contains("-script-error"),
            "sentinel {i}: the script did not exit 0: {exits:?}\n{}",
            script_output(&lab)
        );
    }
    // The fake recorded one signed AssociateHaVipInstance, for the new master's instance.
    let writes = fake.write_requests();
    assert_eq!(writes.len(), 1, "{writes:?}\n{}", script_output(&lab));
    assert_eq!(writes[0].action, "AssociateHaVipInstance");
    assert!(writes[0].signature_valid, "{:?}", writes[0].signature_error);
    assert_eq!(
        writes[0].body["HaVipAssociationSet"][0]["InstanceId"],
        node_instance(w).as_str()
    );
    // The VIP is on the winner's interface only, and the cloud names the winner.
    for i in 0..NODES {
        let addrs = ns.ipv4_addrs(&node_nic(i)).unwrap();
        assert_eq!(
            addrs.contains(&VIP.to_owned()),
            i == w,
            "node {i} ({}) has {addrs:?}; winner is node {w}\n{}",
            node_nic(i),
            script_output(&lab)
        );
    }
    assert_eq!(
        fake.havip(HAVIP_ID).unwrap().instance_id,
        Some(node_instance(w)),
        "{:?}",
        fake.moves()
    );
    drop(lab);
    drop(ns);
}

/// What the script printed under each Sentinel (it inherits the Sentinel's stdout and stderr).
fn script_output(lab: &RedisLab) -> String {
    (0..lab.nodes())
        .map(|i| {
            let path = lab.dir().join(format!("sentinel-{i}.out"));
            format!(
                "--- {} ---\n{}",
                path.display(),
                std::fs::read_to_string(&path).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
