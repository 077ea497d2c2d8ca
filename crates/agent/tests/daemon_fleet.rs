//! The daemon on a real Redis Sentinel lab: three agents in one process, one per "host" on its own loopback
//! address, against the fake cloud, binding on simulated interfaces whose GARPs reach the fake (the
//! namespace lab in `tests/lab_*.rs` covers the real kernel path).

use std::time::Duration;

use havip_agent::claim::Step;
use havip_agent::daemon::{AgentEvent, AgentEventKind};
use havip_agent::reconcile::Action;
use havip_agent::sentinel::Event;
use havip_agent::sentinel::watcher::WatchOptions;
use havip_testkit::testbed::agents::{Fleet, FleetSpec, HAVIP_ID};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Every event of every agent from now on, tagged with the host index.
fn subscribe_all(fleet: &Fleet) -> Vec<broadcast::Receiver<AgentEvent>> {
    fleet.nodes.iter().map(|n| n.events.subscribe()).collect()
}

fn drain(rxs: &mut [broadcast::Receiver<AgentEvent>]) -> Vec<(usize, AgentEvent)> {
    let mut out = Vec::new();
    for (i, rx) in rxs.iter_mut().enumerate() {
        while let Ok(ev) = rx.try_recv() {
            out.push((i, ev));
        }
    }
    out.sort_by_key(|(_, e)| e.at);
    out
}

fn claims(events: &[(usize, AgentEvent)]) -> Vec<usize> {
    let mut v: Vec<usize> = events
        .iter()
        .filter(|(_, e)| matches!(e.kind, AgentEventKind::Claimed { .. }))
        .map(|(i, _)| *i)
        .collect();
    v.dedup();
    v
}

/// Host `i`'s agent finished a claim that the cloud confirmed (its status says the cloud matches).
fn claim_done(f: &Fleet, i: usize) -> bool {
    f.nodes[i]
        .status
        .snapshot()
        .havips
        .first()
        .is_some_and(|h| h.cloud_matches == Some(true) && h.local_bound)
}

/// Waits until host `i` holds the VIP alone, the cloud agrees and its claim has finished.
async fn wait_new_holder(fleet: &Fleet, old: usize) -> usize {
    fleet
        .wait_until(
            Duration::from_secs(30),
            "a new master to hold the vip",
            |f| {
                let holders = f.holders();
                holders.len() == 1 && holders[0] != old && f.settled_on(holders[0])
            },
        )
        .await;
    fleet.holders()[0]
}

/// One fleet at a time: each is nine processes and three agents, and this machine may have two cores.
/// Parallel fleets starve each other's Sentinels long enough to look like lost sight of the majority.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The default spec for tests that are not about fencing: a fence after 2 s, so a Sentinel that stalls
/// (config rewrite with fsync on a busy disk) does not make an unrelated test fence.
fn spec() -> FleetSpec {
    FleetSpec {
        sentinel_toml: "fence_after = \"2s\"".into(),
        ..FleetSpec::default()
    }
}

async fn settled_fleet(spec: FleetSpec) -> (Fleet, usize) {
    if std::env::var("HAVIP_LOG").is_ok() {
        havip_agent::logging::init(havip_agent::logging::LogFormat::Human);
    }
    let fleet = Fleet::start(spec).await.expect("fleet starts");
    let m = fleet.master_index().await;
    fleet
        .wait_until(
            Duration::from_secs(20),
            "the initial master to hold the vip",
            |f| f.settled_on(m),
        )
        .await;
    (fleet, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_new_masters_agent_claims_and_the_old_one_releases_when_the_master_dies() {
    let _serial = SERIAL.lock().await;
    let (fleet, old) = settled_fleet(spec()).await;
    // Arrange: the drift range started empty; the first claim added the initial master.
    let h = fleet.cloud.havip(HAVIP_ID).unwrap();
    assert!(h.in_range(&fleet.nodes[old].instance_id), "{h:?}");
    let mut rxs = subscribe_all(&fleet);

    // Act: kill the master's redis.
    fleet.lab.kill_redis(old);
    let killed_at = Instant::now();
    let new = wait_new_holder(&fleet, old).await;
    assert_eq!(
        fleet.master_index().await,
        new,
        "the vip is on sentinel's master"
    );

    // Assert: only the new master claimed; the drift range gained it; every request was signed.
    let mut events = drain(&mut rxs);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events.iter().any(|(_, e)| {
        matches!(&e.kind, AgentEventKind::Sentinel(o) if matches!(o.event, Event::SwitchMaster { .. }))
    }) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        events.extend(drain(&mut rxs));
    }
    events.sort_by_key(|(_, e)| e.at);
    assert_eq!(
        claims(&events),
        vec![new],
        "claims after the kill: {events:#?}"
    );
    let h = fleet.cloud.havip(HAVIP_ID).unwrap();
    assert!(h.in_range(&fleet.nodes[new].instance_id), "{h:?}");
    let writes = fleet.cloud.write_requests();
    assert!(
        writes.iter().any(|r| r.action == "AssociateHaVipInstance"
            && r.body.to_string().contains(&fleet.nodes[new].instance_id)
            && r.signature_valid),
        "no signed AssociateHaVipInstance for the new master: {writes:?}"
    );
    assert!(fleet.cloud.requests().iter().all(|r| r.signature_valid));
    assert!(!fleet.nodes[old].holds_vip(), "the old master kept the vip");

    if std::env::var("FLEET_TIMELINE").is_ok() {
        let t0 = events[0].1.at;
        for (i, e) in &events {
            let what = match &e.kind {
                AgentEventKind::Sentinel(o) => {
                    format!("{} {} {}", o.sentinel, o.channel, o.payload)
                }
                other => format!("{other:?}"),
            };
            eprintln!(
                "{:>8.1} node{} {}",
                (e.at - t0).as_secs_f64() * 1e3,
                i,
                what.chars().take(160).collect::<String>()
            );
        }
    }
    // Record: the first +switch-master any agent saw, against the new master's first GARP.
    let switch = events.iter().find_map(|(_, e)| match &e.kind {
        AgentEventKind::Sentinel(o) if matches!(o.event, Event::SwitchMaster { .. }) => Some(e.at),
        _ => None,
    });
    let garp = events.iter().find_map(|(i, e)| match &e.kind {
        AgentEventKind::Claim(Step::Announced { .. }) if *i == new => Some(e.at),
        _ => None,
    });
    let ms = |a: Instant, b: Instant| {
        if a >= b {
            (a - b).as_secs_f64() * 1e3
        } else {
            -((b - a).as_secs_f64() * 1e3)
        }
    };
    match (switch, garp) {
        (Some(s), Some(g)) => eprintln!(
            "measured: first +switch-master {:.1} ms after the kill; first garp {:+.1} ms from it",
            ms(s, killed_at),
            ms(g, s)
        ),
        _ => panic!("missing +switch-master ({switch:?}) or garp ({garp:?}) in {events:#?}"),
    }
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poll_catches_a_switch_whose_events_were_missed() {
    let _serial = SERIAL.lock().await;
    let spec = FleetSpec {
        watch: WatchOptions {
            resubscribe_delay: Duration::from_secs(120),
            ..WatchOptions::default()
        },
        ..spec()
    };
    let (fleet, old) = settled_fleet(spec).await;
    // Arrange: cut every agent's Pub/Sub connection, and keep it cut. On a loaded machine an agent may
    // still be subscribing when the first kill comes: kill until a round finds no subscriber left.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut killed = 0;
        for i in 0..fleet.lab.nodes() {
            let n = fleet
                .lab
                .sentinel_command(i, &["CLIENT", "KILL", "TYPE", "pubsub"])
                .await
                .expect("client kill");
            killed += match n {
                redis::Value::Int(n) => n,
                other => panic!("CLIENT KILL answered {other:?}"),
            };
        }
        if killed == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pub/sub subscribers keep coming back although resubscribing waits 120 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut rxs = subscribe_all(&fleet);

    fleet.lab.kill_redis(old);
    wait_new_holder(&fleet, old).await;

    let events = drain(&mut rxs);
    let sentinel_events = events
        .iter()
        .filter(|(_, e)| matches!(e.kind, AgentEventKind::Sentinel(_)))
        .count();
    assert_eq!(
        sentinel_events, 0,
        "events arrived although pub/sub was cut: {events:#?}"
    );
    assert_eq!(claims(&events).len(), 1);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_loses_the_sentinel_majority_releases_and_pauses_writes_and_recovers() {
    let _serial = SERIAL.lock().await;
    let spec = FleetSpec {
        sentinel_toml: "fence_after = \"300ms\"".into(),
        ..FleetSpec::default()
    };
    let (fleet, m) = settled_fleet(spec).await;
    let mut rxs = subscribe_all(&fleet);
    let others: Vec<usize> = (0..3).filter(|i| *i != m).collect();

    // Act: two Sentinels stop answering without closing anything (SIGSTOP: the kernel still ACKs).
    for i in &others {
        fleet.lab.stop_sentinel(*i).unwrap();
    }
    fleet
        .wait_until(
            Duration::from_secs(10),
            "the cut-off holder to release",
            |f| f.holders().is_empty(),
        )
        .await;
    // The local Redis is paused for writes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let write = tokio::time::timeout(
            Duration::from_millis(300),
            fleet.lab.redis_command(m, &["SET", "fenced", "1"]),
        )
        .await;
        if write.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes on the fenced master were never paused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = drain(&mut rxs);
    assert!(
        claims(&events).is_empty(),
        "someone claimed in the minority: {events:#?}"
    );
    assert!(
        events.iter().any(|(i, e)| *i == m
            && matches!(&e.kind, AgentEventKind::Released { reason } if reason == "fenced")),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|(i, e)| *i == m && matches!(e.kind, AgentEventKind::Paused))
    );

    // The majority comes back and still names the same master: it claims again and lifts the pause.
    for i in &others {
        fleet.lab.cont_sentinel(*i).unwrap();
    }
    fleet
        .wait_until(
            Duration::from_secs(10),
            "the master to hold the vip again",
            |f| f.holders() == vec![m],
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = drain(&mut rxs);
        if events
            .iter()
            .any(|(i, e)| *i == m && matches!(e.kind, AgentEventKind::Unpaused))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pause was not lifted: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::timeout(
        Duration::from_secs(2),
        fleet.lab.redis_command(m, &["SET", "after", "1"]),
    )
    .await
    .expect("writes work again")
    .unwrap();
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_sentinel_down_nothing_flaps_and_a_switch_still_works() {
    let _serial = SERIAL.lock().await;
    let (fleet, old) = settled_fleet(spec()).await;
    let down = (0..3).find(|i| *i != old).unwrap();
    let mut rxs = subscribe_all(&fleet);
    fleet.lab.kill_sentinel(down);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = drain(&mut rxs);
    let changes: Vec<_> = events
        .iter()
        .filter(|(_, e)| match &e.kind {
            AgentEventKind::Decision { actions, .. } => !actions.is_empty(),
            AgentEventKind::Released { .. } | AgentEventKind::Claimed { .. } => true,
            _ => false,
        })
        .collect();
    assert!(
        changes.is_empty(),
        "agents acted with one sentinel down: {changes:#?}"
    );
    assert_eq!(fleet.holders(), vec![old]);

    fleet.lab.kill_redis(old);
    wait_new_holder(&fleet, old).await;
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_drift_is_repaired_and_a_cloud_mismatch_is_announced_away() {
    let _serial = SERIAL.lock().await;
    let spec = FleetSpec {
        extra_toml: "[agent]\nverify_interval = \"1s\"\n".into(),
        initial_range: vec![0, 1, 2],
        ..spec()
    };
    let (fleet, m) = settled_fleet(spec).await;
    // Someone removes the VIP behind the agent's back: it binds it again.
    assert!(
        fleet.nodes[m]
            .net
            .recording()
            .remove_behind_back(Fleet::vip())
    );
    fleet
        .wait_until(Duration::from_secs(10), "the vip to be bound again", |f| {
            f.holders() == vec![m]
        })
        .await;

    // The cloud moves the HAVIP elsewhere (a stray GARP from another in-range instance): re-announce.
    let other = (0..3).find(|i| *i != m).unwrap();
    let moved = fleet
        .cloud
        .garp(havip_testkit::testbed::agents::mac_of(other), Fleet::vip());
    assert!(moved.moved(), "{moved:?}");
    fleet
        .wait_until(
            Duration::from_secs(10),
            "the cloud holder to come back",
            |f| f.cloud_holder() == Some(m),
        )
        .await;
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_or_releases_the_vip_as_configured() {
    let _serial = SERIAL.lock().await;
    let release = FleetSpec {
        extra_toml: "[agent]\non_shutdown = \"release\"\n".into(),
        ..spec()
    };
    let (mut fleet, m) = settled_fleet(release).await;
    fleet.stop_agent(m).await;
    assert!(
        !fleet.nodes[m].holds_vip(),
        "on_shutdown = release left the vip bound"
    );
    fleet.shutdown().await;

    let (mut fleet, m) = settled_fleet(spec()).await;
    fleet.stop_agent(m).await;
    assert!(
        fleet.nodes[m].holds_vip(),
        "on_shutdown = keep (the default) removed the vip"
    );
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_carries_the_failover_id_of_its_epoch() {
    let _serial = SERIAL.lock().await;
    let (fleet, old) = settled_fleet(spec()).await;
    let mut rxs = subscribe_all(&fleet);
    fleet.lab.kill_redis(old);
    wait_new_holder(&fleet, old).await;
    let events = drain(&mut rxs);
    let claim_decision = events
        .iter()
        .find_map(|(_, e)| match &e.kind {
            AgentEventKind::Decision {
                actions, config, ..
            } if actions.iter().any(|a| matches!(a, Action::Claim { .. })) => {
                Some((e.failover_id.clone(), config.unwrap().epoch))
            }
            _ => None,
        })
        .expect("a claim decision");
    let (fid, epoch) = claim_decision;
    assert_eq!(fid, Some(format!("mymaster-{epoch}")));
    // The old master's release belongs to the same failover.
    assert!(events.iter().any(|(i, e)| *i == old
        && matches!(e.kind, AgentEventKind::Released { .. })
        && e.failover_id == Some(format!("mymaster-{epoch}"))));
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_hook_and_a_hanging_webhook_never_delay_a_claim() {
    let _serial = SERIAL.lock().await;
    use std::os::unix::fs::PermissionsExt;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    // Arrange: a webhook that answers only after a minute, and hooks that hang for a minute after noting
    // that they started.
    let hook_dir = tempfile::tempdir().unwrap();
    let hook = hook_dir.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$1 $2 $$\" >> {}/started\nsleep 60\necho done >> {}/finished\n",
            hook_dir.path().display(),
            hook_dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let webhook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(60)))
        .mount(&webhook)
        .await;
    let spec = FleetSpec {
        extra_toml: format!(
            "[hooks]\non_acquire = \"{h}\"\non_release = \"{h}\"\ntimeout = \"90s\"\n\n[[alert]]\nurl = \"{}/hook\"\ntimeout = \"90s\"\n",
            webhook.uri(),
            h = hook.display()
        ),
        ..spec()
    };
    let (fleet, old) = settled_fleet(spec).await;

    // Act: a failover while the first acquire's hook and alert still hang.
    fleet.lab.kill_redis(old);
    let new = wait_new_holder(&fleet, old).await;

    // Assert: the claim completed although every hook and webhook call is still hanging.
    let started = std::fs::read_to_string(hook_dir.path().join("started")).unwrap_or_default();
    assert!(started.contains("acquired"), "no hook started: {started:?}");
    assert!(
        !hook_dir.path().join("finished").exists(),
        "a hook finished: the test did not prove anything"
    );
    let pending = webhook.received_requests().await.unwrap_or_default();
    assert!(!pending.is_empty(), "no webhook was called");
    assert!(claim_done(&fleet, new));
    fleet.shutdown().await;
    // Clean up the hanging hooks (each leads its own process group).
    for pid in started
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<i32>().ok())
    {
        // SAFETY: kill(2) on a process group this test's hooks created.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}
