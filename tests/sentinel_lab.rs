//! The Redis lab (`testbed::redis`) itself: real `redis-server` + `redis-sentinel` processes that actually fail
//! over, freeze and thaw, and run inside a network namespace.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use havip_agent::testbed::redis::{LabHost, LabSpec, RedisLab};

fn role(v: &redis::Value) -> String {
    match v {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        },
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_fails_over_when_the_master_is_killed_and_the_old_master_rejoins_as_replica() {
    // Arrange
    let lab = RedisLab::start(LabSpec::default())
        .await
        .expect("lab starts");
    let old = lab.redis_addr(0);
    assert_eq!(
        lab.master_per_sentinel().await,
        vec![Some(old); 3],
        "every sentinel names node 0 as master at start"
    );

    // Act
    let killed = Instant::now();
    lab.kill_redis(0);
    let new = lab
        .wait_master(|a| a != old, Duration::from_secs(30))
        .await
        .expect("sentinels fail over");
    println!(
        "all sentinels named the new master {new} {:?} after the master was killed",
        killed.elapsed()
    );

    // Assert
    let node = lab.node_of(new).expect("the new master is a lab node");
    assert_ne!(node, 0);
    let reply = lab.redis_command(node, &["ROLE"]).await.unwrap();
    assert_eq!(role(&reply), "master", "the promoted replica says master");
    let leader_log = (0..3).map(|i| lab.sentinel_log(i)).collect::<String>();
    assert!(
        leader_log.contains("+switch-master"),
        "{}",
        lab.logs_tail(20)
    );

    lab.restart_redis(0).await.expect("old master restarts");
    lab.wait_ready(Duration::from_secs(30))
        .await
        .expect("old master rejoins as a replica of the new one");
    let reply = lab.redis_command(0, &["ROLE"]).await.unwrap();
    assert_eq!(
        role(&reply),
        "slave",
        "the old master was converted to a replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_sentinel_stops_answering_until_thawed_and_restart_keeps_its_config() {
    let lab = RedisLab::start(LabSpec::default())
        .await
        .expect("lab starts");

    lab.stop_sentinel(1).unwrap();
    let frozen = lab.sentinel_command(1, &["PING"]).await;
    assert!(
        frozen.is_err(),
        "a frozen sentinel does not answer: {frozen:?}"
    );
    assert_eq!(lab.master_per_sentinel().await[1], None);

    lab.cont_sentinel(1).unwrap();
    lab.sentinel_command(1, &["PING"])
        .await
        .expect("a thawed sentinel answers");

    lab.kill_sentinel(2);
    assert!(lab.sentinel_command(2, &["PING"]).await.is_err());
    lab.restart_sentinel(2).await.expect("sentinel restarts");
    lab.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_eq!(lab.master_per_sentinel().await[2], Some(lab.redis_addr(0)));
}

/// Deletes the namespace on drop, even if the test fails.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "hvlab-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("this test needs iproute2's `ip`")
            .success();
        assert!(
            ok,
            "ip netns add {name} failed: this test needs root (CAP_SYS_ADMIN)"
        );
        let ns = Netns(name);
        let ok = Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot bring lo up in {}", ns.0);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_runs_and_fails_over_inside_a_network_namespace() {
    let ns = Netns::new();
    let hosts = (1..=3)
        .map(|i| LabHost {
            ip: format!("127.0.0.{i}").parse().unwrap(),
            netns: Some(ns.0.clone()),
        })
        .collect();
    let lab = RedisLab::start(LabSpec {
        hosts: Some(hosts),
        redis_port: Some(6379),
        sentinel_port: Some(26379),
        ..LabSpec::default()
    })
    .await
    .expect("lab starts inside the namespace");
    assert_eq!(lab.sentinel_addrs()[2], "127.0.0.3:26379");

    lab.kill_redis(0);
    let new = lab
        .wait_master(|a| a != lab.redis_addr(0), Duration::from_secs(30))
        .await
        .expect("sentinels in the namespace fail over");
    assert!(lab.node_of(new).is_some_and(|n| n != 0));
    drop(lab);
    drop(ns);
}
