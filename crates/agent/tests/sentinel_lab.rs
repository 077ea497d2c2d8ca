//! The Redis lab (`testbed::redis`) itself: real `redis-server` + `redis-sentinel` processes that actually fail
//! over, freeze and thaw, and run inside a network namespace.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use havip_testkit::testbed::redis::{LabHost, LabSpec, RedisLab};

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
    let started = Instant::now();
    let lab = RedisLab::start(LabSpec::default())
        .await
        .expect("lab starts");
    println!(
        "lab of 3 redis + 3 sentinels ready in {:?}",
        started.elapsed()
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfig_script_runs_on_every_sentinel_with_its_own_environment() {
    // Arrange: a script that appends its arguments and one environment variable to a per-sentinel file.
    let scratch = tempfile::tempdir().unwrap();
    let script = scratch.path().join("reconfig.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"$* env=$HAVIP_LAB_MARK\" >> \"$HAVIP_LAB_OUT\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let outs: Vec<_> = (0..3)
        .map(|i| scratch.path().join(format!("calls-{i}.txt")))
        .collect();
    let lab = RedisLab::start(LabSpec {
        reconfig_script: Some(script),
        sentinel_env: (0..3)
            .map(|i| {
                vec![
                    ("HAVIP_LAB_OUT".to_owned(), outs[i].display().to_string()),
                    ("HAVIP_LAB_MARK".to_owned(), format!("node-{i}")),
                ]
            })
            .collect(),
        ..LabSpec::default()
    })
    .await
    .expect("lab starts");
    let old = lab.redis_addr(0);

    // Act
    lab.kill_redis(0);
    let new = lab
        .wait_master(|a| a != old, Duration::from_secs(30))
        .await
        .expect("sentinels fail over");

    // Assert: every sentinel called the script once, with Sentinel's 7 arguments and its own environment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let calls: Vec<String> = loop {
        let calls: Vec<String> = outs
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect();
        if calls.iter().all(|c| !c.is_empty()) {
            break calls;
        }
        assert!(
            Instant::now() < deadline,
            "script calls so far: {calls:?}\n{}",
            lab.logs_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut leaders = 0;
    for (i, c) in calls.iter().enumerate() {
        let f: Vec<&str> = c.trim().split(' ').collect();
        assert_eq!(f.len(), 8, "sentinel {i}: {c:?}");
        assert_eq!(f[0], "mymaster");
        assert!(f[1] == "leader" || f[1] == "observer", "{c:?}");
        leaders += usize::from(f[1] == "leader");
        assert_eq!(f[2], "start");
        assert_eq!(format!("{}:{}", f[3], f[4]), old.to_string());
        assert_eq!(format!("{}:{}", f[5], f[6]), new.to_string());
        assert_eq!(f[7], format!("env=node-{i}"));
    }
    assert_eq!(leaders, 1, "{calls:?}");
}
